"""`halora lm-eval`: score a model (+ adapter) on one chip with lm-evaluation-harness tasks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from halora.commands.common import (
    add_chip_flags,
    add_model_flags,
    add_placement_flags,
    chip_from,
    model_from,
    placement_from,
)
from halora.evaluate import EvalSettings
from halora.files import output_folder, write_json
from halora.lmeval import check_numbers, evaluate_lm_eval, results_table, task_manager
from halora.lora import load_adapters
from halora.settings import add_flags, coerce


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser)
    parser.add_argument("--adapter", help="adapter folder (from halora train); none: the base model")
    parser.add_argument(
        "--allow-other-base",
        action="store_true",
        help="load adapters whose halora.json names other base weights than the model loaded",
    )
    add_chip_flags(parser)
    group = parser.add_argument_group("lm-eval")
    group.add_argument(
        "--lm-tasks",
        required=True,
        help="lm-eval task, group or YAML path names, comma-separated, e.g. arc_easy",
    )
    group.add_argument("--include-path", help="folder of local lm-eval task YAML files")
    group.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's own)")
    add_flags(
        parser,
        EvalSettings,
        "evaluation",
        only=("items", "eval_batch_size"),
        defaults=EvalSettings(items=None),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", help="folder to write results.json into")
    add_placement_flags(parser)


def run(args: argparse.Namespace) -> int:
    # bad task names and numbers fail here, before a large model loads
    check_numbers(args.items, args.eval_batch_size, args.num_fewshot)
    if args.out:
        output_folder(args.out)
    chip, chosen = chip_from(args), model_from(args)
    lm_tasks = list(coerce(args.lm_tasks, tuple[str, ...], "--lm-tasks"))
    manager = task_manager(lm_tasks, args.include_path)
    model, tokenizer = chosen.load()
    if args.adapter:
        model = load_adapters(
            model, [("adapter", args.adapter)], chosen.label, allow_other_base=args.allow_other_base
        )
    scores = evaluate_lm_eval(
        model,
        tokenizer,
        lm_tasks,
        include_path=args.include_path,
        noise=chip.noise,
        seed=chip.chip_seed,
        placement=placement_from(args),
        limit=args.items,
        batch_size=args.eval_batch_size,
        num_fewshot=args.num_fewshot,
        manager=manager,
    )
    result = {"model": chosen.model, "adapter": args.adapter, **scores}
    if args.out:
        write_json(Path(args.out) / "results.json", result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict) -> None:
    """halora's one line (which chip) and lm-eval's own results table."""
    print(
        f"{result['model']} + {result['adapter'] or 'no adapter'} on chip {result['noise']} "
        f"seed {result['seed']} (lm-eval {result['lm_eval_version']})"
    )
    print(results_table(result))
