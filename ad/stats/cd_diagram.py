"""Critical-difference diagram (Demšar 2006): average ranks on an axis, methods whose ranks differ by less
than the Nemenyi CD joined by a thick bar (no significant difference between them)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from ad.stats.ranks import FriedmanResult


def cliques(ranks: Dict[str, float], cd: float) -> List[List[str]]:
    """Maximal groups of methods (sorted by rank) whose rank span is below `cd`; singletons are dropped."""
    items = sorted(ranks.items(), key=lambda kv: kv[1])
    out: List[List[str]] = []
    for i in range(len(items)):
        j = i
        while j + 1 < len(items) and items[j + 1][1] - items[i][1] < cd:
            j += 1
        group = [name for name, _ in items[i:j + 1]]
        if len(group) > 1 and not any(set(group) <= set(g) for g in out):
            out.append(group)
    return out


def figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, without pyplot: no global backend state, headless, thread-safe."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_cd_diagram(result: FriedmanResult, path: "str | Path", title: str = "") -> Path:
    """Write the diagram of a Friedman result (its average ranks and Nemenyi CD) as a PNG."""
    ranks = result.ranks
    k = len(ranks)
    order: Sequence[str] = sorted(ranks, key=ranks.get)
    groups = cliques(ranks, result.cd)
    half = (k + 1) // 2
    height = 1.6 + 0.28 * max(half, k - half) + 0.18 * len(groups)
    fig = figure(8.0, height)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(-0.45, 1.45)
    ax.set_ylim(height, 0)
    ax.axis("off")
    lo, hi = 1, max(k, 2)

    def x(rank: float) -> float:
        return (rank - lo) / (hi - lo)

    axis_y = 1.05
    ax.plot([0, 1], [axis_y, axis_y], color="black", lw=1)
    for r in range(lo, hi + 1):
        ax.plot([x(r)] * 2, [axis_y - 0.08, axis_y], color="black", lw=1)
        ax.text(x(r), axis_y - 0.12, str(r), ha="center", va="bottom", fontsize=9)
    # the CD as a bar of its length above the axis, left-aligned at rank 1
    ax.plot([x(1), x(1 + result.cd)], [0.62, 0.62], color="black", lw=2)
    ax.text(x(1), 0.56, f"CD = {result.cd:.2f} (Nemenyi, α = {result.alpha:g}, {result.n} categories)",
            ha="left", va="bottom", fontsize=8)
    for i, name in enumerate(order):
        left = i < half
        row = axis_y + 0.35 + 0.28 * (i if left else k - 1 - i) + 0.18 * len(groups)
        xr = x(ranks[name])
        end = -0.02 if left else 1.02
        ax.plot([xr, xr, end], [axis_y, row, row], color="black", lw=0.8)
        ax.text(end + (-0.01 if left else 0.01), row, f"{name} ({ranks[name]:.2f})",
                ha="right" if left else "left", va="center", fontsize=9)
    for g, group in enumerate(groups):
        y = axis_y + 0.15 + 0.18 * g
        ax.plot([x(ranks[group[0]]) - 0.01, x(ranks[group[-1]]) + 0.01], [y, y], color="tab:red", lw=3)
    if title:
        ax.text(0.5, 0.12, title, ha="center", va="top", fontsize=10, weight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
