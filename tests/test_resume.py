"""`halora train --resume`: the one command that restarts any interrupted run, under the
settings it started with, leaving a log without repeated steps; halora.json records only
the settings the method used."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil

import peft.peft_model
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_train import examples as train_examples
from test_train import quick as train_quick

from halora.cli import main
from halora.errors import UsageError
from halora.lora import LoraSettings
from halora.models import build_tiny, byte_tokenizer
from halora.tasks import Example
from halora.train import LOG_FILE, RUN_SETTINGS, SIDECAR, TrainSettings, train

LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)


def examples() -> list[Example]:
    return train_examples(32)


def quick(method: str = "halora", **overrides) -> TrainSettings:
    """test_train's short recipe, checkpointing every 4 of 8 steps."""
    resumable = dict(steps=8, redraw_every=3, logging_steps=2, save_steps=4)
    return train_quick(method, **{**resumable, **overrides})


def run(out, settings: TrainSettings, resume: bool = False, lora: LoraSettings = LORA):
    return train(build_tiny(), byte_tokenizer(), examples(), out, settings, lora, resume=resume)


def kill_after_checkpoint_4(out) -> None:
    """What a kill between the checkpoints of step 4 and step 8 leaves: no checkpoint-8 and
    no adapter, but a log that ran on past step 4."""
    shutil.rmtree(out / "checkpoint-8")
    for name in ("adapter_model.safetensors", "adapter_config.json", SIDECAR):
        (out / name).unlink()


def kill_before_first_checkpoint(out) -> None:
    """What a kill before the first checkpoint leaves: the log and the recorded settings."""
    for path in out.iterdir():
        if path.name not in (LOG_FILE, RUN_SETTINGS):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


def test_resume_leaves_a_log_without_repeated_steps(tmp_path):
    out = tmp_path / "run"
    run(out, quick())
    whole = logged(out)
    kill_after_checkpoint_4(out)
    run(out, quick(), resume=True)
    log = logged(out)
    steps = [record["step"] for record in log if "loss" in record]
    assert steps == [2, 4, 6, 8]  # strictly increasing, no step twice
    assert [r["loss"] for r in log if "loss" in r] == pytest.approx([r["loss"] for r in whole if "loss" in r])
    assert sum("train_runtime" in record for record in log) == 1  # one end-of-run summary
    assert log[-1]["step"] == 8 and "train_runtime" in log[-1]


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path):
    out = tmp_path / "run"
    run(out, quick())
    kill_after_checkpoint_4(out)
    with (out / LOG_FILE).open("a") as handle:
        handle.write('{"step": 9, "lo')  # killed mid-write
    run(out, quick(), resume=True)
    assert [r["step"] for r in logged(out) if "loss" in r] == [2, 4, 6, 8]


def test_resume_refuses_changed_settings_and_names_each(tmp_path):
    out = tmp_path / "run"
    run(out, quick())
    assert json.loads((out / RUN_SETTINGS).read_text())["steps"] == 8
    kill_after_checkpoint_4(out)
    with pytest.raises(UsageError) as refused:
        run(out, quick(steps=10, lr=1e-3), resume=True)
    assert str(refused.value) == (
        "--resume with changed settings: steps 8 -> 10, lr 0.03 -> 0.001; "
        "resume with the same settings, or pick a new --out"
    )
    with pytest.raises(UsageError, match=r"rank 4 -> 2"):
        run(out, quick(), resume=True, lora=LoraSettings(rank=2, alpha=8, dropout=0.0))
    with pytest.raises(UsageError, match=r'train_noise "gaussian:sigma=0.02" -> "gaussian:sigma=0.05"'):
        run(out, quick(train_noise="gaussian:sigma=0.05"), resume=True)
    # how the run reports and checkpoints may change
    result = run(out, quick(logging_steps=1, save_steps=2, progress=True), resume=True)
    assert result.steps == 8


def test_runs_without_recorded_settings_resume_unchecked(tmp_path):
    out = tmp_path / "run"
    run(out, quick())
    kill_after_checkpoint_4(out)
    (out / RUN_SETTINGS).unlink()  # a run of an older halora
    assert run(out, quick(steps=10), resume=True).steps == 10


def test_resume_restarts_a_run_killed_before_its_first_checkpoint(tmp_path):
    out = tmp_path / "run"
    run(out, quick(steps=8, save_steps=100))
    kill_before_first_checkpoint(out)
    (out / "runs").mkdir()  # a TensorBoard folder
    assert sorted(p.name for p in out.iterdir()) == sorted([LOG_FILE, RUN_SETTINGS, "runs"])
    before = (out / LOG_FILE).read_text()
    with pytest.raises(UsageError) as refused:
        run(out, quick(steps=8, save_steps=100))
    assert "is not empty: add --resume" in str(refused.value)
    result = run(out, quick(steps=6, save_steps=100), resume=True)  # starts over: new settings fine
    assert result.steps == 6 and load_file(out / "adapter_model.safetensors")
    assert [r["step"] for r in logged(out) if "loss" in r] == [2, 4, 6]  # the old log is gone
    assert (out / LOG_FILE).read_text() != before
    assert json.loads((out / RUN_SETTINGS).read_text())["steps"] == 6
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty", quick(steps=2, save_steps=100), resume=True).steps == 2


def test_resume_refuses_a_folder_that_is_more_than_an_early_kill(tmp_path):
    out = tmp_path / "done"
    run(out, quick(steps=2, save_steps=100))
    shutil.rmtree(out / "checkpoint-2")  # no checkpoint, and an adapter: not a stopped run
    with pytest.raises(UsageError) as refused:
        run(out, quick(steps=2, save_steps=100), resume=True)
    message = str(refused.value)
    assert message.startswith(f"nothing to resume in {out}: no checkpoint-N folder, and it holds more than")
    assert "(README.md, adapter_config.json, adapter_model.safetensors, ...)" in message
    assert message.endswith("; pick a new --out")
    with pytest.raises(UsageError, match="nothing to resume in .*: no such folder"):
        run(tmp_path / "missing", quick(), resume=True)


def tear(checkpoint, how: str) -> None:
    """What a kill or a full disk mid-save leaves: the Trainer writes trainer_state.json last."""
    state = checkpoint / "trainer_state.json"
    if how == "no state":
        state.unlink()
    else:
        state.write_text(state.read_text()[:40])  # cut mid-write


@pytest.mark.parametrize("how", ["no state", "torn state"])
def test_resume_skips_a_torn_last_checkpoint(tmp_path, capsys, how):
    out = tmp_path / "run"
    run(out, quick())
    whole = logged(out)
    kill_after_checkpoint_4(out)
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-8", dirs_exist_ok=True)
    tear(out / "checkpoint-8", how)
    capsys.readouterr()
    assert run(out, quick(), resume=True).steps == 8
    reason = "no trainer_state.json" if how == "no state" else "trainer_state.json is torn"
    note = f"halora: note: checkpoint-8 is incomplete ({reason}); resuming from checkpoint-4"
    assert note in capsys.readouterr().err.splitlines()
    log = logged(out)
    assert [r["step"] for r in log if "loss" in r] == [2, 4, 6, 8]
    assert [r["loss"] for r in log if "loss" in r] == pytest.approx([r["loss"] for r in whole if "loss" in r])
    assert (out / "checkpoint-8" / "trainer_state.json").is_file()  # saved again, whole


def test_resume_starts_over_when_no_checkpoint_is_complete(tmp_path, capsys):
    out = tmp_path / "run"
    run(out, quick(steps=4, save_steps=4))
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", SIDECAR):
        (out / name).unlink()
    tear(out / "checkpoint-4", "no state")
    capsys.readouterr()
    assert run(out, quick(steps=4, save_steps=4), resume=True).steps == 4
    note = "halora: note: checkpoint-4 is incomplete (no trainer_state.json); no complete checkpoint: "
    assert note + "the run starts over" in capsys.readouterr().err.splitlines()
    assert [r["step"] for r in logged(out) if "loss" in r] == [2, 4]
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()


def full_disk_at(monkeypatch, where: str, error: Exception) -> None:
    """`where` "checkpoint": the first torch.save into a checkpoint folder fails, as a full
    disk makes it (after the checkpoint's adapter is written); "adapter": the final
    adapter's safetensors write fails."""
    if where == "checkpoint":
        save = torch.save

        def failing_save(obj, path, *args, **kwargs):
            if "checkpoint-" in str(path):
                raise error
            return save(obj, path, *args, **kwargs)

        monkeypatch.setattr(torch, "save", failing_save)
    else:
        save_file = peft.peft_model.safe_save_file

        def failing_save_file(tensors, path, *args, **kwargs):
            if "checkpoint-" not in str(path):
                raise error
            return save_file(tensors, path, *args, **kwargs)

        monkeypatch.setattr(peft.peft_model, "safe_save_file", failing_save_file)


@pytest.mark.parametrize(
    "where, error, saving",
    [
        ("checkpoint", OSError(errno.ENOSPC, "No space left on device"), "checkpoint-4"),
        (
            "checkpoint",
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
            "checkpoint-4",
        ),
        (
            "adapter",
            SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
            "the adapter",
        ),
        ("adapter", OSError(errno.EROFS, "Read-only file system"), "the adapter"),
    ],
    ids=["ENOSPC in a checkpoint", "torch's zip writer", "safetensors' writer", "EROFS at the adapter"],
)
def test_a_full_disk_leaves_nothing_torn_and_resume_finishes(tmp_path, monkeypatch, where, error, saving):
    out = tmp_path / "run"
    settings = quick(steps=8, save_steps=4)
    with monkeypatch.context() as patched:
        full_disk_at(patched, where, error)
        with pytest.raises(UsageError) as refused:
            run(out, settings)
    assert str(refused.value) == (
        f"--out {out}: the disk is full (or read-only) while saving {saving}: "
        "free space and run the same command with --resume"
    )
    left = sorted(path.name for path in out.iterdir())
    if where == "checkpoint":
        assert left == sorted([LOG_FILE, RUN_SETTINGS])  # no torn checkpoint-4
    else:  # whole checkpoints, and no adapter: nothing that looks trained
        assert left == sorted(["checkpoint-4", "checkpoint-8", LOG_FILE, RUN_SETTINGS])
    result = run(out, settings, resume=True)
    assert result.steps == 8 and load_file(out / "adapter_model.safetensors")
    assert json.loads((out / SIDECAR).read_text())["training"]["steps"] == 8
    assert [r["step"] for r in logged(out) if "loss" in r] == [2, 4, 6, 8]


def test_cli_resume_restarts_and_refuses_changes(tmp_path, capsys):
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"prompt": e.prompt, "answer": e.answer} for e in examples()]))
    out = tmp_path / "out"
    out.mkdir()
    (out / LOG_FILE).write_text('{"step": 2, "loss": 9.0}\n')  # a run killed before its first checkpoint
    argv = ["train", "--model", "tiny", "--tasks", f"json:{data}", "--method", "lora", "--out", str(out)]
    argv += [
        "--steps",
        "4",
        "--save-steps",
        "2",
        "--logging-steps",
        "2",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "is not empty: add --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert "trained lora for 4 steps" in capsys.readouterr().out
    assert [r["step"] for r in logged(out) if "loss" in r] == [2, 4]
    assert main([*argv, "--resume", "--train-n", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "halora: error: --resume with changed settings: train_n 500 -> 16; "
        "resume with the same settings, or pick a new --out"
    ]


def test_sidecar_records_only_what_the_method_used(tmp_path):
    noise = ("train_noise", "redraw_every", "noise_seed", "noise_ramp_steps", "noise_targets")
    reg = ("mu", "reduction", "reg_scaled", "mu_warmup_steps")
    expected = {
        "lora": noise + reg + ("distill_weight",),
        "reg": noise + ("distill_weight",),
        "noisy": reg + ("distill_weight",),
    }
    for method, nulls in expected.items():
        run(tmp_path / method, quick(method, steps=1, save_steps=100, noise_seed=5))
        training = json.loads((tmp_path / method / SIDECAR).read_text())["training"]
        assert set(training) == {f.name for f in dataclasses.fields(TrainSettings)}  # every key kept
        assert {key for key, value in training.items() if value is None} == set(nulls), method
        assert training["method"] == method and training["steps"] == 1 and training["objective"] == "task"
    run(tmp_path / "distill", quick("noisy", steps=1, save_steps=100, objective="both", noise_seed=7))
    training = json.loads((tmp_path / "distill" / SIDECAR).read_text())["training"]
    assert training["distill_weight"] == 1.0 and training["noise_seed"] == 7 and training["mu"] is None
    run(tmp_path / "halora", quick("halora", steps=1, save_steps=100))
    training = json.loads((tmp_path / "halora" / SIDECAR).read_text())["training"]
    assert training["train_noise"] == "gaussian:sigma=0.02" and training["mu"] == 0.01
    assert training["noise_seed"] is None  # used, and unset: the derived seed is noise_seed_used
