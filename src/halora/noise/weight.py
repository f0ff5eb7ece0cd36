"""Weight-domain noise: additive Gaussian (programming or read), multiplicative, lognormal.

These models act on the weight directly; the additive ones are scaled by a reference
magnitude, by default the crossbar tile's ``max|W_tile|`` (see :mod:`halora.noise.mapping`),
which makes ``sigma`` a fraction of ``g_max``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from halora.errors import UsageError
from halora.noise.base import Float32Model, NoiseModel, check_sigma, choice, parse_number, randn
from halora.noise.mapping import (
    DEFAULT_SPLIT,
    DEFAULT_TILE,
    SPLITS,
    Tile,
    TileLayout,
    as_split,
    as_tile,
    parse_tile,
    tile_reference,
)

_SCALES = ("tile", "channel", "tensor", "abs")


def _scaled_gaussian(
    w: torch.Tensor, sigma: float, scale: str, tile: Tile, split: str, generator: torch.Generator | None
) -> torch.Tensor:
    """``W + sigma * reference * N(0, 1)``, the reference chosen by ``scale``.

    One standard-normal matrix of ``w``'s shape is drawn whatever the scale or sigma, so the
    same generator state gives the same underlying draw across settings (paired studies).
    """
    noise = randn(w, generator)
    if scale == "tile":
        uniform = TileLayout.of(w.shape, tile, split).uniform
        if uniform is not None and _divides(uniform, w.shape):
            return _add_tile_noise(w, noise, sigma, uniform)
        noise.mul_(tile_reference(w, tile, split)).mul_(sigma)
    elif scale == "channel":
        noise.mul_(w.abs().amax(dim=1, keepdim=True).mul_(sigma))
    elif scale == "tensor":
        noise.mul_(w.abs().amax().mul_(sigma))
    else:  # abs
        noise.mul_(sigma)
    return noise.add_(w)


def _divides(tile: Tile, shape: torch.Size) -> bool:
    return shape[0] % tile[0] == 0 and shape[1] % tile[1] == 0


def _add_tile_noise(w: torch.Tensor, noise: torch.Tensor, sigma: float, tile: Tile) -> torch.Tensor:
    """``W + N * sigma * max|W_tile|`` for a matrix that is a whole number of tiles, in ``noise``.

    No full-size reference, no abs() copy: one fused pass over a [rows, tr, cols, tc] view.
    """
    (rows, cols), (tr, tc) = w.shape, tile
    w4 = w.reshape(rows // tr, tr, cols // tc, tc)
    ref = torch.maximum(w4.amax(dim=(1, 3)), w4.amin(dim=(1, 3)).neg_()).mul_(sigma)
    noise4 = noise.view(w4.shape)
    torch.addcmul(w4, noise4, ref[:, None, :, None], out=noise4)
    return noise


@dataclass(frozen=True)
class _SigmaNoise(Float32Model):
    """A model whose magnitude is one ``sigma`` >= 0: its :attr:`level`, scaled by :meth:`scaled`."""

    sigma: float

    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {"sigma": parse_number}

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.name, "sigma", self.sigma))

    @property
    def level(self) -> float:
        """``sigma``."""
        return self.sigma

    def scaled(self, factor: float) -> NoiseModel:
        """This model with ``sigma * factor`` (validated like any sigma: a negative one is rejected)."""
        if factor == 1.0:
            return self
        return dataclasses.replace(self, sigma=self.sigma * factor)


@dataclass(frozen=True)
class _ScaledGaussian(_SigmaNoise):
    scale: str = "tile"
    tile: Tile = DEFAULT_TILE
    split: str = DEFAULT_SPLIT

    _KEYS: ClassVar[dict[str, Callable[[str], Any]]] = {
        "sigma": parse_number,
        "scale": choice(*_SCALES),
        "tile": parse_tile,
        "split": choice(*SPLITS),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale not in _SCALES:
            raise UsageError(f"{self.name}: scale must be one of {', '.join(_SCALES)}, got {self.scale!r}")
        object.__setattr__(self, "tile", as_tile(self.tile, self.name))
        object.__setattr__(self, "split", as_split(self.split, self.name))

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return _scaled_gaussian(w, self.sigma, self.scale, self.tile, self.split, generator)


@dataclass(frozen=True)
class GaussianNoise(_ScaledGaussian):
    """Additive zero-mean Gaussian programming noise: ``W + N(0, (sigma * ref)^2)``.

    The HaLoRA paper's noise model (Wu et al., arXiv 2502.19747 / ACM TODAES 2026): i.i.d.
    Gaussian noise on the pretrained weights, weights partitioned into 64x64 blocks following
    NeuroSim's block-wise crossbar mapping, sigma in {0.005, 0.01, 0.02} (0.01 for training).
    The paper does not state the scale; ``ref`` is chosen by ``scale``:

    * ``tile`` (default): ``max|W_tile|`` of the element's ``tile`` (64x64; ``32x64`` is rows x
      cols; ``full`` the whole matrix; edge tiles use their real elements; ``split=even``
      cuts the matrix as aihwkit does, e.g. ``tile=512,split=even``, see
      :mod:`halora.noise.mapping`). With ``max|W_tile|`` -> ``g_max`` this is
      noise of ``sigma * g_max`` in conductance, i.e. "sigma in % of g_max" per crossbar
      (:mod:`halora.noise.mapping`). It also matches the paper's reported accuracy drops
      (SmolLM2-135M perplexity 36.5 clean -> 40.9 / 49.8 / 135 at sigma 0.005 / 0.01 / 0.02).
    * ``channel``: ``max|W|`` of the output row; ``tensor``: ``max|W|`` of the matrix (far
      harsher: perplexity 217,000 at sigma 0.02); ``abs``: 1 (sigma in weight units).

    Drawn once per chip (``per_read`` False). The same generator state gives the same
    N(0, 1) draw whatever ``sigma`` or ``scale``.
    """

    name: ClassVar[str] = "gaussian"
    usage: ClassVar[str] = "gaussian:sigma=S,scale=tile|channel|tensor|abs,tile=64|full,split=fixed|even"
    summary: ClassVar[str] = "additive Gaussian programming noise, std sigma*max|W_tile| (paper)"


@dataclass(frozen=True)
class ReadNoise(_ScaledGaussian):
    """Gaussian read noise ``W + N(0, (sigma * ref)^2)``, re-drawn at every forward pass.

    Same scales as :class:`GaussianNoise`. Not modelled by the HaLoRA paper; about 1 % of
    g_max per read is the usual addition to RRAM programming-noise fits (IBM aihwkit's
    ReRamWan2022/ReRamCMO documentation suggests ``w_noise`` ~ 0.01).
    The reference is taken from the weights it is given, i.e. the programmed ones.
    """

    per_read: ClassVar[bool] = True
    name: ClassVar[str] = "read"
    usage: ClassVar[str] = "read:sigma=S,scale=tile|channel|tensor|abs,tile=64|full,split=fixed|even"
    summary: ClassVar[str] = "Gaussian read noise, re-drawn every forward pass (per_read)"


@dataclass(frozen=True)
class MultiplicativeNoise(_SigmaNoise):
    """Device-to-device variation ``W * (1 + N(0, sigma^2))``.

    NeuroSim's device-variation form ``G * (1 + N(0, sigma))``. With a differential pair
    (one device at ``g_min`` ~ 0) the weight inherits the active device's relative error.
    Mean-preserving; zero weights stay zero.
    """

    name: ClassVar[str] = "multiplicative"
    usage: ClassVar[str] = "multiplicative:sigma=S"
    summary: ClassVar[str] = "relative device variation W*(1+N(0,sigma)) (NeuroSim)"

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return randn(w, generator).mul_(self.sigma).add_(1.0).mul_(w)


@dataclass(frozen=True)
class LognormalNoise(_SigmaNoise):
    """Lognormal conductance variation ``W * exp(N(0, sigma^2))``.

    ``ln G`` is normal around ``ln G_target`` (the log-normal device-variation form of the
    RRAM literature, cf. NeuroSim's device variation), mapped to the weight through the
    differential pair like :class:`MultiplicativeNoise`.

    Choice: **median-preserving, not mean-preserving**. The median of the factor is 1, its
    mean is ``exp(sigma^2 / 2)`` (a bias of ``sigma^2 / 2`` relative: 0.5 % at sigma 0.1).
    Programme-and-verify targets the cell's typical (median) value, which is what this
    reproduces. Signs never flip; zero weights stay zero.
    """

    name: ClassVar[str] = "lognormal"
    usage: ClassVar[str] = "lognormal:sigma=S"
    summary: ClassVar[str] = "lognormal variation W*exp(N(0,sigma)), median-preserving"

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return randn(w, generator).mul_(self.sigma).exp_().mul_(w)
