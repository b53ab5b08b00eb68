"""ad.stats against independent expectations: slow direct bootstrap loops, a hand-computed DeLong case and the
O(m n) DeLong definition, scipy's Friedman / Wilcoxon / t, and Demšar's published Nemenyi q table."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage, stats

import ad.metrics as M
from ad.stats import (
    bootstrap_image,
    bootstrap_pixel,
    delong_test,
    friedman,
    holm,
    nemenyi_cd,
    nemenyi_q,
    paired_bootstrap,
    seed_interval,
    stratified_resamples,
    wilcoxon_holm,
)
from ad.stats.bootstrap import PixelHistograms, image_replicates, pixel_replicates
from ad.stats.cd_diagram import cliques, plot_cd_diagram


def _image_case(n_norm=30, n_anom=20, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_norm, int), np.ones(n_anom, int)]
    rng.shuffle(y)
    s = rng.standard_normal(y.size) + 1.2 * y
    if ties:
        s = np.round(s)
    return y, s


def _slow_resamples(y, n_boot, seed):
    """The documented scheme written out independently: per replicate, normals then anomalies."""
    rng = np.random.default_rng(seed)
    normal, anom = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    a = rng.integers(0, normal.size, (n_boot, normal.size))
    b = rng.integers(0, anom.size, (n_boot, anom.size))
    return [np.r_[normal[a[i]], anom[b[i]]] for i in range(n_boot)]


def test_resamples_are_stratified_seeded_and_match_the_documented_scheme():
    y, _ = _image_case()
    r = stratified_resamples(y, 50, seed=3)
    assert r.shape == (50, y.size)
    assert np.all(y[r].sum(axis=1) == y.sum())  # class balance kept in every replicate
    np.testing.assert_array_equal(r, np.stack(_slow_resamples(y, 50, 3)))
    np.testing.assert_array_equal(r, stratified_resamples(y, 50, seed=3))
    assert not np.array_equal(r, stratified_resamples(y, 50, seed=4))


@pytest.mark.parametrize("ties", [False, True])
def test_image_bootstrap_equals_slow_loop(ties):
    y, s = _image_case(ties=ties)
    n_boot = 200
    ci = bootstrap_image(y, s, n_boot=n_boot, seed=7)
    slow = {"auroc": [], "ap": [], "f1_max": []}
    for idx in _slow_resamples(y, n_boot, 7):
        slow["auroc"].append(M.image_auroc(y[idx], s[idx]))
        slow["ap"].append(M.image_ap(y[idx], s[idx]))
        slow["f1_max"].append(M.f1_max(y[idx], s[idx])["f1"])
    for m, vals in slow.items():
        lo, hi = np.percentile(vals, [2.5, 97.5])
        assert ci[m].low == pytest.approx(lo, abs=1e-12) and ci[m].high == pytest.approx(hi, abs=1e-12)
        assert ci[m].std == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    assert ci["auroc"].estimate == pytest.approx(M.image_auroc(y, s), abs=1e-12)
    assert ci["ap"].estimate == pytest.approx(M.image_ap(y, s), abs=1e-12)
    assert ci["auroc"].low < ci["auroc"].estimate < ci["auroc"].high


def _pixel_case(n_norm=6, n_anom=5, size=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_norm, int), np.ones(n_anom, int)]
    masks = np.zeros((y.size, size, size), bool)
    maps = rng.random((y.size, size, size)).astype(np.float32)
    for i in np.flatnonzero(y):
        for _ in range(int(rng.integers(1, 3))):  # one or two blobs: several regions per image
            r, c, h = int(rng.integers(0, size - 6)), int(rng.integers(0, size - 6)), int(rng.integers(2, 6))
            masks[i, r:r + h, c:c + h] = True
        maps[i][masks[i]] += 0.4 * rng.random(int(masks[i].sum()))
    maps = ndimage.uniform_filter(maps, size=(1, 3, 3))
    return y, masks, maps


def test_pixel_metrics_on_full_set_equal_ad_metrics_on_float16_maps():
    y, masks, maps = _pixel_case()
    f16 = maps.astype(np.float16)
    ci = bootstrap_pixel(y, masks, f16, n_boot=5, seed=0)
    assert ci["auroc"].estimate == pytest.approx(M.pixel_auroc(masks, f16.astype(np.float64)), abs=1e-12)
    assert ci["aupro"].estimate == pytest.approx(M.aupro(masks, f16.astype(np.float64)), abs=1e-9)


def test_pixel_bootstrap_equals_slow_loop_over_resampled_images():
    y, masks, maps = _pixel_case(seed=1)
    f16 = maps.astype(np.float16)
    n_boot = 40
    hist = PixelHistograms(masks, f16)
    reps = pixel_replicates(hist, stratified_resamples(y, n_boot, 5), max_fpr=0.3)
    for b, idx in enumerate(_slow_resamples(y, n_boot, 5)):
        m, a = masks[idx], f16[idx].astype(np.float64)
        assert reps["auroc"][b] == pytest.approx(M.pixel_auroc(m, a), abs=1e-12)
        # a duplicated image's regions count twice, as they would in a test set holding it twice
        assert reps["aupro"][b] == pytest.approx(M.aupro(m, a), abs=1e-9)


def test_float32_maps_are_scaled_into_float16_range():
    y, masks, maps = _pixel_case(seed=2)
    big = maps * 1e6  # beyond float16's range: must be scaled, not overflow to inf
    ci = bootstrap_pixel(y, masks, big, n_boot=5)
    assert ci["auroc"].estimate == pytest.approx(M.pixel_auroc(masks, maps), abs=2e-3)


def _delong_by_definition(y, a, b):
    """DeLong 1988 with the O(m n) kernel psi(x, y) = 1 if x > y, 1/2 if equal, 0 otherwise."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    comps = []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
    v10 = np.stack([c[0] for c in comps])
    v01 = np.stack([c[1] for c in comps])
    s10, s01 = np.cov(v10), np.cov(v01)
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (comps[0][2] - comps[1][2]) / np.sqrt(var)
    return comps[0][2], comps[1][2], 2 * stats.norm.sf(abs(z))


def test_delong_hand_computed_case():
    # 3 anomalous, 3 normal. a: psi rows (1,1,1), (1,1,0), (1,.5,0) -> AUC 6.5/9; b: perfect except one tie.
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.1, 0.4, 0.7])
    b = np.array([0.9, 0.8, 0.5, 0.1, 0.2, 0.5])
    r = delong_test(y, a, b)
    assert r.auc_a == pytest.approx(6.5 / 9) and r.auc_b == pytest.approx(8.5 / 9)
    # structural components by hand: a: V10 = (1, 2/3, 1/2), V01 = (1, 5/6, 1/3); b: V10 = (1, 1, 5/6),
    # V01 = (1, 1, 5/6). Sample (n-1) variances: var10_a = 7/108, var01_a = 13/108, var10_b = var01_b = 1/108;
    # covariances: cov10 = (5 - 1 + 8)/324/2 = 1/54, cov01 = (5 + 2 + 14)/324/2 = 7/216.
    var_a = (7 / 108) / 3 + (13 / 108) / 3
    var_b = (1 / 108) / 3 + (1 / 108) / 3
    cov = (1 / 54) / 3 + (7 / 216) / 3
    se = np.sqrt(var_a + var_b - 2 * cov)
    assert r.se == pytest.approx(se, abs=1e-12)
    assert r.p == pytest.approx(2 * stats.norm.sf(abs((6.5 - 8.5) / 9 / se)), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_delong_matches_the_definition_to_1e_6(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    y = (rng.random(n) < 0.4).astype(int)
    y[:2], y[2:4] = 1, 0
    a = np.round(rng.standard_normal(n) + y, 1)  # rounded: many ties
    b = a + rng.standard_normal(n) * 0.7
    ref = _delong_by_definition(y, a, b)
    r = delong_test(y, a, b)
    assert (r.auc_a, r.auc_b) == pytest.approx(ref[:2], abs=1e-12)
    assert r.p == pytest.approx(ref[2], abs=1e-6)


def test_delong_agrees_with_paired_bootstrap_on_large_samples():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(500, int), np.ones(300, int)]
    shared = rng.standard_normal(y.size)
    a = shared + 1.0 * y + 0.8 * rng.standard_normal(y.size)
    b = shared + 0.9 * y + 0.8 * rng.standard_normal(y.size)
    r = delong_test(y, a, b)
    idx = stratified_resamples(y, 1500, seed=1)
    ra, rb = image_replicates(y, a, idx)["auroc"], image_replicates(y, b, idx)["auroc"]
    assert np.std(ra - rb, ddof=1) == pytest.approx(r.se, rel=0.1)
    pb = paired_bootstrap(M.image_auroc(y, a), ra, M.image_auroc(y, b), rb)
    assert pb.diff == pytest.approx(r.diff, abs=1e-12)
    assert pb.p == pytest.approx(r.p, abs=0.05)


def test_delong_identical_scores_give_p_1():
    y, s = _image_case()
    assert delong_test(y, s, s).p == 1.0


def test_paired_bootstrap_p_value():
    d_pos = np.linspace(0.01, 0.2, 99)
    p = paired_bootstrap(0.9, d_pos + 0.5, 0.5, np.full(99, 0.5))
    assert p.p == pytest.approx(2 * 1 / 100)  # no replicate at or below 0: the +1-corrected minimum
    mixed = paired_bootstrap(0.5, np.r_[np.full(50, 0.4), np.full(50, 0.6)], 0.5, np.full(100, 0.5))
    assert mixed.p == 1.0


def test_friedman_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    for ties in (False, True):
        x = rng.random((12, 4))
        if ties:
            x = np.round(x, 1)
        r = friedman(x, list("abcd"))
        ref = stats.friedmanchisquare(*x.T)
        assert r.chi2 == pytest.approx(ref.statistic, abs=1e-10)
        assert r.p == pytest.approx(ref.pvalue, abs=1e-10)
        # average ranks: 1 = best = highest value
        np.testing.assert_allclose(list(r.ranks.values()), stats.rankdata(-x, axis=1).mean(axis=0))
        # Iman-Davenport as in Demšar (2006), eq. 2
        n, k = x.shape
        assert r.f == pytest.approx((n - 1) * ref.statistic / (n * (k - 1) - ref.statistic))


def test_nemenyi_q_matches_demsar_table():
    # Demšar (2006), Table 5(a), alpha = 0.05 and (b) alpha = 0.10, k = 2..10
    q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    q10 = [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]
    for k, (a, b) in enumerate(zip(q05, q10), start=2):
        assert nemenyi_q(k, 0.05) == pytest.approx(a, abs=1.5e-3)
        assert nemenyi_q(k, 0.10) == pytest.approx(b, abs=1.5e-3)
    # CD for 4 methods on 14 datasets at 0.05 (Demšar's worked example: CD = 1.25)
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.01)


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.5]).tolist() == [1.0, 1.0]


def test_wilcoxon_holm_matches_scipy_pairs():
    rng = np.random.default_rng(3)
    x = rng.random((10, 3)) + np.array([0.0, 0.1, 0.3])
    out = wilcoxon_holm(x, ["a", "b", "c"])
    raw = [stats.wilcoxon(x[:, i], x[:, j]).pvalue for i, j in itertools.combinations(range(3), 2)]
    assert [o["p"] for o in out] == pytest.approx(raw)
    assert [o["p_holm"] for o in out] == pytest.approx(holm(raw).tolist())
    assert [(o["a"], o["b"]) for o in out] == [("a", "b"), ("a", "c"), ("b", "c")]


def test_seed_interval_matches_scipy_t():
    v = [0.91, 0.93, 0.95]
    r = seed_interval(v)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
    assert (r.low, r.high) == pytest.approx((lo, hi))
    assert r.std == pytest.approx(np.std(v, ddof=1))
    one = seed_interval([0.9])
    assert one.n == 1 and np.isnan(one.low)


def test_cd_cliques_and_png(tmp_path):
    ranks = {"a": 1.2, "b": 1.9, "c": 3.5, "d": 3.4}
    assert cliques(ranks, 1.0) == [["a", "b"], ["d", "c"]]
    x = np.array([[0.9, 0.8, 0.5, 0.4], [0.95, 0.7, 0.6, 0.65], [0.92, 0.91, 0.5, 0.6]])
    p = plot_cd_diagram(friedman(x, list("abcd")), tmp_path / "cd.png", title="synthetic")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_float16_codes_equal_unique_ranks_with_signed_zeros_and_subnormals():
    from ad.stats.bootstrap import float16_codes

    rng = np.random.default_rng(0)
    a = np.r_[rng.standard_normal(5000) * 100, [0.0, -0.0, 1e-7, -1e-7, 65504, -65504]].astype(np.float16)
    codes, n = float16_codes(a)
    values, inverse = np.unique(a, return_inverse=True)  # np.unique treats -0 == +0
    assert n == values.size and np.array_equal(codes, inverse.reshape(-1))
