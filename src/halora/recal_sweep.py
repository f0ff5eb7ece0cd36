"""Recalibration over chips: every (condition, chip) gets its own tuned adapter.

    source adapter ─┬─► per noisy condition c and chip s: recalibrate on (c, s)
                    │       ├─► scored on (c, s)               "<source>+recal"
                    │       └─► scored on (c, next chip)       "<source>+recal@other"
                    ├─► the same extra steps, task loss, no chip ─► every chip   "<source>+steps"
                    └─► the source itself ─► clean and every chip                "<source>"

`+recal@other` tells calibration from training: a gain that carries over to another chip
of the same level is more training, not calibration. `+steps` is the equal-compute
baseline: the same number of extra steps on the same calibration items without the chip.

The records are sweep cells (halora.sweep), so the report and the study's bootstrap read
them unchanged; a recalibrated cell also says which chip its adapter was tuned on
(`tuned_on`). Cells are cached (OUT/cells.jsonl) and each tuned adapter is kept
(OUT/states/), so a killed run resumes without tuning again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from halora import files
from halora.cim import program_chip
from halora.evaluate import EvalSettings, evaluate_task
from halora.recalibrate import Prepared, RecalSettings, calibration_examples, lora_state, prepare, recalibrate
from halora.sweep import CLEAN, CellCache, Condition, cell_key
from halora.tasks import Task

State = Callable[[], dict[str, torch.Tensor]]
Log = Callable[[str], None]


@dataclass(frozen=True)
class RecalPlan:
    sources: tuple[tuple[str, str], ...]  # (label, adapter folder)
    specs: tuple[str, ...]  # the noisy chip conditions to recalibrate on
    seeds: tuple[int, ...]  # chip seeds of each condition
    settings: RecalSettings
    eval: EvalSettings
    equal_compute: bool = True  # also score "+steps", the same steps without a chip
    other_chip: bool = True  # also score each tuned adapter on the next chip ("+recal@other")


class RecalRunner:
    """One loaded model whose LoRA weights are swapped per source and per tuned chip."""

    def __init__(self, model, tokenizer, tasks: list[Task], evaluation: EvalSettings, out: str | Path):
        self.model, self.tokenizer, self.tasks, self.eval = model, tokenizer, tasks, evaluation
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = CellCache(self.out / "cells.jsonl")
        self.runs = _read_runs(self.out / "runs.jsonl")
        self.examples = {task.name: task.examples(evaluation.split, evaluation.items) for task in tasks}
        self.prepared: dict[str, Prepared] = {}  # teacher passes, per source and settings

    def use(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state)

    def score(self, label: str, spec: str, seed: int, state: State, tuned_on: int | None = None) -> None:
        """Cells of the adapter `state()` under `label` on chip (spec, seed), unless cached."""
        condition = Condition.of(spec)
        done = self.cache.records
        todo = [t for t in self.tasks if cell_key(label, t.name, condition.spec, seed) not in done]
        if not todo:
            return
        self.use(state())
        with program_chip(self.model, condition.spec, seed):
            for task in todo:
                result = evaluate_task(self.model, self.tokenizer, task, self.eval, self.examples[task.name])
                record = {
                    "key": cell_key(label, task.name, condition.spec, seed),
                    "method": label,
                    "noise": condition.noise,
                    "spec": condition.spec,
                    "sigma": condition.sigma,
                    "seed": seed,
                    **result.to_json(),
                }
                if tuned_on is not None:
                    record["tuned_on"] = tuned_on
                self.cache.add(record)

    def tuned(
        self,
        source: State,
        key: str,
        spec: str,
        seed: int,
        settings: RecalSettings,
        snapshots: tuple[int, ...] = (),
        log: Log = print,
        teacher: str = "",
    ) -> Callable[[int | None], dict[str, torch.Tensor]]:
        """Recalibrate `source()` on chip (spec, seed), once: the tuned state (and the state
        at each snapshot step) is kept on disk under `key`; returns a loader by step.
        Calls with the same `teacher` name (same source, same settings) share one teacher pass."""
        folder = self.out / "states" / _safe(key)
        final = folder / "final.pt"
        if not final.is_file():
            self.use(source())
            examples = calibration_examples(self.tasks, settings.calib_n)
            prepared = self._prepared(teacher, examples, settings)
            result = recalibrate(
                self.model,
                self.tokenizer,
                examples,
                spec,
                seed,
                settings,
                snapshot_steps=snapshots,
                prepared=prepared,
            )
            folder.mkdir(parents=True, exist_ok=True)
            for step, state in result.snapshots.items():
                files.write_with(folder / f"step{step}.pt", lambda path, s=state: torch.save(s, path))
            tuned = lora_state(self.model)
            files.write_with(final, lambda path: torch.save(tuned, path))
            record = {
                "key": key,
                "seconds": round(result.seconds, 2),
                "teacher_seconds": round(prepared.seconds, 2) if prepared else None,
                "steps": result.steps,
                "loss_first": result.losses[0],
                "loss_last": result.final_loss,
                "settings": dataclasses.asdict(settings),
            }
            self.runs[key] = record
            with (self.out / "runs.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            log(
                f"  recalibrated {key}: {result.seconds:.0f} s, "
                f"loss {result.losses[0]:.3f} -> {result.final_loss:.3f}"
            )

        def load(step: int | None = None) -> dict[str, torch.Tensor]:
            return torch.load(folder / (f"step{step}.pt" if step else "final.pt"))

        return load

    def _prepared(self, teacher: str, examples, settings: RecalSettings) -> Prepared | None:
        """The teacher pass of the adapter now in use, computed once per `teacher` name."""
        if not teacher:
            return None
        name = f"{teacher}|{dataclasses.asdict(settings)}"
        if name not in self.prepared:
            self.prepared[name] = prepare(self.model, self.tokenizer, examples, settings)
        return self.prepared[name]


def adapter_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """An adapter folder's LoRA tensors (PEFT's safetensors file), to swap into the runner."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def recalibrate_sources(
    model_name: str, tasks: list[Task], plan: RecalPlan, out: str | Path, log: Log = print
) -> list[dict]:
    """`run_recalibration` on a freshly loaded `model_name`, the plan's first source
    attached trainable (the others are swapped in as state dicts): the demo's and the
    study's entry point."""
    from halora.lora import load_trainable
    from halora.models import load_model

    model, tokenizer = load_model(model_name)
    model = load_trainable(model, plan.sources[0][1])
    return run_recalibration(RecalRunner(model, tokenizer, tasks, plan.eval, out), plan, log)


def run_recalibration(runner: RecalRunner, plan: RecalPlan, log: Log = print) -> list[dict]:
    """The plan's cells: each source clean and on every chip, recalibrated per chip (own and
    next chip), and the equal-compute baseline; returns every cached cell."""
    for label, folder in plan.sources:
        source = partial(adapter_state, folder)
        runner.score(label, CLEAN, 0, source)
        extra = None
        if plan.equal_compute:
            baseline = dataclasses.replace(plan.settings, loss="task")
            extra = runner.tuned(source, f"{label}|steps", CLEAN, 0, baseline, log=log, teacher=label)
            runner.score(f"{label}+steps", CLEAN, 0, extra)
        for spec in plan.specs:
            log(f"[{label}] recalibrating on {len(plan.seeds)} chips of {spec}")
            for index, seed in enumerate(plan.seeds):
                runner.score(label, spec, seed, source)
                if extra is not None:
                    runner.score(f"{label}+steps", spec, seed, extra)
                key = f"{label}|{spec}|{seed}"
                tuned = runner.tuned(source, key, spec, seed, plan.settings, log=log, teacher=label)
                runner.score(f"{label}+recal", spec, seed, tuned, tuned_on=seed)
                if plan.other_chip and len(plan.seeds) > 1:
                    other = plan.seeds[(index + 1) % len(plan.seeds)]
                    runner.score(f"{label}+recal@other", spec, other, tuned, tuned_on=seed)
    return list(runner.cache.records.values())


def recalibration_seconds(runner: RecalRunner) -> list[float]:
    """Seconds of each per-chip recalibration this folder holds, as one chip alone would
    cost: tuning plus the teacher's pass (which a sweep shares between chips)."""
    return [
        run["seconds"] + (run.get("teacher_seconds") or 0.0)
        for key, run in runner.runs.items()
        if "|steps" not in key
    ]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _read_runs(path: Path) -> dict[str, dict]:
    runs = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line: that run is redone
            runs[record["key"]] = record
    return runs
