"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def release_free_memory() -> None:
    """Return freed heap memory to the operating system (glibc's ``malloc_trim``; a no-op elsewhere).

    Whole-slide set-up frees gigabytes of numpy temporaries; glibc keeps much of it mapped to the process
    (fragmented arenas), so its resident memory would stay near the set-up's peak through inference.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to do
        pass
