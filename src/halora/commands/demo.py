"""`halora demo`: the paper's claim end to end on the embedded SmolLM2-135M."""

from __future__ import annotations

import argparse
from dataclasses import replace

from halora.commands.common import add_settings_arguments, settings_from
from halora.demo import DEMO, QUICK, DemoSettings, default_out, run_demo

HELP = (
    "Train lora / noisy / halora adapters on SmolLM2-135M, sweep them over simulated RRAM "
    "chips, print the table and the energy bill (about 15 min on 2 CPU cores; --quick about 5)."
)

SETTING_HELP = {
    "model": "model name or folder",
    "tasks": "task spec",
    "methods": "adapters to train: lora, noisy, halora, reg (the regulariser alone), curriculum",
    "steps": "optimizer steps per adapter",
    "train_n": "training items per task",
    "test_n": "test items per task",
    "seeds": "chip seeds per noise condition",
    "sigmas": "tile-64 Gaussian noise levels",
    "saf": "the stuck-at-fault condition",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        help="output folder (default: a new runs/demo-DATE folder); an existing demo folder is resumed",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer steps, items and seeds: the same pipeline in about 5 minutes",
    )
    parser.add_argument("--with-reg", action="store_true", help="also train the reg-only ablation")
    parser.add_argument(
        "--with-curriculum",
        action="store_true",
        help="also train curriculum, the study's best method (adds about 4 min)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_settings_arguments(
        parser,
        DemoSettings,
        SETTING_HELP,
        "demo settings (override the preset)",
        default_note="default: the preset's",
    )
    parser.set_defaults(**{name: None for name in DemoSettings.__dataclass_fields__})


def run(args: argparse.Namespace) -> int:
    preset = QUICK if args.quick else DEMO
    given = {
        name: value
        for name, value in vars(args).items()
        if name in DemoSettings.__dataclass_fields__ and value is not None
    }
    settings = settings_from(argparse.Namespace(), DemoSettings, **{**vars_of(preset), **given})
    extra = [
        m
        for m, wanted in (("reg", args.with_reg), ("curriculum", args.with_curriculum))
        if wanted and m not in settings.methods
    ]
    settings = replace(settings, methods=(*settings.methods, *extra))
    run_demo(settings, args.out or default_out(), progress=not args.no_progress)
    return 0


def vars_of(settings: DemoSettings) -> dict:
    return {name: getattr(settings, name) for name in DemoSettings.__dataclass_fields__}
