"""The study's report: per method and chip condition, accuracy with its interval, the
difference to the baseline with a paired interval, the chip spread and the recovery ratio;
as results.json and report.md."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from halora.report import recovery
from halora.study.stats import bootstrap_delta_ci, bootstrap_mean_ci, chip_std

if TYPE_CHECKING:
    from halora.study.grid import StudySettings


def build_report(
    study: StudySettings, chosen: dict[str, str], selection: list[dict], finals: dict[str, list[dict]]
) -> dict:
    report: dict[str, Any] = {
        "study": study.describe(),
        "chosen": chosen,
        "selection": _selection_table(selection),
        "final": {},
    }
    for scorer, records in finals.items():
        rows = []
        conditions = sorted(
            {(r["noise"], r["spec"], r["sigma"]) for r in records},
            key=lambda c: (c[0] != "clean", c[0], c[2] if c[2] is not None else 9),
        )
        for method, arm in chosen.items():
            for noise, spec, sigma in conditions:
                cells = _cells(records, arm, spec)
                mean, low, high = bootstrap_mean_ci(cells, study.bootstrap)
                delta, delta_low, delta_high = bootstrap_delta_ci(
                    cells, _cells(records, chosen[study.baseline], spec), study.bootstrap
                )
                rows.append(
                    {
                        "method": method,
                        "arm": arm,
                        "noise": noise,
                        "spec": spec,
                        "sigma": sigma,
                        "accuracy": mean,
                        "ci95": [low, high],
                        "delta_vs_baseline": delta,
                        "delta_ci95": [delta_low, delta_high],
                        "chip_std": chip_std(cells),
                        "cells": len(cells),
                    }
                )
        report["final"][scorer] = {"rows": rows, "recovery": _recoveries(rows, study.baseline)}
    return report


def _cells(records: list[dict], arm: str, spec: str) -> list[dict]:
    """One arm's cells (every training seed "arm@seed") on one chip condition."""
    return [r for r in records if r["method"].rsplit("@", 1)[0] == arm and r["spec"] == spec]


def _recoveries(rows: list[dict], baseline: str) -> dict[str, dict[str, float | None]]:
    """Per noisy condition and method: (method - baseline) / (baseline clean - baseline)."""
    acc = {(r["method"], r["spec"]): r["accuracy"] for r in rows}
    clean = acc.get((baseline, "none"))
    result: dict[str, dict[str, float | None]] = {}
    for (method, spec), value in acc.items():
        if spec == "none" or method == baseline or clean is None:
            continue
        result.setdefault(spec, {})[method] = recovery(clean, acc[(baseline, spec)], value)
    return result


def _selection_table(records: list[dict]) -> list[dict]:
    rows: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        rows[(r["method"], r["spec"])].append(100 * r["accuracy"])
    return [{"arm": arm, "spec": spec, "accuracy": statistics.fmean(v)} for (arm, spec), v in rows.items()]


def report_markdown(report: dict) -> str:
    lines = [
        "# halora robustness study",
        "",
        "Selection on the validation split; everything below on the test split.",
        "",
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
            f"## Test accuracy % ({scorer} scoring), 95 % bootstrap CI, chip-seed std",
            "",
            f"Δ is the difference to {report['study']['baseline']} on the same chips, with a "
            "95 % interval paired over test items.",
            "",
            "| method (arm) | chip | accuracy | 95 % CI | Δ | Δ 95 % CI | chip std |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} ({r['arm']}) | {r['spec']} | {r['accuracy']:.1f} | "
            f"{r['ci95'][0]:.1f} … {r['ci95'][1]:.1f} | {r['delta_vs_baseline']:+.1f} | "
            f"{r['delta_ci95'][0]:+.1f} … {r['delta_ci95'][1]:+.1f} | {r['chip_std']:.1f} |"
            for r in final["rows"]
        ]
        lines += ["", "Recovery ratio (method − lora on chip) / (lora clean − lora on chip):", ""]
        for spec, ratios in final["recovery"].items():
            text = ", ".join(f"{m} {v:.2f}" if v is not None else f"{m} n/a" for m, v in ratios.items())
            lines.append(f"- {spec}: {text}")
    return "\n".join(lines) + "\n"
