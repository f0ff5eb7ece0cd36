"""`halora place`: which parameters live on RRAM, SRAM and the digital side."""

from __future__ import annotations

import argparse
import json

from halora.cim import placement_report
from halora.commands.common import (
    add_lora_arguments,
    add_model_arguments,
    add_placement_arguments,
    lora_from,
    placement_from,
)
from halora.lora import attach_lora
from halora.models import load_model

HELP = "Show the hybrid placement of a model: parameters on RRAM, SRAM (LoRA) and digital."

PLACES = {
    "rram": "RRAM analog CIM (frozen block linear weights, noisy)",
    "sram": "SRAM digital CIM (LoRA A and B, exact)",
    "digital": "digital (embeddings, norms, biases, lm_head)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_placement_arguments(parser)
    add_lora_arguments(parser, rank_default=4)
    parser.add_argument("--no-lora", action="store_true", help="place the base model alone")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    model, _ = load_model(args.model, dtype=args.dtype, device=args.device)
    if not args.no_lora:
        model = attach_lora(model, lora_from(args))
    report = placement_report(model, placement_from(args))
    summary = {
        "model": args.model,
        "lora": None if args.no_lora else vars(lora_from(args)),
        **report.to_json(),
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=list))
        return 0
    print(
        f"{args.model}: {report.total:,} parameters, {report.rram_layers} RRAM layers "
        f"in {report.rram_tiles:,} tiles of {report.tile[0]}x{report.tile[1]}, "
        f"{report.lora_modules} LoRA modules"
    )
    for place, label in PLACES.items():
        print(f"  {place:8s} {report.params[place]:>14,}  {100 * report.share(place):7.3f} %  {label}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0
