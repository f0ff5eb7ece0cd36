"""`halora eval`: score one model (+ adapter) on one chip setting."""

from __future__ import annotations

import argparse
import json

from halora.cim import program_chip
from halora.commands.common import add_model_arguments, add_placement_arguments, placement_from
from halora.evaluate import SCORERS, EvalSettings, evaluate_task
from halora.lora import load_adapters
from halora.models import load_model
from halora.tasks import load_tasks

HELP = "Evaluate a model, optionally with an adapter, clean or on one programmed chip."


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--tasks", default="default", help="task spec (see halora train --help)")
    group.add_argument("--n", type=int, default=100, help="test items per task")
    group.add_argument(
        "--scorer",
        default="auto",
        choices=SCORERS,
        help="loglik (multiple choice), generate (exact answers) or auto",
    )
    group.add_argument("--batch-size", type=int, default=16)
    group.add_argument("--max-length", type=int, default=256)
    group.add_argument("--split", default="test", choices=["test", "val"])


def eval_settings_from(args: argparse.Namespace, progress: bool) -> EvalSettings:
    return EvalSettings(
        n=args.n,
        batch_size=args.batch_size,
        max_length=args.max_length,
        scorer=args.scorer,
        split=args.split,
        progress=progress,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--adapter", help="adapter folder (from halora train); none: the base model")
    parser.add_argument("--noise", default="none", help="chip noise spec, e.g. gaussian:sigma=0.02")
    parser.add_argument("--seed", type=int, default=0, help="chip seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_eval_arguments(parser)
    add_placement_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = eval_settings_from(args, progress=not args.json)
    tasks = load_tasks(args.tasks)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.adapter:
        model = load_adapters(model, [("adapter", args.adapter)])
    with program_chip(model, args.noise, args.seed, placement_from(args)) as chip:
        scores = [evaluate_task(model, tokenizer, task, settings) for task in tasks]
    result = {
        "model": args.model,
        "adapter": args.adapter,
        "noise": chip.noise.spec(),
        "seed": args.seed,
        "tasks": [s.to_json() for s in scores],
        "average": sum(s.accuracy for s in scores) / len(scores),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model} + {args.adapter or 'no adapter'} on chip {result['noise']} seed {args.seed}")
    for score in scores:
        norm = f"  acc_norm {100 * score.acc_norm:5.1f}" if score.acc_norm is not None else ""
        print(
            f"  {score.task:28s} {100 * score.accuracy:5.1f} %  (n={score.n}, {score.scorer}, "
            f"chance {100 * score.chance:.0f} %){norm}"
        )
    print(f"  {'average':28s} {100 * result['average']:5.1f} %")
    return 0
