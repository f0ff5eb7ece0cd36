"""Statistics of sweep cells: hierarchical bootstrap intervals and the spread over chip seeds.

A cell (halora.sweep) is one (adapter, task, chip) score with its per-item correctness
string `items`. Three things vary between cells and each gets its own bootstrap level:

- chips: the chip seeds of one condition (each is a different programmed chip),
- training seeds: the adapters of one method (in the study "arm@seed"; a plain label is
  one training seed),
- test items: per task, the same items in the same order on every chip and adapter.

One resample draws chips with replacement, then training seeds, then each task's items,
and scores the task average of the per-task mean over the drawn (chip, seed, item) cells.
Chips and training seeds are crossed, not nested (every adapter runs on every chip), so
drawing each level independently counts the residual variance more than once: the
intervals are conservative, never optimistic about chip-to-chip variance.

Paired quantities draw shared levels once: a difference A - B uses one chip draw and one
item draw for both sides (same chips, same items), and the same training seed draw only
where both sides are the same adapters. Draws are made as count weights (a multinomial per
level), so a resample is a weighted sum and 1000 resamples are a few matrix products.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LEVEL = 95  # percent: every interval is a percentile interval at this level
TAILS = ((100 - LEVEL) / 2, 100 - (100 - LEVEL) / 2)


@dataclass(frozen=True)
class Estimate:
    """A point value (the full-data estimate) and its 95 % percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float | None]:
        return {"value": _finite(self.value), "low": _finite(self.low), "high": _finite(self.high)}


@dataclass(frozen=True)
class Recovery:
    """A recovery ratio (m_chip - b_chip) / (b_clean - b_chip) with its 95 % interval.

    `value` is None where the baseline loses nothing on the full data. The interval is
    unbounded (-inf, inf) unless `drop_significant`: a ratio whose denominator may be 0 has
    no finite confidence bounds, so a finite interval there would be an artefact.
    """

    value: float | None
    low: float
    high: float
    drop: Estimate  # the baseline's drop b_clean - b_chip (points), from the same resamples
    drop_significant: bool  # the drop's 95 % interval lies above 0

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def to_json(self) -> dict:
        return {
            "value": _finite(self.value),
            "low": _finite(self.low),
            "high": _finite(self.high),
            "bounded": self.bounded,
            "drop_significant": self.drop_significant,
            "drop": self.drop.to_json(),
        }


def _finite(number: float | None) -> float | None:
    """JSON has no infinity: an unbounded end is written as null."""
    return number if number is not None and math.isfinite(number) else None


def accuracy_ci(cells: list[dict], resamples: int = 1000, seed: int = 0, field: str = "items") -> Estimate:
    """Task-averaged accuracy (%) of one method on one condition, with a 95 % interval.

    `cells` are that method's cells: chips x training seeds x tasks (a training seed is a
    distinct `method` label). `field` names the per-item string ("items_norm" for acc_norm).
    """
    (side,) = _sides([cells], field)
    return _estimate(lambda s: s.accuracy(side), resamples, seed)


def delta_ci(
    cells: list[dict], reference_cells: list[dict], resamples: int = 1000, seed: int = 0, field: str = "items"
) -> Estimate:
    """Accuracy (%) of `cells` minus that of `reference_cells` on the same condition.

    Paired: one chip draw and one item draw serve both sides, since both were scored on the
    same chips and items; this is what makes a difference of a few points measurable.
    Training seeds are drawn per side (shared only when both sides are the same adapters,
    so a method compared with itself gives exactly 0).
    """
    mine, theirs = _sides([cells, reference_cells], field)
    return _estimate(lambda s: s.accuracy(mine) - s.accuracy(theirs), resamples, seed)


def recovery_ci(
    method_chip_cells: list[dict],
    base_chip_cells: list[dict],
    base_clean_cells: list[dict],
    resamples: int = 1000,
    seed: int = 0,
    field: str = "items",
) -> Recovery:
    """The recovery ratio (m_chip - b_chip) / (b_clean - b_chip): 1.0 means the method
    recovers all the accuracy the baseline loses on the chip.

    All three accuracies come from one joint resample: the method and the baseline share
    the chip draw, all three share the item draw, and the baseline's training seed draw
    serves both its chip and clean scores (they are the same adapters). Resamples where
    the drop is exactly 0 have no ratio and are left out of the ratio's percentiles.
    """
    sides = _sides([method_chip_cells, base_chip_cells, base_clean_cells], field)
    gain, drop = (float(x[0]) for x in _gain_and_drop(_Sampler(1, seed, uniform=True), *sides))
    gains, drops = _gain_and_drop(_Sampler(resamples, seed), *sides)
    drop_estimate = Estimate(drop, *_interval(drops))
    significant = drop_estimate.low > 0
    low, high = -math.inf, math.inf
    if significant:
        ratios = np.divide(gains, drops, out=np.full_like(gains, np.nan), where=drops != 0)
        low, high = (float(x) for x in np.nanpercentile(ratios, TAILS))
    value = gain / drop if drop > 0 else None
    return Recovery(value, low, high, drop_estimate, significant)


def _gain_and_drop(
    sampler: _Sampler, method: _Side, base: _Side, clean: _Side
) -> tuple[np.ndarray, np.ndarray]:
    """Per resample: the method's gain over the baseline on the chip, and the baseline's drop."""
    on_chip = sampler.accuracy(base)
    return sampler.accuracy(method) - on_chip, sampler.accuracy(clean) - on_chip


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


# --- the machinery -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """One method's cells on one condition as per-task arrays [chip, training seed, item]."""

    condition: str
    chips: tuple[int, ...]
    trainings: tuple[str, ...]
    tables: dict[str, np.ndarray]


class _Sampler:
    """The draws of one estimate's resamples, one per level and key: sides with the same
    chips (condition and seeds), the same adapters or the same task's items share a draw,
    which is what pairs them. `uniform` draws every unit once: the full-data estimate."""

    def __init__(self, resamples: int, seed: int, uniform: bool = False):
        self.resamples, self.uniform = resamples, uniform
        self.rng = np.random.default_rng(seed)
        self.drawn: dict[tuple, np.ndarray] = {}

    def counts(self, key: tuple, n: int) -> np.ndarray:
        """[resample, unit]: how often each of n units is drawn in a draw of n with replacement.
        Integer counts (as floats) keep sums exact: identical sides give exactly 0."""
        if key not in self.drawn:
            shape = (self.resamples, n)
            draw = np.ones(shape) if self.uniform else self.rng.multinomial(n, np.full(n, 1 / n), shape[:1])
            self.drawn[key] = draw.astype(float)
        if self.drawn[key].shape[1] != n:
            raise ValueError(f"{key[0]} of {key[1:]} differ in number between the cells being paired")
        return self.drawn[key]

    def accuracy(self, side: _Side) -> np.ndarray:
        """Task-averaged accuracy (%) of `side` in every resample."""
        chips = self.counts(("chips", side.condition, side.chips), len(side.chips))
        seeds = self.counts(("training seeds", side.trainings), len(side.trainings))
        total = np.zeros(self.resamples)
        for task, table in side.tables.items():
            items = self.counts(("items", task), table.shape[2])
            correct = table @ items.T  # [chip, seed, resample]: drawn items each cell got right
            total += np.einsum("csb,bc,bs->b", correct, chips, seeds) / table.size
        return 100 * total / len(side.tables)


def _estimate(statistic: Callable[[_Sampler], np.ndarray], resamples: int, seed: int) -> Estimate:
    """`statistic(sampler)` on the full data and on `resamples` joint resamples."""
    point = float(statistic(_Sampler(1, seed, uniform=True))[0])
    return Estimate(point, *_interval(statistic(_Sampler(resamples, seed))))


def _interval(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(draws, TAILS)
    return float(low), float(high)


def _sides(groups: list[list[dict]], field: str) -> list[_Side]:
    """Each group of cells as a _Side over the tasks every group has, and per condition over
    the chips complete (every training seed x task) in every group on that condition, so
    that paired sides line up chip by chip and item by item."""
    if not all(groups):
        raise ValueError("no cells to estimate from")
    tasks = sorted(set.intersection(*({c["task"] for c in cells} for cells in groups)))
    if not tasks:
        raise ValueError("the cells being compared share no task")
    conditions = [_condition(cells) for cells in groups]
    chips: dict[str, set[int]] = {}
    for condition, cells in zip(conditions, groups, strict=True):
        complete = _complete_chips(cells, tasks)
        chips[condition] = chips.get(condition, complete) & complete
    for condition, found in chips.items():
        if not found:
            raise ValueError(f"no chip of {condition} has every cell of the sides being compared")
    return [
        _side(cells, condition, tuple(sorted(chips[condition])), tasks, field)
        for condition, cells in zip(conditions, groups, strict=True)
    ]


def _condition(cells: list[dict]) -> str:
    specs = {c["spec"] for c in cells}
    if len(specs) != 1:
        raise ValueError(f"cells of one side come from several conditions: {sorted(specs)}")
    return specs.pop()


def _complete_chips(cells: list[dict], tasks: list[str]) -> set[int]:
    """Chip seeds with a cell for every training seed and task."""
    trainings = {c["method"] for c in cells}
    found: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for c in cells:
        found[c["seed"]].add((c["method"], c["task"]))
    needed = {(training, task) for training in trainings for task in tasks}
    return {chip for chip, have in found.items() if needed <= have}


def _side(cells: list[dict], condition: str, chips: tuple[int, ...], tasks: list[str], field: str) -> _Side:
    trainings = tuple(sorted({c["method"] for c in cells}))
    by_key = {(c["seed"], c["method"], c["task"]): c for c in cells}
    tables = {}
    for task in tasks:
        rows = [[_items(by_key[(chip, t, task)], field) for t in trainings] for chip in chips]
        lengths = {len(items) for row in rows for items in row}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                f"{task}: cells need per-item results ({field}) of one length, got {sorted(lengths)}"
            )
        tables[task] = np.array(rows, dtype=float)
    return _Side(condition, chips, trainings, tables)


def _items(cell: dict, field: str) -> list[int]:
    return [int(c) for c in cell.get(field) or ""]
