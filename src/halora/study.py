"""The robustness study: which training recipe really protects an adapter on a noisy chip.

    1. select   train every arm of the grid once (training seed 0); score all arms on the
                VALIDATION split on chips at the selection noise levels; keep the best arm
                of each method (lora, noisy, reg, halora, ...)
    2. final    train each kept arm with more training seeds; score them all on the TEST
                split, on the same chips: clean, every test sigma, stuck-at faults
    3. report   mean accuracy with 95 % bootstrap intervals (over test items and training
                seeds), chip-seed spread, and the recovery ratio against plain LoRA

Settings are never tuned on the test split. Every step caches its outputs under --out,
so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from halora import files
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.lora import LoraSettings, load_adapters
from halora.models import load_model, model_label
from halora.sweep import SweepPlan, conditions_from, run_sweep
from halora.tasks import load_tasks
from halora.train import TrainSettings, resume_or_clear, train

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TEMPLATE = "gaussian:sigma={sigma},scale=tile,tile=64"


@dataclass(frozen=True)
class Arm:
    """One training recipe: a method plus TrainSettings overrides (mu, reduction, noise, ...)."""

    name: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    rank: int | None = None  # LoRA rank, when the arm changes it
    family: str = ""  # what selection compares it within (default: its method)

    @property
    def group(self) -> str:
        return self.family or self.method


@dataclass(frozen=True)
class StudySettings:
    """The grid and the protocol. A TOML file sets these under [study] and lists [[arm]]s."""

    model: str = "smollm2-135m"
    tasks: str = "default"
    train_n: int = 400
    base: dict[str, Any] = field(default_factory=dict)  # TrainSettings shared by every arm
    rank: int = 4
    arms: tuple[Arm, ...] = ()
    select_sigmas: tuple[float, ...] = (0.02,)  # validation chips used to pick each method's arm
    select_seeds: int = 2
    val_n: int = 40
    train_seeds: int = 3  # training seeds of the final comparison
    test_sigmas: tuple[float, ...] = (0.005, 0.01, 0.02, 0.03)
    saf: str = "saf:p0=0.01,p1=0.01"
    test_seeds: int = 3  # chip seeds per test condition
    test_n: int = 50
    scorers: tuple[str, ...] = ("loglik",)  # add "generate" to compare exact-answer scoring
    baseline: str = "lora"
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise UsageError(f"study arms need unique names, got {', '.join(names)}")
        if self.baseline not in {arm.group for arm in self.arms}:
            raise UsageError(f"the study needs a {self.baseline!r} arm: it is the baseline")


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySettings:
    """A study from TOML: a [study] table of StudySettings keys and [[arm]] tables."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"study file {path} does not exist")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"study file {path} is not valid TOML: {err}") from err
    study = {key.replace("-", "_"): value for key, value in data.get("study", {}).items()}
    study.update(overrides or {})
    known = {f.name for f in fields(StudySettings)} - {"arms"}
    unknown = sorted(set(study) - known)
    if unknown:
        raise UsageError(f"study file {path}: unknown [study] keys {', '.join(unknown)}")
    arms = tuple(arm for item in data.get("arm", []) for arm in _arms(item, path))
    if not arms:
        raise UsageError(f"study file {path} lists no [[arm]] tables")
    tuples = {key: tuple(value) for key, value in study.items() if isinstance(value, list)}
    return StudySettings(**{**study, **tuples}, arms=arms)


def _arms(item: dict, path: str | Path) -> list[Arm]:
    """One [[arm]] table; list values are grid axes, expanded to every combination.
    (Tuple settings such as noise_targets are written as comma-separated strings.)"""
    item = {key.replace("-", "_"): value for key, value in item.items()}
    if "method" not in item:
        raise UsageError(f"study file {path}: every [[arm]] needs a method")
    axes = {key: value for key, value in item.items() if isinstance(value, list)}
    fixed = {key: value for key, value in item.items() if key not in axes}
    arms = []
    for combo in itertools.product(*axes.values()):
        values = {**fixed, **dict(zip(axes, combo, strict=True))}
        suffix = "-".join(_axis_label(key, value) for key, value in zip(axes, combo, strict=True))
        name = "-".join(part for part in (values.pop("name", values["method"]), suffix) if part)
        arms.append(_arm(name, values, path))
    return arms


def _axis_label(key: str, value: Any) -> str:
    """A short, folder- and PEFT-safe label: noise specs by their sigma, no dots."""
    if key == "noise":
        found = re.search(r"sigma=([0-9.eE+-]+)", str(value))
        text = f"s{found.group(1)}" if found else re.sub(r"[^A-Za-z0-9]+", "_", str(value))
    elif isinstance(value, float):
        text = f"{key}{value:g}"
    else:
        text = f"{key}{value}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", text.replace(".", "_").replace(",", "+"))


def _arm(name: str, values: dict, path: str | Path) -> Arm:
    if not re.fullmatch(r"[A-Za-z0-9_+-]+", name):
        raise UsageError(f"study file {path}: arm name {name!r} may only use letters, digits, _ + -")
    method, rank, family = values.pop("method"), values.pop("rank", None), values.pop("family", "")
    unknown = sorted(set(values) - TrainSettings.keys())
    if unknown:
        raise UsageError(f"study file {path}: arm {name} has unknown keys {', '.join(unknown)}")
    settings = {
        k: tuple(part.strip() for part in v.split(",")) if k == "noise_targets" else v
        for k, v in values.items()
    }
    TrainSettings(**{**settings, "method": method})  # bad values fail now, not mid-study
    return Arm(name, method, settings, rank, family)


def _train_settings(study: StudySettings, arm: Arm, seed: int) -> TrainSettings:
    return TrainSettings(
        **{**study.base, **arm.settings, "method": arm.method, "seed": seed, "progress": False}
    )


def run_study(study: StudySettings, out: str | Path, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "study.json", _describe(study))
    tasks = load_tasks(study.tasks)
    examples = [e for task in tasks for e in task.examples("train", study.train_n)]

    log(
        f"study: {len(study.arms)} arms; selecting on the validation split at sigma "
        f"{', '.join(f'{s:g}' for s in study.select_sigmas)}"
    )
    selection_adapters = [(arm.name, _trained(study, arm, 0, examples, out, log)) for arm in study.arms]
    selection = _sweep(
        study,
        tasks,
        selection_adapters,
        out / "select",
        split="val",
        sigmas=study.select_sigmas,
        extra=(),
        seeds=study.select_seeds,
        n=study.val_n,
        scorer="loglik",
    )
    chosen = choose_arms(study, selection)
    log("chosen on validation: " + ", ".join(f"{m}: {a}" for m, a in chosen.items()))

    final_adapters = [
        (f"{arm}@{seed}", _trained(study, _arm_named(study, arm), seed, examples, out, log))
        for arm in chosen.values()
        for seed in range(study.train_seeds)
    ]
    finals = {
        scorer: _sweep(
            study,
            tasks,
            final_adapters,
            out / f"final-{scorer}",
            split="test",
            sigmas=study.test_sigmas,
            extra=(study.saf,) if study.saf else (),
            seeds=study.test_seeds,
            n=study.test_n,
            scorer=scorer,
        )
        for scorer in study.scorers
    }
    report = build_report(study, chosen, selection, finals)
    files.write_json(out / "results.json", report)
    files.write_text(out / "report.md", report_markdown(report))
    log((out / "report.md").read_text(encoding="utf-8"))
    return report


def _arm_named(study: StudySettings, name: str) -> Arm:
    return next(arm for arm in study.arms if arm.name == name)


def _trained(study: StudySettings, arm: Arm, seed: int, examples, out: Path, log) -> str:
    folder = out / "adapters" / arm.name / f"seed{seed}"
    if (folder / "adapter_model.safetensors").is_file():
        return str(folder)
    resume = resume_or_clear(folder)
    log(f"  training {arm.name} (seed {seed})")
    model, tokenizer = load_model(study.model)
    rank = arm.rank or study.rank
    train(
        model,
        tokenizer,
        examples,
        folder,
        _train_settings(study, arm, seed),
        LoraSettings(rank=rank, alpha=2.0 * rank),
        model_name=model_label(study.model),
        resume=resume,
        extra_metadata={"study_arm": asdict(arm)},
    )
    return str(folder)


def _sweep(
    study, tasks, adapters, out: Path, split: str, sigmas, extra, seeds: int, n: int, scorer: str
) -> list[dict]:
    model, tokenizer = load_model(study.model)
    model = load_adapters(model, adapters)
    plan = SweepPlan(
        conditions=tuple(conditions_from(tuple(sigmas), TEMPLATE, tuple(extra))),
        seeds=tuple(range(seeds)),
        adapters=tuple(adapters),
        tasks=tuple(t.name for t in tasks),
        eval=EvalSettings(n=n, batch_size=32, scorer=scorer, split=split, progress=True),
        model=model_label(study.model),
    )
    return run_sweep(model, tokenizer, tasks, plan, out)


def choose_arms(study: StudySettings, records: list[dict]) -> dict[str, str]:
    """The best arm of each family (its method unless set) by mean validation accuracy on
    the selection chips (ties broken by clean accuracy), in the order of the grid."""
    score: dict[str, list[float]] = defaultdict(list)
    clean: dict[str, list[float]] = defaultdict(list)
    for record in records:
        (clean if record["noise"] == "clean" else score)[record["method"]].append(record["accuracy"])
    best: dict[str, tuple[tuple[float, float], str]] = {}
    for arm in study.arms:
        key = (
            statistics.fmean(score[arm.name]) if score[arm.name] else 0.0,
            statistics.fmean(clean[arm.name]) if clean[arm.name] else 0.0,
        )
        if arm.group not in best or key > best[arm.group][0]:
            best[arm.group] = (key, arm.name)
    return {group: name for group, (_, name) in best.items()}


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


def build_report(
    study: StudySettings, chosen: dict[str, str], selection: list[dict], finals: dict[str, list[dict]]
) -> dict:
    report: dict[str, Any] = {
        "study": _describe(study),
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
                        "chip_std": _chip_std(cells),
                        "cells": len(cells),
                    }
                )
        report["final"][scorer] = {"rows": rows, "recovery": _recoveries(rows, study.baseline)}
    return report


def _cells(records: list[dict], arm: str, spec: str) -> list[dict]:
    """One arm's cells (every training seed "arm@seed") on one chip condition."""
    return [r for r in records if r["method"].rsplit("@", 1)[0] == arm and r["spec"] == spec]


def _chip_std(cells: list[dict]) -> float:
    """Std over chip seeds of the task-averaged accuracy (%), averaged over training seeds."""
    per_chip: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in cells:
        per_chip[(r["method"], r["seed"])].append(r["accuracy"])
    by_train: dict[str, list[float]] = defaultdict(list)
    for (method, _), values in per_chip.items():
        by_train[method].append(100 * statistics.fmean(values))
    spreads = [statistics.stdev(v) for v in by_train.values() if len(v) > 1]
    return statistics.fmean(spreads) if spreads else 0.0


def _recoveries(rows: list[dict], baseline: str) -> dict[str, dict[str, float | None]]:
    """Per noisy condition and method: (method - baseline) / (baseline clean - baseline)."""
    acc = {(r["method"], r["spec"]): r["accuracy"] for r in rows}
    clean = acc.get((baseline, "none"))
    result: dict[str, dict[str, float | None]] = {}
    for (method, spec), value in acc.items():
        if spec == "none" or method == baseline or clean is None:
            continue
        lost = acc[(baseline, spec)]
        ratio = (value - lost) / (clean - lost) if clean - lost > 0 else None
        result.setdefault(spec, {})[method] = ratio
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


def _describe(study: StudySettings) -> dict:
    return json.loads(json.dumps(asdict(study), default=list))
