"""The pipeline the demo and the study share: train arms, then score adapters on chips.

    arms (training recipes) --train_arm--> adapter folders --score--> sweep records
                                                                    --> report (demo / study)

An arm is a method plus TrainSettings overrides on top of a base recipe. Training reuses
what is trained, resumes what has a checkpoint, and starts over a run stopped before its
first one. Scoring loads every adapter onto one base model and sweeps them over the same
chips (halora.sweep), cached and resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halora.converters import Converters
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.lora import LoraSettings, load_adapters
from halora.models import load_model, model_label
from halora.settings import build
from halora.sweep import ChipGrid, SweepPlan, run_sweep
from halora.tasks import Example, Task
from halora.train import TrainSettings, resume_or_clear, train

Log = Callable[[str], None]


@dataclass(frozen=True)
class Arm:
    """One training recipe: a method plus TrainSettings overrides (mu, reduction, noise, ...)."""

    name: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    rank: int | None = None  # LoRA rank, when the arm changes it
    family: str = ""  # what selection compares it within (default: its method)

    @property
    def group(self) -> str:
        return self.family or self.method

    def train_settings(self, base: dict[str, Any], seed: int = 0, progress: bool = False) -> TrainSettings:
        """The arm's full recipe: the base, then the arm's own settings, then method and seed."""
        return TrainSettings(
            **{**base, **self.settings, "method": self.method, "seed": seed, "progress": progress}
        )


def training_examples(tasks: list[Task], per_task: int) -> list[Example]:
    return [example for task in tasks for example in task.examples("train", per_task)]


def train_arm(
    model_name: str,
    settings: TrainSettings,
    rank: int,
    examples: list[Example],
    folder: Path,
    log: Log = print,
    label: str = "",
    extra_metadata: dict | None = None,
) -> str:
    """The adapter folder of one arm: reused when trained, resumed from its last checkpoint,
    or trained from scratch (a folder stopped before its first checkpoint is cleared)."""
    label = label or settings.method
    if (folder / "adapter_model.safetensors").is_file():
        log(f"[{label}] already trained in {folder}: reused")
        return str(folder)
    resume = resume_or_clear(folder)
    log(f"[{label}] training" + (" (resumed)" if resume else ""))
    model, tokenizer = load_model(model_name)
    train(
        model,
        tokenizer,
        examples,
        folder,
        settings,
        LoraSettings(rank=rank),
        model_name=model_label(model_name),
        resume=resume,
        extra_metadata=extra_metadata,
    )
    return str(folder)


def score(
    model_name: str,
    tasks: list[Task],
    adapters: list[tuple[str, str]],
    grid: ChipGrid,
    evaluation: EvalSettings,
    out: Path,
    converters: Converters | None = None,
) -> tuple[list[dict], SweepPlan]:
    """Every adapter on the same chips of `grid`: the sweep's records and its plan; with
    `converters`, every cell through the analog forward (halora.analog)."""
    model, tokenizer = load_model(model_name)
    model = load_adapters(model, adapters)
    plan = SweepPlan(
        conditions=grid.conditions(),
        seeds=grid.seeds,
        adapters=tuple(adapters),
        tasks=tuple(task.name for task in tasks),
        eval=evaluation,
        model=model_label(model_name),
        converters=converters,
    )
    return run_sweep(model, tokenizer, tasks, plan, out), plan


def converters_table(values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` (a [demo] or [study] table) with its `converters` table as Converters: the
    settings loader types fields one value at a time, and a table of converter keys is not
    one value. A `[study.converters]` table, even empty, switches the analog forward on."""
    table = values.get("converters")
    if table is None or isinstance(table, Converters):
        return values
    if not isinstance(table, dict):
        raise UsageError(f"{where}: converters must be a table of converter settings (adc_bits, ...)")
    return {**values, "converters": build(Converters, table, f"{where} converters")}
