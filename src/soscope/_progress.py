"""The one progress bar every soscope loop uses (training epochs, image tiles, inference chunks)."""

from __future__ import annotations


class ProgressBar:
    """A small rich progress bar; :func:`progress_bar` returns None instead when bars are off."""

    def __init__(self, total: int, description: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task(description, total=total, info="")

    def update(self, n: int, info: str = "") -> None:
        """Advance by ``n`` steps; ``info`` is shown after the bar (e.g. the current loss)."""
        self._p.update(self._task, advance=n, info=info)

    def close(self) -> None:
        """Stop drawing the bar (it stays on screen)."""
        self._p.stop()


def progress_bar(enabled: bool, total: int, description: str) -> ProgressBar | None:
    """Start a :class:`ProgressBar`; return None when ``enabled`` or ``soscope.settings.progress`` is False.

    Callers test ``bar is not None`` before updating, so a disabled bar costs nothing (not even the import
    of rich).
    """
    from ._settings import settings

    if not (enabled and settings.progress):
        return None
    return ProgressBar(total, description)
