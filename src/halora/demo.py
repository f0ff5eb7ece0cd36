"""The main job: the paper's whole claim on one machine, in minutes.

    SmolLM2-135M + the default reasoning suite
      -> train adapters: lora, noisy, halora (and reg with --with-reg)
      -> sweep them over simulated RRAM chips: clean, tile-64 Gaussian sigma
         0.005 / 0.01 / 0.02 and one stuck-at-fault setting, several chip seeds each
      -> summary table, results.json / CSV / Markdown / plots, and the energy bill.

Settings were picked by measurement on a 2-core CPU to fit the budgets of the issue
(full run <= 15 min, --quick <= 5 min); see DEMO and QUICK below.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from halora import files
from halora.evaluate import EvalSettings
from halora.lora import LoraSettings, load_adapters
from halora.models import SMOLLM2, load_model, model_label
from halora.report import plot_sweep, recovery_ratio, summary_rows, write_results
from halora.sweep import SweepPlan, conditions_from, run_sweep
from halora.tasks import load_tasks
from halora.train import TrainSettings, resume_or_clear, train


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. Every field is a flag of `halora demo`."""

    model: str = SMOLLM2
    tasks: str = "default"
    methods: tuple[str, ...] = ("lora", "noisy", "halora")
    # Budget arithmetic on a 2-core CPU (measured: a training step at batch 8 takes 2.0 s,
    # scoring one 4-option item 0.07 s): 3 x 60 steps ~ 6 min; 13 chips x 3 adapters x
    # 4 tasks x 24 items ~ 4.4 min; loading and writing ~ 1 min. Measured from a fresh
    # clone: 10.8 min (2026-11-29). --with-curriculum adds about 3.5 min.
    # The training recipe is the reduced robustness study's (presets/studies/reduced.toml),
    # so the demo's adapters are that study's seed-0 recipes: 60 steps at batch 8 and
    # lr 3e-3 learn the suite's tasks (clean LoRA ~74 % against 25 % chance).
    steps: int = 60
    train_n: int = 300  # training items per task (60 steps x 8 = 480 items seen)
    batch_size: int = 8
    lr: float = 3e-3
    max_length: int = 96  # the suite's prompts + answers fit
    # Training noise and mu: HaLoRA's recipe as chosen on validation chips by that study
    # (tile-64 sigma 0.02 re-drawn every 10 steps, mu 0.1 averaged over modules), which is
    # also `halora train --method halora`'s default.
    train_noise: str = "gaussian:sigma=0.02,scale=tile,tile=64"
    redraw_every: int = 10
    mu: float = 0.1
    reduction: str = "mean"
    test_n: int = 24  # test items per task
    sigmas: tuple[float, ...] = (0.005, 0.01, 0.02)
    seeds: int = 3  # chip seeds per noise condition
    # Stuck-at faults at 0.1 % SA0 + 0.1 % SA1 cost plain LoRA about 10 points on this
    # suite (1 % each sends it to chance).
    saf: str = "saf:p0=0.001,p1=0.001"
    rank: int = 4


DEMO = DemoSettings()
# The same pipeline in about 5 minutes (4.0 min measured): 3 x 20 steps, 9 chips x 3 adapters x
# 4 tasks x 10 items.
QUICK = replace(DEMO, steps=20, train_n=60, test_n=10, seeds=2, redraw_every=5)


def run_demo(settings: DemoSettings, out: str | Path, progress: bool = True, log=print) -> dict:
    """Run the whole pipeline into `out`; return the summary (also in out/demo.json)."""
    out = Path(out)
    started = time.perf_counter()
    tasks = load_tasks(settings.tasks)
    train_examples = [e for task in tasks for e in task.examples("train", settings.train_n)]
    log(
        f"halora demo: {settings.model}, tasks {', '.join(t.name for t in tasks)}; "
        f"methods {', '.join(settings.methods)}; {settings.steps} steps each"
    )
    log(
        f"estimated total time: about {estimate_minutes(settings, len(tasks)):.0f} min "
        "(2-core CPU figures; a GPU is much faster)"
    )
    adapters = []
    for method in settings.methods:
        folder = out / "adapters" / method
        if (folder / "adapter_model.safetensors").is_file():
            log(f"[{method}] already trained in {folder}: reused")
        else:
            log(f"[{method}] training")
            resume = resume_or_clear(folder)
            model, tokenizer = load_model(settings.model)
            train(
                model,
                tokenizer,
                train_examples,
                folder,
                _train_settings(settings, method, progress),
                LoraSettings(rank=settings.rank, alpha=2.0 * settings.rank),
                model_name=model_label(settings.model),
                resume=resume,
            )
        adapters.append((method, str(folder)))
    model, tokenizer = load_model(settings.model)
    model = load_adapters(model, adapters)
    plan = SweepPlan(
        conditions=tuple(
            conditions_from(settings.sigmas, "gaussian:sigma={sigma},scale=tile,tile=64", (settings.saf,))
        ),
        seeds=tuple(range(settings.seeds)),
        adapters=tuple(adapters),
        tasks=tuple(t.name for t in tasks),
        eval=EvalSettings(n=settings.test_n, batch_size=32, progress=progress),
        model=model_label(settings.model),
    )
    log("sweep: every adapter on the same chips")
    records = run_sweep(model, tokenizer, tasks, plan, out / "sweep")
    paths = write_results(out, records, {"title": "halora demo", "demo": asdict(settings), **plan.manifest()})
    plot_sweep(records, out)
    summary = _summary(records, settings, time.perf_counter() - started)
    files.write_json(out / "demo.json", summary)
    log(paths["md"].read_text(encoding="utf-8"))
    log(_energy_text(settings))
    log(
        f"wrote {out}/results.json, results.csv, summary.md, accuracy_vs_sigma.png, per_task.png "
        f"in {summary['seconds'] / 60:.1f} min"
    )
    return summary


def _train_settings(settings: DemoSettings, method: str, progress: bool) -> TrainSettings:
    return TrainSettings(
        method=method,
        noise=settings.train_noise,
        redraw_every=settings.redraw_every,
        mu=settings.mu,
        reduction=settings.reduction,
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=max(settings.steps // 10, 1),
        max_length=settings.max_length,
        save_steps=max(settings.steps // 2, 1),
        logging_steps=max(settings.steps // 10, 1),
        progress=progress,
    )


# Seconds per unit measured on the 2-core CPU this project is built on (SmolLM2-135M, fp32):
# a training step at batch 8 x <=128 tokens, and one test item scored by log-likelihood
# (about 3.5 options of about 60 tokens each).
SECONDS_PER_STEP = 2.0
SECONDS_PER_ITEM = 0.07


def estimate_minutes(settings: DemoSettings, n_tasks: int) -> float:
    chips = 1 + settings.seeds * (len(settings.sigmas) + 1)
    items = chips * len(settings.methods) * n_tasks * settings.test_n
    seconds = settings.steps * len(settings.methods) * SECONDS_PER_STEP + items * SECONDS_PER_ITEM
    scale = 1.0 if not torch.cuda.is_available() else 0.1
    return scale * seconds / 60 + 1.0  # + loading, programming and writing


def _summary(records: list[dict], settings: DemoSettings, seconds: float) -> dict:
    rows = summary_rows(records)
    table = {f"{row['method']}@{row['condition']}": row["tasks"] for row in rows}
    ratios = {f"sigma={s:g}": recovery_ratio(rows, f"sigma={s:g}") for s in settings.sigmas}
    return {"seconds": seconds, "settings": asdict(settings), "table": table, "recovery_ratio": ratios}


def _energy_text(settings: DemoSettings) -> str:
    from halora.energy import estimate, load_arch, load_preset

    lines = ["energy of a 512-token prefill (preset paper; see `halora energy`):"]
    for arch_name in ("smollm2-135m", "llama-3.2-1b"):
        report = estimate(load_arch(arch_name), load_preset("paper"), tokens=512, lora_rank=settings.rank)
        data = report.to_json()
        lines.append(
            f"  {arch_name:14s} hybrid CIM {data['hybrid_mj']:.2f} mJ vs A100 "
            f"{data['gpu_mj']:.1f} mJ ({100 * data['ratio']:.1f} %)"
        )
    return "\n".join(lines)


def default_out() -> Path:
    return Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"


def load_summary(out: str | Path) -> dict:
    return json.loads((Path(out) / "demo.json").read_text(encoding="utf-8"))
