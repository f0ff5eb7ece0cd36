"""The time axis of a sweep: chips aged after programming, with and without drift compensation.

The tiny random Llama and a small JSON task (as tests/test_sweep.py); the study and demo
wiring is checked with training and scoring replaced by fakes, so nothing here trains.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import halora.sweep as sweep_module
from halora.cim import rram_layers
from halora.cli import _parse, main
from halora.converters import Converters
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.lora import load_adapters
from halora.models import build_tiny, byte_tokenizer
from halora.noise import at_time
from halora.report import plot_sweep, summary_rows, write_results
from halora.sweep import BASE, COMP_SUFFIX, ChipGrid, SweepPlan, cell_key, run_sweep
from halora.tasks import load_tasks

DEVICE = "cmo:accept=0.2"  # time-dependent, no read noise: a chip's weights say everything
TIMES = ("1s", "1d")


@pytest.fixture
def setup(two_adapters):
    return two_adapters


def time_grid(compensate="both", chips=2, times=TIMES, **extra) -> ChipGrid:
    return ChipGrid(sigmas=(), times=times, time_noise=DEVICE, compensate=compensate, chips=chips, **extra)


def plan_for(grid: ChipGrid, tasks, adapters) -> SweepPlan:
    return SweepPlan(
        conditions=grid.conditions(),
        seeds=grid.seeds,
        adapters=((BASE, ""), *adapters),
        tasks=tuple(t.name for t in tasks),
        eval=EvalSettings(items=None),
        model="tiny",
    )


# --------------------------------------------------------------------------- conditions


def test_time_axis_conditions_and_keys():
    conditions = time_grid().conditions()
    assert [c.spec for c in conditions[:1]] == ["none"]
    aged = conditions[1:]
    assert [(c.t, c.compensate) for c in aged] == [
        (1.0, False),
        (1.0, True),
        (86400.0, False),
        (86400.0, True),
    ]
    assert [c.spec for c in aged] == [at_time(DEVICE, t) for t in ("1s", "1s", "1d", "1d")]
    assert all(c.noise == "cmo" for c in aged)
    # a plain condition keeps its spec as its key; a compensated one is told apart
    assert [c.key for c in aged] == [at_time(DEVICE, "1s"), at_time(DEVICE, "1s") + COMP_SUFFIX,
                                     at_time(DEVICE, "1d"), at_time(DEVICE, "1d") + COMP_SUFFIX]  # fmt: skip
    assert [c.compensate for c in time_grid("on").conditions()[1:]] == [True, True]
    assert [c.compensate for c in time_grid("off").conditions()[1:]] == [False, False]


def test_a_sweep_without_times_keeps_its_manifest_and_keys():
    """Folders written before the time axis resume: same manifest, same cell keys."""
    grid = ChipGrid(sigmas=(0.02,), noise_template="gaussian:sigma={sigma}", chips=1)
    plan = SweepPlan(grid.conditions(), grid.seeds, (("lora", "x"),), ("t",), EvalSettings(), "tiny")
    assert plan.manifest()["conditions"] == [
        {"spec": "none", "noise": "clean", "sigma": 0.0},
        {"spec": "gaussian:sigma=0.02,scale=tile,tile=64", "noise": "gaussian", "sigma": 0.02},
    ]
    assert [c.key for c in grid.conditions()] == [c.spec for c in grid.conditions()]
    assert (
        cell_key("lora", "t", grid.conditions()[1].key, 0)
        == "lora|t|gaussian:sigma=0.02,scale=tile,tile=64|0"
    )


def test_an_extra_spec_that_is_a_time_condition_is_scored_once():
    grid = time_grid("off", extra_noise=(at_time(DEVICE, "1d"),))
    keys = [c.key for c in grid.conditions()]
    assert len(keys) == len(set(keys)) == 3 and grid.conditions()[-1].t == 86400.0


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"times": ("1w",), "time_noise": "wan2022"}, "wan2022 is valid for t = "),
        ({"times": ("1s",), "time_noise": "gaussian:sigma=0.01"}, "no time-dependent part"),
        ({"times": ("10s",), "time_noise": "pcm"}, "pcm is valid for t = "),
        ({"times": ("soon",)}, "time 'soon' must be"),
        ({"compensate": "on"}, "there are none: give times too"),
        ({"times": ("1s",), "compensate": "always"}, "unknown value 'always'"),
    ],
)
def test_bad_time_axes_are_refused_when_the_grid_is_made(values, needle):
    with pytest.raises(UsageError, match=needle) as refused:
        ChipGrid(**values)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--times", "1s,1w", "--time-noise", "wan2022"], "wan2022 is valid for t = 1s, 1d, 2d only"),
        (["--compensate", "both"], "give times too"),
    ],
)
def test_cli_sweep_refuses_a_bad_time_in_one_line(flags, needle, tmp_path, capsys):
    assert main(["sweep", "--model", "tiny", "--base", "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "o" / "sweep.json").exists()  # refused before anything ran


# ------------------------------------------------------------------------------ the sweep


def test_time_sweep_cells_records_and_resume(setup, monkeypatch):
    tmp_path, folders, spec = setup
    tasks = load_tasks(spec)
    adapters = [("lora", folders[0]), ("halora", folders[1])]
    model = load_adapters(build_tiny(), adapters)
    layer_name, layer = next(iter(rram_layers(model).items()))
    clean = layer.weight.detach().clone()
    programmed: dict[tuple[str, int], torch.Tensor] = {}
    original_program = sweep_module._program

    def spy(chip, model_, condition, seed, placement):
        chip = original_program(chip, model_, condition, seed, placement)
        programmed[(condition.key, seed)] = layer.weight.detach().clone()
        return chip

    monkeypatch.setattr(sweep_module, "_program", spy)
    plan = plan_for(time_grid(), tasks, adapters)
    records = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "out")
    assert torch.equal(layer.weight, clean)  # restored after the sweep
    assert len(records) == 3 * (1 + 4 * 2)  # 3 methods x (clean + 2 times x 2 compensations x 2 chips)
    assert len({r["key"] for r in records}) == len(records)
    aged = [r for r in records if r["noise"] != "clean"]
    assert {(r["t"], r["compensate"]) for r in aged} == {
        (1.0, False),
        (1.0, True),
        (86400.0, False),
        (86400.0, True),
    }
    assert all(r["spec"].endswith(COMP_SUFFIX) == r["compensate"] for r in aged)
    assert all(("alpha_mean" in r) == r["compensate"] for r in aged)
    assert all(r["t"] is None and r["compensate"] is False for r in records if r["noise"] == "clean")
    late = [r for r in aged if r["t"] == 86400.0 and r["compensate"]]
    assert all(r["alpha_min"] <= r["alpha_mean"] <= r["alpha_max"] and r["alpha_mean"] != 1.0 for r in late)

    # one chip seed is one chip ageing: 1 s and 1 d differ but share the draws; seed 1 is another chip
    def error(key_time, seed, comp=""):
        return (programmed[(at_time(DEVICE, key_time) + comp, seed)] - clean).flatten()

    assert not torch.equal(error("1s", 0), error("1d", 0))
    same_chip = torch.corrcoef(torch.stack([error("1s", 0), error("1d", 0)]))[0, 1]
    other_chip = torch.corrcoef(torch.stack([error("1d", 0), error("1d", 1)]))[0, 1]
    assert same_chip > 0.8 and abs(other_chip) < 0.3
    # the compensated chip is the plain one scaled by its layer's alpha
    plain = programmed[(at_time(DEVICE, "1d"), 0)]
    compensated = programmed[(at_time(DEVICE, "1d") + COMP_SUFFIX, 0)]
    ratio = (compensated / plain)[plain.abs() > 1e-3]
    assert ratio.std() < 1e-3 and abs(ratio.mean() - 1) > 1e-3

    calls = []
    original = sweep_module.evaluate_task
    monkeypatch.setattr(sweep_module, "evaluate_task", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "out")
    assert calls == []  # resumed from the cache: nothing scored again
    strip = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert strip(again) == strip(records)

    write_results(tmp_path / "out", records, {"title": "t"})
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| lora | cmo t=1d (comp) | 2 |" in summary and "| lora | cmo t=1s | 2 |" in summary
    rows = [r for r in summary_rows(records, resamples=50) if r["method"] == "lora"]
    assert [r["condition"] for r in rows] == [
        "clean",
        "cmo t=1s",
        "cmo t=1s (comp)",
        "cmo t=1d",
        "cmo t=1d (comp)",
    ]


def test_cli_sweep_with_times_writes_the_time_plot(setup, capsys):
    tmp_path, folders, spec = setup
    out = tmp_path / "cli"
    adapters = f"lora={folders[0]},halora={folders[1]}"
    argv = ["sweep", "--model", "tiny", "--tasks", spec, "--adapters", adapters,
            "--sigmas", "0.02", "--chips", "1", "--times", "1s,1d", "--time-noise", DEVICE,
            "--compensate", "both", "--items", "9", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "| halora | cmo t=1d (comp) | 1 |" in captured.out
    assert "halora: note: cmo at t=86400 s is extrapolated" in captured.err  # 1 d: beyond its 1 h of data
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 2 * (1 + 1 + 4)  # clean, sigma 0.02, 2 times x 2 compensations
    assert {c.get("t") for c in results["meta"]["conditions"]} == {None, 1.0, 86400.0}
    assert results["meta"]["extrapolated"]
    assert (out / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"t", "compensate"} <= set(header)


def test_time_plot_lines_ticks_and_error_bars(tmp_path, monkeypatch):
    """Solid without, dashed with compensation, one colour per method; log-x ticked 1s .. 1w;
    error bars the 95 % bootstrap interval."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    records = fake_cells(time_grid(chips=3, times=("1s", "1h", "1w")), ["lora", "halora"], ["a"])
    written = plot_sweep(records, tmp_path)
    assert tmp_path / "accuracy_vs_time.png" in written
    axis = figures[-1].axes[0]
    assert axis.get_xscale() == "log"
    assert [t.get_text() for t in axis.get_xticklabels()] == ["1s", "1min", "1h", "1d", "1w"]
    bars = {container.get_label(): container for container in axis.containers}
    assert set(bars) == {"lora", "lora, compensated", "halora", "halora, compensated"}
    lines = {label: bar.lines[0] for label, bar in bars.items()}
    assert lines["lora"].get_linestyle() == "-" and lines["lora, compensated"].get_linestyle() == "--"
    assert lines["lora"].get_color() == lines["lora, compensated"].get_color() != lines["halora"].get_color()
    # at the times, nudged apart by a few % so equal points stay visible
    assert list(lines["lora"].get_xdata()) == pytest.approx([1.0, 3600.0, 604800.0], rel=0.2)
    assert lines["lora"].get_xdata()[0] != lines["lora, compensated"].get_xdata()[0]
    rows = summary_rows(records)
    row = next(r for r in rows if r["method"] == "lora" and r["t"] == 3600.0 and not r["compensate"])
    segment = bars["lora"].lines[2][0].get_segments()[1]  # the error bar at 1 h
    average = row["tasks"]["average"]
    assert segment[0][1] == pytest.approx(average["low"]) and segment[1][1] == pytest.approx(average["high"])


# -------------------------------------------------------------------------- study and demo


def fake_cells(grid: ChipGrid, methods, tasks, items=12) -> list[dict]:
    """Sweep records of `grid` as run_sweep writes them, with random per-item results."""
    rng = np.random.default_rng(0)
    plan = SweepPlan(
        grid.conditions(), grid.seeds, tuple((m, "") for m in methods), tuple(tasks), EvalSettings(), "x"
    )
    records = []
    for condition, seed in plan.chips():
        for method in methods:
            for task in tasks:
                bits = "".join(rng.choice(["0", "1"], size=items))
                records.append({
                    "key": cell_key(method, task, condition.key, seed), "method": method, "task": task,
                    "noise": condition.noise, "spec": condition.key, "sigma": condition.sigma, "seed": seed,
                    "t": condition.t, "compensate": condition.compensate, "items": bits, "n": items,
                    "accuracy": bits.count("1") / items,
                })  # fmt: skip
    return records


def fake_score(calls: list):
    """pipeline.score without a model: records the grid and converters it was given."""

    def score(model_name, tasks, adapters, grid, evaluation, out, converters=None):
        calls.append({"grid": grid, "converters": converters, "split": evaluation.split})
        records = fake_cells(grid, [label for label, _ in adapters], [t.name for t in tasks])
        plan = SweepPlan(grid.conditions(), grid.seeds, tuple(adapters), (), evaluation, "x", converters)
        return records, plan

    return score


STUDY = """
[study]
model = "tiny"
tasks = "json:{data}"
train_n = 4
select_sigmas = [0.05]
select_chips = 1
val_items = 4
train_seeds = 1
test_sigmas = [0.05]
saf = ""
test_chips = 2
test_items = 4
bootstrap = 50
times = ["1s", "1d"]
time_noise = "cmo:accept=0.2"
compensate = "both"

[study.converters]
adc_bits = 6

[[arm]]
method = "lora"

[[arm]]
method = "halora"
"""


def write_study(tmp_path) -> str:
    data = tmp_path / "parity.json"
    data.write_text(
        json.dumps([{"prompt": f"{a} is", "options": [" even", " odd"], "gold": a % 2} for a in range(20)])
    )
    path = tmp_path / "study.toml"
    path.write_text(STUDY.replace("{data}", str(data)))
    return str(path)


def test_study_reads_the_time_axis_and_converters_from_file_and_flags(tmp_path):
    from halora.commands.study import overrides, study_path
    from halora.study import load_study

    path = write_study(tmp_path)
    study = load_study(path)
    assert (study.times, study.compensate, study.converters) == (TIMES, "both", Converters(adc_bits=6))
    args = _parse(["study", "--study", path, "--out", "o", "--times", "1h", "--compensate", "on",
                   "--analog", "--adc-bits", "5", "--adc-range", "4"])  # fmt: skip
    study = load_study(study_path(args.study), overrides(args))
    assert (study.times, study.compensate) == (("1h",), "on")
    assert study.converters == Converters(adc_bits=5, adc_range=4.0)  # the flags replace the table
    with pytest.raises(UsageError, match="recal_steps = 2 with the analog forward"):
        load_study(path, {"recal_steps": 2})
    with pytest.raises(UsageError, match="wan2022 is valid for t"):
        load_study(path, {"time_noise": "wan2022", "times": ("1w",)})


def test_study_ages_the_test_chips_only_and_reports_the_times(tmp_path, monkeypatch):
    import halora.study.run as run_module
    from halora.study import load_study, run_study

    calls = []
    monkeypatch.setattr(run_module, "score", fake_score(calls))
    monkeypatch.setattr(
        run_module, "train_arm", lambda model, settings, rank, examples, folder, *a, **k: str(folder)
    )
    report = run_study(load_study(write_study(tmp_path)), tmp_path / "out", log=lambda line: None)
    selection, test = calls
    assert selection["split"] == "val" and all(c.t is None for c in selection["grid"].conditions())
    assert test["grid"].times == TIMES and test["grid"].compensate == "both"
    assert selection["converters"] == test["converters"] == Converters(adc_bits=6)
    assert report["time_axis"]["seconds"] == [1.0, 86400.0] and report["time_axis"]["compensate"] == "both"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["time_axis"]["times"] == ["1s", "1d"] and saved["study"]["times"] == ["1s", "1d"]
    rows = [r for r in saved["final"]["loglik"]["rows"] if r["t"] is not None]
    assert {(r["method"], r["t"], r["compensate"]) for r in rows} == {
        (m, t, c) for m in ("lora", "halora") for t in (1.0, 86400.0) for c in (False, True)
    }
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Time after programming (test chips)" in text and "without and with" in text
    assert "| halora (halora) | cmo t=1d (comp) |" in text and "6-bit ADC" in text
    assert (tmp_path / "out" / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_settings_and_flags_pass_the_time_axis_and_converters(tmp_path, monkeypatch):
    import halora.commands.demo as demo_command
    from halora.demo import DemoSettings, estimate_minutes, load_preset

    for name in ("full", "quick"):  # off in the presets: the budget holds
        preset = load_preset(name)
        assert (preset.times, preset.compensate, preset.converters) == ((), "off", None)
    seen = []
    monkeypatch.setattr(demo_command, "run_demo", lambda settings, out, progress: seen.append(settings))
    argv = ["demo", "--out", str(tmp_path / "d"), "--quick", "--times", "1s,1d", "--compensate", "both",
            "--time-noise", DEVICE, "--analog", "--adc-bits", "6"]  # fmt: skip
    assert main(argv) == 0
    (settings,) = seen
    assert settings.grid.times == TIMES and settings.grid.compensate == "both"
    assert settings.converters == Converters(adc_bits=6)
    assert len(settings.grid.conditions()) == 1 + 3 + 1 + 4  # clean, 3 sigmas, SAF, 2 x 2 time conditions
    assert estimate_minutes(settings, 4) > estimate_minutes(load_preset("quick"), 4) - 1  # priced
    with pytest.raises(UsageError, match="give times too"):
        DemoSettings(compensate="both")


def test_demo_runs_the_time_axis_through_the_analog_forward(tmp_path, monkeypatch):
    import halora.demo as demo_module
    from halora.demo import DemoSettings, run_demo

    calls = []
    monkeypatch.setattr(demo_module, "score", fake_score(calls))
    monkeypatch.setattr(
        demo_module, "train_arm", lambda model, settings, rank, examples, folder, *a: str(folder)
    )
    data = tmp_path / "parity.json"
    data.write_text(
        json.dumps([{"prompt": f"{a}", "options": [" e", " o"], "gold": a % 2} for a in range(20)])
    )
    settings = DemoSettings(
        model="tiny", tasks=f"json:{data}", train_n=4, items=4, sigmas=(0.02,), chips=2,
        times=TIMES, time_noise=DEVICE, compensate="both", converters=Converters(adc_bits=6),
    )  # fmt: skip
    logged = []
    summary = run_demo(settings, tmp_path / "demo", progress=False, log=logged.append)
    (call,) = calls  # recalibration is skipped under the analog forward
    assert call["converters"] == Converters(adc_bits=6) and call["grid"].times == TIMES
    assert any("recalibration skipped" in line for line in logged)
    assert "halora@cmo t=1d (comp)" in summary["table"]
    assert (tmp_path / "demo" / "accuracy_vs_time.png").is_file()
    assert "accuracy_vs_time.png" in logged[-1]
