"""The study's report: per method and chip condition, accuracy with its interval, the
difference to the baseline with a paired interval, the chip spread and the recovery ratio;
as results.json and report.md. A study with a time axis also lists its times and drift
compensation, and plots accuracy against the time after programming (accuracy_vs_time.png)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from halora.noise import parse_time
from halora.noise.base import format_duration
from halora.report import TIME_PLOT, plot_accuracy_vs_time, time_label
from halora.study.stats import Estimate, accuracy_ci, chip_std, delta_ci, recovery_ci
from halora.sweep import time_notes

if TYPE_CHECKING:
    from halora.study.grid import StudySettings


def build_report(
    study: StudySettings, chosen: dict[str, str], selection: list[dict], finals: dict[str, list[dict]]
) -> dict:
    """The report of a study: `chosen` maps each method family to its arm, `selection` holds
    the validation cells, `finals` the test cells per scorer (adapters "arm@seed")."""
    return {
        "study": study.describe(),
        "time_axis": time_axis(study),
        "analog": study.converters.describe() if study.converters else None,
        "chosen": chosen,
        "chips": {
            "selection": chips_by_condition(selection),
            "test": chips_by_condition([r for records in finals.values() for r in records]),
        },
        "selection": _selection_table(selection),
        "final": {scorer: _final(study, chosen, records) for scorer, records in finals.items()},
    }


def time_axis(study: StudySettings) -> dict | None:
    """The times and drift compensation of the test chips, None without a time axis."""
    if not study.times:
        return None
    return {
        "times": list(study.times),
        "seconds": [parse_time(t) for t in study.times],
        "time_noise": study.time_noise,
        "compensate": study.compensate,
        "extrapolated": time_notes(study.time_noise, study.times),
        "plot": TIME_PLOT,
    }


def chips_by_condition(records: list[dict]) -> dict[str, list[int]]:
    """The chip seeds found in the records, per condition spec: a report names its chips.

    Clean records are left out: they carry a seed field but score the unprogrammed weights,
    so listing it would read as if that chip had been used."""
    found: dict[str, set[int]] = defaultdict(set)
    for r in records:
        if r["noise"] != "clean":
            found[r["spec"]].add(r["seed"])
    return {spec: sorted(seeds) for spec, seeds in sorted(found.items())}


Condition = tuple[str, str, float | None, float | None, bool]  # noise, spec, sigma, t, compensate


def _final(study: StudySettings, chosen: dict[str, str], records: list[dict]) -> dict:
    conditions = sorted(
        {(r["noise"], r["spec"], r["sigma"], r.get("t"), bool(r.get("compensate"))) for r in records},
        key=lambda c: (
            c[0] != "clean",
            c[3] is not None,  # the time axis after the other conditions, in time order
            c[0],
            c[2] if c[2] is not None else 9,
            c[3] if c[3] is not None else 0,
            c[4],
        ),
    )
    clean = next((spec for noise, spec, *_ in conditions if noise == "clean"), None)
    rows = [
        _row(study, chosen, records, method, condition, clean)
        for method in chosen
        for condition in conditions
    ]
    recoveries: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row["recovery"] is not None:
            recoveries.setdefault(row["spec"], {})[row["method"]] = row["recovery"]
    return {"rows": rows, "recovery": recoveries}


def _row(
    study: StudySettings,
    chosen: dict[str, str],
    records: list[dict],
    method: str,
    condition: Condition,
    clean: str | None,
) -> dict:
    """One method on one condition: accuracy, the paired difference to the baseline, the
    chip spread and (on a noisy chip, for a method other than the baseline) the recovery."""
    noise, spec, sigma, t, compensate = condition
    cells = _cells(records, chosen[method], spec)
    base = _cells(records, chosen[study.baseline], spec)
    accuracy = accuracy_ci(cells, study.bootstrap)
    delta = delta_ci(cells, base, study.bootstrap)
    recovery = None
    if method != study.baseline and noise != "clean" and clean is not None:
        base_clean = _cells(records, chosen[study.baseline], clean)
        recovery = recovery_ci(cells, base, base_clean, study.bootstrap).to_json()
    return {
        "method": method,
        "arm": chosen[method],
        "noise": noise,
        "spec": spec,
        "sigma": sigma,
        "t": t,
        "compensate": compensate,
        "condition": time_label(noise, t, compensate) if t is not None else spec,
        "accuracy": accuracy.value,
        "ci95": _bounds(accuracy),
        "delta_vs_baseline": delta.value,
        "delta_ci95": _bounds(delta),
        "chip_std": chip_std(cells),
        "recovery": recovery,
        "chips": sorted({r["seed"] for r in cells}),
        "cells": len(cells),
    }


def _bounds(estimate: Estimate) -> list[float]:
    return [estimate.low, estimate.high]


def _cells(records: list[dict], arm: str, spec: str) -> list[dict]:
    """One arm's cells (every training seed "arm@seed") on one chip condition."""
    return [r for r in records if r["method"].rsplit("@", 1)[0] == arm and r["spec"] == spec]


def _selection_table(records: list[dict]) -> list[dict]:
    rows: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        rows[(r["method"], r["spec"])].append(100 * r["accuracy"])
    return [{"arm": arm, "spec": spec, "accuracy": statistics.fmean(v)} for (arm, spec), v in rows.items()]


def _calibration_markdown(calibration: dict | None) -> list[str]:
    if not calibration:
        return []
    probes = ", ".join(f"{sigma:.4g} → {accuracy:.1f}" for sigma, accuracy in calibration["probes"])
    named = " " + _seeds(calibration["chips"]) if calibration.get("chips") else ""  # older runs: none
    return [
        "## Calibrated noise level",
        "",
        f"sigma {calibration['sigma']:.4g}: the baseline loses {calibration['drop']:.1f} points "
        f"(target {calibration['target_drop']:g}; clean {calibration['clean']:.1f} %) on calibration "
        f"chips{named}, validation split. "
        f"Probes (sigma → accuracy %): {probes}.",
        "",
    ]


def report_markdown(report: dict) -> str:
    baseline = report["study"]["baseline"]
    lines = [
        "# halora robustness study",
        "",
        "Selection on the validation split; everything below on the test split.",
        "",
        *_chips_markdown(report.get("chips", {})),
        *_time_axis_markdown(report.get("time_axis")),
        *([f"Analog forward on every chip: {report['analog']}.", ""] if report.get("analog") else []),
        *_calibration_markdown(report.get("calibration")),
        "## Selection (validation accuracy %, mean over chips and tasks)",
        "",
        "| arm | chip | accuracy |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['arm']} | {r['spec']} | {r['accuracy']:.1f} |"
        for r in sorted(report["selection"], key=lambda r: (r["spec"], -r["accuracy"]))
    ]
    lines += ["", "Chosen: " + ", ".join(f"{m} → {a}" for m, a in report["chosen"].items())]
    for scorer, final in report["final"].items():
        lines += [
            "",
            f"## Test accuracy % ({scorer} scoring)",
            "",
            "Each number has its 95 % interval beside it, from a hierarchical bootstrap over "
            "chips, training seeds and test items.",
            f"Δ is the difference to {baseline} on the same chips and items (a paired interval).",
            f"Recovery ratio = (method − {baseline} on chip) / ({baseline} clean − {baseline} on chip); "
            f"shown where {baseline}'s drop is significant.",
            "",
            f"| method (arm) | chip | accuracy | Δ vs {baseline} | chip std | recovery ratio |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} ({r['arm']}) | {r.get('condition', r['spec'])} | "
            f"{_with_ci(r['accuracy'], r['ci95'])} | "
            f"{_with_ci(r['delta_vs_baseline'], r['delta_ci95'], '+.1f')} | {r['chip_std']:.1f} | "
            f"{_recovery_text(r['recovery'], baseline)} |"
            for r in final["rows"]
        ]
    if report.get("recalibration"):
        lines += ["", *recalibration_markdown(report["recalibration"])]
    return "\n".join(lines) + "\n"


def _time_axis_markdown(axis: dict | None) -> list[str]:
    """The times the test chips were aged to, the device and the compensation."""
    if not axis:
        return []
    compensation = {"off": "off", "on": "on", "both": "each time without and with"}[axis["compensate"]]
    lines = [
        "## Time after programming (test chips)",
        "",
        f"{axis['time_noise']} at t = {', '.join(format_duration(t) for t in axis['seconds'])}; "
        f"each chip seed is one chip ageing. Global drift compensation: {compensation}. "
        f"Plot: {axis['plot']}.",
        "",
    ]
    lines += [f"- extrapolated: {note}" for note in axis["extrapolated"]]
    return [*lines, ""] if axis["extrapolated"] else lines


def plot_time(report: dict, out: str | Path) -> list[Path]:
    """accuracy_vs_time.png from the test rows of the first scorer (and a file per other
    scorer), error bars the rows' 95 % intervals; nothing without a time axis."""
    written = []
    for index, (scorer, final) in enumerate(report["final"].items()):
        points = [
            {
                "method": r["method"],
                "noise": r["noise"],
                "t": r["t"],
                "compensate": r["compensate"],
                "mean": r["accuracy"],
                "low": r["ci95"][0],
                "high": r["ci95"][1],
            }
            for r in final["rows"]
            if r.get("t") is not None
        ]
        if points:
            name = TIME_PLOT if index == 0 else TIME_PLOT.replace(".png", f"_{scorer}.png")
            clean = {r["method"]: r["accuracy"] for r in final["rows"] if r["noise"] == "clean"}
            written.append(plot_accuracy_vs_time(points, Path(out) / name, clean))
    return written


def _seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


def _chips_markdown(chips: dict[str, dict[str, list[int]]]) -> list[str]:
    """The chip seeds per condition, for selection and test: disjoint sets, named."""
    if not chips:
        return []
    lines = ["## Chips (seeds per condition)", "", "Clean scores use no chip.", ""]
    for stage, by_spec in chips.items():
        lines += [f"- {stage}, {spec}: {_seeds(seeds)}" for spec, seeds in by_spec.items()]
    return [*lines, ""]


def _with_ci(value: float, bounds: list[float], spec: str = ".1f") -> str:
    return f"{value:{spec}} [{bounds[0]:{spec}}, {bounds[1]:{spec}}]"


def _recovery_text(recovery: dict | None, baseline: str) -> str:
    """The ratio with its interval only where the baseline's drop is significant: otherwise
    the denominator may be 0 and the ratio says nothing."""
    if recovery is None:
        return "–"
    if not recovery["drop_significant"] or recovery["value"] is None:
        return f"n/a ({baseline}'s drop is not significant)"
    return _with_ci(recovery["value"], [recovery["low"], recovery["high"]], ".2f")


RECAL_SUFFIXES = ("", "+steps", "+recal", "+recal@other")


def recalibration_table(
    records: list[dict], sources: list[str], baseline: str, resamples: int = 1000
) -> dict:
    """Per source adapter and noisy chip condition: the source, its equal-compute baseline
    (+steps), recalibrated on its own chip (+recal) and on the next chip (+recal@other),
    each with its accuracy interval and its recovery of `baseline`'s drop (the baseline's
    clean and on-chip cells, same chips and items); and own chip minus other chip, paired
    by the chip scored on. `records` are recal_sweep cells (labels "<source><suffix>")."""
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        by[(r["method"], r["spec"])].append(r)
    clean = next((r["spec"] for r in records if r["noise"] == "clean"), None)
    specs = sorted({r["spec"] for r in records if r["noise"] != "clean"})
    rows, own_minus_other = [], {}
    for source in sources:
        for spec in specs:
            base_chip, base_clean = by.get((baseline, spec)), by.get((baseline, clean))
            for suffix in RECAL_SUFFIXES:
                cells = by.get((source + suffix, spec))
                if not cells:
                    continue
                accuracy = accuracy_ci(cells, resamples)
                recovery = None
                if base_chip and base_clean and source + suffix != baseline:
                    recovery = recovery_ci(cells, base_chip, base_clean, resamples).to_json()
                rows.append(
                    {
                        "source": source,
                        "method": source + suffix,
                        "spec": spec,
                        "accuracy": accuracy.value,
                        "ci95": _bounds(accuracy),
                        "recovery": recovery,
                        "chips": sorted({r["seed"] for r in cells}),
                    }
                )
            own, other = by.get((f"{source}+recal", spec)), by.get((f"{source}+recal@other", spec))
            if own and other:
                delta = delta_ci(own, other, resamples)
                own_minus_other[f"{source} | {spec}"] = {"value": delta.value, "ci95": _bounds(delta)}
    return {"baseline": baseline, "rows": rows, "own_minus_other": own_minus_other}


def recalibration_markdown(table: dict) -> list[str]:
    baseline = table["baseline"]
    lines = [
        "## Per-chip recalibration (test chips)",
        "",
        "+recal: tuned on the chip it is scored on; +recal@other: tuned on another chip of the "
        "same level; +steps: the same extra steps without a chip (equal compute). Recovery "
        f"ratio of {baseline}'s drop, where that drop is significant.",
        "",
        "| adapter | chip | accuracy | recovery ratio | chips |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['spec']} | {_with_ci(r['accuracy'], r['ci95'])} | "
        f"{_recovery_text(r['recovery'], baseline)} | {', '.join(map(str, r['chips']))} |"
        for r in table["rows"]
    ]
    if table["own_minus_other"]:
        lines += ["", "Own chip minus other chip (points, paired by the chip scored on):", ""]
        lines += [
            f"- {key}: {_with_ci(d['value'], d['ci95'], '+.1f')}"
            for key, d in table["own_minus_other"].items()
        ]
    return [*lines, ""]
