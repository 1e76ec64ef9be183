"""The PNG figures of a run: one plot per logged series, ``summary.png``, and MAE's
labelled reconstruction grid.

Every plot has integer steps on its x-axis and its unit on the y-axis; an accuracy plot
carries the final evaluation's value (``final_<name>``) as its last point; the collapse
diagnostics carry their reference lines: ``collapse_std`` the healthy ``1/sqrt(d)`` (``d``
the embeddings' width, when known) and the collapsed 0, ``effective_rank`` the collapsed 1.
Figures use matplotlib's object API with the Agg canvas, so pyplot's global state (a
notebook's backend) is never touched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ssl_jax import paths

FINAL_PREFIX = "final_"
PLOT_PREFIXES = ("knn", "linear", "online_linear", "collapse", "effective_rank")
SUMMARY_FILE = "summary.png"

# y-axis labels: what the value is and its unit.
_UNITS = {
    "loss": "loss (the method's objective)",
    "lr": "learning rate",
    "collapse_std": "per-dimension std of l2-normalised embeddings",
    "effective_rank": "effective rank (directions)",
    "online_linear_loss": "cross-entropy (nats)",
}


def unit(name: str) -> str:
    if name in _UNITS:
        return _UNITS[name]
    return "top-1 accuracy (%)" if name.endswith("top1") else name


def series(rows: Sequence[Mapping[str, Any]], name: str) -> list[tuple[int, float]]:
    return [(r["step"], r[name]) for r in rows if name in r and math.isfinite(r[name])]


def plotted_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """loss and lr first, then every diagnostic and evaluation series, in name order; a
    final evaluation's value alone (``final_linear_top1``) is a series too."""
    names = sorted({k.removeprefix(FINAL_PREFIX) for r in rows for k in r if k != "step"})
    wanted = [n for n in ("loss", "lr") if n in names]
    return wanted + [n for n in names if n.startswith(PLOT_PREFIXES)]


def references(name: str, embedding_dim: int | None) -> list[tuple[float, str]]:
    """``[(y, label), ...]`` of the healthy / collapsed levels of a collapse diagnostic."""
    if name == "collapse_std":
        collapsed = [(0.0, "collapsed, 0")]
        if not embedding_dim:  # a rerun that trained no step traced no embeddings
            return collapsed
        return [(1 / math.sqrt(embedding_dim), f"healthy, 1/sqrt({embedding_dim})"), *collapsed]
    if name == "effective_rank":
        return [(1.0, "collapsed, 1")]
    return []


def draw(ax, rows, name: str, embedding_dim: int | None = None) -> None:
    """One series on `ax`: its final evaluation point, its reference lines, integer steps."""
    from matplotlib.ticker import MaxNLocator

    points = series(rows, name)
    if points:
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=name)
    final = series(rows, FINAL_PREFIX + name)
    if final:
        ax.plot(*zip(*final, strict=True), "r*", markersize=12, label=f"final {name}")
    for y, label in references(name, embedding_dim):
        ax.axhline(y, linestyle="--", color="gray", linewidth=1)
        ax.annotate(
            label,
            (0.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="gray",
            va="bottom",
        )
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(unit(name), fontsize=8)
    ax.set_title(name)
    ax.grid(True, alpha=0.3)
    if final:
        ax.legend(fontsize=7)


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    paths.write_bytes(path, buffer.getvalue())
    return path


def plot_series(rows, name: str, out_dir: str, embedding_dim: int | None = None) -> str:
    fig = _figure((6, 4))
    draw(fig.add_subplot(), rows, name, embedding_dim)
    return _save(fig, paths.join(out_dir, name.replace("/", "_") + ".png"))


def summary_panels(rows) -> list[list[str]]:
    """The series of each panel of summary.png: loss, lr, the accuracies, then the
    collapse diagnostics, each left out when the run did not log it."""
    names = set(plotted_names(rows))
    accuracy = [
        n
        for n in ("knn_top1", "linear_top1", "online_linear_test_top1", "online_linear_top1")
        if n in names
    ]
    panels = [["loss"], ["lr"], accuracy, ["collapse_std"], ["effective_rank"]]
    return [[n for n in panel if n in names] for panel in panels if set(panel) & names]


def plot_summary(rows, out_dir: str, embedding_dim: int | None = None) -> str | None:
    """One figure of the run: a panel per ``summary_panels`` entry."""
    panels = summary_panels(rows)
    if not panels:
        return None
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig = _figure((5 * columns, 3.6 * lines))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(lines, columns, i + 1)
        for name in panel:
            draw(ax, rows, name, embedding_dim)
        if len(panel) > 1:
            ax.set_title(", ".join(panel), fontsize=9)
            ax.legend(fontsize=7)
    return _save(fig, paths.join(out_dir, SUMMARY_FILE))


def labelled_grid(grid, columns: Sequence[str], image_px: int, path: str, title: str) -> str:
    """A uint8 image grid ``[rows * S, len(columns) * S, 3]`` with a title and one label
    per column, as the MAE notebook draws it."""
    rows = grid.shape[0] // image_px
    scale = max(1.0, 96 / image_px)  # small images (16-px digits) drawn bigger
    width = max(4.0, len(columns) * image_px * scale / 72)
    fig = _figure((width, rows * image_px * scale / 72 + 0.8))
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([(i + 0.5) * image_px for i in range(len(columns))])
    ax.set_xticklabels(columns, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
