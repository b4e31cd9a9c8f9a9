"""How well a ranking of training examples finds the corrupted labels (no torch: the report
stages use it too).

With K corrupted labels among n: ROC AUC (the chance that a random corrupted example is ranked
above a random clean one), precision and recall of the top k at k = K/2, K (where they are
equal) and 2K, and the precision-recall curve at 50 depths.
"""

from __future__ import annotations

import numpy as np

CURVE_POINTS = 50


def ranking_quality(noisy_by_rank: np.ndarray) -> dict:
    """`noisy_by_rank`: for each example, most suspect first, whether its label is corrupted."""
    noisy = np.asarray(noisy_by_rank, dtype=bool)
    n, k_noisy = len(noisy), int(noisy.sum())
    if not 0 < k_noisy < n:
        raise ValueError("a ranking quality needs both corrupted and clean examples")
    found = np.cumsum(noisy)  # corrupted among the top 1, 2, ..., n
    position = np.flatnonzero(noisy)  # 0-based ranks of the corrupted examples
    clean_below = (n - k_noisy) - (position - np.arange(k_noisy))
    at = {"half": max(k_noisy // 2, 1), "k": k_noisy, "twice": min(2 * k_noisy, n)}
    depths = np.unique(np.linspace(1, n, CURVE_POINTS).round().astype(int))
    return {
        "corrupted": k_noisy,
        "examples": n,
        "auc": round(float(clean_below.sum()) / (k_noisy * (n - k_noisy)), 6),
        **{f"precision_at_{name}": round(float(found[k - 1]) / k, 6) for name, k in at.items()},
        **{f"recall_at_{name}": round(float(found[k - 1]) / k_noisy, 6) for name, k in at.items()},
        "curve": {
            "depth": depths.tolist(),
            "precision": [round(float(found[d - 1]) / d, 4) for d in depths],
            "recall": [round(float(found[d - 1]) / k_noisy, 4) for d in depths],
        },
    }
