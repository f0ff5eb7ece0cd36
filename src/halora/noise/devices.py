"""Published RRAM device fits: NeuRRAM (Wan et al. 2022) and IBM's CMO/HfOx devices.

Each model maps the weights to conductances in µS through a shared
:mod:`~halora.noise.mapping` object, adds the fitted conductance noise, clamps to the
physical range and maps back. The constants keep the units and sources of their fits.
"""

from __future__ import annotations

import dataclasses
import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from halora.errors import UsageError
from halora.noise.base import (
    Float32Model,
    NoiseModel,
    TimeRange,
    check_strength,
    choice,
    format_number,
    parse_duration,
    parse_number,
    randn,
)
from halora.noise.mapping import (
    DEFAULT_SPLIT,
    DEFAULT_TILE,
    SPLITS,
    DifferentialPair,
    SingleDevice,
    Tile,
    as_split,
    as_tile,
    parse_tile,
)

# --------------------------------------------------------------------------------------
# NeuRRAM, Wan et al. 2022
# --------------------------------------------------------------------------------------

WAN2022_COEFFS: dict[float, tuple[float, float, float, float, float]] = {
    1.0: (0.348, 16.030, -43.853, 45.393, -16.815),
    86400.0: (0.701, 22.086, -50.773, 47.095, -16.458),
    172800.0: (0.782, 20.274, -43.507, 37.062, -11.934),
}
"""sigma(x) = c0 + c1 x + c2 x^2 + c3 x^3 + c4 x^4 in µS, x = g_target / g_max, per time t in
seconds after programming (1 s, 1 day, 2 days). Wan et al., "A compute-in-memory chip based
on resistive random-access memory", Nature 608, 2022 (NeuRRAM), as fitted to its published
figures in IBM aihwkit's ReRamWan2022NoiseModel (g_max = 40 µS)."""

_WAN_TIME_NAMES = {1.0: "1s", 86400.0: "1d", 172800.0: "2d"}

YEAR = 365 * 86400.0
"""A year in seconds, as aihwkit's examples count it (``3600 * 24 * 365``)."""

TEN_YEARS = 10 * YEAR
"""The latest time any fit here is evaluated at: the 10 years after programming to which
Falcone et al. (CMO/HfOx) and aihwkit's PCM and ReRAM examples extrapolate their fits, the
usual retention target of a non-volatile memory."""

WAN2022_TIMES = TimeRange(
    reference=1.0,
    low=1.0,
    high=172800.0,
    measured=(1.0, 172800.0),
    fitted=tuple(WAN2022_COEFFS),
    source="Wan et al., Nature 2022 (NeuRRAM) figures at 1 s, 1 d, 2 d, fitted in aihwkit's "
    "ReRamWan2022NoiseModel; no fit in between",
)
"""Wan 2022 exists at its three fitted times only: a separate polynomial per time, nothing to
interpolate (aihwkit refuses other times too). The 1 s fit is the chip right after programming."""


class _DeviceFit(Float32Model):
    """A published device fit on a tiled mapping, its noise multiplied by ``strength``.

    ``strength`` (default 1, like aihwkit's ``noise_scale`` / ``prog_noise_scale``) is the
    magnitude the noise curriculum ramps: :meth:`scaled` multiplies it and ``strength = 0`` is
    the clean chip, bit for bit. It is written in the spec only when it is not 1, so the
    canonical spec of the published fit stays as it was. :attr:`level` is None: a multiplier
    is not a sigma. Not a dataclass itself: each fit declares the fields, in its spec's order.
    """

    tile: Tile
    split: str
    strength: float

    _QUIET_DEFAULTS: ClassVar[dict[str, Any]] = {"split": DEFAULT_SPLIT, "strength": 1.0}

    def _check_mapping_keys(self) -> None:
        object.__setattr__(self, "tile", as_tile(self.tile, self.name))
        object.__setattr__(self, "split", as_split(self.split, self.name))
        object.__setattr__(self, "strength", check_strength(self.name, self.strength))

    def scaled(self, factor: float) -> NoiseModel:
        """This fit with its noise ``strength`` times ``factor``."""
        if factor == 1.0:
            return self
        return dataclasses.replace(self, strength=self.strength * factor)  # type: ignore[type-var]

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noisy = self._noisy(w, generator)
        # strength 0: the draws are still taken, so the generator moves on as at any other strength
        # (a chain's later parts see the same draws all along a curriculum), but the result is
        # the clean weight itself rather than its round trip through conductances.
        return w.clone() if self.strength == 0 else noisy

    @abstractmethod
    def _noisy(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The fit's noisy copy of the float32 matrix ``w`` at this ``strength``."""


@dataclass(frozen=True)
class Wan2022Noise(_DeviceFit):
    """RRAM programming noise of the NeuRRAM chip, Wan et al., Nature 2022.

    Conductance-dependent Gaussian noise with ``sigma(x) = sum_i c_i x^i`` µS,
    ``x = g / g_max``, coefficients fitted in IBM aihwkit's ReRamWan2022NoiseModel to the
    paper's figures at t = 1 s, 1 day, 2 days after programming (:data:`WAN2022_COEFFS`;
    about 1.6 / 2.0 / 1.1 µS at x = 0.1 / 0.5 / 1 at 1 s, 3-5 % of g_max; 6-10 % after a
    day). ``t`` accepts 1, 86400, 172800 (or 1s, 1d, 2d, 24h, 48h).

    Mapping (aihwkit's SinglePairConductanceConverter with g_min = 0, per tile; :attr:`mapping`):
    ``max|W_tile|`` -> ``gmax``; ``g+ = max(W, 0) * gmax / max|W_tile|``,
    ``g- = max(-W, 0) * gmax / max|W_tile|``. Both devices get noise (the inactive one at
    g = 0 gets ``sigma(0) = c0``), conductances are clamped at >= 0, and
    ``W' = (g+ - g-) * max|W_tile| / gmax``. ``gmax`` defaults to 40 µS, the reference of the
    fit (aihwkit's converter defaults to 25 µS); as in aihwkit the polynomial stays in µS for
    another ``gmax``, so a smaller gmax means relatively more noise. All-zero tiles stay zero.
    No read noise (add ``read``). aihwkit's own tiling is ``tile=512,split=even``
    (:mod:`~halora.noise.mapping`).

    ``strength`` multiplies the std ``sigma(x)`` (aihwkit's ``noise_scale``); see ``_DeviceFit``.

    Ageing (:mod:`~halora.noise.ageing`): one standard normal per device, the same at every
    ``t`` for a given generator state, scaled by the fit's ``sigma(x)`` at ``t``: the chip at 1 d
    is the chip at 1 s with each device's deviation rescaled (:data:`WAN2022_TIMES`).
    """

    t: float = 1.0
    tile: Tile = DEFAULT_TILE
    gmax: float = 40.0
    split: str = DEFAULT_SPLIT
    strength: float = 1.0

    name: ClassVar[str] = "wan2022"
    time_range: ClassVar[TimeRange] = WAN2022_TIMES
    usage: ClassVar[str] = "wan2022:t=1|86400|172800 (1s|1d|2d),tile=64,gmax=40,split=fixed,strength=1"
    summary: ClassVar[str] = "NeuRRAM RRAM programming noise fit (Wan 2022, via aihwkit)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "t": parse_duration,
        "tile": parse_tile,
        "gmax": parse_number,
        "split": choice(*SPLITS),
        "strength": parse_number,
    }

    def __post_init__(self) -> None:
        t = float(self.t)
        if t not in WAN2022_COEFFS:
            fitted = ", ".join(f"{format_number(k)} ({v})" for k, v in _WAN_TIME_NAMES.items())
            raise UsageError(f"{self.name}: no fit for t={format_number(t)} s; use t = {fitted}")
        object.__setattr__(self, "t", t)
        gmax = float(self.gmax)
        if not (math.isfinite(gmax) and gmax > 0):
            raise UsageError(f"{self.name}: gmax must be > 0 (µS), got {gmax!r}; default 40")
        object.__setattr__(self, "gmax", gmax)
        self._check_mapping_keys()

    @property
    def mapping(self) -> DifferentialPair:
        """The differential pair, ``g_min = 0`` as in the fit."""
        return DifferentialPair(self.tile, gmin=0.0, gmax=self.gmax, split=self.split)

    def sigma_us(self, x: torch.Tensor) -> torch.Tensor:
        """Programming-noise std in µS at normalised conductance ``x = g / g_max``."""
        c = WAN2022_COEFFS[self.t]
        return (((c[4] * x + c[3]) * x + c[2]) * x + c[1]) * x + c[0]

    def _noisy(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        pair = self.mapping
        g_pos, g_neg, tiles = pair.to_conductance(w)
        g_pos = g_pos + self.sigma_us(g_pos / self.gmax).mul_(self.strength) * randn(w, generator)
        g_neg = g_neg + self.sigma_us(g_neg / self.gmax).mul_(self.strength) * randn(w, generator)
        # Only the lower bound is physical here: the fit has no saturation at gmax (as aihwkit).
        return pair.to_weight(g_pos.clamp_(min=pair.gmin), g_neg.clamp_(min=pair.gmin), tiles)


# --------------------------------------------------------------------------------------
# IBM Research Zurich CMO/HfOx RRAM
# --------------------------------------------------------------------------------------

CMO_PROGRAMMING: dict[float, tuple[float, float]] = {
    2.0: (0.0112185, 0.0112903),
    0.2: (0.00081107, 0.00106879),
}
"""sigma_prog = c0 + c1 * g (g and sigma in µS) per program-and-verify acceptance range in %
of the target (2 % or 0.2 %). IBM Research Zurich CMO/HfOx RRAM (Falcone et al., in review),
as fitted in IBM aihwkit's ReRamCMONoiseModel."""

CMO_RELAXATION_MEAN = -0.0890021
"""Mean conductance shift per ln(t / 1 s) in µS, independent of g (CMO/HfOx; aihwkit
ReRamCMONoiseModel, fitted to Falcone et al.)."""

CMO_RELAXATION_STD = (0.0420114, 0.411833)
"""Relaxation std ``a * ln(t / 1 s) + b`` in µS, independent of g (same source)."""

CMO_READ_K = 0.0277316
"""Read (1/f) noise constant: ``sigma = K * log10(g / µS) * sqrt(ln((t + t_read) / (2 t_read)))``
(CMO/HfOx, aihwkit ReRamCMONoiseModel's read_dict, after Lombardo et al., DRC 2024)."""

CMO_T_READ = 1e-6
"""Read pulse duration t_read = 1 µs of the CMO read-noise fit (same source)."""

CMO_TIMES = TimeRange(
    reference=0.0,
    low=1.0,
    high=TEN_YEARS,
    measured=(1.0, 3600.0),
    zero=True,
    source="Falcone et al. (arXiv 2502.04524) measured the relaxation from 1 s to 1 h after "
    "programming and extrapolate the ln t fit to 10 years; aihwkit's CMO examples evaluate "
    "0 s .. 10 years",
)
"""Times of the CMO relaxation fit: ``t = 0`` (just programmed: programming noise alone, the
reference of drift compensation, as aihwkit's baseline is read right after programming) or
1 s .. 10 years. The data end at 1 h ("G-state relaxation after 1h" in Falcone et al.'s array
relaxation figure); later times are the paper's own ln t extrapolation, which it plots out to
1 d, 1 w and 10 years. The fit is in ln t, so 0 < t < 1 s is refused (the mean shift would
change sign)."""

CMO_READ_TIMES = TimeRange(
    reference=1.0,
    low=1.0,
    high=TEN_YEARS,
    measured=(10.0, 10.0),
    source="Lombardo et al., DRC 2024, as documented by aihwkit: the read-noise fit is shown "
    "at 10 s after programming; other times follow the 1/f integral",
)
"""Times of the CMO read-noise fit on halora's time axis (1 s .. 10 years, as :data:`CMO_TIMES`
without ``t = 0``, where nothing has been read yet). The constant K was fitted at 10 s; the
time dependence ``sqrt(ln((t + t_read) / (2 t_read)))`` is the integral of the 1/f spectrum,
not a fit, so other times are its extrapolation."""

CMO_G_RANGE = (9.0, 88.2)
"""Default (g_min, g_max) in µS: aihwkit's SingleDeviceConductanceConverter defaults
(9.0, 88.199997 µS), the range its ReRamCMONoiseModel examples use (9.0, 88.19)."""


def _check_conductance_range(owner: str, gmin: float, gmax: float) -> tuple[float, float]:
    gmin, gmax = float(gmin), float(gmax)
    if not (math.isfinite(gmin) and math.isfinite(gmax) and 0 < gmin < gmax):
        raise UsageError(f"{owner}: need 0 < gmin < gmax (in µS), got gmin={gmin!r}, gmax={gmax!r}")
    return gmin, gmax


@dataclass(frozen=True)
class CmoNoise(_DeviceFit):
    """IBM Zurich CMO/HfOx RRAM: programming noise plus conductance relaxation after ``t``.

    Source: IBM aihwkit's ReRamCMONoiseModel, fitted to the statistical characterisation of
    analog filamentary conductive-metal-oxide/HfOx devices by Falcone et al. (in review):

    * programming: ``g1 = g + (c0 + c1 g) N1`` µS, ``(c0, c1)`` per program-verify
      acceptance range ``accept`` = 2 % (default) or 0.2 % (:data:`CMO_PROGRAMMING`);
    * relaxation ``t`` seconds after programming, independent of g:
      ``g2 = g1 - 0.0890021 ln t + (0.0420114 ln t + 0.411833) N2`` µS;
      ``t = 0`` means right after programming (no relaxation). The fit is in ln t, so
      ``0 < t < 1 s`` is rejected (the fitted mean shift would change sign). The data behind
      the fit span 1 s .. 1 h; :func:`~halora.noise.ageing.at_time` accepts up to 10 years,
      the paper's own extrapolation (:data:`CMO_TIMES`). N1 and N2 are drawn at every ``t``
      (``t = 0`` too), so one generator state is one chip ageing: the same programming error
      and the same per-cell relaxation z at every time;
    * clamp to ``[gmin, gmax]``.

    Mapping (:attr:`mapping`, a :class:`~halora.noise.mapping.SingleDevice`): one device per
    weight, as IBM characterised it; symmetric per tile,
    ``g = (gmin + gmax)/2 + W / max|W_tile| * (gmax - gmin)/2`` (aihwkit's converter maps
    ``[min W, max W]`` of the whole matrix instead; symmetric keeps W = 0 at mid-range and
    matches the per-tile max used everywhere here). Default range 9-88.2 µS
    (:data:`CMO_G_RANGE`). Read noise is the separate per-read model :class:`CmoReadNoise`
    (aihwkit's drift step adds it: ``cmo+cmo_read`` is the closer match). aihwkit's default
    ``acceptance_range=2e-2`` is not a key of its own table (2 and 0.2), so it falls back to
    the smallest, 0.2 %: ``accept=0.2`` is aihwkit's effective default, 2 % is the default here.

    ``strength`` multiplies all three noise terms: the programming std, the relaxation std and
    the mean relaxation shift. The shift is a systematic error of the same size as the
    spread (-1.0 µS mean, 0.89 µS std at t = 1 day), so it is part of the noise the
    curriculum ramps, and only scaling it too makes ``strength = 0`` the clean chip; aihwkit's
    ``drift_scale`` likewise multiplies both the relaxation mean and std. See ``_DeviceFit``.
    """

    t: float = 1.0
    accept: float = 2.0
    tile: Tile = DEFAULT_TILE
    gmin: float = CMO_G_RANGE[0]
    gmax: float = CMO_G_RANGE[1]
    split: str = DEFAULT_SPLIT
    strength: float = 1.0

    name: ClassVar[str] = "cmo"
    time_range: ClassVar[TimeRange] = CMO_TIMES
    usage: ClassVar[str] = "cmo:t=1,accept=2|0.2,tile=64,gmin=9,gmax=88.2,split=fixed,strength=1"
    summary: ClassVar[str] = "IBM CMO/HfOx RRAM programming noise + relaxation (aihwkit fit)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "t": parse_duration,
        "accept": parse_number,
        "tile": parse_tile,
        "gmin": parse_number,
        "gmax": parse_number,
        "split": choice(*SPLITS),
        "strength": parse_number,
    }

    def __post_init__(self) -> None:
        t = float(self.t)
        if not (math.isfinite(t) and (t == 0 or t >= 1)):
            raise UsageError(
                f"{self.name}: t must be 0 (just programmed) or >= 1 s (the relaxation fit is "
                f"in ln t), got {t!r}"
            )
        accept = float(self.accept)
        if accept not in CMO_PROGRAMMING:
            raise UsageError(
                f"{self.name}: accept (program-verify acceptance range, %) must be 2 or 0.2, got {accept!r}"
            )
        gmin, gmax = _check_conductance_range(self.name, self.gmin, self.gmax)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "accept", accept)
        object.__setattr__(self, "gmin", gmin)
        object.__setattr__(self, "gmax", gmax)
        self._check_mapping_keys()

    @property
    def mapping(self) -> SingleDevice:
        """One device per weight, weight 0 at mid-range, symmetric per tile."""
        return SingleDevice(self.tile, self.gmin, self.gmax, split=self.split)

    def _noisy(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        mapping = self.mapping
        g, tiles = mapping.to_conductance(w)
        c0, c1 = CMO_PROGRAMMING[self.accept]
        g = g + (g * c1 + c0).mul_(self.strength) * randn(w, generator)
        # Drawn at every t, t = 0 included: each cell keeps one relaxation number N2 at all
        # times (the same chip ageing), and a chain's later parts see the same draws at any t.
        relaxation = randn(w, generator)
        if self.t > 0:
            log_t = math.log(self.t)
            sigma = (CMO_RELAXATION_STD[0] * log_t + CMO_RELAXATION_STD[1]) * self.strength
            g.add_(relaxation.mul_(sigma).add_(CMO_RELAXATION_MEAN * log_t * self.strength))
        return mapping.to_weight(g.clamp_(self.gmin, self.gmax), tiles)


@dataclass(frozen=True)
class CmoReadNoise(_DeviceFit):
    """CMO/HfOx read (1/f) noise, re-drawn at every forward pass (``per_read`` True).

    ``sigma = 0.0277316 * |log10(g / 1 µS)| * sqrt(ln((t + t_read) / (2 t_read)))`` µS with
    t_read = 1 µs (:data:`CMO_READ_K`, :data:`CMO_T_READ`; aihwkit ReRamCMONoiseModel, after
    Lombardo et al., DRC 2024). As in aihwkit, ``t`` is the time since programming (the 1/f
    noise integrated from 1/t up to the read bandwidth), ``g`` is in µS and the result is
    clamped to ``[gmin, gmax]``; ``t`` must be >= t_read (below, the log is negative).
    ``|log10 g|`` only matters for g < 1 µS (same distribution either way).

    Mapping as :class:`CmoNoise` (one device, symmetric per tile), applied to the weights it
    is given, i.e. the programmed ones, with their own tile max. ``strength`` multiplies the read
    std (aihwkit's ``read_noise_scale``); see ``_DeviceFit``.
    """

    t: float = 1.0
    tile: Tile = DEFAULT_TILE
    gmin: float = CMO_G_RANGE[0]
    gmax: float = CMO_G_RANGE[1]
    split: str = DEFAULT_SPLIT
    strength: float = 1.0

    per_read: ClassVar[bool] = True
    name: ClassVar[str] = "cmo_read"
    time_range: ClassVar[TimeRange] = CMO_READ_TIMES
    usage: ClassVar[str] = "cmo_read:t=1,tile=64,gmin=9,gmax=88.2,split=fixed,strength=1"
    summary: ClassVar[str] = "IBM CMO/HfOx RRAM read (1/f) noise, per forward pass (per_read)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "t": parse_duration,
        "tile": parse_tile,
        "gmin": parse_number,
        "gmax": parse_number,
        "split": choice(*SPLITS),
        "strength": parse_number,
    }

    def __post_init__(self) -> None:
        t = float(self.t)
        if not (math.isfinite(t) and t >= CMO_T_READ):
            raise UsageError(f"{self.name}: t (s since programming) must be >= t_read = 1e-06 s, got {t!r}")
        gmin, gmax = _check_conductance_range(self.name, self.gmin, self.gmax)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "gmin", gmin)
        object.__setattr__(self, "gmax", gmax)
        self._check_mapping_keys()

    @property
    def mapping(self) -> SingleDevice:
        """As :attr:`CmoNoise.mapping`."""
        return SingleDevice(self.tile, self.gmin, self.gmax, split=self.split)

    def sigma_us(self, g: torch.Tensor) -> torch.Tensor:
        """Read-noise std in µS at conductance ``g`` (µS)."""
        time_factor = math.sqrt(math.log((self.t + CMO_T_READ) / (2 * CMO_T_READ)))
        return g.log10().abs_().mul_(CMO_READ_K * time_factor)

    def _noisy(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        mapping = self.mapping
        g, tiles = mapping.to_conductance(w)
        g = g + self.sigma_us(g).mul_(self.strength) * randn(w, generator)
        return mapping.to_weight(g.clamp_(self.gmin, self.gmax), tiles)
