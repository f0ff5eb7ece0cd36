"""`halora eval`: score one model (+ adapter) on one chip setting."""

from __future__ import annotations

import argparse
import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict

from halora.analog import analog_forward
from halora.cim import Placement, program_chip
from halora.commands.common import (
    add_chip_flags,
    add_eval_flags,
    add_model_flags,
    add_placement_flags,
    chip_from,
    eval_from,
    model_from,
    placement_from,
)
from halora.converters import Converters, add_converter_flags, converters_from
from halora.evaluate import evaluate_task
from halora.lora import load_adapters
from halora.tasks import load_tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser)
    parser.add_argument("--adapter", help="adapter folder (from halora train); none: the base model")
    parser.add_argument(
        "--allow-other-base",
        action="store_true",
        help="load adapters whose halora.json names other base weights than the model loaded",
    )
    add_chip_flags(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_eval_flags(parser)
    add_placement_flags(parser)
    add_converter_flags(parser)


def run(args: argparse.Namespace) -> int:
    settings, chip_choice, chosen = eval_from(args, progress=not args.json), chip_from(args), model_from(args)
    converters, placement = converters_from(args), placement_from(args)
    tasks = load_tasks(args.tasks)
    model, tokenizer = chosen.load()
    if args.adapter:
        model = load_adapters(
            model, [("adapter", args.adapter)], chosen.label, allow_other_base=args.allow_other_base
        )
    with (
        program_chip(model, chip_choice.noise, chip_choice.chip_seed, placement) as chip,
        _analog(model, converters, placement, chip_choice.chip_seed),
    ):
        scores = [evaluate_task(model, tokenizer, task, settings) for task in tasks]
    result = {
        "model": chosen.model,
        "adapter": args.adapter,
        "noise": chip.noise.spec(),
        "chip_seed": chip_choice.chip_seed,
        "converters": asdict(converters) if converters is not None else None,
        "tasks": [s.to_json() for s in scores],
        "average": sum(s.accuracy for s in scores) / len(scores),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{chosen.model} + {args.adapter or 'no adapter'} on chip {result['noise']} "
        f"seed {chip_choice.chip_seed}"
    )
    if converters is not None:
        print(f"  analog forward: {converters.describe()}")
    for score in scores:
        norm = f"  acc_norm {100 * score.acc_norm:5.1f}" if score.acc_norm is not None else ""
        print(
            f"  {score.task:28s} {100 * score.accuracy:5.1f} %  (n={score.n}, {score.scorer}, "
            f"chance {100 * score.chance:.0f} %){norm}"
        )
    print(f"  {'average':28s} {100 * result['average']:5.1f} %")
    return 0


def _analog(model, converters: Converters | None, placement: Placement, seed: int) -> AbstractContextManager:
    """The analog forward on the RRAM layers (output noise seeded by the chip seed), or nothing."""
    if converters is None:
        return nullcontext()
    return analog_forward(model, converters, placement, seed=seed)
