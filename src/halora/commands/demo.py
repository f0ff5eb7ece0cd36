"""`halora demo`: the paper's claim end to end on the embedded SmolLM2-135M."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from halora.converters import add_converter_flags, converters_from
from halora.demo import DemoSettings, default_out, load_preset, run_demo
from halora.errors import UsageError
from halora.files import output_folder
from halora.settings import add_flags, given_flags
from halora.train import LOG_FILE, RUN_SETTINGS, TrainSettings

# Training settings the demo fixes for every method (the method itself, one seed, its own
# progress switch) or leaves to `halora train`.
NOT_DEMO_FLAGS = ("method", "seed", "progress", "report_to", "precision", "gradient_checkpointing")
# What `halora train` leaves at the top of its --out; the demo keeps its adapters in
# adapters/<method>/, so these at the top mean the folder is a training run's.
TRAIN_RUN_FILES = ("adapter_model.safetensors", "adapter_config.json", LOG_FILE, RUN_SETTINGS)
# What run_demo writes, by which an existing demo folder is known (and resumed).
DEMO_MARKS = ("demo.json", "adapters", "sweep")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        help="output folder (default: a new runs/demo-DATE folder); an existing demo folder is resumed",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the quick preset: the same pipeline in about 4 minutes"
    )
    parser.add_argument("--with-reg", action="store_true", help="also train the reg-only ablation")
    parser.add_argument(
        "--with-curriculum",
        action="store_true",
        help="also train curriculum, the study's best short-budget method (adds about 4 min)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_flags(parser, DemoSettings, "demo settings (override the preset)", preset=True)
    add_flags(
        parser, TrainSettings, "training recipe (overrides the preset's)", skip=NOT_DEMO_FLAGS, preset=True
    )
    add_converter_flags(parser)


def run(args: argparse.Namespace) -> int:
    preset = load_preset("quick" if args.quick else "full")
    base = {**preset.base, **given_flags(args, TrainSettings)}
    overrides = given_flags(args, DemoSettings)
    converters = converters_from(args)
    if converters is not None:
        overrides["converters"] = converters
    settings = replace(preset, **overrides, base=base)
    extra = [
        method
        for method, wanted in (("reg", args.with_reg), ("curriculum", args.with_curriculum))
        if wanted and method not in settings.methods
    ]
    settings = replace(settings, methods=(*settings.methods, *extra))
    out = args.out or default_out()
    _refuse_training_run(Path(out))
    run_demo(settings, output_folder(out), progress=not args.no_progress)
    return 0


def _refuse_training_run(out: Path) -> None:
    """A demo resumed in a `halora train` folder would mix its outputs with the run's."""
    if not out.is_dir() or any((out / name).exists() for name in DEMO_MARKS):
        return
    if any((out / name).is_file() for name in TRAIN_RUN_FILES):
        raise UsageError(f"--out {out} holds a training run, not a demo: pick a new folder")
