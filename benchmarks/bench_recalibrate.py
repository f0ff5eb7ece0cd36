"""Per-chip recalibration against its baselines, on identical held-out chips.

For each source adapter (e.g. the demo's lora and halora) and each noise level, every
chip of the chosen chip set gets its own recalibrated adapter (`halora.recalibrate`),
scored on the chip it was tuned on (`+recal`) and on the next chip of the same level
(`+recal@other`: a gain that transfers is more training, not calibration). The
equal-compute baseline (`+steps`) gives the source the same extra steps with the task
loss on the same calibration items, without a chip. Optional curves: recovery against
calibration steps (snapshots of one run) and against calibration items.

Scores are sweep cells (halora.sweep's record format), cached in OUT/cells.jsonl, so a
killed run resumes; intervals are the study's hierarchical bootstrap (chips, items).

    .venv/bin/python benchmarks/bench_recalibrate.py --out /root/recal \\
        --source lora=runs/demo/adapters/lora --source halora=runs/demo/adapters/halora
"""

from __future__ import annotations

import argparse

from _common import emit, environment, log, median, set_threads
from peft import PeftModel

from halora.evaluate import EvalSettings
from halora.models import load_model
from halora.noise import GAUSSIAN_TEMPLATE
from halora.recal_sweep import (
    RecalPlan,
    RecalRunner,
    adapter_state,
    recalibration_seconds,
    run_recalibration,
)
from halora.recalibrate import RecalSettings
from halora.study.report import recalibration_table
from halora.study.stats import accuracy_ci, recovery_ci
from halora.sweep import CHIP_SETS, CLEAN
from halora.tasks import load_tasks

NAME = "bench_recalibrate"


class Bench:
    """The runner (halora.recal_sweep) on one loaded model, plus the sources by label."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sources = dict(item.split("=", 1) for item in args.source)
        model, tokenizer = load_model(args.model)
        model = PeftModel.from_pretrained(model, next(iter(self.sources.values())), is_trainable=True)
        model.eval()
        evaluation = EvalSettings(items=args.items, eval_batch_size=16, max_length=256)
        self.runner = RecalRunner(model, tokenizer, load_tasks(args.tasks), evaluation, args.out)
        first = CHIP_SETS[args.chip_set]
        self.seeds = tuple(range(first, first + args.chips))

    def source(self, label: str):
        return lambda: adapter_state(self.sources[label])


def settings_from(args, **overrides) -> RecalSettings:
    values = dict(
        steps=args.steps,
        calib_n=args.calib_n,
        loss=args.loss,
        lr=args.lr,
        max_length=96,
        precision=args.precision,
        twin_rank=args.twin_rank,
    )
    return RecalSettings(**{**values, **overrides})


def main_grid(bench: Bench, args) -> None:
    specs = tuple(GAUSSIAN_TEMPLATE.format(sigma=sigma) for sigma in args.sigmas)
    plan = RecalPlan(tuple(bench.sources.items()), specs, bench.seeds, settings_from(args), bench.runner.eval)
    run_recalibration(bench.runner, plan, log)


def losses_grid(bench: Bench, args) -> None:
    """Each loss from the first source at the first sigma: the selection of the loss."""
    selection_grid(
        bench, args, {loss: settings_from(args, loss=loss) for loss in ("task", "distill", "both")}
    )


def lrs_grid(bench: Bench, args) -> None:
    """Each learning rate with the chosen loss, first source and sigma: the selection of lr."""
    selection_grid(bench, args, {f"{args.loss}|lr{lr:g}": settings_from(args, lr=lr) for lr in args.lrs})


def selection_grid(bench: Bench, args, variants: dict[str, RecalSettings]) -> None:
    """The first source at the first sigma, clean and on every chip, and each variant of the
    recalibration tuned to each chip: cells keyed `{label}|{tag}|{spec}|{seed}`, scored as
    `{label}+recal-{tag}` (a "|" in the tag becomes "-")."""
    spec = GAUSSIAN_TEMPLATE.format(sigma=args.sigmas[0])
    label = next(iter(bench.sources))
    source, runner = bench.source(label), bench.runner
    runner.score(label, CLEAN, 0, source)
    for seed in bench.seeds:
        runner.score(label, spec, seed, source)
        for tag, settings in variants.items():
            key = f"{label}|{tag}|{spec}|{seed}"
            tuned = runner.tuned(source, key, spec, seed, settings, log=log, teacher=label)
            runner.score(f"{label}+recal-{tag.replace('|', '-')}", spec, seed, tuned, tuned_on=seed)


def twin_grid(bench: Bench, args) -> None:
    """The twin correction (halora.twin) at each of --twin-ranks alone, at the largest one
    followed by --steps gradient steps of --loss (the selection of its rank and of whether
    steps still pay), and at the largest one from each of --twin-items calibration items
    (first source, first sigma)."""
    top = max(args.twin_ranks)
    bench.runner.widen(top)  # every rank uses the first rows of one layout
    variants = {f"twin{rank}": settings_from(args, twin_rank=rank, steps=0) for rank in args.twin_ranks}
    if args.steps:
        variants[f"twin{top}+{args.loss}{args.steps}"] = settings_from(args, twin_rank=top)
    for items in args.twin_items:  # the curve against calibration items, at the largest rank
        variants[f"twin{top}-{items}items"] = settings_from(args, twin_rank=top, steps=0, calib_n=items)
    selection_grid(bench, args, variants)


def ageing_grid(bench: Bench, args) -> None:
    """The twin correction computed right after programming (the first of --times) and left
    in SRAM while the same chip ages (--time-noise at each later time; one chip's draws are
    correlated over t): the first source with and without it, on every chip and time; and
    the twin recomputed at each later time (+twin@t: recalibrating as the chip ages)."""
    from halora.noise.ageing import at_times

    specs = at_times(args.time_noise, ",".join(args.times))
    label = next(iter(bench.sources))
    source, runner = bench.source(label), bench.runner
    settings = settings_from(args, steps=0, twin_rank=args.twin_rank or 64)
    runner.score(label, CLEAN, 0, source)
    for seed in bench.seeds:
        tuned = runner.tuned(source, f"{label}|ageing|{specs[0]}|{seed}", specs[0], seed, settings, log=log)
        for spec in specs:
            runner.score(label, spec, seed, source)
            runner.score(f"{label}+twin@{args.times[0]}", spec, seed, tuned, tuned_on=seed)
        for spec in specs[1:]:  # the twin recomputed at the time it is scored (periodic recalibration)
            again = runner.tuned(source, f"{label}|ageing|{spec}|{seed}", spec, seed, settings, log=log)
            runner.score(f"{label}+twin@t", spec, seed, again, tuned_on=seed)


def curves_grid(bench: Bench, args) -> None:
    """Recovery against calibration steps (snapshots of one run) and items, first source."""
    spec = GAUSSIAN_TEMPLATE.format(sigma=args.sigmas[0])
    label = next(iter(bench.sources))
    source, runner = bench.source(label), bench.runner
    top = max(args.curve_steps)
    for seed in bench.seeds:
        longest = settings_from(args, steps=top)
        key = f"{label}|curve{top}|{spec}|{seed}"
        tuned = runner.tuned(
            source, key, spec, seed, longest, tuple(args.curve_steps), log=log, teacher=label
        )
        for step in args.curve_steps:
            state = (lambda t=tuned, s=step: t(s)) if step != top else tuned
            runner.score(f"{label}+recal-{step}steps", spec, seed, state, tuned_on=seed)
        for items in args.curve_items:
            settings = settings_from(args, calib_n=items)
            tuned_n = runner.tuned(
                source, f"{label}|items{items}|{spec}|{seed}", spec, seed, settings, log=log, teacher=label
            )
            runner.score(f"{label}+recal-{items}items", spec, seed, tuned_n, tuned_on=seed)


def summarise(bench: Bench, args) -> dict:
    """Every label's accuracy and recovery of the first source's drop; for the main grid,
    the recalibration table of the study's report (own vs other chip, equal compute)."""
    cells = list(bench.runner.cache.records.values())
    baseline = next(iter(bench.sources))
    by: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        by.setdefault((cell["method"], cell["spec"]), []).append(cell)
    summary: dict = {"accuracy": {}, "recovery": {}}
    for (method, spec), group in sorted(by.items()):
        estimate = accuracy_ci(group).to_json()
        summary["accuracy"][f"{method} | {spec}"] = estimate | {"chips": sorted({c["seed"] for c in group})}
        base, clean = by.get((baseline, spec)), by.get((baseline, CLEAN))
        if spec != CLEAN and method != baseline and base and clean:
            summary["recovery"][f"{method} | {spec}"] = recovery_ci(group, base, clean).to_json()
    if args.grid == "main":
        summary["table"] = recalibration_table(cells, list(bench.sources), baseline)
    seconds = recalibration_seconds(bench.runner)
    summary["seconds_per_recalibration"] = {"median": median(seconds), "n": len(seconds)}
    summary["runs"] = list(bench.runner.runs.values())
    return summary


GRIDS = {
    "main": main_grid,
    "losses": losses_grid,
    "lrs": lrs_grid,
    "curves": curves_grid,
    "twin": twin_grid,
    "ageing": ageing_grid,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="default")
    parser.add_argument("--source", action="append", required=True, help="LABEL=ADAPTER_DIR")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.03])
    parser.add_argument("--chips", type=int, default=5)
    parser.add_argument("--chip-set", default="test", choices=tuple(CHIP_SETS))
    parser.add_argument("--items", type=int, default=16, help="test items per task")
    parser.add_argument("--steps", type=int, default=20, help="gradient steps per chip (0: twin alone)")
    parser.add_argument(
        "--twin-rank", type=int, default=0, help="closed-form twin correction of this rank first (0: off)"
    )
    parser.add_argument("--twin-ranks", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--twin-items", type=int, nargs="*", default=[], help="twin grid: items curve")
    parser.add_argument("--tag", default="", help="results file suffix (runs side by side)")
    parser.add_argument("--times", nargs="+", default=["1s", "1h", "1d", "1w", "1mo"], help="ageing grid")
    parser.add_argument("--time-noise", default="cmo:accept=0.2+cmo_read", help="ageing grid: chip")
    parser.add_argument("--calib-n", type=int, default=128)
    # distill won the loss selection on validation chips (bench_recalibrate_losses.json)
    parser.add_argument("--loss", default="distill", choices=("task", "distill", "both"))
    # 3e-3 won the lr selection on validation chips (bench_recalibrate_lrs.json)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--grid", default="main", choices=tuple(GRIDS))
    parser.add_argument("--curve-steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--curve-items", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="bf16 autocast (a CPU with bf16 units); use its own --out, cells are keyed without it",
    )
    parser.add_argument(
        "--calibrate-drop",
        type=float,
        default=0,
        help="first find the sigma at which the first source loses this many points (halora.calibrate: "
        "calibration chips, val split) and add it to --sigmas",
    )
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads)
    calibration = calibrated_level(args) if args.calibrate_drop else None
    bench = Bench(args)
    GRIDS[args.grid](bench, args)
    emit(NAME + ("" if args.grid == "main" else f"_{args.grid}") + (f"_{args.tag}" if args.tag else ""), {
        "settings": vars(args), "environment": environment(),
        "calibration": calibration, **summarise(bench, args)})  # fmt: skip


def calibrated_level(args) -> dict:
    """The model-calibrated level of the first source, put first in args.sigmas."""
    from pathlib import Path

    from halora.calibrate import calibrate_sigma

    label, folder = args.source[0].split("=", 1)
    tasks, out = load_tasks(args.tasks), Path(args.out) / "calibrate"
    found = calibrate_sigma(args.model, tasks, (label, folder), args.calibrate_drop, out, log=log)
    args.sigmas = [found.sigma, *(sigma for sigma in args.sigmas if sigma != found.sigma)]
    return found.to_json()


if __name__ == "__main__":
    main()
