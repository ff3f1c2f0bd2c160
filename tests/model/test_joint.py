"""Joint multi-omics: a deeply measured modality beside a sparsely measured one of the same spots.

Synthetic protein + RNA of the same tissue: every feature follows the same cell types; the "RNA" half is
thinned to 5 % of its counts (sub-spot truth and spot counts thinned consistently), as sparse as RNA
beside antibody-derived tags in spatial-CITE-seq. The joint model (one table, ``var["feature_types"]``)
is compared with the RNA alone, on the RNA's truth.
"""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from spatialdata.models import TableModel

import soscope
from soscope.datasets import synthetic
from soscope.evaluate import score

N_SPOTS, N_FEATURES, EPOCHS, KEEP = 400, 80, 40, 0.05


def _protein_rna(image: bool):
    sdata = synthetic(n_spots=N_SPOTS, n_features=N_FEATURES, seed=5, observation="poisson", image=image)
    spots, truth = sdata.tables["table"], sdata.tables["truth"]
    rng = np.random.default_rng(0)
    rna = np.arange(N_FEATURES) % 2 == 1
    inside = np.asarray(truth.layers["footprint"]).astype(np.int64)[:, rna]
    outside = np.asarray(truth.X).astype(np.int64)[:, rna] - inside
    inside_kept, outside_kept = rng.binomial(inside, KEEP), rng.binomial(outside, KEEP)
    truth_rna = truth[:, rna].copy()
    truth_rna.X = (inside_kept + outside_kept).astype(np.int32)
    row_of = {s: i for i, s in enumerate(spots.obs["spot_id"].to_numpy())}
    rows = np.array([row_of[s] for s in truth.obs["spot_id"].to_numpy()])
    x = spots.X.toarray().astype(np.int64)
    thinned = np.zeros((spots.n_obs, rna.sum()), np.int64)
    np.add.at(thinned, rows, inside_kept)
    x[:, rna] = thinned
    var = spots.var.copy()
    var["feature_types"] = np.where(rna, "RNA", "protein")

    def table(columns):
        a = ad.AnnData(X=sp.csr_matrix(x[:, columns]), obs=spots.obs.copy(), var=var.iloc[columns].copy())
        return TableModel.parse(a, region="spots", region_key="region", instance_key="spot_id")

    del sdata.tables["table"]
    sdata.tables["joint"] = table(np.arange(N_FEATURES))
    sdata.tables["rna"] = table(np.flatnonzero(rna))
    sdata.tables["truth_rna"] = truth_rna
    return sdata


@pytest.fixture(scope="module")
def protein_rna():
    return _protein_rna(image=True)


@pytest.fixture(scope="module")
def protein_rna_no_image():
    return _protein_rna(image=False)


def _alone_and_joint(sdata) -> tuple[dict, dict]:
    soscope.enhance(sdata, table="rna", likelihood="nb", epochs=EPOCHS, progress=False, key_added="alone")
    alone = _rna_pearson(sdata, "alone")
    soscope.enhance(
        sdata, table="joint", likelihood={"protein": "poisson", "RNA": "nb"}, epochs=EPOCHS, progress=False,
        key_added="joint",
    )  # fmt: skip
    assert set(sdata.tables) >= {"joint_joint_protein", "joint_joint_rna"}
    sdata.tables["rna_joint"] = sdata.tables["joint_joint_rna"]
    return alone, _rna_pearson(sdata, "joint")


def _rna_pearson(sdata, key):
    _, summary = score(
        sdata, key_added=key, table="rna", truth="truth_rna", features="informative", ssim=False
    )
    return {k: v["pearson"] for k, v in summary["mean"].items()}


def test_without_image_the_protein_guides_the_rna(protein_rna_no_image):
    """Without an image the RNA's neighbour densities come from the protein (cross-omics reference)."""
    alone, joint = _alone_and_joint(protein_rna_no_image)
    assert joint["soscope"] > alone["soscope"] + 0.01, (joint, alone)
    assert joint["soscope"] > max(joint["even_split"], joint["gaussian_interpolation"]), joint


def test_with_image_joint_is_as_good_as_rna_alone(protein_rna):
    """With an image, the joint model loses no accuracy and writes one table per modality.

    The split comes from the image for both modalities: measured no gain (0.721 vs 0.721).
    """
    alone, joint = _alone_and_joint(protein_rna)
    assert joint["soscope"] > alone["soscope"] - 0.01, (joint, alone)
    assert joint["soscope"] > max(joint["even_split"], joint["gaussian_interpolation"]) + 0.1, joint
