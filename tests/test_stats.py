import math
import statistics

import numpy as np
import pytest

from halora.study.stats import (
    Estimate,
    accuracy_ci,
    chip_std,
    delta_ci,
    recovery_ci,
)


def cell(method, items, task="t", chip=0, spec="g"):
    """One sweep cell: `items` a sequence of 0/1 per test item."""
    text = "".join(str(int(i)) for i in items)
    return {
        "method": method,
        "task": task,
        "seed": chip,
        "spec": spec,
        "noise": "clean" if spec == "none" else "gaussian",
        "sigma": None,
        "items": text,
        "n": len(text),
        "accuracy": text.count("1") / len(text),
    }


def random_cells(arm, p, chips=3, seeds=2, tasks=("a", "b"), items=30, rng_seed=0, spec="g"):
    rng = np.random.default_rng(rng_seed)
    return [
        cell(f"{arm}@{s}", rng.random(items) < p, task, chip, spec)
        for s in range(seeds)
        for chip in range(chips)
        for task in tasks
    ]


def test_interval_widens_when_chips_disagree():
    # The same 50 % overall, and items more alike in the spread case: an interval that averages
    # over chips before resampling is narrower there; a chip-level bootstrap must be wider.
    agree = [cell("a", [1, 0] * 20, chip=chip) for chip in range(4)]
    spread = [cell("a", [1] * (8 * (chip + 1)) + [0] * (40 - 8 * (chip + 1)), chip=chip) for chip in range(4)]
    assert [c["accuracy"] for c in spread] == [0.2, 0.4, 0.6, 0.8]
    narrow, wide = accuracy_ci(agree, 1000), accuracy_ci(spread, 1000)
    assert narrow.value == pytest.approx(50) and wide.value == pytest.approx(50)
    assert wide.high - wide.low > 1.2 * (narrow.high - narrow.low)


def test_interval_widens_when_training_seeds_disagree():
    agree = [cell(f"a@{s}", [1, 0] * 20) for s in range(4)]
    spread = [cell(f"a@{s}", [1] * (8 * (s + 1)) + [0] * (40 - 8 * (s + 1))) for s in range(4)]
    narrow, wide = accuracy_ci(agree, 1000), accuracy_ci(spread, 1000)
    assert wide.high - wide.low > 1.2 * (narrow.high - narrow.low)


def test_point_is_the_plain_mean_and_inside_its_interval():
    cells = random_cells("a", 0.6)
    estimate = accuracy_ci(cells, 500)
    per_task = [statistics.fmean(c["accuracy"] for c in cells if c["task"] == t) for t in ("a", "b")]
    assert estimate.value == pytest.approx(100 * statistics.fmean(per_task))
    assert estimate.low < estimate.value < estimate.high
    assert estimate.to_json() == {"value": estimate.value, "low": estimate.low, "high": estimate.high}


def test_perfect_scores_have_no_spread():
    assert accuracy_ci([cell("a@0", [1] * 20), cell("a@1", [1] * 20)], 200) == Estimate(100.0, 100.0, 100.0)


def test_resampling_is_deterministic_per_seed():
    cells = random_cells("a", 0.5)
    assert accuracy_ci(cells, 300, seed=1) == accuracy_ci(cells, 300, seed=1)
    assert accuracy_ci(cells, 300, seed=1) != accuracy_ci(cells, 300, seed=2)


def test_identical_adapters_give_a_delta_of_exactly_zero():
    cells = random_cells("a", 0.5)
    assert delta_ci(cells, cells, 300) == Estimate(0.0, 0.0, 0.0)  # the same adapters: paired all through
    # other labels, the same scores: chips and items are paired, and every training seed scores alike
    same_everywhere = [cell(f"a@{s}", [1, 0, 0] * 10, chip=chip) for s in range(2) for chip in range(3)]
    relabelled = [dict(c, method=c["method"].replace("a@", "b@")) for c in same_everywhere]
    assert delta_ci(relabelled, same_everywhere, 300) == Estimate(0.0, 0.0, 0.0)


def test_paired_difference_interval():
    base = [cell(f"a@{seed}", [1, 0] * 20) for seed in range(2)]
    better = [cell(f"b@{seed}", [1, 1, 1, 0] * 10) for seed in range(2)]  # +25 points
    delta = delta_ci(better, base, 500)
    assert delta.value == pytest.approx(25.0) and 0 < delta.low < 25 < delta.high


def test_delta_uses_the_chips_both_sides_have():
    base = [cell("a", [1, 0] * 10, chip=chip) for chip in range(3)]
    other = [cell("b", [1] * 20, chip=chip) for chip in range(2)]  # chip 2 missing
    assert delta_ci(other, base, 200).value == pytest.approx(50.0)
    with pytest.raises(ValueError, match="different|differ"):
        delta_ci([cell("b", [1] * 10)], [cell("a", [1] * 20)], 200)  # not the same items


def test_recovery_point_and_interval():
    clean = random_cells("lora", 0.8, chips=1, spec="none", rng_seed=1)
    base = random_cells("lora", 0.4, rng_seed=2)
    method = random_cells("halora", 0.6, rng_seed=3)
    c, b, m = (accuracy_ci(cells, 10).value for cells in (clean, base, method))
    recovery = recovery_ci(method, base, clean, 1000)
    assert recovery.value == pytest.approx((m - b) / (c - b))
    assert recovery.drop.value == pytest.approx(c - b) and recovery.drop_significant
    assert recovery.bounded and recovery.low < recovery.value < recovery.high
    assert recovery.to_json()["drop_significant"] is True


def test_no_recovery_ratio_without_a_significant_drop():
    clean = random_cells("lora", 0.6, chips=1, spec="none", rng_seed=1)
    base = [dict(c, spec="g", seed=chip) for c in clean for chip in range(3)]  # loses nothing
    method = random_cells("halora", 0.7, rng_seed=3)
    recovery = recovery_ci(method, base, clean, 500)
    assert recovery.value is None and recovery.drop.value == pytest.approx(0.0)
    assert not recovery.drop_significant and not recovery.bounded
    assert (recovery.low, recovery.high) == (-math.inf, math.inf)
    assert recovery.to_json()["low"] is None and recovery.to_json()["high"] is None
    slightly = random_cells("lora", 0.57, rng_seed=4)  # a drop of a few points, within the noise
    assert not recovery_ci(method, slightly, clean, 500).drop_significant


def test_chip_std():
    spread = [cell("a", [1] * k + [0] * (10 - k), chip=chip) for chip, k in enumerate((2, 4, 6))]
    assert chip_std(spread) == pytest.approx(20.0)
