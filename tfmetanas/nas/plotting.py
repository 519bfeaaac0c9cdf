"""Figures of METANAS architectures: cell diagrams and pruned-size histograms.

Reproduces the kinds of figure in Elsken et al., METANAS (CVPR 2020,
arXiv:1912.09744): Fig. 4 (task-specific normal / reduction cells after hard
pruning) and Fig. 5 (histogram of the parameter counts of the pruned task
networks). Pure matplotlib (Agg backend), no graphviz.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_INPUT_COLOR = "#a6cee3"
_NODE_COLOR = "#fdbf6f"
_OUTPUT_COLOR = "#b2df8a"
_EDGE_COLORS = ("#1f78b4", "#e31a1c", "#33a02c", "#6a3d9a", "#ff7f00", "#b15928", "#666666")


def _node_positions(num_nodes):
    """Inputs on the left, intermediate nodes on a zig-zag, output on the right."""
    pos = {0: (0.0, 1.6), 1: (0.0, -1.6)}
    for j in range(num_nodes):
        pos[j + 2] = (2.6 * (j + 1), 1.0 if j % 2 == 0 else -1.0)
    pos["out"] = (2.6 * (num_nodes + 1), 0.0)
    return pos


def _node_label(i):
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(i, str(i - 2))


def draw_cell(ax, cell, title=""):
    """Draws one `genotype.Cell` on a matplotlib axis.

    Edges are labelled with their kept ops and mixing weights; each node is
    annotated with its kept input subsets and their weights.

    Args:
      ax: a matplotlib ``Axes``.
      cell: a `genotype.Cell`.
      title: axis title.

    References: Elsken et al., METANAS, arXiv:1912.09744, Fig. 4.
    """
    num_nodes = len(cell.nodes)
    pos = _node_positions(num_nodes)
    ax.set_title(title, fontsize=11, fontweight="bold")
    ax.set_aspect("equal")
    ax.axis("off")

    color_index, subset_lines = {}, []
    for j, node in enumerate(cell.nodes):
        dst = pos[j + 2]
        for edge in node.edges:
            src = pos[edge.input]
            color = _EDGE_COLORS[len(color_index) % len(_EDGE_COLORS)]
            color_index[(j, edge.input)] = color
            # Curve long edges so they do not run through the nodes in between.
            rad = 0.0 if abs(dst[0] - src[0]) <= 2.7 else 0.3 * (1 if src[1] >= dst[1] else -1)
            ax.annotate(
                "",
                xy=dst,
                xytext=src,
                arrowprops=dict(
                    arrowstyle="-|>",
                    color=color,
                    lw=1.4,
                    shrinkA=16,
                    shrinkB=16,
                    connectionstyle=f"arc3,rad={rad}",
                ),
            )
            label = "\n".join(f"{op} {w:.2f}" for op, w in edge.ops)
            # Label at the middle of the arc: matplotlib's arc3 control point is
            # midpoint + rad * (dy, -dx), and the curve passes half way to it.
            dx, dy = dst[0] - src[0], dst[1] - src[1]
            mx = (src[0] + dst[0]) / 2 + 0.5 * rad * dy
            my = (src[1] + dst[1]) / 2 - 0.5 * rad * dx
            ax.text(
                mx,
                my,
                label,
                fontsize=6.5,
                color=color,
                ha="center",
                va="center",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=color, lw=0.5, alpha=0.9),
                zorder=4,
            )
        subset_lines.append(
            f"node {j}: "
            + ", ".join(
                "{" + ",".join(_node_label(i) for i in s) + f"}} {w:.2f}" for s, w in node.subsets
            )
        )
    for j in range(num_nodes):
        ax.annotate(
            "",
            xy=pos["out"],
            xytext=pos[j + 2],
            arrowprops=dict(
                arrowstyle="-|>", color="#999", lw=0.8, ls="--", shrinkA=16, shrinkB=16
            ),
        )
    for key, (x, y) in pos.items():
        if key == "out":
            text, color = "c_{k}", _OUTPUT_COLOR
        else:
            text, color = _node_label(key), _INPUT_COLOR if key < 2 else _NODE_COLOR
        ax.text(
            x,
            y,
            text,
            fontsize=9,
            ha="center",
            va="center",
            bbox=dict(boxstyle="round,pad=0.35", fc=color, ec="black", lw=0.8),
            zorder=5,
        )
    ax.text(
        -0.6,
        -2.6,
        "kept input subsets:\n" + "\n".join(subset_lines),
        fontsize=6.5,
        ha="left",
        va="top",
        color="#333",
    )
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(-2.6 - 0.3 * (num_nodes + 1), 2.4)


def plot_genotype(genotype, path, title=None):
    """Writes a PNG with the normal and the reduction cell of a genotype.

    Args:
      genotype: a `genotype.Genotype`.
      path: output PNG path.
      title: optional figure title (defaults to strategy and temperature).

    Returns:
      `path`.

    References: Elsken et al., METANAS, arXiv:1912.09744, Fig. 4.
    """
    num_nodes = len(genotype.normal.nodes)
    width = 2.4 * (num_nodes + 2)
    fig, axes = plt.subplots(2, 1, figsize=(width, 10.0))
    draw_cell(axes[0], genotype.normal, "normal cell")
    draw_cell(axes[1], genotype.reduce, "reduction cell")
    fig.suptitle(
        title
        or f"strategy={genotype.strategy}  T={genotype.temperature:g}  "
        f"threshold={genotype.threshold:g}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_size_histogram(param_counts, path, bins=20, title="Pruned task networks"):
    """Writes a PNG histogram of pruned parameter counts (one per task).

    Args:
      param_counts: iterable of ints (e.g. `darts.count_params` per task).
      path: output PNG path.
      bins: number of histogram bins.
      title: figure title.

    Returns:
      `path`.

    References: Elsken et al., METANAS, arXiv:1912.09744, Fig. 5.
    """
    counts = [int(c) for c in param_counts]
    if not counts:
        raise ValueError("plot_size_histogram needs at least one parameter count.")
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    lo, hi = min(counts), max(counts)
    ax.hist(counts, bins=bins if hi > lo else 1, color="#1f78b4", edgecolor="white")
    ax.set_xlabel("parameters of the pruned network")
    ax.set_ylabel("tasks")
    mean = sum(counts) / len(counts)
    ax.axvline(mean, color="#e31a1c", ls="--", lw=1, label=f"mean {mean:,.0f}")
    ax.legend(fontsize=8)
    ax.set_title(f"{title} (n={len(counts)})", fontsize=10)
    if hi >= 10_000:
        ax.ticklabel_format(axis="x", style="sci", scilimits=(3, 3))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
