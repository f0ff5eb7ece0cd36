"""`halora lm-eval`: score a model (+ adapter) on one chip with lm-evaluation-harness tasks."""

from __future__ import annotations

import argparse
import json

from halora.commands.common import add_model_arguments, add_placement_arguments, csv_list, placement_from
from halora.files import write_json
from halora.lmeval import check_numbers, evaluate_lm_eval, task_manager
from halora.lora import load_adapters
from halora.models import load_model
from halora.noise import parse_noise_spec

HELP = "Evaluate a model (+ adapter) on one programmed chip with lm-evaluation-harness tasks."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--adapter", help="adapter folder (from halora train); none: the base model")
    parser.add_argument("--noise", default="none", help="chip noise spec, e.g. gaussian:sigma=0.02")
    parser.add_argument("--seed", type=int, default=0, help="chip seed")
    group = parser.add_argument_group("lm-eval")
    group.add_argument(
        "--lm-tasks",
        type=csv_list,
        required=True,
        help="lm-eval task, group or YAML path names, comma-separated, e.g. arc_easy",
    )
    group.add_argument("--include-path", help="folder of local lm-eval task YAML files")
    group.add_argument("--limit", type=int, help="at most N items per task (default: all)")
    group.add_argument("--batch-size", type=int, default=16)
    group.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", help="also write the JSON result to this file")
    add_placement_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # bad task names and numbers fail here, before a large model loads
    check_numbers(args.limit, args.batch_size, args.num_fewshot)
    parse_noise_spec(args.noise)
    manager = task_manager(list(args.lm_tasks), args.include_path)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.adapter:
        model = load_adapters(model, [("adapter", args.adapter)])
    scores = evaluate_lm_eval(
        model,
        tokenizer,
        list(args.lm_tasks),
        include_path=args.include_path,
        noise=args.noise,
        seed=args.seed,
        placement=placement_from(args),
        limit=args.limit,
        batch_size=args.batch_size,
        num_fewshot=args.num_fewshot,
        manager=manager,
    )
    result = {"model": args.model, "adapter": args.adapter, **scores}
    if args.out:
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict) -> None:
    print(
        f"{result['model']} + {result['adapter'] or 'no adapter'} on chip {result['noise']} "
        f"seed {result['seed']} (lm-eval {result['lm_eval_version']})"
    )
    for task, metrics in result["tasks"].items():
        n = result["n_samples"].get(task, {}).get("effective")
        shown = "  ".join(
            f"{name} {value:.4f}"
            for name, value in metrics.items()
            if not name.endswith("_stderr") and "_stderr," not in name
        )
        print(f"  {task:28s} {shown}" + (f"  (n={n})" if n is not None else ""))
