"""Loaders shared by the benchmarks: transcript bins, CosMx fields, interior crops, a rendered nuclear image.

The benchmarks folder is not a package: the scripts put it on ``sys.path`` and import this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: CosMx instrument pixel size (µm), an assumption stated in the data's PROVENANCE.txt
COSMX_UM_PER_PX = 0.18
#: gap (image pixels) between the two CosMx fields laid side by side
COSMX_GAP_PX = 200


def merfish_bins(sdata, bin_um: float = 2.0):
    """Bin every MERFISH transcript in ``bin_um`` squares (see :func:`transcript_bins`; image ``"dapi"``)."""
    return transcript_bins(sdata, bin_um, image="dapi", blank_prefix="Blank-")


def transcript_bins(sdata, bin_um: float = 2.0, *, image: str = "dapi", blank_prefix: str = "Blank-"):
    """Bin every transcript (points ``"transcripts"``: x, y, categorical gene) in ``bin_um`` squares.

    Returns a SpatialData with shapes ``"bins"`` (circles at the bin centres), a count table annotating them
    (empty bins left out; ``var["blank"]`` marks the control probes named ``blank_prefix*``), the cell
    outlines ``"cells"`` and the image ``image`` (when present), and the transcripts' bounds
    ``(x0, x1, y0, y1)``.
    """
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import scipy.sparse as sp
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    tx = sdata.points["transcripts"].compute()
    genes = pd.Index(tx["gene"].cat.categories.astype(str), dtype=object)
    x, y = tx["x"].to_numpy(float), tx["y"].to_numpy(float)
    x0, y0 = x.min(), y.min()
    ix = np.floor((x - x0) / bin_um).astype(np.int64)
    iy = np.floor((y - y0) / bin_um).astype(np.int64)
    nx = int(ix.max()) + 1
    key, inv = np.unique(iy * nx + ix, return_inverse=True)
    X = sp.coo_matrix(
        (np.ones(len(tx), np.float32), (inv, tx["gene"].cat.codes.to_numpy())), shape=(len(key), len(genes))
    ).tocsr()
    X.sum_duplicates()
    cx = x0 + (key % nx + 0.5) * bin_um
    cy = y0 + (key // nx + 0.5) * bin_um
    n = len(key)
    gdf = gpd.GeoDataFrame(
        {"radius": np.full(n, bin_um / 2)}, geometry=shapely.points(cx, cy), index=pd.RangeIndex(n)
    )
    obs = pd.DataFrame(
        {"region": pd.Categorical(["bins"] * n), "bin_id": np.arange(n, dtype=np.int64)},
        index=pd.Index([f"bin_{i}" for i in range(n)]),
    )
    var = pd.DataFrame({"blank": genes.str.startswith(blank_prefix)}, index=genes)
    table = TableModel.parse(
        ad.AnnData(X=X, obs=obs, var=var), region="bins", region_key="region", instance_key="bin_id"
    )
    images = {image: sdata.images[image]} if image in sdata.images else {}
    bounds = (x.min(), x.max(), y.min(), y.max())
    return (
        SpatialData(
            images=images,
            shapes={
                "bins": ShapesModel.parse(gdf, transformations={"global": Identity()}),
                "cells": sdata.shapes["cells"],
            },
            tables={"table": table},
        ),
        bounds,
    )


def cell_bounds(sdata) -> tuple[float, float, float, float]:
    """Bounds ``(x0, x1, y0, y1)`` of the cell centres."""
    import shapely

    c = shapely.get_coordinates(shapely.centroid(np.asarray(sdata.shapes["cells"].geometry.values)))
    return c[:, 0].min(), c[:, 0].max(), c[:, 1].min(), c[:, 1].max()


def crop_interior(p, bounds):
    """Keep the pseudo-spots whose sub-spot polygons all lie inside ``bounds`` (x0, x1, y0, y1).

    ``bounds`` may also be a list of such rectangles (separate fields of view laid side by side): a spot is
    kept when all its sub-spots lie inside one of them.
    """
    import pandas as pd
    from spatialdata import SpatialData

    rects = [bounds] if np.ndim(bounds) == 1 else list(bounds)
    sub = p.shapes["spots_truth_subspots"]
    b = sub.geometry.bounds
    inside = np.zeros((len(sub), len(rects)), dtype=bool)
    for j, (x0, x1, y0, y1) in enumerate(rects):
        ok = (b["minx"] >= x0) & (b["maxx"] <= x1) & (b["miny"] >= y0) & (b["maxy"] <= y1)
        inside[:, j] = ok.to_numpy()
    spot_of = sub["spot_id"].to_numpy()
    whole = pd.DataFrame(inside).groupby(spot_of).all().any(axis=1)  # all sub-spots inside one rectangle
    bad = whole.index.to_numpy()[~whole.to_numpy()]
    spots = p.shapes["spots"]
    keep_spot = ~spots.index.isin(bad)
    keep_sub = ~sub["spot_id"].isin(bad).to_numpy()
    tab, tru = p.tables["table"], p.tables["truth"]
    t_keep = ~tab.obs["spot_id"].isin(bad).to_numpy()
    r_keep = ~tru.obs["spot_id"].isin(bad).to_numpy()
    return SpatialData(
        images=dict(p.images),
        shapes={"spots": spots.loc[keep_spot], "spots_truth_subspots": sub.loc[keep_sub]},
        tables={"table": tab[t_keep].copy(), "truth": tru[r_keep].copy()},
    )


def load_cosmx(root: Path, channels: tuple[str, str, str] = ("red", "green", "blue")):
    """Load the two CosMx fields side by side: transcripts, cells (mask centroids), RGB composite; µm.

    ``channels`` names the composite's three channels (PROVENANCE.txt: nuclei blue, membrane green); a name
    like ``"nuclei"`` lets soscope's nucleus detection find the nuclear channel by name.

    Returns a SpatialData (points ``"transcripts"``, shapes ``"cells"``, image ``"if"``), the cells × targets
    AnnData (transcripts with the cell's id; obs ``cell_id`` = the shapes' index) and the rectangles
    ``(x0, x1, y0, y1)`` of the two fields' transcripts.
    """
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import scipy.sparse as sp
    import shapely
    import tifffile
    from PIL import Image
    from scipy import ndimage as ndi
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, PointsModel, ShapesModel
    from spatialdata.transformations import Identity, Scale

    folder = root / "cosmx_lung_mini"
    tx = pd.read_csv(folder / "Lung12_tx_file.csv.gz")
    um = COSMX_UM_PER_PX
    # registration (PROVENANCE.txt): column = x_local_px - x0 (x0 from the .aux.xml), row = 3648 - y_local_px
    fields = {2: 4800.0, 3: 0.0}
    images, cell_rows, xs, ys, rects = [], [], np.zeros(len(tx)), np.zeros(len(tx)), []
    offset = 0
    for fov, x0 in fields.items():
        img = np.asarray(Image.open(folder / "CellComposite" / f"CellComposite_F00{fov}.jpg"))
        labels = tifffile.imread(folder / "CellLabels" / f"CellLabels_F00{fov}.tif").astype(np.int64)
        here = (tx["fov"] == fov).to_numpy()
        col = tx.loc[here, "x_local_px"].to_numpy() - x0 + offset
        row = 3648.0 - tx.loc[here, "y_local_px"].to_numpy()
        xs[here], ys[here] = col * um, row * um
        rects.append((xs[here].min(), xs[here].max(), ys[here].min(), ys[here].max()))
        ids = np.unique(labels)
        ids = ids[ids > 0]
        cy, cx = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, ids)).T
        area = np.asarray(ndi.sum(np.ones_like(labels), labels, ids))
        cell_rows.append(
            pd.DataFrame(
                {
                    "cell_id": fov * 10_000 + ids,  # cell ids are per field
                    "fov": fov,
                    "x": (cx + 0.5 + offset) * um,  # pixel i spans [i, i + 1)
                    "y": (cy + 0.5) * um,
                    "radius": np.sqrt(area / np.pi) * um,
                }
            )
        )
        images.append((offset, img))
        offset += img.shape[1] + COSMX_GAP_PX
    height = max(im.shape[0] for _, im in images)
    mosaic = np.zeros((height, offset - COSMX_GAP_PX, 3), dtype=np.uint8)
    for off, im in images:
        mosaic[: im.shape[0], off : off + im.shape[1]] = im
    cells = pd.concat(cell_rows, ignore_index=True)
    gdf = gpd.GeoDataFrame(
        {"radius": cells["radius"].to_numpy()},
        geometry=shapely.points(cells["x"].to_numpy(), cells["y"].to_numpy()),
        index=pd.Index(cells["cell_id"].to_numpy()),
    )
    genes = pd.Index(np.sort(tx["target"].astype(str).unique()), dtype=object)
    gene = pd.Categorical(tx["target"].astype(str), categories=genes)
    tr = {"global": Identity()}
    points = PointsModel.parse(
        pd.DataFrame({"x": xs, "y": ys, "gene": gene}),
        coordinates={"x": "x", "y": "y"},
        feature_key="gene",
        transformations=tr,
    )
    image = Image2DModel.parse(
        mosaic.transpose(2, 0, 1),
        dims=("c", "y", "x"),
        c_coords=list(channels),
        transformations={"global": Scale([um, um], axes=("x", "y"))},
    )
    sdata = SpatialData(
        images={"if": image},
        shapes={"cells": ShapesModel.parse(gdf, transformations=tr)},
        points={"transcripts": points},
    )
    # cells x targets from the transcripts' cell ids (0: outside every cell)
    key = (tx["fov"].to_numpy() * 10_000 + tx["cell_ID"].to_numpy()).astype(np.int64)
    inside = tx["cell_ID"].to_numpy() > 0
    row_of = pd.Index(cells["cell_id"].to_numpy()).get_indexer(key[inside])
    ok = row_of >= 0
    x = sp.coo_matrix(
        (np.ones(int(ok.sum()), np.float32), (row_of[ok], gene.codes[inside][ok])),
        shape=(len(cells), len(genes)),
    ).tocsr()
    x.sum_duplicates()
    cell_table = ad.AnnData(
        X=x,
        obs=pd.DataFrame(
            {"cell_id": cells["cell_id"].to_numpy(), "fov": cells["fov"].to_numpy()},
            index=cells["cell_id"].astype(str).to_numpy(),
        ),
        var=pd.DataFrame({"blank": genes.str.startswith("NegPrb")}, index=genes),
    )
    return sdata, cell_table, rects


#: nucleus radius (µm) drawn for a cell of the rendered nuclear image: uniform in this range (5-7 µm nuclei)
RENDER_RADIUS_UM = (2.5, 3.5)


def render_nuclei(
    xy: np.ndarray,
    *,
    um_per_px: float = 1.0,
    margin_um: float = 20.0,
    seed: int = 0,
) -> tuple[object, dict]:
    """Render a DAPI-like image from cell centres (µm): one noisy ellipse per cell, blurred, on noise.

    Each cell gets an elliptical nucleus centred on it: mean radius uniform in :data:`RENDER_RADIUS_UM`,
    axis ratio uniform in 0.7-1, random orientation, brightness lognormal (sd 0.25) with 10 % pixel noise;
    the image is blurred (Gaussian, sigma 0.7 µm: optics) and background noise (mean 0.05, sd 0.03 of a
    nucleus's brightness) is added, then scaled to uint16. Deterministic for a seed.

    Returns the spatialdata image (one channel ``"DAPI"``, dims ``c, y, x``; pixel ``(r, c)`` spans
    ``[x0 + c * um_per_px, x0 + (c + 1) * um_per_px)`` through a Scale and a Translation to ``"global"``)
    and what was rendered (for the report).
    """
    from scipy import ndimage as ndi
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, Translation

    rng = np.random.default_rng(seed)
    xy = np.asarray(xy, dtype=np.float64)
    x0, y0 = xy.min(0) - margin_um
    w = int(np.ceil((xy[:, 0].max() + margin_um - x0) / um_per_px))
    h = int(np.ceil((xy[:, 1].max() + margin_um - y0) / um_per_px))
    img = np.zeros((h, w), dtype=np.float32)
    n = len(xy)
    radius = rng.uniform(*RENDER_RADIUS_UM, n) / um_per_px
    ratio = rng.uniform(0.7, 1.0, n)
    angle = rng.uniform(0.0, np.pi, n)
    bright = rng.lognormal(0.0, 0.25, n)
    cx = (xy[:, 0] - x0) / um_per_px  # pixel c covers [c, c + 1): its centre is c + 0.5
    cy = (xy[:, 1] - y0) / um_per_px
    for i in range(n):
        a, b = radius[i] / np.sqrt(ratio[i]), radius[i] * np.sqrt(ratio[i])  # same area as the mean radius
        r = int(np.ceil(a)) + 1
        c0, r0 = int(cx[i]) - r, int(cy[i]) - r
        cc, rr = np.meshgrid(np.arange(c0, c0 + 2 * r + 1), np.arange(r0, r0 + 2 * r + 1))
        ok = (cc >= 0) & (cc < w) & (rr >= 0) & (rr < h)
        dx, dy = cc + 0.5 - cx[i], rr + 0.5 - cy[i]
        u = dx * np.cos(angle[i]) + dy * np.sin(angle[i])
        v = -dx * np.sin(angle[i]) + dy * np.cos(angle[i])
        inside = ok & ((u / a) ** 2 + (v / b) ** 2 <= 1.0)
        val = bright[i] * (1.0 + 0.1 * rng.standard_normal(int(inside.sum())))
        # overlapping nuclei: the brighter pixel (a stain does not add up across touching nuclei)
        img[rr[inside], cc[inside]] = np.maximum(img[rr[inside], cc[inside]], val)
    img = ndi.gaussian_filter(img, 0.7 / um_per_px)
    img += rng.normal(0.05, 0.03, img.shape).astype(np.float32)
    img = np.clip(img / np.percentile(img, 99.9), 0.0, 1.0)
    data = (img * 65535).astype(np.uint16)[None]
    tr = Sequence([Scale([um_per_px, um_per_px], axes=("x", "y")), Translation([x0, y0], axes=("x", "y"))])
    image = Image2DModel.parse(data, dims=("c", "y", "x"), c_coords=["DAPI"], transformations={"global": tr})
    what = {
        "um_per_px": um_per_px,
        "shape": (h, w),
        "nuclei": n,
        "radius_um": RENDER_RADIUS_UM,
        "seed": seed,
    }
    return image, what


def layout_rows(sdata):
    """Return the layout ``score`` builds, its sub-spots' truth rows and the spot counts (all features).

    For a one-section case with the element names of :func:`soscope.datasets.synthetic` (``table``, ``truth``
    and the spots ``table`` annotates): ``(layout, pos, counts)`` with ``pos[k]`` the truth row of the
    layout's sub-spot ``k`` and ``counts`` ``(spots, features)`` float64 in the layout's spot order.
    """
    import pandas as pd

    from soscope.geometry import make_subspots

    tab, tru = sdata.tables["table"], sdata.tables["truth"]
    regions = tab.uns["spatialdata_attrs"]["region"]
    regions = [regions] if isinstance(regions, str) else list(regions)
    assert len(regions) == 1, f"one section expected, got {regions}"
    ids = tab.obs["spot_id"].to_numpy()
    sub = tru.uns["subspots"]
    spots = sdata.shapes[regions[0]].loc[ids]
    layout = make_subspots(spots, str(sub["scheme"]), spacing=float(sub["spacing"]))
    keys = pd.MultiIndex.from_arrays(
        [ids[layout.spot_index].astype(np.int64), layout.subspot.astype(np.int64)]
    )
    truth_keys = pd.MultiIndex.from_arrays(
        [tru.obs["spot_id"].to_numpy(np.int64), tru.obs["subspot"].to_numpy(np.int64)]
    )
    pos = truth_keys.get_indexer(keys)
    assert np.all(pos >= 0) and len(np.unique(pos)) == tru.n_obs == layout.n_subspots, "layout != truth rows"
    x = tab.X.toarray() if hasattr(tab.X, "toarray") else tab.X
    return layout, pos, np.asarray(x, dtype=np.float64)
