"""Rank correlations between supernet predictions and true accuracies (numpy only).

SUMNAS (Ha et al., ICLR 2022, Section 5.1, Table 4 and Appendix B) measures
how well a supernet ranks sub-models by Kendall's tau; Appendix B defines it as
(concordant - discordant) / (n (n - 1) / 2), which is tau-a. With ties the
usual statistic is tau-b (scipy's default); both are provided, and Spearman's
rho (Pearson correlation of average ranks).
"""

import numpy as np


def _pairs(x, y):
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"Need two equally long sequences of >= 2 values, got {x.size}, {y.size}.")
    i, j = np.triu_indices(x.size, k=1)
    return np.sign(x[i] - x[j]), np.sign(y[i] - y[j])


def concordance(x, y):
    """``(concordant, discordant, ties_x_only, ties_y_only, n_pairs)`` over all pairs."""
    sx, sy = _pairs(x, y)
    prod = sx * sy
    return (int((prod > 0).sum()), int((prod < 0).sum()), int(((sx == 0) & (sy != 0)).sum()),
            int(((sy == 0) & (sx != 0)).sum()), int(sx.size))


def kendall_tau_a(x, y):
    """(concordant - discordant) / (n (n - 1) / 2): SUMNAS Appendix B.

    References: Ha et al., ICLR 2022, Appendix B.
    """
    c, d, _, _, n_pairs = concordance(x, y)
    return (c - d) / n_pairs


def kendall_tau_b(x, y):
    """Kendall's tau-b, (C - D) / sqrt((n0 - n1)(n0 - n2)), corrected for ties.

    Returns nan when either sequence is constant (as scipy does).
    """
    sx, sy = _pairs(x, y)
    numerator = float((sx * sy).sum())
    denominator = np.sqrt(float((sx != 0).sum()) * float((sy != 0).sum()))
    return numerator / denominator if denominator else float("nan")


def rankdata(x):
    """Average ranks (1-based), ties sharing their mean rank."""
    x = np.asarray(x, np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, x.size + 1):
        if end == x.size or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = 0.5 * (start + end - 1) + 1.0
            start = end
    return ranks


def spearman_rho(x, y):
    """Spearman's rho: Pearson correlation of average ranks."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.size != ry.size or rx.size < 2:
        raise ValueError("Need two equally long sequences of >= 2 values.")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator else float("nan")


def correlations(predicted, true):
    """``{"kendall_tau_a", "kendall_tau_b", "spearman_rho"}`` of two score lists."""
    return {
        "kendall_tau_a": float(kendall_tau_a(predicted, true)),
        "kendall_tau_b": float(kendall_tau_b(predicted, true)),
        "spearman_rho": float(spearman_rho(predicted, true)),
    }
