"""``SoScope``: the user-facing model — set up from a SpatialData, train, enhance, save and load."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import ModelCompatibilityError, SoscopeInputError
from .._version import __version__
from ..module import ModalitySpec, ModuleConfig, SoScopeModule
from ..train import History, TrainConfig
from ._calibrate import calibrate_new_batches, fit_batch_bias
from ._core import default_epochs, fit, latent, resolve_device
from ._data import Normaliser, n_encoder_inputs
from ._setup import Prepared, prepare

logger = logging.getLogger("soscope")

MODEL_FILE = "model.pt"
_FORMAT = "soscope-model/1"


class SoScope:
    """soScope model: a graph VAE over spots whose sub-spot split is driven by the image.

    Parameters
    ----------
    sdata
        SpatialData with a table of spot profiles annotating a shapes element of spots (and optionally
        an image in the same coordinate system), or a list / dict of them to train one model on several
        samples (combined with :func:`soscope.io.combine`: element names get the suffix ``-<key>``, ``key``
        the list position or dict key; each sample's spots are their own sections).
    table, spots, image, layer, coordinate_system
        Elements to use; each may be omitted when the choice is unambiguous. ``image=False`` ignores images.
    subspots
        ``"auto"``, ``"hex7"``, ``"grid:K"``, ``"rings:N"`` or the name of a shapes element of cells.
    likelihood
        ``"auto"``, a likelihood name (``"nb"``, ``"zinb"``, ``"poisson"``, ``"bernoulli"``, ``"gaussian"``)
        or a dict modality → name.
    sections, section_key
        Restrict to these sections; a section is a region of the table or a value of ``obs[section_key]``.
        Each section gets its own spot graph.
    batch_key
        ``obs`` column with a batch label per spot (default: the section) for per-batch library size and
        feature bias.
    modality_key
        ``var`` column naming each feature's modality (auto-detected from ``feature_types``).
    image_features
        ``"morphology"`` (colour, stain and texture statistics; no downloads), a callable on image patches,
        a torch module, or ``"obsm:<table>:<key>"`` for precomputed features.
    use_image, use_graph
        Ablations: no image (sub-spots start from the interpolation of neighbouring spots); no graph
        (spot-only encoder).
    n_latent, n_hidden, n_graph_layers
        Network sizes.
    seed
        Seed of the weights' initialisation and of training (results are deterministic on CPU).
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``...
    progress
        Show progress bars.

    """

    def __init__(
        self,
        sdata,
        *,
        table: str | None = None,
        spots: str | list[str] | None = None,
        image: str | None | bool = None,
        layer: str | None = None,
        subspots: str = "auto",
        likelihood: str | dict = "auto",
        sections: list[str] | None = None,
        section_key: str | None = None,
        batch_key: str | None = None,
        modality_key: str | None = None,
        coordinate_system: str | None = None,
        image_features: Any = "morphology",
        use_image: bool = True,
        use_graph: bool = True,
        n_latent: int = 16,
        n_hidden: int = 128,
        n_graph_layers: int = 2,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ):
        self.settings = {
            "table": table, "spots": spots, "image": image, "layer": layer, "subspots": subspots,
            "likelihood": likelihood, "sections": sections, "section_key": section_key, "batch_key": batch_key,
            "modality_key": modality_key, "coordinate_system": coordinate_system,
            "image_features": image_features if isinstance(image_features, str) else repr(image_features),
            "use_image": use_image, "use_graph": use_graph, "n_latent": n_latent,
            "n_hidden": n_hidden, "n_graph_layers": n_graph_layers, "seed": seed,
        }  # fmt: skip
        self._image_extractor = image_features
        self.device = resolve_device(device)
        self.device_request = str(device)  # as asked: cluster workers resolve "auto" on their own hardware
        self.progress = progress
        if isinstance(sdata, (list, tuple, dict)):
            from ..io import combine

            sdata = combine(sdata)
        self.sdata = sdata
        self.prepared: Prepared | None = prepare(
            sdata, table=table, spots=spots, image=image, layer=layer, subspots=subspots, likelihood=likelihood,
            sections=sections, section_key=section_key, batch_key=batch_key, modality_key=modality_key,
            coordinate_system=coordinate_system, image_features=image_features, use_image=use_image, progress=progress,
        )  # fmt: skip
        data = self.prepared.data
        self.normaliser = Normaliser.fit(data)
        self.feature_names = data.feature_names
        self.image_feature_names = data.image_feature_names
        self.scheme = self.prepared.scheme
        self.platform = self.prepared.platform
        torch.manual_seed(seed)
        self.module = SoScopeModule(
            ModuleConfig(
                modalities=data.modalities,
                n_input=n_encoder_inputs(data.modalities),
                n_image_features=0 if data.image_features is None else data.image_features.shape[1],
                n_batches=len(self.normaliser.batch_codes),
                n_latent=n_latent,
                n_hidden=n_hidden,
                n_graph_layers=n_graph_layers,
                use_graph=use_graph,
                use_image=use_image,
            )
        )
        self.history: History | None = None
        self.train_config: TrainConfig | None = None
        self.is_trained = False
        logger.info(
            "soscope set up: %d spots, %d sub-spots (%s), modalities %s, image features %s",
            data.n_spots, data.layout.n_subspots, self.scheme,
            {m.name: f"{m.n_features} features, {m.likelihood}" for m in data.modalities},
            "none" if data.image_features is None else data.image_features.shape[1],
        )  # fmt: skip

    # ------------------------------------------------------------------ training
    def train(
        self,
        epochs: int | None = None,
        *,
        pretrain_epochs: int = 0,
        lr: float = 2e-3,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        image_reg_weight: float = 0.1,
        kl_weight: float = 1.0,
        image_warmup: float = 0.0,
        image_weight_decay: float = 1e-4,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 25,
        resume: bool = False,
        progress: bool | None = None,
    ) -> History:
        """Fit the model to the spots it was set up with.

        Parameters
        ----------
        epochs
            Passes over all spots; default ``600 / (spots / 256)`` clipped to [20, 200].
        pretrain_epochs
            Epochs of graph-autoencoder pretraining of the encoder before the full model (the published
            two-step training). Default 0 (off): on synthetic data it did not change the enhanced
            sub-spots' accuracy (see the ablation benchmark) and costs time.
        lr
            Peak learning rate (warm-up, then cosine decay).
        validation_fraction
            Share of spots held out from the loss; their likelihood drives early stopping.
        early_stopping
            Stop when the held-out likelihood has not improved for 30 epochs, keeping the best weights.
        image_reg_weight
            Weight of the image regulariser on neighbouring sub-spots.
        kl_weight
            Weight of the KL term (warmed up over the first 20% of steps).
        image_warmup
            Share of the steps during which spots may differ only through their image and the spatial prior
            (the latent's deviations are switched on afterwards), so the image explains what it can first.
        image_weight_decay
            Weight decay of the image head (shared by all sub-spots), which keeps it from fitting spot noise.
        checkpoint_dir, checkpoint_every, resume
            Write a checkpoint every ``checkpoint_every`` epochs; ``resume=True`` continues from it.
        progress
            Show a progress bar (default: the model's setting).

        Returns
        -------
        The training history (also in ``self.history``).

        """
        if self.prepared is None:
            raise SoscopeInputError(
                "this model was loaded from disk without data; train it with SoScope(sdata).train()"
            )
        data = self.prepared.data
        epochs = default_epochs(data.n_spots) if epochs is None else int(epochs)
        if epochs < 1:
            raise SoscopeInputError(f"epochs must be ≥ 1, got {epochs}")
        if pretrain_epochs < 0:
            raise SoscopeInputError(f"pretrain_epochs must be ≥ 0, got {pretrain_epochs}")
        self.train_config = TrainConfig(
            epochs=epochs, pretrain_epochs=int(pretrain_epochs), lr=lr, early_stopping=early_stopping, image_reg_weight=image_reg_weight, kl_weight=kl_weight,
            image_warmup_fraction=image_warmup, image_weight_decay=image_weight_decay,
            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir), checkpoint_every=checkpoint_every,
            resume=resume, seed=self.settings["seed"],
        )  # fmt: skip
        torch.manual_seed(self.settings["seed"])
        if len(self.normaliser.batch_codes) > 1 and not resume:
            # several batches: start from their closed-form bias (gradient steps alone move it too slowly)
            fit_batch_bias(
                self.module, data, self.normaliser, list(self.normaliser.batch_codes), device=self.device
            )
        self.history = fit(
            self.module, data, self.normaliser, self.train_config, validation_fraction=validation_fraction,
            device=self.device, progress=self.progress if progress is None else progress,
        )  # fmt: skip
        self.is_trained = True
        return self.history

    # ------------------------------------------------------------------ outputs
    def _prepare_other(self, sdata, **selection) -> Prepared:
        """Prepare new data with this model's settings and align its features to the model's."""
        s = self.settings
        args = {
            k: s[k]
            for k in (
                "table",
                "spots",
                "image",
                "layer",
                "section_key",
                "batch_key",
                "modality_key",
                "coordinate_system",
            )
        }
        args.update({k: v for k, v in selection.items() if v is not None})
        prepared = prepare(
            sdata, subspots=self.scheme if not self.scheme.startswith("cells") else s["subspots"],
            likelihood={m.name: m.likelihood for m in self.module.config.modalities}, image_features=self._image_extractor,
            use_image=s["use_image"], progress=self.progress, for_training=False, **args,
        )  # fmt: skip
        self._align_features(prepared)
        calibrate_new_batches(self.module, prepared.data, self.normaliser, device=self.device)
        return prepared

    def _align_features(self, prepared: Prepared) -> None:
        data = prepared.data
        have = {
            m.name: (i, names)
            for i, (m, names) in enumerate(zip(data.modalities, data.feature_names, strict=True))
        }
        counts, names_out = [], []
        for spec, wanted in zip(self.module.config.modalities, self.feature_names, strict=True):
            if spec.name not in have:
                raise ModelCompatibilityError(
                    f"the model has modality {spec.name!r} but the data has {sorted(have)}; pass modality_key= or the right table"
                )
            i, names = have[spec.name]
            pos = {n: k for k, n in enumerate(names)}
            missing = [n for n in wanted if n not in pos]
            if missing:
                raise ModelCompatibilityError(
                    f"{len(missing)} of the model's {len(wanted)} features of modality {spec.name!r} are missing from the data: "
                    f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. Apply the model to data with the same features "
                    "(e.g. subset or pad the table's var to the model's feature_names)."
                )
            counts.append(data.counts[i][:, [pos[n] for n in wanted]])
            names_out.append(list(wanted))
        data.counts, data.feature_names = counts, names_out
        data.modalities = list(self.module.config.modalities)
        if self.module.use_image:
            if data.image_features is None:
                raise ModelCompatibilityError(
                    "the model was trained with image features but the data has no image; pass image= or train with use_image=False"
                )
            if list(data.image_feature_names) != list(self.image_feature_names):
                raise ModelCompatibilityError(
                    "the data's image features differ from the model's; use the same image_features extractor and image kind"
                )
        elif data.image_features is not None:
            data.image_features = None

    def enhance(
        self,
        sdata=None,
        *,
        key_added: str = "soscope",
        n_samples: int = 0,
        overwrite: bool = False,
        inplace: bool = True,
        client=None,
        **selection,
    ):
        """Enhance spots to sub-spots and write the results into the SpatialData.

        Parameters
        ----------
        sdata
            The SpatialData to enhance; default the one the model was set up with.
        key_added
            Suffix of the written elements: shapes ``f"{spots}_{key_added}"`` and table
            ``f"{table}_{key_added}"`` (``f"{table}_{key_added}_{modality}"`` for several modalities).
        n_samples
            When > 0, also ``layers["std"]``: the standard deviation over this many latent samples.
        overwrite
            Replace elements with the output names that soscope did not write.
        inplace
            Add the results to ``sdata`` (and its zarr store); otherwise to a new in-memory SpatialData.
        client
            A ``dask.distributed`` client to run inference on (default: the active client, if any, else
            local threads). Large outputs are streamed to the zarr store chunk by chunk.
        **selection
            Element choices for new data (``table=``, ``spots=``, ``image=``, ``sections=`` ...).

        Returns
        -------
        The SpatialData holding the results.

        """
        from ._dask import enhance_and_write

        if not self.is_trained:
            raise SoscopeInputError(
                "the model is not trained yet: call .train() first (or soscope.enhance(sdata))"
            )
        if sdata is None:
            if self.prepared is None:
                raise SoscopeInputError("pass the SpatialData to enhance: this model was loaded without data")
            sdata, prepared = self.sdata, self.prepared
        elif sdata is self.sdata and not selection and self.prepared is not None:
            prepared = self.prepared
        else:
            prepared = self._prepare_other(sdata, **selection)
        # inference as a Dask graph; large outputs stream into the store (see soscope.model._dask)
        return enhance_and_write(
            sdata, prepared, self.module, self.normaliser, uns=self._uns(), key_added=key_added,
            device=getattr(self, "device_request", self.device), n_samples=n_samples, overwrite=overwrite,
            inplace=inplace, client=client,
            progress=self.progress,
        )  # fmt: skip

    def get_latent(self, sdata=None, **selection) -> np.ndarray:
        """Posterior mean latent of every spot, ``(N, n_latent)``, in the order of the spots element(s)."""
        prepared = self.prepared if sdata is None else self._prepare_other(sdata, **selection)
        if prepared is None:
            raise SoscopeInputError("pass the SpatialData: this model was loaded without data")
        return latent(self.module, prepared.data, self.normaliser, device=self.device)

    def _uns(self) -> dict:
        settings = {k: ("None" if v is None else v) for k, v in self.settings.items()}
        settings = {
            k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in settings.items()
        }
        hist = self.history.as_dict() if self.history else {}
        return {
            "version": __version__,
            "parameters": settings,
            "subspots": self.scheme,
            "platform": getattr(self, "platform", "unknown"),  # "unknown": a loaded model
            "likelihood": {m.name: m.likelihood for m in self.module.config.modalities},
            "train": {}
            if self.train_config is None
            else {k: ("None" if v is None else v) for k, v in self.train_config.__dict__.items()},
            "history": {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in hist.items()},
        }

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save weights, feature names, normalisation and settings to ``path/model.pt``.

        The file holds only tensors, numbers and strings, so :meth:`load` reads it with
        ``torch.load(weights_only=True)``: no code can run from a model file.
        """
        path = Path(path)
        target = path / MODEL_FILE
        if target.exists() and not overwrite:
            raise SoscopeInputError(f"{target} exists; pass overwrite=True to replace it")
        path.mkdir(parents=True, exist_ok=True)
        cfg = self.module.config
        n = self.normaliser
        payload = {
            "format": _FORMAT,
            "soscope_version": __version__,
            "state_dict": self.module.state_dict(),
            "config": json.dumps(
                {
                    **{k: v for k, v in cfg.__dict__.items() if k != "modalities"},
                    "modalities": [m.__dict__ for m in cfg.modalities],
                }
            ),
            "settings": json.dumps(self.settings),
            "scheme": self.scheme,
            "feature_names": json.dumps(self.feature_names),
            "image_feature_names": json.dumps(list(self.image_feature_names)),
            "history": json.dumps(self.history.as_dict() if self.history else {}),
            "normaliser": {
                "input_mean": [torch.as_tensor(a) for a in n.input_mean],
                "input_std": [torch.as_tensor(a) for a in n.input_std],
                "density_mean": [torch.as_tensor(a) for a in n.density_mean],
                "image_mean": None if n.image_mean is None else torch.as_tensor(n.image_mean),
                "image_std": None if n.image_std is None else torch.as_tensor(n.image_std),
                "area_unit": float(n.area_unit),
                "batch_codes": json.dumps(n.batch_codes),
                "image_ridge": None
                if n.image_ridge is None
                else [[torch.as_tensor(a) for a in r] for r in n.image_ridge],
                "cross_reference": None
                if n.cross_reference is None
                else [[] if r is None else [torch.as_tensor(a) for a in r] for r in n.cross_reference],
            },
        }
        tmp = target.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", progress: bool = True) -> SoScope:
        """Load a model saved by :meth:`save` (safe: ``weights_only=True``, no unpickling of objects)."""
        path = Path(path)
        target = path / MODEL_FILE if path.is_dir() else path
        if not target.exists():
            raise SoscopeInputError(f"no soscope model at {path} (expected {target})")
        try:
            payload = torch.load(target, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError for anything but plain data
            raise ModelCompatibilityError(
                f"{target} is not a soscope model file or holds objects that are not allowed ({type(err).__name__}); "
                "model files are loaded with weights_only=True and never run code"
            ) from err
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ModelCompatibilityError(
                f"{target} is not a soscope model file (format {payload.get('format') if isinstance(payload, dict) else None!r})"
            )
        cfg = json.loads(payload["config"])
        cfg["modalities"] = [ModalitySpec(**m) for m in cfg["modalities"]]
        self = cls.__new__(cls)
        self.settings = json.loads(payload["settings"])
        self._image_extractor = self.settings["image_features"]
        self.device = resolve_device(device)
        self.device_request = str(device)  # as asked: cluster workers resolve "auto" on their own hardware
        self.progress = progress
        self.sdata, self.prepared = None, None
        self.module = SoScopeModule(ModuleConfig(**cfg))
        self.module.load_state_dict(payload["state_dict"])
        self.module.eval()
        nm = payload["normaliser"]
        self.normaliser = Normaliser(
            input_mean=[t.numpy() for t in nm["input_mean"]],
            input_std=[t.numpy() for t in nm["input_std"]],
            density_mean=[t.numpy() for t in nm["density_mean"]],
            image_mean=None if nm["image_mean"] is None else nm["image_mean"].numpy(),
            image_std=None if nm["image_std"] is None else nm["image_std"].numpy(),
            area_unit=float(nm["area_unit"]),
            batch_codes=json.loads(nm["batch_codes"]),
            image_ridge=None
            if nm.get("image_ridge") is None
            else [tuple(t.numpy() for t in r) for r in nm["image_ridge"]],
            cross_reference=None
            if nm.get("cross_reference") is None
            else [tuple(t.numpy() for t in r) if r else None for r in nm["cross_reference"]],
        )
        self.scheme = payload["scheme"]
        self.feature_names = json.loads(payload["feature_names"])
        self.image_feature_names = json.loads(payload["image_feature_names"])
        hist = json.loads(payload["history"])
        self.history = History(**hist) if hist else None
        self.train_config = None
        self.is_trained = True
        return self

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}: {m.n_features} × {m.likelihood}" for m in self.module.config.modalities)
        n = "" if self.prepared is None else f"{self.prepared.data.n_spots} spots, "
        return f"SoScope({n}{self.scheme}, {mods}, trained={self.is_trained})"
