"""Running the study: select each method's arm on validation chips, compare on test chips.

    1. select   train every arm once (training seed 0); score all arms on the VALIDATION
                split on chips at the selection noise levels; keep the best arm of each
                method family (lora, noisy, reg, halora, ...)
    2. final    train each kept arm with more training seeds; score them all on the TEST
                split, on the same chips: clean, every test sigma, stuck-at faults, and
                (times set) the time-dependent device at every time, with and/or without
                drift compensation
    2b. recal   (recal_steps or recal_twin_rank > 0) each kept arm's seed-0 adapter tuned to every test chip
                of the recalibration levels, scored there and on the next chip, beside the
                same extra steps without a chip (halora.recal_sweep)
    3. report   mean accuracy with 95 % bootstrap intervals (over chips, training seeds and
                test items), chip-seed spread, and the recovery ratio against plain LoRA with
                its interval (only where LoRA's drop is significant); the chips used

Settings are never tuned on the test split. Every step caches its outputs under --out,
so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from halora import files
from halora.calibrate import Calibration, calibrate_sigma
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.pipeline import Arm, Log, score, train_arm, training_examples
from halora.study.grid import StudySettings
from halora.study.report import build_report, plot_time, report_markdown
from halora.sweep import ChipGrid
from halora.tasks import Task, load_tasks


def run_study(study: StudySettings, out: str | Path, log: Log = print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "study.json", study.describe())
    tasks = load_tasks(study.tasks)
    examples = training_examples(tasks, study.train_n)

    def trained(arm: Arm, seed: int) -> str:
        folder = out / "adapters" / arm.name / f"seed{seed}"
        settings = arm.train_settings(study.base, seed)
        return train_arm(
            study.model,
            settings,
            study.rank_of(arm),
            examples,
            folder,
            log,
            label=f"{arm.name} seed {seed}",
            extra_metadata={"study_arm": asdict(arm)},
        )

    log(
        f"study: {len(study.arms)} arms; selecting on the validation split at sigma "
        f"{', '.join(f'{s:g}' for s in study.select_sigmas)}"
    )
    selection_adapters = [(arm.name, trained(arm, 0)) for arm in study.arms]
    calibration = _calibrate(study, tasks, selection_adapters, out, log)
    extra_sigma = (calibration.sigma,) if calibration else ()
    selection_grid = ChipGrid(
        sigmas=(*study.select_sigmas, *extra_sigma), chips=study.select_chips, chip_set="validation"
    )
    selection = _score(study, tasks, selection_adapters, selection_grid, out / "select", "val", "loglik")
    chosen = choose_arms(study, selection)
    log("chosen on validation: " + ", ".join(f"{m}: {a}" for m, a in chosen.items()))

    final_adapters = [
        (f"{name}@{seed}", trained(study.arm_named(name), seed))
        for name in chosen.values()
        for seed in range(study.train_seeds)
    ]
    test_grid = ChipGrid(
        sigmas=(*study.test_sigmas, *extra_sigma),
        extra_noise=(study.saf,) if study.saf else (),
        chips=study.test_chips,
        times=study.times,
        time_noise=study.time_noise,
        compensate=study.compensate,
    )
    for note in test_grid.time_notes():
        log(f"note: {note}")
    finals = {
        scorer: _score(study, tasks, final_adapters, test_grid, out / f"final-{scorer}", "test", scorer)
        for scorer in study.scorers
    }
    report = build_report(study, chosen, selection, finals)
    report["calibration"] = calibration.to_json() if calibration else None
    if study.recalibrates:
        report["recalibration"] = _recalibrate(study, tasks, chosen, final_adapters, extra_sigma, out, log)
    files.write_json(out / "results.json", report)
    files.write_text(out / "report.md", report_markdown(report))
    plot_time(report, out)
    log((out / "report.md").read_text(encoding="utf-8"))
    return report


def _recalibrate(
    study: StudySettings,
    tasks: list[Task],
    chosen: dict[str, str],
    final_adapters: list[tuple[str, str]],
    extra_sigma: tuple[float, ...],
    out: Path,
    log: Log,
) -> dict:
    """Each kept arm's seed-0 adapter tuned to every test chip of the recalibration levels."""
    from halora.noise import GAUSSIAN_TEMPLATE
    from halora.recal_sweep import RecalPlan, recalibrate_sources
    from halora.recalibrate import RecalSettings
    from halora.study.report import recalibration_table

    folders = dict(final_adapters)
    families = study.recal_from or tuple(chosen)
    sources = tuple((f"{chosen[f]}@0", folders[f"{chosen[f]}@0"]) for f in families if f in chosen)
    if not sources:
        raise UsageError(f"recal_from {', '.join(families)}: no such kept family ({', '.join(chosen)})")
    sigmas = (*study.recal_sigmas, *extra_sigma)
    settings = RecalSettings(
        steps=study.recal_steps, calib_n=study.recal_calib_n, loss=study.recal_loss,
        max_length=study.base.get("max_length", 96), twin_rank=study.recal_twin_rank,
    )  # fmt: skip
    evaluation = EvalSettings(items=study.test_items, eval_batch_size=32, scorer="loglik")
    specs = tuple(GAUSSIAN_TEMPLATE.format(sigma=sigma) for sigma in sigmas)
    seeds = ChipGrid(chips=study.test_chips).seeds
    plan = RecalPlan(sources, specs, seeds, settings, evaluation)
    records = recalibrate_sources(study.model, tasks, plan, out / "recal", log)
    baseline = f"{chosen[study.baseline]}@0"
    return recalibration_table(records, [label for label, _ in sources], baseline, study.bootstrap)


def _calibrate(study: StudySettings, tasks: list[Task], adapters, out: Path, log: Log) -> Calibration | None:
    """The model-calibrated noise level, searched with the baseline's seed-0 adapter."""
    if study.calibrate_drop <= 0:
        return None
    baseline = next(arm for arm in study.arms if arm.group == study.baseline)
    folder = dict(adapters)[baseline.name]
    log(f"calibrating: the sigma at which {baseline.name} loses {study.calibrate_drop:g} points")
    calibration = calibrate_sigma(
        study.model,
        tasks,
        (baseline.name, folder),
        study.calibrate_drop,
        out / "calibrate",
        chips=study.calibrate_chips,
        items=study.val_items,
        log=log,
    )
    log(f"calibrated level: sigma {calibration.sigma:.4g} (drop {calibration.drop:.1f} points)")
    return calibration


def _score(
    study: StudySettings, tasks: list[Task], adapters, grid: ChipGrid, out: Path, split: str, scorer: str
) -> list[dict]:
    items = study.val_items if split == "val" else study.test_items
    evaluation = EvalSettings(items=items, eval_batch_size=32, scorer=scorer, split=split, progress=True)
    records, _ = score(study.model, tasks, adapters, grid, evaluation, out, study.converters)
    return records


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
