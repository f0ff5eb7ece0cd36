"""The noise-model interface, composition, and the helpers every model shares.

:class:`NoiseModel` is the interface; :class:`Float32Model` is the base of every concrete
model (it handles dtypes, so a model only writes a float32 -> float32 function);
:class:`Chain` composes models and :func:`split_noise` separates a chip's programming part
from its read part. The helpers format and parse spec values and check parameters.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

import torch

from halora.errors import UsageError
from halora.noise.mapping import format_tile

# --------------------------------------------------------------------------------------
# Spec values: formatting, parsing and checks
# --------------------------------------------------------------------------------------


def format_number(x: float) -> str:
    """Shortest exact text for a float: ``86400`` rather than ``86400.0``; round-trips."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def format_value(value: Any) -> str:
    """A field's text in a spec: tiles as ``64``, ``32x64`` or ``full``, floats by :func:`format_number`."""
    if isinstance(value, tuple):  # a tile
        return format_tile(value)
    if isinstance(value, float):
        return format_number(value)
    return str(value)


# The parsers raise ValueError("<what was expected>"); NoiseModel._from_params words the error.


def parse_number(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ValueError("a number") from None
    if not math.isfinite(x):
        raise ValueError("a finite number")
    return x


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("an integer") from None


_DURATION_UNITS = {
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "mo": 30 * 86400.0,
    "y": 365 * 86400.0,
}
"""Seconds per unit of :func:`parse_duration`. A month is 30 days and a year 365 days (the
year of aihwkit's examples, ``3600 * 24 * 365``): round numbers a spec can round-trip."""

_DURATION = re.compile(r"\s*([0-9.eE+-]+)\s*(s|min|h|d|w|mo|y)?\s*")


def parse_duration(text: str) -> float:
    """Seconds, optionally with a unit: ``86400``, ``1d``, ``24h``, ``30min``, ``1s``, ``1w``,
    ``1mo`` (30 days), ``1y`` (365 days)."""
    match = _DURATION.fullmatch(text.lower())
    if match is None:
        raise ValueError(
            "a time in seconds, optionally with a unit s, min, h, d, w, mo (30 d) or y (365 d), e.g. 1d"
        )
    value = parse_number(match.group(1))
    return value * _DURATION_UNITS[match.group(2) or "s"]


def choice(*options: str) -> Callable[[str], str]:
    """A parser accepting one of ``options``, case-insensitively."""

    def parse(text: str) -> str:
        value = text.lower()
        if value not in options:
            raise ValueError("one of " + ", ".join(options))
        return value

    return parse


MAX_SIGMA = 10.0
"""The largest relative noise accepted: 10 = 1000 % of the reference (tile max or weight);
far past any chip, and past it float32 arithmetic on the weights loses meaning."""


def check_sigma(owner: str, key: str, value: Any) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0 <= value <= MAX_SIGMA:
        raise UsageError(f"{owner}: {key} must be a finite number in [0, {MAX_SIGMA:g}], got {value!r}")
    return value


def check_probability(owner: str, key: str, value: Any) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{owner}: {key} is a probability and must be in [0, 1], got {value!r}")
    return value


def check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight)
        raise ValueError(f"noise models take a 2-D [out, in] weight matrix, got {shape}")
    if not weight.is_floating_point():
        raise TypeError(f"noise models take a floating-point weight, got {weight.dtype}")


def check_strength(owner: str, value: Any) -> float:
    """A noise multiplier (a device fit's ``strength``): finite and >= 0."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{owner}: strength (noise multiplier) must be a finite number >= 0, got {value!r}")
    return value


# Draws are made on the generator's device (the CPU for every chip) and then moved to the
# weight's: the same generator state gives the same numbers whether the weight is on the CPU
# or a GPU, so a chip seed means one chip on every machine.


def _draw_device(weight: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else weight.device


def randn(weight: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal float32 draws of ``weight``'s shape, drawn as above, on ``weight``'s device."""
    device = _draw_device(weight, generator)
    draw = torch.randn(weight.shape, generator=generator, device=device, dtype=torch.float32)
    return draw.to(weight.device)


def rand(weight: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) float32 draws of ``weight``'s shape, drawn as above, on ``weight``'s device."""
    device = _draw_device(weight, generator)
    draw = torch.rand(weight.shape, generator=generator, device=device, dtype=torch.float32)
    return draw.to(weight.device)


# --------------------------------------------------------------------------------------
# Time after programming
# --------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit of :func:`parse_duration` that divides it: ``1d``, ``2w``,
    ``1mo``, ``90s``; for messages (specs keep plain seconds)."""
    for unit in ("y", "mo", "w", "d", "h", "min"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    return f"{format_number(seconds)}s" if seconds else "0"


@dataclass(frozen=True)
class TimeRange:
    """When (seconds after programming) a time-dependent fit may be evaluated, and on what data.

    A model with a time key ``t`` declares one as its class's :attr:`NoiseModel.time_range`;
    :func:`halora.noise.ageing.at_time` checks a time against it before re-timing a spec.
    """

    reference: float
    """The chip right after programming (the state drift compensation calibrates against)."""
    low: float
    """Earliest accepted time (besides ``t = 0`` when :attr:`zero` is set)."""
    high: float
    """Latest accepted time."""
    measured: tuple[float, float]
    """Times spanned by the data behind the fit; between :attr:`measured` and :attr:`high` the
    fit is extrapolated (:meth:`extrapolated`)."""
    source: str
    """Where the range comes from, for messages and docs."""
    fitted: tuple[float, ...] = ()
    """Non-empty: the fit exists at these times only (a separate fit per time)."""
    zero: bool = False
    """``t = 0`` (just programmed, no time-dependent part yet) is accepted too."""

    def accepts(self, t: float) -> bool:
        if self.fitted:
            return t in self.fitted
        return (self.zero and t == 0) or self.low <= t <= self.high

    def describe(self) -> str:
        """The accepted times in words: ``1s, 1d, 2d`` or ``0 or 1s .. 10y``."""
        if self.fitted:
            return ", ".join(format_duration(t) for t in self.fitted)
        span = f"{format_duration(self.low)} .. {format_duration(self.high)}"
        return f"0 or {span}" if self.zero else span

    def extrapolated(self, t: float) -> bool:
        """True when ``t`` lies beyond the measured data (accepted, but the fit's extrapolation)."""
        return t > self.measured[1] or (0 < t < self.measured[0])


# --------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------


_NO_DEFAULT = object()


class NoiseModel(ABC):
    """Turns a clean weight matrix into the weight a programmed chip computes with.

    ``per_read`` False: programming noise, drawn once per chip. True: read noise, re-drawn
    at every forward pass. Subclasses are frozen dataclasses whose fields are the spec keys.
    """

    per_read: ClassVar[bool] = False
    name: ClassVar[str] = ""
    """Registry name used in spec strings."""
    usage: ClassVar[str] = ""
    """Spec template with the defaults, for help text."""
    summary: ClassVar[str] = ""
    """One line for help text."""
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {}
    _REQUIRE_ONE_OF: ClassVar[tuple[str, ...]] = ()
    time_range: ClassVar[TimeRange | None] = None
    """Set on models with a time key ``t`` (seconds after programming): the times their fit
    covers. :mod:`halora.noise.ageing` re-times a spec through it."""

    _QUIET_DEFAULTS: ClassVar[dict[str, Any]] = {"split": "fixed"}
    """Keys left out of :meth:`spec` at these values: keys added after specs were recorded,
    so every spec written before them keeps its canonical text."""

    @abstractmethod
    def apply(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noisy copy of ``weight``.

        ``weight`` is 2-D ``[out_features, in_features]``, any float dtype, CPU or CUDA.
        Returns a new tensor of the same shape, dtype and device; computes in float32; all
        randomness comes from ``generator`` (chips use a CPU generator: draws are made on the
        generator's device and moved to ``weight.device``).
        """

    @property
    def level(self) -> float | None:
        """The model's sigma (what a sweep reports as the condition's sigma), or None.

        Only the sigma models have one. Stuck-at faults (probabilities) and the device fits
        (a multiplier of a fitted noise) have a magnitude that is not a sigma: None, though
        :meth:`scaled` multiplies it all the same.
        """
        return None

    def scaled(self, factor: float) -> NoiseModel:
        """This model with its magnitude times ``factor`` (the noise curriculum ramps it 0 -> 1).

        Returns itself for ``factor == 1``. A model without a magnitude refuses any other
        factor with a UsageError: a ramp over it would silently train at full strength.
        ``scaled(0)`` of a model that has one is the identity, bit for bit.
        """
        if factor == 1.0:
            return self
        raise UsageError(
            f"noise model {self.name!r} has no magnitude to scale (asked for x{factor:g}): the noise "
            "curriculum can only ramp models with a magnitude (a sigma, stuck-at probabilities or "
            "a device fit's scale); turn the ramp off (noise_ramp_steps=0) or use such a model"
        )

    def spec(self) -> str:
        """Canonical spec string, every key spelled out except defaults listed in
        ``_QUIET_DEFAULTS``: ``parse_noise_spec(m.spec()) == m``."""
        items = [
            f"{f.name}={format_value(getattr(self, f.name))}"
            for f in fields(self)  # type: ignore[arg-type]
            if self._QUIET_DEFAULTS.get(f.name, _NO_DEFAULT) != getattr(self, f.name)
        ]
        return self.name + (":" + ",".join(items) if items else "")

    def __str__(self) -> str:
        return self.spec()

    @classmethod
    def _from_params(cls, params: dict[str, str]) -> NoiseModel:
        """Build the model from parsed ``key -> text`` pairs (keys already checked)."""
        kwargs: dict[str, Any] = {}
        for key, text in params.items():
            try:
                kwargs[key] = cls._KEYS[key](text)
            except ValueError as exc:
                raise UsageError(f"{cls.name}: {key} must be {exc}, got {text!r}") from None
        missing = [
            f.name
            for f in fields(cls)  # type: ignore[arg-type]
            if f.default is MISSING and f.name not in kwargs
        ]
        if missing:
            need = ", ".join(f"{k}=..." for k in missing)
            raise UsageError(f"{cls.name} needs {need}; usage: {cls.usage}")
        if cls._REQUIRE_ONE_OF and not any(k in params for k in cls._REQUIRE_ONE_OF):
            need = " or ".join(f"{k}=..." for k in cls._REQUIRE_ONE_OF)
            raise UsageError(f"{cls.name} needs {need}; usage: {cls.usage}")
        return cls(**kwargs)


class Float32Model(NoiseModel):
    """A model written as a float32 -> float32 function; :meth:`apply` handles dtypes."""

    def apply(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_weight(weight)
        with torch.no_grad():
            w32 = weight.detach().float()
            out = w32.clone() if w32.numel() == 0 else self._apply_f32(w32, generator)
        return out.to(weight.dtype)

    @abstractmethod
    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``w`` is float32 2-D and must not be modified; return a new float32 tensor."""


@dataclass(frozen=True)
class NoNoise(Float32Model):
    """The identity: an ideal chip (spec ``none``, alias ``clean``). Returns a copy."""

    name: ClassVar[str] = "none"
    usage: ClassVar[str] = "none"
    summary: ClassVar[str] = "no noise: the clean weights (alias: clean)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {}

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return w.clone()


# --------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain(NoiseModel):
    """Several models applied in order (spec ``a+b``), in float32 throughout.

    Nested chains are flattened. ``per_read`` is True only when every component is a read
    model; a chain mixing both kinds should be split with :func:`split_noise`, which is
    how a chip is programmed (programming part once) and read (read part every pass).
    """

    models: tuple[NoiseModel, ...]

    name: ClassVar[str] = "chain"

    def __post_init__(self) -> None:
        flat: list[NoiseModel] = []
        for m in self.models:
            if isinstance(m, Chain):
                flat.extend(m.models)
            elif isinstance(m, NoiseModel):
                flat.append(m)
            else:
                raise TypeError(f"Chain takes NoiseModel instances, got {type(m).__name__}")
        if not flat:
            raise ValueError("Chain needs at least one model; use NoNoise() for the identity")
        object.__setattr__(self, "models", tuple(flat))

    @property
    def per_read(self) -> bool:  # type: ignore[override]
        return all(m.per_read for m in self.models)

    @property
    def level(self) -> float | None:
        """The :attr:`~NoiseModel.level` of the first component that has one, else None."""
        return next((m.level for m in self.models if m.level is not None), None)

    def scaled(self, factor: float) -> NoiseModel:
        """Every component scaled by ``factor`` (itself for ``factor == 1``); refused, as by
        :meth:`NoiseModel.scaled`, when a component has no magnitude."""
        if factor == 1.0:
            return self
        return Chain(tuple(m.scaled(factor) for m in self.models))

    def spec(self) -> str:
        return "+".join(m.spec() for m in self.models)

    def apply(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_weight(weight)
        with torch.no_grad():
            w = weight.detach().float()
            for m in self.models:
                if isinstance(m, Float32Model):
                    # Stay in float32 between stages: one rounding to the weight's dtype at the end.
                    w = m._apply_f32(w, generator) if w.numel() else w.clone()
                else:
                    w = m.apply(w, generator).float()
        return w.to(weight.dtype)


def _join(models: list[NoiseModel]) -> NoiseModel | None:
    if not models:
        return None
    return models[0] if len(models) == 1 else Chain(tuple(models))


def split_noise(model: NoiseModel) -> tuple[NoiseModel | None, NoiseModel | None]:
    """(programming part, read part) of ``model``.

    The ``per_read=False`` components and the ``per_read=True`` ones, each a single model or
    a :class:`Chain` in their original order, None when empty. Identity components
    (:class:`NoNoise`) are dropped, so ``split_noise(NoNoise()) == (None, None)``. The read
    part is meant to run after the programming part (reading happens after programming),
    whatever the order in the spec.
    """
    parts = model.models if isinstance(model, Chain) else (model,)
    parts = tuple(m for m in parts if not isinstance(m, NoNoise))
    programming = [m for m in parts if not m.per_read]
    read = [m for m in parts if m.per_read]
    return _join(programming), _join(read)
