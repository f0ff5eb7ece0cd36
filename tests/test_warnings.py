"""What a normal run prints besides its results: no third-party warnings, and one progress
bar per sweep (not one per cell)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest

import halora.commands.eval as eval_command
import halora.sweep as sweep_module
from halora.cli import main
from halora.evaluate import EvalSettings
from halora.lora import LoraSettings, attach_lora, load_adapters
from halora.models import build_tiny, byte_tokenizer
from halora.sweep import BASE, SweepPlan, conditions_from, run_sweep
from halora.tasks import load_tasks

# Categories libraries use to tell users about themselves (deprecations, PEFT's notes).
THIRD_PARTY = (FutureWarning, DeprecationWarning, PendingDeprecationWarning, UserWarning)


def task_file(tmp_path) -> str:
    records = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(12)]
    path = tmp_path / "sums.json"
    path.write_text(json.dumps(records))
    return f"json:{path}"


def test_train_eval_and_sweep_on_tiny_emit_no_third_party_warning(tmp_path, capsys):
    tasks, adapter = task_file(tmp_path), str(tmp_path / "adapter")
    chip = ["--noise", "gaussian:sigma=0.01", "--items", "2"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--model", "tiny", "--tasks", tasks, "--steps", "2", "--out", adapter]) == 0
        assert main(["eval", "--model", "tiny", "--tasks", tasks, "--adapter", adapter, *chip]) == 0
        sweep = ["sweep", "--model", "tiny", "--tasks", tasks, "--items", "2", "--sigmas", "0.01"]
        sweep += ["--chips", "1", "--adapters", f"a={adapter},b={adapter}", "--out", str(tmp_path / "s")]
        assert main(sweep) == 0
    shown = [
        f"{w.category.__name__}: {w.message} ({w.filename})"
        for w in caught
        if issubclass(w.category, THIRD_PARTY)
    ]
    assert not shown, shown
    assert "Warning" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning:transformers.modeling_utils")  # the test's own
@pytest.mark.filterwarnings("ignore::UserWarning:peft.utils.save_and_load")  # attach_lora and save
def test_a_sweep_shows_its_own_bar_and_not_one_per_cell(tmp_path, monkeypatch, capsys):
    seen, real = [], sweep_module.evaluate_task

    def spy(model, tokenizer, task, settings, examples=None):
        seen.append(settings.progress)
        return real(model, tokenizer, task, settings, examples)

    monkeypatch.setattr(sweep_module, "evaluate_task", spy)
    tasks = load_tasks(task_file(tmp_path))
    adapters = [("a", str(tmp_path / "a"))]
    attach_lora(build_tiny(), LoraSettings(rank=2)).save_pretrained(adapters[0][1])
    plan = SweepPlan(
        conditions=tuple(conditions_from((0.01,), "gaussian:sigma={sigma}", ())),
        seeds=(0,),
        adapters=((BASE, ""), *adapters),
        tasks=tuple(t.name for t in tasks),
        eval=EvalSettings(items=2, progress=True),
        model="tiny",
    )
    run_sweep(load_adapters(build_tiny(), adapters), byte_tokenizer(), tasks, plan, tmp_path / "s")
    assert seen and not any(seen)  # every cell scored without its own bar
    err = capsys.readouterr().err
    assert "sweep" in err and "generate" not in err and "loglik" not in err


def test_eval_keeps_its_bars(tmp_path, monkeypatch):
    seen, real = [], eval_command.evaluate_task

    def spy(model, tokenizer, task, settings, examples=None):
        seen.append(settings.progress)
        return real(model, tokenizer, task, replace(settings, progress=False), examples)

    monkeypatch.setattr(eval_command, "evaluate_task", spy)
    assert main(["eval", "--model", "tiny", "--tasks", task_file(tmp_path), "--items", "2"]) == 0
    assert seen == [True]
