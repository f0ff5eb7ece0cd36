import csv
import json

import pytest
import torch

import halora.sweep as sweep_module
from halora.cim import rram_layers
from halora.cli import main
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.lora import load_adapters
from halora.models import build_tiny, byte_tokenizer
from halora.report import recovery_ratio, summary_rows
from halora.sweep import BASE, Condition, SweepPlan, conditions_from, gather_records, run_sweep
from halora.tasks import load_tasks


@pytest.fixture
def setup(two_adapters):
    return two_adapters


def plan_for(tasks, adapters, seeds=2):
    return SweepPlan(
        conditions=tuple(conditions_from((0.01, 0.05), "gaussian:sigma={sigma}", ("saf:p0=0.02,p1=0.02",))),
        seeds=tuple(range(seeds)),
        adapters=((BASE, ""), *adapters),
        tasks=tuple(t.name for t in tasks),
        eval=EvalSettings(items=None),
        model="tiny",
    )


def model_with(folders):
    adapters = [("lora", folders[0]), ("halora", folders[1])]
    return load_adapters(build_tiny(), adapters), adapters


def test_conditions():
    conditions = conditions_from(
        (0.005, 0.02), "gaussian:sigma={sigma},scale=tile,tile=64", ("saf:p0=0.01,p1=0.01",)
    )
    assert conditions[0] == Condition("none", "clean", 0.0)
    assert [c.sigma for c in conditions] == [0.0, 0.005, 0.02, None]
    assert [c.noise for c in conditions] == ["clean", "gaussian", "gaussian", "saf"]
    with pytest.raises(UsageError, match="placeholder"):
        conditions_from((0.01,), "gaussian:sigma=0.01", ())


def test_every_adapter_sees_the_same_chip_and_cells_are_complete(setup, monkeypatch):
    tmp_path, folders, spec = setup
    tasks = load_tasks(spec)
    model, adapters = model_with(folders)
    seen: dict[tuple, set] = {}
    original = sweep_module.evaluate_task
    weight = next(iter(rram_layers(model).values())).weight

    def spy(model_, tokenizer, task, settings, examples):
        chip = float(weight.double().sum())  # identifies the programmed chip
        seen.setdefault(chip, set()).add(model_.active_adapter)
        return original(model_, tokenizer, task, settings, examples)

    monkeypatch.setattr(sweep_module, "evaluate_task", spy)
    plan = plan_for(tasks, adapters)
    clean = weight.detach().clone()
    records = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "out")
    assert torch.equal(weight, clean)  # the sweep leaves the clean model behind
    assert len(records) == 3 * (1 + 3 * 2)  # 3 methods x (clean + 3 conditions x 2 seeds)
    assert len(seen) == 1 + 3 * 2  # one distinct chip per (condition, seed) ...
    assert all(adapters_seen == {"lora", "halora"} for adapters_seen in seen.values())  # ... shared
    cells = {(r["method"], r["spec"], r["seed"], r["task"]) for r in records}
    assert len(cells) == len(records)


def test_interrupted_sweep_resumes_with_the_same_results(setup, monkeypatch):
    tmp_path, folders, spec = setup
    tasks = load_tasks(spec)
    model, adapters = model_with(folders)
    plan = plan_for(tasks, adapters)
    first = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "whole")
    cache = tmp_path / "whole" / "cells-rank0.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:8]) + "\n" + lines[8][:20])  # killed mid-write
    calls = []
    original = sweep_module.evaluate_task
    monkeypatch.setattr(sweep_module, "evaluate_task", lambda *a, **k: calls.append(1) or original(*a, **k))
    second = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "whole")
    assert len(calls) == len(lines) - 8
    strip = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert strip(first) == strip(second)
    other = plan_for(tasks, adapters, seeds=3)
    with pytest.raises(UsageError, match="different sweep"):
        run_sweep(model, byte_tokenizer(), tasks, other, tmp_path / "whole")


def test_ranks_split_the_chips_and_gather_equals_one_process(setup):
    tmp_path, folders, spec = setup
    tasks = load_tasks(spec)
    model, adapters = model_with(folders)
    plan = plan_for(tasks, adapters)
    single = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "one")
    part0 = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "two", rank=0, world=2)
    part1 = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "two", rank=1, world=2)
    assert part0 and part1 and len(part0) + len(part1) == len(single)
    strip = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert strip(gather_records(tmp_path / "two")) == strip(single)


def test_cli_sweep_writes_every_output(setup, capsys):
    tmp_path, folders, spec = setup
    out = tmp_path / "cli"
    argv = [
        "sweep",
        "--model",
        "tiny",
        "--tasks",
        spec,
        "--adapters",
        f"lora={folders[0]},halora={folders[1]}",
        "--sigmas",
        "0.02",
        "--chips",
        "2",
        "--extra-noise",
        "saf:p0=0.01,p1=0.01",
        "--items",
        "9",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"method", "task", "noise", "sigma", "seed", "accuracy", "n"} <= set(results["runs"][0])
    clean = [r for r in results["runs"] if r["noise"] == "clean"]
    assert clean and all(r["sigma"] == 0 for r in clean)
    assert len(results["runs"]) == 2 * (1 + 2 * 2)
    with (out / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(results["runs"])
    summary = (out / "summary.md").read_text()
    assert "| halora | sigma=0.02 | 2 |" in summary
    for plot in ("accuracy_vs_sigma.png", "per_task.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--adapters", "lora"], "LABEL=FOLDER"),
        (["--adapters", "lora=/no/such/dir"], "no adapter_config.json"),
        (["--adapters", "a=x,a=y"], "unique"),
        ([], "nothing to evaluate"),
        (["--base", "--noise-template", "gaussian:sigma=0.1"], "placeholder"),
    ],
)
def test_cli_sweep_bad_input(argv, message, tmp_path, capsys):
    assert main(["sweep", "--model", "tiny", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_recovery_ratio():
    def row(method, condition, mean):
        return {"method": method, "condition": condition, "tasks": {"average": {"mean": mean, "std": 0.0}}}

    rows = [row("lora", "clean", 60), row("lora", "sigma=0.02", 40), row("halora", "sigma=0.02", 55)]
    assert recovery_ratio(rows, "sigma=0.02") == pytest.approx(0.75)
    assert recovery_ratio(rows, "sigma=0.01") is None
    assert summary_rows([]) == []


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(setup, monkeypatch):
    import os
    import socket

    tmp_path, folders, spec = setup
    tasks = load_tasks(spec)
    model, adapters = model_with(folders)
    plan = plan_for(tasks, adapters, seeds=1)
    out = tmp_path / "locked"
    out.mkdir()
    lock = out / "cells-rank0.lock"
    host = socket.gethostname()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host}))  # a live process
    with pytest.raises(UsageError) as refused:
        run_sweep(model, byte_tokenizer(), tasks, plan, out)
    assert str(refused.value) == (
        f"{out} is being written by pid {os.getppid()} on {host} (lock file {lock}): "
        "wait for it, or delete the lock if that process is gone"
    )
    assert not (out / "cells-rank0.jsonl").exists()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": "another-host"}))  # cannot be checked
    with pytest.raises(UsageError, match="being written by pid .* on another-host"):
        run_sweep(model, byte_tokenizer(), tasks, plan, out)
    monkeypatch.setattr(sweep_module, "_pid_alive", lambda pid: False)
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host}))  # its process is gone
    records = run_sweep(model, byte_tokenizer(), tasks, plan, out)
    assert len(records) == 3 * (1 + 3)
    assert not lock.exists()  # released


def test_the_lock_is_released_when_the_sweep_fails(setup, monkeypatch):
    tmp_path, folders, spec = setup
    tasks = load_tasks(spec)
    model, adapters = model_with(folders)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sweep_module, "evaluate_task", broken)
    with pytest.raises(RuntimeError):
        run_sweep(model, byte_tokenizer(), tasks, plan_for(tasks, adapters), tmp_path / "fails")
    assert not (tmp_path / "fails" / "cells-rank0.lock").exists()


def test_a_torn_line_is_reported_and_its_cell_recomputed(setup, capsys):
    tmp_path, folders, spec = setup
    tasks = load_tasks(spec)
    model, adapters = model_with(folders)
    plan = plan_for(tasks, adapters, seeds=1)
    first = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "torn")
    cache = tmp_path / "torn" / "cells-rank0.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])  # killed mid-write, no newline
    capsys.readouterr()
    second = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "torn")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"halora: warning: {cache}: 1 torn line(s) (a kill mid-write); their cells are computed again"
    ]
    strip = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert strip(first) == strip(second)
    assert strip(gather_records(tmp_path / "torn")) == strip(first)  # every line of the file parses
    assert all(json.loads(line) for line in cache.read_text().splitlines())


def test_the_main_rank_waits_for_the_others_and_reports_a_rank_that_stopped(setup):
    from halora.sweep import wait_for_ranks

    tmp_path, folders, spec = setup
    tasks = load_tasks(spec)
    model, adapters = model_with(folders)
    plan = plan_for(tasks, adapters, seeds=1)
    out = tmp_path / "ranks"
    run_sweep(model, byte_tokenizer(), tasks, plan, out, rank=0, world=2)
    with pytest.raises(UsageError, match=r"rank\(s\) 1 stopped before finishing their share"):
        wait_for_ranks(out, plan, world=2, poll_s=0.01, grace_s=0.0)
    run_sweep(model, byte_tokenizer(), tasks, plan, out, rank=1, world=2)
    assert len(wait_for_ranks(out, plan, world=2, grace_s=0.0)) == 3 * (1 + 3)
