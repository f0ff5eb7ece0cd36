"""`halora train`: train a LoRA adapter with one of the five methods."""

from __future__ import annotations

import argparse

from halora.commands.common import (
    TaskChoice,
    add_config_flag,
    add_lora_flags,
    add_model_flags,
    add_placement_flags,
    lora_from,
    model_from,
    placement_from,
)
from halora.settings import add_flags, from_args
from halora.train import TrainSettings, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser)
    parser.add_argument("--out", required=True, help="output folder (adapter, halora.json, log)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last checkpoint, with the same settings "
        "(a run stopped before its first checkpoint starts over there)",
    )
    add_model_flags(parser)
    add_flags(parser, TaskChoice, "data")
    add_flags(parser, TrainSettings, "training")
    add_lora_flags(parser)
    add_placement_flags(parser)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from halora.pipeline import training_examples
    from halora.tasks import load_tasks

    settings = from_args(args, TrainSettings)
    lora, placement, chosen = lora_from(args), placement_from(args), model_from(args)
    data = from_args(args, TaskChoice)
    examples = training_examples(load_tasks(data.tasks), data.train_n)
    model, tokenizer = chosen.load()
    result = train(
        model,
        tokenizer,
        examples,
        args.out,
        settings,
        lora,
        placement,
        model_name=chosen.label,
        resume=args.resume,
        extra_metadata={"tasks": data.tasks, "train_n": data.train_n, "model_arg": chosen.model},
    )
    if PartialState().is_main_process:  # one line under torchrun / accelerate, not one per rank
        loss = f"{result.final_loss:.4f}" if result.log else "not logged (steps < logging steps)"
        print(
            f"trained {settings.method} for {result.steps} steps, final loss {loss}; "
            f"adapter in {result.out_dir}"
        )
    return 0
