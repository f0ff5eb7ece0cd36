"""`halora train`: train a LoRA adapter with one of the four methods."""

from __future__ import annotations

import argparse

from halora.commands.common import (
    add_lora_arguments,
    add_model_arguments,
    add_placement_arguments,
    add_settings_arguments,
    lora_from,
    placement_from,
    settings_from,
)
from halora.models import load_model, model_label
from halora.train import TrainSettings, train

HELP = (
    "Train a LoRA adapter: lora, noisy (noise injection), reg (regulariser), halora (both) or "
    "curriculum (noise that grows over training)."
)

SETTING_HELP = {
    "method": "lora | noisy | reg | halora | curriculum",
    "noise": "training noise spec written into the RRAM-placed base weights",
    "redraw_every": "re-draw the training noise every K optimizer steps",
    "noise_seed": "seed of the training noise draws",
    "noise_ramp_steps": "grow the training noise's sigma from 0 over N steps "
    "(0: off; for curriculum 2/3 of the steps)",
    "noise_targets": "layers that get training noise (default: the RRAM placement)",
    "mu": "weight of the HaLoRA regulariser",
    "reduction": "sum or mean of the regulariser over LoRA modules",
    "reg_scaled": "multiply each module's term by its LoRA scaling alpha/r",
    "mu_warmup_steps": "ramp mu linearly from 0 over this many steps",
    "steps": "optimizer steps",
    "batch_size": "examples per device per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate (AdamW)",
    "warmup_steps": "learning-rate warmup steps",
    "schedule": "learning-rate schedule (transformers lr_scheduler_type)",
    "weight_decay": "AdamW weight decay",
    "max_length": "tokens per example (the prompt is cut from the left)",
    "train_on_inputs": "put loss on the prompt tokens too (LLM-Adapters' train_on_inputs)",
    "seed": "seed of LoRA init, data order and dropout",
    "precision": "fp32 | bf16 | fp16 (the latter two on GPU)",
    "gradient_checkpointing": "trade compute for memory",
    "save_steps": "checkpoint every N steps (for --resume)",
    "logging_steps": "log loss and reg term every N steps",
    "report_to": "comma-separated loggers: tensorboard, wandb (when installed)",
    "progress": "show a progress bar",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML or YAML file whose keys are these flags")
    parser.add_argument("--out", required=True, help="output folder (adapter, halora.json, log)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_model_arguments(parser)
    group = parser.add_argument_group("data")
    group.add_argument(
        "--tasks",
        default="default",
        help="task spec: default (the reasoning suite), rg:NAME,..., "
        "commonsense:FOLDER, json:FILE (default: %(default)s)",
    )
    group.add_argument("--train-n", type=int, default=500, help="training items per task")
    add_settings_arguments(parser, TrainSettings, SETTING_HELP, "training")
    add_lora_arguments(parser)
    add_placement_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from halora.tasks import load_tasks

    settings = settings_from(args, TrainSettings)
    lora, placement = lora_from(args), placement_from(args)
    tasks = load_tasks(args.tasks)
    examples = [example for task in tasks for example in task.examples("train", args.train_n)]
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    result = train(
        model,
        tokenizer,
        examples,
        args.out,
        settings,
        lora,
        placement,
        model_name=model_label(args.model),
        resume=args.resume,
        extra_metadata={"tasks": args.tasks, "train_n": args.train_n, "model_arg": args.model},
    )
    if PartialState().is_main_process:  # one line under torchrun / accelerate, not one per rank
        loss = f"{result.final_loss:.4f}" if result.log else "not logged (steps < logging steps)"
        print(
            f"trained {settings.method} for {result.steps} steps, final loss {loss}; "
            f"adapter in {result.out_dir}"
        )
    return 0
