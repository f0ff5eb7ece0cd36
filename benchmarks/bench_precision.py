"""fp32 against bf16 autocast on this CPU: seconds per training step, items per second of
scoring, and whether bf16 reaches the same accuracy, side by side in one run.

A training step is a SmolLM2-135M + LoRA forward, backward and AdamW step on a batch of
8 x 96 tokens (the demo's); scoring is the default suite's log-likelihood multiple choice.
Runs alternate fp32 / bf16 so other load hits both alike; the first step is warm-up.

bf16 is measured only where the CPU has bf16 matrix units (halora.precision), unless
--force, which measures the emulated path that `--precision bf16` refuses.

    .venv/bin/python benchmarks/bench_precision.py [--adapter runs/demo/adapters/lora]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import add_threads_argument, emit, environment, log, median, set_threads
from peft import PeftModel

from halora.evaluate import EvalSettings, evaluate_task
from halora.lora import LoraSettings, attach_lora
from halora.models import SMOLLM2, load_model
from halora.precision import cpu_bf16_units
from halora.tasks import load_tasks

NAME = "bench_precision"


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def step_seconds(model, batch, precision: str, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        with autocast(precision):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return times[1:]


def scoring(model, tokenizer, tasks, items: int, precision: str) -> tuple[float, float]:
    """(task-averaged accuracy, items per second)."""
    settings = EvalSettings(items=items)
    started = time.perf_counter()
    with autocast(precision):
        scores = [evaluate_task(model, tokenizer, task, settings) for task in tasks]
    seconds = time.perf_counter() - started
    return sum(s.accuracy for s in scores) / len(scores), sum(s.n for s in scores) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", help="adapter to score (default: a fresh LoRA, i.e. the base model)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per precision and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--items", type=int, default=16, help="scored items per task")
    parser.add_argument("--force", action="store_true", help="measure bf16 even without bf16 units")
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    units = cpu_bf16_units()
    result = {"bf16_units": units, "environment": environment(), "settings": vars(args)}
    precisions = ["fp32"] + (["bf16"] if units or args.force else [])
    if len(precisions) == 1:
        result["bf16"] = (
            "not measured: this CPU has no bf16 matrix units (--force measures the emulated path)"
        )
    model, tokenizer = load_model(SMOLLM2)
    model = (
        PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
        if args.adapter
        else attach_lora(model, LoraSettings())
    )
    torch.manual_seed(0)
    ids = torch.randint(0, tokenizer.vocab_size, (8, 96))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    steps: dict[str, list[float]] = {p: [] for p in precisions}
    for round_ in range(args.rounds):
        for precision in precisions if round_ % 2 == 0 else precisions[::-1]:
            model.train()
            steps[precision] += step_seconds(model, batch, precision, args.steps)
            log(f"round {round_} {precision}: {median(steps[precision]):.2f} s/step")
    model.eval()
    tasks = load_tasks("default")
    for precision in precisions:
        accuracy, rate = scoring(model, tokenizer, tasks, args.items, precision)
        result[precision] = {
            "step_s": round(median(steps[precision]), 3),
            "steps_timed": len(steps[precision]),
            "accuracy": round(100 * accuracy, 2),
            "items_per_s": round(rate, 2),
        }
        log(f"{precision}: {result[precision]}")
    if "bf16" in steps:
        result["bf16_speedup_step"] = round(result["fp32"]["step_s"] / result["bf16"]["step_s"], 3)
        result["bf16_speedup_scoring"] = round(
            result["bf16"]["items_per_s"] / result["fp32"]["items_per_s"], 3
        )
        result["accuracy_gap_points"] = round(result["bf16"]["accuracy"] - result["fp32"]["accuracy"], 2)
    emit(NAME, result)


if __name__ == "__main__":
    main()
