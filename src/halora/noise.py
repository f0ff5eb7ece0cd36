"""RRAM non-ideality models: the weight a programmed chip computes with.

In the hybrid compute-in-memory architecture of HaLoRA (Wu et al., "HaLoRA: Hardware-aware
Low-Rank Adaptation for Large Language Models Based on Hybrid Compute-in-Memory
Architecture", arXiv 2502.19747; ACM TODAES 2026) the frozen pretrained weights sit on
noisy 1T1R RRAM crossbars and the LoRA branches on noise-free SRAM. A :class:`NoiseModel`
turns one clean weight matrix (``[out_features, in_features]``, as ``nn.Linear`` stores
it) into the matrix the RRAM arrays actually hold.

Weight <-> conductance mapping (shared by every model here; see
``shared/reference/device-models.md``, "Mapping a weight to conductances"):

* A crossbar tile holds one block of the weight matrix, by default 64x64 (the paper's
  partition, after NeuroSim's block-wise mapping). The block is scaled so that
  ``max|W_tile|`` maps to ``g_max``; edge tiles of a matrix whose size is not a multiple
  of the tile are smaller and use the max over their real elements (:func:`tile_reference`).
* A signed weight is a differential pair ``g+ - g-`` with the unused device at ``g_min``
  (Wan 2022, SAF, quantization), or one device with an offset, weight 0 at mid-range
  (CMO, which IBM characterised as one device per weight).
* Noise quoted "in % of g_max" is therefore ``sigma * max|W_tile|`` in weight units.

Two kinds of model (:attr:`NoiseModel.per_read`): programming noise is drawn once per
chip (each programmed chip is one draw); read noise is drawn anew at every forward pass.
:func:`split_noise` separates the two parts of a composed model.

Spec strings (:func:`parse_noise_spec`): ``name:key=value,key=value``; models are composed
with ``+`` and applied left to right, e.g. ``gaussian:sigma=0.02,scale=tile,tile=64``,
``saf:p0=0.01,p1=0.01``, ``wan2022:t=1d``, ``gaussian:sigma=0.01+saf:p0=0.001,p1=0.001``.
``none`` (alias ``clean``) is the identity. :meth:`NoiseModel.spec` gives the canonical
string with every key spelled out; ``parse_noise_spec(m.spec()) == m``.

Every model computes in float32 whatever the weight's dtype, takes all randomness from the
``torch.Generator`` it is given (which must live on the weight's device), returns a new
tensor of the weight's shape, dtype and device, and never modifies its input.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from halora.errors import UsageError

__all__ = [
    "NOISE_MODELS",
    "Chain",
    "CmoNoise",
    "CmoReadNoise",
    "GaussianNoise",
    "LognormalNoise",
    "MultiplicativeNoise",
    "NoNoise",
    "NoiseModel",
    "Quantization",
    "ReadNoise",
    "StuckAtFaults",
    "Wan2022Noise",
    "parse_noise_spec",
    "split_noise",
    "tile_reference",
]

Tile = tuple[int, int]
DEFAULT_TILE: Tile = (64, 64)
"""The paper's 64x64 block partition (HaLoRA, after NeuroSim's block-wise mapping)."""


# --------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------


def _as_tile(value: Any, owner: str = "tile") -> Tile:
    """Normalise ``64`` or ``(32, 64)`` (rows x cols) to a tuple, rejecting sizes < 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UsageError(f"{owner}: tile must be an integer or rows x cols, e.g. 64 or 32x64")
    rows, cols = value
    if rows < 1 or cols < 1:
        raise UsageError(f"{owner}: tile sizes must be >= 1, got {rows}x{cols}; e.g. tile=64")
    return (rows, cols)


def _tile_amax(weight: torch.Tensor, tile: Tile) -> torch.Tensor:
    """``max|W|`` of every tile: shape ``[ceil(R/tr), ceil(C/tc)]``.

    Edge tiles are zero-padded; since ``|W| >= 0`` the padding never raises a tile's max,
    so an edge tile's value is the max over its real elements only.
    """
    tr, tc = tile
    rows, cols = weight.shape
    n_r, n_c = -(-rows // tr), -(-cols // tc)
    a = weight.abs()
    if n_r * tr != rows or n_c * tc != cols:
        a = F.pad(a, (0, n_c * tc - cols, 0, n_r * tr - rows))
    return a.reshape(n_r, tr, n_c, tc).amax(dim=(1, 3))


def _expand_tiles(small: torch.Tensor, tile: Tile, shape: torch.Size) -> torch.Tensor:
    """Broadcast one value per tile back to a full ``shape`` matrix (edge tiles cropped)."""
    tr, tc = tile
    n_r, n_c = small.shape
    full = small[:, None, :, None].expand(n_r, tr, n_c, tc).reshape(n_r * tr, n_c * tc)
    rows, cols = shape
    if full.shape != (rows, cols):
        full = full[:rows, :cols].contiguous()
    return full


def tile_reference(weight_f32: torch.Tensor, tile: Tile | int = DEFAULT_TILE) -> torch.Tensor:
    """Per-element ``max|W|`` of the element's tile, same shape as ``weight_f32``.

    ``tile`` is ``(rows, cols)`` (or one int for square tiles); tiles start at ``[0, 0]``,
    and edge tiles of a matrix that is not a multiple of the tile use the max over their
    real elements only. This is the conductance reference of the block-wise crossbar mapping
    (``max|W_tile|`` -> ``g_max``; device-models.md, after NeuroSim as used by HaLoRA).
    """
    tile = _as_tile(tile, "tile_reference")
    if weight_f32.dim() != 2:
        raise ValueError(f"tile_reference needs a 2-D matrix, got shape {tuple(weight_f32.shape)}")
    if weight_f32.numel() == 0:
        return torch.zeros_like(weight_f32)
    return _expand_tiles(_tile_amax(weight_f32, tile), tile, weight_f32.shape)


def _safe(ref: torch.Tensor) -> torch.Tensor:
    """``ref`` with zeros replaced by 1, for dividing (all-zero tiles map back to 0)."""
    return torch.where(ref > 0, ref, torch.ones_like(ref))


def _randn(weight: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(weight.shape, generator=generator, device=weight.device, dtype=torch.float32)


def _rand(weight: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(weight.shape, generator=generator, device=weight.device, dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Spec values: parsing and formatting
# --------------------------------------------------------------------------------------


def _fmt_number(x: float) -> str:
    """Shortest exact text for a float: ``86400`` rather than ``86400.0``; round-trips."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):  # a tile
        rows, cols = value
        return str(rows) if rows == cols else f"{rows}x{cols}"
    if isinstance(value, float):
        return _fmt_number(value)
    return str(value)


def _parse_number(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ValueError("a number") from None
    if not math.isfinite(x):
        raise ValueError("a finite number")
    return x


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("an integer") from None


def _parse_tile(text: str) -> Tile:
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise ValueError("an integer or rows x cols, e.g. 64 or 32x64") from None
    if len(sizes) == 1:
        return (sizes[0], sizes[0])
    if len(sizes) == 2:
        return (sizes[0], sizes[1])
    raise ValueError("an integer or rows x cols, e.g. 64 or 32x64")


_DURATION_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _parse_duration(text: str) -> float:
    """Seconds, optionally with a unit: ``86400``, ``1d``, ``24h``, ``30min``, ``1s``."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(s|min|h|d)?\s*", text)
    if match is None:
        raise ValueError("a time in seconds, optionally with a unit s, min, h or d (e.g. 1d)")
    value = _parse_number(match.group(1))
    return value * _DURATION_UNITS[match.group(2) or "s"]


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.lower()
        if value not in options:
            raise ValueError("one of " + ", ".join(options))
        return value

    return parse


def _check_sigma(owner: str, key: str, value: Any) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{owner}: {key} must be a finite number >= 0, got {value!r}")
    return value


def _check_probability(owner: str, key: str, value: Any) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{owner}: {key} is a probability and must be in [0, 1], got {value!r}")
    return value


def _check_conductance_range(owner: str, gmin: float, gmax: float) -> tuple[float, float]:
    gmin, gmax = float(gmin), float(gmax)
    if not (math.isfinite(gmin) and math.isfinite(gmax) and 0 < gmin < gmax):
        raise UsageError(f"{owner}: need 0 < gmin < gmax (in µS), got gmin={gmin!r}, gmax={gmax!r}")
    return gmin, gmax


# --------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight)
        raise ValueError(f"noise models take a 2-D [out, in] weight matrix, got {shape}")
    if not weight.is_floating_point():
        raise TypeError(f"noise models take a floating-point weight, got {weight.dtype}")


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

    @abstractmethod
    def apply(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noisy copy of ``weight``.

        ``weight`` is 2-D ``[out_features, in_features]``, any float dtype, CPU or CUDA.
        Returns a new tensor of the same shape, dtype and device; computes in float32; all
        randomness comes from ``generator`` (a ``torch.Generator`` on ``weight.device``).
        """

    def spec(self) -> str:
        """Canonical spec string, every key spelled out: ``parse_noise_spec(m.spec()) == m``."""
        items = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self)]  # type: ignore[arg-type]
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


class _Float32Model(NoiseModel):
    """A model written as a float32 -> float32 function; :meth:`apply` handles dtypes."""

    def apply(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_weight(weight)
        with torch.no_grad():
            w32 = weight.detach().float()
            out = w32.clone() if w32.numel() == 0 else self._apply_f32(w32, generator)
        return out.to(weight.dtype)

    @abstractmethod
    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``w`` is float32 2-D and must not be modified; return a new float32 tensor."""


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoNoise(_Float32Model):
    """The identity: an ideal chip (spec ``none``, alias ``clean``). Returns a copy."""

    name: ClassVar[str] = "none"
    usage: ClassVar[str] = "none"
    summary: ClassVar[str] = "no noise: the clean weights (alias: clean)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {}

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return w.clone()


_SCALES = ("tile", "channel", "tensor", "abs")


def _scaled_gaussian(
    w: torch.Tensor, sigma: float, scale: str, tile: Tile, generator: torch.Generator | None
) -> torch.Tensor:
    """``W + sigma * reference * N(0, 1)``, the reference chosen by ``scale``.

    One standard-normal matrix of ``w``'s shape is drawn whatever the scale or sigma, so the
    same generator state gives the same underlying draw across settings (paired studies).
    """
    noise = _randn(w, generator)
    rows, cols = w.shape
    if scale == "tile":
        tr, tc = tile
        if rows % tr == 0 and cols % tc == 0:
            # Fast path: no full-size reference, no abs() copy, one fused pass W + N * ref.
            w4 = w.reshape(rows // tr, tr, cols // tc, tc)
            ref = torch.maximum(w4.amax(dim=(1, 3)), w4.amin(dim=(1, 3)).neg_()).mul_(sigma)
            noise4 = noise.view(w4.shape)
            torch.addcmul(w4, noise4, ref[:, None, :, None], out=noise4)
            return noise
        noise.mul_(tile_reference(w, tile)).mul_(sigma)
    elif scale == "channel":
        noise.mul_(w.abs().amax(dim=1, keepdim=True).mul_(sigma))
    elif scale == "tensor":
        noise.mul_(w.abs().amax().mul_(sigma))
    else:  # abs
        noise.mul_(sigma)
    return noise.add_(w)


@dataclass(frozen=True)
class _ScaledGaussian(_Float32Model):
    sigma: float
    scale: str = "tile"
    tile: Tile = DEFAULT_TILE

    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "sigma": _parse_number,
        "scale": _choice(*_SCALES),
        "tile": _parse_tile,
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_sigma(self.name, "sigma", self.sigma))
        if self.scale not in _SCALES:
            raise UsageError(f"{self.name}: scale must be one of {', '.join(_SCALES)}, got {self.scale!r}")
        object.__setattr__(self, "tile", _as_tile(self.tile, self.name))

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return _scaled_gaussian(w, self.sigma, self.scale, self.tile, generator)


@dataclass(frozen=True)
class GaussianNoise(_ScaledGaussian):
    """Additive zero-mean Gaussian programming noise: ``W + N(0, (sigma * ref)^2)``.

    The HaLoRA paper's noise model (Wu et al., arXiv 2502.19747 / ACM TODAES 2026): i.i.d.
    Gaussian noise on the pretrained weights, weights partitioned into 64x64 blocks following
    NeuroSim's block-wise crossbar mapping, sigma in {0.005, 0.01, 0.02} (0.01 for training).
    The paper does not state the scale; ``ref`` is chosen by ``scale``:

    * ``tile`` (default): ``max|W_tile|`` of the element's ``tile`` (64x64; ``32x64`` is rows x
      cols; edge tiles use their real elements). With ``max|W_tile|`` -> ``g_max`` this is
      noise of ``sigma * g_max`` in conductance, i.e. "sigma in % of g_max" per crossbar
      (device-models.md). It also matches the paper's reported accuracy drops
      (paper-facts.md: SmolLM2-135M perplexity 36.5 clean -> 40.9 / 49.8 / 135).
    * ``channel``: ``max|W|`` of the output row; ``tensor``: ``max|W|`` of the matrix (far
      harsher: perplexity 217,000 at sigma 0.02); ``abs``: 1 (sigma in weight units).

    Drawn once per chip (``per_read`` False). The same generator state gives the same
    N(0, 1) draw whatever ``sigma`` or ``scale``.
    """

    name: ClassVar[str] = "gaussian"
    usage: ClassVar[str] = "gaussian:sigma=S,scale=tile|channel|tensor|abs,tile=64"
    summary: ClassVar[str] = "additive Gaussian programming noise, std sigma*max|W_tile| (paper)"


@dataclass(frozen=True)
class ReadNoise(_ScaledGaussian):
    """Gaussian read noise ``W + N(0, (sigma * ref)^2)``, re-drawn at every forward pass.

    Same scales as :class:`GaussianNoise`. Not modelled by the HaLoRA paper; about 1 % of
    g_max per read is the usual addition to RRAM programming-noise fits (IBM aihwkit's
    ReRamWan2022/ReRamCMO documentation suggests ``w_noise`` ~ 0.01; device-models.md).
    The reference is taken from the weights it is given, i.e. the programmed ones.
    """

    per_read: ClassVar[bool] = True
    name: ClassVar[str] = "read"
    usage: ClassVar[str] = "read:sigma=S,scale=tile|channel|tensor|abs,tile=64"
    summary: ClassVar[str] = "Gaussian read noise, re-drawn every forward pass (per_read)"


@dataclass(frozen=True)
class MultiplicativeNoise(_Float32Model):
    """Device-to-device variation ``W * (1 + N(0, sigma^2))``.

    NeuroSim's device-variation form ``G * (1 + N(0, sigma))`` (device-models.md). With a
    differential pair (one device at ``g_min`` ~ 0) the weight inherits the active device's
    relative error. Mean-preserving; zero weights stay zero.
    """

    sigma: float

    name: ClassVar[str] = "multiplicative"
    usage: ClassVar[str] = "multiplicative:sigma=S"
    summary: ClassVar[str] = "relative device variation W*(1+N(0,sigma)) (NeuroSim)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {"sigma": _parse_number}

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_sigma(self.name, "sigma", self.sigma))

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return _randn(w, generator).mul_(self.sigma).add_(1.0).mul_(w)


@dataclass(frozen=True)
class LognormalNoise(_Float32Model):
    """Lognormal conductance variation ``W * exp(N(0, sigma^2))``.

    ``ln G`` is normal around ``ln G_target`` (the log-normal device-variation form of the
    RRAM literature, cf. NeuroSim's device variation in device-models.md), mapped to the
    weight through the differential pair like :class:`MultiplicativeNoise`.

    Choice: **median-preserving, not mean-preserving**. The median of the factor is 1, its
    mean is ``exp(sigma^2 / 2)`` (a bias of ``sigma^2 / 2`` relative: 0.5 % at sigma 0.1).
    Programme-and-verify targets the cell's typical (median) value, which is what this
    reproduces. Signs never flip; zero weights stay zero.
    """

    sigma: float

    name: ClassVar[str] = "lognormal"
    usage: ClassVar[str] = "lognormal:sigma=S"
    summary: ClassVar[str] = "lognormal variation W*exp(N(0,sigma)), median-preserving"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {"sigma": _parse_number}

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_sigma(self.name, "sigma", self.sigma))

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return _randn(w, generator).mul_(self.sigma).exp_().mul_(w)


@dataclass(frozen=True)
class StuckAtFaults(_Float32Model):
    """Stuck-at faults: each cell independently SA0 with probability ``p0``, SA1 with ``p1``.

    Differential mapping: a signed weight is ``g+ - g-``; the active device (``g+`` for
    ``W > 0``, ``g-`` for ``W < 0``) holds ``|W| / max|W_tile| * (g_max - g_min)`` above
    ``g_min`` and the other device sits at ``g_min``. Fault classes (device-models.md;
    RRAM test chips report up to ~10 % faulty cells; HaLoRA evaluates SAF on Qwen2.5-0.5B):

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
        "p0": _parse_number,
        "p1": _parse_number,
        "tile": _parse_tile,
    }
    _REQUIRE_ONE_OF: ClassVar[tuple[str, ...]] = ("p0", "p1")

    def __post_init__(self) -> None:
        p0 = _check_probability(self.name, "p0", self.p0)
        p1 = _check_probability(self.name, "p1", self.p1)
        if p0 + p1 > 1.0:
            raise UsageError(
                f"{self.name}: p0 + p1 must be <= 1 (SA0 and SA1 are exclusive), got {p0!r} + {p1!r}"
            )
        object.__setattr__(self, "p0", p0)
        object.__setattr__(self, "p1", p1)
        object.__setattr__(self, "tile", _as_tile(self.tile, self.name))

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = _rand(w, generator)
        p0, p1 = self.p0, self.p1
        # Only the few faulty cells are computed: full-size temporaries cost more than the draw.
        rows, cols = (u < p0 + p1).nonzero(as_tuple=True)
        u_hit, w_hit = u[rows, cols], w[rows, cols]
        tr, tc = self.tile
        ref_hit = _tile_amax(w, self.tile)[rows // tr, cols // tc]
        zero_sign = torch.where(u_hit < p0 + 0.5 * p1, 1.0, -1.0)
        sign = torch.where(w_hit == 0, zero_sign, torch.sign(w_hit))
        out = w.clone()
        out[rows, cols] = torch.where(u_hit < p0, torch.zeros_like(w_hit), sign * ref_hit)
        return out


def _levels_to_bits(levels: int) -> int | None:
    """``B`` when ``levels == 2**B - 1`` (B >= 2), else None."""
    bits = (levels + 1).bit_length() - 1
    return bits if bits >= 2 and 2**bits - 1 == levels else None


@dataclass(frozen=True)
class Quantization(_Float32Model):
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
    cells typically hold 1-4 bits, device-models.md). Tiles default to 64x64.
    """

    levels: int
    tile: Tile = DEFAULT_TILE

    name: ClassVar[str] = "quant"
    usage: ClassVar[str] = "quant:bits=B,tile=64 or quant:levels=L,tile=64"
    summary: ClassVar[str] = "uniform conductance levels per tile (bits=B: 2^B-1 levels)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "bits": _parse_int,
        "levels": _parse_int,
        "tile": _parse_tile,
    }

    @classmethod
    def _from_params(cls, params: dict[str, str]) -> NoiseModel:
        if "bits" not in params and "levels" not in params:
            raise UsageError(f"quant needs bits=... or levels=...; usage: {cls.usage}")
        if "bits" in params and "levels" in params:
            raise UsageError(f"quant: give bits=... or levels=..., not both; usage: {cls.usage}")
        if "bits" in params:
            params = dict(params)
            text = params.pop("bits")
            try:
                bits = _parse_int(text)
            except ValueError as exc:
                raise UsageError(f"quant: bits must be {exc}, got {text!r}") from None
            if bits < 2:
                raise UsageError(
                    f"quant: bits must be >= 2 (signed symmetric levels; bits=1 leaves only 0), "
                    f"got {bits}; use levels=2 for binary +-max weights"
                )
            if bits > 24:
                raise UsageError(f"quant: bits must be <= 24 (float32 resolution), got {bits}")
            params["levels"] = str(2**bits - 1)
        return super()._from_params(params)

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int):
            raise UsageError(f"{self.name}: levels must be an integer >= 2, got {self.levels!r}")
        if not 2 <= self.levels <= 2**24:
            raise UsageError(f"{self.name}: levels must be in [2, 2**24], got {self.levels}; e.g. bits=4")
        object.__setattr__(self, "tile", _as_tile(self.tile, self.name))

    def spec(self) -> str:
        bits = _levels_to_bits(self.levels)
        count = f"bits={bits}" if bits is not None else f"levels={self.levels}"
        return f"{self.name}:{count},tile={_fmt(self.tile)}"

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        ref = tile_reference(w, self.tile)
        half = (self.levels - 1) / 2.0  # largest level index magnitude
        offset = half - math.floor(half)  # 0 for odd L, 0.5 for even L
        step = _safe(ref).div_(half)
        q = torch.round(w / step - offset).add_(offset).clamp_(-half, half)
        return torch.where(ref > 0, q.mul_(step), torch.zeros_like(w))


WAN2022_COEFFS: dict[float, tuple[float, float, float, float, float]] = {
    1.0: (0.348, 16.030, -43.853, 45.393, -16.815),
    86400.0: (0.701, 22.086, -50.773, 47.095, -16.458),
    172800.0: (0.782, 20.274, -43.507, 37.062, -11.934),
}
"""sigma(x) = c0 + c1 x + c2 x^2 + c3 x^3 + c4 x^4 in µS, x = g_target / g_max, per time t in
seconds after programming (1 s, 1 day, 2 days). Wan et al., "A compute-in-memory chip based
on resistive random-access memory", Nature 608, 2022 (NeuRRAM), as fitted to its published
figures in IBM aihwkit's ReRamWan2022NoiseModel (g_max = 40 µS); device-models.md."""

_WAN_TIME_NAMES = {1.0: "1s", 86400.0: "1d", 172800.0: "2d"}


@dataclass(frozen=True)
class Wan2022Noise(_Float32Model):
    """RRAM programming noise of the NeuRRAM chip, Wan et al., Nature 2022.

    Conductance-dependent Gaussian noise with ``sigma(x) = sum_i c_i x^i`` µS,
    ``x = g / g_max``, coefficients fitted in IBM aihwkit's ReRamWan2022NoiseModel to the
    paper's figures at t = 1 s, 1 day, 2 days after programming (:data:`WAN2022_COEFFS`;
    about 1.6 / 2.0 / 1.1 µS at x = 0.1 / 0.5 / 1 at 1 s, 3-5 % of g_max; 6-10 % after a
    day; device-models.md). ``t`` accepts 1, 86400, 172800 (or 1s, 1d, 2d, 24h, 48h).

    Mapping (aihwkit's SinglePairConductanceConverter with g_min = 0, per tile):
    ``max|W_tile|`` -> ``gmax``; ``g+ = max(W, 0) * gmax / max|W_tile|``,
    ``g- = max(-W, 0) * gmax / max|W_tile|``. Both devices get noise (the inactive one at
    g = 0 gets ``sigma(0) = c0``), conductances are clamped at >= 0, and
    ``W' = (g+ - g-) * max|W_tile| / gmax``. ``gmax`` defaults to 40 µS, the reference of the
    fit; as in aihwkit the polynomial stays in µS for another ``gmax``, so a smaller gmax
    means relatively more noise. All-zero tiles stay zero. No read noise (add ``read``).
    """

    t: float = 1.0
    tile: Tile = DEFAULT_TILE
    gmax: float = 40.0

    name: ClassVar[str] = "wan2022"
    usage: ClassVar[str] = "wan2022:t=1|86400|172800 (1s|1d|2d),tile=64,gmax=40"
    summary: ClassVar[str] = "NeuRRAM RRAM programming noise fit (Wan 2022, via aihwkit)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "t": _parse_duration,
        "tile": _parse_tile,
        "gmax": _parse_number,
    }

    def __post_init__(self) -> None:
        t = float(self.t)
        if t not in WAN2022_COEFFS:
            fitted = ", ".join(f"{_fmt_number(k)} ({v})" for k, v in _WAN_TIME_NAMES.items())
            raise UsageError(f"{self.name}: no fit for t={_fmt_number(t)} s; use t = {fitted}")
        object.__setattr__(self, "t", t)
        gmax = float(self.gmax)
        if not (math.isfinite(gmax) and gmax > 0):
            raise UsageError(f"{self.name}: gmax must be > 0 (µS), got {gmax!r}; default 40")
        object.__setattr__(self, "gmax", gmax)
        object.__setattr__(self, "tile", _as_tile(self.tile, self.name))

    def sigma_us(self, x: torch.Tensor) -> torch.Tensor:
        """Programming-noise std in µS at normalised conductance ``x = g / g_max``."""
        c = WAN2022_COEFFS[self.t]
        return (((c[4] * x + c[3]) * x + c[2]) * x + c[1]) * x + c[0]

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        ref = tile_reference(w, self.tile)
        us_per_weight = _safe(ref).reciprocal_().mul_(self.gmax)
        g_pos = w.clamp(min=0).mul_(us_per_weight)
        g_neg = w.neg().clamp_(min=0).mul_(us_per_weight)
        g_pos = g_pos + self.sigma_us(g_pos / self.gmax) * _randn(w, generator)
        g_neg = g_neg + self.sigma_us(g_neg / self.gmax) * _randn(w, generator)
        out = (g_pos.clamp_(min=0) - g_neg.clamp_(min=0)).div_(us_per_weight)
        return torch.where(ref > 0, out, torch.zeros_like(w))


CMO_PROGRAMMING: dict[float, tuple[float, float]] = {
    2.0: (0.0112185, 0.0112903),
    0.2: (0.00081107, 0.00106879),
}
"""sigma_prog = c0 + c1 * g (g and sigma in µS) per program-and-verify acceptance range in %
of the target (2 % or 0.2 %). IBM Research Zurich CMO/HfOx RRAM (Falcone et al., in review),
as fitted in IBM aihwkit's ReRamCMONoiseModel; device-models.md."""

CMO_RELAXATION_MEAN = -0.0890021
"""Mean conductance shift per ln(t / 1 s) in µS, independent of g (CMO/HfOx; aihwkit
ReRamCMONoiseModel, fitted to Falcone et al.; device-models.md)."""

CMO_RELAXATION_STD = (0.0420114, 0.411833)
"""Relaxation std ``a * ln(t / 1 s) + b`` in µS, independent of g (same source)."""

CMO_READ_K = 0.0277316
"""Read (1/f) noise constant: ``sigma = K * log10(g / µS) * sqrt(ln((t + t_read) / (2 t_read)))``
(CMO/HfOx, aihwkit ReRamCMONoiseModel's read_dict, after Lombardo et al., DRC 2024;
device-models.md)."""

CMO_T_READ = 1e-6
"""Read pulse duration t_read = 1 µs of the CMO read-noise fit (same source)."""

CMO_G_RANGE = (9.0, 88.2)
"""Default (g_min, g_max) in µS: aihwkit's SingleDeviceConductanceConverter defaults
(9.0, 88.199997 µS), the range its ReRamCMONoiseModel examples use (9.0, 88.19)."""


def _cmo_mapping(w: torch.Tensor, tile: Tile, gmin: float, gmax: float):
    """Single device per weight, symmetric per tile: ``W = 0`` -> mid-range,
    ``+-max|W_tile|`` -> ``gmax`` / ``gmin``. Returns (g, us_per_weight, mid, tile ref)."""
    ref = tile_reference(w, tile)
    mid = 0.5 * (gmin + gmax)
    us_per_weight = _safe(ref).reciprocal_().mul_(0.5 * (gmax - gmin))
    return w * us_per_weight + mid, us_per_weight, mid, ref


def _cmo_back(g: torch.Tensor, us_per_weight: torch.Tensor, mid: float, ref: torch.Tensor) -> torch.Tensor:
    out = g.sub_(mid).div_(us_per_weight)
    return torch.where(ref > 0, out, torch.zeros_like(out))


@dataclass(frozen=True)
class CmoNoise(_Float32Model):
    """IBM Zurich CMO/HfOx RRAM: programming noise plus conductance relaxation after ``t``.

    Source: IBM aihwkit's ReRamCMONoiseModel, fitted to the statistical characterisation of
    analog filamentary conductive-metal-oxide/HfOx devices by Falcone et al. (in review);
    constants in device-models.md:

    * programming: ``g1 = g + (c0 + c1 g) N1`` µS, ``(c0, c1)`` per program-verify
      acceptance range ``accept`` = 2 % (default) or 0.2 % (:data:`CMO_PROGRAMMING`);
    * relaxation ``t`` seconds after programming, independent of g:
      ``g2 = g1 - 0.0890021 ln t + (0.0420114 ln t + 0.411833) N2`` µS;
      ``t = 0`` means right after programming (no relaxation). The fit is in ln t, so
      ``0 < t < 1 s`` is rejected (the fitted mean shift would change sign);
    * clamp to ``[gmin, gmax]``.

    Mapping: one device per weight, as IBM characterised it; choice: symmetric per tile,
    ``g = (gmin + gmax)/2 + W / max|W_tile| * (gmax - gmin)/2`` (aihwkit's converter maps
    ``[min W, max W]`` of the whole matrix instead; symmetric keeps W = 0 at mid-range and
    matches the per-tile max used everywhere here). Default range 9-88.2 µS
    (:data:`CMO_G_RANGE`). Read noise is the separate per-read model :class:`CmoReadNoise`.
    """

    t: float = 1.0
    accept: float = 2.0
    tile: Tile = DEFAULT_TILE
    gmin: float = CMO_G_RANGE[0]
    gmax: float = CMO_G_RANGE[1]

    name: ClassVar[str] = "cmo"
    usage: ClassVar[str] = "cmo:t=1,accept=2|0.2,tile=64,gmin=9,gmax=88.2"
    summary: ClassVar[str] = "IBM CMO/HfOx RRAM programming noise + relaxation (aihwkit fit)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "t": _parse_duration,
        "accept": _parse_number,
        "tile": _parse_tile,
        "gmin": _parse_number,
        "gmax": _parse_number,
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
        object.__setattr__(self, "tile", _as_tile(self.tile, self.name))

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        g, us_per_weight, mid, ref = _cmo_mapping(w, self.tile, self.gmin, self.gmax)
        c0, c1 = CMO_PROGRAMMING[self.accept]
        g = g + (g * c1 + c0) * _randn(w, generator)
        if self.t > 0:
            log_t = math.log(self.t)
            sigma = CMO_RELAXATION_STD[0] * log_t + CMO_RELAXATION_STD[1]
            g.add_(_randn(w, generator).mul_(sigma).add_(CMO_RELAXATION_MEAN * log_t))
        return _cmo_back(g.clamp_(self.gmin, self.gmax), us_per_weight, mid, ref)


@dataclass(frozen=True)
class CmoReadNoise(_Float32Model):
    """CMO/HfOx read (1/f) noise, re-drawn at every forward pass (``per_read`` True).

    ``sigma = 0.0277316 * |log10(g / 1 µS)| * sqrt(ln((t + t_read) / (2 t_read)))`` µS with
    t_read = 1 µs (:data:`CMO_READ_K`, :data:`CMO_T_READ`; aihwkit ReRamCMONoiseModel, after
    Lombardo et al., DRC 2024; device-models.md). As in aihwkit, ``t`` is the time since
    programming (the 1/f noise integrated from 1/t up to the read bandwidth), ``g`` is in µS
    and the result is clamped to ``[gmin, gmax]``; ``t`` must be >= t_read (below, the log
    is negative). ``|log10 g|`` only matters for g < 1 µS (same distribution either way).

    Mapping as :class:`CmoNoise` (one device, symmetric per tile), applied to the weights it
    is given, i.e. the programmed ones, with their own tile max.
    """

    t: float = 1.0
    tile: Tile = DEFAULT_TILE
    gmin: float = CMO_G_RANGE[0]
    gmax: float = CMO_G_RANGE[1]

    per_read: ClassVar[bool] = True
    name: ClassVar[str] = "cmo_read"
    usage: ClassVar[str] = "cmo_read:t=1,tile=64,gmin=9,gmax=88.2"
    summary: ClassVar[str] = "IBM CMO/HfOx RRAM read (1/f) noise, per forward pass (per_read)"
    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "t": _parse_duration,
        "tile": _parse_tile,
        "gmin": _parse_number,
        "gmax": _parse_number,
    }

    def __post_init__(self) -> None:
        t = float(self.t)
        if not (math.isfinite(t) and t >= CMO_T_READ):
            raise UsageError(f"{self.name}: t (s since programming) must be >= t_read = 1e-06 s, got {t!r}")
        gmin, gmax = _check_conductance_range(self.name, self.gmin, self.gmax)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "gmin", gmin)
        object.__setattr__(self, "gmax", gmax)
        object.__setattr__(self, "tile", _as_tile(self.tile, self.name))

    def sigma_us(self, g: torch.Tensor) -> torch.Tensor:
        """Read-noise std in µS at conductance ``g`` (µS)."""
        time_factor = math.sqrt(math.log((self.t + CMO_T_READ) / (2 * CMO_T_READ)))
        return g.log10().abs_().mul_(CMO_READ_K * time_factor)

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        g, us_per_weight, mid, ref = _cmo_mapping(w, self.tile, self.gmin, self.gmax)
        g = g + self.sigma_us(g) * _randn(w, generator)
        return _cmo_back(g.clamp_(self.gmin, self.gmax), us_per_weight, mid, ref)


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

    def spec(self) -> str:
        return "+".join(m.spec() for m in self.models)

    def apply(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_weight(weight)
        with torch.no_grad():
            w = weight.detach().float()
            for m in self.models:
                if isinstance(m, _Float32Model):
                    w = m._apply_f32(w, generator) if w.numel() else w.clone()
                else:
                    w = m.apply(w, generator).float()
            if w is weight:
                w = w.clone()
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


# --------------------------------------------------------------------------------------
# Registry and parser
# --------------------------------------------------------------------------------------

NOISE_MODELS: dict[str, type[NoiseModel]] = {
    cls.name: cls
    for cls in (
        NoNoise,
        GaussianNoise,
        MultiplicativeNoise,
        LognormalNoise,
        StuckAtFaults,
        Quantization,
        Wan2022Noise,
        CmoNoise,
        CmoReadNoise,
        ReadNoise,
    )
}
"""Registry: spec name -> class (``none`` also answers to ``clean``)."""

_ALIASES = {"clean": "none"}

# '+' joins models, but not inside a number's exponent such as 1e+06.
_JOIN = re.compile(r"(?<![0-9.][eE])\+")


def _model_list() -> str:
    return ", ".join(n + (" (alias clean)" if n == "none" else "") for n in NOISE_MODELS)


def _parse_one(part: str, spec: str) -> NoiseModel:
    if not part:
        raise UsageError(
            f"noise spec {spec!r} has an empty part; join models with '+', "
            "e.g. 'gaussian:sigma=0.01+saf:p0=0.001'"
        )
    head, _, rest = part.partition(":")
    name = head.strip().lower()
    name = _ALIASES.get(name, name)
    cls = NOISE_MODELS.get(name)
    if cls is None:
        raise UsageError(f"unknown noise model {head.strip()!r} in {spec!r}; valid models: {_model_list()}")
    params: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not eq or not key or not value:
                raise UsageError(
                    f"noise spec {spec!r}: expected key=value, got {item.strip()!r}; usage: {cls.usage}"
                )
            if key not in cls._KEYS:
                valid = ", ".join(cls._KEYS) or "none (it takes no keys)"
                raise UsageError(
                    f"unknown key {key!r} for noise model {name!r} in {spec!r}; valid keys: {valid}"
                )
            if key in params:
                raise UsageError(f"noise spec {spec!r}: key {key!r} given twice for {name!r}")
            params[key] = value
    try:
        return cls._from_params(params)
    except UsageError as exc:
        raise UsageError(f"bad noise spec {spec!r}: {exc}") from None


def parse_noise_spec(spec: str) -> NoiseModel:
    """Parse ``name:key=value,...`` (models joined with ``+``) into a model.

    One part gives that model, several give a :class:`Chain`. Raises
    :class:`~halora.errors.UsageError` naming the problem and the valid choices for an
    unknown model name or key, a malformed or out-of-range value, or an empty spec.
    """
    if not isinstance(spec, str):
        raise UsageError(f"noise spec must be a string such as 'gaussian:sigma=0.01', got {spec!r}")
    text = spec.strip()
    if not text:
        raise UsageError(
            f"empty noise spec; give e.g. 'gaussian:sigma=0.01' or 'none' (models: {_model_list()})"
        )
    models = [_parse_one(part.strip(), spec) for part in _JOIN.split(text)]
    return models[0] if len(models) == 1 else Chain(tuple(models))
