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

With `converters` in the plan, every cell is scored inside `halora.analog.analog_forward`
(DACs and ADCs on the RRAM layers), the clean condition included: it then means exact
weights through real converters. The converters are written into the manifest and into
every record, so one folder never mixes two converter settings.

The time axis (ChipGrid.times): one more condition per time after programming (and per
drift-compensation setting), the time-dependent `time_noise` re-timed by
`halora.noise.at_times`. Every chip seed is the same at every time, so a seed's cells over t
are ONE chip ageing. A compensated condition's cells are keyed `spec|comp`: the key and the
record's "spec" tell it from the plain one, and a condition without compensation keeps the
key it always had, so older cache files resume.

A rank's cache file has one writer at a time: cells-rank{R}.lock (pid and host) keeps a
second sweep into the same folder out, and a lock left by a killed process is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

from tqdm.auto import tqdm

from halora import files
from halora.analog import analog_forward
from halora.cim import Chip, Placement
from halora.converters import Converters
from halora.errors import UsageError
from halora.evaluate import EvalSettings, evaluate_task
from halora.noise import GAUSSIAN_TEMPLATE, at_times, extrapolations, parse_noise_spec, parse_time
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
# The time axis's default device: IBM's CMO/HfOx RRAM fit (the chip simulated here is RRAM;
# pcm is another memory), at aihwkit's effective 0.2 % program-verify acceptance, with the
# read noise aihwkit's drift step adds. Its fits accept 1 s .. 10 years, the whole
# 1s,1h,1d,1w,1mo axis (pcm starts at t0 = 20 s, wan2022 has only 1 s, 1 d and 2 d).
TIME_NOISE = "cmo:accept=0.2+cmo_read"
COMPENSATE = ("off", "on", "both")  # drift compensation on the time conditions
COMP_SUFFIX = "|comp"  # a compensated condition's key: its spec and this (no spec has a "|")


@dataclass(frozen=True)
class Condition:
    """One noise setting of the chip: its spec, a family label and its level; on the time
    axis also its time after programming and whether drift compensation is on."""

    spec: str
    noise: str  # family label for tables: "clean", "gaussian", "saf", ...
    sigma: float | None  # the spec's sigma; 0 for the clean reference; None if it has none
    t: float | None = None  # seconds since programming; None off the time axis
    compensate: bool = False  # global drift compensation (halora.cim.Chip compensate=True)

    @classmethod
    def of(cls, spec: str) -> Condition:
        model = parse_noise_spec(spec)
        canonical = model.spec()
        if canonical in (CLEAN, "clean"):
            return cls(CLEAN, "clean", 0.0)
        families = "+".join(part.split(":", 1)[0] for part in canonical.split("+"))
        return cls(canonical, families, model.level)

    @classmethod
    def aged(cls, spec: str, t: float, compensate: bool = False) -> Condition:
        """A time-axis condition: `spec` already re-timed to `t` (see `time_conditions`)."""
        return replace(cls.of(spec), t=t, compensate=compensate)

    @property
    def is_clean(self) -> bool:
        return self.spec == CLEAN

    @property
    def key(self) -> str:
        """The condition in cell keys and records: its spec, "|comp" appended when compensated."""
        return self.spec + COMP_SUFFIX if self.compensate else self.spec

    def to_json(self) -> dict:
        """For the manifest: the time fields only when set, so the manifest of a sweep
        without a time axis is what it always was (and its folder resumes)."""
        data = asdict(self)
        if self.t is None and not self.compensate:
            del data["t"], data["compensate"]
        return data


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


def time_conditions(spec: str, times: tuple[str, ...], compensate: str = "off") -> list[Condition]:
    """One condition per time (and per compensation setting: "both" gives the plain one,
    then the compensated one). `at_times` refuses a spec without a time-dependent part and a
    time outside a fit's validity, with one line each."""
    if not times:
        return []
    specs = at_times(spec, list(times))
    switches = {"off": (False,), "on": (True,), "both": (False, True)}[compensate]
    conditions = [
        Condition.aged(aged, parse_time(t), on)
        for aged, t in zip(specs, times, strict=True)
        for on in switches
    ]
    return list(dict.fromkeys(conditions))  # 1d and 24h are one time


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
    times: tuple[str, ...] = setting(
        (), "times after programming, e.g. 1s,1h,1d,1w,1mo: each chip seed ages through them"
    )
    time_noise: str = setting(TIME_NOISE, "the time-dependent chip spec aged over --times")
    compensate: str = setting(
        "off",
        "global drift compensation on the time conditions (both: each time with and without)",
        choices=COMPENSATE,
    )

    def __post_init__(self) -> None:
        check(self)
        check_time_axis(self.times, self.time_noise, self.compensate)

    def conditions(self) -> tuple[Condition, ...]:
        """The clean reference, the template's levels, the extra specs, then the time axis (an
        extra spec that is also a time condition is left to the time axis)."""
        aged = time_conditions(self.time_noise, self.times, self.compensate)
        keys = {c.key for c in aged}
        timeless = conditions_from(self.sigmas, self.noise_template, self.extra_noise)
        return tuple([c for c in timeless if c.key not in keys] + aged)

    def time_notes(self) -> list[str]:
        """One line per part of the time axis that extrapolates its fit beyond the data."""
        return time_notes(self.time_noise, self.times)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The chip seeds: the first `chips` of this grid's chip set."""
        first = CHIP_SETS[self.chip_set]
        return tuple(range(first, first + self.chips))


def check_time_axis(times: tuple[str, ...], time_noise: str, compensate: str) -> None:
    """A bad time or a spec without a time key fails when the settings are made, before a
    model loads; compensation without a time axis would change nothing and is refused."""
    if times:
        time_conditions(time_noise, times, compensate)
    elif compensate != "off":
        raise UsageError(
            f"compensate {compensate} acts on the time conditions and there are none: "
            "give times too (e.g. 1s,1d,1w), or leave compensate off"
        )


def time_notes(time_noise: str, times: tuple[str, ...]) -> list[str]:
    """The extrapolation notes (`halora.noise.extrapolations`) of every time, each once."""
    if not times:
        return []
    notes = [note for spec in at_times(time_noise, list(times)) for note in extrapolations(spec)]
    return list(dict.fromkeys(notes))


@dataclass(frozen=True)
class SweepPlan:
    conditions: tuple[Condition, ...]
    seeds: tuple[int, ...]
    adapters: tuple[tuple[str, str], ...]  # (method label, adapter folder or "" for the base)
    tasks: tuple[str, ...]
    eval: EvalSettings
    model: str
    converters: Converters | None = None  # set: every cell through the analog forward

    def chips(self) -> list[tuple[Condition, int]]:
        """Every chip to program: the clean reference once, each noise condition per seed."""
        return [
            (c, 0) if c.is_clean else (c, s)
            for c in self.conditions
            for s in ((0,) if c.is_clean else self.seeds)
        ]

    def manifest(self) -> dict:
        manifest = {
            "model": self.model,
            "conditions": [c.to_json() for c in self.conditions],
            "seeds": list(self.seeds),
            "adapters": [list(a) for a in self.adapters],
            "tasks": list(self.tasks),
            "eval": asdict(self.eval) | {"progress": None},
        }
        # only when set: a sweep folder written before the analog forward existed resumes
        if self.converters is not None:
            manifest["converters"] = asdict(self.converters)
        return manifest


def cell_key(method: str, task: str, spec: str, seed: int) -> str:
    return f"{method}|{task}|{spec}|{seed}"


class CellCache:
    """Finished cells, one JSON line each; a torn line (a kill mid-write) is left out, so its
    cell is computed again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        self.torn = 0  # lines that did not parse
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.records[record["key"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.torn += 1

    def drop_torn(self) -> None:
        """For the writer (holding the lock): say so, and rewrite the file without torn lines,
        so the next cell does not land on the end of a torn one and get lost with it."""
        if not self.torn:
            return
        print(
            f"halora: warning: {self.path}: {self.torn} torn line(s) (a kill mid-write); "
            "their cells are computed again",
            file=sys.stderr,
        )
        files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records.values()))
        self.torn = 0

    def add(self, record: dict) -> None:
        self.records[record["key"]] = record
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


def lock_path(out: Path, rank: int) -> Path:
    return out / f"cells-rank{rank}.lock"


@contextmanager
def cells_lock(out: Path, rank: int) -> Iterator[Path]:
    """Hold rank `rank`'s cache file for this process: two writers appending to one file
    would each skip the other's cells and compute them twice, or interleave lines."""
    path = lock_path(out, rank)
    mine = {"pid": os.getpid(), "host": socket.gethostname()}
    if not _create_lock(path, mine):
        holder = _lock_holder(path)
        if holder is not None and not _is_stale(holder, path):
            raise UsageError(_held_message(out, path, holder))
        path.unlink(missing_ok=True)  # its writer is gone: taken over
        if not _create_lock(path, mine):  # another process took it over first
            raise UsageError(_held_message(out, path, _lock_holder(path)))
    try:
        yield path
    finally:
        if _lock_holder(path) == mine:
            path.unlink(missing_ok=True)


def _create_lock(path: Path, holder: dict) -> bool:
    """Create the lock holding `holder`; False when it exists (O_EXCL: one creator wins)."""
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w", encoding="utf-8") as lock:
        lock.write(json.dumps(holder))
    return True


def _lock_holder(path: Path) -> dict | None:
    """The lock's {"pid", "host"}, {} when it cannot be read, None when it is gone."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _is_stale(holder: dict, path: Path) -> bool:
    """A lock whose process is gone. Only a process on this host can be checked; one with
    our own pid is a leftover of an earlier process (containers reuse small pids). An
    unreadable lock older than a few seconds is one whose writer died before writing it."""
    if not holder:
        try:
            return time.time() - path.stat().st_mtime > 5
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    return holder["pid"] == os.getpid() or not _pid_alive(holder["pid"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _held_message(out: Path, path: Path, holder: dict | None) -> str:
    who = f"pid {holder['pid']} on {holder.get('host')}" if holder and "pid" in holder else "another process"
    return (
        f"{out} is being written by {who} (lock file {path}): "
        "wait for it, or delete the lock if that process is gone"
    )


def check_manifest(out: Path, plan: SweepPlan, write: bool = True) -> None:
    """A folder holds one sweep: resuming with another grid would mix results. Only the main
    rank writes the manifest; the others check it when it is there."""
    path = out / MANIFEST
    wanted = json.loads(json.dumps(plan.manifest()))
    if path.exists():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found.get("converters") != wanted.get("converters"):
            raise UsageError(
                f"{out} holds a sweep with other converters ({_converters_text(found)}, asked: "
                f"{_converters_text(wanted)}): use a new --out, or the same --analog flags to resume"
            )
        if found != wanted:
            raise UsageError(
                f"{out} holds a different sweep ({MANIFEST} differs): "
                "use a new --out, or the same settings to resume"
            )
    elif write:
        files.write_json(path, wanted)


def _converters_text(manifest: dict) -> str:
    converters = manifest.get("converters")
    if converters is None:
        return "no analog forward"
    try:
        return Converters(**converters).describe()
    except (TypeError, UsageError):  # written by another version
        return json.dumps(converters)


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
    check_manifest(out, plan, write=rank == 0)
    with cells_lock(out, rank):
        cache = CellCache(out / f"cells-rank{rank}.jsonl")
        cache.drop_torn()
        _run_cells(model, tokenizer, tasks, plan, cache, placement, plan.chips()[rank::world])
        return list(cache.records.values())


def _run_cells(
    model,
    tokenizer,
    tasks: list[Task],
    plan: SweepPlan,
    cache: CellCache,
    placement: Placement,
    my_chips: list[tuple[Condition, int]],
) -> None:
    """Score every cell of these chips that the cache does not hold yet."""
    examples = {task.name: task.examples(plan.eval.split, plan.eval.items) for task in tasks}
    # one bar per sweep: the cells' own loglik / generate bars would start anew in every cell
    cell_eval = replace(plan.eval, progress=False)
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
                if cell_key(method, task.name, condition.key, seed) not in cache.records
            ]
            progress.update(len(plan.adapters) * len(tasks) - len(todo))
            if not todo:
                continue
            chip = _program(chip, model, condition, seed, placement)
            alpha = _alpha_summary(chip)
            for method, task in todo:
                with _using_adapter(model, method), _converters(model, plan, placement, seed):
                    score = evaluate_task(model, tokenizer, task, cell_eval, examples[task.name])
                record = {
                    "key": cell_key(method, task.name, condition.key, seed),
                    "method": method,
                    "noise": condition.noise,
                    "spec": condition.key,
                    "sigma": condition.sigma,
                    "seed": seed,
                    "t": condition.t,
                    "compensate": condition.compensate,
                    **alpha,
                    **score.to_json(),
                }
                if plan.converters is not None:
                    record["converters"] = asdict(plan.converters)
                cache.add(record)
                progress.update(1)
    finally:
        if chip is not None:
            chip.restore()
        progress.close()


def _converters(model, plan: SweepPlan, placement: Placement, seed: int) -> AbstractContextManager:
    """The analog forward for one cell, or nothing. Installed anew per cell with the chip
    seed, so every cell on a chip starts from the same output-noise draws: adapters are
    compared under the same converter noise, and a resumed sweep draws what a whole one does."""
    if plan.converters is None:
        return nullcontext()
    return analog_forward(model, plan.converters, placement, seed=seed)


def _program(chip: Chip | None, model, condition: Condition, seed: int, placement: Placement) -> Chip:
    """Program (or re-program, reusing the stash of clean weights) the chip for one cell group."""
    if chip is None:
        return Chip(model, condition.spec, seed, placement, compensate=condition.compensate)
    # one stash of clean weights serves the plain and the compensated conditions alike
    chip.reprogram(seed, condition.spec, compensate=condition.compensate)
    return chip


def _alpha_summary(chip: Chip) -> dict:
    """The compensation factors of a compensated chip (mean, min, max over its RRAM layers),
    for its records; nothing for a plain chip. The per-layer factors stay out of the cache:
    hundreds of numbers on every cell."""
    compensation = chip.compensation_json()
    if compensation is None:
        return {}
    return {key: compensation[key] for key in ("alpha_mean", "alpha_min", "alpha_max")}


@contextmanager
def _using_adapter(model, method: str) -> Iterator[None]:
    """The PeftModel switched to one adapter, or with adapters disabled for the base."""
    # a plain transformers 5 model has set_adapter too (its own PEFT integration), but no
    # disable_adapter context: only a PeftModel holds the adapters of a sweep
    if not hasattr(model, "disable_adapter"):
        yield
    elif method == BASE:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(method)
        yield


def gather_records(out: str | Path) -> list[dict]:
    """All ranks' cached cells of a sweep folder."""
    return list(_gathered(Path(out)).values())


def _gathered(out: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for path in sorted(out.glob("cells-rank*.jsonl")):
        records.update(CellCache(path).records)
    return records


def wait_for_ranks(
    out: str | Path, plan: SweepPlan, world: int, poll_s: float = 2.0, grace_s: float = 300.0
) -> list[dict]:
    """The main rank's gather: every rank's cells, once all are in the cache files.

    The ranks share nothing but the folder (no process group, no barrier whose timeout a
    long share could outlast). A rank whose cells are missing and that holds no lock for
    `grace_s` seconds (crashed, or never started) is reported instead of waited for."""
    out = Path(out)
    owners = _cell_owners(plan, world)
    started, told = time.monotonic(), False
    while True:
        records = _gathered(out)
        missing = sorted({rank for key, rank in owners.items() if key not in records})
        if not missing:
            return list(records.values())
        idle = [rank for rank in missing if not _lock_live(lock_path(out, rank))]
        if idle and time.monotonic() - started >= grace_s:
            raise UsageError(
                f"rank(s) {', '.join(map(str, idle))} stopped before finishing their share of the "
                f"sweep in {out}: run the same command again to resume it"
            )
        if not told:
            print(f"waiting for rank(s) {', '.join(map(str, missing))} to finish", file=sys.stderr)
            told = True
        time.sleep(poll_s)


def _cell_owners(plan: SweepPlan, world: int) -> dict[str, int]:
    """Every cell key of the plan and the rank that computes it (chip i: rank i % world)."""
    return {
        cell_key(method, task, condition.key, seed): index % world
        for index, (condition, seed) in enumerate(plan.chips())
        for method, _ in plan.adapters
        for task in plan.tasks
    }


def _lock_live(path: Path) -> bool:
    holder = _lock_holder(path)
    return holder is not None and not _is_stale(holder, path)
