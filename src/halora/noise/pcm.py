"""Phase-change memory: IBM's PCM statistical model (programming noise, power-law drift, 1/f noise).

Users compare RRAM with PCM, whose conductance drifts down as a power of time after
programming. The model and every constant are those of IBM aihwkit's PCMLikeNoiseModel
(``src/aihwkit/inference/noise/pcm.py`` and its "Inference and PCM statistical model"
documentation), fitted to measurements of a 1-million-device PCM array: Nandakumar et al.,
"Phase-change memory models for deep learning training and inference", ICECS 2019, and
Joshi et al., "Accurate deep neural network inference using computational phase-change
memory", Nature Communications 11, 2473 (2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from halora.errors import UsageError
from halora.noise.base import TimeRange, choice, parse_duration, parse_number, randn
from halora.noise.devices import TEN_YEARS, _DeviceFit
from halora.noise.mapping import DEFAULT_SPLIT, DEFAULT_TILE, SPLITS, DifferentialPair, Tile, parse_tile

PCM_T0 = 20.0
"""Drift reference time t0 in s: the first read after programming, where the drift factor
``(t / t0)^-nu`` is 1 (aihwkit PCMLikeNoiseModel ``t_0 = 20.0``, after Nandakumar et al. 2019)."""

PCM_T_READ = 250e-9
"""Read pulse width t_read = 250 ns of the 1/f-noise integral (aihwkit ``t_read = 250.0e-9``)."""

PCM_G_MAX = 25.0
"""g_max in µS: aihwkit's SinglePairConductanceConverter default (g_min = 0), which
PCMLikeNoiseModel uses when given no converter. Every noise term is relative to it, so another
g_max gives the same weights (up to rounding): not a spec key."""

PCM_PROG_COEFFS = (0.26348, 1.9650, -1.1731)
"""Programming-noise std ``c0 + c1 x + c2 x^2`` in µS at g_max = :data:`PCM_PROG_G_REF`,
``x = g_target / g_max`` (aihwkit ``prog_coeff``; the docs' ``max(-1.1731 g^2 + 1.9650 g +
0.2635, 0)``, fitted to iteratively programmed PCM devices, Nandakumar et al. 2019). Positive
on all of [0, 1]: 0.26 µS at x = 0, 1.06 µS at x = 1."""

PCM_PROG_G_REF = 25.0
"""g_max (µS) the programming polynomial was fitted at (aihwkit ``prog_coeff_g_max_reference``);
for another g_max the std scales by ``g_max / 25``, i.e. the noise is a fixed fraction of g_max."""

PCM_NU_MEAN = (-0.0155, 0.0244, 0.049, 0.1)
"""Mean drift exponent ``clip(a ln x + b, lo, hi)`` as ``(a, b, lo, hi)``, x = g_target / g_max
(aihwkit ``generate_drift_coefficients``; Nandakumar et al. 2019 / Joshi et al. 2020)."""

PCM_NU_STD = (-0.0125, -0.0059, 0.008, 0.045)
"""Std of the drift exponent ``clip(a ln x + b, lo, hi)`` as ``(a, b, lo, hi)`` (same source)."""

PCM_X_FLOOR = 1e-7
"""Floor of x = g_target / g_max inside the logarithms of nu (aihwkit ``_ZERO_CLIP``): an idle
device at g = 0 gets the clipped extremes, nu ~ N(0.1, 0.045)."""

PCM_Q = (0.0088, 0.65, 1e-3, 0.2)
"""1/f noise ``Q_s = min(q / max(x^p, floor), cap)`` as ``(q, p, floor, cap)``, x = g_prog / g_max
(aihwkit ``apply_drift_noise_to_conductance``; docs: ``Q_s = min(0.0088 / g_T^0.65, 0.2)``)."""

PCM_TIMES = TimeRange(
    reference=PCM_T0,
    low=PCM_T0,
    high=TEN_YEARS,
    measured=(PCM_T0, 86400.0),
    source="aihwkit PCMLikeNoiseModel (t0 = 20 s); Joshi et al. 2020 validated it on hardware "
    "over one day after programming; aihwkit's examples extrapolate the power law to 10 years",
)
"""PCM times: from t0 = 20 s (the drift law's reference; before it the power law would raise
the conductance) to 10 years. Joshi et al.'s hardware results span one day after programming;
beyond a day is the power law's extrapolation, the form PCM drift follows over many decades
(Le Gallo et al., Adv. Electron. Mater. 2018), and the range aihwkit's examples use."""


def _clip_log_line(x: torch.Tensor, line: tuple[float, float, float, float]) -> torch.Tensor:
    """``clip(a ln x + b, lo, hi)`` for ``line = (a, b, lo, hi)``."""
    a, b, lo, hi = line
    return x.log().mul_(a).add_(b).clamp_(lo, hi)


@dataclass(frozen=True)
class PcmNoise(_DeviceFit):
    """PCM on a differential pair: programming noise, drift ``(t / t0)^-nu``, accumulated 1/f noise.

    IBM aihwkit's PCMLikeNoiseModel (Nandakumar et al., ICECS 2019; Joshi et al., Nat. Commun.
    2020). Per device, with ``g_T`` the target in µS and ``x = g_T / g_max``:

    * programming: ``g_prog = max(g_T + sigma_prog(x) N1, 0)``,
      ``sigma_prog = (0.26348 + 1.9650 x - 1.1731 x^2) * g_max / 25`` µS (:data:`PCM_PROG_COEFFS`);
    * drift, ``t`` seconds after programming, ``t >= t0 = 20 s``:
      ``g_drift = g_prog * (t / t0)^-nu`` with ``nu = |mu_nu(x) + sigma_nu(x) N2|``,
      ``mu_nu = clip(-0.0155 ln x + 0.0244, 0.049, 0.1)``,
      ``sigma_nu = clip(-0.0125 ln x - 0.0059, 0.008, 0.045)`` (:data:`PCM_NU_MEAN`,
      :data:`PCM_NU_STD`; x floored at 1e-7). At ``t = t0`` the factor is exactly 1;
    * 1/f noise accumulated since programming:
      ``g = max(g_drift + g_drift Q_s sqrt(ln((t + t_read) / (2 t_read))) N3, 0)``,
      ``Q_s = min(0.0088 / max((g_prog / g_max)^0.65, 1e-3), 0.2)``, t_read = 250 ns (:data:`PCM_Q`).

    Mapping (:attr:`mapping`): the differential pair with g_min = 0, per tile (aihwkit's
    SinglePairConductanceConverter, g_max 25 µS): ``max|W_tile|`` -> 25 µS, the idle device at 0
    (it too gets programming noise and drifts). ``W' = (g+ - g-) * max|W_tile| / 25 µS``. Every
    term is relative to g_max (sigma_prog scales with ``g_max / 25``, nu and Q_s depend on x, the
    1/f std on g), so g_max cancels out and is not a key, unlike ``wan2022``'s µS polynomial.
    aihwkit's own tiling is ``tile=512,split=even`` (:mod:`~halora.noise.mapping`).

    Time: halora's ``t`` counts from the end of programming, so the drift factor is
    ``(t / t0)^-nu``; aihwkit's ``t_inference`` counts from t0 (it uses ``t = t_inference + t0``):
    ``pcm:t=T`` is aihwkit at ``t_inference = T - 20``. The model takes any ``t >= t0``;
    :func:`~halora.noise.ageing.at_time` accepts 20 s .. 10 years (:data:`PCM_TIMES`).

    Scales (aihwkit's ``prog_noise_scale``, ``drift_scale``, ``read_noise_scale``): ``prog``
    multiplies sigma_prog, ``drift`` multiplies nu, ``read`` multiplies the 1/f std; ``prog=0,read=0``
    at ``t = t0`` is the mapping round trip of the clean weights. ``strength`` multiplies all
    three (the curriculum's magnitude; 0 is the clean chip, bit for bit); see ``_DeviceFit``.

    One chip ageing: the draws are N1, N2, N3 of ``g+`` and then of ``g-``, taken at every ``t``
    and every scale, so the same generator state gives each device the same programming error,
    the same nu and the same 1/f number at every time. The 1/f noise is then a fixed per-device
    z scaled by its std at ``t``, a simplification of the random walk it is; the drift is exact
    (one nu per device, as aihwkit draws it once when the chip is programmed).
    """

    t: float = PCM_T0
    prog: float = 1.0
    drift: float = 1.0
    read: float = 1.0
    tile: Tile = DEFAULT_TILE
    split: str = DEFAULT_SPLIT
    strength: float = 1.0

    name: ClassVar[str] = "pcm"
    usage: ClassVar[str] = "pcm:t=20 (20s..10y),prog=1,drift=1,read=1,tile=64,split=fixed,strength=1"
    summary: ClassVar[str] = "IBM PCM model: programming noise, drift (t/20 s)^-nu, 1/f noise (aihwkit)"
    time_range: ClassVar[TimeRange] = PCM_TIMES
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "t": parse_duration,
        "prog": parse_number,
        "drift": parse_number,
        "read": parse_number,
        "tile": parse_tile,
        "split": choice(*SPLITS),
        "strength": parse_number,
    }

    def __post_init__(self) -> None:
        t = float(self.t)
        if not (math.isfinite(t) and t >= PCM_T0):
            raise UsageError(
                f"{self.name}: t must be >= t0 = 20 s (the drift law's first read; t counts from the "
                f"end of programming), got {t!r}"
            )
        object.__setattr__(self, "t", t)
        for key in ("prog", "drift", "read"):
            value = float(getattr(self, key))
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(
                    f"{self.name}: {key} (a noise scale) must be a finite number >= 0, got {value!r}"
                )
            object.__setattr__(self, key, value)
        self._check_mapping_keys()

    @property
    def mapping(self) -> DifferentialPair:
        """The differential pair, ``g_min = 0`` as in aihwkit's converter."""
        return DifferentialPair(self.tile, gmin=0.0, gmax=PCM_G_MAX, split=self.split)

    def sigma_prog_us(self, x: torch.Tensor) -> torch.Tensor:
        """Programming-noise std in µS at ``x = g_target / g_max`` (before the scales)."""
        c0, c1, c2 = PCM_PROG_COEFFS
        return ((x * c2 + c1) * x + c0).mul_(PCM_G_MAX / PCM_PROG_G_REF)

    def nu_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the drift exponent at ``x = g_target / g_max`` (before the scales)."""
        x = x.abs().clamp_(min=PCM_X_FLOOR)
        return _clip_log_line(x, PCM_NU_MEAN), _clip_log_line(x, PCM_NU_STD)

    def q_s(self, x_prog: torch.Tensor) -> torch.Tensor:
        """1/f noise amplitude Q_s at ``x_prog = g_prog / g_max``."""
        q, power, floor, cap = PCM_Q
        return x_prog.abs().pow(power).clamp_(min=floor).reciprocal_().mul_(q).clamp_(max=cap)

    def _device(
        self, g_target: torch.Tensor, w: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One device's conductance at ``t``; draws N1 (programming), N2 (nu), N3 (1/f) in that order."""
        z_prog, z_nu, z_read = randn(w, generator), randn(w, generator), randn(w, generator)
        x = g_target / PCM_G_MAX
        g_prog = self.sigma_prog_us(x).mul_(z_prog).mul_(self.prog * self.strength).add_(g_target)
        g_prog.clamp_(min=0.0)
        mean, std = self.nu_moments(x)
        nu = std.mul_(z_nu).add_(mean).abs_().mul_(self.drift * self.strength)
        # (t / t0)^-nu = exp(-nu ln(t / t0)): exactly 1 at t = t0, where ln 1 = 0.
        g = nu.mul_(-math.log(self.t / PCM_T0)).exp_().mul_(g_prog)
        window = math.sqrt(math.log((self.t + PCM_T_READ) / (2 * PCM_T_READ)))
        sigma_read = self.q_s(g_prog / PCM_G_MAX).mul_(g.abs()).mul_(window * self.read * self.strength)
        return g.add_(sigma_read.mul_(z_read)).clamp_(min=0.0)

    def _noisy(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        pair = self.mapping
        g_pos, g_neg, tiles = pair.to_conductance(w)
        # One device after the other: three draws alive at a time, not six.
        g_pos = self._device(g_pos, w, generator)
        g_neg = self._device(g_neg, w, generator)
        return pair.to_weight(g_pos, g_neg, tiles)
