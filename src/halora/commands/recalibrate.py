"""`halora recalibrate`: tune an adapter's SRAM LoRA to one programmed RRAM chip."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from halora.commands.common import (
    TaskChoice,
    add_chip_flags,
    add_model_flags,
    add_placement_flags,
    chip_from,
    model_from,
    placement_from,
)
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.lora import load_trainable, quiet_tiny_save
from halora.recalibrate import RecalSettings
from halora.settings import add_flags, from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="new folder for the tuned adapter (PEFT) and halora.json"
    )
    add_model_flags(parser)
    parser.add_argument("--adapter", required=True, help="the adapter to tune (from halora train, or PEFT)")
    add_chip_flags(parser)
    add_flags(parser, TaskChoice, "calibration data", only=("tasks",))
    add_flags(parser, RecalSettings, "recalibration")
    parser.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="ITEMS",
        help="then score the starting and the tuned adapter on this chip, ITEMS test items per task (0: no)",
    )
    add_placement_flags(parser)


def run(args: argparse.Namespace) -> int:
    from halora.recalibrate import calibration_examples, recalibrate, recalibration_record
    from halora.sidecar import SIDECAR, check_base
    from halora.tasks import load_tasks

    settings, chip, chosen = from_args(args, RecalSettings), chip_from(args), model_from(args)
    placement = placement_from(args)
    out = _new_folder(Path(args.out))
    source = Path(args.adapter)
    if not (source / "adapter_config.json").is_file():
        raise UsageError(f"--adapter {source} has no adapter_config.json: give a folder from halora train")
    tasks = load_tasks(args.tasks)
    examples = calibration_examples(tasks, settings.calib_n)
    model, tokenizer = chosen.load()
    trained = check_base(source, model, chosen.label)
    model = load_trainable(model, source)
    before = _score(model, tokenizer, tasks, chip, placement, args.evaluate)
    if settings.twin_rank:
        from halora.twin import widen

        model = widen(model, settings.twin_rank, placement)
    result = recalibrate(model, tokenizer, examples, chip.noise, chip.chip_seed, settings, placement)
    after = _score(model, tokenizer, tasks, chip, placement, args.evaluate)
    record = trained | {
        "recalibration": recalibration_record(
            chip.noise, chip.chip_seed, settings, args.tasks, str(source), result
        )
    }
    if before is not None:
        record["recalibration"]["evaluation"] = {"items": args.evaluate, "before": before, "after": after}
    _write_adapter(model, out, {SIDECAR: record})
    what = []
    if result.removed is not None:
        removed = f"{100 * result.removed:.0f} % of E|dW x|^2 removed"
        what.append(f"twin correction rank {settings.twin_rank}: {removed}")
    if result.losses:
        what.append(
            f"{result.steps} steps, {settings.loss} loss {result.losses[0]:.4f} -> {result.final_loss:.4f}"
        )
    print(
        f"tuned {source} on chip {chip.noise} seed {chip.chip_seed} ({'; '.join(what)}) "
        f"in {result.seconds:.1f} s; adapter in {out}"
    )
    if before is not None:
        print(
            f"  accuracy on this chip: {100 * before:.1f} % before, {100 * after:.1f} % after "
            f"({args.evaluate} items per task)"
        )
    return 0


def _new_folder(out: Path) -> Path:
    """--out must be new (or empty): a recalibrated adapter never overwrites another."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder: pick a new folder")
    from halora.files import output_folder

    output_folder(out.parent if out.parent != Path("") else Path("."))
    return out


def _score(model, tokenizer, tasks, chip, placement, items: int) -> float | None:
    """Task-averaged accuracy of the active adapter on the chip (None when not asked)."""
    if items <= 0:
        return None
    from halora.cim import program_chip
    from halora.evaluate import evaluate_task

    settings = EvalSettings(items=items)
    with program_chip(model, chip.noise, chip.chip_seed, placement):
        scores = [evaluate_task(model, tokenizer, task, settings).accuracy for task in tasks]
    return sum(scores) / len(scores)


def _write_adapter(model, out: Path, extra_files: dict[str, dict]) -> None:
    """The adapter and its sidecar into a temporary folder beside `out`, renamed onto it at
    the end: an interrupted write leaves no half-adapter where --out points."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else "."))
    try:
        with quiet_tiny_save():
            model.save_pretrained(staging)
        for name, content in extra_files.items():
            (staging / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, 0o755)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
