"""The main job: the paper's whole claim on one machine, in minutes.

    SmolLM2-135M + the default reasoning suite
      -> train adapters: lora, noisy, halora (and reg, curriculum on request)
      -> sweep them over simulated RRAM chips: clean, tile-64 Gaussian sigma
         0.005 / 0.01 / 0.02 and one stuck-at-fault setting, several chip seeds each
      -> summary table, results.json / CSV / Markdown / plots, and the energy bill.

The demo is a bundled preset of the shared pipeline (halora.pipeline):
presets/demo/full.toml and quick.toml, whose comments give the budget arithmetic. Two
options are off in both presets to keep that budget: a time axis (`--times 1s,1d,1w
--compensate both`: the chips aged after programming, with and without drift compensation)
and the analog forward (`--analog --adc-bits 8`: DACs and ADCs on the RRAM layers).
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from halora import files
from halora.converters import Converters
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.models import SMOLLM2, model_label
from halora.pipeline import Arm, Log, converters_table, score, train_arm, training_examples
from halora.recalibrate import LOSSES, RecalSettings
from halora.report import BASELINE, plot_sweep, recovery_estimate, summary_rows, write_results
from halora.settings import build, check, read_toml, setting
from halora.sweep import COMPENSATE, TIME_NOISE, ChipGrid, check_time_axis
from halora.tasks import load_tasks
from halora.train import METHODS, TrainSettings

if TYPE_CHECKING:
    from halora.energy import Arch

PRESETS = Path(__file__).resolve().parent / "presets" / "demo"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; every field but `base` is a flag of `halora demo`."""

    WHAT: ClassVar[str] = "demo setting"

    model: str = setting(SMOLLM2, "model name or folder")
    tasks: str = setting("default", "task spec")
    methods: tuple[str, ...] = setting(("lora", "noisy", "halora"), "adapters to train", choices=METHODS)
    train_n: int = setting(300, "training items per task", min=1)
    rank: int = setting(4, "LoRA rank", min=1)
    items: int = setting(24, "test items per task", min=1, aliases=("test_n",))
    sigmas: tuple[float, ...] = setting((0.005, 0.01, 0.02), "tile-64 Gaussian noise levels", min=0)
    chips: int = setting(3, "chip seeds per noisy condition", min=1, aliases=("seeds",))
    saf: str = setting("saf:p0=0.001,p1=0.001", "the stuck-at-fault condition ('' for none)")
    # Per-chip recalibration (README, "Per-chip recalibration"): on each chip of the highest
    # sigma, each of these adapters is tuned to that chip and scored there and on the next
    # chip, beside the equal-compute baseline (the same steps without a chip).
    recal_from: tuple[str, ...] = setting(
        ("lora", "halora"),
        "adapters recalibrated per chip at the highest sigma, of those trained (none: '')",
        choices=METHODS,
    )
    recal_steps: int = setting(10, "recalibration steps per chip (0: the twin correction alone)", min=0)
    recal_calib_n: int = setting(64, "calibration items (train split) per recalibration", min=1)
    recal_loss: str = setting("distill", "recalibration loss: task, distill or both", choices=LOSSES)
    recal_twin_rank: int = setting(0, "twin correction rank per RRAM layer, before the steps (0: off)", min=0)
    # The time axis (halora.sweep.ChipGrid): the test chips aged after programming. Off in
    # the presets: each time adds `chips` chip scorings (twice with compensate = "both").
    times: tuple[str, ...] = setting((), "times after programming, e.g. 1s,1h,1d,1w,1mo (empty: none)")
    time_noise: str = setting(TIME_NOISE, "the time-dependent chip spec aged over times")
    compensate: str = setting(
        "off", "global drift compensation on the time conditions (both: with and without)", choices=COMPENSATE
    )
    # The analog forward (halora.analog): set by --analog and its converter flags, or a
    # [demo.converters] table; None is the digital forward.
    converters: Converters | None = setting(None, "DACs and ADCs on the RRAM layers (None: off)", flag=False)
    # The training recipe every method shares (TrainSettings keys); flags of `halora train`
    # such as --steps or --lr override single keys of it.
    base: dict[str, Any] = setting(factory=dict, help="TrainSettings shared by every method", flag=False)

    def __post_init__(self) -> None:
        check(self)
        check_time_axis(self.times, self.time_noise, self.compensate)
        self.recipe("lora")  # a bad base recipe fails now, not after the first training

    @property
    def recal(self) -> RecalSettings:
        return RecalSettings(
            steps=self.recal_steps,
            calib_n=self.recal_calib_n,
            loss=self.recal_loss,
            max_length=96,
            twin_rank=self.recal_twin_rank,
        )

    def recipe(self, method: str, progress: bool = False) -> TrainSettings:
        return Arm(method, method).train_settings(self.base, seed=0, progress=progress)

    @property
    def grid(self) -> ChipGrid:
        return ChipGrid(
            sigmas=self.sigmas,
            extra_noise=(self.saf,) if self.saf else (),
            chips=self.chips,
            times=self.times,
            time_noise=self.time_noise,
            compensate=self.compensate,
        )


def load_preset(name: str) -> DemoSettings:
    """A bundled demo preset: full or quick."""
    path = PRESETS / f"{name}.toml"
    table = read_toml(path, "demo preset").get("demo", {})
    where = f"demo preset {path} [demo]"
    return build(DemoSettings, converters_table(table, where), where)


def run_demo(settings: DemoSettings, out: str | Path, progress: bool = True, log: Log = print) -> dict:
    """Run the whole pipeline into `out`; return the summary (also in out/demo.json)."""
    out = Path(out)
    started = time.perf_counter()
    tasks = load_tasks(settings.tasks)
    examples = training_examples(tasks, settings.train_n)
    steps = settings.recipe("lora").steps
    log(
        f"halora demo: {settings.model}, tasks {', '.join(t.name for t in tasks)}; "
        f"methods {', '.join(settings.methods)}; {steps} steps each"
    )
    estimate = estimate_minutes(settings, len(tasks))
    log(_estimate_text(settings, estimate))
    adapters = []
    for method in settings.methods:
        folder = out / "adapters" / method
        fresh = not (folder / "adapter_model.safetensors").is_file()
        began = time.perf_counter()
        adapters.append(
            (
                method,
                train_arm(
                    settings.model, settings.recipe(method, progress), settings.rank, examples, folder, log
                ),
            )
        )
        if fresh and len(adapters) == 1:
            _log_measured_speed(time.perf_counter() - began, steps, estimate, log)
    log("sweep: every adapter on the same chips")
    evaluation = EvalSettings(items=settings.items, eval_batch_size=32, progress=progress)
    for note in settings.grid.time_notes():
        log(f"note: {note}")
    records, plan = score(
        settings.model, tasks, adapters, settings.grid, evaluation, out / "sweep", settings.converters
    )
    if any(method in settings.methods for method in settings.recal_from):
        if settings.converters is None:
            records += _recalibrated(settings, tasks, dict(adapters), evaluation, out / "recal", log)
        else:  # its cells would be digital beside analog ones: one table, one forward
            log("recalibration skipped: the recalibration sweep has no analog forward yet")
    title = f"halora demo: {plan.model}"
    paths = write_results(out, records, {"title": title, "demo": asdict(settings), **plan.manifest()})
    plots = plot_sweep(records, out)
    summary = _summary(records, settings, time.perf_counter() - started)
    files.write_json(out / "demo.json", summary)
    log(paths["md"].read_text(encoding="utf-8"))
    log(_energy_text(settings))
    log(
        f"wrote {out}/results.json, results.csv, summary.md, {', '.join(p.name for p in plots)} "
        f"in {summary['seconds'] / 60:.1f} min"
    )
    return summary


# Seconds per unit measured on the 2-core CPU this project is built on (SmolLM2-135M, fp32):
# a training step at batch 8 x <=128 tokens, and one test item scored by log-likelihood
# (about 3.5 options of about 60 tokens each).
SECONDS_PER_STEP = 2.0
SECONDS_PER_ITEM = 0.07
# distill's teacher: a greedy answer and a forward pass per calibration item (estimated from
# 1.1 s per item measured on an AVX2-only CPU under load, 2026-12-03, over its 2.5x slowdown)
SECONDS_PER_TEACHER_ITEM = 0.4
# the twin correction of one SmolLM2 chip (SVDs of every RRAM layer), measured by
# bench_recalibrate --grid twin at 10-11 s on the 2-core AVX-512 CPU
SECONDS_PER_TWIN = 11.0


def estimate_minutes(settings: DemoSettings, n_tasks: int) -> float:
    aged = len(settings.times) * (2 if settings.compensate == "both" else 1)
    chips = 1 + settings.chips * (len(settings.sigmas) + 1 + aged)
    items = chips * len(settings.methods) * n_tasks * settings.items
    steps = settings.recipe("lora").steps
    seconds = steps * len(settings.methods) * SECONDS_PER_STEP + items * SECONDS_PER_ITEM
    sources = sum(1 for method in settings.recal_from if method in settings.methods)
    if settings.converters is not None:
        sources = 0  # with the analog forward the demo skips recalibration
    # per source: one tuning per chip and the equal-compute one; each tuned adapter scored
    # on its chip, the equal-compute one on every chip and clean
    tunings = sources * (settings.chips + 1)
    scored = sources * (2 * settings.chips + 1) * n_tasks * settings.items
    teacher = sources * settings.recal_calib_n * SECONDS_PER_TEACHER_ITEM  # once per source
    seconds += tunings * settings.recal_steps * SECONDS_PER_STEP + scored * SECONDS_PER_ITEM + teacher
    if settings.recal_twin_rank:
        seconds += sources * settings.chips * SECONDS_PER_TWIN
    scale = 1.0 if not torch.cuda.is_available() else 0.1
    return scale * seconds / 60 + 1.0  # + loading, programming and writing


def _estimate_text(settings: DemoSettings, minutes: float) -> str:
    """The estimate's figures are SmolLM2-135M's on 2 CPU cores: said so for another model."""
    if settings.model == SMOLLM2:
        return f"estimated total time: about {minutes:.0f} min (2-core CPU figures; a GPU is much faster)"
    return (
        f"estimated total time: about {minutes:.0f} min for SmolLM2-135M on 2 CPU cores; "
        f"{model_label(settings.model)} will take its own time (a GPU is much faster)"
    )


def _log_measured_speed(seconds: float, steps: int, estimate: float, log: Log) -> None:
    """The estimate's constants come from one CPU; after the first training, say what this
    machine really does (CPUs without AVX-512 measured 2.5x slower)."""
    factor = seconds / (steps * SECONDS_PER_STEP)
    if abs(factor - 1) > 0.25:
        log(
            f"this machine: {seconds / steps:.1f} s per training step, {factor:.1f}x the estimate's "
            f"{SECONDS_PER_STEP} s; expect about {factor * estimate:.0f} min in all"
        )


def _recalibrated(
    settings: DemoSettings, tasks, adapters: dict[str, str], evaluation: EvalSettings, out: Path, log: Log
) -> list[dict]:
    """Cells of the recalibrated adapters and their equal-compute baselines (the sources' own
    cells are already in the sweep's records, on the same chips and items)."""
    from halora.recal_sweep import RecalPlan, recalibrate_sources

    sources = tuple((method, adapters[method]) for method in settings.recal_from if method in adapters)
    top = max(settings.sigmas)
    log(f"recalibration: {', '.join(m for m, _ in sources)} tuned to each chip of sigma {top:g}")
    spec = settings.grid.noise_template.format(sigma=top)
    # the demo scores each tuned adapter on its own chip only (the study adds the next chip)
    plan = RecalPlan(sources, (spec,), settings.grid.seeds, settings.recal, evaluation, other_chip=False)
    records = recalibrate_sources(settings.model, tasks, plan, out, log)
    return [record for record in records if record["method"] not in adapters]


def _summary(records: list[dict], settings: DemoSettings, seconds: float) -> dict:
    rows = summary_rows(records)
    table = {f"{row['method']}@{row['condition']}": row["tasks"] for row in rows}
    # quote a ratio only where its drop_significant says LoRA lost something measurable
    methods = sorted({row["method"] for row in rows} - {BASELINE})
    # every sigma, and every time of the time axis (labels as in the table)
    conditions = [f"sigma={s:g}" for s in settings.sigmas]
    conditions += list(dict.fromkeys(row["condition"] for row in rows if row.get("t") is not None))
    ratios = {
        f"{method}@{condition}": recovery_estimate(records, condition, robust=method)
        for method in methods
        for condition in conditions
    }
    ratios = {key: ratio for key, ratio in ratios.items() if ratio is not None}
    return {"seconds": seconds, "settings": asdict(settings), "table": table, "recovery_ratio": ratios}


# The paper's reference model: its energy line is printed whatever model the demo ran.
ENERGY_REFERENCE = "llama-3.2-1b"


def _energy_text(settings: DemoSettings) -> str:
    """The energy of the model the demo ran, when halora.energy has its shapes (a bundled
    config or a model folder), and of the paper's reference model, LLaMA-3.2-1B."""
    from halora.energy import bundled_models, load_arch

    lines = ["energy of a 512-token prefill (preset paper; see `halora energy`):"]
    name = model_label(settings.model)
    arch = None
    if settings.model in bundled_models() or (Path(settings.model) / "config.json").is_file():
        with suppress(UsageError):  # unreadable shapes: the no-preset line, not a late failure
            arch = load_arch(settings.model)
    if arch is not None:
        lines.append(_energy_line(arch, settings.rank, name))
        if settings.recal_twin_rank and settings.recal_from:
            twin = f"+ twin r{settings.recal_twin_rank}"
            lines.append(_energy_line(arch, settings.rank, twin, settings.recal_twin_rank))
    else:
        lines.append(
            f"  {name}: no energy preset for this model (bundled: {', '.join(bundled_models())}; "
            "`halora energy --model FOLDER` reads a LLaMA-style config.json)"
        )
    if settings.model != ENERGY_REFERENCE:
        reference = _energy_line(load_arch(ENERGY_REFERENCE), settings.rank, ENERGY_REFERENCE)
        lines.append(f"{reference}  (the paper's reference)")
    return "\n".join(lines)


def _energy_line(arch: Arch, rank: int, name: str, twin_rank: int = 0) -> str:
    """One model's 512-token prefill on the paper preset: hybrid CIM against the A100
    (`twin_rank`: with the twin correction's SRAM rows on every RRAM layer)."""
    from halora.energy import estimate, load_preset

    data = estimate(arch, load_preset("paper"), tokens=512, lora_rank=rank, twin_rank=twin_rank).to_json()
    return (
        f"  {name:14s} hybrid CIM {data['hybrid_mj']:.2f} mJ vs A100 "
        f"{data['gpu_mj']:.1f} mJ ({100 * data['ratio']:.1f} %)"
    )


def default_out() -> Path:
    return Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
