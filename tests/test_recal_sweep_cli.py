"""`halora sweep --recal-steps N`: per-chip recalibration as an axis of the sweep (tiny model)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from test_commands import mc_tasks

import halora.recal_sweep as recal_module
import halora.sweep as sweep_module
from halora.cim import Placement
from halora.cli import main
from halora.evaluate import EvalSettings
from halora.lora import LoraSettings, attach_lora, load_trainable
from halora.models import build_tiny, byte_tokenizer
from halora.recal_sweep import RecalRunner, adapter_state
from halora.recalibrate import RecalSettings
from halora.sweep import Condition
from halora.tasks import load_tasks

TEMPLATE = "gaussian:sigma={sigma}"
HIGH = Condition.of(TEMPLATE.format(sigma=0.1)).spec  # the grid's highest level: recalibrated
LOW = Condition.of(TEMPLATE.format(sigma=0.02)).spec
ITEMS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """Two random adapters (B drawn, so each differs from the base) and a parity task."""
    root = tmp_path_factory.mktemp("recal-sweep")
    folders = {}
    for seed, label in ((1, "lora"), (2, "halora")):
        torch.manual_seed(seed)
        model = attach_lora(build_tiny(), LoraSettings(rank=2, dropout=0.0))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.5)
        model.save_pretrained(root / label)
        folders[label] = str(root / label)
    return root, folders, mc_tasks(root)


def sweep_argv(out: Path, folders: dict[str, str], tasks: str, *extra: str) -> list[str]:
    adapters = ",".join(f"{label}={folder}" for label, folder in folders.items())
    return ["sweep", "--model", "tiny", "--tasks", tasks, "--adapters", adapters,
            "--noise-template", TEMPLATE, "--sigmas", "0.02,0.1", "--chips", "2",
            "--items", str(ITEMS), "--out", str(out), *extra]  # fmt: skip


RECAL = ("--recal-steps", "2", "--recal-calib-n", "8", "--recal-lr", "0.05")


@pytest.fixture(scope="module")
def recal_run(setup) -> tuple[list[str], Path]:
    """One sweep with recalibration, shared by the tests that read it."""
    root, folders, tasks = setup
    out = root / "recal-out"
    argv = sweep_argv(out, folders, tasks, *RECAL)
    assert main(argv) == 0
    return argv, out


def cells(runs: list[dict], method: str) -> set[tuple]:
    return {(r["spec"], r["seed"], r.get("tuned_on")) for r in runs if r["method"] == method}


def test_recal_sweep_scores_own_chip_other_chip_and_equal_compute(setup, recal_run):
    _, folders, _ = setup
    _, out = recal_run
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    for label in folders:
        # each chip of the highest level gets its own tuned adapter, scored there and on the other
        assert cells(runs, f"{label}+recal") == {(HIGH, 0, 0), (HIGH, 1, 1)}
        assert cells(runs, f"{label}+recal@other") == {(HIGH, 1, 0), (HIGH, 0, 1)}
        assert cells(runs, f"{label}+steps") == {("none", 0, None), (HIGH, 0, None), (HIGH, 1, None)}
        # the sweep's own cells, every level, each once: the sources are not scored again
        assert {(s, c) for s, c, _ in cells(runs, label)} == {
            ("none", 0),
            (LOW, 0),
            (LOW, 1),
            (HIGH, 0),
            (HIGH, 1),
        }
    assert len({r["key"] for r in runs}) == len(runs)
    assert len((out / "results.csv").read_text().splitlines()) == len(runs) + 1

    table = results["recalibration"]
    assert table["baseline"] == "lora" and table["settings"]["steps"] == 2
    assert table["specs"] == [HIGH] and table["seeds"] == [0, 1]
    rows = {row["method"]: row for row in table["rows"]}
    suffixes = ("", "+steps", "+recal", "+recal@other")
    assert set(rows) == {label + suffix for label in folders for suffix in suffixes}
    assert all(row["spec"] == HIGH and len(row["ci95"]) == 2 for row in rows.values())
    assert rows["lora"]["recovery"] is None and rows["halora+recal"]["recovery"] is not None
    assert set(table["own_minus_other"]) == {f"{label} | {HIGH}" for label in folders}
    summary = (out / "summary.md").read_text()
    assert "## Per-chip recalibration (test chips)" in summary and "| halora+recal@other |" in summary

    # every tuned adapter is kept, and recalibration changed it
    states = sorted(path.parent.name for path in (out / "recal" / "states").glob("*/final.pt"))
    assert len(states) == 2 * 3  # per source: two chips and the equal-compute run
    source = adapter_state(folders["lora"])
    tuned = torch.load(next((out / "recal" / "states").glob("lora_gaussian*_0/final.pt")))
    assert any(not torch.equal(tuned[name], source[name]) for name in source)


def test_recalibration_tunes_and_scores_on_the_sweeps_own_chips(setup, tmp_path, monkeypatch):
    """Under a non-default placement too, the recalibration programs the sweep's chips: every
    chip it scores on has that placement, the runner scores the source as the sweep did, item
    for item, and tunes the adapter the command kept, tensor for tensor (and another one
    under the default placement)."""
    _, folders, tasks = setup
    placed = []
    original = recal_module.program_chip

    def spy(model, noise, seed, placement=Placement(), *rest, **options):
        placed.append(placement)
        return original(model, noise, seed, placement, *rest, **options)

    monkeypatch.setattr(recal_module, "program_chip", spy)
    out = tmp_path / "placed"
    argv = sweep_argv(
        out, folders, tasks, *RECAL, "--recal-from", "halora", "--rram-targets", "q_proj,k_proj"
    )
    assert main(argv) == 0
    placement = Placement(rram_targets=("q_proj", "k_proj"))
    assert placed and set(placed) == {placement}
    assert json.loads((out / "recal" / "recal.json").read_text())["placement"]["rram_targets"] == [
        "q_proj",
        "k_proj",
    ]

    model = load_trainable(build_tiny(), folders["halora"])
    source = partial(adapter_state, folders["halora"])
    evaluation, task_list = EvalSettings(items=ITEMS), load_tasks(tasks)
    runner = RecalRunner(model, byte_tokenizer(), task_list, evaluation, tmp_path / "mine", placement)
    for seed in (0, 1):
        runner.score("halora", HIGH, seed, source)
    mine = {r["key"]: r["items"] for r in runner.cache.records.values()}
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert mine == {r["key"]: r["items"] for r in runs if r["method"] == "halora" and r["spec"] == HIGH}

    kept = torch.load(next((out / "recal" / "states").glob("halora_gaussian*_0/final.pt")))
    settings = RecalSettings(steps=2, calib_n=8, lr=0.05)
    for chosen, same in ((placement, True), (Placement(), False)):
        runner = RecalRunner(model, byte_tokenizer(), task_list, evaluation, tmp_path / str(same), chosen)
        tuned = runner.tuned(source, "again", HIGH, 0, settings, log=lambda _: None, teacher="halora")()
        assert all(torch.allclose(tuned[name], kept[name], atol=1e-6) for name in kept) == same


def test_a_rerun_resumes_without_scoring_or_tuning(recal_run, monkeypatch, capsys):
    argv, out = recal_run
    before = json.loads((out / "results.json").read_text())
    calls = []

    def count(name, original):
        return lambda *a, **k: calls.append(name) or original(*a, **k)

    monkeypatch.setattr(sweep_module, "evaluate_task", count("sweep", sweep_module.evaluate_task))
    monkeypatch.setattr(recal_module, "evaluate_task", count("recal", recal_module.evaluate_task))
    monkeypatch.setattr(recal_module, "recalibrate", count("tune", recal_module.recalibrate))
    assert main(argv) == 0
    assert calls == []
    after = json.loads((out / "results.json").read_text())
    assert after["runs"] == before["runs"] and after["recalibration"] == before["recalibration"]
    # other recalibration settings would reuse adapters tuned with these: refused
    capsys.readouterr()
    assert main([*argv, "--recal-loss", "task"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and calls == []


@pytest.mark.parametrize(
    "extra, adapters, message",
    [
        (
            ["--recal-loss", "task", "--recal-sigmas", "0.1"],
            True,
            "--recal-loss, --recal-sigmas without --recal-steps",
        ),
        (["--recal-steps", "0", "--recal-calib-n", "8"], True, "--recal-calib-n without --recal-steps"),
        ([*RECAL, "--recal-from", "lora,nope"], True, "--recal-from nope: not in --adapters"),
        ([*RECAL, "--recal-from", "base", "--base"], True, "no adapter"),
        ([*RECAL, "--base"], False, "no adapter"),
        ([*RECAL, "--analog"], True, "no analog forward"),
        ([*RECAL, "--recal-sigmas", "0.05"], True, "--recal-sigmas 0.05: not a level of --sigmas"),
    ],
)
def test_recal_flags_are_refused_in_one_line(setup, tmp_path, capsys, extra, adapters, message):
    _, folders, tasks = setup
    out = tmp_path / "refused"
    assert main(sweep_argv(out, folders if adapters else {}, tasks, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not list(out.glob("cells*.jsonl"))  # refused before the sweep ran


def test_recal_steps_zero_leaves_the_sweep_as_it_was(setup, tmp_path):
    _, folders, tasks = setup
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    assert main(sweep_argv(plain, folders, tasks)) == 0
    assert main(sweep_argv(zero, folders, tasks, "--recal-steps", "0")) == 0
    assert sorted(p.name for p in zero.iterdir()) == sorted(p.name for p in plain.iterdir())
    assert not (zero / "recal").exists()
    # and both are the sweep as it was before the axis: nothing about recalibration anywhere
    assert set(json.loads((zero / "results.json").read_text())) == {"meta", "runs", "summary"}
    for name in ("results.json", "summary.md", "sweep.json"):
        text = (zero / name).read_text().lower()
        assert "recalibration" not in text and "+recal" not in text, name
    for name in ("results.json", "results.csv", "summary.md", "sweep.json", "cells-rank0.jsonl"):
        assert (zero / name).read_text() == (plain / name).read_text(), name


def test_a_twin_only_recalibration_has_no_equal_compute_steps_and_widens_the_adapter(setup, tmp_path):
    _, folders, tasks = setup
    out = tmp_path / "twin"
    argv = sweep_argv(
        out, folders, tasks, "--recal-twin-rank", "3", "--recal-calib-n", "8", "--recal-from", "lora"
    )
    assert main(argv) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert cells(runs, "lora+recal") == {(HIGH, 0, 0), (HIGH, 1, 1)}
    assert not cells(runs, "lora+steps")  # no gradient step, so no equal-compute baseline
    recorded = [json.loads(line) for line in (out / "recal" / "runs.jsonl").read_text().splitlines()]
    assert all(run["steps"] == 0 and 0 < run["twin_error_removed"] <= 1 for run in recorded)
    tuned = torch.load(next((out / "recal" / "states").glob("lora_gaussian*_0/final.pt")))
    source = adapter_state(folders["lora"])
    widened = [name for name in source if tuned[name].shape != source[name].shape]
    assert widened and all(tuned[name].numel() > source[name].numel() for name in widened)
