"""Attention pictures: token-by-token heat maps of one head, or of every head of a layer; and bar charts of
token attributions (`npbert explain --out`).

Plotting is the optional extra `npbert[viz]` (matplotlib). Figures are built with matplotlib's
object API on the Agg canvas, never pyplot, so nothing depends on a display or on global state.

Size rule (what tests/test_viz.py checks): each heat map is a square panel of
`panel_inches(n_tokens)` inches; one head is one panel plus MARGIN inches of room for labels and the
colour bar; a layer is a grid of at most 4 columns, each cell a panel plus MARGIN. Pixels are inches x dpi.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

MARGIN = 1.5  # inches around each panel: token labels, title, colour bar
MAX_COLUMNS = 4


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("attention pictures need matplotlib: pip install -e '.[viz]' in the npbert clone") from None
    return Figure, FigureCanvasAgg


def panel_inches(n_tokens: int, many: bool = False) -> float:
    """Side of one heat map: about a fifth of an inch per token, within readable bounds."""
    return float(np.clip(0.2 * n_tokens, 2.5, 8.0 if many else 16.0))


def grid_shape(n_heads: int) -> tuple[int, int]:
    cols = min(n_heads, MAX_COLUMNS)
    return math.ceil(n_heads / cols), cols


def figure_inches(n_tokens: int, n_heads: int = 1) -> tuple[float, float]:
    rows, cols = grid_shape(n_heads)
    side = panel_inches(n_tokens, many=n_heads > 1) + MARGIN
    return cols * side, rows * side


def attention_figure(probs: np.ndarray, tokens: list[str], title: str = "", heads: list[int] | None = None):
    """A matplotlib Figure: probs [S, S] (one head) or [H, S, S] (a grid), rows = queries (attending
    tokens), columns = keys (attended tokens), both labelled with `tokens`."""
    Figure, FigureCanvasAgg = _matplotlib()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3 or probs.shape[1] != probs.shape[2] or probs.shape[1] != len(tokens):
        raise ValueError(
            f"expected attention [S, S] or [H, S, S] with S = {len(tokens)} tokens, found {list(probs.shape)}"
        )
    n_heads, S = probs.shape[0], probs.shape[1]
    heads = list(range(n_heads)) if heads is None else heads
    rows, cols = grid_shape(n_heads)
    fig = Figure(figsize=figure_inches(S, n_heads), layout="constrained")
    FigureCanvasAgg(fig)
    font = float(np.clip(panel_inches(S, n_heads > 1) * 72 / S * 0.7, 3, 9))
    for n in range(n_heads):
        ax = fig.add_subplot(rows, cols, n + 1)
        # One colour scale for the whole figure, from 0 to its largest probability, so heads compare.
        image = ax.imshow(probs[n], cmap="viridis", vmin=0.0, vmax=float(probs.max()), interpolation="nearest")
        ax.set_xticks(range(S), tokens, rotation=90, fontsize=font)
        ax.set_yticks(range(S), tokens, fontsize=font)
        if n_heads > 1:
            ax.set_title(f"head {heads[n]}", fontsize=9)
        else:
            ax.set_xlabel("attended token (key)", fontsize=8)
            ax.set_ylabel("attending token (query)", fontsize=8)
    fig.colorbar(image, ax=fig.axes, shrink=0.6, label="attention probability")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_png(fig, path: str | Path, dpi: int = 100, description: str = "") -> Path:
    """Write the figure as PNG at its fixed size (no tight cropping, so the size rule holds)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", metadata={"Software": "npbert", "Description": description})
    return path


def attribution_figure(panels: list[tuple[str, list[str], np.ndarray, np.ndarray]], title: str = ""):
    """A matplotlib Figure of token attributions: per panel (label, tokens, start scores, end scores), two
    bar charts over the tokens, one for the answer's start and one for its end (positive bars orange, negative
    blue), each panel `panel_inches(n_tokens)` wide (one per window of a long context)."""
    Figure, FigureCanvasAgg = _matplotlib()
    width = max(panel_inches(len(tokens)) for _, tokens, _, _ in panels) + MARGIN
    fig = Figure(figsize=(width, 2 * len(panels) * 2.2 + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 * len(panels), 1, squeeze=False)[:, 0]
    for n, (label, tokens, start, end) in enumerate(panels):
        S = len(tokens)
        font = float(np.clip(panel_inches(S) * 72 / S * 0.7, 3, 9))
        for ax, name, scores in ((axes[2 * n], "start", start), (axes[2 * n + 1], "end", end)):
            scores = np.asarray(scores, dtype=np.float64)
            if scores.shape != (S,):
                raise ValueError(f"expected {S} {name} scores (one per token), found {list(scores.shape)}")
            ax.bar(range(S), scores, color=np.where(scores >= 0, "tab:orange", "tab:blue"))
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_xlim(-0.5, S - 0.5)
            ax.set_xticks(range(S), tokens, rotation=90, fontsize=font)
            ax.set_ylabel(f"{name} attribution", fontsize=8)
            ax.set_title(f"{label}: answer {name}" if label else f"answer {name}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
