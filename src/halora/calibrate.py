"""Noise levels that mean the same on every model: the sigma at which plain LoRA loses a
stated number of points.

An absolute sigma is a different chip for different models: at tile-64 sigma 0.02 SmolLM2's
LoRA loses 10-15 points while another family barely notices. A study that compares models
therefore also reports each at its *calibrated level*: the sigma of the noise template at
which the baseline adapter's task-averaged accuracy drops by `target_drop` points below its
clean accuracy, on the validation split and on calibration chips (a chip set no test result
uses). The search brackets the level by doubling sigma, then bisects in log sigma:

    sigma:  s0, 2 s0, 4 s0, ... until drop >= target      (bracket)
            sqrt(lo * hi), ... `steps` times               (bisection)

Every probe is an ordinary cached sweep, so an interrupted search resumes.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.noise import GAUSSIAN_TEMPLATE
from halora.pipeline import Log, score
from halora.sweep import ChipGrid
from halora.tasks import Task

SEARCH_LIMIT = 1.0  # a weight noise of 100 % of the tile's max: past it nothing is left to find


@dataclass(frozen=True)
class Calibration:
    """The calibrated level and every probe of the search (sigma -> task-averaged accuracy %)."""

    target_drop: float
    sigma: float
    drop: float
    clean: float
    probes: list[tuple[float, float]] = field(default_factory=list)
    chips: list[int] = field(default_factory=list)  # the calibration chip seeds, for the report

    def to_json(self) -> dict:
        return asdict(self)


def calibrate_sigma(
    model_name: str,
    tasks: list[Task],
    adapter: tuple[str, str],
    target_drop: float,
    out: Path,
    chips: int = 2,
    items: int = 24,
    steps: int = 4,
    start: float = 0.01,
    template: str = GAUSSIAN_TEMPLATE,
    log: Log = print,
) -> Calibration:
    """The sigma at which `adapter` (label, folder) loses `target_drop` points (see module doc)."""
    if target_drop <= 0:
        raise UsageError(f"the calibration target must be a drop of > 0 points, got {target_drop}")
    evaluation = EvalSettings(items=items, eval_batch_size=32, split="val", scorer="loglik")

    chip_seeds: set[int] = set()

    def accuracies(sigma: float) -> tuple[float, float]:
        """Task-averaged accuracy % on the clean reference and at `sigma` (every sweep has both)."""
        grid = ChipGrid(sigmas=(sigma,), noise_template=template, chips=chips, chip_set="calibration")
        records, _ = score(model_name, tasks, [adapter], grid, evaluation, out / f"sigma-{sigma:.6g}")
        chip_seeds.update(r["seed"] for r in records if r["spec"] != "none")
        mean = {
            is_clean: 100
            * statistics.fmean(r["accuracy"] for r in records if (r["spec"] == "none") == is_clean)
            for is_clean in (True, False)
        }
        return mean[True], mean[False]

    probes: list[tuple[float, float]] = []
    clean = 0.0  # every probe's sweep scores the clean reference too: taken from the first

    def drop_at(sigma: float) -> float:
        nonlocal clean
        clean_here, value = accuracies(sigma)
        if not probes:
            clean = clean_here
        probes.append((sigma, value))
        log(f"  calibration: sigma {sigma:.4g} -> {value:.1f} % (drop {clean - value:.1f})")
        return clean - value

    low, high = 0.0, start
    while drop_at(high) < target_drop:
        low, high = high, 2 * high
        if high > SEARCH_LIMIT:
            raise UsageError(
                f"the baseline does not lose {target_drop:g} points below sigma {SEARCH_LIMIT:g}: "
                "lower the calibration target"
            )
    for _ in range(steps):
        middle = math.sqrt(low * high) if low > 0 else high / 2
        if drop_at(middle) < target_drop:
            low = middle
        else:
            high = middle
    sigma = min(probes, key=lambda probe: abs(clean - probe[1] - target_drop))[0]
    found = dict(probes)[sigma]
    return Calibration(target_drop, sigma, clean - found, clean, sorted(probes), sorted(chip_seeds))
