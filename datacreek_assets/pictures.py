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
