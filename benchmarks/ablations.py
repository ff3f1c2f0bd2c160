"""Does each component of the model earn its place? Ablated variants on real cases with truth.

Each case (built by ``accuracy.py``'s :func:`accuracy.build_case`: the same pseudo-spots, the same truth, the
same scored features) is enhanced by soscope with its defaults (``SoScope(sdata).train()``, default epochs
with early stopping) and by one variant per component, each with that component switched off (or, for
pretraining, which is off by default, switched on). Every variant is scored as ``accuracy.py`` scores:
mean over the scored features of the per-feature Pearson, Spearman, RMSE (log1p) and SSIM.

Components and how each variant removes it:

* graph: ``SoScope(use_graph=False)`` (the encoder sees each spot alone).
* spot latent: ``SoScope(spot_latent=...)`` (off by default since 2026-12: the variant switches it on; off,
  spots differ only through the offsets and the image head; before, the variant was
  ``train(image_warmup=1.0)``, the deviations kept off for every step).
* image (all of it: the image evidence in the offsets, the image head, the regulariser, the nuclei):
  ``SoScope(image=False, use_image=False)``.
* image head: the learned correction ``h`` from the sub-spot's image features is held at 0 (its output
  layer zeroed and frozen before training; a benchmark-only knob, there is no public switch).
* image regulariser: ``train(image_reg_weight=0)``.
* nuclei prior: ``SoScope(nuclei_prior=...)`` (off by default since 2026-12: the variant switches it on and
  its weight γ is chosen by cross-validation; when the default is on, γ is set to 0 after set-up, a
  benchmark-only knob). The nuclei features stay among the image features either way.
* spatial prior: the interpolation of neighbouring spots in the offsets is replaced by the spot's own
  density (each sub-spot starts from an even split; the image and nucleus terms are then relative to the
  spot itself; β and γ as chosen with the interpolation). A benchmark-only knob: the kernel that makes the
  training and enhancing offsets (``soscope.model._data.kernel_matrix``) maps each sub-spot to its nearest
  spot centre, which is its own spot on these lattices.
* the network as a whole is no longer a separate variant: with the graph, the spot latent and the
  regulariser off by default, what remains trained of it is the image head (its variant) and the
  per-feature levels and likelihood shapes.
* pretraining: ``train(pretrain_epochs=30)`` (off by default: the variant adds it).

A component that the case does not have (no image) is "n/a"; one that the model switched off by itself
(image weight β = 0 and nucleus weight γ = 0 chosen by cross-validation: no image in the model; γ = 0: no
nucleus term) is "inactive": the variant would be the full model, so its contribution is exactly 0 and it
is not run. The contribution of a component is the mean Pearson of the model with it minus the model
without it; the rule (issue 15): a component that adds less than :data:`RULE` on every case is removed or
off by default. A second seed of the full model shows how much of a difference training noise alone makes.

    python benchmarks/ablations.py                                   # default cases (about 25 min)
    python benchmarks/ablations.py --cases cosmx_sq16 merfish_hex50  # some cases
    python benchmarks/ablations.py --variants graph --no-noise       # some variants (and the full model)

Writes ``benchmarks/results/ablations.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import CASES as ACC_CASES  # noqa: E402
from accuracy import METRICS, build_case, code_state, fmt, image_evidence  # noqa: E402  (not a package)

CASES = ("merfish_hex50", "cosmx_sq16", "verafish_hex100_nuclei", "verafish_sq50", "synthetic")
#: the rule: a component must add at least this much mean Pearson on some case
RULE = 0.005
#: epochs of graph-autoencoder pretraining in the variant that switches it on (as the published two-step)
PRETRAIN_EPOCHS = 30
#: weight of the image regulariser in the variant that switches it on (soscope's default before 2026-12)
REG_WEIGHT = 0.1
#: the seed of the second run of the full model (training noise)
NOISE_SEED = 1


@dataclass(frozen=True)
class Variant:
    """One ablated variant: the component it changes and how.

    ``needs``: ``""`` (every case), ``"image"`` (the case has an image and the model uses it) or ``"nuclei"``
    (the model chose a nucleus weight γ > 0). ``adds``: the variant switches the component on (it is off by
    default) rather than off.
    """

    component: str
    label: str
    model_kw: dict = field(default_factory=dict)
    train_kw: dict = field(default_factory=dict)
    knob: str | None = None
    needs: str = ""
    adds: bool = False


def variants() -> tuple[Variant, ...]:
    """Return the variants, each switching its component away from soscope's current default.

    A component on by default is switched off (its contribution is the full model minus the variant); one
    off by default (pretraining; the graph and the image regulariser where the defaults turn them off) is
    switched on, at :data:`PRETRAIN_EPOCHS` epochs, ``use_graph=True`` or :data:`REG_WEIGHT`.
    """
    import inspect

    import soscope

    init = inspect.signature(soscope.SoScope).parameters
    train = inspect.signature(soscope.SoScope.train).parameters
    if init["use_graph"].default:
        graph = Variant("graph", "no graph (spot-only encoder)", model_kw={"use_graph": False})
    else:
        graph = Variant(
            "graph", "with the graph encoder (use_graph=True)", model_kw={"use_graph": True}, adds=True
        )
    if train["image_reg_weight"].default > 0:
        reg = Variant(
            "image regulariser", "no image regulariser", train_kw={"image_reg_weight": 0.0}, needs="image"
        )
    else:
        reg = Variant(
            "image regulariser",
            f"with the image regulariser (image_reg_weight={REG_WEIGHT:g})",
            train_kw={"image_reg_weight": REG_WEIGHT},
            needs="image",
            adds=True,
        )
    if init["spot_latent"].default:
        latent = Variant("spot latent", "no spot latent (spot_latent=False)", model_kw={"spot_latent": False})
    else:
        latent = Variant(
            "spot latent",
            "with the spot latent (spot_latent=True)",
            model_kw={"spot_latent": True},
            adds=True,
        )
    if init["nuclei_prior"].default:
        nuclei = Variant("nuclei prior", "no nucleus term (γ = 0)", knob="nuclei_off", needs="nuclei")
    else:
        nuclei = Variant(
            "nuclei prior",
            "with the nucleus term (nuclei_prior=True)",
            model_kw={"nuclei_prior": True},
            needs="image",
            adds=True,
        )
    if train["pretrain_epochs"].default > 0:
        pre = Variant("pretraining", "no pretraining", train_kw={"pretrain_epochs": 0})
    else:
        # pretraining fits the spot latent's encoder: the variant needs the latent (when it is off by
        # default, this variant adds both)
        pre = Variant(
            "pretraining",
            f"with pretraining ({PRETRAIN_EPOCHS} epochs)"
            + ("" if init["spot_latent"].default else " and the spot latent it pretrains"),
            model_kw={} if init["spot_latent"].default else {"spot_latent": True},
            train_kw={"pretrain_epochs": PRETRAIN_EPOCHS},
            adds=True,
        )
    return (
        graph,
        latent,
        Variant("image (all)", "no image", model_kw={"image": False, "use_image": False}, needs="image"),
        Variant("image head", "no image head (h = 0)", knob="image_head_off", needs="image"),
        reg,
        nuclei,
        Variant("spatial prior", "no spatial prior (even split offsets)", knob="flat_prior"),
        pre,
    )


T_START = time.perf_counter()


def log(msg: str) -> None:
    """Print ``msg`` with the seconds since start."""
    print(f"[{time.perf_counter() - T_START:7.1f} s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------- knobs
def own_spot_kernel(centres: np.ndarray, points: np.ndarray, spacing: float):
    """Kernel from each point to its nearest spot centre alone (weight 1): no interpolation of neighbours.

    Replaces ``soscope.model._data.kernel_matrix`` (same signature) in the "no spatial prior" variant; a
    sub-spot's nearest centre is its own spot's on the lattices benchmarked here.
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(centres).query(points)
    n = len(points)
    return sp.csr_matrix((np.ones(n), (np.arange(n), nearest)), shape=(n, len(centres)))


@contextlib.contextmanager
def knob_context(knob: str | None):
    """Patch what the variant needs for training and enhancing (only the flat prior patches anything)."""
    if knob != "flat_prior":
        yield
        return
    from soscope.model import _data

    saved = _data.kernel_matrix
    _data.kernel_matrix = own_spot_kernel
    try:
        yield
    finally:
        _data.kernel_matrix = saved


def apply_knob(model, knob: str | None) -> None:
    """Apply a set-up model's knob before training (image head off, nucleus weight 0)."""
    import torch

    if knob == "image_head_off" and model.module.use_image:
        # the head's output layer at 0 and frozen: h = 0 for every sub-spot (no gradient reaches the trunk)
        with torch.no_grad():
            for p in model.module.image_heads.parameters():
                p.zero_()
                p.requires_grad_(False)
    elif knob == "nuclei_off":
        for e in model.normaliser.evidence or []:
            e.gamma = 0.0


# ------------------------------------------------------------------------------------------------ running
def run_variant(p, feats, scheme, args, *, model_kw=None, train_kw=None, knob=None, seed=None) -> dict:
    """Set up, train, enhance and score one variant; return its scores, epochs, time and the model."""
    import soscope
    from soscope.evaluate import score

    t0 = time.perf_counter()
    seed = args.seed if seed is None else seed
    with knob_context(knob):
        model = soscope.SoScope(
            p, table="table", subspots=scheme, progress=False, seed=seed, **(model_kw or {})
        )
        apply_knob(model, knob)
        hist = model.train(**(train_kw or {}))
        model.enhance(p, key_added="ablation", overwrite=True)
    t_fit = time.perf_counter() - t0
    _, summ = score(p, key_added="ablation", features=feats, baselines=False, ssim=True)
    return {
        "scores": dict(summ["mean"]["soscope"]),
        "epochs": len(hist.epoch),
        "time": t_fit,
        "model": model,
    }


def applies(v: Variant, has_image: bool, full) -> str:
    """``""`` when the variant is run on this case, else why not (``"n/a: ..."`` or ``"inactive: ..."``)."""
    uses_image = bool(full.module.use_image)
    gammas = [g for g in full.normaliser.nuclei_weights if g > 0]
    if v.needs in ("image", "nuclei") and not has_image:
        return "n/a: no image"
    if v.needs == "image" and not uses_image:
        return "inactive: image weights β = γ = 0 chosen (the model is the no-image model)"
    if v.needs == "nuclei":
        if not full.uses_nuclei:
            return "n/a: no nuclei found"
        if not gammas:
            return "inactive: nucleus weight γ = 0 chosen"
    return ""


def run_case(name: str, args, cache: dict) -> dict:
    """Run the full model, the second seed and every variant on one case."""
    from soscope.evaluate import score

    t_case = time.perf_counter()
    log(f"{name}: building pseudo-spots")
    p, feats, desc = build_case(name, args, cache)
    if p is None:
        log(f"{name}: {desc}")
        return {"name": name, "skipped": desc}
    tab, tru = p.tables["table"], p.tables["truth"]
    scheme = str(tru.uns["subspots"]["scheme"])
    has_image = len(p.images) > 0
    out = {
        "name": name,
        "desc": desc,
        "spots": tab.n_obs,
        "subspots": tru.n_obs,
        "scheme": scheme,
        "features": len(feats),
        "n_vars": tab.n_vars,
        "rows": [],
    }
    full = run_variant(p, feats, scheme, args)
    out["evidence"] = image_evidence(p.tables["table_ablation"].uns["soscope"], has_image)
    _, base = score(p, key_added="ablation", features=feats, baselines=True, ssim=True)
    out["baselines"] = {k: v for k, v in base["mean"].items() if k != "soscope"}
    out["full"] = full
    log(f"{name}: full model {full['scores']['pearson']:.4f} ({full['epochs']} epochs, {full['time']:.0f} s)")
    noise = None
    if not args.no_noise:
        noise = run_variant(p, feats, scheme, args, seed=NOISE_SEED)
        log(
            f"{name}: full model, seed {NOISE_SEED}: {noise['scores']['pearson']:.4f} ({noise['time']:.0f} s)"
        )
    out["noise"] = noise
    for v in args.variant_list:
        if args.variants and v.label not in args.variants and v.component not in args.variants:
            continue
        why = applies(v, has_image, full["model"])
        if why:
            out["rows"].append({"variant": v, "skipped": why})
            log(f"{name}: {v.label}: {why}")
            continue
        r = run_variant(p, feats, scheme, args, model_kw=v.model_kw, train_kw=v.train_kw, knob=v.knob)
        r["variant"] = v
        out["rows"].append(r)
        log(
            f"{name}: {v.label}: {r['scores']['pearson']:.4f} "
            f"(Δ {r['scores']['pearson'] - full['scores']['pearson']:+.4f}; {r['epochs']} epochs, "
            f"{r['time']:.0f} s)"
        )
    for r in (full, noise or {}, *out["rows"]):
        r.pop("model", None)  # the models hold the case's data: free them with the case
    out["t_total"] = time.perf_counter() - t_case
    return out


def contribution(case: dict, row: dict) -> float:
    """Mean Pearson of the model with the component minus without it (0 when inactive; NaN when n/a)."""
    if "skipped" in row:
        return 0.0 if row["skipped"].startswith("inactive") else float("nan")
    d = row["scores"]["pearson"] - case["full"]["scores"]["pearson"]
    return d if row["variant"].adds else -d


# ------------------------------------------------------------------------------------------------- report
BASELINES = {
    "even_split": "baseline: even split",
    "gaussian_interpolation": "baseline: Gaussian interpolation",
    "interpolation_split": "baseline: interpolation split of the counts",
    "image_ridge_split": "baseline: image-ridge split of the counts",
}


def report(results: list[dict], args, t_all: float) -> str:
    """Return the Markdown report."""
    import torch

    import soscope

    ran = [r for r in results if "skipped" not in r]
    load_now = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    variants = [
        v
        for v in args.variant_list
        if not args.variants or v.label in args.variants or v.component in args.variants
    ]
    lines = [
        "# Ablations: does each component earn its place?",
        "",
        f"Generated by `python benchmarks/ablations.py{''.join(' ' + shlex.quote(a) for a in sys.argv[1:])}` "
        f"(soscope {soscope.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"seed {args.seed}, epochs soscope default (early stopping)). Total wall time {t_all / 60:.1f} min, "
        f"CPU time of this process {time.process_time() / 60:.1f} min (all threads); load average at start "
        f"{args.load_at_start}, at the end {load_now}; machine: {args.machine}. Code: {args.code_state}.",
        "",
        "The cases of `accuracy.py` (the same pseudo-spots, truth and scored features; see its report), each "
        "enhanced by soscope with its defaults and by one variant per component (see the script's docstring "
        "for how each is switched off). Scores: mean over the scored features of the per-feature Pearson, "
        "Spearman, RMSE (log1p; lower is better) and SSIM, as `accuracy.py` scores. Δ: variant minus the "
        "full model."
        + (
            ""
            if args.no_noise
            else f" The full model is also run with seed {NOISE_SEED}: its Δ is training noise."
        ),
        "",
        "## The rule",
        "",
        f"Contribution of a component = mean Pearson with it − without it (for pretraining, off by default: "
        f"with − without). A component that adds less than {RULE} on every case is removed or off by "
        "default. *inactive*: the model switched the component off by itself on that case (its weight "
        "chosen 0 by cross-validation), so it adds exactly 0 there; *n/a*: the case has no image. The last "
        "column also asks that the contribution exceed the case's training noise (the change a second seed "
        "of the full model makes): a component that passes the rule only within noise is treated as failing "
        "it.",
        "",
        "| component | "
        + " | ".join(r["name"] for r in ran)
        + f" | adds ≥ {RULE} on some case? |"
        + ("" if args.no_noise else " … and more than training noise there? |"),
        "|---|" + "---:|" * len(ran) + "---|" + ("" if args.no_noise else "---|"),
    ]
    noise = [
        abs(r["noise"]["scores"]["pearson"] - r["full"]["scores"]["pearson"]) if r["noise"] else np.nan
        for r in ran
    ]
    for v in variants:
        cells, any_ok, beyond_noise = [], False, False
        for r, n in zip(ran, noise, strict=True):
            row = next((x for x in r["rows"] if x["variant"] is v), None)
            if row is None:
                cells.append("–")
                continue
            c = contribution(r, row)
            if "skipped" in row:
                cells.append("n/a" if row["skipped"].startswith("n/a") else "0 (inactive)")
            else:
                cells.append(f"{c:+.4f}")
            ok = bool(np.isfinite(c) and c >= RULE)
            any_ok |= ok
            # a contribution no larger than what a second seed alone changes is not told apart from noise
            beyond_noise |= ok and bool(np.isfinite(n) and c > n)
        verdict = f" | {'yes' if any_ok else '**no**'} |"
        if not args.no_noise:
            verdict += f" {'yes' if beyond_noise else '**no**'} |"
        lines.append(f"| {v.component} | " + " | ".join(cells) + verdict)
    if not args.no_noise:
        lines.append(
            f"| *training noise: \\|seed {NOISE_SEED} − seed {args.seed}\\| of the full model* | "
            + " | ".join(fmt(n) for n in noise)
            + " | | |"
        )
    lines += [
        "",
        "## Cases",
        "",
        "| case | pseudo-spots | spots | sub-spots | features scored / total | image weight (CV) "
        "| wall time (s) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['skipped']} | – | – | – | – | – |")
            continue
        lines.append(
            f"| {r['name']} | {r['desc']} | {r['spots']:,} | {r['subspots']:,} ({r['scheme']}) | "
            f"{r['features']} / {r['n_vars']} | {r['evidence']} | {r['t_total']:.0f} |"
        )
    lines += [
        "",
        "## Scores per case and variant",
        "",
        "| case | variant | Pearson | Spearman | RMSE ↓ | SSIM | Δ Pearson | Δ Spearman | Δ RMSE | Δ SSIM "
        "| epochs | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ran:
        f = r["full"]["scores"]

        def line(label, res, case=r, f=f):
            s = res["scores"]
            d = " | ".join(f"{s[k] - f[k]:+.3f}" for k in METRICS)
            return (
                f"| {case['name']} | {label} | "
                + " | ".join(fmt(s[k]) for k in METRICS)
                + f" | {d} | {res['epochs']} | {res['time']:.0f} |"
            )

        lines.append(
            f"| {r['name']} | **full model (defaults)** | "
            + " | ".join(fmt(f[k]) for k in METRICS)
            + f" | | | | | {r['full']['epochs']} | {r['full']['time']:.0f} |"
        )
        if r["noise"]:
            lines.append(line(f"full model, seed {NOISE_SEED} (training noise)", r["noise"]))
        for row in r["rows"]:
            if "skipped" in row:
                lines.append(
                    f"| {r['name']} | {row['variant'].label}: {row['skipped']} | | | | | | | | | | |"
                )
            else:
                lines.append(line(row["variant"].label, row))
        for k, label in BASELINES.items():
            if k in r["baselines"]:
                s = r["baselines"][k]
                lines.append(
                    f"| {r['name']} | *{label}* | "
                    + " | ".join(fmt(s.get(m)) for m in METRICS)
                    + " | "
                    + " | ".join(
                        f"{s[m] - f[m]:+.3f}" if np.isfinite(s.get(m, np.nan)) else "–" for m in METRICS
                    )
                    + " | | |"
                )
    lines += [
        "",
        "## Notes",
        "",
        "- Knobs without a public switch (benchmark only): the image head is held at 0 by zeroing and "
        "freezing its output layer before training; the nucleus term by setting the chosen γ to 0 after "
        "setup; the spatial prior by replacing the offsets' interpolation kernel with each sub-spot's own "
        "spot (the weights β, γ stay those chosen with the interpolation).",
        "- Wall times are on a shared 2-core machine: other processes may have slowed them (see the load "
        "average).",
    ]
    return "\n".join(lines) + "\n"


def machine() -> str:
    """Describe the machine: CPU model and count, memory."""
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f", {kb / 2**20:.0f} GiB memory"
    return f"{cpu}, {os.cpu_count()} CPUs{mem}"


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=list(CASES),
        choices=ACC_CASES,
        help=f"cases (default: {' '.join(CASES)})",
    )
    parser.add_argument(
        "--variants", nargs="+", default=None, help="variants to run, by label or component (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-noise", action="store_true", help=f"skip the second seed (seed {NOISE_SEED}) of the full model"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ablations.md")
    args = parser.parse_args()
    args.quick = False  # build_case's full-size synthetic case
    args.load_at_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    args.code_state = code_state()
    args.machine = machine()
    args.variant_list = variants()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
    logging.getLogger("soscope").setLevel(logging.WARNING)

    log(f"cases: {', '.join(args.cases)}; load average {args.load_at_start}")
    cache: dict = {}
    results = [run_case(c, args, cache) for c in args.cases]
    text = report(results, args, time.perf_counter() - T_START)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
