"""Flag groups shared by several commands, all generated from settings classes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from halora.cim import ChipChoice, Placement
from halora.evaluate import EvalSettings
from halora.lora import LoraSettings
from halora.models import ModelSettings
from halora.settings import add_flags, check, from_args, setting


@dataclass(frozen=True)
class TaskChoice:
    """Which tasks, and how many training items of each."""

    WHAT: ClassVar[str] = "task setting"

    tasks: str = setting(
        "default",
        "task spec: default (the reasoning suite), rg:NAME,..., commonsense:FOLDER, json:FILE",
    )
    train_n: int = setting(500, "training items per task", min=1)

    def __post_init__(self) -> None:
        check(self)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML or YAML file whose keys are this command's flags")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ModelSettings, "model")


def add_placement_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, Placement, "hybrid placement")


def add_lora_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, LoraSettings, "LoRA")


def add_chip_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ChipChoice, "chip")


def add_eval_flags(parser: argparse.ArgumentParser, tasks: bool = True) -> None:
    if tasks:
        add_flags(parser, TaskChoice, "tasks", only=("tasks",))
    add_flags(parser, EvalSettings, "evaluation")


def model_from(args: argparse.Namespace) -> ModelSettings:
    return from_args(args, ModelSettings)


def placement_from(args: argparse.Namespace) -> Placement:
    return from_args(args, Placement)


def lora_from(args: argparse.Namespace) -> LoraSettings:
    return from_args(args, LoraSettings)


def chip_from(args: argparse.Namespace) -> ChipChoice:
    return from_args(args, ChipChoice)


def eval_from(args: argparse.Namespace, progress: bool) -> EvalSettings:
    return from_args(args, EvalSettings, progress=progress)
