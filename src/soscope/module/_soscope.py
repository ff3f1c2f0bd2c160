"""The soScope network: graph encoder over spots, image-driven sub-spot decoder, spot likelihoods.

Pure torch: tensors in, tensors out. Nothing here knows about SpatialData.

Generative model, per modality ``m`` with features ``g``::

    z_i            ~ N(0, I)                                  spot latent (graph encoder posterior)
    log rate_ikg   = o_ikg + b_g + delta_g(z_i) + h_g(y_ik)
    rate_ikg       = a_ik * exp(log rate_ikg)                 expected counts in sub-spot k's polygon
    E[x_ig]        = sum_k w_ik * rate_ikg                    the spot sees its footprint only

``o`` is a fixed offset: the log density that a linear model of the image (a ridge of spot densities on
footprint-averaged image features, fitted in closed form) predicts from the sub-spot's own image features —
or, without an image, the Gaussian interpolation of neighbouring spots' densities at the sub-spot. ``h`` is a
learned non-linear correction from the sub-spot's image features alone, ``delta`` the spot's deviation decoded
from its latent (under a Gaussian prior, so the image explains first), ``a`` the relative polygon area and
``w`` the polygon's share inside the spot's footprint. The *split* of a spot across its sub-spots is therefore
set by the image alone: spot-level information enters only as a per-spot factor shared by all its sub-spots,
which keeps the split identifiable from spot observations (a decoder fed spot-level inputs per sub-spot learns
splits that ignore the image, and its accuracy decays as training goes on). For Gaussian modalities the same
terms are added without the exponential, and the spot observes the area-weighted mean over its footprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ._distributions import COUNT_LIKELIHOODS, LIKELIHOODS, spot_likelihood
from ._layers import GraphAttention, mlp
from ._outputs import (
    condition_counts,
    condition_gaussian,
    inside_share,
    presence_probability,
    quantile,
    sample_dirichlet_share,
    sample_gaussian,
    sample_multinomial_split,
    sample_outside,
    spot_sum,
    within_spot_rank,
)

#: ``ModuleConfig.extra`` key: the number of batches the network was trained on (the output scale's
#: reference); batches calibrated later (new sections) come after them.
N_TRAINED_BATCHES = "n_trained_batches"


@dataclass(frozen=True)
class ModalitySpec:
    """One modality's head: its name, number of features, likelihood and weight in the loss."""

    name: str
    n_features: int
    likelihood: str = "nb"
    weight: float = 1.0

    def __post_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood {self.likelihood!r} is not one of {LIKELIHOODS}")

    @property
    def is_count(self) -> bool:
        """Whether the head models counts (multiplicative, summed) rather than continuous values."""
        return self.likelihood in COUNT_LIKELIHOODS


class LazyColumns:
    """A ``(rows, columns)`` matrix computed on demand, for the columns asked for (feature blocks).

    Many features make sub-spot × feature arrays the largest of a batch (7 sub-spots per spot); a training
    step scores a subset of the features and inference runs them a block at a time, so the offsets of a
    wide modality are computed per request rather than held whole. ``compute(cols)`` returns the columns
    ``cols`` (``None``: all; a slice; or an index array) as a float32 array-like; every column is computed
    from its own inputs alone, so a block's values are those of the same columns of the whole matrix.

    Parameters
    ----------
    compute
        ``cols -> (rows, len(cols))`` array.
    shape
        ``(rows, columns)`` of the whole matrix.
    device
        Where the computed columns are put.

    """

    def __init__(self, compute, shape: tuple[int, int], device: torch.device | str = "cpu"):
        self.compute, self.shape, self.device = compute, tuple(shape), device

    def columns(self, cols: slice | torch.Tensor | None) -> torch.Tensor:
        """Return the columns ``cols`` (``None``: all) as a float32 tensor on :attr:`device`."""
        if isinstance(cols, torch.Tensor):
            cols = cols.cpu().numpy()
        return torch.as_tensor(self.compute(cols), dtype=torch.float32).to(self.device)

    def to(self, device: torch.device | str) -> LazyColumns:
        """Return the same matrix, its columns put on ``device``."""
        return LazyColumns(self.compute, self.shape, device)


def offset_columns(offset: torch.Tensor | LazyColumns, cols) -> torch.Tensor:
    """Return the columns ``cols`` (``None``: all; a slice or index tensor) of a modality's offsets."""
    if isinstance(offset, LazyColumns):
        return offset.columns(cols)
    return offset if cols is None else offset[:, cols]


@dataclass
class SpotBatch:
    """Tensors of a set of spots (a section, a chunk with its halo, or a minibatch) and their sub-spots.

    Spot tensors have ``n`` rows, sub-spot tensors ``m`` rows; ``sub_spot`` maps sub-spots to spot rows.
    """

    x: list[torch.Tensor]  # per modality (n, F_m) observations
    x_in: torch.Tensor  # (n, F_in) encoder input (normalised)
    edge_index: torch.Tensor  # (2, E) spot graph, local indices
    batch: torch.Tensor  # (n,) batch / section codes
    sub_spot: torch.Tensor  # (m,) parent spot row
    sub_area: torch.Tensor  # (m,) polygon area relative to the mean footprint area
    sub_weight: torch.Tensor  # (m,) share of the polygon inside the parent's footprint
    sub_image: torch.Tensor | None = None  # (m, D) standardised image features
    # per modality (m, F_m) fixed offsets (linear image model, or neighbour interpolation without an image):
    # log density for counts, value otherwise; a LazyColumns computes only the columns a step asks for
    sub_offset: list[torch.Tensor | LazyColumns] | None = None
    loss_mask: torch.Tensor | None = None  # (n,) spots whose likelihood counts (core, training spots)
    val_mask: torch.Tensor | None = None  # (n,) held-out spots, scored (without gradient) for early stopping
    sub_edges: torch.Tensor | None = None  # (2, E') sub-spot neighbour edges for the image regulariser
    sub_edge_sim: torch.Tensor | None = None  # (E',) image similarity of those pairs in [0, 1]

    @property
    def n_spots(self) -> int:
        return self.x_in.shape[0]

    def to(self, device: torch.device | str) -> SpotBatch:
        """Move every tensor to ``device``."""

        def mv(t):
            if t is None:
                return None
            if isinstance(t, list):
                return [u.to(device) for u in t]
            return t.to(device)

        return SpotBatch(**{k: mv(v) for k, v in self.__dict__.items()})


@dataclass
class ModuleConfig:
    """Constructor arguments of :class:`SoScopeModule` (stored with saved models)."""

    modalities: list[ModalitySpec]
    n_input: int
    n_image_features: int = 0
    n_batches: int = 1
    n_latent: int = 16
    n_hidden: int = 128
    n_graph_layers: int = 2
    n_heads: int = 4
    # a small image head: shared by every sub-spot, a large one fits spot noise as training goes on
    n_programs: int = 8
    image_hidden: int = 32
    image_blocks: int = 1
    dropout: float = 0.1
    use_graph: bool = True
    use_image: bool = True
    # spot deviations decoded from a latent; off, every spot's profile is the per-feature level alone (the
    # split is then set by the offsets and the image head); models saved before the switch had it on
    spot_latent: bool = True
    profile_prior_sd: float | None = 0.3
    extra: dict = field(default_factory=dict)


class SoScopeModule(nn.Module):
    """Graph VAE over spots with an image-driven sub-spot decoder (see the module docstring)."""

    def __init__(self, config: ModuleConfig):
        super().__init__()
        self.config = config
        c = config
        self.use_image = c.use_image and c.n_image_features > 0
        # encoder: spot profiles over the spot graph -> variational latent
        self.input_proj = nn.Sequential(nn.Linear(c.n_input, c.n_hidden), nn.LayerNorm(c.n_hidden), nn.GELU())
        self.graph_layers = nn.ModuleList(
            [
                GraphAttention(c.n_hidden, c.n_hidden, c.n_heads)
                for _ in range(c.n_graph_layers if c.use_graph else 0)
            ]
        )
        self.graph_norms = nn.ModuleList([nn.LayerNorm(c.n_hidden) for _ in self.graph_layers])
        self.to_latent = nn.Linear(c.n_hidden, 2 * c.n_latent)
        # spot decoder: latent (+ batch) -> spot-level profile per modality
        self.batch_embed = nn.Embedding(max(c.n_batches, 1), c.n_latent)
        nn.init.zeros_(self.batch_embed.weight)
        self.spot_trunk = mlp(c.n_latent, c.n_hidden, c.n_hidden, n_blocks=2, dropout=c.dropout)
        self.spot_heads = nn.ModuleList([nn.Linear(c.n_hidden, m.n_features) for m in c.modalities])
        # step 1 of the published two-step training: a graph autoencoder of the spots' normalised profiles
        self.pretrain_head = nn.Linear(c.n_hidden, c.n_input)
        for head in self.spot_heads:  # start from the fixed offsets alone: no spot deviation yet
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        # image decoder: sub-spot image features -> a few morphology programs -> per-feature log effect
        if self.use_image:
            self.image_trunk = mlp(
                c.n_image_features, c.image_hidden, c.n_programs, n_blocks=c.image_blocks, dropout=c.dropout
            )
            self.image_heads = nn.ModuleList(
                [nn.Linear(c.n_programs, m.n_features, bias=False) for m in c.modalities]
            )
            for head in self.image_heads:
                nn.init.normal_(head.weight, std=1e-3)
        # per-batch feature bias (technical): applied to spot observations, removed from enhanced output
        self.batch_bias = nn.ParameterList(
            [nn.Parameter(torch.zeros(max(c.n_batches, 1), m.n_features)) for m in c.modalities]
        )
        # likelihood shape parameters
        self.log_theta = nn.ParameterList(
            [nn.Parameter(torch.full((m.n_features,), 2.0)) for m in c.modalities]
        )
        self.zi_logits = nn.ParameterList(
            [nn.Parameter(torch.full((m.n_features,), -3.0)) for m in c.modalities]
        )
        self.log_sigma = nn.ParameterList([nn.Parameter(torch.zeros(m.n_features)) for m in c.modalities])

    @property
    def n_reference_batches(self) -> int:
        """Batches the network was trained on: their mean bias defines the common output scale."""
        return int(self.config.extra.get(N_TRAINED_BATCHES, self.config.n_batches))

    # ----------------------------------------------------------------- inference
    def encode(self, batch: SpotBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of the spot latents, ``(n, n_latent)`` each.

        Without a spot latent (``config.spot_latent=False``) both are 0: a posterior equal to the prior (KL
        exactly 0), whose draws never reach the output (the spot deviations are off).
        """
        if not self.config.spot_latent:
            zeros = batch.x_in.new_zeros((batch.n_spots, self.config.n_latent))
            return zeros, zeros
        h = self.input_proj(batch.x_in)
        for layer, norm in zip(self.graph_layers, self.graph_norms, strict=True):
            h = norm(h + layer(h, batch.edge_index))
        mu, logvar = self.to_latent(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 6)

    # ----------------------------------------------------------------- generative
    @staticmethod
    def _head(layer: nn.Linear, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        if idx is None:
            return layer(x)
        bias = None if layer.bias is None else layer.bias[idx]
        return nn.functional.linear(x, layer.weight[idx], bias)

    def spot_profiles(
        self, z: torch.Tensor, batch_codes: torch.Tensor, features=None, *, spot_deviation: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Spot-level log profile ``r`` and deviation ``delta`` per modality, ``(n, F_m)`` each.

        ``r = b + delta(z)``: a per-feature level plus the spot's deviation decoded from its latent (only the
        columns in ``features[m]`` when given). With ``spot_deviation=False`` (the trainer's image warm-up)
        ``delta`` is 0, so the image must explain how spots differ. The deltas are returned (not kept on the
        module) for the loss's Gaussian prior on them.
        """
        features = features or [None] * len(self.spot_heads)
        if not self.config.spot_latent:
            # no spot latent: the per-feature level alone (nothing decoded, no deviation to penalise)
            profiles, deltas = [], []
            for head, idx in zip(self.spot_heads, features, strict=True):
                bias = head.bias if idx is None else head.bias[idx]
                deltas.append(z.new_zeros((z.shape[0], bias.shape[0])))
                profiles.append(bias.expand(z.shape[0], -1))
            return profiles, deltas
        t = self.spot_trunk(z + self.batch_embed(batch_codes))
        profiles, deltas = [], []
        for head, idx in zip(self.spot_heads, features, strict=True):
            bias = head.bias if idx is None else head.bias[idx]
            delta = nn.functional.linear(t, head.weight if idx is None else head.weight[idx])
            if not spot_deviation:
                delta = delta * 0.0
            deltas.append(delta)
            profiles.append(bias + delta)
        return profiles, deltas

    def image_effects(self, sub_image: torch.Tensor | None, features=None) -> list[torch.Tensor | None]:
        """Return the sub-spot log effect ``h`` per modality from image features alone, ``(m, F_m)``.

        None per modality without an image.
        """
        if not self.use_image or sub_image is None:
            return [None] * len(self.config.modalities)
        programs = self.image_trunk(sub_image)
        features = features or [None] * len(self.image_heads)
        return [self._head(head, programs, idx) for head, idx in zip(self.image_heads, features, strict=True)]

    def subspot_values(
        self,
        batch: SpotBatch,
        z: torch.Tensor,
        *,
        with_batch_bias: bool,
        features: list | None = None,
        spot_deviation: bool = True,
    ) -> list[torch.Tensor]:
        """Return the expected sub-spot values per modality, ``(m, F_m)`` (see :meth:`decode`)."""
        return self.decode(
            batch, z, with_batch_bias=with_batch_bias, features=features, spot_deviation=spot_deviation
        )[0]

    def decode(
        self,
        batch: SpotBatch,
        z: torch.Tensor,
        *,
        with_batch_bias: bool,
        features: list | None = None,
        spot_deviation: bool = True,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return the sub-spot values ``(m, F_m)`` and spot deviations ``delta`` ``(n, F_m)`` per modality.

        Count modalities: expected counts in each sub-spot polygon. Gaussian: the sub-spot's value.
        ``with_batch_bias=False`` removes the per-batch technical bias (a common scale across batches).
        ``features`` optionally restricts each modality to a subset of feature columns (training steps
        on many features sample a subset: the loss is a sum over features, so this stays unbiased).
        ``spot_deviation``: see :meth:`spot_profiles`.
        """
        features = features or [None] * len(self.config.modalities)
        r_all, deltas = self.spot_profiles(z, batch.batch, features, spot_deviation=spot_deviation)
        h_all = self.image_effects(batch.sub_image, features)
        out = []
        for mi, spec in enumerate(self.config.modalities):
            idx = features[mi]
            logit = r_all[mi][batch.sub_spot]
            if with_batch_bias:
                bias = self.batch_bias[mi] if idx is None else self.batch_bias[mi][:, idx]
                logit = logit + bias[batch.batch][batch.sub_spot]
            if h_all[mi] is not None:
                logit = logit + h_all[mi]
            if batch.sub_offset is not None and batch.sub_offset[mi] is not None:
                logit = logit + offset_columns(batch.sub_offset[mi], idx)
            if spec.is_count:
                log_rate = logit + torch.log(batch.sub_area)[:, None]
                out.append(torch.exp(log_rate.clamp(max=30.0)))
            else:
                out.append(logit)
        return out, deltas

    def spot_means(
        self, batch: SpotBatch, values: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per modality the spot mean and the sum of squared contributions, both ``(n, F_m)``."""
        n = batch.n_spots
        w = batch.sub_weight[:, None]
        res = []
        for spec, v in zip(self.config.modalities, values, strict=True):
            if spec.is_count:
                part = w * v
                mean = torch.zeros((n, v.shape[1]), dtype=v.dtype, device=v.device).index_add_(
                    0, batch.sub_spot, part
                )
                sq = torch.zeros_like(mean).index_add_(0, batch.sub_spot, part * part)
            else:
                aw = (batch.sub_weight * batch.sub_area)[:, None]
                num = torch.zeros((n, v.shape[1]), dtype=v.dtype, device=v.device).index_add_(
                    0, batch.sub_spot, aw * v
                )
                den = torch.zeros((n, 1), dtype=v.dtype, device=v.device).index_add_(0, batch.sub_spot, aw)
                mean, sq = num / den.clamp_min(1e-8), None
            res.append((mean, sq))
        return res

    def likelihoods(self, batch: SpotBatch, values: list[torch.Tensor], features: list | None = None):
        """Return the spot observation distributions per modality (restricted to ``features`` when given)."""
        features = features or [None] * len(self.config.modalities)
        pick = lambda p, idx: p if idx is None else p[idx]  # noqa: E731
        dists = []
        for mi, (spec, (mean, sq)) in enumerate(
            zip(self.config.modalities, self.spot_means(batch, values), strict=True)
        ):
            idx = features[mi]
            dists.append(
                spot_likelihood(
                    spec.likelihood,
                    mean,
                    sq,
                    theta=torch.exp(pick(self.log_theta[mi], idx)),
                    zi_logits=pick(self.zi_logits[mi], idx),
                    sigma=torch.exp(pick(self.log_sigma[mi], idx)),
                )
            )
        return dists

    def sample_features(self, max_features: int | None) -> list[torch.Tensor | None]:
        """Return a random subset of at most ``max_features`` columns per modality (None: all of them)."""
        if max_features is None:
            return [None] * len(self.config.modalities)
        return [
            None
            if m.n_features <= max_features
            else torch.randperm(m.n_features)[:max_features].sort().values
            for m in self.config.modalities
        ]

    # ----------------------------------------------------------------- loss
    def loss(
        self,
        batch: SpotBatch,
        *,
        kl_weight: float = 1.0,
        image_reg_weight: float = 0.0,
        sample: bool = True,
        max_features: int | None = None,
        spot_deviation: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Negative ELBO per spot (reconstruction + KL) plus the image regulariser.

        With ``max_features``, each modality's likelihood is evaluated on a random subset of that many
        features, scaled up to the whole modality (an unbiased estimate at a fraction of the cost).
        ``spot_deviation=False`` zeroes the spot deviations (the trainer's image warm-up, see
        :meth:`spot_profiles`).
        """
        mu, logvar = self.encode(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        features = self.sample_features(max_features)
        values, deltas = self.decode(
            batch, z, with_batch_bias=True, features=features, spot_deviation=spot_deviation
        )
        dists = self.likelihoods(batch, values, features)
        mask = batch.loss_mask if batch.loss_mask is not None else torch.ones(batch.n_spots, dtype=torch.bool)
        n_used = mask.sum().clamp_min(1)
        nll_spot = torch.zeros(batch.n_spots, device=mu.device)
        per_modality = {}
        for spec, dist, x, idx in zip(self.config.modalities, dists, batch.x, features, strict=True):
            obs = x if idx is None else x[:, idx]
            nll_m = -dist.log_prob(obs).sum(-1) * (1.0 if idx is None else spec.n_features / len(idx))
            per_modality[spec.name] = ((nll_m * mask).sum() / n_used).detach()
            nll_spot = nll_spot + spec.weight * nll_m
        kl_spot = 0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar).sum(-1)
        recon = (nll_spot * mask).sum() / n_used
        kl = (kl_spot * mask).sum() / n_used
        total = recon + kl_weight * kl
        reg = torch.zeros((), device=mu.device)
        if image_reg_weight > 0 and batch.sub_edges is not None and batch.sub_edges.shape[1] > 0:
            reg = self.image_regulariser(batch, values)
            total = total + image_reg_weight * reg
        if self.config.profile_prior_sd is not None:
            # Gaussian prior on the spot deviations: the image explains what it can first
            pen = sum(((d**2).sum(-1) * mask).sum() / n_used for d in deltas) / (
                2 * self.config.profile_prior_sd**2
            )
            total = total + pen
        out = {"loss": total, "reconstruction": recon.detach(), "kl": kl.detach(), "image_reg": reg.detach()}
        out.update({f"nll_{k}": v for k, v in per_modality.items()})
        if batch.val_mask is not None:
            # held-out spots scored in the same pass (their likelihood never enters the gradient)
            out["val_sum"] = ((nll_spot + kl_spot).detach() * batch.val_mask).sum()
            out["val_n"] = batch.val_mask.sum()
        return out

    def pretrain_loss(self, batch: SpotBatch, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Graph-autoencoder loss (pretraining): reconstruct each spot's encoder input from its latent.

        The encoder and the spot trunk learn a latent that summarises each spot and its neighbourhood before
        the full model (sub-spots, likelihoods, image) is fitted, as in the published two-step training.
        Held-out spots (``val_mask``) are excluded from the loss.
        """
        mu, logvar = self.encode(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = self.pretrain_head(self.spot_trunk(z + self.batch_embed(batch.batch)))
        mask = batch.loss_mask if batch.loss_mask is not None else torch.ones(batch.n_spots, dtype=torch.bool)
        n_used = mask.sum().clamp_min(1)
        err = ((recon - batch.x_in) ** 2).sum(-1)
        kl = 0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar).sum(-1)
        recon_loss = (err * mask).sum() / n_used
        kl_loss = (kl * mask).sum() / n_used
        return {
            "loss": recon_loss + kl_weight * kl_loss,
            "reconstruction": recon_loss.detach(),
            "kl": kl_loss.detach(),
        }

    def image_regulariser(self, batch: SpotBatch, values: list[torch.Tensor]) -> torch.Tensor:
        """Neighbouring sub-spots with similar morphology should have similar (log-density) profiles.

        Computed on the sparse sub-spot edges only: ``sum_e sim_e * mean_g (d_jg - d_kg)**2``.
        """
        j, k = batch.sub_edges
        sim = batch.sub_edge_sim
        reg = torch.zeros((), device=sim.device)
        for spec, v in zip(self.config.modalities, values, strict=True):
            d = torch.log1p(v / batch.sub_area[:, None]) if spec.is_count else v
            reg = reg + (sim * ((d[j] - d[k]) ** 2).mean(-1)).sum() / sim.sum().clamp_min(1e-8)
        return reg

    # ----------------------------------------------------------------- outputs
    def _centred_bias(self, batch: SpotBatch, mi: int, cols=None) -> torch.Tensor:
        """Return each sub-spot's batch bias relative to the mean over the trained batches, ``(m, F)``.

        ``cols``: only these feature columns (a slice or index tensor; None: all).
        """
        bias = self.batch_bias[mi] if cols is None else self.batch_bias[mi][:, cols]
        centred = bias - bias[: self.n_reference_batches].mean(0, keepdim=True)
        return centred[batch.batch][batch.sub_spot]

    @staticmethod
    def _to_common_scale(spec: ModalitySpec, out: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
        """Remove the batch bias ``factor`` from an output (counts scaled, values shifted).

        A Bernoulli probability ``p`` is rescaled through its Poisson rate, ``-log(1 - p)``, so 0 and 1 stay
        0 and 1: ``1 - (1 - p) ** exp(-factor)``.
        """
        if factor is None:
            return out
        if spec.likelihood == "bernoulli":
            return -torch.expm1(torch.log1p(-out.clamp(max=1.0)) * torch.exp(-factor))
        return out * torch.exp(-factor) if spec.is_count else out - factor

    def _expected_output(
        self,
        spec: ModalitySpec,
        mi: int,
        batch: SpotBatch,
        v: torch.Tensor,
        x: torch.Tensor | None,
        cols=None,
    ) -> torch.Tensor:
        """Return a modality's sub-spot output at decoded values ``v``: conditioned on ``x``, or the mean.

        ``v`` and ``x`` hold the feature columns ``cols`` of the modality (None: all).
        """
        w, sub = batch.sub_weight, batch.sub_spot
        if spec.likelihood == "bernoulli":
            return presence_probability(v, w, sub, x)
        if spec.is_count:
            zi_logits = _pick(self.zi_logits[mi], cols)
            outside = (1 - torch.sigmoid(zi_logits)) * v if spec.likelihood == "zinb" else v
            return outside if x is None else condition_counts(v, w, sub, x, outside_mean=outside)
        return v if x is None else condition_gaussian(v, batch.sub_area, w, sub, x)

    def _predictive_draw(
        self,
        spec: ModalitySpec,
        mi: int,
        batch: SpotBatch,
        v: torch.Tensor,
        x: torch.Tensor | None,
        factor: torch.Tensor | None,
        ranks: tuple[torch.Tensor, torch.Tensor],
        cols=None,
    ) -> torch.Tensor:
        """One posterior predictive draw of each sub-spot's counts (or value) given decoded values ``v``.

        ``v``, ``x`` and ``factor`` hold the feature columns ``cols`` of the modality (None: all).
        """
        w, sub = batch.sub_weight, batch.sub_spot
        log_theta = _pick(self.log_theta[mi], cols)
        zi_logits = _pick(self.zi_logits[mi], cols)
        if spec.likelihood == "bernoulli":
            p = self._to_common_scale(spec, presence_probability(v, w, sub, x), factor)
            return torch.bernoulli(p.clamp(0.0, 1.0))
        if spec.is_count:
            if x is None:  # nothing observed: the whole polygon is observation noise around the rate
                inside, outside_rate = torch.zeros_like(v), v
            else:
                share = inside_share(v, w, sub, x.shape[0])
                if spec.likelihood != "poisson":  # NB parts vary around their rates: Dirichlet-multinomial
                    part = w[:, None] * v
                    theta_eff = (
                        torch.exp(log_theta)
                        * spot_sum(part, sub, x.shape[0]) ** 2
                        / spot_sum(part * part, sub, x.shape[0]).clamp_min(1e-30)
                    )
                    share = sample_dirichlet_share(share, sub, x.shape[0], theta_eff[sub])
                inside = sample_multinomial_split(share, sub, x, ranks)
                outside_rate = (1 - w[:, None]) * v
            outside = sample_outside(
                spec.likelihood,
                outside_rate,
                theta=torch.exp(log_theta),
                zi_logits=zi_logits,
            )
            return self._to_common_scale(spec, inside + outside, factor)
        sigma = torch.exp(_pick(self.log_sigma[mi], cols))
        if x is None:
            draw = v + sigma * torch.randn_like(v)
        else:
            draw = sample_gaussian(v, batch.sub_area, w, sub, x, sigma)
        return self._to_common_scale(spec, draw, factor)

    @torch.no_grad()
    def enhance(
        self,
        batch: SpotBatch,
        *,
        n_samples: int = 0,
        condition_on_observed: bool = True,
        remove_batch_bias: bool = True,
        feature_block_size: int | None = None,
        rows: torch.Tensor | None = None,
        with_mean: bool = True,
        features: list[torch.Tensor | None] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Enhanced sub-spot profiles per modality, given the observed spots.

        Returns per modality a dict with ``"mean"`` (the model's expected output at the posterior-mean
        latent, not conditioned on the observations) and ``"enhanced"`` (the same, conditioned on each
        spot's observation; see :mod:`soscope.module._outputs` for the notation and derivations). With
        ``lam_k`` the expected counts in sub-spot ``k``'s polygon, ``w_k`` its share inside the footprint,
        ``a_k`` its relative area and ``x_i`` the parent spot's observation:

        * **NB, Poisson**: expected counts, ``(1 - w_k) lam_k + x_i w_k lam_k / sum_j w_j lam_j`` — the
          observed counts split in proportion to ``w lam`` inside the footprint, the model's rate outside.
        * **ZINB**: the same with the outside part's expected value ``(1 - w_k)(1 - pi) lam_k``
          (``pi = sigmoid(zi_logits)``); ``"mean"`` is ``(1 - pi) lam_k``.
        * **Bernoulli**: the probability that the polygon holds a count,
          ``1 - exp(-(1 - w_k) lam_k) (1 - x_i q_k)`` with
          ``q_k = (1 - exp(-w_k lam_k)) / (1 - exp(-sum_j w_j lam_j))``; ``"mean"`` is ``1 - exp(-lam_k)``.
        * **Gaussian**: ``v_k + r_i c_k / sum_j c_j**2`` with ``c_k = a_k w_k / sum_j a_j w_j`` and the spot
          residual ``r_i = x_i - sum_j c_j v_j``: the residual split in proportion to ``a w``, so the
          footprint-weighted mean equals ``x_i``.

        With ``n_samples > 0`` also the posterior predictive ``"std"``, ``"q10"`` and ``"q90"`` of each
        sub-spot's counts (values for Gaussian, presence for Bernoulli) over ``n_samples`` draws, each
        from a latent drawn from its posterior (the prior's uncertainty), then: inside the footprint the
        observed counts split at random, ``Multinomial(x_i, p)`` with ``p_k ∝ w_k lam_k`` for the Poisson,
        Dirichlet-multinomial for the NB and ZINB (their sub-spot rates vary around ``lam_k``; see
        :func:`~soscope.module._outputs.sample_dirichlet_share`); outside it the
        likelihood's observation noise around ``(1 - w_k) lam_k`` (NB with the modality's ``theta``,
        Poisson, or ZINB); for Bernoulli a presence drawn with the conditional probability above; for
        Gaussian the conditional of independent ``N(0, sigma**2)`` sub-spot deviations given the spot
        (:func:`~soscope.module._outputs.sample_gaussian`).

        ``condition_on_observed=False`` gives the model mean as ``"enhanced"`` too (and unconditioned draws);
        ``remove_batch_bias`` puts every output on the common scale of the trained batches.

        Every output of a feature depends on that feature's columns alone, so a modality wider than
        ``feature_block_size`` is computed a block of features at a time (None: all at once): the
        sub-spot × feature intermediates (decoded values, offsets, draws) are those of one block. The
        results equal those of one block up to float rounding. The draws (``n_samples``) are not the
        same numbers: each block after the first draws from a generator reseeded for it (from one number
        drawn at the start), so the spread and quantiles of a feature depend on the block it falls in,
        only in their Monte Carlo noise. ``rows``: return only these sub-spot rows (e.g. a chunk's core
        sub-spots), so the full-width outputs hold those rows alone. ``with_mean=False`` leaves out
        ``"mean"``. ``features``: per modality, the feature columns to compute (a sorted index tensor; None:
        all), so outputs are ``(rows, len(features[m]))``; a modality given no columns returns an empty dict.
        """
        mu, logvar = self.encode(batch)
        mods = self.config.modalities
        obs = [batch.x[mi] if condition_on_observed else None for mi in range(len(mods))]
        ranks = within_spot_rank(batch.sub_spot, batch.n_spots, batch.sub_weight) if n_samples > 0 else None
        kw = dict(obs=obs, n_samples=n_samples, remove_batch_bias=remove_batch_bias)
        kw.update(with_mean=with_mean, ranks=ranks)
        selected = [None] * len(mods) if features is None else list(features)
        widths = [_width(cols, m.n_features) for m, cols in zip(mods, selected, strict=True)]
        if feature_block_size is None or all(w <= feature_block_size for w in widths):
            out = self._enhance_columns(batch, mu, logvar, selected, **kw)
            return out if rows is None else [{k: v[rows] for k, v in r.items()} for r in out]
        n_rows = batch.sub_spot.shape[0] if rows is None else len(rows)
        # one number from the caller's generator seeds every block's draws (reproducible per chunk seed)
        base = int(torch.randint(0, 2**62, (1,))) if n_samples > 0 else 0
        out: list[dict[str, torch.Tensor]] = [{} for _ in mods]
        block_index = 0
        for mi, width in enumerate(widths):
            for start in range(0, width, feature_block_size):
                positions = slice(start, min(start + feature_block_size, width))
                cols = positions if selected[mi] is None else selected[mi][positions]
                if n_samples > 0:
                    torch.manual_seed(base + block_index)
                block_index += 1
                columns = [cols if j == mi else slice(0, 0) for j in range(len(mods))]
                res = self._enhance_columns(batch, mu, logvar, columns, **kw)[mi]
                for key, value in res.items():
                    if key not in out[mi]:
                        out[mi][key] = torch.empty((n_rows, width), dtype=value.dtype, device=value.device)
                    out[mi][key][:, positions] = value if rows is None else value[rows]
        return out

    def _enhance_columns(
        self,
        batch: SpotBatch,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        features: list,
        *,
        obs: list[torch.Tensor | None],
        n_samples: int,
        remove_batch_bias: bool,
        with_mean: bool,
        ranks: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> list[dict[str, torch.Tensor]]:
        """Return the outputs of :meth:`enhance` for the columns ``features`` (per modality; None: all).

        A modality given an empty slice is skipped (an empty dict).
        """
        mods = self.config.modalities
        active = [_width(cols, m.n_features) > 0 for m, cols in zip(mods, features, strict=True)]
        values = self.subspot_values(batch, mu, with_batch_bias=True, features=features)
        x = [None if o is None else _pick_columns(o, cols) for o, cols in zip(obs, features, strict=True)]
        out: list[dict[str, torch.Tensor]] = []
        factors = []
        for mi, spec in enumerate(mods):
            cols = features[mi]
            factors.append(self._centred_bias(batch, mi, cols) if remove_batch_bias and active[mi] else None)
            if not active[mi]:
                out.append({})
                continue
            v = values[mi]
            res = {
                "enhanced": self._to_common_scale(
                    spec, self._expected_output(spec, mi, batch, v, x[mi], cols), factors[mi]
                )
            }
            if with_mean:
                res["mean"] = self._to_common_scale(
                    spec, self._expected_output(spec, mi, batch, v, None, cols), factors[mi]
                )
            out.append(res)
        if n_samples > 0:
            # preallocated: the draws are the largest tensors of inference
            draws = [
                torch.empty((n_samples,) + r["enhanced"].shape, dtype=r["enhanced"].dtype, device=mu.device)
                if r
                else None
                for r in out
            ]
            for s in range(n_samples):
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                drawn = self.subspot_values(batch, z, with_batch_bias=True, features=features)
                for mi, v in enumerate(drawn):
                    if active[mi]:
                        draws[mi][s] = self._predictive_draw(
                            mods[mi], mi, batch, v, x[mi], factors[mi], ranks, features[mi]
                        )
            for mi, d in enumerate(draws):
                if d is None:
                    continue
                out[mi]["std"] = d.std(0) if n_samples > 1 else torch.zeros_like(d[0])
                out[mi]["q10"] = quantile(d, 0.1)
                out[mi]["q90"] = quantile(d, 0.9)
        return out


def _pick(param: torch.Tensor, cols) -> torch.Tensor:
    """Return a per-feature parameter ``(F,)`` restricted to the columns ``cols`` (None: all)."""
    return param if cols is None else param[cols]


def _pick_columns(t: torch.Tensor, cols) -> torch.Tensor:
    """Return the columns ``cols`` (None: all) of a ``(rows, F)`` tensor."""
    return t if cols is None else t[:, cols]


def _width(cols, n_features: int) -> int:
    """Return the number of columns selected by ``cols`` (None: all ``n_features``)."""
    if cols is None:
        return n_features
    if isinstance(cols, slice):
        return len(range(*cols.indices(n_features)))
    return len(cols)
