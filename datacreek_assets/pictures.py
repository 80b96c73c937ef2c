"""Pictures for asset materializations: PNG bytes and a Markdown embedding."""

from __future__ import annotations

import base64
import io


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def png_markdown(png: bytes, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def bipartite_picture(edges: list[tuple[str, str]], title: str) -> bytes:
    """Chunks on the left, entities on the right, a line per MENTIONS edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    left = sorted({a for a, _ in edges}, key=lambda s: (len(s), s))
    right = sorted({b for _, b in edges})
    fig, ax = plt.subplots(figsize=(8, max(3, 0.25 * max(len(left), len(right)))))
    ly = {n: i / max(1, len(left) - 1) for i, n in enumerate(left)}
    ry = {n: i / max(1, len(right) - 1) for i, n in enumerate(right)}
    for a, b in edges:
        ax.plot([0, 1], [ly[a], ry[b]], color="#9bb", linewidth=0.6, zorder=1)
    ax.scatter([0] * len(left), list(ly.values()), color="#36a", zorder=2, s=30)
    ax.scatter([1] * len(right), list(ry.values()), color="#c63", zorder=2, s=30)
    for n, y in ly.items():
        ax.text(-0.03, y, n, ha="right", va="center", fontsize=7)
    for n, y in ry.items():
        ax.text(1.03, y, n[:40], ha="left", va="center", fontsize=7)
    ax.set_xlim(-0.6, 1.6)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return figure_png(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def persistence_picture(points: list[tuple[int, float, float]], title: str) -> bytes:
    """Persistence diagram: birth vs death per homology dimension; infinite deaths on the top line."""
    plt = _plt()
    finite = [e for _, _, e in points if e != float("inf")] + [b for _, b, _ in points] + [1e-3]
    top = max(finite) * 1.1
    fig, ax = plt.subplots(figsize=(5, 5))
    colours = {0: "#36a", 1: "#c63", 2: "#393"}
    for dim in (0, 1, 2):
        xs = [b for d, b, _ in points if d == dim]
        ys = [e if e != float("inf") else top for d, _, e in points if d == dim]
        if xs:
            ax.scatter(xs, ys, s=10, color=colours[dim], label=f"H{dim} ({len(xs)})", alpha=0.7)
    ax.plot([0, top], [0, top], color="#888", linewidth=0.8)
    ax.axhline(top, color="#aaa", linestyle=":", linewidth=0.8)
    ax.set_xlabel("birth (radius)")
    ax.set_ylabel("death (radius); dotted line = never dies")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    return figure_png(fig)


def scatter_picture(coordinates, labels: list[str], title: str) -> bytes:
    """2-D lens coloured by document (legend for up to 12 documents)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab20", max(1, len(names)))
    for k, name in enumerate(names):
        idx = [i for i, lab in enumerate(labels) if lab == name]
        ax.scatter(coordinates[idx, 0], coordinates[idx, 1], s=12, color=cmap(k), label=name if len(names) <= 12 else None)
    if len(names) <= 12:
        ax.legend(fontsize=6, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return figure_png(fig)


def mapper_picture(node_xy, node_sizes, edges, title: str) -> bytes:
    """Mapper graph drawn at each cluster's mean lens position, node size = members."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    for a, b in edges:
        ax.plot([node_xy[a][0], node_xy[b][0]], [node_xy[a][1], node_xy[b][1]], color="#999", linewidth=0.7, zorder=1)
    ax.scatter([p[0] for p in node_xy], [p[1] for p in node_xy], s=[10 + 6 * n for n in node_sizes],
               color="#c63", alpha=0.8, zorder=2)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return figure_png(fig)


def loss_curve_picture(runs: list[tuple[str, list[tuple[int, float]], list[tuple[int, float]]]], title: str,
                       averaged_val_loss: float | None = None) -> bytes:
    """Train and validation loss per optimizer step, for each ``(label, losses, val_losses)`` (one
    training, or the seeds of an averaged adapter); the averaged adapter's validation loss is a
    dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (label, losses, val_losses) in enumerate(runs):
        prefix = f"{label}: " if label else ""
        shade = 1.0 - 0.45 * i / max(len(runs) - 1, 1)  # later members lighter, same hues
        if losses:
            ax.plot(*zip(*losses), label=f"{prefix}train loss", color=(0.2 * shade, 0.4 * shade, 0.67), linewidth=1)
        if val_losses:
            ax.plot(*zip(*val_losses), label=f"{prefix}validation loss", color=(0.8, 0.4 * shade, 0.2 * shade),
                    marker="o")
    if averaged_val_loss is not None:
        ax.axhline(averaged_val_loss, color="#2a2", linestyle="--", label="averaged adapter: validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("token cross-entropy")
    ax.set_title(title)
    ax.legend(fontsize=7 if len(runs) > 1 else None)
    return figure_png(fig)


def eval_comparison_picture(scores: dict[str, dict[str, float]], title: str) -> bytes:
    """Grouped bars: one group per metric, one bar per model (e.g. base vs tuned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(scores)
    metrics = list(next(iter(scores.values())))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [scores[model][m] for m in metrics], width, label=model)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return figure_png(fig)


def delta_lambda_picture(scores: list[float], tau: float, title: str) -> bytes:
    """The undecided facts' Δλ (log scale), with τ: how much of the graph's structure the queue holds."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    positive = np.array([s for s in scores if s > 0]) if scores else np.array([])
    if len(positive):
        bins = np.logspace(np.log10(positive.min()), np.log10(max(positive.max(), positive.min() * 1.01)), 30)
        ax.hist(positive, bins=bins, color="#36a")
        ax.set_xscale("log")
    if tau > 0:
        ax.axvline(tau, color="#c63", linestyle="--", label=f"τ = {tau:g}")
        ax.legend()
    ax.set_xlabel("Δλ (largest change of the smallest non-trivial eigenvalues)")
    ax.set_ylabel("undecided facts")
    ax.set_title(title, fontsize=9)
    return figure_png(fig)
