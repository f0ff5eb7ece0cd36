"""`halora energy`: energy and area of a model on hybrid RRAM/SRAM CIM, against GPUs.

    halora energy --model llama-3.2-1b --tokens 512 [--preset paper] [--json] [--plot FILE]
    halora energy --model smollm2-135m --adc-bits 6 --adc-rows 128 --noise wan2022:t=1d

The model lives in halora.energy; this module only reads flags and prints. The converter
flags are the analog forward's settings (halora.converters.Converters: help and bounds
are read from it) and --noise reads the devices per weight from a noise model, so the
energy is priced for the chip whose accuracy was simulated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from rich.console import Console
from rich.table import Table

from halora.converters import Converters
from halora.energy import (
    DEFAULT_PRESET,
    MAX_TOKENS,
    PAPER_TARGETS,
    EnergyReport,
    Hardware,
    converters_of,
    estimate,
    load_arch,
    load_preset,
    noise_cells_per_weight,
    parse_override,
    plot_report,
    read_overrides_file,
    with_cells_per_weight,
    with_converters,
)
from halora.errors import UsageError

DESIGN_LABELS = {"hybrid": "hybrid CIM", "rram_only": "RRAM-only", "sram_only": "SRAM-only"}
# Flag -> Converters field; --adc-rows, not --rows, says which rows it means here.
CONVERTER_FLAGS = {"--dac-bits": "dac_bits", "--adc-bits": "adc_bits", "--adc-rows": "rows"}
# Far above any crossbar; keeps an integer flag bounded where the field has no maximum.
MAX_CELLS_PER_WEIGHT = 64


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
    _add_chip_flags(parser)
    parser.add_argument("--rank", default="4", help="LoRA rank (default 4)")
    parser.add_argument(
        "--targets",
        default=",".join(PAPER_TARGETS),
        help=f"comma-separated LoRA targets (default {','.join(PAPER_TARGETS)})",
    )
    parser.add_argument(
        "--twin-rank",
        default="0",
        help="rows of the twin correction (halora recalibrate --twin-rank) charged on every block matrix",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="FILE", help="write a breakdown bar chart (.png, .pdf or .svg)")


def _add_chip_flags(parser: argparse.ArgumentParser) -> None:
    """The converter flags (help and bounds from Converters) and the devices per weight."""
    fields = {spec.name: spec for spec in dataclasses.fields(Converters)}
    for flag, name in CONVERTER_FLAGS.items():
        help_text = fields[name].metadata.get("help", name)
        parser.add_argument(flag, metavar="N", help=f"{help_text} (default: the preset's)")
    parser.add_argument(
        "--noise",
        metavar="SPEC",
        help="price the RRAM devices per weight this noise model assumes, e.g. wan2022:t=1d "
        "(differential pair: 2); models without a device mapping keep the preset's count",
    )
    parser.add_argument(
        "--cells-per-weight",
        metavar="N",
        help="RRAM devices per weight (default: the preset's, 1 in paper)",
    )


def run(args: argparse.Namespace) -> int:
    tokens = _int_flag(args.tokens, "--tokens", minimum=1, maximum=MAX_TOKENS)
    rank = _int_flag(args.rank, "--rank", minimum=1)
    twin_rank = _int_flag(args.twin_rank, "--twin-rank", minimum=0)
    prompt = _int_flag(args.prompt, "--prompt", minimum=0, maximum=MAX_TOKENS)
    overrides = read_overrides_file(args.preset_file) if args.preset_file else {}
    overrides.update(parse_override(item) for item in args.set)
    hardware = _apply_converters(load_preset(args.preset, overrides), args)
    hardware, cells_from = _apply_cells(hardware, args)
    arch = load_arch(args.model)
    targets = tuple(name.strip() for name in args.targets.split(",") if name.strip())
    report = estimate(
        arch, hardware, tokens, rank, targets, phase=args.phase, prompt=prompt, twin_rank=twin_rank
    )
    if args.plot:
        plot_report(report, args.plot)
    if args.json:
        print(json.dumps({**report.to_json(), "cells_per_weight_from": cells_from}, indent=2))
    else:
        print_report(report, cells_from)
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def _apply_converters(hardware: Hardware, args: argparse.Namespace) -> Hardware:
    """The preset's converters with the flags given over them (bounds: Converters')."""
    fields = {spec.name: spec for spec in dataclasses.fields(Converters)}
    given = {}
    for flag, name in CONVERTER_FLAGS.items():
        text = getattr(args, _dest(flag))
        if text is not None:
            meta = fields[name].metadata
            given[name] = _int_flag(text, flag, minimum=int(meta["min"]), maximum=_int_or_none(meta["max"]))
    if not given:
        return hardware
    return with_converters(hardware, dataclasses.replace(converters_of(hardware), **given))


def _apply_cells(hardware: Hardware, args: argparse.Namespace) -> tuple[Hardware, str]:
    """Devices per weight from --cells-per-weight or --noise; the text says where it came from."""
    if args.noise is not None and args.cells_per_weight is not None:
        raise UsageError("give --noise or --cells-per-weight, not both: each sets the devices per weight")
    if args.cells_per_weight is not None:
        cells = _int_flag(args.cells_per_weight, "--cells-per-weight", 1, MAX_CELLS_PER_WEIGHT)
        return with_cells_per_weight(hardware, cells), "--cells-per-weight"
    if args.noise is not None:
        cells = noise_cells_per_weight(args.noise)
        if cells is None:
            return hardware, f"preset {hardware.name} (noise {args.noise!r} has no device mapping)"
        return with_cells_per_weight(hardware, cells), f"noise {args.noise!r}"
    return hardware, f"preset {hardware.name}"


def _dest(flag: str) -> str:
    """argparse's attribute for a flag: --adc-rows -> adc_rows."""
    return flag.lstrip("-").replace("-", "_")


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


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


def print_report(report: EnergyReport, cells_from: str = "") -> None:
    console = Console(file=sys.stdout, highlight=False)
    run = report.run
    console.print(
        f"{report.model}: {run.phase} of {run.tokens} tokens, LoRA r={report.lora_rank} "
        f"on {','.join(report.lora_targets)}"
        + (f" + twin correction r={report.twin_rank} on every block matrix" if report.twin_rank else "")
        + f"; preset {report.preset}"
    )
    console.print(f"counting: {report.counting}")
    conv = report.converters
    source = f" (from {cells_from})" if cells_from else ""
    console.print(
        f"RRAM: {report.cells_per_weight} device(s) per weight{source}; "
        f"DAC {conv['dac_bits']} bits, ADC {conv['adc_bits']} bits, "
        f"{conv['rows']} rows summed per ADC conversion"
    )
    console.print(_designs_table(report))
    console.print(_breakdown_table(report))
    console.print(
        f"LoRA share {report.lora_share:.2%} of the hybrid energy; "
        f"RRAM tiles {report.rram_share:.2%}; hybrid / {report.gpu_reference} "
        f"= {report.ratio:.2%}"
    )
    power = ", ".join(f"{name} {watts:,.0f} W" for name, watts in report.gpu_power_w.items())
    console.print(f"GPU average power: {power} (TDP when compute-bound, less when memory-bound)")


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
