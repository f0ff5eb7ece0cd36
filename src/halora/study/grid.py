"""The study's settings and its grid of arms, read from a TOML file.

[study]            StudySettings keys (model, tasks, chips, items, ...)
[study.base]       TrainSettings shared by every arm
[study.converters] (optional) the analog forward: Converters keys (adc_bits, ...); the
                   table, even empty, switches it on for every chip scored
[[arm]]            method = "..." plus TrainSettings keys; a list value is a grid axis,
                   expanded to every combination (noisy with noise = [a, b] -> 2 arms)
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from halora.converters import Converters
from halora.errors import UsageError
from halora.models import SMOLLM2
from halora.noise import parse_noise_spec
from halora.pipeline import Arm, converters_table
from halora.recalibrate import LOSSES
from halora.settings import build, check, key_names, normalise, read_toml, setting
from halora.sweep import COMPENSATE, TIME_NOISE, check_time_axis
from halora.train import TrainSettings

STUDY_FILE = "study file"


@dataclass(frozen=True)
class StudySettings:
    """The grid and the protocol. A TOML file sets these under [study] and lists [[arm]]s."""

    WHAT: ClassVar[str] = "study setting"

    model: str = setting(SMOLLM2, "model name or folder")
    tasks: str = setting("default", "task spec")
    train_n: int = setting(400, "training items per task", min=1)
    base: dict[str, Any] = setting(factory=dict, help="TrainSettings shared by every arm", flag=False)
    rank: int = setting(4, "LoRA rank (an arm may set its own)", min=1)
    arms: tuple[Arm, ...] = setting((), "the training recipes", flag=False)
    select_sigmas: tuple[float, ...] = setting((0.02,), "noise levels of the selection chips", min=0)
    select_chips: int = setting(2, "chip seeds per selection level", min=1, aliases=("select_seeds",))
    val_items: int = setting(40, "validation items per task (selection)", min=1, aliases=("val_n",))
    train_seeds: int = setting(3, "training seeds of the final comparison", min=1)
    test_sigmas: tuple[float, ...] = setting((0.005, 0.01, 0.02, 0.03), "test noise levels", min=0)
    saf: str = setting("saf:p0=0.01,p1=0.01", "the stuck-at-fault test condition ('' for none)")
    test_chips: int = setting(3, "chip seeds per test condition", min=1, aliases=("test_seeds",))
    test_items: int = setting(50, "test items per task", min=1, aliases=("test_n",))
    scorers: tuple[str, ...] = setting(
        ("loglik",),
        "scorers of the final comparison (add generate for exact answers)",
        choices=("loglik", "generate"),
    )
    baseline: str = setting("lora", "the arm family every method is compared with")
    # A model-calibrated level beside the absolute sigmas: the sigma at which the baseline
    # (seed 0) loses this many points on calibration chips; selection and test add it.
    calibrate_drop: float = setting(0.0, "target drop in points of the calibrated level (0: off)", min=0)
    calibrate_chips: int = setting(2, "calibration chips per probed sigma", min=1)
    bootstrap: int = setting(1000, "bootstrap resamples", min=10)
    # Per-chip recalibration (README, "Per-chip recalibration"): the seed-0 adapter of each
    # kept arm is tuned to every test chip of these levels (and the calibrated level), and
    # scored there and on the next chip, beside the same extra steps without a chip.
    recal_steps: int = setting(0, "recalibration steps per test chip (0: no recalibration)", min=0)
    recal_sigmas: tuple[float, ...] = setting((0.02, 0.03), "test levels recalibrated on", min=0)
    recal_calib_n: int = setting(128, "calibration items (train split) per recalibration", min=1)
    # distill: chosen over task and both on validation chips (README, "Per-chip recalibration")
    recal_loss: str = setting("distill", "recalibration loss: task, distill or both", choices=LOSSES)
    recal_from: tuple[str, ...] = setting((), "method families recalibrated (empty: every kept one)")
    # The twin correction (halora.twin): closed form, no labels, applied before the steps.
    recal_twin_rank: int = setting(0, "twin correction rank per RRAM layer (0: off)", min=0)

    @property
    def recalibrates(self) -> bool:
        return bool(self.recal_steps or self.recal_twin_rank)

    # The time axis (halora.sweep.ChipGrid), on the test chips only: selection stays on the
    # Gaussian levels, so the arms are chosen without looking at the times they are tested at.
    times: tuple[str, ...] = setting((), "test times after programming, e.g. 1s,1h,1d,1w,1mo")
    time_noise: str = setting(TIME_NOISE, "the time-dependent chip spec aged over times")
    compensate: str = setting(
        "off", "global drift compensation on the time conditions (both: with and without)", choices=COMPENSATE
    )
    # The analog forward on every chip scored (selection and test): --analog and its flags,
    # or a [study.converters] table; None is the digital forward.
    converters: Converters | None = setting(None, "DACs and ADCs on the RRAM layers (None: off)", flag=False)

    def __post_init__(self) -> None:
        check(self)
        check_time_axis(self.times, self.time_noise, self.compensate)
        self._check_analog()
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise UsageError(f"study arms need unique names, got {', '.join(names)}")
        if self.baseline not in {arm.group for arm in self.arms}:
            raise UsageError(f"the study needs a {self.baseline!r} arm: it is the baseline")

    def _check_analog(self) -> None:
        """The noise calibration and the recalibration sweep score without the analog forward:
        beside analog test cells their numbers would describe another chip."""
        if self.converters is None:
            return
        steps = (("calibrate_drop", self.calibrate_drop), ("recal_steps", self.recal_steps))
        for name, value in (*steps, ("recal_twin_rank", self.recal_twin_rank)):
            if value > 0:
                raise UsageError(
                    f"{name} = {value:g} with the analog forward: that step has no analog forward "
                    f"yet; set {name} = 0 or drop --analog"
                )

    def arm_named(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def rank_of(self, arm: Arm) -> int:
        return arm.rank or self.rank

    def describe(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=list))


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySettings:
    """A study from TOML: a [study] table of StudySettings keys and [[arm]] tables."""
    data = read_toml(path, STUDY_FILE)
    table = data.get("study", {})
    items = data.get("arm", [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise UsageError(f'{STUDY_FILE} {path}: arm must be [[arm]] tables, each with a method = "..."')
    arms = tuple(arm for item in items for arm in _arms(item, path))
    if not arms:
        raise UsageError(f"{STUDY_FILE} {path} lists no [[arm]] tables")
    where = f"{STUDY_FILE} {path} [study]"
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table")
    values = {**normalise(StudySettings, converters_table(table, where), where), **(overrides or {})}
    values["base"] = normalise(TrainSettings, values.get("base", {}), f"{where} base")
    return build(StudySettings, values, where, arms=arms)


def _arms(item: dict, path: str | Path) -> list[Arm]:
    """One [[arm]] table; list values are grid axes, expanded to every combination.
    (Tuple settings such as noise_targets are written as comma-separated strings.)"""
    names = key_names(TrainSettings)
    item = {names.get(key, key.replace("-", "_")): value for key, value in item.items()}
    if not isinstance(item.get("method"), str):
        raise UsageError(f'{STUDY_FILE} {path}: every [[arm]] needs a method = "..." (lora, halora, ...)')
    if "name" in item and not isinstance(item["name"], str):
        raise UsageError(f"{STUDY_FILE} {path}: an [[arm]]'s name must be a string, got {item['name']!r}")
    axes = {key: value for key, value in item.items() if isinstance(value, list)}
    fixed = {key: value for key, value in item.items() if key not in axes}
    arms = []
    for combo in itertools.product(*axes.values()):
        values = {**fixed, **dict(zip(axes, combo, strict=True))}
        suffix = "-".join(_axis_label(key, value) for key, value in zip(axes, combo, strict=True))
        name = "-".join(part for part in (values.pop("name", values["method"]), suffix) if part)
        arms.append(_arm(name, values, path))
    return arms


def _axis_label(key: str, value: Any) -> str:
    """A short, folder- and PEFT-safe label: noise specs by their sigma, no dots."""
    level = parse_noise_spec(value).level if key == "train_noise" else None
    if level is not None:
        text = f"s{level:g}"
    elif key == "train_noise":
        text = re.sub(r"[^A-Za-z0-9]+", "_", str(value))
    elif isinstance(value, float):
        text = f"{key}{value:g}"
    else:
        text = f"{key}{value}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", text.replace(".", "_").replace(",", "+"))


def _arm(name: str, values: dict, path: str | Path) -> Arm:
    if not re.fullmatch(r"[A-Za-z0-9_+-]+", name):
        raise UsageError(f"{STUDY_FILE} {path}: arm name {name!r} may only use letters, digits, _ + -")
    method, rank, family = values.pop("method"), values.pop("rank", None), values.pop("family", "")
    if rank is not None and not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
        raise UsageError(f"{STUDY_FILE} {path}: arm {name}: rank must be an integer >= 1, got {rank!r}")
    settings = normalise(TrainSettings, values, f"{STUDY_FILE} {path}: arm {name}")
    arm = Arm(name, method, settings, rank, family)
    arm.train_settings({})  # bad values fail now, not mid-study
    return arm
