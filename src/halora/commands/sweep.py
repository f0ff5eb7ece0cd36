"""`halora sweep`: adapters x noise levels x chip seeds x tasks, on identical chips."""

from __future__ import annotations

import argparse
import time

from halora.commands.common import (
    add_config_flag,
    add_eval_flags,
    add_model_flags,
    add_placement_flags,
    eval_from,
    model_from,
    placement_from,
)
from halora.errors import UsageError
from halora.files import output_folder
from halora.lora import load_adapters
from halora.models import load_model
from halora.report import plot_sweep, write_results
from halora.settings import add_flags, from_args
from halora.sweep import BASE, ChipGrid, SweepPlan, gather_records, run_sweep
from halora.tasks import load_tasks


def parse_adapters(items: list[str]) -> tuple[tuple[str, str], ...]:
    """["lora=DIR", "halora=DIR"] or one comma-separated string -> ((label, DIR), ...)."""
    pairs = []
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            label, sep, folder = part.partition("=")
            if not sep or not label or not folder:
                raise UsageError(f"adapter {part!r} is not LABEL=FOLDER, e.g. halora=runs/demo/halora")
            pairs.append((label.strip(), folder.strip()))
    for label, _ in pairs:
        if "." in label or "@" in label:
            raise UsageError(
                f"adapter label {label!r} may not contain '.' or '@': PEFT uses it as a module name"
            )
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels) or BASE in labels:
        raise UsageError(f"adapter labels must be unique and not {BASE!r}: got {', '.join(labels)}")
    return tuple(pairs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser)
    parser.add_argument("--out", required=True, help="sweep folder (cache, results, plots)")
    add_model_flags(parser)
    parser.add_argument(
        "--adapters",
        action="append",
        default=[],
        help="LABEL=FOLDER[,LABEL=FOLDER...], e.g. lora=runs/a/lora,halora=runs/a/halora",
    )
    parser.add_argument("--base", action="store_true", help="also evaluate the model without adapter")
    add_flags(parser, ChipGrid, "chips")
    add_eval_flags(parser)
    add_placement_flags(parser)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    state = PartialState()
    output_folder(args.out)
    adapters = parse_adapters(args.adapters)
    if not adapters and not args.base:
        raise UsageError("nothing to evaluate: give --adapters LABEL=FOLDER and/or --base")
    grid, chosen = from_args(args, ChipGrid), model_from(args)
    tasks = load_tasks(args.tasks)
    labels = ((BASE, ""),) if args.base else ()
    plan = SweepPlan(
        conditions=grid.conditions(),
        seeds=grid.seeds,
        adapters=labels + adapters,
        tasks=tuple(t.name for t in tasks),
        eval=eval_from(args, progress=state.is_main_process),
        model=chosen.label,
    )
    device = chosen.device if state.num_processes == 1 else state.device  # each rank its own GPU
    model, tokenizer = load_model(chosen.model, dtype=chosen.dtype, device=device)
    model = load_adapters(model, list(adapters))
    started = time.perf_counter()
    run_sweep(
        model,
        tokenizer,
        tasks,
        plan,
        args.out,
        placement_from(args),
        rank=state.process_index,
        world=state.num_processes,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        records = gather_records(args.out)
        paths = write_results(args.out, records, {"title": f"halora sweep: {plan.model}", **plan.manifest()})
        plot_sweep(records, args.out)
        print(paths["md"].read_text(encoding="utf-8"))
        print(
            f"wrote {args.out}/results.json, results.csv, summary.md and plots "
            f"in {time.perf_counter() - started:.0f} s"
        )
    return 0
