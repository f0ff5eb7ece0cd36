"""Statistics of the robustness study: bootstrap intervals over training seeds and test items,
and the spread over chip seeds.

Records are sweep cells (halora.sweep): one (adapter "arm@seed", task, chip) each, with
the per-item correctness string `items`.
"""

from __future__ import annotations

import statistics
from collections import defaultdict


def _items(record: dict) -> list[int]:
    return [int(c) for c in record["items"]]


def _item_tables(records: list[dict]) -> dict:
    """Per task: [training seed, item] correctness averaged over chip seeds."""
    import numpy as np

    trains = sorted({r["method"] for r in records})
    tasks = sorted({r["task"] for r in records})
    return {
        task: np.array(
            [
                np.mean([_items(r) for r in records if r["task"] == task and r["method"] == t], axis=0)
                for t in trains
            ]
        )
        for task in tasks
    }


def _resampled_means(tables: dict, picks, items) -> float:
    """Task-averaged accuracy (%) for one resample: training seeds `picks`, item indices `items`."""
    import numpy as np

    return 100 * float(np.mean([tables[task][picks][:, items[task]].mean() for task in tables]))


def bootstrap_mean_ci(records: list[dict], resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy (%) and a 95 % interval, resampling training seeds, then test items.

    `records` are one method's cells for one chip condition: training seeds x chip seeds x
    tasks. A resample draws training seeds with replacement and, per task, test items with
    replacement (the same item indices on every chip and seed: they are the same items).
    """
    return bootstrap_delta_ci(records, None, resamples, seed)


def bootstrap_delta_ci(
    records: list[dict], reference: list[dict] | None, resamples: int, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy (%) of `records` minus that of `reference` (or alone when None), with a 95 %
    interval. Paired over test items: both sides are scored on the same items, so each
    resample draws one set of item indices for both; training seeds are drawn per side.
    Pairing is what makes a difference of a few points measurable with 30 items per task."""
    import numpy as np

    tables = _item_tables(records)
    others = _item_tables(reference) if reference else None
    full = {task: np.arange(table.shape[1]) for task, table in tables.items()}

    def value(picks, other_picks, items) -> float:
        mine = _resampled_means(tables, picks, items)
        return mine - _resampled_means(others, other_picks, items) if others else mine

    seeds_here = np.arange(len(next(iter(tables.values()))))
    seeds_there = np.arange(len(next(iter(others.values()))) if others else 0)
    point = value(seeds_here, seeds_there, full)
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for b in range(resamples):
        picks = rng.integers(len(seeds_here), size=len(seeds_here))
        other_picks = rng.integers(len(seeds_there), size=len(seeds_there)) if others else seeds_there
        items = {task: rng.integers(table.shape[1], size=table.shape[1]) for task, table in tables.items()}
        draws[b] = value(picks, other_picks, items)
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def chip_std(cells: list[dict]) -> float:
    """Std over chip seeds of the task-averaged accuracy (%), averaged over training seeds."""
    per_chip: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in cells:
        per_chip[(r["method"], r["seed"])].append(r["accuracy"])
    by_train: dict[str, list[float]] = defaultdict(list)
    for (method, _), values in per_chip.items():
        by_train[method].append(100 * statistics.fmean(values))
    spreads = [statistics.stdev(v) for v in by_train.values() if len(v) > 1]
    return statistics.fmean(spreads) if spreads else 0.0
