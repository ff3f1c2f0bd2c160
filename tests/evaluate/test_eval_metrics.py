"""Metrics with known answers."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from skimage.metrics import structural_similarity

from soscope._errors import SoscopeInputError
from soscope.evaluate import (
    pearson_per_feature,
    rmse_normalised,
    spearman_per_feature,
    ssim_maps,
    summary,
)
from soscope.evaluate._metrics import _ssim_stack


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(2.0, 5.0, (400, 60))).astype(float)
    return x


def test_identical_is_one(data):
    np.testing.assert_allclose(pearson_per_feature(data, data), 1.0)
    np.testing.assert_allclose(spearman_per_feature(data, data), 1.0)
    np.testing.assert_allclose(rmse_normalised(data, data), 0.0, atol=1e-12)
    np.testing.assert_allclose(rmse_normalised(data, data, method="zscore"), 0.0, atol=1e-12)


def test_negation_is_minus_one(data):
    np.testing.assert_allclose(pearson_per_feature(-data, data), -1.0)
    np.testing.assert_allclose(spearman_per_feature(-data, data), -1.0)


def test_affine_invariance_and_sparse(data):
    np.testing.assert_allclose(pearson_per_feature(3 * data + 7, data), 1.0)
    np.testing.assert_allclose(pearson_per_feature(sp.csr_matrix(data), data), 1.0)
    # Spearman: any monotone map
    np.testing.assert_allclose(spearman_per_feature(np.log1p(data), data), 1.0)


def test_shuffled_is_about_zero(data):
    rng = np.random.default_rng(1)
    shuffled = data[rng.permutation(len(data))]
    r = pearson_per_feature(shuffled, data)
    assert abs(np.nanmean(r)) < 0.03
    assert np.all(np.abs(r) < 0.25)
    assert abs(np.nanmean(spearman_per_feature(shuffled, data))) < 0.03


def test_matches_numpy_and_scipy(data):
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    noisy = data + rng.normal(0, 3, data.shape)
    r = pearson_per_feature(noisy, data)
    ref = [np.corrcoef(noisy[:, j], data[:, j])[0, 1] for j in range(data.shape[1])]
    np.testing.assert_allclose(r, ref, rtol=1e-10)
    s = spearman_per_feature(noisy, data)
    ref = [spearmanr(noisy[:, j], data[:, j])[0] for j in range(5)]
    np.testing.assert_allclose(s[:5], ref, rtol=1e-10)


def test_constant_features_are_nan(data):
    a = data.copy()
    a[:, 0] = 5.0
    r = pearson_per_feature(a, data)
    assert np.isnan(r[0]) and np.isfinite(r[1:]).all()
    assert np.isnan(spearman_per_feature(data, a)[0])
    assert np.isnan(rmse_normalised(a, data, method="zscore")[0])


def test_shape_mismatch_raises(data):
    with pytest.raises(SoscopeInputError):
        pearson_per_feature(data[:, :3], data)


def test_rmse_scale_invariant_log1p(data):
    # log1p after normalising each row to a common total ignores a per-row scale
    np.testing.assert_allclose(rmse_normalised(2.5 * data, data), 0.0, atol=1e-12)
    assert np.all(rmse_normalised(data[::-1], data) > 0)


def _grid_centroids(n=24, spacing=10.0):
    yy, xx = np.mgrid[0:n, 0:n]
    return np.column_stack([xx.ravel() * spacing, yy.ravel() * spacing])


def test_ssim_identical_symmetric_noisy():
    rng = np.random.default_rng(3)
    c = _grid_centroids()
    smooth = np.column_stack([np.sin(c[:, 0] / 40.0 + k) + np.cos(c[:, 1] / 30.0) for k in range(5)])
    noisy = smooth + rng.normal(0, 0.5, smooth.shape)
    np.testing.assert_allclose(ssim_maps(smooth, smooth, c), 1.0, atol=1e-9)
    s1, s2 = ssim_maps(noisy, smooth, c), ssim_maps(smooth, noisy, c)
    np.testing.assert_allclose(s1, s2, atol=1e-9)
    assert np.all(s1 < 0.99) and np.all(s1 > 0)
    const = smooth.copy()
    const[:, 0] = 1.0
    assert np.isnan(ssim_maps(const, smooth, c)[0])


def test_ssim_stack_matches_skimage():
    rng = np.random.default_rng(4)
    a = rng.random((30, 40, 2))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    ours = _ssim_stack(a, b, 7, 1.0)
    for k in range(2):
        _, ref = structural_similarity(a[..., k], b[..., k], data_range=1.0, full=True)
        pad = 3  # skimage averages over the interior only; compare there
        np.testing.assert_allclose(ours[pad:-pad, pad:-pad, k], ref[pad:-pad, pad:-pad], atol=1e-6)


def test_summary_shares():
    df = pd.DataFrame(
        {
            "pearson_soscope": [0.9, 0.5, np.nan],
            "pearson_base": [0.8, 0.6, 0.1],
            "rmse_soscope": [1.0, 1.0, 1.0],
            "rmse_base": [2.0, 2.0, 0.5],
        }
    )
    s = summary(df)
    assert s["beats"]["base"]["pearson"] == pytest.approx(0.5)
    assert s["beats"]["base"]["rmse"] == pytest.approx(2 / 3)
    assert s["mean"]["soscope"]["pearson"] == pytest.approx(0.7)
