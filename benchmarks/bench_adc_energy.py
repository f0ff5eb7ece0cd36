"""The accuracy-energy curve over ADC bits: SmolLM2-135M + a LoRA adapter on the hybrid chip.

For each ADC resolution (DAC bits fixed), the default task suite is scored through the
analog forward (halora.analog: DACs, 64-row partial sums, ADCs on every RRAM layer) on
(i) the clean weights and (ii) programmed test chips (tile-64 Gaussian, sigma 0.02 by
default), against the exact digital forward on the clean weights (the reference) and on
the same chips. The energy model prices a 512-token prefill of SmolLM2 on the hybrid chip
with the very same converters (halora.energy.with_converters): total and ADC share.

Each condition is a `halora.sweep.run_sweep` into OUT/digital/ or OUT/bits{B}/, so every
finished cell is cached and a rerun with the same settings resumes. Accuracies are task
averages with 95 % hierarchical bootstrap intervals over chips and items
(halora.study.stats.accuracy_ci); the deltas against the digital forward are paired
(same chips, same items: delta_ci). Writes OUT/adc_energy.json, OUT/adc_energy.md and
OUT/accuracy_vs_energy.png, and the JSON to benchmarks/results/bench_adc_energy.json.

    .venv/bin/python benchmarks/bench_adc_energy.py [--adapter DIR] [--out DIR]  # ~7-14 min, 2 cores
    .venv/bin/python benchmarks/bench_adc_energy.py --quick --out /tmp/adc-smoke  # smoke, ~1 min
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _common import add_threads_argument, emit, environment, log, set_threads

from halora import files
from halora.converters import Converters
from halora.energy import estimate as energy_estimate
from halora.energy import (
    load_arch,
    load_preset,
    noise_cells_per_weight,
    with_cells_per_weight,
    with_converters,
)
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.lora import load_adapters
from halora.models import SMOLLM2, load_model
from halora.noise import GAUSSIAN_TEMPLATE
from halora.study.stats import accuracy_ci, delta_ci
from halora.sweep import CLEAN, ChipGrid, Condition, SweepPlan, gather_records, run_sweep
from halora.tasks import load_tasks

NAME = "bench_adc_energy"
LABEL = "adapter"  # the adapter's label in the sweep cells
DEMO_ADAPTER = "/root/halora-runs/demo-20261206/adapters/lora"
DEFAULT_BITS = (4, 5, 6, 7, 8, 9, 10)
QUICK_BITS = (4, 8)
# Sized for ~12 min on 2 cores: the run scores the suite (4 tasks x items) 4 times plainly
# (digital: clean + 3 chips) and 4 times per bit width through the converters (about 1.9x
# a plain forward), i.e. 4 + 7 x 4 x 1.9 = 57 suite passes; at 0.08-0.15 s per item plain
# (0.08: 2 threads, idle; 0.25 measured in a loaded, niced, 4-item smoke run) 24 items
# take 7-14 min, plus ~1 min of loading, programming and bootstrap.
DEFAULTS = {"items": 24, "chips": 3}
QUICK = {"items": 4, "chips": 1}
PLOT = "accuracy_vs_energy.png"
DEFAULT_OUT = "/root/adc-energy"
QUICK_OUT = "/root/adc-energy-quick"  # apart: a quick run's settings would not resume a full one


# --------------------------------------------------------------------------------------
# Energy: no model needed
# --------------------------------------------------------------------------------------


def adapter_shape(adapter: Path) -> tuple[int, tuple[str, ...]]:
    """The adapter's LoRA rank and target modules, read from its adapter_config.json."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    targets = config["target_modules"]
    return int(config["r"]), tuple(sorted([targets] if isinstance(targets, str) else targets))


def energy_of(converters: Converters, args: argparse.Namespace, spec: str) -> dict[str, Any]:
    """The hybrid chip's prefill energy with these converters: total, ADC part and shares."""
    hardware = with_converters(load_preset(args.preset), converters)
    cells = noise_cells_per_weight(spec)  # None for Gaussian: the preset's devices per weight
    if cells is not None:
        hardware = with_cells_per_weight(hardware, cells)
    rank, targets = adapter_shape(args.adapter)
    report = energy_estimate(load_arch(SMOLLM2), hardware, args.tokens, rank, targets)
    adc_mj = report.breakdown().get("rram_adc", 0.0)
    return {
        "hybrid_mj": round(report.hybrid_mj, 6),
        "adc_mj": round(adc_mj, 6),
        "adc_share": round(adc_mj / report.hybrid_mj, 6),
        "rram_share": round(report.rram_share, 6),
        "vs_gpu": round(report.ratio, 6),
        "gpu": report.gpu_reference,
        "cells_per_weight": report.cells_per_weight,
        "lora_rank": rank,
        "lora_targets": list(targets),
    }


# --------------------------------------------------------------------------------------
# Accuracy: one cached sweep per converter setting
# --------------------------------------------------------------------------------------


def plan_for(converters: Converters | None, args: argparse.Namespace, tasks: list) -> SweepPlan:
    grid = ChipGrid(sigmas=(args.sigma,), noise_template=GAUSSIAN_TEMPLATE, chips=args.chips)
    return SweepPlan(
        conditions=grid.conditions(),
        seeds=grid.seeds,
        adapters=((LABEL, str(args.adapter)),),
        tasks=tuple(t.name for t in tasks),
        eval=EvalSettings(items=args.items),
        model=SMOLLM2,
        converters=converters,
    )


def sweep(model, tokenizer, tasks: list, plan: SweepPlan, folder: Path) -> tuple[list[dict], dict]:
    """Run (or resume) one sweep; its cells and how long the new ones took."""
    cached = len(gather_records(folder))
    started = time.perf_counter()
    records = run_sweep(model, tokenizer, tasks, plan, folder)
    seconds = time.perf_counter() - started
    new = len(records) - cached
    log(f"{folder.name}: {new} new cell(s), {cached} cached, {seconds:.0f} s")
    return records, {"seconds": round(seconds, 1), "new_cells": new, "cached_cells": cached}


def cells_of(records: list[dict], spec: str) -> list[dict]:
    return [r for r in records if r["spec"] == spec and r["method"] == LABEL]


def estimates(records: list[dict], digital: list[dict], spec: str, resamples: int) -> dict[str, Any]:
    """Accuracy on the clean weights and on the chips, and each minus the digital forward's
    on the same weights (paired: same chips, same items)."""
    found = {}
    for side, condition in (("clean", CLEAN), ("chip", spec)):
        mine, reference = cells_of(records, condition), cells_of(digital, condition)
        found[side] = accuracy_ci(mine, resamples).to_json()
        found[f"{side}_minus_digital"] = delta_ci(mine, reference, resamples).to_json()
    return found


# --------------------------------------------------------------------------------------
# Outputs: table and plot
# --------------------------------------------------------------------------------------


def interval_text(estimate: dict[str, float | None]) -> str:
    low, high = estimate["low"], estimate["high"]
    span = f" [{low:.1f}, {high:.1f}]" if low is not None and high is not None else ""
    return f"{estimate['value']:.1f}{span}"


def markdown(result: dict[str, Any]) -> str:
    digital = result["digital"]
    lines = [
        f"# Accuracy vs energy over ADC bits: {result['model']} + {result['adapter']}",
        "",
        f"Default suite, {result['items_per_task']} items per task; chip = {result['noise']} on "
        f"{len(result['chip_seeds'])} test chip(s); {result['dac_bits']}-bit DAC, ADC range "
        f"±{result['adc_range']:g}. Energy: hybrid chip, prefill of {result['energy_tokens']} "
        f"tokens, preset {result['preset']}. Accuracy % with 95 % bootstrap interval (chips x items).",
        "",
        f"Digital reference (no converters): clean {interval_text(digital['clean'])}, "
        f"chip {interval_text(digital['chip'])}.",
        "",
        "| ADC bits | hybrid mJ | ADC share | clean + analog | Δ vs digital "
        "| chip + analog | Δ vs chip digital |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["curve"]:
        energy, acc = row["energy"], row["accuracy"]
        lines.append(
            f"| {row['adc_bits']} | {energy['hybrid_mj']:.2f} | {energy['adc_share']:.1%} | "
            f"{interval_text(acc['clean'])} | {interval_text(acc['clean_minus_digital'])} | "
            f"{interval_text(acc['chip'])} | {interval_text(acc['chip_minus_digital'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
    energies = [row["energy"]["hybrid_mj"] for row in result["curve"]]
    # the two series share their energies: drawn slightly apart so that both show
    nudge = 0.006 * ((max(energies) - min(energies)) or max(energies))
    series = (("clean", "clean + analog", "o", -nudge), ("chip", "chip + analog", "s", nudge))
    for side, label, marker, shift in series:
        values = [row["accuracy"][side] for row in result["curve"]]
        y = [v["value"] for v in values]
        errors = [
            [v["value"] - (v["low"] if v["low"] is not None else v["value"]) for v in values],
            [(v["high"] if v["high"] is not None else v["value"]) - v["value"] for v in values],
        ]
        x = [energy + shift for energy in energies]
        axes.errorbar(x, y, yerr=errors, marker=marker, capsize=3, label=label)
        if side == "chip":
            for point, value, row in zip(x, y, result["curve"], strict=True):
                axes.annotate(
                    f"{row['adc_bits']} b", (point, value), textcoords="offset points", xytext=(5, -12)
                )
    digital = result["digital"]
    axes.axhline(digital["clean"]["value"], color="black", linewidth=1, label="digital, clean")
    axes.axhline(digital["chip"]["value"], color="gray", linestyle="--", linewidth=1, label="digital, chip")
    axes.set_xlabel(f"hybrid chip energy, {result['energy_tokens']}-token prefill (mJ)")
    axes.set_ylabel("accuracy, default suite (%)")
    axes.set_title(f"{result['model']}: accuracy vs energy over ADC bits ({result['dac_bits']}-bit DAC)")
    axes.legend(loc="lower right", fontsize="small")
    files.write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=130))
    plt.close(figure)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=Path(DEMO_ADAPTER), help="PEFT adapter folder")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT}; quick: {QUICK_OUT})"
    )
    parser.add_argument(
        "--bits", type=int, nargs="+", default=None, help="ADC bits (default 4 5 6 7 8 9 10; quick: 4 8)"
    )
    parser.add_argument("--dac-bits", type=int, default=8, help="DAC bits, fixed over the curve (default 8)")
    parser.add_argument(
        "--items", type=int, default=None, help=f"test items per task (default {DEFAULTS['items']})"
    )
    parser.add_argument("--chips", type=int, default=None, help=f"test chips (default {DEFAULTS['chips']})")
    parser.add_argument(
        "--sigma", type=float, default=0.02, help="Gaussian sigma of the chips (default 0.02)"
    )
    parser.add_argument("--tokens", type=int, default=512, help="prefill tokens for the energy (default 512)")
    parser.add_argument("--preset", default="paper", help="energy preset (default paper)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--quick", action="store_true", help="smoke test: ADC bits 4 8, 4 items, 1 chip")
    add_threads_argument(parser)
    args = parser.parse_args()
    defaults = QUICK if args.quick else DEFAULTS
    args.items = defaults["items"] if args.items is None else args.items
    args.chips = defaults["chips"] if args.chips is None else args.chips
    args.bits = sorted(set(args.bits or (QUICK_BITS if args.quick else DEFAULT_BITS)))
    if args.out is None:
        args.out = Path(QUICK_OUT if args.quick else DEFAULT_OUT)
    return args


def check_adapter(adapter: Path) -> None:
    if not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"no PEFT adapter at {adapter} (no adapter_config.json): pass --adapter DIR")


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_adapter(args.adapter)
    spec = Condition.of(GAUSSIAN_TEMPLATE.format(sigma=args.sigma)).spec
    converters = {b: Converters(dac_bits=args.dac_bits, adc_bits=b) for b in args.bits}
    energy = {b: energy_of(c, args, spec) for b, c in converters.items()}
    tasks = load_tasks("default")
    reference = plan_for(None, args, tasks)  # settings checked here, before the model loads
    plans = {b: plan_for(c, args, tasks) for b, c in converters.items()}
    files.output_folder(args.out)
    env = environment()
    model, tokenizer = load_model(SMOLLM2)
    model = load_adapters(model, [(LABEL, str(args.adapter))], SMOLLM2)
    digital, timing = sweep(model, tokenizer, tasks, reference, args.out / "digital")
    timings = {"digital": timing}
    curve = []
    for bits, conv in converters.items():
        folder = args.out / f"bits{bits}"
        records, timings[folder.name] = sweep(model, tokenizer, tasks, plans[bits], folder)
        accuracy = estimates(records, digital, spec, args.resamples)
        curve.append(
            {"adc_bits": bits, "converters": asdict(conv), "energy": energy[bits], "accuracy": accuracy}
        )
        log(
            f"ADC {bits} bits: {energy[bits]['hybrid_mj']:.2f} mJ (ADC {energy[bits]['adc_share']:.1%}), "
            f"clean {accuracy['clean']['value']:.1f} %, chip {accuracy['chip']['value']:.1f} %"
        )
    return {
        "benchmark": NAME,
        "model": SMOLLM2,
        "adapter": str(args.adapter),
        "quick": args.quick,
        "tasks": [t.name for t in tasks],
        "items_per_task": args.items,
        "noise": spec,
        "chip_seeds": list(reference.seeds),
        "dac_bits": args.dac_bits,
        "adc_range": Converters().adc_range,
        "preset": args.preset,
        "energy_tokens": args.tokens,
        "interval": "95 % percentile bootstrap over chips and items (halora.study.stats); "
        "deltas paired on the same chips and items; clean = one chip, so items only",
        "digital": {
            "clean": accuracy_ci(cells_of(digital, CLEAN), args.resamples).to_json(),
            "chip": accuracy_ci(cells_of(digital, spec), args.resamples).to_json(),
        },
        "curve": curve,
        "summary": summary(curve),
        "timing": timings,
        "outputs": {name: str(args.out / name) for name in ("adc_energy.json", "adc_energy.md", PLOT)},
        "environment": env,
    }


def summary(curve: list[dict]) -> dict[str, dict[str, float]]:
    """Per bit width the headline numbers, for a quick look at the JSON."""
    return {
        str(row["adc_bits"]): {
            "hybrid_mj": row["energy"]["hybrid_mj"],
            "adc_share": row["energy"]["adc_share"],
            "clean_analog_acc": round(row["accuracy"]["clean"]["value"], 2),
            "chip_analog_acc": round(row["accuracy"]["chip"]["value"], 2),
        }
        for row in curve
    }


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    try:
        result = run(args)
    except UsageError as err:
        raise SystemExit(f"{NAME}: error: {err}") from None
    files.write_json(args.out / "adc_energy.json", result)
    files.write_text(args.out / "adc_energy.md", markdown(result))
    plot(result, args.out / PLOT)
    emit(NAME, result)
    log(markdown(result))


if __name__ == "__main__":
    main()
