"""Pieces shared by the feature-memory models (PatchCore, PaDiM, SPADE, DFM, AnomalyDINO): k-NN search over a
memory bank and seeded channel subsets."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ad.models._maps import full_precision


def set_faiss_threads() -> None:
    import faiss

    # faiss' OpenMP pool otherwise takes every core regardless of torch's thread budget
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))


class KnnIndex:
    """L2 k-nearest neighbours over a fixed bank, built lazily and rebuilt whenever the bank changes.

    kinds:
    - `"exact"` (default): exact search that skips most of the bank (`_CellPrunedKnn`); same neighbours as
      brute force up to float32 rounding, ~6x faster on PatchCore banks.
    - `"flat"`: brute force (faiss IndexFlatL2), every query against every bank row.
    - `"ivf"`: approximate (faiss IndexIVFFlat) — `nlist` cells (default min(4·√M, M/39)), only the `nprobe`
      nearest scanned per query; may miss the true nearest neighbour.

    Banks too small to split into cells use brute force. The index is derived data: it is never saved; the
    bank lives in the model's buffer.
    """

    KINDS = ("exact", "flat", "ivf")

    def __init__(self, kind: str = "exact", nprobe: int = 8, nlist: Optional[int] = None, seed: int = 0) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown nearest-neighbour index kind {kind!r} ({' | '.join(self.KINDS)})")
        self.kind, self.nprobe, self.nlist, self.seed = kind, int(nprobe), nlist, int(seed)
        self._key = None
        self._index = None

    def _build(self, bank: torch.Tensor):
        import faiss

        m, d = bank.shape
        if self.kind == "exact":
            nlist = int(self.nlist or min(np.sqrt(m), m // 39))
            if nlist >= 2:
                return _CellPrunedKnn(bank, nlist, self.seed)
        if bank.is_cuda and self.kind != "ivf":  # faiss here is the CPU build: brute force stays on the GPU
            return _TorchFlat(bank)
        data = np.ascontiguousarray(bank.detach().cpu().float().numpy())
        nlist = int(self.nlist or min(4 * np.sqrt(m), m // 39))  # faiss wants >= 39 training points per cell
        if self.kind == "ivf" and nlist >= 2 and m >= 39 * nlist:
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist)
            index.cp.seed = self.seed  # deterministic k-means: a reloaded model builds the same cells
            index.train(data)
            index.nprobe = min(self.nprobe, nlist)
            self._quantizer = quantizer  # the IVF index points into it: keep it alive
        else:
            index = faiss.IndexFlatL2(d)
        index.add(data)
        return index

    def search(self, bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 32768):
        """(distances [Q,k] (L2, not squared), indices [Q,k]) of the k nearest bank rows of each query."""
        with full_precision(queries):
            return self._search(bank, queries.float(), k, chunk)

    def _search(self, bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int):
        set_faiss_threads()
        key = (bank.data_ptr(), tuple(bank.shape), bank._version)
        if self._index is None or self._key != key:
            self._index, self._key = self._build(bank), key
        k = min(int(k), bank.shape[0])
        if isinstance(self._index, _TorchFlat):
            return self._index.search(queries, k)
        if isinstance(self._index, _CellPrunedKnn):
            # the search holds a few [chunk, cells] arrays: keep each near 8M entries however many cells
            chunk = max(256, min(chunk, (1 << 23) // self._index.centres.shape[0]))
            parts = [self._index.search(queries[s : s + chunk], k) for s in range(0, queries.shape[0], chunk)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        q = np.ascontiguousarray(queries.detach().cpu().float().numpy())
        dists, idx = [], []
        for s in range(0, q.shape[0], chunk):
            d, i = self._index.search(q[s : s + chunk], k)
            dists.append(d)
            idx.append(i)
        d = torch.from_numpy(np.concatenate(dists)).clamp_min_(0).sqrt_()
        return d.to(queries.device), torch.from_numpy(np.concatenate(idx)).to(queries.device)


class _TorchFlat:
    """Brute-force k-NN in torch on the bank's device (the GPU path of `flat`, of `exact` for tiny banks, and
    SPADE's pixel search): Gram-trick GEMMs, distances of the chosen neighbours recomputed directly.

    k > 1: query chunks sized to keep [chunk, M] near 2^26 entries, then top-k. k = 1: the bank is scanned in
    tiles of `BANK_TILE` rows whose [chunk, tile] block stays in cache and is reduced at once (running min) —
    for SPADE's many small searches (4,096 queries against ~41k rows of 24 channels) ~3x faster than one big
    block or a faiss flat index built per search."""

    BANK_TILE = 512
    QUERY_CHUNK = 4096

    def __init__(self, bank: torch.Tensor) -> None:
        self.x = bank.detach().float().contiguous()
        self.x_sq = (self.x * self.x).sum(1)

    def search(self, queries: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        q_all = queries.detach().float().to(self.x.device)
        chunk = self.QUERY_CHUNK if k == 1 else max(1, (1 << 26) // max(1, self.x.shape[0]))
        dists, idx = [], []
        for s in range(0, q_all.shape[0], chunk):
            q = q_all[s : s + chunk]
            i = self._nearest(q) if k == 1 else \
                torch.addmm(self.x_sq, q, self.x.T, alpha=-2).topk(k, dim=1, largest=False).indices
            dists.append(torch.linalg.vector_norm(self.x[i] - q.unsqueeze(1), dim=-1))
            idx.append(i)
        return torch.cat(dists).to(queries.device), torch.cat(idx).to(queries.device)

    def _nearest(self, q: torch.Tensor) -> torch.Tensor:
        """[Q, 1] index of each query's nearest bank row, scanning the bank tile by tile."""
        best = torch.full((q.shape[0],), float("inf"), device=q.device)
        best_idx = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        for h in range(0, self.x.shape[0], self.BANK_TILE):
            block = torch.addmm(self.x_sq[h:h + self.BANK_TILE], q, self.x[h:h + self.BANK_TILE].T, alpha=-2.0)
            value, i = block.min(1)
            closer = value < best
            best = torch.where(closer, value, best)
            best_idx = torch.where(closer, i + h, best_idx)
        return best_idx.unsqueeze(1)


class _CellPrunedKnn:
    """Exact k-NN that scans only the parts of the bank that can hold a query's neighbours.

    The bank is split into k-means cells, each with its centre c and radius r (farthest member). A query q
    is first matched inside its `PROBE` nearest cells, which bounds its k-th neighbour distance by u; by the
    triangle inequality no member of a cell with ‖q − c‖ − r > u can beat that, so only the other cells are
    scanned — ~3-5 % of a PatchCore bank on real images. Scans go cell by cell (every query that needs a cell
    at once), so the distance work is a few hundred GEMMs rather than per-pair loops. Bounds are widened by a
    bound on float32 rounding so the pruning never drops a cell that could hold a neighbour.

    Pruning only pays on structured features. A query whose bound leaves more than `BRUTE_SHARE` of the bank
    to scan (outliers; features without cluster structure, e.g. on some synthetic textures ~60 % of the bank)
    is searched by brute force (faiss IndexFlatL2), which is cheaper per row than gathering it cell by cell,
    so the search is never much slower than brute force. Runs on the bank's device; brute force on the CPU.
    """

    PROBE = 2  # cells scanned for the first bound (1-2 measured fastest)
    BRUTE_SHARE = 0.4  # cell scans cost ~3x brute force per bank row (measured): switch over above this

    def __init__(self, bank: torch.Tensor, nlist: int, seed: int = 0) -> None:
        import faiss

        bank = bank.detach().float()
        # centring shrinks the norms, and with them the rounding of the ‖a‖² + ‖b‖² − 2a·b distances
        self.mean = bank.mean(0)
        x = (bank - self.mean).contiguous()
        x_np = np.ascontiguousarray(x.cpu().numpy())
        kmeans = faiss.Kmeans(x.shape[1], nlist, niter=5, seed=seed, verbose=False)  # rough cells suffice
        kmeans.train(x_np)
        cell = torch.from_numpy(kmeans.index.assign(x_np, 1)[:, 0].astype(np.int64)).to(x.device)
        centres = torch.from_numpy(kmeans.centroids).to(x.device)
        self.order = cell.argsort(stable=True)  # bank rows grouped by cell; self.order[j] = original row
        self.x = x[self.order].contiguous()
        self.x_sq = (self.x * self.x).sum(1)
        self.sizes = torch.bincount(cell, minlength=nlist).float()
        self.bounds = [0] + self.sizes.long().cumsum(0).tolist()
        self._flat = KnnIndex("flat")
        dist = (x.double() - centres.double()[cell]).norm(dim=1)
        radius = torch.zeros(nlist, dtype=torch.float64, device=x.device).scatter_reduce_(0, cell, dist, "amax")
        self.centres, self.radii = centres, (radius * (1 + 1e-6)).float()
        self.c_sq = (centres * centres).sum(1)
        # relative rounding bound of a float32 Gram-trick squared distance (d·u with a 6x margin)
        self.eps = 4e-7 * x.shape[1]
        self.max_x_sq = float(self.x_sq.max())

    def search(self, queries: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        q = (queries.detach().float().to(self.x.device) - self.mean).contiguous()
        q_sq = (q * q).sum(1)
        cell_sq = torch.addmm(q_sq.unsqueeze(1) + self.c_sq, q, self.centres.T, alpha=-2).clamp_min_(0)
        best_d = torch.full((q.shape[0], k), float("inf"), device=q.device)
        best_i = torch.zeros((q.shape[0], k), dtype=torch.long, device=q.device)
        near = cell_sq.topk(min(self.PROBE, cell_sq.shape[1]), dim=1, largest=False).indices
        first = torch.zeros_like(cell_sq, dtype=torch.bool).scatter_(1, near, True)
        self._scan(q, q_sq, first, best_d, best_i, k)
        upper = (best_d[:, k - 1] + self.eps * (q_sq + self.max_x_sq)).sqrt()
        lower = (cell_sq - self.eps * (q_sq.unsqueeze(1) + self.c_sq)).clamp_min_(0).sqrt_() - self.radii
        todo = (lower <= upper.unsqueeze(1)) & ~first
        brute = (todo.float() @ self.sizes) > self.BRUTE_SHARE * self.x.shape[0]
        if brute.any():
            todo[brute] = False
            rows = brute.nonzero().squeeze(1)
            d, i = self._brute_force(q.index_select(0, rows), k)
            best_d[rows], best_i[rows] = d, i
        self._scan(q, q_sq, todo, best_d, best_i, k)
        # report distances computed directly (not through the Gram trick): no cancellation error
        dist = torch.linalg.vector_norm(self.x[best_i] - q.unsqueeze(1), dim=-1)
        return dist.to(queries.device), self.order[best_i].to(queries.device)

    def _brute_force(self, q: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(squared distances, sorted-bank rows) [n, k] of the k nearest rows of the whole bank."""
        d, i = self._flat.search(self.x, q, k)  # built on first use, then kept (self.x never changes)
        return d.square(), i

    def _scan(self, q, q_sq, todo, best_d, best_i, k) -> None:
        """Update the running k best (squared distance, sorted-bank row) with every (query, cell) pair in
        `todo` [Q, cells], one cell at a time."""
        todo = todo.T.contiguous()
        for j in range(todo.shape[0]):
            lo, hi = self.bounds[j], self.bounds[j + 1]
            rows = todo[j].nonzero().squeeze(1)
            if hi == lo or rows.numel() == 0:
                continue
            # ‖x‖² − 2q·x: the squared distance less ‖q‖², which is constant per query
            d = torch.addmm(self.x_sq[lo:hi], q.index_select(0, rows), self.x[lo:hi].T, alpha=-2)
            if k == 1:
                v, a = d.min(1)
                v += q_sq[rows]
                better = v < best_d[rows, 0]
                rows = rows[better]
                best_d[rows, 0] = v[better]
                best_i[rows, 0] = a[better] + lo
            else:
                v, a = d.topk(min(k, hi - lo), dim=1, largest=False)
                v += q_sq[rows].unsqueeze(1)
                v, pick = torch.cat([best_d[rows], v], 1).topk(k, dim=1, largest=False)
                best_d[rows] = v
                best_i[rows] = torch.cat([best_i[rows], a + lo], 1).gather(1, pick)


def pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [A,B] via the Gram trick (no [A,B,d] intermediate)."""
    a = a.float()
    b = b.float()
    d = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)
    return d.clamp_min_(0)


def nearest_distance(bank: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """L2 distance [Q] of each query to its nearest bank row, by torch brute force on the bank's device."""
    return _TorchFlat(bank).search(queries, 1)[0][:, 0]


def seeded_channel_subset(total: int, keep: int, seed: int) -> torch.Tensor:
    """Sorted random subset of `keep` channel indices out of `total` (PaDiM's random dimension reduction)."""
    keep = min(int(keep), total)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=g)[:keep].sort().values


__all__ = [
    "KnnIndex",
    "nearest_distance",
    "pairwise_sq_dists",
    "seeded_channel_subset",
    "set_faiss_threads",
]
