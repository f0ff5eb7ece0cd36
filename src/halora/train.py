"""Training a LoRA adapter for a noisy chip: five methods on one code path.

    method      noise in the frozen base   HaLoRA regulariser
    lora        no                         no      the paper's baseline
    noisy       yes, re-drawn every K      no      noise injection alone (IBM's AHWA-LoRA recipe)
    reg         no                         yes     the regulariser alone (an ablation)
    halora      yes, re-drawn every K      yes     the paper's method
    curriculum  yes, sigma grows 0 -> full no      beyond the paper (see below)

curriculum: the adapter first learns the task on a (nearly) clean base, then the training
noise grows linearly to its full sigma over the first 2/3 of the steps (or
noise_ramp_steps). Full noise from step 0 makes a short run learn the task on a broken
model and costs clean accuracy; the ramp keeps most of it while still ending on the noisy
chip. It beat HaLoRA in the reduced study (README, "Robustness study").

objective (any method with training noise; beyond the paper): "task" is the usual loss;
"distill" replaces it by KL(clean model ‖ noisy model), both with the current adapter, at
every position of the batch (consistency under noise: the noisy chip is pulled towards
what the clean model with the same adapter predicts); "both" adds the two. The clean
forward runs on the stashed clean weights (Chip.clean_view) without a backward pass.

Training runs on transformers' Trainer, so `accelerate launch` and `torchrun` (DDP,
DeepSpeed ZeRO-1/2) work unchanged. The noise is written into the RRAM-placed base
weights in place (halora.cim.Chip), so the forward and the backward pass both see the
noisy base exactly as the chip would; the LoRA weights, the optimizer state and the
saved adapter never contain noise. Every rank derives the same draw from
(noise seed, draw index), so data-parallel ranks train on the same chip. Sharded
parameters (FSDP, ZeRO-3) cannot hold per-tile noise written in place: the noisy
methods refuse them with a clear error; lora and reg run under them.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError
from torch.utils.data import Dataset
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SchedulerType,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from halora import files
from halora.cim import Chip, Placement
from halora.distill import kl_full
from halora.encoding import labelled_pair
from halora.errors import UsageError
from halora.lora import (
    REDUCTIONS,
    LoraSettings,
    attach_lora,
    halora_regularizer,
    lora_factors,
    quiet_peft_wrap,
    quiet_tiny_save,
)
from halora.noise import GAUSSIAN_TEMPLATE, parse_noise_spec, split_noise
from halora.precision import check_precision
from halora.seeds import derive_seed
from halora.settings import check, key_names, setting
from halora.sidecar import SIDECAR, sidecar, weights_hash

METHODS: tuple[str, ...] = ("lora", "noisy", "reg", "halora", "curriculum")
OBJECTIVES: tuple[str, ...] = ("task", "distill", "both")
LOG_FILE = "train_log.jsonl"
# The settings a run started with, compared on --resume: a checkpoint continued under other
# settings would be an adapter of no recipe at all.
RUN_SETTINGS = "run_settings.json"
# What a resume may change: how the run reports and how often it checkpoints, not what it
# computes. model_arg is the path typed for the model, which may move; its weights are
# compared through base_model_sha256.
RESUME_MAY_CHANGE = frozenset({"progress", "report_to", "logging_steps", "save_steps", "model_arg"})
# What a fresh run writes into --out before its first checkpoint (runs/: TensorBoard); a
# folder holding nothing else is a run killed early, which --resume starts over.
EARLY_RUN_FILES = frozenset({LOG_FILE, RUN_SETTINGS, "runs"})
CHECKPOINT = re.compile(r"checkpoint-(\d+)")  # transformers' PREFIX_CHECKPOINT_DIR-<step>
# The Trainer writes this file last into a checkpoint folder: without it (or torn) the
# folder is what a kill or a full disk left mid-save, and cannot be resumed from.
TRAINER_STATE = "trainer_state.json"
# A full or read-only disk: errno for Python's writes; torch's zip writer and safetensors'
# Rust writer raise their own errors, recognised by these words.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})
DISK_FULL_WORDS = (
    "unexpected pos",
    "PytorchStreamWriter failed",
    "No space left on device",
    "Read-only file system",
    "StorageFull",
    "ReadOnlyFilesystem",
)
NOISE_SEED_BASE = 1234


@dataclass(frozen=True)
class TrainSettings:
    """One training run. Config-file keys are these names; CLI flags are the same with dashes."""

    WHAT: ClassVar[str] = "training setting"

    method: str = setting("halora", "training method", choices=METHODS)
    # The defaults are the HaLoRA recipe chosen on validation chips by the reduced robustness
    # study (presets/studies/reduced.toml; README, "Robustness study"): tile-64 Gaussian
    # sigma 0.02, re-drawn every K = 10 steps. The paper's own are sigma 0.01 and K = 400
    # (K = 400 never re-draws in a short run).
    train_noise: str = setting(
        GAUSSIAN_TEMPLATE.format(sigma=0.02),
        "training noise spec written into the RRAM-placed base weights",
        aliases=("noise",),
    )
    redraw_every: int = setting(10, "re-draw the training noise every K optimizer steps", min=1)
    # Each training seed gets its own sequence of training chips (1234 + seed by default; 1234
    # is the seed every run used before, so training seed 0 keeps its draws), or the
    # training seeds of a study would share one noise sequence and their spread understate it.
    noise_seed: int | None = setting(
        None, "seed of the training noise draws (default: 1234 + the training seed)", min=0
    )
    # Noise-level curriculum (beyond the paper): 0 = off, except for method curriculum,
    # where 0 means 2/3 of the steps (the study's 40 of 60).
    noise_ramp_steps: int = setting(
        0, "grow the training noise's sigma from 0 over N steps (0: off; curriculum: 2/3 of the steps)", min=0
    )
    noise_targets: tuple[str, ...] = setting(
        (), "layers that get training noise (leaf names; empty: the RRAM placement)"
    )
    # mu = 0.1 is the paper's and was chosen over 0.01 by the study; "mean" over modules keeps
    # mu's meaning independent of the number of LoRA modules (summed over SmolLM2's 150
    # modules the term swamps the task loss and cost 12-14 points on validation chips).
    # Distillation under noise (beyond the paper): the noisy model's next-token distribution
    # is pulled towards the clean model's with the same, current adapter, at every position
    # (a dense signal; the labels are not needed for it). Costs one more forward pass (no
    # backward) per step and one more copy of the RRAM weights in memory.
    objective: str = setting(
        "task",
        "task loss; distill: KL(clean || noisy) with the current adapter; both: their sum",
        choices=OBJECTIVES,
    )
    distill_weight: float = setting(1.0, "weight of the KL term (objective distill or both)", min=0)
    mu: float = setting(0.1, "weight of the HaLoRA regulariser", min=0)
    reduction: str = setting("mean", "sum or mean of the regulariser over LoRA modules", choices=REDUCTIONS)
    reg_scaled: bool = setting(False, "multiply each module's term by its LoRA scaling alpha/r")
    mu_warmup_steps: int = setting(0, "ramp mu linearly from 0 over this many steps", min=0)
    steps: int = setting(300, "optimizer steps", min=1)
    batch_size: int = setting(8, "training examples per device per micro-batch", min=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", min=1)
    lr: float = setting(1e-3, "peak learning rate (AdamW)", min=0)
    warmup_steps: int = setting(20, "learning-rate warmup steps", min=0)
    schedule: str = setting(
        "linear",
        "learning-rate schedule (transformers lr_scheduler_type)",
        choices=tuple(t.value for t in SchedulerType),
    )
    weight_decay: float = setting(0.0, "AdamW weight decay", min=0)
    max_length: int = setting(256, "tokens per training example (the prompt is cut from the left)", min=1)
    train_on_inputs: bool = setting(False, "put loss on the prompt tokens too (LLM-Adapters' option)")
    seed: int = setting(0, "training seed: LoRA init, data order and dropout", min=0)
    # bf16 autocast on a CPU where it has bf16 matrix units (halora.precision detects them)
    precision: str = setting(
        "fp32", "fp32; bf16 (GPU, or a CPU with bf16 units); fp16 (GPU)", choices=("fp32", "bf16", "fp16")
    )
    gradient_checkpointing: bool = setting(False, "trade compute for memory")
    save_steps: int = setting(100, "checkpoint every N steps (for --resume)", min=1)
    logging_steps: int = setting(10, "log loss and reg term every N steps", min=1)
    report_to: tuple[str, ...] = setting((), "loggers, comma-separated: tensorboard, wandb (when installed)")
    progress: bool = setting(True, "show a progress bar")

    def __post_init__(self) -> None:
        check(self)
        _check_loggers(self.report_to)
        noise = parse_noise_spec(self.train_noise)  # fail before any work on a bad spec
        if self.injects_noise and self.ramp_steps > 0:
            noise.scaled(0.5)  # a ramp needs a magnitude to grow: refused now where there is none
        if self.distills and not self.injects_noise:
            raise UsageError(
                f"--objective {self.objective} compares the noisy model with the clean one, and "
                f"method {self.method} injects no noise: use noisy, halora or curriculum"
            )

    @property
    def distills(self) -> bool:
        return self.objective in ("distill", "both")

    @property
    def effective_noise_seed(self) -> int:
        return self.noise_seed if self.noise_seed is not None else NOISE_SEED_BASE + self.seed

    @property
    def injects_noise(self) -> bool:
        return self.method in ("noisy", "halora", "curriculum")

    @property
    def ramp_steps(self) -> int:
        """Steps over which the training noise grows to full sigma (0: full from the start)."""
        if self.method == "curriculum" and self.noise_ramp_steps == 0:
            return max(1, round(2 * self.steps / 3))
        return self.noise_ramp_steps

    @property
    def regularizes(self) -> bool:
        return self.method in ("reg", "halora") and self.mu > 0

    @classmethod
    def keys(cls) -> set[str]:
        return set(key_names(cls))


def _check_loggers(loggers: tuple[str, ...]) -> None:
    """--report-to names loggers transformers knows and finds installed."""
    if not loggers:
        return
    from transformers.integrations import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    missing = [name for name in loggers if name not in available]
    if missing:
        found = ", ".join(available) or "none is installed"
        raise UsageError(
            f"--report-to {', '.join(missing)}: not an installed logger (available here: {found}); "
            "pip install tensorboard or wandb, or drop --report-to"
        )


class PairDataset(Dataset):
    """Tokenized prompt/answer examples; labels are -100 on the prompt unless train_on_inputs."""

    def __init__(
        self, examples, tokenizer: PreTrainedTokenizerBase, max_length: int, train_on_inputs: bool = False
    ) -> None:
        if not examples:
            raise UsageError("no training examples: check --tasks and --train-n")
        self.items = []
        for example in examples:
            ids, labels = labelled_pair(
                tokenizer, example.prompt, example.answer, max_length, train_on_inputs
            )
            self.items.append(
                {
                    "input_ids": ids,
                    "attention_mask": [1] * len(ids),
                    "labels": labels,
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def draw_seed(noise_seed: int, draw: int) -> int:
    """The chip seed of the draw-th training noise draw: disjoint from evaluation seeds."""
    return derive_seed("train", noise_seed, draw)


class NoiseInjection(TrainerCallback):
    """Programs the base with a fresh draw at steps 0, K, 2K, ... and restores it at the end.

    The draw index is global_step // K, so a resumed run programs the same draw it would
    have had at that step.
    """

    def __init__(self, model: torch.nn.Module, settings: TrainSettings, placement: Placement):
        self.model, self.settings, self.placement = model, settings, placement
        self.chip: Chip | None = None
        self.draws: list[tuple[int, int]] = []  # (global step, draw index) of each programming

    def _program(self, step: int) -> None:
        draw = step // self.settings.redraw_every
        seed = draw_seed(self.settings.effective_noise_seed, draw)
        # the ramp factor of the draw's own step, so a run resumed mid-period programs the
        # same chip as the uninterrupted run did
        scale = self.noise_scale(draw * self.settings.redraw_every)
        noise = parse_noise_spec(self.settings.train_noise).scaled(scale)
        if self.chip is None:
            # distillation reads the clean weights at every step: kept beside the noisy ones
            store = "device" if self.settings.distills else "auto"
            self.chip = Chip(self.model, noise, seed, self.placement, store=store)
        else:
            self.chip.reprogram(seed, noise)
        self.draws.append((step, draw))

    def noise_scale(self, step: int) -> float:
        ramp = self.settings.ramp_steps
        return 1.0 if ramp <= 0 else min(1.0, step / ramp)

    def on_train_begin(self, args, state, control, **kwargs):
        self._program(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.settings.redraw_every == 0 and (not self.draws or self.draws[-1][0] != step):
            self._program(step)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self.chip is not None:
            self.chip.restore()
            self.chip = None


class JsonlLog(TrainerCallback):
    """Every log record (loss, reg term, lr, ...) appended to train_log.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class HaloraTrainer(Trainer):
    """Trainer whose loss is L_task + mu(t) * L_reg, where the objective is the task's, or
    w * KL(clean || noisy) (+ L_task for "both") + mu(t) * L_reg; the terms are logged apart."""

    def __init__(self, *args, settings: TrainSettings, injection: NoiseInjection | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.injection = injection  # its chip shows the clean weights to the distillation teacher
        self._extra: dict[str, tuple[float, int]] = {}  # logged terms: name -> (sum, count)

    def mu_at(self, step: int) -> float:
        if not self.settings.regularizes:
            return 0.0
        if self.settings.mu_warmup_steps <= 0:
            return self.settings.mu
        return self.settings.mu * min(1.0, (step + 1) / self.settings.mu_warmup_steps)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        distilling = self.settings.distills and model.training and self.injection is not None
        if distilling:
            teacher = self._clean_logits(model, inputs)
        result = super().compute_loss(model, inputs, distilling or return_outputs, num_items_in_batch)
        loss, outputs = result if (distilling or return_outputs) else (result, None)
        if distilling:
            kl = kl_full(outputs.logits, teacher, inputs["attention_mask"])
            self._add_to_log("kl", kl)
            kl = self._per_micro_batch(kl, num_items_in_batch)
            weighted = self.settings.distill_weight * kl.to(loss.dtype)
            loss = weighted if self.settings.objective == "distill" else loss + weighted
        mu = self.mu_at(self.state.global_step)
        if mu > 0.0 and model.training:
            reg = halora_regularizer(
                lora_factors(self.accelerator.unwrap_model(model)),
                self.settings.reduction,
                self.settings.reg_scaled,
            )
            self._add_to_log("reg", reg)
            loss = loss + mu * self._per_micro_batch(reg, num_items_in_batch).to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _clean_logits(self, model, inputs) -> torch.Tensor:
        """The teacher: the clean base with the current adapter, dropout off."""
        model.eval()
        try:
            with self.injection.chip.clean_view():
                return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        finally:
            model.train()

    def _add_to_log(self, name: str, value: torch.Tensor) -> None:
        total, count = self._extra.get(name, (0.0, 0))
        self._extra[name] = (total + float(value.detach()), count + 1)

    def _per_micro_batch(self, term: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        # The task loss may already be normalised over the whole accumulated batch; then the
        # Trainer will not divide by the accumulation steps, so an added term must be.
        if self._loss_scaled_for_accumulation(num_items_in_batch):
            return term / self.current_gradient_accumulation_steps
        return term

    def _loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for name, (total, count) in self._extra.items():
                logs[name] = total / count
            if "reg" in self._extra:
                logs["mu"] = self.mu_at(self.state.global_step)
            self._extra.clear()
        super().log(logs, start_time)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_loss: float
    log: list[dict] = field(default_factory=list)
    draws: list[tuple[int, int]] = field(default_factory=list)


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples,
    out_dir: str | Path,
    settings: TrainSettings = TrainSettings(),
    lora: LoraSettings = LoraSettings(),
    placement: Placement = Placement(),
    model_name: str = "",
    resume: bool = False,
    extra_metadata: dict | None = None,
) -> TrainResult:
    """Train an adapter on `examples`; write it (PEFT format) and halora.json to out_dir.

    resume: continue from the last complete checkpoint in out_dir under the same settings,
    or start over there when the run stopped before its first one."""
    out = Path(out_dir)
    start = _check_out_dir(out, resume)
    files.output_folder(out)  # unwritable: one line now, not a traceback after the model loads
    base_hash = weights_hash(model)
    run_record = _run_record(settings, lora, placement, model_name, base_hash, extra_metadata or {})
    whole, torn = _resume_point(out) if start != "new" else (None, [])
    checkpoint = str(whole) if whole is not None else None
    if checkpoint is not None:
        _check_same_settings(out, run_record)
    set_seed(settings.seed)  # the LoRA init is part of the run: same seed, same adapter
    with quiet_peft_wrap():
        peft_model = attach_lora(model, lora)
    if settings.gradient_checkpointing:
        _refuse_read_noise_under_checkpointing(settings)
        peft_model.enable_input_require_grads()
    dataset = PairDataset(examples, tokenizer, settings.max_length, settings.train_on_inputs)
    callbacks: list[TrainerCallback] = [JsonlLog(out / LOG_FILE)]
    injection = None
    if settings.injects_noise:
        noise_placement = (
            dataclasses.replace(placement, rram_targets=settings.noise_targets)
            if settings.noise_targets
            else placement
        )
        injection = NoiseInjection(peft_model, settings, noise_placement)
        callbacks.insert(0, injection)
    trainer = HaloraTrainer(
        model=peft_model,
        args=_training_arguments(out, settings),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=callbacks,
        settings=settings,
        injection=injection,
    )
    if settings.injects_noise:
        _refuse_sharded_noise(trainer)
    trainer.accelerator.wait_for_everyone()  # every rank has looked at --out before rank 0 writes
    if trainer.is_world_process_zero():
        _drop_torn(torn, whole)
        _start_log(out, checkpoint, run_record)
    try:
        with quiet_tiny_save(), _disk_full_is_usage_error(out, partial(_saving_at, out, trainer)):
            trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if injection is not None:
            injection.close()  # the base is clean again even if training failed
    if trainer.is_world_process_zero():
        adapter_record = sidecar(settings, lora, placement, model_name, base_hash, extra_metadata or {})
        with _disk_full_is_usage_error(out, lambda: "the adapter"):
            _save_adapter(peft_model, out, adapter_record)
    log = [record for record in trainer.state.log_history if "loss" in record]
    return TrainResult(
        out,
        trainer.state.global_step,
        log[-1]["loss"] if log else math.nan,
        log,
        injection.draws if injection else [],
    )


def resume_or_clear(folder: Path) -> bool:
    """For a run folder halora itself owns (the demo's, a study's): True when it holds a
    checkpoint to resume. A run stopped before its first checkpoint leaves a folder with
    nothing worth keeping that would block a fresh start: it is removed."""
    if not folder.is_dir():
        return False
    if get_last_checkpoint(str(folder)) is not None:
        return True
    shutil.rmtree(folder)
    return False


def _check_out_dir(out: Path, resume: bool) -> str:
    """How a run uses `out`: "new" (missing or empty), "checkpoint" (--resume: continue from
    the last checkpoint) or "restart" (--resume of a run stopped before its first
    checkpoint: nothing worth keeping, so it starts over there). Checked on every rank
    before any writes, so that `halora train ... --resume` restarts any interrupted run."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder")
    if resume:
        if not out.is_dir():
            raise UsageError(
                f"nothing to resume in {out}: no such folder; check the path, "
                "or drop --resume to start a new run"
            )
        whole, torn = _resume_point(out)
        if whole is not None:
            return "checkpoint"
        # torn checkpoints only: the run stopped before it saved a whole one
        early = EARLY_RUN_FILES | {checkpoint.name for checkpoint, _ in torn}
        foreign = sorted(name for name in _contents(out) if name not in early)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UsageError(
                f"nothing to resume in {out}: no checkpoint-N folder, and it holds more than a run "
                f"stopped before its first checkpoint leaves ({shown}); pick a new --out"
            )
        return "restart"
    if _contents(out):
        raise UsageError(
            f"--out {out} is not empty: add --resume to continue the run there (or restart it, "
            "if it stopped before its first checkpoint), or pick a new folder"
        )
    return "new"


def _resume_point(out: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest whole checkpoint in `out` (None if there is none), and the torn ones
    newer than it, each with what it lacks."""
    torn = []
    for checkpoint in _checkpoints(out):
        reason = _torn(checkpoint)
        if reason is None:
            return checkpoint, torn
        torn.append((checkpoint, reason))
    return None, torn


def _checkpoints(out: Path) -> list[Path]:
    """The checkpoint-N folders in `out`, newest (highest N) first."""
    found = [path for path in out.iterdir() if CHECKPOINT.fullmatch(path.name) and path.is_dir()]
    return sorted(found, key=lambda path: int(path.name.rsplit("-", 1)[-1]), reverse=True)


def _torn(checkpoint: Path) -> str | None:
    """What makes a checkpoint folder unusable for a resume, or None when it is whole."""
    state = checkpoint / TRAINER_STATE
    if not state.is_file():
        return f"no {TRAINER_STATE}"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{TRAINER_STATE} is torn"
    return None


def _drop_torn(torn: list[tuple[Path, str]], whole: Path | None) -> None:
    """Remove the torn checkpoints a resume skips, saying so: the Trainer would otherwise
    save into their leftovers, and the next --resume would meet them again."""
    then = (
        f"resuming from {whole.name}" if whole is not None else "no complete checkpoint: the run starts over"
    )
    for checkpoint, reason in torn:
        print(f"halora: note: {checkpoint.name} is incomplete ({reason}); {then}", file=sys.stderr)
        shutil.rmtree(checkpoint, ignore_errors=True)


def _save_adapter(peft_model: torch.nn.Module, out: Path, record: dict) -> None:
    """The adapter (A and B only, never the noisy base) and its halora.json, whole or not at
    all: written into a temporary folder in `out`, then moved in with the weights last, since
    a folder with adapter_model.safetensors counts as trained (halora.pipeline reuses it)."""
    staging = Path(tempfile.mkdtemp(prefix=".adapter-", suffix=".tmp", dir=out))
    try:
        with quiet_tiny_save():
            peft_model.save_pretrained(staging)
        files.write_json(staging / SIDECAR, record)
        for path in sorted(staging.iterdir(), key=lambda path: path.name.startswith("adapter_model.")):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _disk_full_is_usage_error(out: Path, saving: Callable[[], str]) -> Iterator[None]:
    """A full (or read-only) disk while saving is the user's to fix: one line naming what
    was being saved (`saving()`, which also clears what it left torn), and --resume continues
    from the last whole checkpoint."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        if not _is_disk_full(err):
            raise
        raise UsageError(
            f"--out {out}: the disk is full (or read-only) while saving {saving()}: "
            "free space and run the same command with --resume"
        ) from err


def _is_disk_full(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from, is a full or read-only disk."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(err, (RuntimeError, SafetensorError)) and any(w in str(err) for w in DISK_FULL_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _saving_at(out: Path, trainer: Trainer) -> str:
    """What training was saving when the disk filled: the checkpoint of the current step
    when it is torn (then removed, so that --resume skips it), else the run's logs."""
    step = trainer.state.global_step
    checkpoint = out / f"checkpoint-{step}"
    if checkpoint.is_dir() and _torn(checkpoint) is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)
        return checkpoint.name
    return f"the training log at step {step}"


def _contents(out: Path) -> list[str]:
    """The names in `out`, less the temporary files of halora's own writes in flight (the
    write test of files.output_folder, atomic writes) that another rank may be making."""
    if not out.is_dir():
        return []
    return [
        path.name
        for path in out.iterdir()
        if not (path.name.startswith(".halora-write-test-") or _is_atomic_temp(path.name))
    ]


def _is_atomic_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _run_record(
    settings: TrainSettings,
    lora: LoraSettings,
    placement: Placement,
    model_name: str,
    base_hash: str,
    extra: dict,
) -> dict:
    """Every setting that decides what a run computes, one flat record (the settings
    classes share no field name), as JSON reads it back."""
    record = {
        **dataclasses.asdict(settings),
        **dataclasses.asdict(lora),
        **dataclasses.asdict(placement),
        "model": model_name,
        "base_model_sha256": base_hash,
        **extra,
    }
    return json.loads(json.dumps(record))


def _check_same_settings(out: Path, record: dict) -> None:
    """--resume under other settings would continue a checkpoint into an adapter of no
    recipe: refused, naming each change. Keys only one side has (a run recorded by another
    halora version) and folders without the record (older runs) pass unchecked."""
    path = out / RUN_SETTINGS
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}): restore it, or pick a new --out"
        ) from err
    changed = [
        f"{key} {json.dumps(before[key])} -> {json.dumps(value)}"
        for key, value in record.items()
        if key in before and key not in RESUME_MAY_CHANGE and before[key] != value
    ]
    if changed:
        raise UsageError(
            f"--resume with changed settings: {', '.join(changed)}; "
            "resume with the same settings, or pick a new --out"
        )


def _start_log(out: Path, checkpoint: str | None, record: dict) -> None:
    """The main rank's bookkeeping before training: a fresh (or restarted) run records its
    settings and starts an empty log; a resumed run drops the log lines written after its
    checkpoint, which the resumed steps will write again."""
    log = out / LOG_FILE
    if checkpoint is None:
        files.write_json(out / RUN_SETTINGS, record)
        log.unlink(missing_ok=True)
        return
    if log.is_file():
        step = _checkpoint_step(Path(checkpoint))
        kept = [line for line in log.read_text(encoding="utf-8").splitlines() if _logged_step(line) <= step]
        files.write_text(log, "".join(line + "\n" for line in kept))


def _checkpoint_step(checkpoint: Path) -> int:
    """The global step a checkpoint holds (trainer_state.json; its folder name as fallback)."""
    try:
        return int(json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(checkpoint.name.rsplit("-", 1)[-1])


def _logged_step(line: str) -> float:
    """The step of one log line; a torn line (a kill mid-write) sorts after every step."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


# transformers 5 renamed gradient_checkpointing (now a deprecated alias) to activation_checkpointing.
_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in {f.name for f in fields(TrainingArguments)}
    else "gradient_checkpointing"
)


def _training_arguments(out: Path, settings: TrainSettings) -> TrainingArguments:
    on_gpu = torch.cuda.is_available()
    check_precision(settings.precision, "cuda" if on_gpu else "cpu")
    return TrainingArguments(
        output_dir=str(out),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type=settings.schedule,
        weight_decay=settings.weight_decay,
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        **{_CHECKPOINTING: settings.gradient_checkpointing},
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=list(settings.report_to) or "none",
        disable_tqdm=not settings.progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
    )


def _refuse_read_noise_under_checkpointing(settings: TrainSettings) -> None:
    """Checkpointing recomputes each block's forward in the backward pass; read noise drawn
    anew on that second forward would give gradients of another draw than the loss."""
    if settings.injects_noise and split_noise(parse_noise_spec(settings.train_noise))[1] is not None:
        raise UsageError(
            f"training noise {settings.train_noise!r} has read noise (drawn at every forward pass), "
            "which gradient checkpointing would draw twice: drop --gradient-checkpointing or the "
            "read-noise part"
        )


def _refuse_sharded_noise(trainer: Trainer) -> None:
    if trainer.is_fsdp_enabled or (
        trainer.is_deepspeed_enabled and "zero3" in str(trainer.args.deepspeed).lower()
    ):
        raise UsageError(
            "noise injection writes per-tile noise into whole base weights, which FSDP and "
            "ZeRO-3 shard: train noisy/halora/curriculum with DDP or DeepSpeed ZeRO-1/2 "
            "(the frozen base is small next to the GPU), or use method lora/reg"
        )
