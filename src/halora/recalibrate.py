"""Per-chip recalibration: tune the SRAM LoRA to the one RRAM chip it sits on.

RRAM is programmed once; the LoRA branches sit in rewritable SRAM. So after a chip is
programmed, its adapter can be tuned to that chip, with a few steps on a small
calibration set, and written back:

        clean base W0 + adapter (A0, B0) ──► teacher: next-token distributions (distill)
                                   │
        program the chip: W0 ──► W' (noisy, fixed from now on)
                                   │
        N steps on calibration items: forward on W' (+ read noise), gradients to A, B only
                                   │
        tuned (A, B) ──► SRAM; W' is never touched

Hardware assumption (README, "Per-chip recalibration"): program-and-verify already
reads back every cell's conductance, so a digital twin of the programmed weights W'
exists off chip, and the gradient for A and B can be computed on it (or on the chip, with
W'ᵀ from the crossbar's transpose read). Only A and B are ever written.

    loss      needs labels   what is matched
    task      yes            the answer tokens of calibration items (cross-entropy)
    distill   no             the clean model's next-token distribution (with the starting
                             adapter) at every position of the calibration prompts and of
                             that clean model's own greedy answers
    both      yes            the sum, on prompt + answer

With `twin_rank = k` the adapter (widened beforehand by `halora.twin.widen`) first gets
the twin correction: k more LoRA rows per RRAM layer, fitted in closed form to the chip's
programming error on the calibration prompts' activations (no labels, no step); `steps = 0`
makes that the whole recalibration.

Calibration items come from the tasks' train split (the first ones of each task), never
from the test split the chip is then scored on. With `noise = none` the same command gives
the adapter the same extra steps without a chip: the equal-compute baseline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from halora.cim import Placement, program_chip
from halora.distill import TopK, kl_topk, topk_targets
from halora.encoding import labelled_pair, pad_id, pad_rows, prompt_ids
from halora.errors import UsageError
from halora.evaluate import EvalSettings, generate_ids
from halora.lora import adapter_tensors
from halora.precision import check_precision
from halora.settings import check, setting
from halora.tasks import Example, Task
from halora.twin import InputMoments, input_moments, write_correction

LOSSES = ("task", "distill", "both")


@dataclass(frozen=True)
class RecalSettings:
    """How an adapter is tuned to one programmed chip."""

    WHAT: ClassVar[str] = "recalibration setting"

    steps: int = setting(20, "optimizer steps on the programmed chip (0: the twin correction alone)", min=0)
    calib_n: int = setting(128, "calibration items in all, shared evenly over the tasks (train split)", min=1)
    loss: str = setting(
        "distill",
        "task (cross-entropy, needs labels), distill (KL to the clean model with the starting "
        "adapter, needs only prompts) or both",
        choices=LOSSES,
    )
    # 3e-3 beat 1e-3 and 1e-2 on validation chips (benchmarks/results/bench_recalibrate_lrs.json)
    lr: float = setting(3e-3, "learning rate (AdamW, constant)", min=0)
    batch_size: int = setting(8, "calibration items per step", min=1)
    max_length: int = setting(96, "tokens per calibration item (the prompt is cut from the left)", min=1)
    # Label-free distillation still needs the positions that predict an answer: the clean
    # teacher's own greedy answer provides them (sequence-level distillation).
    answer_tokens: int = setting(
        16, "distill: append the clean teacher's greedy answer, up to N tokens (0: the prompt alone)", min=0
    )
    top_k: int = setting(32, "teacher tokens kept per position for the KL (the rest are one bucket)", min=1)
    data_seed: int = setting(0, "seed of the calibration batch order", min=0)
    precision: str = setting(
        "fp32", "fp32, or bf16 autocast (GPU, or a CPU with bf16 units)", choices=("fp32", "bf16")
    )

    # The closed-form correction (halora.twin) needs no labels and no gradient step; it
    # widens the adapter by twin_rank rows on every RRAM layer (more SRAM, stated in the report).
    twin_rank: int = setting(
        0,
        "rank of the closed-form correction of each RRAM layer's programming error, read from the "
        "digital twin, added as extra LoRA rows before any step (0: off)",
        min=0,
    )

    def __post_init__(self) -> None:
        check(self)
        if self.steps == 0 and self.twin_rank == 0:
            raise UsageError(
                "recalibration with 0 steps and no twin correction does nothing: set --steps or --twin-rank"
            )

    @property
    def uses_labels(self) -> bool:
        return self.loss in ("task", "both")

    @property
    def distills(self) -> bool:
        return self.loss in ("distill", "both")


@dataclass
class Row:
    """One calibration item as token ids; labels are -100 where there is no task loss."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class Prepared:
    """The calibration items as token rows and, for distill, the teacher's targets: they
    depend on the starting adapter and the clean model only, not on the chip, so one
    preparation serves every chip an adapter is tuned to."""

    rows: list[Row]
    targets: list[TopK] | None
    seconds: float  # the teacher's greedy answers and forward pass (and the twin's moments)
    moments: InputMoments | None = None  # RRAM layers' input statistics, for the twin correction


@dataclass
class RecalResult:
    steps: int
    seconds: float  # teacher pass (when computed here) + tuning, not model loading or scoring
    losses: list[float] = field(default_factory=list)
    removed: float | None = None  # twin: mean share of E|dW x|^2 its correction removes per layer
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # step -> LoRA state

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


def calibration_examples(tasks: list[Task], calib_n: int) -> list[Example]:
    """`calib_n` items in all from the tasks' train splits, the first of each task."""
    per_task = math.ceil(calib_n / len(tasks))
    return [example for task in tasks for example in task.examples("train", per_task)][:calib_n]


def encode_rows(
    model, tokenizer: PreTrainedTokenizerBase, examples: list[Example], settings: RecalSettings
) -> list[Row]:
    """task / both: prompt + answer + EOS with the answer's tokens as labels, as training
    encodes them. distill reads no label: the prompt, then the teacher's (`model` as it is
    now) greedy answer of up to `answer_tokens` tokens; no position carries a label."""
    if not settings.uses_labels:
        return _teacher_rows(model, tokenizer, examples, settings)
    return [Row(*labelled_pair(tokenizer, e.prompt, e.answer, settings.max_length)) for e in examples]


def _teacher_rows(model, tokenizer, examples: list[Example], settings: RecalSettings) -> list[Row]:
    answers: list[list[int]] = [[] for _ in examples]
    if settings.answer_tokens > 0:
        room = max(settings.max_length - settings.answer_tokens, 1)
        answers, _ = generate_ids(
            model,
            tokenizer,
            [example.prompt for example in examples],
            settings.answer_tokens,
            EvalSettings(eval_batch_size=settings.batch_size, max_length=room),
        )
    rows = []
    for example, answer in zip(examples, answers, strict=True):
        ids = prompt_ids(tokenizer, example.prompt, settings.max_length - len(answer)) + answer
        rows.append(Row(ids, [-100] * len(ids)))
    return rows


def _collate(rows: list[Row], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padded positions are masked and carry no label."""
    ids, mask = pad_rows([row.input_ids for row in rows], pad, left=False)
    labels, _ = pad_rows([row.labels for row in rows], -100, left=False)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def teacher_targets(model, rows: list[Row], settings: RecalSettings, pad: int) -> list[TopK]:
    """Per row, the top-k next-token log-probabilities of `model` as it is now (the clean
    base with the starting adapter; the caller has dropout off)."""
    device = next(model.parameters()).device
    targets = []
    for chunk, batch in _batches(rows, settings.batch_size, pad):
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        top = topk_targets(logits, settings.top_k)
        for index, row in enumerate(chunk):
            length = len(row.input_ids)
            targets.append(TopK(top.logprobs[index, :length].cpu(), top.indices[index, :length].cpu()))
    return targets


def _batches(rows: list[Row], size: int, pad: int) -> Iterator[tuple[list[Row], dict[str, torch.Tensor]]]:
    """The rows in order, `size` at a time, each chunk with its right-padded batch."""
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        yield chunk, _collate(chunk, pad)


def _stack_targets(targets: list[TopK], width: int) -> TopK:
    """Right-pad per-row targets to the batch width (padded positions are masked anyway)."""
    k = targets[0].logprobs.shape[-1]
    logprobs = torch.zeros((len(targets), width, k))
    indices = torch.zeros((len(targets), width, k), dtype=torch.long)
    for index, target in enumerate(targets):
        length = target.logprobs.shape[0]
        logprobs[index, :length] = target.logprobs
        indices[index, :length] = target.indices
    return TopK(logprobs, indices)


def trainable_lora(model) -> list[torch.nn.Parameter]:
    """The LoRA parameters to tune; anything else trainable is a caller's mistake."""
    params = [p for name, p in model.named_parameters() if p.requires_grad]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise UsageError("the adapter has no trainable LoRA weights: load it with is_trainable=True")
    stray = [name for name in names if "lora_" not in name]
    if stray:
        raise UsageError(f"only LoRA weights may be tuned on a chip; trainable: {stray[0]} ...")
    return params


def prepare(
    model,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    settings: RecalSettings,
    placement: Placement = Placement(),
) -> Prepared:
    """Rows and teacher targets from `model` as it is now: the clean base with the starting
    adapter (call it before the chip is programmed), dropout off."""
    if not examples:
        raise UsageError("no calibration items: check --tasks and --calib-n")
    started = time.perf_counter()
    model.eval()
    rows = encode_rows(model, tokenizer, examples, settings)
    pad = pad_id(tokenizer)
    # the top-k targets serve the distillation steps only (a twin alone needs the rows)
    targets = teacher_targets(model, rows, settings, pad) if settings.distills and settings.steps else None
    moments = None
    if settings.twin_rank:
        batches = (batch for _, batch in _batches(rows, settings.batch_size, pad))
        moments = input_moments(model, batches, placement)
    return Prepared(rows, targets, time.perf_counter() - started, moments)


def recalibrate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    noise: str,
    chip_seed: int,
    settings: RecalSettings = RecalSettings(),
    placement: Placement = Placement(),
    snapshot_steps: tuple[int, ...] = (),
    prepared: Prepared | None = None,
) -> RecalResult:
    """Tune the active LoRA adapter of `model` (a PeftModel) on the chip (noise, chip_seed).

    The model comes back with the clean base and the tuned adapter; the adapter's state
    after each of `snapshot_steps` is kept in the result (a steps curve from one run).
    `prepared` (from `prepare` with the same starting adapter and settings) skips the
    teacher's pass.
    """
    params = trainable_lora(model)
    device = next(model.parameters()).device
    check_precision(settings.precision, device.type)
    _check_widened(model, settings)
    pad = pad_id(tokenizer)
    started = time.perf_counter()
    # Dropout off throughout: the chip is tuned for the deterministic model that is then
    # scored, and a student with dropout would never match its teacher exactly.
    model.eval()
    if prepared is None:
        prepared = prepare(model, tokenizer, examples, settings, placement)
    rows, targets = prepared.rows, prepared.targets
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    order = _batch_order(len(rows), settings)
    losses, snapshots, removed = [], {}, None
    with program_chip(model, noise, chip_seed, placement) as chip:
        if settings.twin_rank:
            shares = write_correction(model, chip, prepared.moments, settings.twin_rank)
            removed = sum(shares.values()) / len(shares)
        for picked in order:
            batch = {k: v.to(device) for k, v in _collate([rows[i] for i in picked], pad).items()}
            with _autocast(settings.precision, device):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = _loss(logits, batch, targets and [targets[i] for i in picked], settings)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if len(losses) in snapshot_steps:
                snapshots[len(losses)] = lora_state(model)
    return RecalResult(len(order), time.perf_counter() - started, losses, removed, snapshots)


def _check_widened(model, settings: RecalSettings) -> None:
    """The twin correction writes into rows that `halora.twin.widen` adds beforehand."""
    layout = getattr(model, "twin_layout", None)
    if settings.twin_rank and (layout is None or layout.rank < settings.twin_rank):
        raise UsageError(
            f"twin_rank {settings.twin_rank} needs the adapter widened by that many rows first "
            "(halora.twin.widen(model, rank)); halora recalibrate and halora sweep do it"
        )


def lora_state(model) -> dict[str, torch.Tensor]:
    """A copy of the active adapter's LoRA tensors (PEFT's state-dict names)."""
    return {name: tensor.detach().clone() for name, tensor in adapter_tensors(model).items()}


def _batch_order(n: int, settings: RecalSettings) -> list[list[int]]:
    """`steps` batches of item indices: shuffled epochs, one after another."""
    generator = torch.Generator().manual_seed(settings.data_seed)
    size = min(settings.batch_size, n)
    batches: list[list[int]] = []
    queue: list[int] = []
    while len(batches) < settings.steps:
        if len(queue) < size:
            queue += torch.randperm(n, generator=generator).tolist()
        batches.append(queue[:size])
        queue = queue[size:]
    return batches


def _loss(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], targets: list[TopK] | None, settings: RecalSettings
) -> torch.Tensor:
    loss = logits.new_zeros((), dtype=torch.float32)
    if settings.uses_labels:
        # position t predicts token t + 1
        loss = loss + torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
        )
    if targets is not None:
        teacher = _stack_targets(targets, logits.shape[1])
        teacher = TopK(teacher.logprobs.to(logits.device), teacher.indices.to(logits.device))
        loss = loss + kl_topk(logits, teacher, batch["attention_mask"])
    return loss


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def recalibration_record(
    noise: str, chip_seed: int, settings: RecalSettings, tasks: str, source: str, result: RecalResult
) -> dict:
    """What halora.json says about a recalibrated adapter: its chip and its calibration."""
    return {
        "chip": {"noise": noise, "chip_seed": chip_seed},
        "settings": asdict(settings),
        "tasks": tasks,
        "calibration_split": "train",
        "labels_used": settings.uses_labels,
        "source_adapter": str(Path(source).resolve()),
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "final_loss": result.final_loss,
        "twin_error_removed": result.removed,
    }
