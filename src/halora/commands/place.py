"""`halora place`: which parameters live on RRAM, SRAM and the digital side."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from halora.cim import placement_report
from halora.commands.common import (
    add_lora_flags,
    add_model_flags,
    add_placement_flags,
    lora_from,
    model_from,
    placement_from,
)
from halora.lora import attach_lora

PLACES = {
    "rram": "RRAM analog CIM (frozen block linear weights, noisy)",
    "sram": "SRAM digital CIM (LoRA A and B, exact)",
    "digital": "digital (embeddings, norms, biases, lm_head)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser)
    add_placement_flags(parser)
    add_lora_flags(parser)
    parser.add_argument("--no-lora", action="store_true", help="place the base model alone")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    chosen, lora = model_from(args), lora_from(args)
    model, _ = chosen.load()
    if not args.no_lora:
        model = attach_lora(model, lora)
    report = placement_report(model, placement_from(args))
    summary = {"model": chosen.model, "lora": None if args.no_lora else asdict(lora), **report.to_json()}
    if args.json:
        print(json.dumps(summary, indent=2, default=list))
        return 0
    print(
        f"{chosen.model}: {report.total:,} parameters, {report.rram_layers} RRAM layers "
        f"in {report.rram_tiles:,} tiles of {report.tile[0]}x{report.tile[1]}, "
        f"{report.lora_modules} LoRA modules"
    )
    for place, label in PLACES.items():
        print(f"  {place:8s} {report.params[place]:>14,}  {100 * report.share(place):7.3f} %  {label}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0
