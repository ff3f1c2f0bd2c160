"""Foundation-model image features: a fixed field of view in µm per sub-spot, embedded, reduced by PCA.

A :class:`FoundationModel` wraps a pretrained image network (any ``torch.nn.Module``, e.g. a timm model)
with what it needs to see tissue as it was trained to: the µm per pixel of its training images, the field
of view cut around each sub-spot (``tile_um``), its input size and input normalisation. Patches are cut at
``tile_um`` with the image's own µm per pixel (so the same tissue size is seen on every slide, whatever
its scan resolution), resampled to the input size, normalised, embedded in batches under
:func:`torch.no_grad`, and reduced by a PCA fitted on the training sub-spots and kept with the model, so
new sections are projected on the same components.

Nothing is ever downloaded: timm models are built from their architecture name with ``pretrained=False``
and, when given, a local ``checkpoint_path``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from soscope._errors import ModelCompatibilityError, SoscopeInputError
from soscope.features._morphology import normalise_window
from soscope.features._stain import STAIN_METHODS, PercentileScaling, StainNormaliser

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FoundationModel",
    "ImagePreparation",
    "foundation_tile",
    "map_to_rgb",
]

logger = logging.getLogger("soscope.features")

#: ImageNet input normalisation: the default mean and std of torchvision and most timm models
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: input edge (pixels) when neither the caller nor the model's ``pretrained_cfg`` gives one
DEFAULT_INPUT_SIZE = 224


@dataclass(frozen=True)
class _PCA:
    """A PCA fitted on the training sub-spots' embeddings."""

    mean: np.ndarray  # (D,) float64
    components: np.ndarray  # (k, D) float64, rows orthonormal
    explained_variance_ratio: np.ndarray  # (k,)
    n_rows: int


def _fit_pca(embeddings: np.ndarray, n_components: int) -> _PCA:
    """PCA of the finite rows of ``(M, D)`` embeddings, from their covariance (``D × D``, float64).

    Deterministic: each component's sign is fixed so that its largest-magnitude loading is positive.
    """
    x = np.asarray(embeddings)
    d = x.shape[1]
    ok = np.isfinite(x).all(axis=1)
    n = int(ok.sum())
    if n_components > d:
        raise SoscopeInputError(
            f"n_components={n_components} exceeds the model's {d} embedding features; use "
            f"n_components <= {d}."
        )
    if n < max(2, n_components):
        raise SoscopeInputError(
            f"only {n} sub-spots have image embeddings, too few for a PCA with n_components={n_components}; "
            "lower n_components or fit on more sub-spots."
        )
    rows = np.flatnonzero(ok)
    total = np.zeros(d)
    for a in range(0, n, 1 << 16):  # float64 sums a block of rows at a time
        total += x[rows[a : a + (1 << 16)]].astype(np.float64).sum(0)
    mean = total / n
    cov = np.zeros((d, d))
    for a in range(0, n, 1 << 16):
        blk = x[rows[a : a + (1 << 16)]].astype(np.float64) - mean
        cov += blk.T @ blk
    cov /= max(n - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
    comps = vecs[:, :n_components].T.copy()
    big = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(len(comps)), big])[:, None]
    total_var = float(vals.sum())
    ratio = vals[:n_components] / total_var if total_var > 0 else np.zeros(n_components)
    return _PCA(mean, comps, ratio, n)


def map_to_rgb(x: np.ndarray) -> np.ndarray:
    """Map a ``(C, ...)`` image with 1–3 channels in [0, 1] to 3 channels (float32).

    1 channel (DAPI, a single marker): grey, the channel in R, G and B. 2 channels: R and G are the two
    channels and B their mean, so both reach the model with equal weight and nothing is invented. 3: as
    they are.
    """
    x = np.asarray(x, dtype=np.float32)
    c = x.shape[0]
    if c == 3:
        return x
    if c == 1:
        return np.concatenate([x, x, x], axis=0)
    if c == 2:
        return np.concatenate([x, (x[:1] + x[1:2]) * np.float32(0.5)], axis=0)
    raise SoscopeInputError(
        f"the image has {c} channels; choose at most 3 for the model with FoundationModel(channels=[...])."
    )


@dataclass(frozen=True)
class ImagePreparation:
    """Raw pixels → intensities in [0, 1], fitted once per image and applied pixel by pixel.

    Attributes
    ----------
    kind
        ``"rgb"`` (brightfield H&E) or ``"fluorescence"``.
    scale
        Raw values are divided by this (the dtype's maximum for integers) when there is no
        ``percentile`` scaling.
    channels
        Indices of the channels used, in order.
    percentile
        Optional per-channel :class:`~soscope.features.PercentileScaling` (fluorescence).
    stain
        Optional :class:`~soscope.features.StainNormaliser` (RGB).
    to_rgb
        Map the channels to 3 with :func:`map_to_rgb` (what a foundation model takes).

    """

    kind: Literal["rgb", "fluorescence"]
    scale: float
    channels: tuple[int, ...]
    percentile: PercentileScaling | None = None
    stain: StainNormaliser | None = None
    to_rgb: bool = True

    def __call__(self, window: np.ndarray) -> np.ndarray:
        """``(C, ...)`` raw pixels → float32 in [0, 1] (3 channels when ``to_rgb``)."""
        raw = np.asarray(window)
        if self.channels != tuple(range(raw.shape[0])):
            raw = raw[list(self.channels)]
        x = self.percentile(raw) if self.percentile is not None else normalise_window(raw, self.scale)
        if self.stain is not None:
            x = self.stain(x, channel_axis=0)
        return map_to_rgb(x) if self.to_rgb else x

    def describe(self) -> dict[str, Any]:
        """Plain values for provenance (``uns``)."""
        out: dict[str, Any] = {"image_kind": self.kind, "channels": np.asarray(self.channels, dtype=np.int64)}
        if self.percentile is not None:
            out["percentiles"] = np.asarray(self.percentile.percentiles, dtype=np.float64)
            out["percentile_low"] = np.asarray(self.percentile.lo, dtype=np.float64)
            out["percentile_high"] = np.asarray(self.percentile.hi, dtype=np.float64)
        if self.stain is not None:
            out["stain_normalise"] = self.stain.method
            out["stain_source"] = np.concatenate([np.ravel(a) for a in self.stain.source]).astype(np.float64)
        return out


def _module_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _timm_cfg(model: Any) -> dict:
    """Return the model's timm ``pretrained_cfg`` (a dict), or ``{}`` for other modules."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return dict(cfg) if isinstance(cfg, dict) else {}


def _load_local_weights(module: Any, path: str | Path) -> None:
    """Load a local checkpoint (torch or safetensors) into ``module``; the classifier head may be absent."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SoscopeInputError(f"checkpoint_path={str(path)!r} is not a file; give a local weights file.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise SoscopeInputError(
                "reading a .safetensors checkpoint needs the safetensors package: pip install safetensors"
            ) from err
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    missing = list(result.missing_keys)
    if missing:
        raise SoscopeInputError(
            f"the checkpoint {str(path)!r} lacks {len(missing)} of the model's weights (e.g. {missing[:5]}); "
            "is it for this architecture?"
        )


def _timm_model(name: str, checkpoint_path: str | Path | None, *, quiet: bool = False) -> Any:
    try:
        import timm
    except ImportError as err:
        raise SoscopeInputError(
            f"FoundationModel({name!r}) builds the network with timm, which is not installed: "
            "pip install 'soscope[timm]', or pass the torch module itself."
        ) from err
    # pretrained=False: never download; the weights come from checkpoint_path (a local file) or stay random
    model = timm.create_model(name, pretrained=False, num_classes=0)
    if checkpoint_path is not None:
        _load_local_weights(model, checkpoint_path)
    elif not quiet:
        logger.warning(
            "FoundationModel(%r) has random weights (no checkpoint_path): its features carry no pretrained "
            "knowledge.",
            name,
        )
    return model


def _positive(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v) or v <= 0:
        raise SoscopeInputError(f"{what}={value!r} must be a positive number.")
    return v


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise SoscopeInputError(f"{what}={value!r} must be a positive whole number.")
    return int(value)


class FoundationModel:
    """A pretrained image network as the image-feature extractor of soscope.

    Pass it as ``image_features=`` to :func:`soscope.enhance`, :class:`soscope.SoScope` or
    :func:`soscope.features.subspot_image_features`.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` mapping ``(B, 3, input_size, input_size)`` float tensors to ``(B, D)``
        embeddings (``(B, D, h, w)`` feature maps are averaged over ``h, w``), e.g. a timm model built with
        ``num_classes=0``; or a timm architecture name (``"vit_small_patch16_224"``), built with
        ``pretrained=False`` (needs ``pip install 'soscope[timm]'``; weights from ``checkpoint_path``).
    um_per_pixel
        µm per pixel of the images the model was trained on (e.g. 0.5 for pathology models trained at 20×).
    tile_um
        Edge in µm of the square field of view cut around each sub-spot's centroid; default
        ``input_size * um_per_pixel`` (the model then sees the tissue at its training resolution).
    input_size
        Edge in pixels of the model's input; default the timm ``pretrained_cfg``'s, else 224. Patches are
        resampled (bilinear, antialiased) to it.
    mean, std
        Per-channel input normalisation ``(x - mean) / std`` of RGB in [0, 1]; default the timm
        ``pretrained_cfg``'s, else ImageNet's.
    batch_size
        Patches per forward pass.
    n_components
        Principal components kept (the features); ``None`` keeps the raw embeddings. The PCA is fitted on
        the training sub-spots and reused, unchanged, on every section the model is applied to.
    stain_normalise
        H&E images: ``"macenko"``, ``"reinhard"`` or ``None`` (see
        :class:`~soscope.features.StainNormaliser`), fitted per image.
    channels
        Fluorescence images: the (at most 3) channels given to the model, by index or name; default all
        when there are at most 3. One channel is shown as grey, two as R and G with their mean as B.
        Fluorescence intensities are scaled per image and channel between their 1st and 99.5th percentiles.
    image_kind
        ``"auto"`` (as :func:`~soscope.features.subspot_image_features`), ``"rgb"`` or ``"fluorescence"``.
    microns_per_unit
        µm per unit of the coordinate system, when soscope cannot derive it (see
        :func:`~soscope.features.image_microns_per_pixel`).
    checkpoint_path
        Local weights for a model given by name (torch or safetensors file).

    Notes
    -----
    ``model`` is put in evaluation mode. Memory is linear in the sub-spots: the image is read tile by
    tile, patches are embedded ``batch_size`` at a time; while the PCA is fitted (training), the raw
    embeddings of all sub-spots are held (``M × D`` float32), afterwards only ``M × n_components``.

    """

    def __init__(
        self,
        model: Any,
        *,
        um_per_pixel: float,
        tile_um: float | None = None,
        input_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        batch_size: int = 32,
        n_components: int | None = 32,
        stain_normalise: Literal["macenko", "reinhard"] | None = None,
        channels: list[int | str] | tuple[int | str, ...] | None = None,
        image_kind: Literal["auto", "rgb", "fluorescence"] = "auto",
        microns_per_unit: float | None = None,
        checkpoint_path: str | Path | None = None,
    ):
        import torch

        if isinstance(model, str):
            self.name = f"timm:{model}"
            model = _timm_model(model, checkpoint_path)
        elif isinstance(model, torch.nn.Module):
            if checkpoint_path is not None:
                _load_local_weights(model, checkpoint_path)
            cfg = _timm_cfg(model)
            arch = cfg.get("architecture")
            self.name = f"timm:{arch}" if arch else _module_path(model)
        else:
            raise SoscopeInputError(
                f"FoundationModel needs a torch.nn.Module or a timm architecture name, not "
                f"{type(model).__name__}."
            )
        self.model = model.eval()
        cfg = _timm_cfg(model)
        self.um_per_pixel = _positive(um_per_pixel, "um_per_pixel")
        if input_size is None:
            size = cfg.get("input_size")
            input_size = int(size[-1]) if size else DEFAULT_INPUT_SIZE
        self.input_size = _whole(input_size, "input_size")
        self.tile_um = (
            self.input_size * self.um_per_pixel if tile_um is None else _positive(tile_um, "tile_um")
        )
        self.mean = self._triple(mean if mean is not None else cfg.get("mean", IMAGENET_MEAN), "mean")
        self.std = self._triple(std if std is not None else cfg.get("std", IMAGENET_STD), "std")
        if min(self.std) <= 0:
            raise SoscopeInputError(f"std={self.std} must be positive.")
        self.normalisation_source = "given" if mean is not None else ("timm" if "mean" in cfg else "ImageNet")
        self.batch_size = _whole(batch_size, "batch_size")
        self.n_components = None if n_components is None else _whole(n_components, "n_components")
        if stain_normalise is not None and stain_normalise not in STAIN_METHODS:
            raise SoscopeInputError(
                f"stain_normalise={stain_normalise!r} is unknown; use one of {list(STAIN_METHODS)} or None."
            )
        self.stain_normalise = stain_normalise
        if channels is not None and not 1 <= len(channels) <= 3:
            raise SoscopeInputError(f"channels={channels!r}: give 1 to 3 channels.")
        self.channels = None if channels is None else tuple(channels)
        if image_kind not in ("auto", "rgb", "fluorescence"):
            raise SoscopeInputError(f"image_kind={image_kind!r}; use 'auto', 'rgb' or 'fluorescence'.")
        self.image_kind = image_kind
        self.microns_per_unit = (
            None if microns_per_unit is None else _positive(microns_per_unit, "microns_per_unit")
        )
        self.pca: _PCA | None = None
        self._dim: int | None = None
        effective = self.tile_um / self.input_size
        if not 0.5 <= effective / self.um_per_pixel <= 2.0:
            logger.warning(
                "FoundationModel: tile_um=%g µm at input_size=%d shows the model %.3g µm per pixel, "
                "%.2g× its training resolution (%g µm per pixel).",
                self.tile_um,
                self.input_size,
                effective,
                effective / self.um_per_pixel,
                self.um_per_pixel,
            )

    @staticmethod
    def _triple(value: Any, what: str) -> tuple[float, float, float]:
        v = tuple(float(x) for x in np.ravel(value))
        if len(v) != 3 or not all(np.isfinite(v)):
            raise SoscopeInputError(f"{what}={value!r} must be 3 numbers (R, G, B).")
        return v  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------------- state
    @property
    def needs_fit(self) -> bool:
        """Whether the PCA is still to be fitted (``n_components`` set and no PCA yet)."""
        return self.n_components is not None and self.pca is None

    @property
    def embedding_dim(self) -> int:
        """Width ``D`` of the model's embeddings (one probe forward pass, cached)."""
        if self._dim is None:
            probe = np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32)
            self._dim = int(self.embed(probe).shape[1])
        return self._dim

    @property
    def n_features(self) -> int:
        """Number of output features: ``n_components``, or ``D`` without PCA."""
        return self.embedding_dim if self.n_components is None else self.n_components

    @property
    def feature_names(self) -> list[str]:
        """Output feature names: ``fm_pc1 ...`` with PCA, ``fm_0 ...`` without."""
        if self.n_components is None:
            return [f"fm_{i}" for i in range(self.n_features)]
        return [f"fm_pc{i + 1}" for i in range(self.n_components)]

    def check_components(self) -> None:
        """Raise a clear error when ``n_components`` exceeds the embedding width (before reading)."""
        if self.n_components is not None and self.n_components > self.embedding_dim:
            raise SoscopeInputError(
                f"n_components={self.n_components} exceeds the model's {self.embedding_dim} embedding "
                f"features; use n_components <= {self.embedding_dim}."
            )

    def embeddings_only(self) -> FoundationModel:
        """Return a copy that outputs the raw embeddings (no PCA); it shares the network."""
        out = copy.copy(self)
        out.n_components, out.pca = None, None
        return out

    def fitted(self, embeddings: np.ndarray) -> FoundationModel:
        """Return a copy whose PCA is fitted on ``(M, D)`` raw embeddings (NaN rows ignored).

        The network is shared with this object, which is left as it was.
        """
        if self.n_components is None:
            return self
        out = copy.copy(self)
        out.pca = _fit_pca(embeddings, self.n_components)
        logger.info(
            "FoundationModel %s: PCA on %d sub-spots keeps %.1f%% of the embeddings' variance in %d "
            "components",
            self.name,
            out.pca.n_rows,
            100 * float(out.pca.explained_variance_ratio.sum()),
            self.n_components,
        )
        return out

    def reduce(self, embeddings: np.ndarray) -> np.ndarray:
        """Project raw ``(M, D)`` embeddings on the fitted components: ``(M, n_components)`` float32."""
        if self.n_components is None:
            return np.asarray(embeddings, dtype=np.float32)
        if self.pca is None:
            raise SoscopeInputError(
                "this FoundationModel's PCA is not fitted yet: fit it on the training sub-spots first "
                "(SoScope does so when it is set up)."
            )
        x = np.asarray(embeddings, dtype=np.float64)
        return ((x - self.pca.mean) @ self.pca.components.T).astype(np.float32)

    # ----------------------------------------------------------------------------------------- network
    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Embed ``(B, 3, P, P)`` RGB patches in [0, 1]: resample, normalise, run the network.

        Returns ``(B, D)`` float32 raw embeddings. Runs under :func:`torch.no_grad`, ``batch_size`` at a
        time, on the device of the network's parameters.
        """
        import torch
        import torch.nn.functional as F

        params = list(self.model.parameters())
        device = params[0].device if params else torch.device("cpu")
        dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        outs = []
        with torch.no_grad():
            for a in range(0, len(patches), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(patches[a : a + self.batch_size], dtype=np.float32))
                if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                    x = F.interpolate(
                        x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                        antialias=True,
                    )  # fmt: skip
                x = (x - mean) / std
                y = self.model(x.to(device=device, dtype=dtype))
                outs.append(self._pool(y).float().cpu().numpy())
        return np.concatenate(outs, axis=0) if outs else np.zeros((0, self._dim or 0), np.float32)

    @staticmethod
    def _pool(y: torch.Tensor) -> torch.Tensor:
        if isinstance(y, tuple | list):
            y = y[0]
        if y.ndim == 4:  # a feature map: average over space
            return y.mean(dim=(2, 3))
        if y.ndim == 2:
            return y
        raise SoscopeInputError(
            f"the model returned a tensor of shape {tuple(y.shape)}; FoundationModel needs (B, D) embeddings "
            "or (B, D, h, w) maps (build timm models with num_classes=0)."
        )

    # ----------------------------------------------------------------------------------------- records
    def provenance(self) -> dict[str, Any]:
        """Plain values describing the extractor (for ``uns["soscope"]["image_features"]``)."""
        out: dict[str, Any] = {
            "extractor": "foundation",
            "model": self.name,
            "model_class": _module_path(self.model),
            "um_per_pixel": self.um_per_pixel,
            "tile_um": self.tile_um,
            "input_size": self.input_size,
            "mean": np.asarray(self.mean),
            "std": np.asarray(self.std),
            "normalisation_source": self.normalisation_source,
            "batch_size": self.batch_size,
            "n_components": -1 if self.n_components is None else self.n_components,
            "stain_normalise": str(self.stain_normalise),
        }
        if self.pca is not None:
            out["explained_variance_ratio"] = np.asarray(self.pca.explained_variance_ratio, dtype=np.float64)
            out["explained_variance"] = float(self.pca.explained_variance_ratio.sum())
            out["pca_fit_subspots"] = int(self.pca.n_rows)
        return out

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (the network itself is saved apart)."""
        return {
            "name": self.name,
            "um_per_pixel": self.um_per_pixel,
            "tile_um": self.tile_um,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "batch_size": self.batch_size,
            "n_components": self.n_components,
            "stain_normalise": self.stain_normalise,
            "channels": None if self.channels is None else list(self.channels),
            "image_kind": self.image_kind,
            "microns_per_unit": self.microns_per_unit,
        }

    def pca_state(self) -> dict[str, torch.Tensor] | None:
        """Return the fitted PCA as tensors (for a model file), or None."""
        import torch

        if self.pca is None:
            return None
        return {
            "mean": torch.as_tensor(self.pca.mean),
            "components": torch.as_tensor(self.pca.components),
            "explained_variance_ratio": torch.as_tensor(self.pca.explained_variance_ratio),
            "n_rows": torch.tensor(self.pca.n_rows),
        }

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        model: Any = None,
        *,
        pca: dict[str, Any] | None = None,
        weights: dict[str, Any] | None = None,
    ) -> FoundationModel:
        """Rebuild from :meth:`config`, the network, :meth:`pca_state` and the network's weights.

        Parameters
        ----------
        config
            :meth:`config`'s values.
        model
            The network (a torch module); None: the timm architecture of ``config["name"]``, built with
            ``pretrained=False``.
        pca
            :meth:`pca_state`'s tensors, or None (not fitted).
        weights
            A state dict loaded into the network (strictly), or None (the network as it is).

        Returns
        -------
        The rebuilt extractor.

        """
        name = str(config.get("name", ""))
        if model is None:
            if not name.startswith("timm:"):
                raise SoscopeInputError(f"the network of foundation model {name!r} must be given.")
            model = _timm_model(name.removeprefix("timm:"), None, quiet=weights is not None)
        if weights is not None:
            try:
                model.load_state_dict(weights)
            except RuntimeError as err:
                raise ModelCompatibilityError(
                    f"the saved weights of foundation model {name!r} do not fit the network given ({err}); "
                    "pass a network of the same architecture"
                ) from err
        args = {k: v for k, v in config.items() if k != "name"}
        out = cls(model, **args)
        out.name = name or out.name
        if pca is not None:
            out.pca = _PCA(
                mean=np.asarray(pca["mean"], dtype=np.float64),
                components=np.asarray(pca["components"], dtype=np.float64),
                explained_variance_ratio=np.asarray(pca["explained_variance_ratio"], dtype=np.float64),
                n_rows=int(pca["n_rows"]),
            )
        return out

    def __repr__(self) -> str:
        pca = "" if self.n_components is None else f", n_components={self.n_components}"
        fitted = " (PCA fitted)" if self.pca is not None else ""
        return (
            f"FoundationModel({self.name}, um_per_pixel={self.um_per_pixel:g}, tile_um={self.tile_um:g}, "
            f"input_size={self.input_size}{pca}){fitted}"
        )


def foundation_tile(
    window: np.ndarray,
    window_origin: tuple[int, int],
    corners: np.ndarray,
    image_shape: tuple[int, int],
    patch_px: int,
    prep: ImagePreparation,
    fm: FoundationModel,
) -> np.ndarray:
    """Features of the sub-spots of one tile: ``patch_px``-wide patches (edge-replicated), embedded, reduced.

    The window is prepared once (pixel by pixel, so tiled and untiled agree); patches are cut and embedded
    ``fm.batch_size`` at a time, so memory is one window plus one batch.
    """
    y0, x0 = window_origin
    h, w = image_shape
    win = prep(window)  # (3, h, w) float32 in [0, 1]
    off = np.arange(patch_px)
    outs = []
    for a in range(0, len(corners), fm.batch_size):
        c = corners[a : a + fm.batch_size]
        rows = np.clip(c[:, 0, None] + off, 0, h - 1) - y0
        cols = np.clip(c[:, 1, None] + off, 0, w - 1) - x0
        patches = win[:, rows[:, :, None], cols[:, None, :]].transpose(1, 0, 2, 3)  # (B, 3, P, P)
        emb = fm.embed(patches)
        outs.append(emb if fm.needs_fit else fm.reduce(emb))
    return np.concatenate(outs, axis=0)
