"""The sweep: adapters x noise conditions x chip seeds x tasks, on identical chips.

    for each condition (clean first, then each noise spec) and chip seed:
        program the chip once                       (halora.cim.Chip)
        for each adapter: switch to it              (PEFT: one base, many adapters)
            for each task: score it                 (halora.evaluate)

Every adapter is scored on the same programmed weights, so methods are compared on
identical chips. Each finished cell is appended to a cache file as soon as it is done;
a rerun with the same --out skips the cached cells, so an interrupted sweep resumes
where it stopped. Under `torchrun` / `accelerate launch` each rank takes every
world-size-th chip, and the main rank writes the results when all are done.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from tqdm.auto import tqdm

from halora import files
from halora.cim import Chip, Placement
from halora.errors import UsageError
from halora.evaluate import EvalSettings, evaluate_task
from halora.noise import GAUSSIAN_TEMPLATE, parse_noise_spec
from halora.settings import check, setting
from halora.tasks import Task

CLEAN = "none"
BASE = "base"  # the pretrained model without an adapter
MANIFEST = "sweep.json"
PAPER_SIGMAS = (0.005, 0.01, 0.02)  # the paper's tile-64 Gaussian levels
PAPER_SEEDS = 5
# Chip seeds are split into disjoint sets by construction, so a chip that selected a recipe
# (validation) or calibrated a noise level is never one that reports the result (test).
CHIP_SET_SIZE = 100_000
CHIP_SETS = {"test": 0, "validation": CHIP_SET_SIZE, "calibration": 2 * CHIP_SET_SIZE}


@dataclass(frozen=True)
class Condition:
    """One noise setting of the chip: its spec, a family label and its level."""

    spec: str
    noise: str  # family label for tables: "clean", "gaussian", "saf", ...
    sigma: float | None  # the spec's sigma; 0 for the clean reference; None if it has none

    @classmethod
    def of(cls, spec: str) -> Condition:
        model = parse_noise_spec(spec)
        canonical = model.spec()
        if canonical in (CLEAN, "clean"):
            return cls(CLEAN, "clean", 0.0)
        families = "+".join(part.split(":", 1)[0] for part in canonical.split("+"))
        return cls(canonical, families, model.level)

    @property
    def is_clean(self) -> bool:
        return self.spec == CLEAN


def conditions_from(sigmas: tuple[float, ...], template: str, extra: tuple[str, ...]) -> list[Condition]:
    """The clean reference, the template at each sigma, then the extra specs."""
    if "{sigma}" not in template:
        raise UsageError(
            f"noise template {template!r} needs a {{sigma}} placeholder, "
            "e.g. gaussian:sigma={sigma},scale=tile,tile=64"
        )
    specs = [template.format(sigma=sigma) for sigma in sigmas] + list(extra)
    conditions = [Condition.of(CLEAN)] + [Condition.of(spec) for spec in specs]
    return list(dict.fromkeys(conditions))  # drop repeats, keep order


@dataclass(frozen=True)
class ChipGrid:
    """The chips a sweep programs: a noise template at several levels, extra conditions,
    and how many chip seeds each noisy condition gets (the clean reference is one chip)."""

    WHAT: ClassVar[str] = "chip grid setting"

    sigmas: tuple[float, ...] = setting(PAPER_SIGMAS, "noise levels for the template", min=0)
    noise_template: str = setting(GAUSSIAN_TEMPLATE, "chip noise spec with a {sigma} placeholder")
    extra_noise: tuple[str, ...] = setting(
        (), "another chip condition, e.g. saf:p0=0.01,p1=0.01 (repeat the flag for more)", repeat=True
    )
    chips: int = setting(
        PAPER_SEEDS, "chip seeds per noisy condition", min=1, max=CHIP_SET_SIZE, aliases=("seeds",)
    )
    chip_set: str = setting(
        "test",
        "which chips: test, validation (selection) or calibration; the sets never share a chip",
        choices=tuple(CHIP_SETS),
    )

    def __post_init__(self) -> None:
        check(self)

    def conditions(self) -> tuple[Condition, ...]:
        return tuple(conditions_from(self.sigmas, self.noise_template, self.extra_noise))

    @property
    def seeds(self) -> tuple[int, ...]:
        """The chip seeds: the first `chips` of this grid's chip set."""
        first = CHIP_SETS[self.chip_set]
        return tuple(range(first, first + self.chips))


@dataclass(frozen=True)
class SweepPlan:
    conditions: tuple[Condition, ...]
    seeds: tuple[int, ...]
    adapters: tuple[tuple[str, str], ...]  # (method label, adapter folder or "" for the base)
    tasks: tuple[str, ...]
    eval: EvalSettings
    model: str

    def chips(self) -> list[tuple[Condition, int]]:
        """Every chip to program: the clean reference once, each noise condition per seed."""
        return [
            (c, 0) if c.is_clean else (c, s)
            for c in self.conditions
            for s in ((0,) if c.is_clean else self.seeds)
        ]

    def manifest(self) -> dict:
        return {
            "model": self.model,
            "conditions": [asdict(c) for c in self.conditions],
            "seeds": list(self.seeds),
            "adapters": [list(a) for a in self.adapters],
            "tasks": list(self.tasks),
            "eval": asdict(self.eval) | {"progress": None},
        }


def cell_key(method: str, task: str, spec: str, seed: int) -> str:
    return f"{method}|{task}|{spec}|{seed}"


class CellCache:
    """Finished cells, one JSON line each; a torn last line (a kill mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.records[record["key"]] = record

    def add(self, record: dict) -> None:
        self.records[record["key"]] = record
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


def check_manifest(out: Path, plan: SweepPlan) -> None:
    """A folder holds one sweep: resuming with another grid would mix results."""
    path = out / MANIFEST
    wanted = json.loads(json.dumps(plan.manifest()))
    if path.exists():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != wanted:
            raise UsageError(
                f"{out} holds a different sweep ({MANIFEST} differs): "
                "use a new --out, or the same settings to resume"
            )
    else:
        files.write_json(path, wanted)


def run_sweep(
    model,
    tokenizer,
    tasks: list[Task],
    plan: SweepPlan,
    out: str | Path,
    placement: Placement = Placement(),
    rank: int = 0,
    world: int = 1,
) -> list[dict]:
    """Evaluate this rank's share of the chips; return the records it holds (cached + new).

    `model` is a PeftModel holding every adapter of the plan under its method label, or a
    plain model when the plan has only the base.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        check_manifest(out, plan)
    cache = CellCache(out / f"cells-rank{rank}.jsonl")
    examples = {task.name: task.examples(plan.eval.split, plan.eval.items) for task in tasks}
    my_chips = plan.chips()[rank::world]
    progress = tqdm(
        total=len(my_chips) * len(plan.adapters) * len(tasks), desc="sweep", disable=not plan.eval.progress
    )
    chip: Chip | None = None
    try:
        for condition, seed in my_chips:
            todo = [
                (method, task)
                for method, _ in plan.adapters
                for task in tasks
                if cell_key(method, task.name, condition.spec, seed) not in cache.records
            ]
            progress.update(len(plan.adapters) * len(tasks) - len(todo))
            if not todo:
                continue
            chip = _program(chip, model, condition, seed, placement)
            for method, task in todo:
                with _using_adapter(model, method):
                    score = evaluate_task(model, tokenizer, task, plan.eval, examples[task.name])
                cache.add(
                    {
                        "key": cell_key(method, task.name, condition.spec, seed),
                        "method": method,
                        "noise": condition.noise,
                        "spec": condition.spec,
                        "sigma": condition.sigma,
                        "seed": seed,
                        **score.to_json(),
                    }
                )
                progress.update(1)
    finally:
        if chip is not None:
            chip.restore()
        progress.close()
    return list(cache.records.values())


def _program(chip: Chip | None, model, condition: Condition, seed: int, placement: Placement) -> Chip:
    """Program (or re-program, reusing the stash of clean weights) the chip for one cell group."""
    if chip is None:
        return Chip(model, condition.spec, seed, placement)
    chip.reprogram(seed, condition.spec)
    return chip


@contextmanager
def _using_adapter(model, method: str) -> Iterator[None]:
    """The PeftModel switched to one adapter, or with adapters disabled for the base."""
    if not hasattr(model, "set_adapter"):
        yield
    elif method == BASE:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(method)
        yield


def gather_records(out: str | Path) -> list[dict]:
    """All ranks' cached cells of a sweep folder."""
    records: dict[str, dict] = {}
    for path in sorted(Path(out).glob("cells-rank*.jsonl")):
        records.update(CellCache(path).records)
    return list(records.values())
