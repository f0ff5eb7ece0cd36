"""Time after programming: one chip evaluated a second, a day, a week, a month after it was written.

The time-dependent device fits (``wan2022``, ``cmo``, ``cmo_read``, ``pcm``) take ``t``, the
seconds since programming; each declares the times its fit covers
(:attr:`~halora.noise.base.NoiseModel.time_range`). :func:`at_time` re-times a spec: it sets
``t`` on every time-dependent part of a chain and refuses a time outside any part's range, or a
spec with no time-dependent part. :func:`at_times` turns (spec, times) into the list of specs a
sweep runs; :func:`reference_model` gives the chip right after programming, the state drift
compensation calibrates against (:class:`halora.cim.Chip` ``compensate=True``).

One chip ageing. The same chip seed at different ``t`` is the same physical chip getting
older: every model draws the same numbers in the same order at every ``t`` (and every
strength), so the programming-noise draw is identical at all times and the time-dependent part
of each cell is driven by the same per-cell random numbers:

* ``cmo``: ``N1`` (programming) then ``N2`` (relaxation) per cell, both drawn at every ``t``
  (``t = 0`` included); the relaxation of a cell is its fixed ``N2`` scaled by the fit's std
  ``0.042 ln t + 0.41`` µS plus the common mean shift ``-0.089 ln t`` µS. A real cell does a
  random walk, whose increments between two times are partly independent; a fixed per-cell z
  is the simplest model that keeps a cell's deviation consistent in time, and it reproduces the
  fit's distribution at every single ``t`` exactly.
* ``pcm``: per device ``N1`` (programming), ``N2`` (drift exponent nu, drawn once as aihwkit
  draws it when programming: the drift of a device is deterministic in t) and ``N3`` (the 1/f
  noise accumulated since programming, a fixed z scaled by its std at ``t``, the same
  simplification).
* ``wan2022``: one z per device scaled by the fit's std at ``t``. The three fits (1 s, 1 d,
  2 d) are separate distributions of the deviation from target, so the 1 s fit stands for the
  programming error and later ones for the same deviation grown or shrunk.
* ``cmo_read`` and the other read models: redrawn at every forward pass from a generator
  seeded by (chip seed, layer), independent of ``t``, so pass k sees the same z at every ``t``
  (common random numbers: differences between times are not blurred by fresh read draws;
  physically reads at different times are independent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from halora.errors import UsageError
from halora.noise.base import (
    Chain,
    NoiseModel,
    TimeRange,
    format_duration,
    format_number,
    parse_duration,
)
from halora.noise.spec import NOISE_MODELS, parse_noise_spec

TIME_DEPENDENT = tuple(name for name, cls in NOISE_MODELS.items() if cls.time_range is not None)
"""Spec names of the registered models with a time key ``t``."""


def parse_time(value: float | str) -> float:
    """Seconds after programming from a number or a duration text (``86400``, ``1d``, ``1mo``)."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise UsageError(f"time {value!r} must be {exc}") from None
    return float(value)


def parse_times(text: str) -> list[float]:
    """Comma-separated durations, e.g. ``1s,1d,1w,1mo``, in seconds (what a ``--times`` flag takes)."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise UsageError(f"times {text!r} has an empty item; give durations like 1s,1d,1w,1mo")
    return [parse_time(item) for item in items]


def _parts(model: NoiseModel) -> tuple[NoiseModel, ...]:
    return model.models if isinstance(model, Chain) else (model,)


def _rebuild(parts: list[NoiseModel]) -> NoiseModel:
    return parts[0] if len(parts) == 1 else Chain(tuple(parts))


def is_time_dependent(model: NoiseModel | str) -> bool:
    """Whether any part of ``model`` (a model or a spec) has a time key ``t``."""
    model = parse_noise_spec(model) if isinstance(model, str) else model
    return any(part.time_range is not None for part in _parts(model))


def _check_time(part: NoiseModel, t: float, what: str) -> None:
    window: TimeRange = part.time_range  # type: ignore[assignment]
    if not window.accepts(t):
        raise UsageError(
            f"{what} at t={format_duration(t)}: {part.name} is valid for t = {window.describe()} "
            f"only ({window.source}); pick a time in that range"
        )


def retime(model: NoiseModel, t: float | str) -> NoiseModel:
    """``model`` with ``t`` set on every time-dependent part (see :func:`at_time`)."""
    seconds = parse_time(t)
    what = f"noise spec {model.spec()!r}"
    if not is_time_dependent(model):
        names = ", ".join(TIME_DEPENDENT)
        raise UsageError(
            f"{what} has no time-dependent part, so a time after programming changes nothing; "
            f"use one of {names} (e.g. cmo:t=1d)"
        )
    parts = []
    for part in _parts(model):
        if part.time_range is not None:
            _check_time(part, seconds, what)
            part = dataclasses.replace(part, t=seconds)  # type: ignore[type-var]
        parts.append(part)
    return _rebuild(parts)


def at_time(spec: str | NoiseModel, t: float | str) -> str:
    """The canonical spec of ``spec`` ``t`` after programming (seconds, or ``1d``, ``1w``, ``1mo``).

    Every time-dependent part of a chain gets the same ``t``; the others are kept as they are.
    Raises a one-line :class:`~halora.errors.UsageError` when ``t`` lies outside a part's
    :class:`~halora.noise.base.TimeRange` (``wan2022``: 1 s, 1 d, 2 d only; ``cmo``: 0 or
    1 s .. 10 years; ``cmo_read``: 1 s .. 10 years; ``pcm``: 20 s .. 10 years) or when the spec
    has no time-dependent part.

    >>> at_time("cmo:accept=0.2+cmo_read", "1w")
    'cmo:t=604800,accept=0.2,tile=64,gmin=9,gmax=88.2+cmo_read:t=604800,tile=64,gmin=9,gmax=88.2'
    """
    model = parse_noise_spec(spec) if isinstance(spec, str) else spec
    return retime(model, t).spec()


def at_times(spec: str | NoiseModel, times: Iterable[float | str] | str) -> list[str]:
    """One canonical spec per time, in the order given: the conditions of a sweep over time.

    ``times`` is a list of seconds or durations, or one comma-separated text (``"1s,1d,1w"``).
    Every time is checked before any spec is returned, so a bad one fails the whole list.
    """
    seconds = parse_times(times) if isinstance(times, str) else [parse_time(t) for t in times]
    if not seconds:
        raise UsageError("no times given; give durations like 1s,1d,1w,1mo")
    return [at_time(spec, t) for t in seconds]


def reference_model(model: NoiseModel) -> NoiseModel:
    """``model`` with each time-dependent part at its reference time, the chip right after
    programming (``wan2022`` 1 s, ``cmo`` 0, ``cmo_read`` 1 s, ``pcm`` t0 = 20 s); a model
    without one is returned as it is."""
    parts = [
        dataclasses.replace(part, t=part.time_range.reference)  # type: ignore[type-var]
        if part.time_range is not None
        else part
        for part in _parts(model)
    ]
    return _rebuild(parts)


def extrapolations(model: NoiseModel | str) -> list[str]:
    """One line per time-dependent part whose ``t`` lies beyond the data behind its fit
    (accepted, but an extrapolation); empty when every part is inside its measured span."""
    model = parse_noise_spec(model) if isinstance(model, str) else model
    notes = []
    for part in _parts(model):
        window = part.time_range
        if window is not None and window.extrapolated(part.t):  # type: ignore[attr-defined]
            low, high = (format_duration(x) for x in window.measured)
            span = low if window.measured[0] == window.measured[1] else f"{low} .. {high}"
            notes.append(
                f"{part.name} at t={format_number(part.t)} s is extrapolated: its data span {span}"  # type: ignore[attr-defined]
            )
    return notes
