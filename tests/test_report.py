import json

import numpy as np
import pytest

from halora.pipeline import Arm
from halora.report import (
    AVERAGE,
    markdown_summary,
    plot_sweep,
    recovery_estimate,
    recovery_ratio,
    summary_rows,
    write_results,
)
from halora.study import StudySettings, build_report, report_markdown

P_CORRECT = {"lora": {"clean": 0.8, "g": 0.4}, "halora": {"clean": 0.8, "g": 0.7}}


def cell(method, spec, chip, task, p, rng):
    items = "".join("1" if x else "0" for x in rng.random(40) < p)
    clean = spec == "none"
    return {
        "method": method,
        "task": task,
        "noise": "clean" if clean else "gaussian",
        "spec": spec,
        "sigma": 0.0 if clean else 0.02,
        "seed": chip,
        "items": items,
        "n": len(items),
        "accuracy": items.count("1") / len(items),
    }


def sweep_records(chips=3, methods=("lora", "halora"), training_seeds=None):
    """Cells of a sweep: the clean reference (one chip) and sigma=0.02 on `chips` chips."""
    rng = np.random.default_rng(0)
    records = []
    for method in methods:
        labels = [f"{method}@{s}" for s in range(training_seeds)] if training_seeds else [method]
        for label in labels:
            for spec, seeds in (("none", [0]), ("g", range(chips))):
                p = P_CORRECT[method]["clean" if spec == "none" else "g"]
                records += [cell(label, spec, chip, task, p, rng) for chip in seeds for task in ("a", "b")]
    return records


def test_summary_average_has_an_interval_around_its_mean():
    rows = summary_rows(sweep_records(), resamples=300)
    for row in rows:
        average = row["tasks"][AVERAGE]
        assert set(average) == {"mean", "std", "low", "high"}
        assert average["low"] <= average["mean"] <= average["high"]
        assert set(row["tasks"]["a"]) == {"mean", "std"}
    no_items = [dict(r, items="") for r in sweep_records()]
    assert summary_rows(no_items)[0]["tasks"][AVERAGE]["low"] is None  # older records: no interval


def test_markdown_summary_shows_intervals_and_recovery():
    text = markdown_summary(sweep_records(), "t")
    line = next(line for line in text.splitlines() if line.startswith("| lora | sigma=0.02 | 3 |"))
    average, acc_norm = line.rstrip(" |").rsplit("| ", 2)[1:]
    assert acc_norm.strip() == "–"  # these cells carry no per-item acc_norm
    mean, interval = average.strip().split(" ", 1)
    low, high = (float(x) for x in interval.strip("[]").split(", "))
    assert low <= float(mean) <= high and "±" in line  # per-task columns keep mean ± std
    assert "- halora on sigma=0.02: " in text and "[" in text.split("- halora on sigma=0.02: ")[1]


def test_recovery_estimate_matches_recovery_ratio():
    records = sweep_records()
    estimate = recovery_estimate(records, "sigma=0.02", resamples=500)
    assert estimate["value"] == pytest.approx(recovery_ratio(summary_rows(records), "sigma=0.02"))
    assert estimate["drop_significant"] and estimate["low"] < estimate["value"] < estimate["high"]
    assert recovery_estimate(records, "sigma=0.5") is None
    clean_lora = [r for r in records if r["method"] == "lora" and r["spec"] == "none"]
    no_drop = [r for r in records if not (r["method"] == "lora" and r["spec"] == "g")]
    no_drop += [dict(r, spec="g", noise="gaussian", sigma=0.02, seed=c) for r in clean_lora for c in range(3)]
    assert recovery_estimate(no_drop, "sigma=0.02", resamples=300)["drop_significant"] is False
    assert "- halora on sigma=0.02: n/a (lora's drop is not significant)" in markdown_summary(no_drop, "t")


def test_results_json_and_plot_carry_the_intervals(tmp_path):
    records = sweep_records(chips=2)
    write_results(tmp_path, records, {"title": "t"})
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert all(row["tasks"][AVERAGE]["low"] is not None for row in summary)
    plot_sweep(records, tmp_path)
    assert (tmp_path / "accuracy_vs_sigma.png").read_bytes()[:4] == b"\x89PNG"


def study_report():
    study = StudySettings(arms=(Arm("lora", "lora"), Arm("halora", "halora")), bootstrap=300)
    chosen = {"lora": "lora", "halora": "halora"}
    records = sweep_records(training_seeds=2)
    selection = [dict(r, seed=r["seed"] + 1000) for r in records if r["method"].endswith("@0")]
    selection = [dict(r, method=r["method"].split("@")[0]) for r in selection]
    return build_report(study, chosen, selection, {"loglik": records})


def test_study_rows_carry_intervals_and_recovery():
    report = study_report()
    assert report["chips"]["test"] == {"g": [0, 1, 2]}
    assert report["chips"]["selection"] == {"g": [1000, 1001, 1002]}
    rows = {(r["method"], r["spec"]): r for r in report["final"]["loglik"]["rows"]}
    for row in rows.values():
        assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
        assert row["delta_ci95"][0] <= row["delta_vs_baseline"] <= row["delta_ci95"][1]
        assert row["chip_std"] >= 0
    assert rows[("lora", "g")]["delta_ci95"] == [0.0, 0.0]  # the baseline against itself
    assert rows[("lora", "g")]["recovery"] is None and rows[("halora", "none")]["recovery"] is None
    recovery = rows[("halora", "g")]["recovery"]
    assert recovery["drop_significant"] and recovery["low"] < recovery["value"] < recovery["high"]
    assert report["final"]["loglik"]["recovery"] == {"g": {"halora": recovery}}
    json.dumps(report, allow_nan=False)  # no infinities or NaN in results.json


def test_study_markdown_shows_each_number_with_its_interval():
    report = study_report()
    text = report_markdown(report)
    row = next(r for r in report["final"]["loglik"]["rows"] if r["method"] == "halora" and r["spec"] == "g")
    low, high = row["ci95"]
    assert f"{row['accuracy']:.1f} [{low:.1f}, {high:.1f}]" in text
    assert f"{row['recovery']['value']:.2f} [" in text
    assert "- test, g: 0, 1, 2" in text and "- selection, g: 1000, 1001, 1002" in text
    row["recovery"] = dict(row["recovery"], drop_significant=False)
    assert "n/a (lora's drop is not significant)" in report_markdown(report)


def test_acc_norm_is_reported_beside_acc_with_its_interval():
    records = [dict(r, items_norm=r["items"][::-1]) for r in sweep_records()]
    rows = summary_rows(records, resamples=200)
    for row in rows:
        norm = row["acc_norm"]
        assert norm["low"] <= norm["mean"] <= norm["high"]
        assert norm["mean"] == pytest.approx(row["tasks"][AVERAGE]["mean"])  # same items, reversed
    assert summary_rows(sweep_records(), resamples=50)[0]["acc_norm"] is None
