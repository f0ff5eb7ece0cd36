"""Seconds per training step of `halora` and `lora` (and `noisy`, `reg`) on SmolLM2-135M.

Every method trains a fresh SmolLM2-135M through `halora.train.train` on the same
examples, batches and seed; runs are interleaved (lora, noisy, reg, halora, then the
reverse order, ...) so that other load on the machine hits every method alike. Model
loading is excluded: two clocks hooked into the Trainer record each step's begin and end.

    step_s        on_step_begin -> on_step_end: forward, backward, reg term, optimizer;
                  wall seconds, and CPU seconds of this process (*_cpu_s), which other load
                  on a shared machine barely moves: the steadier ratio there
    draw_s        the noise re-draw done at the start of a step every K steps (chip.reprogram),
                  measured inside the run; it is outside step_s and added back amortised:
                  ratio_k400 = halora/lora step ratio + draw / (400 * lora step)  (the paper's K)
                  ratio_k20  = halora/lora step ratio + draw / (20 * lora step)   (a short run's K)
                  the step ratio pairs each halora step with lora's step on the same batch
    reg_s         halora_regularizer(lora_factors(model)) forward + backward on the trained
                  PEFT model, timed on its own: its share of a halora step

Target: ratio_k400 <= 1.05 (meets_target on wall time, meets_target_cpu on CPU time).
The first two steps of every run are warm-up and dropped.

    .venv/bin/python benchmarks/bench_train.py            # all five methods, about 8-9 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --quick    # lora and halora only, about 2-3 min
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path

import torch
from _common import add_threads_argument, emit, environment, log, median, rounded, set_threads
from transformers import TrainerCallback

import halora.train as halora_train
from halora.lora import LoraSettings, halora_regularizer, lora_factors
from halora.models import SMOLLM2, load_model
from halora.tasks import Example, load_tasks
from halora.train import TrainSettings, train

NAME = "bench_train"
TARGET_RATIO = 1.05
PAPER_K, SHORT_K = 400, 20
CLOCKS = ("wall", "cpu")
SUFFIX = {"wall": "_s", "cpu": "_cpu_s"}


def now() -> tuple[float, float]:
    """(wall, CPU) seconds. CPU time is what this process computed: other load on the
    machine barely moves it, so its ratios are the steadier ones on a shared machine."""
    return time.perf_counter(), time.process_time()


class Clock(TrainerCallback):
    """(wall, CPU) stamps of train begin, step begin and step end."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def on_train_begin(self, args, state, control, **kwargs):
        self.events["train_begin"].append(now())

    def on_step_begin(self, args, state, control, **kwargs):
        self.events["step_begin"].append(now())

    def on_step_end(self, args, state, control, **kwargs):
        self.events["step_end"].append(now())


def spans(starts: list[tuple[float, float]], ends: list[tuple[float, float]]) -> dict[str, list[float]]:
    return {
        clock: [end[i] - start[i] for start, end in zip(starts, ends, strict=True)]
        for i, clock in enumerate(CLOCKS)
    }


@contextmanager
def clocked_trainer() -> Iterator[tuple[Clock, Clock]]:
    """Make train() use a Trainer with one clock before every other callback and one after:
    the time between them at a step's begin is what the callbacks (the noise re-draw) took."""
    first, last = Clock(), Clock()
    original = halora_train.HaloraTrainer

    class ClockedTrainer(original):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.callback_handler.callbacks.insert(0, first)
            self.callback_handler.callbacks.append(last)  # add_callback warns of a 2nd Clock

    halora_train.HaloraTrainer = ClockedTrainer
    try:
        yield first, last
    finally:
        halora_train.HaloraTrainer = original


def training_examples(per_task: int) -> tuple[list[Example], str]:
    """The default task suite's training items, or a fixed list if the tasks cannot load."""
    try:
        examples = [e for task in load_tasks("default") for e in task.examples("train", per_task)]
        return examples, f"load_tasks('default'), {per_task} train items per task"
    except Exception as err:  # noqa: BLE001 (tasks are optional for a timing benchmark)
        log(f"load_tasks('default') failed ({err}); using a fixed arithmetic list")
        examples = [
            Example(task="add", prompt=f"Question: what is {a} + {b}?\nAnswer:", answer=f" {a + b}")
            for a in range(12, 20)
            for b in range(31, 39)
        ]
        return examples, "fixed arithmetic list"


def time_regularizer(model: torch.nn.Module, repeats: int, reduction: str) -> dict[str, float]:
    """Median (wall, CPU) seconds of lora_factors + halora_regularizer forward + backward."""
    params = [p for p in model.parameters() if p.requires_grad]
    starts, ends = [], []
    for index in range(repeats + 3):  # 3 untimed warm-up calls
        start = now()
        halora_regularizer(lora_factors(model), reduction).backward()
        if index >= 3:
            starts.append(start)
            ends.append(now())
        for p in params:
            p.grad = None
    return {clock: median(values) for clock, values in spans(starts, ends).items()}


def one_run(
    method: str, settings: TrainSettings, examples: list[Example], warmup: int, reg_repeats: int
) -> dict:
    model, tokenizer = load_model(SMOLLM2)  # train() wraps the model it is given: a fresh one each run
    with (
        tempfile.TemporaryDirectory() as tmp,
        clocked_trainer() as (first, last),
        redirect_stdout(sys.stderr),
    ):  # the Trainer prints its logs: keep stdout for the JSON
        result = train(
            model, tokenizer, examples, Path(tmp) / method, settings, LoraSettings(), model_name=SMOLLM2
        )
    steps = spans(last.events["step_begin"], last.events["step_end"])
    callbacks = spans(first.events["step_begin"], last.events["step_begin"])
    program = spans(first.events["train_begin"], last.events["train_begin"])
    redraw_steps = [step for step, _ in result.draws if step > 0]
    reg = time_regularizer(model, reg_repeats, settings.reduction) if settings.regularizes else {}
    run: dict = {
        "final_loss": round(result.final_loss, 4),
        "period_s": [b[0] - a[0] for a, b in pairwise(first.events["step_begin"][warmup:])],
    }
    for clock in CLOCKS:
        suffix = SUFFIX[clock]
        run[f"step{suffix}"] = steps[clock][warmup:]
        if settings.injects_noise:
            run[f"first_program{suffix}"] = program[clock][0]
            run[f"draw{suffix}"] = [callbacks[clock][step] for step in redraw_steps]
        if reg:
            run[f"reg{suffix}"] = reg[clock]
    return run


def summarise(runs: list[dict]) -> dict:
    """Medians over one method's runs: steps and draws pooled, one value per run otherwise."""
    entry: dict = {"final_loss": [run["final_loss"] for run in runs]}
    for key in runs[0]:
        if key.startswith(("step", "draw", "period")):
            entry[key] = round(median([value for run in runs for value in run[key]]), 4)
        elif key.startswith(("first_program", "reg")):
            entry[key] = round(median([run[key] for run in runs]), 5)
    entry["per_run_step_s"] = [round(median(run["step_s"]), 4) for run in runs]
    entry["raw_step_s"] = [rounded(run["step_s"], 3) for run in runs]
    return entry


def paired_ratio(runs: dict[str, list[dict]], a: str, b: str, key: str = "step_s") -> float:
    """Median over (repeat, step) of a's step over b's same step: the same batch, so the same
    shapes, which takes the batch-to-batch spread out of the ratio."""
    return median(
        [
            x / y
            for run_a, run_b in zip(runs[a], runs[b], strict=True)
            for x, y in zip(run_a[key], run_b[key], strict=True)
        ]
    )


def compare(runs: dict[str, list[dict]], methods: dict[str, dict], clock: str) -> dict:
    """halora against lora on one clock, with the re-draw amortised at K = 400 and K = 20."""
    suffix = SUFFIX[clock]
    key = f"step{suffix}"
    ratio = paired_ratio(runs, "halora", "lora", key)
    base, step = methods["lora"][key], methods["halora"][key]
    draw, reg = methods["halora"][f"draw{suffix}"], methods["halora"][f"reg{suffix}"]
    return {
        "lora_step_s": base,
        "halora_step_s": step,
        "draw_s": draw,
        "reg_s": reg,
        "ratio_step_only": round(ratio, 4),
        "ratio_k400": round(ratio + draw / PAPER_K / base, 4),
        "ratio_k20": round(ratio + draw / SHORT_K / base, 4),
        "ratio_of_median_steps": round(step / base, 4),
        "reg_share_of_halora_step": round(reg / step, 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lora and halora only, shorter runs")
    parser.add_argument("--methods", nargs="+", choices=halora_train.METHODS, help="methods to compare")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 9, quick 8)")
    parser.add_argument("--repeats", type=int, help="runs per method, interleaved (default 3, quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of a run left out (default 2)")
    parser.add_argument(
        "--redraw-every",
        type=int,
        default=5,
        help="K used in the runs, small so that re-draws happen and are timed (default 5)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--per-task", type=int, default=16, help="training items per default task")
    parser.add_argument("--reg-repeats", type=int, default=30, help="timed calls of the reg term per run")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes
    methods = args.methods or (("lora", "halora") if args.quick else halora_train.METHODS)
    steps = args.steps or (8 if args.quick else 9)
    repeats = args.repeats or (2 if args.quick else 3)
    if steps <= max(args.warmup + 1, args.redraw_every):
        parser.error("--steps must exceed --warmup + 1 and --redraw-every (a re-draw must be timed)")
    env = environment()
    examples, data = training_examples(args.per_task)
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    for repeat in range(repeats):
        for method in methods if repeat % 2 == 0 else methods[::-1]:
            log(f"repeat {repeat + 1}/{repeats}: {method}, {steps} steps")
            settings = TrainSettings(
                method=method,
                steps=steps,
                batch_size=args.batch_size,
                max_length=args.max_length,
                redraw_every=args.redraw_every,
                logging_steps=5,
                save_steps=steps + 1,
                progress=False,
            )
            runs[method].append(one_run(method, settings, examples, args.warmup, args.reg_repeats))
            wall, cpu = median(runs[method][-1]["step_s"]), median(runs[method][-1]["step_cpu_s"])
            log(f"  median step {wall:.3f} s wall, {cpu:.3f} s CPU")
    per_method = {method: summarise(method_runs) for method, method_runs in runs.items()}
    if "lora" in methods:  # noisy/lora and reg/lora are controls: same compute, or + the reg term
        for method in per_method:
            per_method[method]["step_ratio_vs_lora"] = round(paired_ratio(runs, method, "lora"), 4)
            per_method[method]["step_ratio_vs_lora_cpu"] = round(
                paired_ratio(runs, method, "lora", "step_cpu_s"), 4
            )
    defaults = TrainSettings()
    summary: dict = {}
    if {"lora", "halora"} <= set(methods):
        wall, cpu = compare(runs, per_method, "wall"), compare(runs, per_method, "cpu")
        summary = {
            "ratio_k400": wall["ratio_k400"],
            "ratio_k400_cpu": cpu["ratio_k400"],
            "reg_share_of_halora_step": wall["reg_share_of_halora_step"],
            "meets_target": wall["ratio_k400"] <= TARGET_RATIO,
            "meets_target_cpu": cpu["ratio_k400"] <= TARGET_RATIO,
            "wall": wall,
            "cpu": cpu,
            "first_program_s": per_method["halora"]["first_program_s"],
        }
        w, c = wall, cpu
        summary["note"] = (
            f"halora/lora seconds per step = {w['ratio_k400']:.3f} wall, {c['ratio_k400']:.3f} CPU, "
            f"with the noise re-drawn every {PAPER_K} steps ({w['ratio_k20']:.3f} / {c['ratio_k20']:.3f} "
            f"every {SHORT_K}; {w['ratio_step_only']:.3f} / {c['ratio_step_only']:.3f} without re-draws); "
            f"the reg term is {100 * w['reg_share_of_halora_step']:.2f} % of a halora step "
            f"({1e3 * w['reg_s']:.1f} ms of {w['halora_step_s']:.2f} s); a re-draw takes {w['draw_s']:.2f} s"
        )
        log(summary["note"])
    emit(
        NAME,
        {
            "benchmark": NAME,
            "model": SMOLLM2,
            "quick": args.quick,
            "target_ratio": TARGET_RATIO,
            "summary": summary,
            "methods": per_method,
            "settings": {
                "methods": list(methods),
                "steps": steps,
                "warmup_steps_dropped": args.warmup,
                "repeats": repeats,
                "batch_size": args.batch_size,
                "max_length": args.max_length,
                "redraw_every_in_run": args.redraw_every,
                "data": data,
                "examples": len(examples),
                "lora": asdict(LoraSettings()),
                "noise": defaults.train_noise,
                "mu": defaults.mu,
            },
            "environment": env,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
