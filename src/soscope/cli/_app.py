"""The ``soscope`` command line: one command per verb, mirroring the Python API.

Heavy libraries (spatialdata, torch, matplotlib) are imported inside the commands, so ``soscope --help``
answers at once.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from soscope._constants import SoscopeKeys
from soscope._errors import SoscopeError

app = typer.Typer(
    name="soscope",
    help="soScope super-resolution of spatial omics: split each measured spot into image-driven sub-spots "
    "and write sub-spot polygons + enhanced tables back into the SpatialData (zarr store).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_ERROR = 2

# --------------------------------------------------------------------------------------------- errors
#: Python argument → CLI option, for turning the library's "pass `table=`" hints into CLI terms.
_OPTIONS = {
    "table", "spots", "image", "layer", "coordinate_system", "sections", "section_key", "subspots",
    "likelihood", "key_added", "model", "epochs", "batch_size", "device", "seed", "truth", "segmentation",
}  # fmt: skip


def _cli_terms(message: str) -> str:
    """Rewrite Python-API hints (`` `table=` ``) as the matching options (`` `--table` ``)."""
    message = message.replace("`image=False`", "`--no-image`").replace("`overwrite=True`", "`--overwrite`")
    message = message.replace("`progress=False`", "`--no-progress`")

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"`--{name.replace('_', '-')}`" if name in _OPTIONS else m.group(0)

    return re.sub(r"`(\w+)=`", repl, message)


def _fail(message: str) -> NoReturn:
    """Print a one-line red error to stderr and exit with code 2."""
    line = " ".join(_cli_terms(str(message)).split())
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_ERROR)


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn soscope's own errors and missing files into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SoscopeError as e:
            _fail(str(e))
        except FileNotFoundError as e:
            _fail(f"File not found: {e.filename or e}. Check the path.")
        except KeyboardInterrupt:
            typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None

    return wrapper


def _echo(message: str = "", **kwargs: Any) -> None:
    typer.echo(message, **kwargs)


# --------------------------------------------------------------------------------------------- helpers
def _check_store(path: Path) -> None:
    if not path.exists():
        _fail(
            f"No SpatialData store at '{path}': pass the path of a .zarr folder (write one from Python with "
            "`sdata.write(path)`)."
        )
    if not path.is_dir():
        _fail(f"'{path}' is a file, not a SpatialData zarr store (a folder): pass the store's folder.")
    if not any((path / f).is_file() for f in ("zarr.json", ".zgroup", ".zattrs")):
        _fail(
            f"'{path}' is not a zarr store (no zarr.json / .zgroup inside): pass the folder written by "
            "`sdata.write(path)`."
        )


def _open(path: Path) -> Any:
    """Open a store backed (``sd.read_zarr``): soscope writes its results into it."""
    _check_store(path)
    import spatialdata as sd

    try:
        return sd.read_zarr(path)
    except SoscopeError:
        raise
    except Exception as e:  # zarr / spatialdata raise many types on unreadable stores
        _fail(f"Could not read '{path}' as a SpatialData store ({type(e).__name__}: {e}).")


def _store_key(path: Path, used: set[str]) -> str:
    stem = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    key = re.sub(r"[^A-Za-z0-9_.]", "_", stem) or "store"
    base, i = key, 1
    while key in used:
        i += 1
        key = f"{base}_{i}"
    used.add(key)
    return key


def _open_many(paths: list[Path], sections: list[str] | None) -> tuple[Any, list[str] | None]:
    """One store → itself; several → one in-memory SpatialData (elements suffixed ``-<store>``).

    Sections named after a store (its folder name without ``.zarr``) become that store's regions.
    """
    if len(paths) == 1:
        return _open(paths[0]), sections
    for p in paths:
        _check_store(p)
    from soscope.io import combine

    used: set[str] = set()
    parts = {_store_key(p, used): _open(p) for p in paths}
    merged = combine(parts)  # a SoscopeInputError becomes a one-line message and exit code 2
    if sections:
        expanded: list[str] = []
        for s in sections:
            if s in parts:
                expanded += [f"{name}-{s}" for name in parts[s].shapes]
            else:
                expanded.append(s)
        sections = expanded
    return merged, sections


def _likelihood(value: str) -> str | dict[str, str]:
    """``"nb"`` → ``"nb"``; ``"Antibody Capture=poisson,Gene Expression=nb"`` → a dict."""
    if "=" not in value:
        return value
    out = {}
    for part in value.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            _fail(
                f"--likelihood '{value}': write either one name (e.g. nb) or MODALITY=NAME pairs separated "
                "by commas."
            )
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``kwargs`` into those ``fn`` accepts and the rest."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs, {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs, {}
    return {k: v for k, v in kwargs.items() if k in params}, {
        k: v for k, v in kwargs.items() if k not in params
    }


def _selection_kwargs(
    table: str | None,
    spots: list[str] | None,
    image: str | None,
    no_image: bool,
    layer: str | None,
    coordinate_system: str | None,
    sections: list[str] | None = None,
    section_key: str | None = None,
) -> dict[str, Any]:
    if no_image and image is not None:
        _fail("Pass either --image NAME or --no-image, not both.")
    kw: dict[str, Any] = {}
    if table is not None:
        kw["table"] = table
    if spots:
        kw["spots"] = spots[0] if len(spots) == 1 else list(spots)
    if no_image:
        kw["image"] = False
    elif image is not None:
        kw["image"] = image
    if layer is not None:
        kw["layer"] = layer
    if coordinate_system is not None:
        kw["coordinate_system"] = coordinate_system
    if sections:
        kw["sections"] = list(sections)
    if section_key is not None:
        kw["section_key"] = section_key
    return kw


def _soscope_tables(sdata: Any, key_added: str) -> list[str]:
    """Enhanced tables written with ``key_added`` (one per modality for multi-omics tables)."""
    from soscope.pl import enhanced_tables

    inputs = [n for n, t in sdata.tables.items() if SoscopeKeys.UNS not in t.uns]
    return [o for t in inputs for o in enhanced_tables(sdata, t, key_added)]


def _regions(adata: Any) -> list[str]:
    region = (adata.uns.get("spatialdata_attrs") or {}).get("region")
    if region is None:
        return []
    return [region] if isinstance(region, str) else [str(r) for r in region]


def _likelihoods_of(adata: Any) -> str:
    """Return the likelihoods recorded in ``uns["soscope"]`` as text (``"modality: name, ..."``)."""
    info = adata.uns.get(SoscopeKeys.UNS)
    if not hasattr(info, "get"):
        return "?"
    lik = info.get("likelihood")
    if hasattr(lik, "items"):
        return ", ".join(f"{m}: {v}" for m, v in lik.items())
    used = info.get("likelihood_used", lik)
    if used is None:
        return "?"
    mod = info.get("modality")
    return f"{mod}: {used}" if mod not in (None, "all") else str(used)


def _report_outputs(sdata: Any, key_added: str, seconds: float, n_spots: int | None = None) -> None:
    names = _soscope_tables(sdata, key_added)
    if not names:
        _echo(f"done in {seconds:.1f} s")
        return
    for name in names:
        adata = sdata.tables[name]
        shapes = ", ".join(_regions(adata))
        _echo(
            f"wrote table '{name}' ({adata.n_obs:,} sub-spots x {adata.n_vars:,} features) "
            f"on shapes '{shapes}'"
        )
        _echo(f"  likelihoods: {_likelihoods_of(adata)}")
    if n_spots is not None:
        _echo(f"spots: {n_spots:,}")
    _echo(f"time: {seconds:.1f} s")


# --------------------------------------------------------------------------------------------- options
Store = Annotated[
    Path, typer.Argument(help="A SpatialData zarr store (folder).", show_default=False, metavar="STORE")
]
TableOpt = Annotated[
    str | None, typer.Option("--table", help="Table of spot profiles (default: the only one).")
]
SpotsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--spots", help="Shapes element(s) with the spots (repeatable; default: all the table annotates)."
    ),
]
ImageOpt = Annotated[
    str | None,
    typer.Option("--image", help="Image element (default: the only one in the spots' coordinate system)."),
]
NoImageOpt = Annotated[bool, typer.Option("--no-image", help="Run without an image.")]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="Table layer holding the counts (default: X).")]
CsOpt = Annotated[
    str | None, typer.Option("--coordinate-system", help="Coordinate system relating spots and image.")
]
SectionsOpt = Annotated[
    list[str] | None,
    typer.Option("--sections", help="Only these sections (regions, or values of --section-key; repeatable)."),
]
SectionKeyOpt = Annotated[str | None, typer.Option("--section-key", help="obs column defining sections.")]
SubspotsOpt = Annotated[
    str, typer.Option("--subspots", help="auto | hex7 | grid:K | rings:N | a shapes element of cells.")
]
LikelihoodOpt = Annotated[
    str,
    typer.Option(
        "--likelihood", help="auto | nb | zinb | poisson | bernoulli | gaussian | MODALITY=NAME,..."
    ),
]
KeyAddedOpt = Annotated[
    str, typer.Option("--key-added", help="Suffix of the written elements: <spots>_<key>, <table>_<key>.")
]
EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", min=1, help="Training epochs (default: chosen from the data size).")
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size", min=1, help="Spots per training step (default 256); more: fewer, larger steps."
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (deterministic on CPU).")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing elements of the same names.")
]
EnhanceFeaturesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--features",
        help="Features to enhance (repeatable): names, or one boolean var column such as highly_variable "
        "(default: all). The model trains on every feature either way.",
    ),
]
SegmentationOpt = Annotated[
    str,
    typer.Option(
        "--segmentation",
        help="Where nuclei are counted per sub-spot: auto (a labels element or nucleus/cell outlines when "
        "unambiguous, else nuclei detected on the image) | segment_nuclei | a labels or shapes element | "
        "none.",
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option("--dtype", help="float32 | float16: the enhanced values written (float16: half the size)."),
]

ReferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--reference",
        help="Single-cell reference: an .h5ad file (single cells or per-type profiles) or the name of a "
        "table in the store. Saved with the model: `apply` needs none.",
    ),
]
CellTypeKeyOpt = Annotated[
    str, typer.Option("--cell-type-key", help="obs column of the reference holding the cell types.")
]


def _reference_kwargs(reference: str | None, cell_type_key: str) -> dict:
    """Return ``reference=`` / ``cell_type_key=`` for the API (a missing .h5ad fails before any read)."""
    if reference is None:
        if cell_type_key != "cell_type":
            _fail("--cell-type-key names a column of the reference: pass --reference too.")
        return {}
    if reference.endswith(".h5ad") and not Path(reference).exists():
        _fail(f"No reference file at '{reference}': pass an existing .h5ad or a table name of the store.")
    return {"reference": reference, "cell_type_key": cell_type_key}


def _segmentation(value: str) -> str | None:
    """Return ``segmentation=`` from --segmentation: ``none`` (any case) is None, the rest as given."""
    return None if value.strip().lower() == "none" else value


def _features(values: list[str] | None) -> str | list[str]:
    """Return ``features=`` from the repeatable --features: "all", one name or column, or several names."""
    if not values:
        return "all"
    return values[0] if len(values) == 1 else list(values)


def _version_callback(value: bool) -> None:
    if value:
        from soscope._version import __version__

        _echo(f"soscope {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what soscope does.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Super-resolution of spatial omics with soScope, on SpatialData zarr stores."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Library-internal notices that a terminal user can do nothing about.
    warnings.filterwarnings("ignore", message=".*autosharding.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("soscope").setLevel(logging.INFO if verbose else logging.WARNING)


# --------------------------------------------------------------------------------------------- info
def _element_lines(sdata: Any) -> list[str]:
    from spatialdata.transformations import get_transformation

    from soscope.io import layer_names

    lines = []
    for name, img in sdata.images.items():
        if hasattr(img, "children") and len(img.children):
            levels = sorted(img.children, key=lambda k: (len(k), k))
            shapes = [dict(next(iter(img[lv].data_vars.values())).sizes) for lv in levels]
            dims = " ".join(f"{v}" for v in shapes[0].values())
            desc = f"{dims} ({len(levels)} levels)"
        else:
            desc = " ".join(str(v) for v in img.sizes.values())
        cs = ", ".join(get_transformation(img, get_all=True))
        lines.append(f"  image  {name}: {desc}; coordinate systems: {cs}")
    for name in sdata.labels:
        lines.append(f"  labels {name}")
    for name in sdata.points:
        lines.append(f"  points {name}")
    for name, gdf in sdata.shapes.items():
        kinds = sorted(set(gdf.geometry.geom_type.astype(str))) if len(gdf) else []
        kind = "circles" if kinds == ["Point"] and "radius" in gdf.columns else "/".join(kinds) or "empty"
        cs = ", ".join(get_transformation(gdf, get_all=True))
        lines.append(f"  shapes {name}: {len(gdf):,} {kind}; coordinate systems: {cs}")
    for name, adata in sdata.tables.items():
        regions = ", ".join(_regions(adata)) or "-"
        mark = " [soscope output]" if SoscopeKeys.UNS in adata.uns else ""
        reference = adata.uns.get(SoscopeKeys.UNS, {}).get("reference", {}) if mark else {}
        if len(reference):  # enhanced with a single-cell reference: its types and its weight
            types = list(reference.get("cell_types", []))
            mark = (
                f" [soscope output; reference: {len(types)} cell types ({', '.join(map(str, types[:5]))}"
                f"{' ...' if len(types) > 5 else ''}), weight {float(reference.get('weight', 0)):g}]"
            )
        names = layer_names(adata)  # not adata.layers.keys(): it yields None (X) from anndata 0.13 on
        layers = f"; layers: {', '.join(names)}" if names else ""
        lines.append(
            f"  table  {name}: {adata.n_obs:,} x {adata.n_vars:,} annotating {regions}{layers}{mark}"
        )
    return lines


@app.command()
@_handle_errors
def info(
    store: Store,
    table: TableOpt = None,
    spots: SpotsOpt = None,
    image: ImageOpt = None,
    no_image: NoImageOpt = False,
    layer: LayerOpt = None,
    coordinate_system: CsOpt = None,
    sections: SectionsOpt = None,
    section_key: SectionKeyOpt = None,
    segmentation: SegmentationOpt = "auto",
) -> None:
    """List the store's elements and what `soscope enhance` would use (exit 2 if it could not choose)."""
    sdata = _open(store)
    _echo(f"{store}")
    for line in _element_lines(sdata):
        _echo(line)
    from soscope.io import select

    kw = _selection_kwargs(table, spots, image, no_image, layer, coordinate_system, sections, section_key)
    sel = select(sdata, **kw)
    _echo("enhance would use:")
    _echo(f"  table: {sel.table}{f' (layer {sel.layer})' if sel.layer else ' (X)'}")
    _echo(f"  spots: {', '.join(sel.spots)} ({sel.n_spots:,} spots)")
    if sel.image is None and sel.has_image:
        _echo("  images: " + ", ".join(f"{k} → {v}" for k, v in sel.images.items()))
    else:
        _echo(f"  image: {sel.image if sel.image is not None else '(none)'}")
    if len(set(sel.coordinate_systems.values())) > 1:  # sections in frames of their own
        _echo("  coordinate systems: " + ", ".join(f"{k} → {v}" for k, v in sel.coordinate_systems.items()))
    else:
        _echo(f"  coordinate system: {sel.coordinate_system}")
    mods = ", ".join(f"{m} ({int(mask.sum())})" for m, mask in sel.modalities.items())
    _echo(f"  features: {sel.n_features:,}; modalities: {mods}")
    _echo(f"  sections: {', '.join(sel.section_names)}")
    for line in _segmentation_lines(sdata, sel, _segmentation(segmentation)):
        _echo(line)


def _segmentation_lines(sdata: Any, sel: Any, segmentation: str | None) -> list[str]:
    """Return what `enhance` would count nuclei from, per spots element, and what else "auto" found."""
    from soscope.features import drop_unresolved_detections
    from soscope.io import detect_platform, find_segmentation

    choices = find_segmentation(sdata, sel, segmentation)
    # as enhancing does: no detection on an image too coarse to show nuclei
    drop_unresolved_detections(sdata, choices, detect_platform(sdata, sel).microns_per_unit, segmentation)
    lines = []
    for spots, choice in choices.items():
        head = "  segmentation: " if len(choices) == 1 else f"  segmentation of {spots}: "
        lines.append(head + ("(none)" if choice is None else choice.describe()))
        others = [] if choice is None else [c for c in choice.candidates if c != choice.element]
        if others:
            lines.append(f"    also found: {', '.join(others)} (choose with --segmentation)")
    return lines


# --------------------------------------------------------------------------------------------- enhance
@app.command()
@_handle_errors
def enhance(
    store: Store,
    table: TableOpt = None,
    spots: SpotsOpt = None,
    image: ImageOpt = None,
    no_image: NoImageOpt = False,
    layer: LayerOpt = None,
    subspots: SubspotsOpt = "auto",
    likelihood: LikelihoodOpt = "auto",
    sections: SectionsOpt = None,
    section_key: SectionKeyOpt = None,
    coordinate_system: CsOpt = None,
    key_added: KeyAddedOpt = "soscope",
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="A model saved by `soscope train` / SoScope.save (default: train on this store)."
        ),
    ] = None,
    progress: ProgressOpt = True,
    features: EnhanceFeaturesOpt = None,
    dtype: DtypeOpt = "float32",
    reference: ReferenceOpt = None,
    cell_type_key: CellTypeKeyOpt = "cell_type",
    segmentation: SegmentationOpt = "auto",
) -> None:
    """Enhance one store in place: writes shapes <spots>_<key> and table <table>_<key> into it."""
    if model is not None and not model.exists():
        _fail(f"No saved model at '{model}': pass the folder written by `soscope train -o DIR`.")
    sdata = _open(store)
    import soscope

    kw = _selection_kwargs(table, spots, image, no_image, layer, coordinate_system, sections, section_key)
    kw.update(
        subspots=subspots,
        likelihood=_likelihood(likelihood),
        key_added=key_added,
        epochs=epochs,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
        overwrite=overwrite,
        features=_features(features),
        dtype=dtype,
        **_reference_kwargs(reference, cell_type_key),
        segmentation=_segmentation(segmentation),
    )
    if model is not None:
        kw["model"] = str(model)
    t0 = time.perf_counter()
    soscope.enhance(sdata, **kw)
    _report_outputs(sdata, key_added, time.perf_counter() - t0)
    _echo(f"store: {store}")


# --------------------------------------------------------------------------------------------- train / apply
@app.command(
    help="Train a model on one or more stores and save it (apply it later with `soscope apply`).\n\n"
    "With several stores their elements are combined in memory, each name suffixed with -<store name>; "
    "a store's name given to --sections selects all its spots."
)
@_handle_errors
def train(
    stores: Annotated[
        list[Path],
        typer.Argument(
            help="One or more SpatialData zarr stores to train on.", show_default=False, metavar="STORE"
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder to save the model to.", show_default=False)
    ],
    table: TableOpt = None,
    spots: SpotsOpt = None,
    image: ImageOpt = None,
    no_image: NoImageOpt = False,
    layer: LayerOpt = None,
    subspots: SubspotsOpt = "auto",
    likelihood: LikelihoodOpt = "auto",
    sections: SectionsOpt = None,
    section_key: SectionKeyOpt = None,
    coordinate_system: CsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
    reference: ReferenceOpt = None,
    cell_type_key: CellTypeKeyOpt = "cell_type",
    segmentation: SegmentationOpt = "auto",
) -> None:
    """Train a model on one or more stores and save it (apply it later with `soscope apply`)."""
    if output.exists() and any(output.iterdir()) and not overwrite:
        _fail(
            f"'{output}' exists and is not empty: pass --overwrite to replace the model there, or another -o."
        )
    sdata, sections = _open_many(list(stores), sections)
    import soscope

    setup = _selection_kwargs(table, spots, image, no_image, layer, coordinate_system, sections, section_key)
    setup.update(
        subspots=subspots,
        likelihood=_likelihood(likelihood),
        segmentation=_segmentation(segmentation),
        **_reference_kwargs(reference, cell_type_key),
    )
    extra = {"device": device, "seed": seed, "batch_size": batch_size, "progress": progress}
    extra = {k: v for k, v in extra.items() if v is not None}
    init_kw, rest = _accepted(soscope.SoScope, {**setup, **extra})
    train_kw, unused = _accepted(soscope.SoScope.train, {"epochs": epochs, **rest} if epochs else rest)
    dropped = [k for k in unused if k in setup or (k == "batch_size" and batch_size is not None)]
    if dropped:
        _fail(f"This version of SoScope does not take {dropped}; leave those options out.")

    t0 = time.perf_counter()
    model = soscope.SoScope(sdata, **init_kw)
    model.train(**train_kw)
    model.save(str(output), **({"overwrite": True} if _accepted(model.save, {"overwrite": True})[0] else {}))
    hist = getattr(model, "history", None)
    n_epochs = len(getattr(hist, "epoch", []) or (hist.get("epoch", []) if isinstance(hist, dict) else []))
    _echo(
        f"trained on {len(stores)} store(s){f' for {n_epochs} epochs' if n_epochs else ''} in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    _echo(f"model: {output}")


@app.command()
@_handle_errors
def apply(
    model: Annotated[
        Path,
        typer.Argument(
            help="A model folder saved by `soscope train`.", show_default=False, metavar="MODEL_DIR"
        ),
    ],
    stores: Annotated[
        list[Path],
        typer.Argument(
            help="Stores to enhance with it (each in place).", show_default=False, metavar="STORE"
        ),
    ],
    table: TableOpt = None,
    spots: SpotsOpt = None,
    image: ImageOpt = None,
    no_image: NoImageOpt = False,
    layer: LayerOpt = None,
    coordinate_system: CsOpt = None,
    key_added: KeyAddedOpt = "soscope",
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
    features: EnhanceFeaturesOpt = None,
    dtype: DtypeOpt = "float32",
    segmentation: Annotated[
        str,
        typer.Option(
            "--segmentation",
            help="Where nuclei are counted on these stores (models with nuclei features): auto (the model's "
            "setting) | segment_nuclei | a labels or shapes element.",
        ),
    ] = "auto",
) -> None:
    """Enhance stores with a trained model (no training): writes <spots>_<key>, <table>_<key> into each."""
    if not model.exists():
        _fail(f"No saved model at '{model}': pass the folder written by `soscope train -o DIR`.")
    for store in stores:
        _check_store(store)
    import soscope

    kw = _selection_kwargs(table, spots, image, no_image, layer, coordinate_system)
    kw.update(
        model=str(model),
        key_added=key_added,
        device=device,
        progress=progress,
        overwrite=overwrite,
        features=_features(features),
        dtype=dtype,
        segmentation=_segmentation(segmentation),
    )
    for store in stores:
        sdata = _open(store)
        t0 = time.perf_counter()
        soscope.enhance(sdata, **kw)
        _echo(f"{store}:")
        _report_outputs(sdata, key_added, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------- evaluate
@app.command()
@_handle_errors
def evaluate(
    store: Store,
    key_added: KeyAddedOpt = "soscope",
    truth: Annotated[str, typer.Option("--truth", help="Table of true sub-spot values.")] = "truth",
    table: Annotated[
        str | None,
        typer.Option("--table", help="The spot table (default: the one with an enhanced <table>_<key>)."),
    ] = None,
    layer: LayerOpt = None,
    features: Annotated[
        list[str] | None,
        typer.Option("--features", help="Features to score, or a boolean var column (repeatable)."),
    ] = None,
    baselines: Annotated[
        bool, typer.Option("--baselines/--no-baselines", help="Also score the naive baselines.")
    ] = True,
    ssim: Annotated[
        bool, typer.Option("--ssim/--no-ssim", help="Compute SSIM of the sub-spot maps (slowest).")
    ] = True,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the per-feature scores as CSV.")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also save the accuracy plot (PNG).")] = None,
) -> None:
    """Score the enhancement in a store against a truth table (per-feature Pearson, Spearman, RMSE, SSIM)."""
    sdata = _open(store)
    if truth not in sdata.tables:
        _fail(
            f"No truth table '{truth}' in '{store}' (tables: {list(sdata.tables)}): pass --truth with the "
            "table "
            "of true sub-spot values."
        )
    if table is None:
        cands = [
            t
            for t in sdata.tables
            if f"{t}_{key_added}" in sdata.tables and SoscopeKeys.UNS not in sdata.tables[t].uns
        ]
        if len(cands) > 1:
            _fail(f"Several tables have an enhanced '<table>_{key_added}': {cands}; pass `--table`.")
        if not cands:
            outs = [n for n, t in sdata.tables.items() if SoscopeKeys.UNS in t.uns]
            _fail(
                f"No enhanced table '<table>_{key_added}' in '{store}' (soscope outputs: {outs}): run "
                "`soscope enhance` first, or pass `--key-added`."
            )
        table = cands[0]
    from soscope import evaluate as ev

    feats: str | list[str] | None = None
    if features:
        feats = (
            features[0] if len(features) == 1 and features[0] in sdata.tables[table].var.columns else features
        )
    per_feature, summ = ev.score(
        sdata,
        key_added=key_added,
        truth=truth,
        table=table,
        layer=layer,
        features=feats,
        baselines=baselines,
        ssim=ssim,
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        per_feature.to_csv(out)
    n_feat = summ.get("n_features", len(per_feature))
    n_sub = summ.get("n_subspots")
    _echo(
        f"{n_feat} features{f' on {n_sub:,} sub-spots' if n_sub else ''} scored against '{truth}' "
        "(mean per feature):"
    )
    methods = list(summ["mean"])
    metrics = [
        m for m in ("pearson", "spearman", "rmse", "ssim") if any(m in v for v in summ["mean"].values())
    ]
    width = max(len(m) for m in methods) + 2
    _echo(" " * width + "".join(f"{m:>10}" for m in metrics))
    for method in methods:
        vals = summ["mean"][method]
        _echo(f"{method:<{width}}" + "".join(f"{vals.get(m, float('nan')):>10.3f}" for m in metrics))
    for other, shares in summ.get("beats", {}).items():
        if "pearson" in shares:
            _echo(f"soscope beats {other} on {shares['pearson']:.0%} of features (pearson)")
    for name, why in (summ.get("skipped") or {}).items():
        _echo(f"skipped {name}: {why}")
    if out is not None:
        _echo(f"report: {out}")
    if plot is not None:
        from soscope import pl

        pl.accuracy(per_feature, save=plot)
        _echo(f"plot: {plot}")


# --------------------------------------------------------------------------------------------- demo
#: Epochs of `soscope demo` unless --epochs is given (the model's own default, ~300 on this example, takes
#: over ten minutes on a laptop CPU).
DEMO_EPOCHS = 60


def _informative_features(adata: Any, n: int = 3) -> list[str]:
    """Pick ``n`` features worth looking at: spatially variable and well measured, across modalities."""
    import numpy as np
    import scipy.sparse as sp

    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = x.astype(np.float64)
    mean = x.mean(0)
    logx = np.log1p(x)
    score = logx.std(0) * (mean >= max(1.0, float(np.quantile(mean, 0.5))))
    names = np.asarray(adata.var_names).astype(str)
    mod_col = next((c for c in ("feature_types", "modality", "feature_type") if c in adata.var.columns), None)
    order = np.argsort(-score, kind="stable")
    if mod_col is None:
        return names[order[:n]].tolist()
    mods = adata.var[mod_col].astype(str).to_numpy()
    chosen: list[str] = []
    # round robin over modalities, the largest first (e.g. 2 proteins + 1 gene of a CITE-seq table)
    sizes = {m: int((mods == m).sum()) for m in dict.fromkeys(mods)}
    by_mod = {m: [i for i in order if mods[i] == m] for m in sorted(sizes, key=lambda m: -sizes[m])}
    while len(chosen) < min(n, len(names)):
        for idx in by_mod.values():
            if idx and len(chosen) < n:
                chosen.append(names[idx.pop(0)])
    return chosen


@app.command()
@_handle_errors
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for example_enhanced.zarr and .png.")
    ] = Path("soscope_demo"),
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs", min=1, help="Training epochs (the demo's default keeps it to a few minutes on a CPU)."
        ),
    ] = DEMO_EPOCHS,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
) -> None:
    """Enhance the real example shipped with soscope (spatial-CITE-seq, human skin); no download."""
    t0 = time.perf_counter()
    import soscope
    from soscope import pl
    from soscope.datasets import example

    sdata = example()
    table = "table"
    adata = sdata.tables[table]
    spots_name = _regions(adata)[0]
    n_spots = adata.n_obs
    _echo(
        f"example: {n_spots:,} spots x {adata.n_vars:,} features "
        f"({adata.uns.get('dataset', {}).get('technology', 'example')})"
    )
    t1 = time.perf_counter()
    soscope.enhance(sdata, table=table, epochs=epochs, device=device, seed=seed, progress=progress)
    fit_s = time.perf_counter() - t1

    out.mkdir(parents=True, exist_ok=True)
    zarr_path = out / "example_enhanced.zarr"
    png_path = out / "example_enhanced.png"
    sdata.write(zarr_path, overwrite=True)
    features = _informative_features(adata, 3)
    # a PNG on disk, not an interactive figure: soscope's matplotlib path draws it in about a second, where
    # spatialdata-plot (the interactive default) spends 10-15 s on its first render
    pl.enhanced(sdata, features, table=table, save=png_path, backend="matplotlib")

    enh = [sdata.tables[n] for n in _soscope_tables(sdata, "soscope")]
    _echo(f"spots: {n_spots:,}")
    if enh:
        _echo(f"sub-spots: {enh[0].n_obs:,} (shapes '{spots_name}_soscope')")
        _echo(f"likelihoods: {_likelihoods_of(enh[0])}")
    _echo(f"features plotted: {', '.join(features)}")
    _echo(f"time: {fit_s:.1f} s enhancing, {time.perf_counter() - t0:.1f} s in all")
    _echo(f"wrote {zarr_path}")
    _echo(f"wrote {png_path}")


def main() -> None:
    """Entry point of the ``soscope`` script."""
    app(prog_name="soscope")
