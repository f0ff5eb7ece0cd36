"""Per-chip recalibration against its baselines, on identical held-out chips.

For each source adapter (e.g. the demo's lora and halora) and each noise level, every
chip of the chosen chip set gets its own recalibrated adapter (`halora.recalibrate`),
scored on the chip it was tuned on (`+recal`) and on the next chip of the same level
(`+recal@other`: a gain that transfers is more training, not calibration). The
equal-compute baseline (`+steps`) gives the source the same extra steps with the task
loss on the same calibration items, without a chip. Optional curves: recovery against
calibration steps (snapshots of one run) and against calibration items.

Scores are sweep cells (halora.sweep's record format), cached in OUT/cells.jsonl, so a
killed run resumes; intervals are the study's hierarchical bootstrap (chips, items).

    .venv/bin/python benchmarks/bench_recalibrate.py --out /root/recal \\
        --source lora=runs/demo/adapters/lora --source halora=runs/demo/adapters/halora
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import emit, environment, log, set_threads
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from halora.cim import program_chip
from halora.evaluate import EvalSettings, evaluate_task
from halora.models import load_model
from halora.noise import GAUSSIAN_TEMPLATE
from halora.recalibrate import RecalSettings, calibration_examples, lora_state, recalibrate
from halora.study.stats import accuracy_ci, delta_ci, recovery_ci
from halora.sweep import CHIP_SETS, CLEAN, CellCache, Condition, cell_key
from halora.tasks import load_tasks

NAME = "bench_recalibrate"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = CellCache(self.out / "cells.jsonl")
        self.runs_path = self.out / "runs.jsonl"
        self.runs = _read_jsonl(self.runs_path)
        self.tasks = load_tasks(args.tasks)
        self.eval = EvalSettings(items=args.items, eval_batch_size=16, max_length=256)
        self.examples = {t.name: t.examples("test", args.items) for t in self.tasks}
        self.sources = dict(item.split("=", 1) for item in args.source)
        self.model = None
        self.first = CHIP_SETS[args.chip_set]
        self.seeds = list(range(self.first, self.first + args.chips))

    # -- model and adapters --------------------------------------------------------------
    def load(self) -> None:
        if self.model is None:
            model, self.tokenizer = load_model(self.args.model)
            first = next(iter(self.sources.values()))
            self.model = PeftModel.from_pretrained(model, first, is_trainable=True)
            self.model.eval()

    def use(self, state: dict[str, torch.Tensor]) -> None:
        set_peft_model_state_dict(self.model, state)

    def source_state(self, label: str) -> dict[str, torch.Tensor]:
        return load_file(str(Path(self.sources[label]) / "adapter_model.safetensors"))

    # -- scoring -------------------------------------------------------------------------
    def score(self, label: str, spec: str, seed: int, state) -> None:
        """Cells of adapter `state` under `label` on chip (spec, seed), unless cached."""
        condition = Condition.of(spec)
        todo = [
            t for t in self.tasks if cell_key(label, t.name, condition.spec, seed) not in self.cache.records
        ]
        if not todo:
            return
        self.load()
        self.use(state() if callable(state) else state)
        with program_chip(self.model, condition.spec, seed):
            for task in todo:
                result = evaluate_task(self.model, self.tokenizer, task, self.eval, self.examples[task.name])
                self.cache.add(
                    {
                        "key": cell_key(label, task.name, condition.spec, seed),
                        "method": label,
                        "noise": condition.noise,
                        "spec": condition.spec,
                        "sigma": condition.sigma,
                        "seed": seed,
                        **result.to_json(),
                    }
                )

    def tuned(self, source: str, spec: str, seed: int, settings: RecalSettings, tag: str, snapshots=()):
        """Recalibrate `source` on chip (spec, seed); the states (final, and per snapshot step)
        are kept on disk so scoring can resume without tuning again."""
        key = f"{source}|{tag}|{spec}|{seed}"
        folder = self.out / "states" / _safe(key)
        final = folder / "final.pt"
        if not final.is_file():
            self.load()
            self.use(self.source_state(source))
            examples = calibration_examples(self.tasks, settings.calib_n)
            result = recalibrate(
                self.model, self.tokenizer, examples, spec, seed, settings, snapshot_steps=snapshots
            )
            folder.mkdir(parents=True, exist_ok=True)
            for step, state in result.snapshots.items():
                torch.save(state, folder / f"step{step}.pt")
            torch.save(lora_state(self.model), folder / "final.pt.tmp")
            (folder / "final.pt.tmp").rename(final)
            record = {"key": key, "seconds": result.seconds, "steps": result.steps,
                      "loss_first": result.losses[0], "loss_last": result.final_loss}  # fmt: skip
            self.runs[key] = record
            with self.runs_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            log(
                f"  tuned {key}: {result.seconds:.0f} s, "
                f"loss {result.losses[0]:.3f} -> {result.final_loss:.3f}"
            )
        return lambda step=None: torch.load(folder / (f"step{step}.pt" if step else "final.pt"))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _read_jsonl(path: Path) -> dict[str, dict]:
    records = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["key"]] = record
    return records


def settings_from(args, **overrides) -> RecalSettings:
    values = dict(
        steps=args.steps, calib_n=args.calib_n, loss=args.loss, lr=args.lr, batch_size=8, max_length=96
    )
    return RecalSettings(**{**values, **overrides})


def main_grid(bench: Bench, args) -> None:
    for sigma in args.sigmas:
        spec = GAUSSIAN_TEMPLATE.format(sigma=sigma)
        for source in bench.sources:
            log(f"[{source} sigma {sigma}]")
            state = lambda source=source: bench.source_state(source)  # noqa: E731
            bench.score(source, CLEAN, 0, state)
            extra = bench.tuned(source, "none", 0, settings_from(args, loss="task"), "steps")
            bench.score(f"{source}+steps", CLEAN, 0, extra)
            for index, seed in enumerate(bench.seeds):
                other = bench.seeds[(index + 1) % len(bench.seeds)]
                bench.score(source, spec, seed, state)
                bench.score(f"{source}+steps", spec, seed, extra)
                tuned = bench.tuned(source, spec, seed, settings_from(args), args.loss)
                bench.score(f"{source}+recal", spec, seed, tuned)
                bench.score(f"{source}+recal@other", spec, other, tuned)


def losses_grid(bench: Bench, args) -> None:
    """Each loss from the first source at the first sigma: the selection of the loss."""
    spec = GAUSSIAN_TEMPLATE.format(sigma=args.sigmas[0])
    source = next(iter(bench.sources))
    state = lambda: bench.source_state(source)  # noqa: E731
    bench.score(source, CLEAN, 0, state)
    for seed in bench.seeds:
        bench.score(source, spec, seed, state)
        for loss in ("task", "distill", "both"):
            tuned = bench.tuned(source, spec, seed, settings_from(args, loss=loss), loss)
            bench.score(f"{source}+recal-{loss}", spec, seed, tuned)


def curves_grid(bench: Bench, args) -> None:
    """Recovery against calibration steps (snapshots of one run) and items, first source."""
    spec = GAUSSIAN_TEMPLATE.format(sigma=args.sigmas[0])
    source = next(iter(bench.sources))
    top = max(args.curve_steps)
    for seed in bench.seeds:
        tuned = bench.tuned(
            source, spec, seed, settings_from(args, steps=top), f"curve{top}", args.curve_steps
        )
        for step in args.curve_steps:
            state = (lambda t=tuned, s=step: t(s)) if step != top else tuned
            bench.score(f"{source}+recal-{step}steps", spec, seed, state)
        for items in args.curve_items:
            tuned_n = bench.tuned(source, spec, seed, settings_from(args, calib_n=items), f"items{items}")
            bench.score(f"{source}+recal-{items}items", spec, seed, tuned_n)


def summarise(bench: Bench) -> dict:
    cells = list(bench.cache.records.values())
    by = {}
    for cell in cells:
        by.setdefault((cell["method"], cell["spec"]), []).append(cell)
    summary: dict = {"accuracy": {}, "recovery": {}, "own_minus_other": {}}
    specs = sorted({spec for _, spec in by if spec != CLEAN})
    for (method, spec), group in sorted(by.items()):
        summary["accuracy"][f"{method} | {spec}"] = accuracy_ci(group).to_json() | {
            "chips": sorted({c["seed"] for c in group})
        }
    for source in bench.sources:
        clean = by.get((source, CLEAN))
        for spec in specs:
            base = by.get((source, spec))
            if not clean or not base:
                continue
            for (method, other_spec), group in by.items():
                if other_spec == spec and method.startswith(f"{source}+"):
                    summary["recovery"][f"{method} | {spec}"] = recovery_ci(group, base, clean).to_json()
            own, other = by.get((f"{source}+recal", spec)), by.get((f"{source}+recal@other", spec))
            if own and other:
                # paired by the chip scored on: each chip holds its own adapter and the one
                # tuned on the chip before it
                summary["own_minus_other"][f"{source} | {spec}"] = delta_ci(own, other).to_json()
    summary["runs"] = list(bench.runs.values())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="default")
    parser.add_argument("--source", action="append", required=True, help="LABEL=ADAPTER_DIR")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.03])
    parser.add_argument("--chips", type=int, default=5)
    parser.add_argument("--chip-set", default="test", choices=tuple(CHIP_SETS))
    parser.add_argument("--items", type=int, default=16, help="test items per task")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--calib-n", type=int, default=128)
    parser.add_argument("--loss", default="both", choices=("task", "distill", "both"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--grid", default="main", choices=("main", "losses", "curves"))
    parser.add_argument("--curve-steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--curve-items", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads)
    bench = Bench(args)
    {"main": main_grid, "losses": losses_grid, "curves": curves_grid}[args.grid](bench, args)
    emit(NAME + ("" if args.grid == "main" else f"_{args.grid}"), {
        "settings": vars(args), "environment": environment(), **summarise(bench)})  # fmt: skip


if __name__ == "__main__":
    main()
