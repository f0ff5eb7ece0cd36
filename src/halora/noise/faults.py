"""Digital non-idealities of the differential-pair mapping: stuck-at faults and quantization.

Both act on the conductances of :class:`~halora.noise.mapping.DifferentialPair` but are
computed in weight units: the mapping is linear per tile, so a device stuck at ``g_min`` or
``g_max`` and uniformly spaced conductance states have exact weight-domain images (0,
``+-max|W_tile|``, uniform levels), with no rounding through µS.
"""

from __future__ import annotations

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
    format_value,
    parse_int,
    parse_number,
    rand,
)
from halora.noise.mapping import DEFAULT_TILE, DifferentialPair, Tile, as_tile, nonzero_or_one, parse_tile


def _normalised_pair(tile: Tile) -> DifferentialPair:
    """The pair in units of g_max: faults and levels are fractions of the range, not µS."""
    return DifferentialPair(tile, gmin=0.0, gmax=1.0)


@dataclass(frozen=True)
class StuckAtFaults(Float32Model):
    """Stuck-at faults: each cell independently SA0 with probability ``p0``, SA1 with ``p1``.

    Differential mapping: a signed weight is ``g+ - g-``; the active device (``g+`` for
    ``W > 0``, ``g-`` for ``W < 0``) holds ``|W| / max|W_tile| * (g_max - g_min)`` above
    ``g_min`` and the other device sits at ``g_min``. Fault classes (RRAM test chips report
    up to ~10 % faulty cells; HaLoRA evaluates SAF on Qwen2.5-0.5B):

    * SA0: the active device is stuck at ``g_min``, so both devices read ``g_min``:
      weight -> 0.
    * SA1: the active device is stuck at ``g_max``: weight -> ``sign(W) * max|W_tile|``.
      A weight of exactly 0 has no active device; choice: the stuck device is ``g+`` or
      ``g-`` with equal probability, giving ``+max|W_tile|`` or ``-max|W_tile|``.

    SA0 and SA1 are exclusive (``p0 + p1 <= 1``). Faults of the inactive device are not
    modelled separately (SA0 there changes nothing). One uniform draw per cell decides:
    ``u < p0`` SA0; ``p0 <= u < p0 + p1`` SA1 (the lower half of that band picks ``+`` for
    zero weights). Tiles default to 64x64; edge tiles use their real elements.
    """

    p0: float = 0.0
    p1: float = 0.0
    tile: Tile = DEFAULT_TILE

    name: ClassVar[str] = "saf"
    usage: ClassVar[str] = "saf:p0=P,p1=P,tile=64"
    summary: ClassVar[str] = "stuck-at faults: SA0 -> 0, SA1 -> sign(W)*max|W_tile|"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "p0": parse_number,
        "p1": parse_number,
        "tile": parse_tile,
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

    @property
    def mapping(self) -> DifferentialPair:
        """The differential pair the cells sit in, in units of g_max."""
        return _normalised_pair(self.tile)

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = rand(w, generator)
        p0, p1 = self.p0, self.p1
        # Only the few faulty cells are computed: full-size temporaries cost more than the draw.
        rows, cols = (u < p0 + p1).nonzero(as_tuple=True)
        u_hit, w_hit = u[rows, cols], w[rows, cols]
        full_scale_hit = self.mapping.full_scale_at(w, rows, cols)
        zero_sign = torch.where(u_hit < p0 + 0.5 * p1, 1.0, -1.0)
        sign = torch.where(w_hit == 0, zero_sign, torch.sign(w_hit))
        out = w.clone()
        out[rows, cols] = torch.where(u_hit < p0, torch.zeros_like(w_hit), sign * full_scale_hit)
        return out


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
    """

    levels: int
    tile: Tile = DEFAULT_TILE

    name: ClassVar[str] = "quant"
    usage: ClassVar[str] = "quant:bits=B,tile=64 or quant:levels=L,tile=64"
    summary: ClassVar[str] = "uniform conductance levels per tile (bits=B: 2^B-1 levels)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "bits": parse_int,
        "levels": parse_int,
        "tile": parse_tile,
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

    @property
    def mapping(self) -> DifferentialPair:
        """The differential pair the cells sit in, in units of g_max."""
        return _normalised_pair(self.tile)

    def spec(self) -> str:
        bits = _levels_to_bits(self.levels)
        count = f"bits={bits}" if bits is not None else f"levels={self.levels}"
        return f"{self.name}:{count},tile={format_value(self.tile)}"

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        full_scale = self.mapping.full_scale(w)
        half = (self.levels - 1) / 2.0  # largest level index magnitude
        offset = half - math.floor(half)  # 0 for odd L, 0.5 for even L
        step = nonzero_or_one(full_scale).div_(half)
        q = torch.round(w / step - offset).add_(offset).clamp_(-half, half)
        return torch.where(full_scale > 0, q.mul_(step), torch.zeros_like(w))
