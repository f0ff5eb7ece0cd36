"""The analog forward (halora.analog) on SmolLM2-135M: speed, peak memory and accuracy cost.

Speed: one batch of `--batch` sequences x `--length` tokens (the default suite's test items
as text), forward under no_grad on a programmed chip (tile-64 Gaussian sigma 0.02), plain
and through 8-bit converters (`Converters()`: 8-bit DAC and ADC on 64x64 tiles), in
alternating order for `--rounds` rounds; median seconds per batch and their ratio.
Target: analog / plain <= 2.

Peak memory: a fresh subprocess per side loads the model, programs the same chip, runs one
warm-up forward, resets the kernel's peak-RSS mark (`/proc/self/clear_refs` <- 5), runs the
measured forward and reads VmHWM, the peak resident memory *during that forward*, with
every transient allocation in it (loading, which peaks higher, is left out by the reset).
Target: analog / plain <= 1.2. Where the reset is refused, ru_maxrss (including loading)
is reported instead and `memory_method` says so.

Accuracy: the mean token NLL (and perplexity) of `--nll-sequences` sequences of the same
text, and default-suite accuracy on `--items` items per task, for: clean, programmed chip,
programmed + analog, analog alone (exact weights, real converters); programmed conditions
averaged over `--chips` chip seeds. `adc_range_scan`: the analog-alone NLL at several ADC
ranges (the measurement behind `Converters.adc_range`'s default).

    .venv/bin/python benchmarks/bench_analog.py            # about 3-5 min on 2 cores (estimated)
    .venv/bin/python benchmarks/bench_analog.py --quick    # about 1.5-2 min (estimated)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
from _common import add_threads_argument, emit, environment, log, median, rounded, set_threads

from halora.analog import AnalogStats, analog_forward
from halora.cim import Chip
from halora.converters import Converters
from halora.evaluate import EvalSettings, evaluate_task
from halora.models import SMOLLM2, load_model
from halora.noise import GAUSSIAN_TEMPLATE
from halora.tasks import load_tasks

NAME = "bench_analog"
SPEC = GAUSSIAN_TEMPLATE.format(sigma=0.02)
RANGES = (4.0, 8.0, 12.0, 16.0)


def suite_tokens(tokenizer, count: int) -> torch.Tensor:
    """`count` token ids of the default suite's test items (prompt + answer), repeated if short."""
    texts = [f"{e.prompt}{e.answer}" for task in load_tasks("default") for e in task.examples("test", None)]
    ids = tokenizer("\n\n".join(texts), return_tensors="pt").input_ids[0]
    repeats = -(-count // ids.numel())
    return ids.repeat(repeats)[:count]


def batch_of(tokenizer, batch: int, length: int, offset: int = 0) -> torch.Tensor:
    return suite_tokens(tokenizer, offset + batch * length)[offset:].view(batch, length)


def forward_seconds(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        started = time.perf_counter()
        model(ids)
        return time.perf_counter() - started


def analog_or_not(model, analog: bool):
    """The default 8-bit converters on the RRAM layers, or the plain forward."""
    return analog_forward(model, Converters()) if analog else nullcontext()


# --------------------------------------------------------------------------------------
# Peak memory, in fresh processes
# --------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        return int(re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.M).group(1))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def child(analog: bool, batch: int, length: int) -> None:
    model, tokenizer = load_model(SMOLLM2)
    ids = batch_of(tokenizer, batch, length)
    chip = Chip(model, SPEC, seed=0)
    with analog_or_not(model, analog):
        forward_seconds(model, ids)  # warm-up: allocator and thread pools settle
        before = _status_kib("VmRSS")
        reset = _reset_peak()
        forward_seconds(model, ids)
        peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chip.restore()
    method = "VmHWM after clear_refs" if reset else "ru_maxrss (includes loading)"
    print(json.dumps({"peak_kib": peak, "before_kib": before, "method": method}))


def peak_memory(batch: int, length: int, threads: int) -> dict:
    found = {}
    for label in ("plain", "analog"):
        command = [sys.executable, __file__, "--child", label, "--batch", str(batch)]
        command += ["--length", str(length), "--threads", str(threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        found[label] = json.loads(output.strip().splitlines()[-1])
    mib = {label: found[label]["peak_kib"] / 1024 for label in found}
    return {
        "plain_peak_mib": round(mib["plain"], 1),
        "analog_peak_mib": round(mib["analog"], 1),
        "plain_transient_mib": round((found["plain"]["peak_kib"] - found["plain"]["before_kib"]) / 1024, 1),
        "analog_transient_mib": round(
            (found["analog"]["peak_kib"] - found["analog"]["before_kib"]) / 1024, 1
        ),
        "ratio": round(mib["analog"] / mib["plain"], 4),
        "memory_method": found["plain"]["method"],
    }


# --------------------------------------------------------------------------------------
# Speed and accuracy, in this process
# --------------------------------------------------------------------------------------


def speed(model, ids: torch.Tensor, rounds: int) -> dict:
    chip = Chip(model, SPEC, seed=0)
    forward_seconds(model, ids)  # warm-up
    with analog_forward(model, Converters()):
        forward_seconds(model, ids)
    seconds: dict[str, list[float]] = {"plain": [], "analog": []}
    for index in range(rounds):
        order = ("plain", "analog") if index % 2 == 0 else ("analog", "plain")
        for label in order:
            with analog_or_not(model, label == "analog"):
                seconds[label].append(forward_seconds(model, ids))
            log(f"round {index} {label}: {seconds[label][-1]:.2f} s")
    chip.restore()
    return {
        "plain_s": round(median(seconds["plain"]), 3),
        "analog_s": round(median(seconds["analog"]), 3),
        "ratio": round(median(seconds["analog"]) / median(seconds["plain"]), 4),
        "rounds_s": {label: rounded(values, 3) for label, values in seconds.items()},
    }


def mean_nll(model, sequences: torch.Tensor) -> float:
    with torch.no_grad():
        losses = [model(row[None], labels=row[None]).loss.item() for row in sequences]
    return sum(losses) / len(losses)


def suite_accuracy(model, tokenizer, tasks, examples, settings) -> float:
    scores = [evaluate_task(model, tokenizer, t, settings, examples[t.name]) for t in tasks]
    return sum(s.accuracy for s in scores) / len(scores)


def condition(model, noise: str | None, analog: bool, chips: int, measure) -> float:
    """`measure(model)` on the clean model, or averaged over `chips` programmed chips."""
    if noise is None:
        with analog_or_not(model, analog):
            return measure(model)
    values = []
    for seed in range(chips):
        with Chip(model, noise, seed=seed), analog_or_not(model, analog):
            values.append(measure(model))
    return sum(values) / len(values)


CONDITIONS = {
    "clean": (None, False),
    "programmed": (SPEC, False),
    "programmed_analog": (SPEC, True),
    "analog": (None, True),
}


def quality(model, tokenizer, args) -> dict:
    sequences = batch_of(tokenizer, args.nll_sequences, args.length, offset=args.batch * args.length)
    tasks = load_tasks("default")
    settings = EvalSettings(items=args.items, eval_batch_size=16)
    examples = {t.name: t.examples("test", args.items) for t in tasks}
    result = {}
    for label, (noise, analog) in CONDITIONS.items():
        started = time.perf_counter()
        nll = condition(model, noise, analog, args.chips, lambda m: mean_nll(m, sequences))
        accuracy = condition(
            model,
            noise,
            analog,
            args.chips,
            lambda m: suite_accuracy(m, tokenizer, tasks, examples, settings),
        )
        result[label] = {
            "nll": round(nll, 4),
            "perplexity": round(math.exp(nll), 2),
            "accuracy": round(accuracy, 4),
        }
        log(f"{label}: nll {nll:.4f} accuracy {accuracy:.3f} ({time.perf_counter() - started:.0f} s)")
    clean = result["clean"]["nll"]
    for values in result.values():
        values["nll_increase"] = round(values["nll"] - clean, 4)
    return result


def range_scan(model, tokenizer, args) -> list[dict]:
    sequences = batch_of(tokenizer, args.nll_sequences, args.length, offset=args.batch * args.length)
    clean = mean_nll(model, sequences)
    scan = []
    for adc_range in args.ranges:
        stats = AnalogStats()
        with analog_forward(model, Converters(adc_range=adc_range), stats=stats):
            nll = mean_nll(model, sequences)
        scan.append(
            {
                "adc_range": adc_range,
                "nll_increase": round(nll - clean, 4),
                "clip_fraction": stats.clip_fraction,
            }
        )
        log(f"adc_range {adc_range:g}: nll +{nll - clean:.4f}, clipped {stats.clip_fraction:.1e}")
    return scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, fewer rounds and items")
    parser.add_argument("--batch", type=int, default=None, help="sequences per timed batch (default 8)")
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per side (default 3)")
    parser.add_argument("--items", type=int, default=None, help="default-suite items per task (default 8)")
    parser.add_argument(
        "--chips", type=int, default=None, help="chip seeds per programmed condition (default 2)"
    )
    parser.add_argument("--nll-sequences", type=int, default=None, help="sequences for the NLL (default 4)")
    parser.add_argument(
        "--ranges",
        type=lambda text: [float(v) for v in text.split(",")],
        default=list(RANGES),
        help="ADC ranges",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--child", choices=("plain", "analog"), help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    args.batch = args.batch or (4 if args.quick else 8)
    if args.child:
        child(args.child == "analog", args.batch, args.length)
        return
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.items = args.items or (4 if args.quick else 8)
    args.chips = args.chips or (1 if args.quick else 2)
    args.nll_sequences = args.nll_sequences or (2 if args.quick else 4)
    env = environment()
    model, tokenizer = load_model(SMOLLM2)
    timing = speed(model, batch_of(tokenizer, args.batch, args.length), args.rounds)
    accuracy = quality(model, tokenizer, args)
    scan = range_scan(model, tokenizer, args)
    memory = None if args.no_memory else peak_memory(args.batch, args.length, args.threads)
    meets = timing["ratio"] <= 2.0 and (memory is None or memory["ratio"] <= 1.2)
    emit(
        NAME,
        {
            "benchmark": NAME,
            "model": SMOLLM2,
            "noise": SPEC,
            "converters": asdict(Converters()),
            "batch": [args.batch, args.length],
            "quick": args.quick,
            "summary": {
                "plain_s_per_batch": timing["plain_s"],
                "analog_s_per_batch": timing["analog_s"],
                "time_ratio": timing["ratio"],
                "time_target": 2.0,
                "peak_memory_ratio": memory["ratio"] if memory else None,
                "memory_target": 1.2,
                "meets_targets": meets,
                "nll_increase": {label: values["nll_increase"] for label, values in accuracy.items()},
                "accuracy": {label: values["accuracy"] for label, values in accuracy.items()},
            },
            "speed": timing,
            "peak_memory": memory,
            "quality": accuracy,
            "quality_settings": {
                "items_per_task": args.items,
                "chips": args.chips,
                "nll_sequences": args.nll_sequences,
            },
            "adc_range_scan": scan,
            "environment": env,
        },
    )


if __name__ == "__main__":
    main()
