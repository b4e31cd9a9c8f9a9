"""A run that collapsed: its validation score fell far below its best and stayed there.

Tables average seeds, so a seed that ended near chance only widens a confidence interval
unless it is named. A run collapsed when, after its best epoch, its validation score stayed
below the halfway mark between that best and chance for a stretch of at least
max(LEAST_EPOCHS, STRETCH_SHARE of its epochs) consecutive epochs. Chance is 1 / classes
(accuracy) or 0 (BLEU). The train stage logs it, the evaluate stage records it in the run's
metrics.json (`collapsed`, absent when it did not) and the report stage marks it in the
tables (from each run's history.json, which every committed run has).
"""

from __future__ import annotations

import math

STRETCH_SHARE = 0.1
LEAST_EPOCHS = 3


def collapse(history: list[dict], key: str, chance: float) -> dict | None:
    """The first collapsed stretch of a run's epochs (None: none): its first epoch, length,
    the best score before it and the lowest within it."""
    epochs = [r for r in history if "epoch" in r and key in r]
    if not epochs:
        return None
    scores = [r[key] for r in epochs]
    best_at = max(range(len(scores)), key=scores.__getitem__)
    best = scores[best_at]
    halfway = chance + (best - chance) / 2
    needed = max(LEAST_EPOCHS, math.ceil(STRETCH_SHARE * len(scores)))
    stretch = 0
    for i in range(best_at + 1, len(scores)):
        stretch = stretch + 1 if scores[i] < halfway else 0
        if stretch == needed:
            start = i - stretch + 1
            low = min(scores[start:])
            return {"epoch": epochs[start]["epoch"], "epochs": stretch, "best": best, "low": low}
    return None


def chance_of(key: str, num_classes: int) -> float:
    return 0.0 if key == "val_bleu" else 1.0 / num_classes


def describe(key: str, found: dict) -> str:
    return (
        f"{key} fell from its best {found['best']:.3g} to {found['low']:.3g} and stayed below "
        f"halfway to chance for {found['epochs']}+ epochs from epoch {found['epoch']}"
    )


def how_collapsed(history: list[dict], key: str, num_classes: int) -> str:
    """How a run collapsed on its validation `key`, in words, or "" if it did not."""
    found = collapse(history, key, chance_of(key, num_classes))
    return describe(key, found) if found else ""
