"""`halora energy`: energy and area of a model on hybrid RRAM/SRAM CIM, against GPUs.

    halora energy --model llama-3.2-1b --tokens 512 [--preset paper] [--json] [--plot FILE]

The model lives in halora.energy; this module only reads flags and prints.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from halora.energy import (
    DEFAULT_PRESET,
    MAX_TOKENS,
    PAPER_TARGETS,
    EnergyReport,
    estimate,
    load_arch,
    load_preset,
    parse_override,
    plot_report,
    read_overrides_file,
)
from halora.errors import UsageError

DESIGN_LABELS = {"hybrid": "hybrid CIM", "rram_only": "RRAM-only", "sram_only": "SRAM-only"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Numbers are read as text and checked in run(), so bad input is one UsageError line.
    parser.add_argument(
        "--model",
        default="llama-3.2-1b",
        help="bundled name (llama-3.2-1b, llama-3.2-3b, qwen2.5-0.5b, "
        "smollm2-135m), a config.json or a model folder",
    )
    parser.add_argument(
        "--tokens", default="512", help=f"tokens processed, 1 to {MAX_TOKENS:,} (default 512)"
    )
    parser.add_argument(
        "--phase",
        default="prefill",
        help="prefill: one pass over the tokens (the paper's reading, default); "
        "decode: generate them one at a time",
    )
    parser.add_argument(
        "--prompt",
        default="0",
        help=f"decode only: tokens already in the key/value cache, 0 to {MAX_TOKENS:,} (default 0)",
    )
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, help="hardware preset: paper (default), exact, or a TOML file"
    )
    parser.add_argument("--preset-file", metavar="FILE", help="TOML file whose figures override the preset's")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one preset figure, e.g. rram.adc_bits=10 (repeatable)",
    )
    parser.add_argument("--rank", default="4", help="LoRA rank (default 4)")
    parser.add_argument(
        "--targets",
        default=",".join(PAPER_TARGETS),
        help=f"comma-separated LoRA targets (default {','.join(PAPER_TARGETS)})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="FILE", help="write a breakdown bar chart (.png, .pdf or .svg)")


def run(args: argparse.Namespace) -> int:
    tokens = _int_flag(args.tokens, "--tokens", minimum=1, maximum=MAX_TOKENS)
    rank = _int_flag(args.rank, "--rank", minimum=1)
    prompt = _int_flag(args.prompt, "--prompt", minimum=0, maximum=MAX_TOKENS)
    overrides = read_overrides_file(args.preset_file) if args.preset_file else {}
    overrides.update(parse_override(item) for item in args.set)
    hardware = load_preset(args.preset, overrides)
    arch = load_arch(args.model)
    targets = tuple(name.strip() for name in args.targets.split(",") if name.strip())
    report = estimate(arch, hardware, tokens, rank, targets, phase=args.phase, prompt=prompt)
    if args.plot:
        plot_report(report, args.plot)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report)
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def _int_flag(text: str, flag: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if maximum is not None and (value is None or not minimum <= value <= maximum):
        raise UsageError(f"{flag} must be an integer from {minimum:,} to {maximum:,}, got {text!r}")
    if value is None or value < minimum:
        raise UsageError(f"{flag} must be an integer >= {minimum}, got {text!r}")
    return value


def print_report(report: EnergyReport) -> None:
    console = Console(file=sys.stdout, highlight=False)
    run = report.run
    console.print(
        f"{report.model}: {run.phase} of {run.tokens} tokens, LoRA r={report.lora_rank} "
        f"on {','.join(report.lora_targets)}; preset {report.preset} "
        f"(work counted with the {report.layout!r} layout)"
    )
    console.print(_designs_table(report))
    console.print(_breakdown_table(report))
    console.print(
        f"LoRA share {report.lora_share:.2%} of the hybrid energy; "
        f"RRAM tiles {report.rram_share:.2%}; hybrid / {report.gpu_reference} "
        f"= {report.ratio:.2%}"
    )


def _designs_table(report: EnergyReport) -> Table:
    table = Table(title="energy and area")
    for column in ("design", "energy (mJ)", "per token (µJ)", "area (mm²)", f"vs {report.gpu_reference}"):
        table.add_column(column, justify="left" if column == "design" else "right")
    reference_mj = report.gpu_mj[report.gpu_reference]
    areas = report.total_area_mm2()
    rows = [(DESIGN_LABELS[d], mj, f"{areas[d]:,.0f}") for d, mj in report.design_mj.items()]
    rows += [(f"{name} (GPU)", mj, "-") for name, mj in report.gpu_mj.items()]
    for label, mj, area in rows:
        table.add_row(
            label, f"{mj:,.2f}", f"{mj * 1000 / report.run.tokens:,.1f}", area, f"{mj / reference_mj:.2%}"
        )
    return table


def _breakdown_table(report: EnergyReport) -> Table:
    table = Table(title="hybrid CIM by component")
    table.add_column("component")
    table.add_column("mJ", justify="right")
    table.add_column("share", justify="right")
    for component, mj in sorted(report.breakdown().items(), key=lambda item: -item[1]):
        table.add_row(component, f"{mj:.3f}", f"{mj / report.hybrid_mj:.2%}")
    return table
