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

`halora sweep --recal-steps N` (RecalAxis) runs the same plan after its sweep, into
SWEEP/recal/: the sources' own cells are the sweep's (same chips, same items), so they are
not scored again, and recal.json pins the recalibration settings a folder's tuned adapters
were made with.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch

from halora import files
from halora.cim import Placement, program_chip
from halora.errors import UsageError
from halora.evaluate import EvalSettings, evaluate_task
from halora.recalibrate import (
    LOSSES,
    Prepared,
    RecalSettings,
    calibration_examples,
    lora_state,
    prepare,
    recalibrate,
)
from halora.report import BASELINE
from halora.settings import check, setting
from halora.sweep import BASE, CLEAN, CellCache, ChipGrid, Condition, cell_key, cells_lock
from halora.tasks import Task
from halora.twin import embed_into, widen

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
    # False: the caller already holds each source's own cells on these chips (the sweep)
    score_sources: bool = True


class RecalRunner:
    """One loaded model whose LoRA weights are swapped per source and per tuned chip."""

    def __init__(
        self,
        model,
        tokenizer,
        tasks: list[Task],
        evaluation: EvalSettings,
        out: str | Path,
        placement: Placement = Placement(),
    ):
        self.model, self.tokenizer, self.tasks, self.eval = model, tokenizer, tasks, evaluation
        self.placement = placement  # the same RRAM placement for tuning and scoring
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = CellCache(self.out / "cells.jsonl")
        self.runs = _read_runs(self.out / "runs.jsonl")
        self.examples = {task.name: task.examples(evaluation.split, evaluation.items) for task in tasks}
        self.prepared: dict[str, Prepared] = {}  # teacher passes, per source and settings

    def use(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        if getattr(self.model, "twin_layout", None) is not None:
            embed_into(self.model, state)  # a source's state gets a zero correction
        else:
            set_peft_model_state_dict(self.model, state)

    def widen(self, rank: int) -> None:
        """Give every RRAM layer `rank` correction rows (halora.twin), once per runner: all of
        its states, sources included, are then held in that layout (a smaller twin rank uses
        the first rows of a wider layout; widen first to the largest one to compare ranks)."""
        layout = getattr(self.model, "twin_layout", None)
        if layout is None:
            self.model = widen(self.model, rank, self.placement)
        elif layout.rank < rank:
            raise UsageError(
                f"twin rank {rank} after a run widened by {layout.rank}: widen first to the largest rank"
            )

    def score(self, label: str, spec: str, seed: int, state: State, tuned_on: int | None = None) -> None:
        """Cells of the adapter `state()` under `label` on chip (spec, seed), unless cached."""
        condition = Condition.of(spec)
        done = self.cache.records
        todo = [t for t in self.tasks if cell_key(label, t.name, condition.spec, seed) not in done]
        if not todo:
            return
        self.use(state())
        with program_chip(self.model, condition.spec, seed, self.placement):
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
            if settings.twin_rank:
                self.widen(settings.twin_rank)
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
                placement=self.placement,
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
                "loss_first": result.losses[0] if result.losses else None,
                "loss_last": result.final_loss if result.losses else None,
                "twin_error_removed": result.removed,
                "settings": dataclasses.asdict(settings),
            }
            self.runs[key] = record
            with (self.out / "runs.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            loss = f", loss {result.losses[0]:.3f} -> {result.final_loss:.3f}" if result.losses else ""
            twin = "" if result.removed is None else f", twin error removed {result.removed:.0%}"
            log(f"  recalibrated {key}: {result.seconds:.0f} s{loss}{twin}")

        def load(step: int | None = None) -> dict[str, torch.Tensor]:
            return torch.load(folder / (f"step{step}.pt" if step else "final.pt"))

        return load

    def _prepared(self, teacher: str, examples, settings: RecalSettings) -> Prepared | None:
        """The teacher pass of the adapter now in use, computed once per `teacher` name."""
        if not teacher:
            return None
        name = f"{teacher}|{dataclasses.asdict(settings)}"
        if name not in self.prepared:
            self.prepared[name] = prepare(self.model, self.tokenizer, examples, settings, self.placement)
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
        if plan.score_sources:
            runner.score(label, CLEAN, 0, source)
        extra = None
        if plan.equal_compute and plan.settings.steps:
            # the same gradient steps without a chip (a twin correction of a clean chip is 0)
            baseline = dataclasses.replace(plan.settings, loss="task", twin_rank=0)
            extra = runner.tuned(source, f"{label}|steps", CLEAN, 0, baseline, log=log, teacher=label)
            runner.score(f"{label}+steps", CLEAN, 0, extra)
        for spec in plan.specs:
            log(f"[{label}] recalibrating on {len(plan.seeds)} chips of {spec}")
            for index, seed in enumerate(plan.seeds):
                if plan.score_sources:
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


# --------------------------------------------------------------------------------------
# The recalibration axis of `halora sweep`
# --------------------------------------------------------------------------------------

_RECAL = RecalSettings()  # the per-chip defaults, so the sweep's flags default to the same
RECAL_MANIFEST = "recal.json"


@dataclass(frozen=True)
class RecalAxis:
    """`halora sweep`'s recalibration: which adapters are tuned to which of its chips, how."""

    WHAT: ClassVar[str] = "recalibration setting"

    recal_steps: int = setting(0, "recalibration steps per chip (0: no recalibration)", min=0)
    recal_calib_n: int = setting(
        _RECAL.calib_n, "calibration items per recalibration, shared over the tasks (train split)", min=1
    )
    recal_loss: str = setting(
        _RECAL.loss, "recalibration loss: task, distill (no labels) or both", choices=LOSSES
    )
    recal_lr: float = setting(_RECAL.lr, "recalibration learning rate (AdamW, constant)", min=0)
    recal_from: tuple[str, ...] = setting((), "labels of --adapters recalibrated per chip (empty: all)")
    recal_sigmas: tuple[float, ...] = setting(
        (), "levels of --sigmas whose chips are recalibrated (empty: the highest)", min=0
    )
    recal_twin_rank: int = setting(
        0, "closed-form twin correction of rank K per RRAM layer before the steps (0: off)", min=0
    )

    def __post_init__(self) -> None:
        check(self)

    @property
    def settings(self) -> RecalSettings:
        return dataclasses.replace(
            _RECAL,
            steps=self.recal_steps,
            calib_n=self.recal_calib_n,
            loss=self.recal_loss,
            lr=self.recal_lr,
            twin_rank=self.recal_twin_rank,
        )

    @property
    def active(self) -> bool:
        return bool(self.recal_steps or self.recal_twin_rank)


def sweep_recal_plan(
    axis: RecalAxis,
    grid: ChipGrid,
    adapters: tuple[tuple[str, str], ...],
    evaluation: EvalSettings,
    analog: bool = False,
) -> RecalPlan | None:
    """The sweep's recalibration plan (None when recal_steps is 0): the named adapters on the
    chips of the named levels, with the sweep's own chip seeds and test items. Refused in one
    line before anything runs: the analog forward, a source that is not an adapter of the
    sweep (or is the base model), a level that is not in the grid."""
    if not axis.active:
        return None
    if analog:
        raise UsageError(
            "--recal-steps with --analog: recalibration has no analog forward yet; "
            "drop --analog, or recalibrate in a digital sweep"
        )
    sources = _recal_sources(axis.recal_from, adapters)
    specs = _recal_specs(axis.recal_sigmas, grid)
    # the sources' cells on these chips are the sweep's own: not scored twice
    return RecalPlan(sources, specs, grid.seeds, axis.settings, evaluation, score_sources=False)


def _recal_sources(
    wanted: tuple[str, ...], adapters: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    folders = dict(adapters)
    if BASE in wanted or not adapters:
        raise UsageError(
            f"--recal-steps tunes a LoRA adapter and the {BASE} model (no adapter) has none: "
            "name adapters of --adapters in --recal-from"
        )
    missing = [label for label in wanted if label not in folders]
    if missing:
        raise UsageError(
            f"--recal-from {', '.join(missing)}: not in --adapters (labels: {', '.join(folders)})"
        )
    labels = dict.fromkeys(wanted) if wanted else folders
    return tuple((label, folders[label]) for label in labels)


def _recal_specs(sigmas: tuple[float, ...], grid: ChipGrid) -> tuple[str, ...]:
    """The grid's chip specs at the chosen levels (default: its highest level)."""
    if not grid.sigmas:
        raise UsageError("--recal-steps recalibrates on chips of --sigmas, and it is empty")
    stray = [sigma for sigma in sigmas if sigma not in grid.sigmas]
    if stray:
        raise UsageError(
            f"--recal-sigmas {', '.join(f'{s:g}' for s in stray)}: not a level of --sigmas "
            f"({', '.join(f'{s:g}' for s in grid.sigmas)}); recalibration reuses the sweep's chips"
        )
    conditions = [Condition.of(grid.noise_template.format(sigma=s)) for s in sigmas or (max(grid.sigmas),)]
    clean = [c for c in conditions if c.is_clean]
    if clean:
        raise UsageError("--recal-sigmas: a level whose chip is clean has nothing to recalibrate for")
    return tuple(dict.fromkeys(c.spec for c in conditions))


def run_in_folder(
    model,
    tokenizer,
    tasks: list[Task],
    plan: RecalPlan,
    out: str | Path,
    placement: Placement = Placement(),
    log: Log = print,
) -> list[dict]:
    """`run_recalibration` into `out`, whose tuned adapters were made with one plan's settings
    (recal.json; refused otherwise), one process at a time; returns this plan's cells only
    (the folder may hold other sources or levels of earlier runs). `model` is a PeftModel
    with one trainable adapter (the others are swapped in as state dicts)."""
    out = Path(out)
    check_recal_manifest(out, plan, placement)
    with cells_lock(out, 0):
        runner = RecalRunner(model, tokenizer, tasks, plan.eval, out, placement)
        if plan.other_chip and len(plan.seeds) < 2:
            log("recalibration: one chip per level, so no other chip to score on (+recal@other)")
        return plan_records(run_recalibration(runner, plan, log), plan)


def check_recal_manifest(out: Path, plan: RecalPlan, placement: Placement) -> None:
    """A tuned adapter is cached by (source, chip) alone, so a folder keeps one setting:
    resuming with other steps, loss, items or placement would reuse stale adapters. The
    first call writes recal.json (and makes `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RECAL_MANIFEST
    wanted = json.loads(
        json.dumps(
            {
                "settings": dataclasses.asdict(plan.settings),
                "placement": dataclasses.asdict(placement),
                "equal_compute": plan.equal_compute,
            }
        )
    )
    if not path.is_file():
        files.write_json(path, wanted)
    elif json.loads(path.read_text(encoding="utf-8")) != wanted:
        raise UsageError(
            f"{out} holds recalibrations with other settings ({RECAL_MANIFEST} differs): "
            "use a new --out, or the same --recal-* flags to resume"
        )


def plan_records(records: list[dict], plan: RecalPlan) -> list[dict]:
    """The cells of this plan's sources (with their suffixes) on its chips and clean."""
    from halora.study.report import RECAL_SUFFIXES

    methods = {label + suffix for label, _ in plan.sources for suffix in RECAL_SUFFIXES}
    specs = {CLEAN, *(Condition.of(spec).spec for spec in plan.specs)}
    seeds = {0, *plan.seeds}
    return [r for r in records if r["method"] in methods and r["spec"] in specs and r["seed"] in seeds]


def recal_baseline(labels: Iterable[str], plan: RecalPlan) -> str:
    """Whose drop the recovery ratios are of: plain LoRA's (the report's baseline) where the
    sweep has it, else the first source's (the share of its own drop that it wins back)."""
    return BASELINE if BASELINE in set(labels) else plan.sources[0][0]


def sweep_table(
    sweep_records: list[dict],
    recal_records: list[dict],
    plan: RecalPlan,
    baseline: str,
    resamples: int = 1000,
) -> dict:
    """The study's recalibration table over a sweep: the sources' and the baseline's own
    cells come from the sweep (same chips, same items), the tuned ones from `recal_records`;
    with the plan (settings, sources, levels, chips) beside it."""
    from halora.study.report import recalibration_table

    specs = {CLEAN, *plan.specs}
    labels = {baseline, *(label for label, _ in plan.sources)}
    own = [r for r in sweep_records if r["method"] in labels and r["spec"] in specs]
    table = recalibration_table(
        own + recal_records, [label for label, _ in plan.sources], baseline, resamples
    )
    return {
        **table,
        "settings": dataclasses.asdict(plan.settings),
        "sources": [list(source) for source in plan.sources],
        "specs": list(plan.specs),
        "seeds": list(plan.seeds),
    }


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
