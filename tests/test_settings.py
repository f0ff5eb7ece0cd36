"""The one settings system: checks, the TOML loader and the generated flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest

from halora.demo import load_preset
from halora.errors import UsageError
from halora.lora import LoraSettings
from halora.settings import add_flags, build, check, from_args, given_flags, load_toml, setting
from halora.sweep import ChipGrid
from halora.train import TrainSettings


@dataclass(frozen=True)
class Example:
    WHAT: ClassVar[str] = "example setting"

    count: int = setting(3, "how many", min=1, aliases=("n",))
    level: float = setting(0.5, "how much", min=0, max=1)
    names: tuple[str, ...] = setting(("a",), "which")
    specs: tuple[str, ...] = setting((), "specs with commas", repeat=True)
    mode: str = setting("x", "which mode", choices=("x", "y"))
    on: bool = setting(False, "switch")

    def __post_init__(self) -> None:
        check(self)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": 0}, "example setting count must be >= 1, got 0"),
        ({"level": 1.5}, "example setting level must be <= 1, got 1.5"),
        ({"level": float("inf")}, "must be a finite number"),
        ({"mode": "z"}, "example setting mode: unknown value 'z'; use one of x, y"),
        ({"count": "3"}, "example setting count must be an integer, got '3'"),
        ({"on": 1}, "example setting on must be true or false"),
    ],
)
def test_check_names_the_field_and_the_fix(values, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Example(**values)


def test_values_are_normalised():
    example = Example(level=1, names=["b", "c"])
    assert example.level == 1.0 and isinstance(example.level, float) and example.names == ("b", "c")


def test_toml_loader_names_the_file_and_key(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('[part]\nn = 4\nnames = "p,q"\nspecs = "saf:p0=0.1,p1=0.1"\n')
    loaded = load_toml(path, Example, table="part")
    assert loaded.count == 4 and loaded.names == ("p", "q") and loaded.specs == ("saf:p0=0.1,p1=0.1",)
    path.write_text("[part]\ncount = 2.5\n")
    with pytest.raises(UsageError, match=rf"config file {path} \[part\]: count must be an integer"):
        load_toml(path, Example, table="part")
    with pytest.raises(UsageError, match="unknown key colour"):
        build(Example, {"colour": 1}, "somewhere")


def test_flags_round_trip_with_aliases_and_preset_mode():
    parser = argparse.ArgumentParser()
    add_flags(parser, Example, "example")
    args = parser.parse_args(["--n", "5", "--names", "u,v", "--specs", "a,b", "--specs", "c", "--on"])
    assert from_args(args, Example) == Example(count=5, names=("u", "v"), specs=("a,b", "c"), on=True)
    preset_parser = argparse.ArgumentParser()
    add_flags(preset_parser, Example, "example", preset=True)
    assert given_flags(preset_parser.parse_args(["--level", "0.25"]), Example) == {"level": 0.25}


def test_the_alpha_rule_lives_in_lora_settings():
    assert LoraSettings(rank=8).alpha == 16.0 and LoraSettings(rank=8, alpha=4).alpha == 4.0


def test_chip_grid_conditions():
    grid = ChipGrid(sigmas=(0.01,), extra_noise=("saf:p0=0.01,p1=0.01",), chips=2)
    assert [c.noise for c in grid.conditions()] == ["clean", "gaussian", "saf"]
    assert [c.sigma for c in grid.conditions()] == [0.0, 0.01, None] and grid.seeds == (0, 1)


def test_demo_presets_hold_the_study_recipe_and_five_chips():
    full, quick = load_preset("full"), load_preset("quick")
    lora = full.recipe("lora")
    assert (lora.steps, lora.batch_size, lora.lr, lora.warmup_steps, lora.max_length) == (60, 8, 3e-3, 6, 96)
    assert (full.train_n, full.items, full.chips, full.sigmas) == (300, 16, 5, (0.005, 0.01, 0.02))
    halora = full.recipe("halora")
    assert (halora.redraw_every, halora.mu, halora.reduction) == (10, 0.1, "mean")
    assert halora.train_noise == "gaussian:sigma=0.02,scale=tile,tile=64"
    fast = quick.recipe("noisy")
    assert (fast.steps, fast.warmup_steps, fast.redraw_every, quick.train_n, quick.items, quick.chips) == (
        20,
        2,
        5,
        60,
        5,
        5,
    )
    assert TrainSettings().train_noise == halora.train_noise  # halora train's default is the demo's


def test_chip_sets_are_disjoint_by_construction():
    sets = {
        name: set(ChipGrid(chips=5, chip_set=name).seeds) for name in ("test", "validation", "calibration")
    }
    assert sets["test"] == {0, 1, 2, 3, 4}
    assert not (sets["test"] & sets["validation"] or sets["test"] & sets["calibration"])
    assert not sets["validation"] & sets["calibration"]
    with pytest.raises(UsageError, match="chips must be <="):
        ChipGrid(chips=200_000)


def test_the_demo_corrects_its_time_estimate_from_the_first_training():
    from halora.demo import _log_measured_speed

    said: list[str] = []
    _log_measured_speed(seconds=240.0, steps=60, estimate=12.0, log=said.append)  # 4 s per step
    assert said == [
        "this machine: 4.0 s per training step, 2.0x the estimate's 2.0 s; expect about 24 min in all"
    ]
    said.clear()
    _log_measured_speed(seconds=130.0, steps=60, estimate=12.0, log=said.append)  # within 25 %
    assert said == []
