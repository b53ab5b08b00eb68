"""Greedy k-center coreset subsampling (PatchCore, Roth et al. 2022, Alg. 1) that runs in seconds on CPU.

The paper selects memory-bank patches by greedy farthest-point traversal on randomly projected features
(Johnson-Lindenstrauss, d' = 128). Done literally, every one of the k iterations updates the min-distance of
all N points: O(N·k·d'), i.e. ~6e11 multiply-adds for one MVTec category (N≈2e5, k≈2e4) — half an hour on
two cores. Two observations make it seconds without an N×N matrix and without losing the greedy behaviour:

1. A new center only lowers the min-distance of points *near* it. We split the projected points into
   `2^L` equal-size cells with a balanced binary tree (each node split at the median of its points'
   projection onto the node's approximate diameter direction), so cells are compact.
2. Greedy traversal is then run inside every cell at once (one batched matmul per step over all cells),
   each cell recording its picks with their min-distance at pick time (non-increasing within a cell).
   The global greedy always takes the largest remaining min-distance; taking the k largest recorded picks
   over all cells reproduces that order, except that a center does not lower distances across a cell
   border. Steps continue until no cell can still produce a pick larger than the current k-th largest.

Cost: O(N·d'·(L + steps)) with steps ≈ k/2^L, i.e. a few dozen passes over the projected features. Memory:
the projected features (N·d' floats) plus O(N) bookkeeping. `tests/test_memory_models.py` checks that the
covering radius stays within a small factor of the exact greedy's.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def random_projection(
    features: "torch.Tensor | Sequence[torch.Tensor]", dim: int, seed: int = 0, chunk: int = 65536,
    device: "torch.device | str | None" = None,
) -> torch.Tensor:
    """Gaussian Johnson-Lindenstrauss projection of the rows of `features` (one tensor or a list of chunks)
    to `dim` dimensions, written chunk by chunk into one float32 tensor on `device` (default: the features'),
    identity when already that small. The projection matrix is drawn on the CPU: the same on every device."""
    chunks = [features] if isinstance(features, torch.Tensor) else list(features)
    device = torch.device(device) if device is not None else chunks[0].device
    n, d = sum(c.shape[0] for c in chunks), chunks[0].shape[1]
    if dim <= 0 or dim >= d:
        return (chunks[0].float() if len(chunks) == 1 else torch.cat([c.float() for c in chunks])).to(device)
    g = torch.Generator().manual_seed(seed)
    proj = (torch.randn(d, dim, generator=g) / math.sqrt(dim)).to(device)
    out = torch.empty(n, dim, device=device)
    row = 0
    for c in chunks:
        for s in range(0, c.shape[0], chunk):
            part = c[s : s + chunk].to(device, non_blocking=True)
            out[row : row + part.shape[0]] = part.float() @ proj
            row += part.shape[0]
    return out


def _cells_t(z: torch.Tensor, rows: torch.Tensor, cells: int, chunk_elems: int = 1 << 23) -> torch.Tensor:
    """Rows of `z` gathered into cells, transposed: [cells, d, m]; filled a few cells at a time so the only
    full-size allocation is the result."""
    m, d = rows.numel() // cells, z.shape[1]
    out = torch.empty(cells, d, m, device=z.device)
    step = max(1, chunk_elems // (m * d))
    for c0 in range(0, cells, step):
        c1 = min(cells, c0 + step)
        out[c0:c1] = z[rows[c0 * m : c1 * m]].view(c1 - c0, m, d).transpose(1, 2)
    return out


def _balanced_cells(sketch: torch.Tensor, levels: int, gen: torch.Generator) -> torch.Tensor:
    """Order [C·m] of (padded) point indices such that consecutive runs of m points form compact cells.

    Works on a low-dimensional sketch of the points: the splits only need to be roughly compact, and gathering
    the full projected features at every tree level would dominate the run time.
    """
    n_pad = sketch.shape[0]
    sq_all = (sketch * sketch).sum(1)
    order = torch.arange(n_pad, device=sketch.device)
    for level in range(levels):
        nodes = 2 ** level
        pts = sketch.index_select(0, order).view(nodes, n_pad // nodes, -1)  # index_select: ~2x faster than []
        sq = sq_all.index_select(0, order).view(nodes, -1)
        rows = torch.arange(nodes, device=sketch.device)

        def dist_to(c: torch.Tensor) -> torch.Tensor:  # squared distances up to a per-node constant
            return sq - 2 * torch.bmm(pts, c.unsqueeze(-1)).squeeze(-1)

        # approximate diameter direction: a -> farthest from the node mean, b -> farthest from a
        a = pts[rows, dist_to(pts.mean(1)).argmax(1)]
        b = pts[rows, dist_to(a).argmax(1)]
        proj = torch.bmm(pts, (b - a).unsqueeze(-1)).squeeze(-1)
        # tiny random jitter breaks ties (duplicates) so the median split stays balanced and deterministic
        proj += 1e-6 * proj.abs().amax(1, keepdim=True).clamp_min(1e-12) * torch.rand(proj.shape, generator=gen).to(proj.device)
        order = order.view(nodes, -1).gather(1, proj.argsort(dim=1)).reshape(-1)
    return order


def greedy_coreset(
    features: "torch.Tensor | Sequence[torch.Tensor]",
    n_select: int,
    projection_dim: int = 128,
    cell_size: int = 256,
    seed: int = 0,
    sketch_dim: int = 16,
    device: "torch.device | str | None" = None,
) -> torch.Tensor:
    """Indices (into the rows of `features`, one tensor or a list of chunks taken in order) of an
    approximate greedy k-center coreset of size `n_select`.

    `projection_dim`: JL projection width for the distance computations (paper: 128; <=0 = none).
    `cell_size` bounds the points per cell: larger = closer to the exact global greedy, slower.
    `sketch_dim` leading projected coordinates (themselves a JL projection) drive the cell partition.
    `device`: where the projection and traversal run (default: the features'; PatchCore passes its bank's
    device, so features collected on the CPU are reduced on the GPU). Indices are returned on the CPU; random
    draws come from a CPU generator, so only float rounding differs between devices.
    """
    chunks = [features] if isinstance(features, torch.Tensor) else list(features)
    n = sum(c.shape[0] for c in chunks)
    n_select = int(n_select)
    if n_select >= n:
        return torch.arange(n)
    if n_select <= 0:
        raise ValueError("n_select must be positive")
    # one big GEMM (uses all intra-op threads); handed over in a list so the traversal can free it
    holder = [random_projection(chunks, projection_dim, seed, device=device)]
    del chunks
    # The traversal runs on the caller's intra-op thread budget (trainer.num_threads; sweeps split the cores
    # between jobs): on an otherwise idle 2-core machine two threads take 0.96 s where one takes 1.64 s.
    return _traverse(holder, n, n_select, cell_size, seed, sketch_dim)


# One function on purpose (~60 lines): the sketch `z` is popped from `holder` so its only reference dies as
# soon as the cells are built, which bounds peak memory on million-patch banks; splitting it would keep it alive.
def _traverse(holder: list, n: int, n_select: int, cell_size: int, seed: int, sketch_dim: int) -> torch.Tensor:
    z = holder.pop()
    dev = z.device
    gen = torch.Generator().manual_seed(seed)  # CPU draws, moved: the same choices on every device

    levels = max(0, int(math.floor(math.log2(max(1.0, n / max(cell_size, 1))))))
    while levels > 0 and 2 ** levels > n_select:
        levels -= 1  # every cell receives at least one center
    cells = 2 ** levels
    m = -(-n // cells)
    n_pad = cells * m
    # Padding rows duplicate random real points so the tree splits stay meaningful; they are never picked
    # and need no covering.
    pad_src = torch.randint(0, n, (n_pad - n,), generator=gen)
    src = torch.cat([torch.arange(n), pad_src]).to(dev)
    order = _balanced_cells(z[src, :sketch_dim].contiguous(), levels, gen) if levels else torch.arange(n_pad, device=dev)
    point_id = src[order].view(cells, m)  # original index of every cell slot
    valid = (order < n).view(cells, m)
    pts = _cells_t(z, point_id.reshape(-1), cells)
    del z  # from here on only the cell layout is used
    sq = (pts * pts).sum(1)
    rows = torch.arange(cells, device=dev)

    def offsets_to(centers: torch.Tensor) -> torch.Tensor:
        """|c|² − 2·x·c for each cell's points and its center (the squared distance minus |x|²), one fused op."""
        return torch.baddbmm((centers * centers).sum(1).view(-1, 1, 1), centers.unsqueeze(1), pts, alpha=-2.0).squeeze(1)

    # We track off = min over chosen centers of (|c|² − 2·x·c); a point's squared distance to its nearest
    # center is sq + off. Padding slots get −inf so they are never picked.
    # First pick per cell: the point farthest from the cell mean (an extreme point, like greedy's 2nd pick).
    first = (sq + offsets_to(pts.mean(2))).masked_fill_(~valid, -1.0).argmax(1)
    picks_val = [torch.full((cells,), float("inf"), device=dev)]  # every cell keeps its first center
    picks_id = [point_id[rows, first]]
    off = offsets_to(pts[rows, :, first]).masked_fill_(~valid, float("-inf"))
    # Squared distances via the Gram trick carry round-off of order 1e-7·|x|²: anything below this counts as
    # already covered (a chosen center, exact duplicates of it).
    tol = 1e-6 * float(sq.max())

    total, step, kth = cells, 0, tol
    while True:
        vals, idx = (sq + off).max(1)
        # The k-th largest value recorded so far: a cell whose best remaining pick is not above it can no longer
        # enter the top-k selection, now or later (the threshold only grows, a cell's values only shrink).
        # Refreshed every few steps: a stale, lower threshold only keeps cells a little longer.
        if total >= n_select and step % 4 == 0:
            kth = max(float(torch.cat(picks_val).kthvalue(total - n_select + 1).values), tol)
        keep = vals > kth
        n_keep = int(keep.sum())
        if n_keep == 0:
            break
        if n_keep < 0.75 * keep.numel():  # compact finished cells away (a copy, so not at every step)
            pts, sq, off, point_id = pts[keep], sq[keep], off[keep], point_id[keep]
            vals, idx, keep = vals[keep], idx[keep], keep[keep]
            rows = torch.arange(pts.shape[0], device=dev)
        picks_val.append(vals[keep])
        picks_id.append(point_id[rows, idx][keep])
        total += n_keep
        step += 1
        torch.minimum(off, offsets_to(pts[rows, :, idx]), out=off)

    all_val = torch.cat(picks_val)
    all_id = torch.cat(picks_id)
    top = all_val.topk(min(n_select, all_val.numel())).indices
    return all_id[top].sort().values.cpu()


def exact_greedy_coreset(features: torch.Tensor, n_select: int, start: int = 0) -> torch.Tensor:
    """Reference greedy k-center (farthest-point traversal) without projection or cells: O(N·k·d)."""
    x = features.float()
    sq = (x * x).sum(1)
    chosen = [start]
    mind = (sq - 2 * x @ x[start] + sq[start]).clamp_min(0)
    for _ in range(n_select - 1):
        i = int(mind.argmax())
        chosen.append(i)
        torch.minimum(mind, (sq - 2 * x @ x[i] + sq[i]).clamp_min(0), out=mind)
    return torch.tensor(chosen)


def covering_radius(points: torch.Tensor, centers: torch.Tensor, chunk: int = 8192) -> float:
    """max over points of the distance to the nearest center."""
    c = centers.float()
    csq = (c * c).sum(1)
    worst = 0.0
    for s in range(0, points.shape[0], chunk):
        p = points[s : s + chunk].float()
        d2 = (p * p).sum(1, keepdim=True) - 2 * p @ c.T + csq
        worst = max(worst, float(d2.min(1).values.clamp_min(0).max()))
    return math.sqrt(worst)
