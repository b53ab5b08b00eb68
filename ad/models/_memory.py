"""Pieces shared by the feature-memory models (PatchCore, PaDiM, SPADE, DFM)."""
from __future__ import annotations

import contextlib
import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ad.models._maps import gaussian_blur2d, upsample_to


@functools.lru_cache(maxsize=32)
def _resize_blur_operator(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """[n_out, n_in] matrix of 1-D bilinear upsampling followed by Gaussian smoothing along one axis.

    Built by pushing the identity basis through the very helpers it replaces (`upsample_to`,
    `gaussian_blur2d`): both are linear and separable per axis, so applying this matrix on each axis gives
    the same map as upsampling then blurring, at a fraction of the cost (two small matmuls instead of a
    33-tap convolution over the full-resolution map).
    """
    basis = torch.eye(n_in, dtype=torch.float64).unsqueeze(-1)  # n_in maps of shape [n_in, 1]
    cols = gaussian_blur2d(upsample_to(basis, (n_out, 1)), sigma)  # blur along the single column is identity
    return cols.squeeze(-1).T.contiguous()


def upsample_maps(maps: torch.Tensor, size: Tuple[int, int], sigma: float = 0.0) -> torch.Tensor:
    """[B,h,w] patch-grid scores -> [B,H,W] at input resolution (bilinear), optionally Gaussian-smoothed
    (exactly `gaussian_blur2d(upsample_to(maps, size), sigma)`, computed as A_h · map · A_wᵀ)."""
    h, w = maps.shape[-2:]
    a_h = _resize_blur_operator(h, int(size[0]), float(sigma)).to(maps.device, maps.dtype)
    a_w = _resize_blur_operator(w, int(size[1]), float(sigma)).to(maps.device, maps.dtype)
    return a_h @ maps @ a_w.T


def aligned_features(
    features: Sequence[torch.Tensor], pool: int = 0, size: Optional[Tuple[int, int]] = None, mode: str = "bilinear"
) -> List[torch.Tensor]:
    """Optionally neighbourhood-average each layer (PatchCore's locally aware patches: mean over a pool×pool
    window, stride 1, zero padding counted as in the paper's implementation) and resize every layer to `size`
    (default: the first, finest layer's grid) with `mode` ("bilinear" or "nearest")."""
    size = tuple(size) if size is not None else tuple(features[0].shape[-2:])
    out = []
    for f in features:
        if pool and pool > 1:
            f = F.avg_pool2d(f, kernel_size=pool, stride=1, padding=pool // 2)
        if tuple(f.shape[-2:]) != size:
            f = F.interpolate(f, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
        out.append(f)
    return out


@contextlib.contextmanager
def single_thread():
    """Run a block with one intra-op thread. Batched small linear algebra (triangular solves, many tiny
    matmuls, memory-bound loops of small ops) gains nothing from threads on CPU and, on a shared machine,
    was measured 10-60x slower with two threads (synchronisation and nested BLAS threading)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def set_faiss_threads() -> None:
    import faiss

    # faiss' OpenMP pool otherwise takes every core regardless of torch's thread budget
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))


class KnnIndex:
    """L2 k-nearest neighbours over a fixed bank with faiss, built lazily and rebuilt whenever the bank changes.

    kinds:
    - `"exact"` (default): exact search that skips most of the bank. The bank is split into `nlist` k-means
      cells (default min(√M, M/39)), each with its centre c and radius r (farthest member). A query q is
      first matched inside its `EXACT_PROBE` nearest cells, which gives an upper bound u on its k-th neighbour
      distance; by the triangle inequality no member of a cell with ‖q − c‖ − r > u can beat it, so only the
      remaining cells are scanned. Results equal brute force; on PatchCore banks ~3 % of the bank is scanned.
      Queries whose bound prunes little (far outliers) and banks too small to split fall back to brute force.
    - `"flat"`: brute force (faiss IndexFlatL2), every query against every bank row.
    - `"ivf"`: approximate — `nlist` defaults to min(4·√M, M/39) and only the `nprobe` nearest cells are
      scanned; faster still, may miss the true nearest neighbour.

    The index is derived data: it is never saved; the bank lives in the model's buffer.
    """

    KINDS = ("exact", "flat", "ivf")
    #: cells probed for the first upper bound of the exact search (measured fastest on PatchCore banks)
    EXACT_PROBE = 2
    #: queries needing more cells than this share of the bank's cells go to brute force (cheaper as a GEMM)
    MAX_CELL_SHARE = 0.125

    def __init__(self, kind: str = "exact", nprobe: int = 8, nlist: Optional[int] = None, seed: int = 0) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown nearest-neighbour index kind {kind!r} ({' | '.join(self.KINDS)})")
        self.kind, self.nprobe, self.nlist, self.seed = kind, int(nprobe), nlist, int(seed)
        self._key = None
        self._flat = self._ivf = None

    def _build(self, bank: torch.Tensor) -> None:
        import faiss

        data = np.ascontiguousarray(bank.detach().cpu().float().numpy())
        m, d = data.shape
        self._flat = self._ivf = None
        # exact: ~√M cells of ~√M rows balance the cell-distance pass against the scan of unpruned cells
        # (measured on a 21k-row PatchCore bank: √M cells 1.1 s, 4·√M 1.6 s); ivf: finer cells for recall.
        # faiss wants >= 39 training points per cell.
        nlist = int(self.nlist or min((1 if self.kind == "exact" else 4) * np.sqrt(m), m // 39))
        if self.kind in ("exact", "ivf") and nlist >= 2 and m >= 39 * nlist:
            quantizer = faiss.IndexFlatL2(d)
            ivf = faiss.IndexIVFFlat(quantizer, d, nlist)
            ivf.cp.seed = self.seed  # deterministic k-means: a reloaded model builds the same cells
            ivf.train(data)
            ivf.add(data)
            ivf.nprobe = min(self.nprobe, nlist)
            self._quantizer, self._ivf = quantizer, ivf  # the IVF index points into the quantizer: keep it alive
            centroids = torch.from_numpy(quantizer.reconstruct_n(0, nlist))
            # radii from the cells the index actually filed each row in, in float64 so the bound is safe
            cell = torch.from_numpy(quantizer.assign(data, 1)[:, 0].astype(np.int64))
            dist = (torch.from_numpy(data).double() - centroids.double()[cell]).norm(dim=1)
            radius = torch.zeros(nlist, dtype=torch.float64).scatter_reduce_(0, cell, dist, "amax")
            self._centroids, self._radii = centroids, (radius * (1 + 1e-6)).float()
        if self._ivf is None or self.kind == "exact":
            self._flat = faiss.IndexFlatL2(d)
            self._flat.add(data)

    def search(self, bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 16384):
        """(distances [Q,k] (L2, not squared), indices [Q,k]) of the k nearest bank rows of each query."""
        set_faiss_threads()
        key = (bank.data_ptr(), tuple(bank.shape), bank._version)
        if self._key != key:
            self._build(bank)
            self._key = key
        k = min(int(k), bank.shape[0])
        q = np.ascontiguousarray(queries.detach().cpu().float().numpy())
        dists, idx = [], []
        for s in range(0, q.shape[0], chunk):
            part = q[s : s + chunk]
            if self._ivf is None:
                d, i = self._flat.search(part, k)
            elif self.kind == "ivf":
                d, i = self._ivf.search(part, k)
            else:
                d, i = self._search_pruned(part, k)
            dists.append(d)
            idx.append(i)
        d = torch.from_numpy(np.concatenate(dists)).clamp_min_(0).sqrt_()
        return d.to(queries.device), torch.from_numpy(np.concatenate(idx)).to(queries.device)

    def _search_pruned(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Exact k-NN of `q` (squared distances, indices); see the class docstring."""
        nlist = self._centroids.shape[0]
        qt = torch.from_numpy(q)
        q_sq = (qt * qt).sum(1, keepdim=True)
        c_sq = (self._centroids * self._centroids).sum(1)
        cell_sq = torch.addmm(q_sq + c_sq, qt, self._centroids.T, alpha=-2).clamp_min_(0)
        # phase 1: the EXACT_PROBE nearest cells give an upper bound on each query's k-th neighbour distance
        probe = min(self.EXACT_PROBE, nlist)
        near = cell_sq.topk(probe, dim=1, largest=False).indices
        d1, i1 = self._scan_cells(q, k, near)
        upper = torch.from_numpy(d1[:, k - 1]).clamp_min(0).sqrt() * (1 + 1e-5) + 1e-6
        upper[torch.from_numpy(i1[:, k - 1]) < 0] = float("inf")  # fewer than k rows in the probed cells
        # The Gram-trick distances above carry fp32 rounding of about d·eps·(‖q‖² + ‖c‖²): shrink them by a
        # bound on that error so the pruning never drops a cell it should scan.
        slack = 4e-7 * q.shape[1] * (q_sq + c_sq)
        lower = (cell_sq - slack).clamp_min_(0).sqrt_() - self._radii
        todo = lower <= upper.unsqueeze(1)
        todo.scatter_(1, near, False)
        count = todo.sum(1)
        hard = count > max(probe, int(self.MAX_CELL_SHARE * nlist))
        easy = (count > 0) & ~hard
        d_out, i_out = d1, i1
        if easy.any():
            rows = easy.nonzero().squeeze(1)
            r, c = todo[rows].nonzero(as_tuple=True)  # row-major: each query's cells are contiguous
            width = int(count[rows].max())
            start = torch.zeros(rows.numel(), dtype=torch.long)
            start[1:] = count[rows].cumsum(0)[:-1]
            assign = torch.full((rows.numel(), width), -1, dtype=torch.long)  # -1: nothing to scan
            assign[r, torch.arange(r.numel()) - start[r]] = c
            sub = q[rows.numpy()]
            d2, i2 = self._scan_cells(sub, k, assign)
            d_out, i_out = d_out.copy(), i_out.copy()
            d_out[rows.numpy()], i_out[rows.numpy()] = _merge_topk(d1[rows.numpy()], i1[rows.numpy()], d2, i2, k)
        if hard.any():
            rows = hard.nonzero().squeeze(1).numpy()
            d_out, i_out = d_out.copy(), i_out.copy()
            d_out[rows], i_out[rows] = self._flat.search(q[rows], k)
        return d_out, i_out

    def _scan_cells(self, q: np.ndarray, k: int, cells: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """k-NN of each query among the members of its own list of cells ([Q, w], -1 = none)."""
        probe = self._ivf.nprobe
        self._ivf.nprobe = cells.shape[1]  # faiss checks the list width against nprobe
        try:
            return self._ivf.search_preassigned(q, k, cells.numpy(), np.zeros(cells.shape, np.float32))
        finally:
            self._ivf.nprobe = probe


def _merge_topk(d1: np.ndarray, i1: np.ndarray, d2: np.ndarray, i2: np.ndarray, k: int):
    """Row-wise k smallest of two (distance, index) lists; missing entries (index -1) sort last."""
    d = np.concatenate([np.where(i1 < 0, np.inf, d1), np.where(i2 < 0, np.inf, d2)], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [A,B] via the Gram trick (no [A,B,d] intermediate)."""
    a = a.float()
    b = b.float()
    d = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)
    return d.clamp_min_(0)


def seeded_channel_subset(total: int, keep: int, seed: int) -> torch.Tensor:
    """Sorted random subset of `keep` channel indices out of `total` (PaDiM's random dimension reduction)."""
    keep = min(int(keep), total)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=g)[:keep].sort().values


__all__ = [
    "single_thread",
    "KnnIndex",
    "aligned_features",
    "pairwise_sq_dists",
    "seeded_channel_subset",
    "set_faiss_threads",
    "upsample_maps",
]
