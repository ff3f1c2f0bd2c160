"""``SoScope``: the user-facing model — set up from a SpatialData, train, enhance, save and load."""

from __future__ import annotations

import copy
import importlib
import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from numbers import Integral
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .._errors import ModelCompatibilityError, SoscopeInputError
from .._settings import settings as soscope_settings  # not SoScope.settings, the model's own
from .._version import __version__
from ..features import LabelClassifier
from ..io import SelectionRequest
from ..module import ModalitySpec, ModuleConfig, SoScopeModule
from ..train import History, TrainConfig
from ._calibrate import calibrate_new_batches, fit_batch_bias
from ._core import default_epochs, fit, latent, resolve_device
from ._data import Normaliser, n_encoder_inputs
from ._evidence import evidence_from_payload, evidence_to_payload, evidence_uns
from ._reference import (
    SMOOTHNESS,
    CellTypeReference,
    ReferenceFit,
    describe_reference,
    resolve_reference,
    spot_abundance,
)
from ._setup import Prepared, prepare

logger = logging.getLogger("soscope")

MODEL_FILE = "model.pt"
_FORMAT = "soscope-model/2"  # 2: constructor arguments, platform, custom extractors, training settings
_READABLE_FORMATS = ("soscope-model/1", _FORMAT)
#: packages whose torch image extractors :meth:`SoScope.load` rebuilds from their import path unasked
TRUSTED_EXTRACTOR_MODULES = ("soscope",)
#: constructor arguments that belong to the session, not to the model: given again to ``load``
_SESSION_PARAMS = ("device", "progress")


@dataclass
class _ModelState:
    """What a model is built from besides its constructor arguments.

    :class:`SoScope` gets it from the data it is set up on, or from a model file in :meth:`SoScope.load`:
    both then go through the same constructor (one construction path, as scvi-tools' ``_get_init_params``).
    """

    config: ModuleConfig
    normaliser: Normaliser
    scheme: str
    platform: str
    feature_names: list[list[str]]
    image_feature_names: list[str]
    state_dict: dict | None = None  # trained weights (None: a fresh model)
    history: History | None = None
    train_config: TrainConfig | None = None
    is_trained: bool = False
    # human labels: the classifier that makes the label features of new data (None: no labels)
    label_classifier: LabelClassifier | None = None


class SoScope:
    """soScope model: a VAE over spots (graph encoder optional) whose sub-spot split is driven by the image.

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
        ``"morphology"`` (colour, stain and texture statistics; no downloads), optionally on a normalised
        image (``"morphology:macenko"``, ``"morphology:reinhard"``, ``"morphology:percentile"``); a
        :class:`~soscope.features.FoundationModel` (a pretrained network on patches of a fixed size in µm,
        reduced by a PCA fitted here, on the training sub-spots, and reused on new data); a callable on
        image patches; a torch module; or ``"obsm:<table>:<key>"`` for precomputed features. :meth:`save`
        keeps a torch module's (or a foundation model's network's) weights and import path, and a
        foundation model's settings and PCA; a plain callable cannot be saved, so :meth:`load` asks for it
        again. See :func:`soscope.features.subspot_image_features`.
    segmentation
        Where nuclei are counted per sub-spot (their count, density, nuclear area, eccentricity and, when
        detected, stain intensity become image features named ``nuclei:count``, ...): ``"auto"`` (default: a
        labels element or nucleus/cell outlines such as Xenium's ``nucleus_boundaries`` in the spots'
        coordinate system when one is unambiguous, nuclei before cells; else nuclei detected on the image
        with :func:`soscope.features.segment_nuclei`; else none), ``"segment_nuclei"`` (detect on the image),
        the name of a labels or shapes element, or ``None`` (no nuclei). Where they came from is in
        ``uns["soscope"]["segmentation"]``. See :func:`soscope.io.find_segmentation`.
    use_image
        ``False``: no image (sub-spots start from the interpolation of neighbouring spots; no nuclei either).
    use_graph
        Encode each spot's latent with graph attention over its neighbours (``True``) or from the spot alone
        (default). Off by default: on the ablation benchmark's five cases (four real) the graph changed the
        enhanced sub-spots' mean Pearson by less than 0.002 on every case, within training noise, and costs
        time (``benchmarks/results/ablations.md``).
    spot_latent
        Let each spot's profile deviate from the per-feature level through a latent encoded from its counts
        (the published VAE; needed for :meth:`get_latent` and pretraining). Off by default: the deviation
        is shared by a spot's sub-spots, so it changes the split only through what the image head learns
        beside it, and on the ablation benchmark's real cases it never helped (−0.008 mean Pearson on the
        MERFISH hex case, −0.003 at Visium scale, 0 on the others; +0.016 on the synthetic case only;
        ``benchmarks/results/ablations.md``). Off, nothing is encoded: a spot's split is set by the offsets
        (spatial prior, image evidence) and the image head, and training is faster.
    nuclei_prior
        Let a count modality's offsets gain the nucleus term ``gamma * (log(n + a) - log(interp[n + a]))``
        (``n`` the nucleus density of the sub-spot, ``interp`` its interpolation from neighbouring spots),
        with ``gamma`` and ``a`` chosen by cross-validation over spots beside the image weight. Off by
        default: it changed the enhanced sub-spots' mean Pearson by less than 0.005 on every case of the
        ablation benchmark (the nucleus count stays among the image features, ``nuclei:count``, where the
        image evidence weighs it). See :func:`soscope.model._evidence.select_nuclei_weight`.
    image_evidence
        How the image enters the sub-spot offsets: ``"weighted"`` (default: the interpolation of
        neighbouring spots, on the common scale of the batches, plus the image's evidence beyond it,
        weighted per modality by cross-validation over spots, so an image that does not predict held-out
        spots is left out; the weights are in ``uns["soscope"]["image_evidence"]``) or ``"legacy"`` (as
        soscope 0.1: a ridge of spot densities on image features alone, penalty 1e-4, negative densities
        floored; kept to reproduce earlier results). See :mod:`soscope.model._evidence`.
    reference, cell_type_key
        A paired single-cell reference: an AnnData of single cells or of per-type profiles (non-negative,
        raw or normalised; matched to the features by name) with the cell types in ``obs[cell_type_key]``,
        the name of such a table in ``sdata``, or a path to an ``.h5ad`` file. Each spot is deconvolved
        into type abundances (with a per-feature platform effect and a spatial smoothness prior) and each
        type is placed inside the spot by its neighbours and the image; the resulting type-aware densities
        join the spatial prior with a weight chosen by cross-validation over spots (0 when the reference
        does not predict held-out spots). Outputs gain ``obsm["cell_type_abundance"]``. The profiles are
        saved with the model: applying it to new sections needs no reference. See
        :mod:`soscope.model._reference`.
    reference_smoothness
        Strength of the deconvolution's spatial smoothness prior: each neighbouring spot's type mix weighs
        like this many counts (0: none).
    labels
        Human labels: a shapes element of annotated polygons with a categorical column (e.g. drawn in
        napari-spatialdata), or a labels raster with a table of categories; ``"element:column"`` names the
        column when there are several. Partial labelling is the normal case: each sub-spot's share inside
        each category becomes a feature where labelled, and a classifier learned there from the image
        predicts it elsewhere (``label:<category>`` sub-spot features, weighed like image features). The
        classifier is saved with the model. See :mod:`soscope.features._labels`.
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
        segmentation: str | None = "auto",
        use_image: bool = True,
        use_graph: bool = False,
        spot_latent: bool = False,
        nuclei_prior: bool = False,
        image_evidence: str = "weighted",
        reference: Any = None,
        cell_type_key: str = "cell_type",
        reference_smoothness: float = SMOOTHNESS,
        labels: str | None = None,
        n_latent: int = 16,
        n_hidden: int = 128,
        n_graph_layers: int = 2,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ):
        # the constructor arguments, as given (scvi-tools' ``_get_init_params``): save() writes them and
        # load() passes them to this constructor again
        self._init_params: dict[str, Any] = {
            "table": table, "spots": spots, "image": image, "layer": layer, "subspots": subspots,
            "likelihood": likelihood, "sections": sections, "section_key": section_key,
            "batch_key": batch_key, "modality_key": modality_key, "coordinate_system": coordinate_system,
            "image_features": image_features, "segmentation": segmentation,
            "use_image": use_image, "use_graph": use_graph, "spot_latent": spot_latent,
            "nuclei_prior": nuclei_prior, "image_evidence": image_evidence,
            # the reference itself is saved as the fitted profiles (normaliser.reference), not as given
            "reference": describe_reference(reference), "cell_type_key": cell_type_key,
            "reference_smoothness": reference_smoothness, "labels": labels,
            "n_latent": n_latent, "n_hidden": n_hidden,
            "n_graph_layers": n_graph_layers, "seed": seed, "device": device, "progress": progress,
        }  # fmt: skip
        #: the elements this model was set up on; new data is selected alike unless told otherwise
        self.selection = SelectionRequest(
            table=table, spots=spots, image=image, layer=layer, coordinate_system=coordinate_system,
            sections=sections, section_key=section_key, batch_key=batch_key, modality_key=modality_key,
        )  # fmt: skip
        self._image_extractor = image_features
        self.device = resolve_device(device)
        self.device_request = str(device)  # as asked: cluster workers resolve "auto" on their own hardware
        self.progress = progress
        if isinstance(sdata, _ModelState):  # SoScope.load: the state read from a model file, no data
            state = sdata
            self.sdata, self.prepared = None, None
        else:
            if isinstance(sdata, (list, tuple, dict)):
                from ..io import combine

                sdata = combine(sdata)
            self.sdata = sdata
            resolved = resolve_reference(reference, sdata, cell_type_key)
            self.prepared = prepare(
                sdata, self.selection, subspots=subspots, likelihood=likelihood,
                image_features=image_features, use_image=use_image, progress=progress, labels=labels,
                segmentation=segmentation,
            )  # fmt: skip
            state = _state_from_data(
                self.prepared, n_latent=n_latent, n_hidden=n_hidden, n_graph_layers=n_graph_layers,
                use_graph=use_graph, use_image=use_image, image_evidence=image_evidence,
                reference=resolved, reference_smoothness=reference_smoothness, spot_latent=spot_latent,
                nuclei_prior=nuclei_prior,
            )  # fmt: skip
            if self.prepared.fitted_extractor is not None:
                # a foundation model's PCA, fitted on these (training) sub-spots: kept, saved, and used
                # unchanged on new data
                self._image_extractor = self.prepared.fitted_extractor
                self._init_params["image_features"] = self.prepared.fitted_extractor
        self.normaliser = state.normaliser
        self.label_classifier = state.label_classifier
        self.feature_names = state.feature_names
        self.image_feature_names = state.image_feature_names
        self.scheme = state.scheme
        self.platform = state.platform
        torch.manual_seed(seed)
        self.module = SoScopeModule(state.config)
        if state.state_dict is not None:
            self.module.load_state_dict(state.state_dict)
            self.module.eval()
        self.history: History | None = state.history
        self.train_config: TrainConfig | None = state.train_config
        self.is_trained = state.is_trained
        if self.prepared is not None:
            data = self.prepared.data
            logger.info(
                "soscope set up: %d spots, %d sub-spots (%s), modalities %s, image features %s",
                data.n_spots, data.layout.n_subspots, self.scheme,
                {m.name: f"{m.n_features} features, {m.likelihood}" for m in data.modalities},
                "none" if data.image_features is None else data.image_features.shape[1],
            )  # fmt: skip

    @property
    def settings(self) -> dict[str, Any]:
        """Return the constructor arguments as plain values (not ``device`` and ``progress``, the session's).

        A custom image extractor appears as its description (e.g. ``"torch:pkg.mod:Net"``).
        """
        params = {k: v for k, v in self._init_params.items() if k not in _SESSION_PARAMS}
        params["image_features"] = _describe_extractor(params["image_features"])
        return params

    # ------------------------------------------------------------------ training
    def train(
        self,
        epochs: int | None = None,
        *,
        pretrain_epochs: int = 0,
        lr: float = 2e-3,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        image_reg_weight: float = 0.0,
        kl_weight: float = 1.0,
        image_warmup: float = 0.0,
        image_weight_decay: float = 1e-4,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 25,
        resume: bool = False,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> History:
        """Fit the model to the spots it was set up with.

        Parameters
        ----------
        epochs
            Passes over all spots; default ``600 / (spots / batch_size)`` clipped to [20, 200] (about 600
            optimizer steps).
        pretrain_epochs
            Epochs of graph-autoencoder pretraining of the encoder before the full model (the published
            two-step training; needs ``spot_latent=True``). Default 0 (off): 30 epochs of it changed the
            enhanced sub-spots' mean Pearson by less than 0.005 on every case of the ablation benchmark, and
            it costs time.
        lr
            Peak learning rate (warm-up, then cosine decay).
        validation_fraction
            Share of spots held out from the loss; their likelihood drives early stopping.
        early_stopping
            Stop when the held-out likelihood has not improved for 30 epochs, keeping the best weights.
        image_reg_weight
            Weight of the image regulariser, which asks neighbouring sub-spots with similar image features
            to have similar profiles. Default 0 (off): at 0.1 (the earlier default) it changed the enhanced
            sub-spots' mean Pearson by less than 0.001 on every case of the ablation benchmark.
        kl_weight
            Weight of the KL term (warmed up over the first 20% of steps).
        image_warmup
            With ``spot_latent=True``: share of the steps during which spots may differ only through their
            image and the spatial prior (the latent's deviations are switched on afterwards), so the image
            explains what it can first.
        image_weight_decay
            Weight decay of the image head (shared by all sub-spots), which keeps it from fitting spot noise.
        checkpoint_dir, checkpoint_every, resume
            Write a checkpoint every ``checkpoint_every`` epochs; ``resume=True`` continues from it (with the
            same arguments, the resumed run takes the same steps as an uninterrupted one).
        batch_size
            Spots per training step (default ``soscope.settings.train_chunk_spots``, 256): each optimizer
            step sees a chunk of this many neighbouring spots (plus the halo their graph needs), so an epoch
            takes about ``spots / batch_size`` steps (``history.steps``). Larger chunks use more memory per
            step.
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
        batch_size = soscope_settings.train_chunk_spots if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise SoscopeInputError(
                f"batch_size must be a positive whole number of spots per training step, got {batch_size!r}; "
                "leave it out for the default (soscope.settings.train_chunk_spots)"
            )
        batch_size = int(batch_size)
        epochs = default_epochs(data.n_spots, batch_size) if epochs is None else int(epochs)
        if epochs < 1:
            raise SoscopeInputError(f"epochs must be ≥ 1, got {epochs}")
        if pretrain_epochs < 0:
            raise SoscopeInputError(f"pretrain_epochs must be ≥ 0, got {pretrain_epochs}")
        if pretrain_epochs > 0 and not self.module.config.spot_latent:
            raise SoscopeInputError(
                "pretraining fits the spot latent's encoder, and this model has none (spot_latent=False); "
                "set it up with SoScope(sdata, spot_latent=True) or leave pretrain_epochs at 0"
            )
        self.train_config = TrainConfig(
            epochs=epochs, pretrain_epochs=int(pretrain_epochs), lr=lr, early_stopping=early_stopping,
            image_reg_weight=image_reg_weight, kl_weight=kl_weight, image_warmup_fraction=image_warmup,
            image_weight_decay=image_weight_decay,
            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
            checkpoint_every=checkpoint_every,
            resume=resume, seed=self._init_params["seed"], batch_size=batch_size,
        )  # fmt: skip
        torch.manual_seed(self._init_params["seed"])
        if len(self.normaliser.batch_codes) > 1 and not resume:
            # several batches: start from their closed-form bias (gradient steps alone move it too slowly)
            fit_batch_bias(
                self.module, data, self.normaliser, list(self.normaliser.batch_codes), device=self.device
            )
        self.history = fit(
            self.module, data, self.normaliser, self.train_config, validation_fraction=validation_fraction,
            device=self.device, progress=self.progress if progress is None else progress,
            chunk_spots=batch_size,
        )  # fmt: skip
        self.is_trained = True
        return self.history

    # ------------------------------------------------------------------ outputs
    @property
    def uses_nuclei(self) -> bool:
        """Whether the model's image features include nuclei per sub-spot (``nuclei:count``, ...)."""
        return bool(_nuclei_names(self.image_feature_names))

    def _segmentation_for(self, selection: dict) -> str | None:
        """``segmentation=`` for new data: the one given (popped from ``selection``), else the model's own.

        A model without nuclei features counts none (a segmentation given for it is refused: it would do
        nothing).
        """
        given = "segmentation" in selection
        value = selection.pop("segmentation", None)
        if not self.uses_nuclei:
            if given and value is not None:
                raise SoscopeInputError(
                    f"segmentation={value!r}: this model was trained without nuclei features (segmentation="
                    f"{self._init_params['segmentation']!r} found none), so it uses no segmentation: leave "
                    "`segmentation=` out"
                )
            return None
        return value if given else self._init_params["segmentation"]

    def _prepare_other(self, sdata, **selection) -> Prepared:
        """Prepare new data with this model's settings and align its features to the model's."""
        s = self.settings
        segmentation = self._segmentation_for(selection)
        # the sections of the training data do not carry over: new data is usually other sections
        request = replace(self.selection, sections=None).updated(**selection)
        prepared = prepare(
            sdata, request, subspots=self.scheme if not self.scheme.startswith("cells") else s["subspots"],
            likelihood={m.name: m.likelihood for m in self.module.config.modalities},
            image_features=self._image_extractor, segmentation=segmentation,
            use_image=s["use_image"], progress=self.progress, for_training=False,
            label_classifier=self.label_classifier,
        )  # fmt: skip
        self._align_features(prepared)
        calibrate_new_batches(self.module, prepared.data, self.normaliser, device=self.device)
        if self.normaliser.reference is not None:  # the new spots' cell types, with the saved profiles
            prepared.data.cell_type_abundance = spot_abundance(prepared.data, self.normaliser.reference)
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
                    f"the model has modality {spec.name!r} but the data has {sorted(have)}; "
                    "pass modality_key= or the right table"
                )
            i, names = have[spec.name]
            pos = {n: k for k, n in enumerate(names)}
            missing = [n for n in wanted if n not in pos]
            if missing:
                raise ModelCompatibilityError(
                    f"{len(missing)} of the model's {len(wanted)} features of modality {spec.name!r} are "
                    f"missing from the data: {missing[:10]}{' ...' if len(missing) > 10 else ''}. "
                    "Apply the model to data with the same features "
                    "(e.g. subset or pad the table's var to the model's feature_names)."
                )
            counts.append(data.counts[i][:, [pos[n] for n in wanted]])
            names_out.append(list(wanted))
        data.counts, data.feature_names = counts, names_out
        data.modalities = list(self.module.config.modalities)
        if self.module.use_image:
            if data.image_features is None:
                raise ModelCompatibilityError(
                    "the model was trained with image features but the data has no image; pass image= "
                    "or train with use_image=False"
                )
            if list(data.image_feature_names) != list(self.image_feature_names):
                nuclei, got = _nuclei_names(self.image_feature_names), _nuclei_names(data.image_feature_names)
                if nuclei != got:
                    raise ModelCompatibilityError(
                        f"the model was trained with the nuclei features {nuclei} but this data gives {got} "
                        f"(segmentation: {prepared.segmentation.get('source', 'none')}): pass "
                        "`segmentation=` a segmentation of the same kind as at training ('segment_nuclei' to "
                        "detect nuclei on the image, or a labels / outlines element)"
                    )
                raise ModelCompatibilityError(
                    "the data's image features differ from the model's; use the same image_features "
                    "extractor and image kind"
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
        chunk_spots: int | None = None,
        features: str | list[str] | None = "all",
        dtype: str = "float32",
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
            When > 0, also ``layers["std"]``, ``layers["q10"]`` and ``layers["q90"]``: the posterior
            predictive spread and 10 % / 90 % quantiles of each sub-spot's counts over this many draws.
        overwrite
            Replace elements with the output names that soscope did not write.
        inplace
            Add the results to ``sdata`` (and its zarr store); otherwise to a new in-memory SpatialData.
        client
            A ``dask.distributed`` client to run inference on (default: the active client, if any, else
            local threads). Large outputs are streamed to the zarr store chunk by chunk.
        chunk_spots
            Spots per inference task (plus their halo), default ``soscope.settings.infer_chunk_spots``
            (2048), fewer when many features would not fit ``soscope.settings.memory_limit``. Smaller
            chunks bound memory more tightly and give more tasks to spread over workers; the results do not
            depend on it.
        features
            ``"all"`` (default), a list of feature names, or a boolean ``var`` column's name (e.g.
            ``"highly_variable"``): the features computed and written.
        dtype
            ``"float32"`` (default) or ``"float16"`` (half the size, about three significant digits).
        **selection
            Element choices for new data (``table=``, ``spots=``, ``image=``, ``sections=`` ...), and
            ``segmentation=`` (default: the model's setting; only for a model with nuclei features).

        Returns
        -------
        The SpatialData holding the results.

        """
        from ._apply import enhance_and_write

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
        # one task per chunk of spots (soscope.tiling.run_tasks); large outputs stream into the store
        return enhance_and_write(
            sdata, prepared, self.module, self.normaliser, uns=self._uns(prepared), key_added=key_added,
            device=self.device_request, n_samples=n_samples, overwrite=overwrite,
            inplace=inplace, client=client, chunk_spots=chunk_spots,
            progress=self.progress, features=features, dtype=dtype,
        )  # fmt: skip

    def get_latent(self, sdata=None, **selection) -> np.ndarray:
        """Posterior mean latent of every spot, ``(N, n_latent)``, in the order of the spots element(s).

        Needs a model with a spot latent (``SoScope(..., spot_latent=True)``).
        """
        if not self.module.config.spot_latent:
            raise SoscopeInputError(
                "this model has no spot latent (spot_latent=False, the default); set it up with "
                "SoScope(sdata, spot_latent=True) and train it to get one"
            )
        prepared = self.prepared if sdata is None else self._prepare_other(sdata, **selection)
        if prepared is None:
            raise SoscopeInputError("pass the SpatialData: this model was loaded without data")
        return latent(self.module, prepared.data, self.normaliser, device=self.device)

    def _uns(self, prepared: Prepared | None = None) -> dict:
        """``uns["soscope"]`` of the outputs; ``prepared``: the data enhanced (where its nuclei came from)."""
        settings = {k: ("None" if v is None else v) for k, v in self.settings.items()}
        settings = {
            k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in settings.items()
        }
        hist = self.history.as_dict() if self.history else {}
        return {
            "version": __version__,
            "parameters": settings,
            "subspots": self.scheme,
            "platform": self.platform,
            "likelihood": {m.name: m.likelihood for m in self.module.config.modalities},
            "train": {}
            if self.train_config is None
            else {k: ("None" if v is None else v) for k, v in self.train_config.__dict__.items()},
            "history": {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in hist.items()},
            "image_evidence": evidence_uns(
                self.normaliser.evidence, [m.name for m in self.module.config.modalities]
            ),
            "reference": {} if self.normaliser.reference is None else self.normaliser.reference.as_uns(),
            "labels": {} if self.label_classifier is None else self._labels_uns(),
            "image_features": _image_features_uns(self._image_extractor, prepared),
            "segmentation": {"source": "none"}
            if prepared is None or not prepared.segmentation
            else prepared.segmentation,
        }

    def _labels_uns(self) -> dict:
        """``uns["soscope"]["labels"]``: the categories and how the label features were learned."""
        c = self.label_classifier
        found = {} if self.prepared is None else dict(self.prepared.label_provenance)
        return {
            "categories": np.asarray(c.categories, dtype=object),
            "labelled_subspots_at_training": int(c.n_labelled),
            **{k: v for k, v in found.items() if k != "categories"},
        }

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the model to ``path/model.pt``.

        The file holds the weights, the constructor arguments, the feature names, the normalisation, the
        sub-spot scheme, the platform and the training history.
        The file holds only tensors, numbers and strings, so :meth:`load` reads it with
        ``torch.load(weights_only=True)``: no code can run from a model file. A custom image extractor is
        kept as follows: a torch module as its weights plus its import path (rebuilt by :meth:`load` when
        trusted, see there); a plain callable (a function, a lambda) cannot be stored, so the model is saved
        without it and :meth:`load` asks for it again as ``image_features=`` (a warning says so here).
        """
        path = Path(path)
        target = path / MODEL_FILE
        if target.exists() and not overwrite:
            raise SoscopeInputError(f"{target} exists; pass overwrite=True to replace it")
        params = {k: v for k, v in self._init_params.items() if k not in _SESSION_PARAMS}
        extractor = params["image_features"]
        extractor_state = None
        if not isinstance(extractor, str):
            params["image_features"] = _extractor_marker(extractor)
            if isinstance(extractor, torch.nn.Module):
                extractor_state = {k: v.detach().cpu() for k, v in extractor.state_dict().items()}
            elif _is_foundation(extractor):
                extractor_state = {
                    "backbone": {k: v.detach().cpu() for k, v in extractor.model.state_dict().items()},
                    "pca": extractor.pca_state() or {},
                }
            elif self.image_feature_names:
                warnings.warn(
                    f"the image-feature extractor {params['image_features']['name']} is a callable, which a "
                    "model file cannot hold: the model is saved without it, and "
                    "SoScope.load(path, image_features=...) needs the same callable again",
                    UserWarning,
                    stacklevel=2,
                )
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
            "init_params": json.dumps(params),
            "image_extractor_state": extractor_state,
            "scheme": self.scheme,
            "platform": self.platform,
            "feature_names": json.dumps(self.feature_names),
            "image_feature_names": json.dumps(list(self.image_feature_names)),
            "history": json.dumps(self.history.as_dict() if self.history else {}),
            "train_config": json.dumps(None if self.train_config is None else self.train_config.__dict__),
            "is_trained": bool(self.is_trained),
            "label_classifier": None
            if self.label_classifier is None
            else {
                "categories": json.dumps(self.label_classifier.categories),
                "coef": torch.as_tensor(self.label_classifier.coef),
                "intercept": torch.as_tensor(self.label_classifier.intercept),
                "n_labelled": int(self.label_classifier.n_labelled),
            },
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
                "evidence": evidence_to_payload(n.evidence),
                "offsets": n.offsets,
                "batch_scale": None if n.batch_scale is None else [torch.as_tensor(a) for a in n.batch_scale],
                "reference": None if n.reference is None else n.reference.to_payload(),
            },
        }
        tmp = target.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(target)
        return target

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        progress: bool = True,
        image_features: Any = None,
        trusted_modules: Iterable[str | ModuleType] = (),
    ) -> SoScope:
        """Load a model saved by :meth:`save` (safe: ``weights_only=True``, no unpickling of objects).

        The model is rebuilt through the constructor with the arguments it was created with.

        Parameters
        ----------
        path
            The folder given to :meth:`save`, or the model file in it.
        device, progress
            As in :class:`SoScope`.
        image_features
            The image-feature extractor, for a model trained with a custom one. Needed for a plain callable
            (which :meth:`save` cannot store): pass the same callable. For a torch module, optional: an
            instance of the saved class (or the class itself, built without arguments) receives the saved
            weights; an instance of another class is used as given.
        trusted_modules
            Modules (names or module objects) from which a saved torch extractor may be rebuilt through its
            import path, besides soscope's own. Importing runs that module's code, so only modules you trust.

        """
        path = Path(path)
        target = path / MODEL_FILE if path.is_dir() else path
        if not target.exists():
            raise SoscopeInputError(f"no soscope model at {path} (expected {target})")
        try:
            payload = torch.load(target, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError for anything but plain data
            raise ModelCompatibilityError(
                f"{target} is not a soscope model file or holds objects that are not allowed "
                f"({type(err).__name__}); model files are loaded with weights_only=True and never run code"
            ) from err
        if not isinstance(payload, dict) or payload.get("format") not in _READABLE_FORMATS:
            found = payload.get("format") if isinstance(payload, dict) else None
            raise ModelCompatibilityError(f"{target} is not a soscope model file (format {found!r})")
        if "init_params" in payload:
            params = json.loads(payload["init_params"])
        else:  # format 1: the settings were the constructor arguments, a custom extractor kept as its repr
            params = json.loads(payload["settings"])
            if not _is_named_extractor(params["image_features"]):
                params["image_features"] = {"kind": "callable", "name": params["image_features"]}
        cfg = json.loads(payload["config"])
        cfg["modalities"] = [ModalitySpec(**m) for m in cfg["modalities"]]
        # models saved before these switches were trained with a spot latent and the nucleus term allowed
        cfg.setdefault("spot_latent", True)
        params.setdefault("spot_latent", cfg["spot_latent"])
        params.setdefault("nuclei_prior", True)
        image_feature_names = json.loads(payload["image_feature_names"])
        params["image_features"] = _resolve_extractor(
            params["image_features"], payload.get("image_extractor_state"), image_features,
            trusted_modules=trusted_modules, needed=bool(image_feature_names),
        )  # fmt: skip
        hist = json.loads(payload["history"])
        train_config = json.loads(payload.get("train_config", "null"))
        state = _ModelState(
            config=ModuleConfig(**cfg),
            normaliser=_normaliser_from_payload(payload["normaliser"]),
            scheme=payload["scheme"],
            platform=payload.get("platform", "unknown"),  # format 1 did not keep it
            feature_names=json.loads(payload["feature_names"]),
            image_feature_names=image_feature_names,
            state_dict=payload["state_dict"],
            history=_known_fields(History, hist) if hist else None,
            train_config=None if train_config is None else _known_fields(TrainConfig, train_config),
            is_trained=bool(payload.get("is_trained", True)),
            label_classifier=_label_classifier_from_payload(payload.get("label_classifier")),
        )
        return cls(state, **params, device=device, progress=progress)

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}: {m.n_features} × {m.likelihood}" for m in self.module.config.modalities)
        n = "" if self.prepared is None else f"{self.prepared.data.n_spots} spots, "
        return f"SoScope({n}{self.scheme}, {mods}, trained={self.is_trained})"


# ------------------------------------------------------------------------------------ construction helpers
def _state_from_data(
    prepared: Prepared,
    *,
    n_latent: int,
    n_hidden: int,
    n_graph_layers: int,
    use_graph: bool,
    use_image: bool,
    image_evidence: str = "weighted",
    reference: CellTypeReference | None = None,
    reference_smoothness: float = SMOOTHNESS,
    spot_latent: bool = False,
    nuclei_prior: bool = False,
) -> _ModelState:
    """Build the state of a fresh model on ``prepared``: normalisation fitted on it, network sized to it."""
    data = prepared.data
    normaliser = Normaliser.fit(
        data, offsets=image_evidence, reference=reference, reference_smoothness=reference_smoothness,
        nuclei_prior=nuclei_prior,
    )  # fmt: skip
    config = ModuleConfig(
        modalities=data.modalities,
        n_input=n_encoder_inputs(data.modalities),
        n_image_features=0 if data.image_features is None else data.image_features.shape[1],
        n_batches=len(normaliser.batch_codes),
        n_latent=n_latent,
        n_hidden=n_hidden,
        n_graph_layers=n_graph_layers,
        use_graph=use_graph,
        spot_latent=spot_latent,
        # an image that predicts no modality's held-out spots (weight 0) is left out: the no-image model
        use_image=use_image and normaliser.image_informative,
    )
    return _ModelState(
        label_classifier=prepared.label_classifier,
        config=config,
        normaliser=normaliser,
        scheme=prepared.scheme,
        platform=prepared.platform,
        feature_names=data.feature_names,
        image_feature_names=data.image_feature_names,
    )


def _label_classifier_from_payload(d: dict | None) -> LabelClassifier | None:
    if d is None:
        return None
    return LabelClassifier(
        json.loads(d["categories"]), d["coef"].numpy(), d["intercept"].numpy(), int(d["n_labelled"])
    )


def _nuclei_names(names: Iterable[str]) -> list[str]:
    """Return the nucleus features (``nuclei:count``, ...) among image feature names."""
    from ..features import NUCLEI_FEATURES

    known = set(NUCLEI_FEATURES.values())
    return [n for n in names if n in known]


def _known_fields(cls: type, values: dict) -> Any:
    """Build dataclass ``cls`` from the saved ``values`` it knows (files of other versions may hold more)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _normaliser_from_payload(nm: dict) -> Normaliser:
    """Rebuild the :class:`Normaliser` written by :meth:`SoScope.save` (tensors back to arrays)."""
    return Normaliser(
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
        evidence=evidence_from_payload(nm.get("evidence")),
        # files from before the weighted evidence: an image ridge without weights is the legacy offset
        offsets=nm.get("offsets", "legacy" if nm.get("image_ridge") is not None else "weighted"),
        batch_scale=None if nm.get("batch_scale") is None else [t.numpy() for t in nm["batch_scale"]],
        reference=ReferenceFit.from_payload(nm.get("reference")),
    )


# ---------------------------------------------------------------------------------------- custom extractors
def _is_named_extractor(value: Any) -> bool:
    """Say whether an extractor is named by a string (saved as it is).

    ``"morphology"``, ``"morphology:<normalisation>"`` and ``"obsm:<table>:<key>"``.
    """
    return isinstance(value, str) and (
        value == "morphology" or value.startswith("morphology:") or value.startswith("obsm:")
    )


def _is_foundation(extractor: Any) -> bool:
    from ..features import FoundationModel

    return isinstance(extractor, FoundationModel)


def _plain_uns(value: Any) -> Any:
    """``value`` with what a zarr store cannot hold made plain: None → ``"None"``, sequences → arrays."""
    if isinstance(value, dict):
        return {str(k): _plain_uns(v) for k, v in value.items()}
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def _image_features_uns(extractor: Any, prepared: Prepared | None) -> dict:
    """Provenance of the image features for ``uns["soscope"]["image_features"]`` (empty without image)."""
    found = {} if prepared is None else dict(prepared.image_provenance)
    if not found:
        return {}
    found["description"] = _describe_extractor(extractor)
    return _plain_uns(found)


def _import_path(obj: Any) -> str:
    """``"module:qualname"`` of a function or of an object's class."""
    # functions and classes carry their own qualname; instances (a torch module, a callable object) use
    # their class's
    target = obj if isinstance(obj, type) or hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"


def _describe_extractor(extractor: Any) -> str:
    """Describe an extractor for ``uns`` and logs: its name, or its kind and import path."""
    if isinstance(extractor, str):
        return extractor
    if _is_foundation(extractor):
        return f"foundation:{extractor.name}"
    kind = "torch" if isinstance(extractor, torch.nn.Module) else "callable"
    return f"{kind}:{_import_path(extractor)}"


def _extractor_marker(extractor: Any) -> dict[str, str]:
    """Record a custom extractor in a model file (a torch module's weights go beside this record).

    A foundation model is recorded by its network's import path and its settings (JSON); its network's
    weights and its PCA go beside.
    """
    if _is_foundation(extractor):
        return {
            "kind": "foundation",
            "name": _import_path(extractor.model),
            "config": json.dumps(extractor.config()),
        }
    kind = "torch" if isinstance(extractor, torch.nn.Module) else "callable"
    return {"kind": kind, "name": _import_path(extractor)}


def _is_trusted(module_name: str, trusted: Iterable[str | ModuleType]) -> bool:
    names = [
        t.__name__ if isinstance(t, ModuleType) else str(t) for t in (*TRUSTED_EXTRACTOR_MODULES, *trusted)
    ]
    return any(module_name == n or module_name.startswith(n + ".") for n in names)


def _with_weights(module: torch.nn.Module, state: dict | None, name: str) -> torch.nn.Module:
    """Return a copy of ``module`` holding the saved weights (the caller's object is left as it was)."""
    module = copy.deepcopy(module)
    if state is not None:
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise ModelCompatibilityError(
                f"the saved weights of the image extractor {name} do not fit the module given as "
                f"image_features= ({err}); pass a module built with the same arguments as at training"
            ) from err
    module.eval()
    return module


def _resolve_extractor(
    saved: str | dict,
    state: dict | None,
    given: Any,
    *,
    trusted_modules: Iterable[str | ModuleType],
    needed: bool,
) -> Any:
    """Return the image extractor of a loaded model, from what the file recorded and what the caller passed.

    Torch modules are rebuilt from their import path only when that path lies in a trusted module
    (importing runs code); plain callables cannot be stored and must be given again.
    """
    if isinstance(saved, str):
        if given is not None and given != saved:
            raise SoscopeInputError(
                f"this model was trained with image_features={saved!r}; image_features= at load is only for "
                "models trained with a custom extractor: leave it out"
            )
        return saved
    kind, name = saved["kind"], saved["name"]
    if kind == "foundation":
        if not needed and given is None:
            return "morphology"
        return _resolve_foundation(saved, state, given, trusted_modules=trusted_modules)
    if given is not None:
        if isinstance(given, type) and issubclass(given, torch.nn.Module):
            try:
                given = given()
            except TypeError as err:
                raise SoscopeInputError(
                    f"the image extractor class {name} cannot be built without arguments ({err}); pass an "
                    "instance: SoScope.load(path, image_features=Net(...))"
                ) from err
        if kind == "torch" and isinstance(given, torch.nn.Module) and _import_path(given) == name:
            return _with_weights(given, state, name)
        if not callable(given):
            raise SoscopeInputError(
                f"image_features= must be a callable or a torch module, not {type(given).__name__}"
            )
        return given  # another extractor, on the caller's word: used as given
    if not needed:  # the model uses no image features: the extractor is never run on its behalf
        return "morphology"
    if kind == "callable":
        raise SoscopeInputError(
            f"this model was trained with the image-feature callable {name}, which a model file cannot hold: "
            "pass the same callable, SoScope.load(path, image_features=fn)"
        )
    module_name, _, qualname = name.partition(":")
    if not _is_trusted(module_name, trusted_modules) or "<locals>" in qualname or module_name == "__main__":
        raise SoscopeInputError(
            f"this model's image extractor is the torch module {name}, which is rebuilt only from trusted "
            "modules: pass an instance (or the class), SoScope.load(path, image_features=Net()), or trust "
            f"its module, SoScope.load(path, trusted_modules=[{module_name!r}])"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        module = obj()
    except (ImportError, AttributeError, TypeError) as err:
        raise SoscopeInputError(
            f"the image extractor {name} could not be rebuilt ({type(err).__name__}: {err}); pass an "
            "instance, SoScope.load(path, image_features=Net(...))"
        ) from err
    return _with_weights(module, state, name)


def _resolve_foundation(
    saved: dict, state: dict | None, given: Any, *, trusted_modules: Iterable[str | ModuleType]
) -> Any:
    """Rebuild a saved :class:`~soscope.features.FoundationModel`: its settings, its network, its PCA.

    The network is the one given at load (a ``FoundationModel``, a module or its class), else a timm
    architecture built by name (``pretrained=False``: nothing is downloaded), else rebuilt from its import
    path as a torch extractor (trusted modules only); it then receives the saved weights.
    """
    from ..features import FoundationModel

    config = json.loads(saved["config"])
    state = state or {}
    module = given.model if isinstance(given, FoundationModel) else given
    if module is not None or not str(config.get("name", "")).startswith("timm:"):
        # as a torch extractor: the given module (or class), else the import path of a trusted module
        torch_record = {"kind": "torch", "name": saved["name"]}
        module = _resolve_extractor(torch_record, None, module, trusted_modules=trusted_modules, needed=True)
    return FoundationModel.from_config(
        config, module, pca=state.get("pca") or None, weights=state.get("backbone")
    )
