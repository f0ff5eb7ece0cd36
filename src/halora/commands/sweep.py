"""`halora sweep`: adapters x noise levels x chip seeds x tasks, on identical chips."""

from __future__ import annotations

import argparse
import time

from halora.commands.common import add_model_arguments, add_placement_arguments, placement_from
from halora.commands.eval import add_eval_arguments, eval_settings_from
from halora.errors import UsageError
from halora.lora import load_adapters
from halora.models import load_model, model_label
from halora.report import plot_sweep, write_results
from halora.sweep import (
    BASE,
    PAPER_SEEDS,
    PAPER_SIGMAS,
    SweepPlan,
    conditions_from,
    gather_records,
    run_sweep,
)
from halora.tasks import load_tasks

HELP = "Sweep adapters over noise levels and chip seeds; write results.json, CSV, summary and plots."
TEMPLATE = "gaussian:sigma={sigma},scale=tile,tile=64"


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.005,0.01, got {text!r}") from err


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
    parser.add_argument("--config", help="TOML or YAML file whose keys are these flags")
    parser.add_argument("--out", required=True, help="sweep folder (cache, results, plots)")
    add_model_arguments(parser)
    parser.add_argument(
        "--adapters",
        action="append",
        default=[],
        help="LABEL=FOLDER[,LABEL=FOLDER...], e.g. lora=runs/a/lora,halora=runs/a/halora",
    )
    parser.add_argument("--base", action="store_true", help="also evaluate the model without adapter")
    parser.add_argument(
        "--sigmas",
        type=float_list,
        default=PAPER_SIGMAS,
        help="noise levels for the template (default: the paper's 0.005,0.01,0.02)",
    )
    parser.add_argument("--noise-template", default=TEMPLATE, help="noise spec with {sigma}")
    parser.add_argument(
        "--extra-noise",
        action="append",
        default=[],
        help="another chip condition, e.g. saf:p0=0.01,p1=0.01 (repeatable)",
    )
    parser.add_argument("--seeds", type=int, default=PAPER_SEEDS, help="chip seeds per condition")
    add_eval_arguments(parser)
    add_placement_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    state = PartialState()
    adapters = parse_adapters(args.adapters)
    if not adapters and not args.base:
        raise UsageError("nothing to evaluate: give --adapters LABEL=FOLDER and/or --base")
    if args.seeds < 1:
        raise UsageError("--seeds must be >= 1")
    labels = ((BASE, ""),) if args.base else ()
    plan = SweepPlan(
        conditions=tuple(conditions_from(tuple(args.sigmas), args.noise_template, tuple(args.extra_noise))),
        seeds=tuple(range(args.seeds)),
        adapters=labels + adapters,
        tasks=tuple(t.name for t in load_tasks(args.tasks)),
        eval=eval_settings_from(args, progress=state.is_main_process),
        model=model_label(args.model),
    )
    device = args.device if state.num_processes == 1 else state.device
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=device)
    model = load_adapters(model, list(adapters))
    started = time.perf_counter()
    run_sweep(
        model,
        tokenizer,
        load_tasks(args.tasks),
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
