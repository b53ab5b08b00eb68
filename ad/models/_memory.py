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


class FlatL2Index:
    """L2 nearest neighbours over a fixed bank with faiss, built lazily and rebuilt whenever the bank changes.

    `kind="flat"`: exact search (IndexFlatL2). `kind="ivf"`: inverted lists over `nlist` k-means cells
    (default min(4·√M, M/39)), probing the `nprobe` nearest cells per query — approximate, several times faster on large
    banks. The index is derived data: it is never saved; the bank lives in the model's buffer.
    """

    def __init__(self, kind: str = "flat", nprobe: int = 8, nlist: Optional[int] = None, seed: int = 0) -> None:
        if kind not in ("flat", "ivf"):
            raise ValueError(f"unknown nearest-neighbour index kind {kind!r} (flat | ivf)")
        self.kind, self.nprobe, self.nlist, self.seed = kind, int(nprobe), nlist, int(seed)
        self._index = None
        self._key = None

    def get(self, bank: torch.Tensor):
        import faiss

        key = (bank.data_ptr(), tuple(bank.shape), bank._version)
        if self._index is None or self._key != key:
            data = np.ascontiguousarray(bank.detach().cpu().float().numpy())
            m, d = data.shape
            # faiss wants >= 39 training points per cell
            nlist = int(self.nlist or min(4 * np.sqrt(m), m // 39))
            if self.kind == "ivf" and m >= 39 * nlist and nlist >= 2:
                quantizer = faiss.IndexFlatL2(d)
                index = faiss.IndexIVFFlat(quantizer, d, nlist)
                index.cp.seed = self.seed  # deterministic k-means: a reloaded model builds the same cells
                index.train(data)
                index.nprobe = min(self.nprobe, nlist)
                self._quantizer = quantizer  # the IVF index points into it: keep it alive
            else:
                index = faiss.IndexFlatL2(d)
            index.add(data)
            self._index, self._key = index, key
        return self._index

    def search(self, bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 65536):
        """(distances [Q,k] (L2, not squared), indices [Q,k]) of the k nearest bank rows of each query."""
        set_faiss_threads()
        index = self.get(bank)
        k = min(int(k), bank.shape[0])
        q = np.ascontiguousarray(queries.detach().cpu().float().numpy())
        dists, idx = [], []
        for s in range(0, q.shape[0], chunk):
            d, i = index.search(q[s : s + chunk], k)
            dists.append(d)
            idx.append(i)
        d = torch.from_numpy(np.concatenate(dists)).clamp_min_(0).sqrt_()
        return d.to(queries.device), torch.from_numpy(np.concatenate(idx)).to(queries.device)


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
    "FlatL2Index",
    "aligned_features",
    "pairwise_sq_dists",
    "seeded_channel_subset",
    "set_faiss_threads",
    "upsample_maps",
]
