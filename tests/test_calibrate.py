"""The calibrated noise level: a bracket-and-bisect search on a known accuracy curve."""

from __future__ import annotations

from pathlib import Path

import pytest

import halora.calibrate as calibrate_module
from halora.errors import UsageError
from halora.sweep import CHIP_SETS


def fake_score(slope: float):
    """A score() stand-in: clean 80 %, then 80 - slope * sigma on every noisy chip."""

    def score(model_name, tasks, adapters, grid, evaluation, out):
        assert grid.chip_set == "calibration" and evaluation.split == "val"
        sigma = grid.sigmas[0]
        records = [{"spec": "none", "accuracy": 0.8}]
        noisy = (80 - slope * sigma) / 100
        records += [{"spec": f"g{sigma}", "seed": seed, "accuracy": noisy} for seed in grid.seeds]
        return records, None

    return score


def test_finds_the_sigma_of_the_target_drop(monkeypatch):
    monkeypatch.setattr(calibrate_module, "score", fake_score(slope=1000))  # 15 points at 0.015
    found = calibrate_module.calibrate_sigma(
        "m", [], ("lora", "x"), 15, Path("unused"), steps=6, log=lambda _: None
    )
    assert found.clean == 80 and abs(found.sigma - 0.015) < 0.001 and abs(found.drop - 15) < 1
    assert [sigma for sigma, _ in found.probes] == sorted(sigma for sigma, _ in found.probes)
    assert len(found.probes) == 2 + 6  # 0.01 and 0.02 bracket it, then six bisections
    assert found.chips and min(found.chips) >= CHIP_SETS["calibration"]  # named, from that set


def test_refuses_a_target_the_baseline_never_reaches(monkeypatch):
    monkeypatch.setattr(calibrate_module, "score", fake_score(slope=1))
    with pytest.raises(UsageError, match="does not lose 15 points"):
        calibrate_module.calibrate_sigma("m", [], ("lora", "x"), 15, Path("unused"), log=lambda _: None)
