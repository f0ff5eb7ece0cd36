"""Evaluation on a programmed chip against the clean model, SmolLM2-135M + a LoRA adapter.

Throughput: the default suite's test items scored by log-likelihood (the sweep's hot path),
clean and programmed (tile-64 Gaussian sigma 0.02) alternately, several rounds; tokens per
second from the tokens the model processed (a prompt shared by its options counts once),
and items per second. Target: programmed / clean >= 0.9. Programming
happens before the timed region: a chip is programmed once and then evaluated many times.

Peak memory: fresh subprocesses, each loads the model + adapter, (programs a chip,)
evaluates the same items, and reports ru_maxrss. Target: programmed / clean <= 1.25.

    .venv/bin/python benchmarks/bench_eval.py            # about 3 min on 2 cores
    .venv/bin/python benchmarks/bench_eval.py --quick
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _common import add_threads_argument, emit, environment, log, median, rounded, set_threads

from halora.cim import Chip
from halora.evaluate import EvalSettings, evaluate_task
from halora.lora import LoraSettings, attach_lora
from halora.models import SMOLLM2, load_model
from halora.tasks import load_tasks

NAME = "bench_eval"
SPEC = "gaussian:sigma=0.02,scale=tile,tile=64"


def model_with_adapter():
    """SmolLM2 with a fresh rank-4 LoRA (B drawn non-zero, so the adapter path does work)."""
    import torch

    model, tokenizer = load_model(SMOLLM2)
    torch.manual_seed(0)
    model = attach_lora(model, LoraSettings(rank=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    model.eval()
    return model, tokenizer


def score_suite(model, tokenizer, tasks, examples, settings) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = sum(
        evaluate_task(model, tokenizer, task, settings, examples[task.name]).tokens for task in tasks
    )
    return tokens, time.perf_counter() - started


def child(programmed: bool, n: int) -> None:
    model, tokenizer = model_with_adapter()
    tasks = load_tasks("default")
    examples = {t.name: t.examples("test", n) for t in tasks}
    settings = EvalSettings(items=n, eval_batch_size=32)
    chip = Chip(model, SPEC, seed=0) if programmed else None
    score_suite(model, tokenizer, tasks, examples, settings)
    if chip is not None:
        chip.restore()
    print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def peak_memory(n: int, threads: int) -> dict:
    peaks = {}
    for label, flag in (("clean", "--clean"), ("programmed", "--programmed")):
        output = subprocess.run(
            [sys.executable, __file__, "--child", flag, "--n", str(n), "--threads", str(threads)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        peaks[label] = json.loads(output.strip().splitlines()[-1])["maxrss_kib"] / 1024
    return {
        "clean_mib": round(peaks["clean"], 1),
        "programmed_mib": round(peaks["programmed"], 1),
        "ratio": round(peaks["programmed"] / peaks["clean"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and rounds")
    parser.add_argument("--n", type=int, default=None, help="test items per task")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clean", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--programmed", action="store_true", help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    n = args.n or (12 if args.quick else 30)
    if args.child:
        child(args.programmed, n)
        return
    env = environment()
    model, tokenizer = model_with_adapter()
    tasks = load_tasks("default")
    examples = {t.name: t.examples("test", n) for t in tasks}
    settings = EvalSettings(items=n, eval_batch_size=32)
    score_suite(model, tokenizer, tasks, examples, settings)  # warm-up
    chip = Chip(model, "none", seed=0)
    rates: dict[str, list[float]] = {"clean": [], "programmed": []}
    item_rates: dict[str, list[float]] = {"clean": [], "programmed": []}
    items = sum(len(e) for e in examples.values())
    for round_index in range(2 if args.quick else 3):
        for label in ("clean", "programmed"):
            chip.reprogram(round_index, SPEC if label == "programmed" else "none")
            tokens, seconds = score_suite(model, tokenizer, tasks, examples, settings)
            rates[label].append(tokens / seconds)
            item_rates[label].append(items / seconds)
            log(f"round {round_index} {label}: {tokens / seconds:.0f} tok/s")
    chip.restore()
    ratio = median(rates["programmed"]) / median(rates["clean"])
    memory = peak_memory(n, args.threads)
    emit(
        NAME,
        {
            "benchmark": NAME,
            "model": SMOLLM2,
            "noise": SPEC,
            "items_per_task": n,
            "tasks": [t.name for t in tasks],
            "quick": args.quick,
            "summary": {
                "clean_tok_s": round(median(rates["clean"]), 1),
                "programmed_tok_s": round(median(rates["programmed"]), 1),
                "throughput_ratio": round(ratio, 4),
                "throughput_target": 0.9,
                "clean_items_s": round(median(item_rates["clean"]), 2),
                "programmed_items_s": round(median(item_rates["programmed"]), 2),
                "peak_memory_ratio": memory["ratio"],
                "memory_target": 1.25,
                "meets_targets": ratio >= 0.9 and memory["ratio"] <= 1.25,
            },
            "rounds_tok_s": {label: rounded(values, 1) for label, values in rates.items()},
            "peak_memory": memory,
            "environment": env,
        },
    )


if __name__ == "__main__":
    main()
