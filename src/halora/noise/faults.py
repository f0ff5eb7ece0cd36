"""Digital non-idealities of the differential-pair mapping: stuck-at faults and quantization.

Both act on the conductances of :class:`~halora.noise.mapping.DifferentialPair` but are
computed in weight units: the mapping is linear per tile, so a device stuck at ``g_min`` or
``g_max`` and uniformly spaced conductance states have exact weight-domain images (0,
``+-max|W_tile|``, uniform levels), with no rounding through µS.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from halora.errors import UsageError
from halora.noise.base import (
    Float32Model,
    NoiseModel,
    check_probability,
    choice,
    format_value,
    parse_int,
    parse_number,
    rand,
)
from halora.noise.mapping import (
    DEFAULT_SPLIT,
    DEFAULT_TILE,
    SPLITS,
    DifferentialPair,
    Tile,
    as_split,
    as_tile,
    nonzero_or_one,
    parse_tile,
)


def _normalised_pair(tile: Tile, split: str) -> DifferentialPair:
    """The pair in units of g_max: faults and levels are fractions of the range, not µS."""
    return DifferentialPair(tile, gmin=0.0, gmax=1.0, split=split)


@dataclass(frozen=True)
class StuckAtFaults(Float32Model):
    """Stuck-at faults of each device of the differential pair: SA0 with ``p0``, SA1 with ``p1``.

    Differential mapping (:attr:`mapping`): ``W = (g+ - g-) / s`` with
    ``s = (g_max - g_min) / max|W_tile|``; the active device (``g+`` for ``W > 0``, ``g-``
    for ``W < 0``) holds ``g_min + |W| s`` and the idle one sits at ``g_min``. Each of the two
    devices independently is SA0 (stuck at ``g_min``) with probability ``p0``, SA1 (stuck at
    ``g_max``) with probability ``p1``, else healthy; ``p0`` and ``p1`` are per device, and
    SA0 and SA1 of one device are exclusive (``p0 + p1 <= 1``). RRAM test chips report up to
    ~10 % faulty cells; HaLoRA evaluates SAF on Qwen2.5-0.5B.

    In weight units (the mapping is linear per tile, so the images are exact), with
    ``r = max|W_tile|``: a healthy ``g+`` holds ``max(W, 0)``, a healthy ``g-`` holds
    ``max(-W, 0)``, SA0 holds 0, SA1 holds ``r``, and ``W' = held(g+) - held(g-)``.
    For ``W > 0`` (mirrored for ``W < 0``):

    * active SA0: ``W' = 0``; active SA1: ``W' = r``;
    * idle SA1: ``W' = W - sign(W) r``, a near sign flip and the most damaging fault;
    * idle SA0: no change (the idle device already reads ``g_min``);
    * both SA1: 0; active SA0 and idle SA1: ``-r``.

    A zero weight has both devices at ``g_min``: SA1 on ``g+`` gives ``+r``, on ``g-`` ``-r``.
    The expected fraction of weights with at least one faulty device is
    ``1 - (1 - p0 - p1)^2`` (about ``2 (p0 + p1)`` for small rates); the fraction whose value
    changes is ``1 - (1 - p0 - p1)(1 - p1)`` for ``0 < |W| < r``, since idle SA0 is harmless.

    Draws: one uniform per device, all of ``g+`` then all of ``g-``; ``u < p0`` is SA0,
    ``p0 <= u < p0 + p1`` SA1. :attr:`level` is None (probabilities, not a sigma);
    :meth:`scaled` multiplies ``p0`` and ``p1``. Tiles default to 64x64; edge tiles use their
    real elements.
    """

    p0: float = 0.0
    p1: float = 0.0
    tile: Tile = DEFAULT_TILE
    split: str = DEFAULT_SPLIT

    name: ClassVar[str] = "saf"
    usage: ClassVar[str] = "saf:p0=P,p1=P,tile=64|full,split=fixed|even"
    summary: ClassVar[str] = "stuck-at faults per device of the pair: SA0 at g_min, SA1 at g_max"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "p0": parse_number,
        "p1": parse_number,
        "tile": parse_tile,
        "split": choice(*SPLITS),
    }
    _REQUIRE_ONE_OF: ClassVar[tuple[str, ...]] = ("p0", "p1")

    def __post_init__(self) -> None:
        p0 = check_probability(self.name, "p0", self.p0)
        p1 = check_probability(self.name, "p1", self.p1)
        if p0 + p1 > 1.0:
            raise UsageError(
                f"{self.name}: p0 + p1 must be <= 1 (SA0 and SA1 are exclusive), got {p0!r} + {p1!r}"
            )
        object.__setattr__(self, "p0", p0)
        object.__setattr__(self, "p1", p1)
        object.__setattr__(self, "tile", as_tile(self.tile, self.name))
        object.__setattr__(self, "split", as_split(self.split, self.name))

    @property
    def mapping(self) -> DifferentialPair:
        """The differential pair the cells sit in, in units of g_max."""
        return _normalised_pair(self.tile, self.split)

    def scaled(self, factor: float) -> NoiseModel:
        """Both fault probabilities times ``factor`` (0 gives the fault-free chip)."""
        if factor == 1.0:
            return self
        return dataclasses.replace(self, p0=self.p0 * factor, p1=self.p1 * factor)

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u_pos, u_neg = rand(w, generator), rand(w, generator)
        faulty = self.p0 + self.p1
        # Only the few cells with a faulty device are computed: full-size temporaries cost
        # more than the draw.
        rows, cols = ((u_pos < faulty) | (u_neg < faulty)).nonzero(as_tuple=True)
        w_hit = w[rows, cols]
        full_scale = self.mapping.full_scale_at(w, rows, cols)
        held_pos = self._held(w_hit.clamp(min=0), u_pos[rows, cols], full_scale)
        held_neg = self._held(w_hit.neg().clamp_(min=0), u_neg[rows, cols], full_scale)
        out = w.clone()
        # Weight units, no division: a cell whose faults change nothing keeps its exact value.
        out[rows, cols] = held_pos - held_neg
        return out

    def _held(self, healthy: torch.Tensor, u: torch.Tensor, full_scale: torch.Tensor) -> torch.Tensor:
        """What one device holds, in weight units, after its fault draw ``u``."""
        stuck_at_1 = (u >= self.p0) & (u < self.p0 + self.p1)
        held = torch.where(u < self.p0, torch.zeros_like(healthy), healthy)
        return torch.where(stuck_at_1, full_scale, held)


def _levels_to_bits(levels: int) -> int | None:
    """``B`` when ``levels == 2**B - 1`` (B >= 2), else None."""
    bits = (levels + 1).bit_length() - 1
    return bits if bits >= 2 and 2**bits - 1 == levels else None


def _bits_to_levels(text: str) -> str:
    """The ``levels`` value of ``bits=text``: symmetric signed B-bit, ``2**B - 1`` levels."""
    try:
        bits = parse_int(text)
    except ValueError as exc:
        raise UsageError(f"quant: bits must be {exc}, got {text!r}") from None
    if bits < 2:
        raise UsageError(
            f"quant: bits must be >= 2 (signed symmetric levels; bits=1 leaves only 0), "
            f"got {bits}; use levels=2 for binary +-max weights"
        )
    if bits > 24:
        raise UsageError(f"quant: bits must be <= 24 (float32 resolution), got {bits}")
    return str(2**bits - 1)


@dataclass(frozen=True)
class Quantization(Float32Model):
    """Conductance quantization: ``levels`` uniform weight levels per tile over
    ``[-max|W_tile|, +max|W_tile|]``, both ends included (deterministic, no randomness).

    Level ``k`` is ``(k - (L - 1) / 2) * step`` with ``step = 2 max|W_tile| / (L - 1)``;
    weights round to the nearest level. Odd ``L`` includes 0 exactly. ``bits=B`` is
    symmetric signed B-bit quantization, ``L = 2**B - 1`` (e.g. the paper's W8: 255 levels
    -127..127, zero and +-max exact); ``bits=1`` would leave only the level 0, so it needs
    ``levels=2`` (+-max) instead. The maximum error is half a step.

    Differential mapping: a level of magnitude ``m`` is programmed on the active device as
    ``g_min + m / max|W_tile| * (g_max - g_min)``, the other device at ``g_min``; each device
    therefore needs ``ceil(L / 2)`` conductance states (``2**(B-1)`` for ``bits=B``; RRAM
    cells typically hold 1-4 bits). Tiles default to 64x64.

    Deterministic and without a magnitude: :meth:`scaled` refuses any factor but 1 (a noise
    curriculum cannot ramp it).
    """

    levels: int
    tile: Tile = DEFAULT_TILE
    split: str = DEFAULT_SPLIT

    name: ClassVar[str] = "quant"
    usage: ClassVar[str] = "quant:bits=B,tile=64 or quant:levels=L,tile=64 (tile=full, split=even too)"
    summary: ClassVar[str] = "uniform conductance levels per tile (bits=B: 2^B-1 levels)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "bits": parse_int,
        "levels": parse_int,
        "tile": parse_tile,
        "split": choice(*SPLITS),
    }

    @classmethod
    def _from_params(cls, params: dict[str, str]) -> NoiseModel:
        if "bits" not in params and "levels" not in params:
            raise UsageError(f"quant needs bits=... or levels=...; usage: {cls.usage}")
        if "bits" in params and "levels" in params:
            raise UsageError(f"quant: give bits=... or levels=..., not both; usage: {cls.usage}")
        if "bits" in params:
            params = dict(params)
            params["levels"] = _bits_to_levels(params.pop("bits"))
        return super()._from_params(params)

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int):
            raise UsageError(f"{self.name}: levels must be an integer >= 2, got {self.levels!r}")
        if not 2 <= self.levels <= 2**24:
            raise UsageError(f"{self.name}: levels must be in [2, 2**24], got {self.levels}; e.g. bits=4")
        object.__setattr__(self, "tile", as_tile(self.tile, self.name))
        object.__setattr__(self, "split", as_split(self.split, self.name))

    @property
    def mapping(self) -> DifferentialPair:
        """The differential pair the cells sit in, in units of g_max."""
        return _normalised_pair(self.tile, self.split)

    def spec(self) -> str:
        bits = _levels_to_bits(self.levels)
        count = f"bits={bits}" if bits is not None else f"levels={self.levels}"
        split = "" if self.split == DEFAULT_SPLIT else f",split={self.split}"
        return f"{self.name}:{count},tile={format_value(self.tile)}{split}"

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        full_scale = self.mapping.full_scale(w)
        half = (self.levels - 1) / 2.0  # largest level index magnitude
        offset = half - math.floor(half)  # 0 for odd L, 0.5 for even L
        step = nonzero_or_one(full_scale).div_(half)
        q = torch.round(w / step - offset).add_(offset).clamp_(-half, half)
        return torch.where(full_scale > 0, q.mul_(step), torch.zeros_like(w))
