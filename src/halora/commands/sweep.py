"""`halora sweep`: adapters x noise levels x chip seeds x tasks, on identical chips.

With --recal-steps N, the chosen adapters are then recalibrated to every chip of the chosen
levels (halora.recal_sweep, into OUT/recal/), and the recalibration table joins the results.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from halora.commands.common import (
    add_config_flag,
    add_eval_flags,
    add_model_flags,
    add_placement_flags,
    eval_from,
    model_from,
    placement_from,
)
from halora.converters import add_converter_flags, converters_from
from halora.errors import UsageError
from halora.files import output_folder
from halora.lora import load_adapters
from halora.models import load_model
from halora.recal_sweep import (
    RecalAxis,
    RecalPlan,
    check_recal_manifest,
    recal_baseline,
    run_in_folder,
    sweep_recal_plan,
    sweep_table,
)
from halora.report import plot_sweep, write_results
from halora.settings import add_flags, flag_name, from_args, given_flags
from halora.sweep import BASE, ChipGrid, SweepPlan, run_sweep, wait_for_ranks
from halora.tasks import Task, load_tasks

RECAL_FOLDER = "recal"  # the recalibration's cache, tuned adapters and recal.json, in --out


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
    parser.add_argument(
        "--allow-other-base",
        action="store_true",
        help="load adapters whose halora.json names other base weights than the model loaded",
    )
    add_flags(parser, ChipGrid, "chips")
    add_eval_flags(parser)
    add_placement_flags(parser)
    add_converter_flags(parser)
    add_recal_flags(parser)


def add_recal_flags(parser: argparse.ArgumentParser) -> None:
    """RecalAxis's flags. They default to None, so a recal flag given without --recal-steps
    can be told from one left alone (see `recal_axis_from`); the help shows the real default."""
    add_flags(parser, RecalAxis, "per-chip recalibration (after the sweep)", preset=True)
    defaults = RecalAxis()
    for action in parser._actions:
        if action.dest in RecalAxis.__dataclass_fields__:
            shown = _shown(getattr(defaults, action.dest))
            action.help = action.help.replace("default: the preset's", f"default: {shown}")


def _shown(value: object) -> str:
    """A default as it would be typed: a tuple comma-separated, an empty one as ''."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return str(value)


def recal_axis_from(args: argparse.Namespace) -> RecalAxis:
    """The recalibration flags; any of them without --recal-steps N > 0 or
    --recal-twin-rank K > 0 would be ignored, and is refused instead."""
    given = given_flags(args, RecalAxis)
    axis = RecalAxis(**given)
    stray = [flag_name(name) for name in given if name not in ("recal_steps", "recal_twin_rank")]
    if not axis.active and stray:
        raise UsageError(
            f"{', '.join(stray)} without --recal-steps N or --recal-twin-rank K (> 0) would do "
            "nothing: give one of them, or drop them"
        )
    return axis


def process_share() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process. torchrun sets RANK and WORLD_SIZE (also
    on CPU), and a sweep needs nothing else from the launcher: the ranks share only the output
    folder, so no process group is set up (two processes started by hand with RANK and
    WORLD_SIZE split a sweep just as well). Other launchers (accelerate's MPI, ...) are read
    through accelerate's PartialState."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
        if not 0 <= rank < world:
            raise UsageError(f"RANK={rank} with WORLD_SIZE={world}: a rank is 0 ... WORLD_SIZE - 1")
        return rank, world, _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state.local_process_index


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise UsageError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def rank_device(chosen: str, world: int, local_rank: int) -> str:
    """One process: the --device asked for. Several: each rank its own GPU where there are
    GPUs (as under accelerate before), else the CPU."""
    import torch

    if world == 1:
        return chosen
    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


def run(args: argparse.Namespace) -> int:
    rank, world, local_rank = process_share()
    output_folder(args.out)
    adapters = parse_adapters(args.adapters)
    if not adapters and not args.base:
        raise UsageError("nothing to evaluate: give --adapters LABEL=FOLDER and/or --base")
    grid, chosen, converters = from_args(args, ChipGrid), model_from(args), converters_from(args)
    recal = sweep_recal_plan(
        recal_axis_from(args), grid, adapters, eval_from(args, progress=False), converters is not None
    )
    tasks = load_tasks(args.tasks)
    labels = ((BASE, ""),) if args.base else ()
    plan = SweepPlan(
        conditions=grid.conditions(),
        seeds=grid.seeds,
        adapters=labels + adapters,
        tasks=tuple(t.name for t in tasks),
        eval=eval_from(args, progress=rank == 0),
        model=chosen.label,
        converters=converters,
    )
    notes = grid.time_notes()
    if rank == 0:
        for note in notes:  # accepted, but the fit says nothing measured about that time
            print(f"halora: note: {note}", file=sys.stderr)
    if recal is not None and rank == 0:  # other recal settings are refused before the sweep runs
        check_recal_manifest(Path(args.out) / RECAL_FOLDER, recal, placement_from(args))
    device = rank_device(chosen.device, world, local_rank)
    model, tokenizer = load_model(chosen.model, dtype=chosen.dtype, device=device)
    model = load_adapters(model, list(adapters), chosen.label, allow_other_base=args.allow_other_base)
    started = time.perf_counter()
    run_sweep(model, tokenizer, tasks, plan, args.out, placement_from(args), rank=rank, world=world)
    if rank != 0:  # the other ranks are done when their share is
        return 0
    records = wait_for_ranks(args.out, plan, world)
    meta = {"title": f"halora sweep: {plan.model}", **plan.manifest()}
    if notes:
        meta["extrapolated"] = notes
    extra, appendix = {}, []
    if recal is not None:
        del model  # the recalibration loads its own copy, with one trainable adapter
        tuned = recalibrate(args, device, tasks, recal, grid.chip_set)
        # the sources' and the baseline's own cells are the sweep's: same chips, same items
        table = sweep_table(records, tuned, recal, recal_baseline((label for label, _ in adapters), recal))
        records, extra = records + tuned, {"recalibration": table}
        appendix = recal_markdown(table, grid.chip_set)
    paths = write_results(args.out, records, meta, extra, appendix)
    plot_sweep(records, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    print(
        f"wrote {args.out}/results.json, results.csv, summary.md and plots "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0


def recalibrate(
    args: argparse.Namespace, device: str, tasks: list[Task], recal: RecalPlan, chip_set: str
) -> list[dict]:
    """Tune the plan's sources to its chips and score them (OUT/recal, resumable): the cells
    of own chip (+recal), next chip (+recal@other) and the equal-compute +steps."""
    from halora.lora import load_trainable

    chosen = model_from(args)
    label, folder = recal.sources[0]
    labels, specs = ", ".join(s for s, _ in recal.sources), ", ".join(recal.specs)
    print(f"recalibration: {labels} tuned to each {chip_set} chip of {specs}")
    model, tokenizer = load_model(chosen.model, dtype=chosen.dtype, device=device)
    model = load_trainable(model, folder, label)
    return run_in_folder(model, tokenizer, tasks, recal, Path(args.out) / RECAL_FOLDER, placement_from(args))


def recal_markdown(table: dict, chip_set: str) -> list[str]:
    """The study's recalibration section, its heading naming the chip set the sweep used."""
    from halora.study.report import recalibration_markdown

    lines = recalibration_markdown(table)
    lines[0] = lines[0].replace("(test chips)", f"({chip_set} chips)")
    return lines
