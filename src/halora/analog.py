"""The analog forward: DACs, 64-row partial sums and ADCs on every RRAM-placed layer.

Programming a chip (:mod:`halora.cim`) puts noise into the weights; this module puts the
crossbar's converters into the matrix-vector product, with the settings the energy model
charges (:class:`halora.converters.Converters`). For a layer ``y = x W^T + b`` with ``W``
of shape ``[out, in]``, cut into tiles of ``rows`` inputs x ``cols`` outputs
(``W[o:o+cols, i:i+rows]``, the noise mapping's 64x64 blocks)::

    x ──► split into chunks c of `rows` inputs (last one zero-padded)
          s_x[t,c] = max_i |x[t,c,i]|                           per token, per row tile
          n[t,c,i] = round(x / s_x * L_dac)                     DAC: |n| <= L_dac
    W ──► s_W[c,o] = max |W_tile|  (tile = rows x cols)          the conductance scale
    p[t,c,o] = sum_i (n / L_dac) * (W[o,c,i] / s_W)             analog sum, |p| <= rows
             + out_noise * N(0, 1)                              optional, before the ADC
    q[t,c,o] = clip(round(p / Δ), -L_adc, L_adc) * Δ            ADC, Δ = adc_range / L_adc
    y[t,o]   = sum_c q * s_x[t,c] * s_W[c,o]  + b               digital accumulation, bias

with ``L_dac = 2**(dac_bits-1) - 1`` and ``L_adc = 2**(adc_bits-1) - 1`` levels on each side
of 0. Rounding is round-half-to-even (``torch.round``): a value exactly between two levels
goes to the even one, any other to the nearer. Partial sums beyond ``±adc_range`` come out
as exactly ``±adc_range * s_x * s_W`` in output units. All-zero input slices and all-zero
tiles use a scale of 1 (their contribution is 0 either way). The default ``adc_range`` of 8
units was measured on SmolLM2-135M (see :mod:`halora.converters`): 8-bit partial sums of
64 rows are mostly below 1 unit, so a wider range rounds them away and a narrower one
clips the outliers.

Range rules, and why. The input scale is the abs-max of each token's slice on one row tile:
the digital periphery can shift each tile's inputs on its own, and a per-tile scale keeps
the DAC's resolution for the tiles that do not hold an LLM's outlier channels (one scale
per whole vector would spend it on them). The weight scale is per tile, rows x cols,
because that is what programming does: the noise mapping scales each 64x64 tile so that
``max|W_tile|`` reaches ``g_max``, so the column currents of one tile are in the units of
that tile's conductance range (per-column scales would need a per-column reference the
mapping does not have; per-row-tile scales over all outputs would give small-weight tiles
a coarser ADC than the chip has).

Speed. One batched matmul over the chunks computes every partial sum: the input as
``[chunks, tokens, rows]``, the weight as ``[chunks, rows, out]`` (already divided by
``s_W`` and scaled so that ``p`` comes out in ADC steps), then in-place rounding, clipping
and scaling, and a sum over chunks. Tokens go through in blocks so that the
``[chunks, tokens, out]`` partial sums stay under :data:`BLOCK_ELEMENTS`. On SmolLM2-135M
(CPU, one thread) a forward takes about 1.8-1.9x the plain one, with about 1 % more peak
memory (benchmarks/bench_analog.py). float16 and bfloat16 layers run the converters in
float32 (2**31 DAC levels overflow float16; bfloat16 holds integers exactly only to 256)
and return their own dtype.

Gradients. Rounding passes gradients straight through (the straight-through estimator, as
aihwkit's ``UniformQuantize``); clipping passes none beyond the range; the scales
``s_x`` and ``s_W`` are treated as constants. So the forward can sit in a training loop
(LoRA on SRAM learns through the converters); without gradients (evaluation, the main use)
the rounding runs in place.

How this compares with IBM aihwkit (read from ``aihwkit.simulator.parameters.io.IOParameters``
and the torch tile's ``AnalogMVM`` / ``UniformQuantize``, ``TileModuleArray``; not a
dependency):

* Same: inputs divided by their abs-max (aihwkit's default ``noise_management = ABS_MAX``,
  ``inp_bound = 1``), quantised on a symmetric grid (``dac_bits = b`` is
  ``inp_res = 1 / (2**b - 2)``; aihwkit's default 7 bits is ``dac_bits=7``); Gaussian output
  noise added before the ADC in normalised units (``out_noise``, aihwkit's default 0.06);
  output quantised then clipped at ``±out_bound`` (``adc_bits = b`` is
  ``out_res = 1 / (2**b - 2)``, aihwkit's default 9 bits); rounding with a
  straight-through gradient; bias added digitally (``digital_bias``); a mapped layer's
  tiles each take their own input slice and abs-max (``TileModuleArray``).
* Different: aihwkit's ``out_bound = 12`` is relative to the *raw* weights unless
  ``MappingParameter.weight_scaling_omega`` remaps them (default 0: no remapping;
  ``StandardHWATrainingPreset`` uses 1.0, column-wise), while halora's ``adc_range`` is
  always relative to ``max|W_tile|`` (aihwkit with ``weight_scaling_omega = 1`` and
  ``weight_scaling_columnwise = False`` on 64x64 tiles). aihwkit sums a whole tile
  column, up to ``max_input_size = 512`` rows by default (so its 12 bounds a sum of up
  to 512 products), while halora converts every ``rows = 64`` (64x64 tiles: set
  ``max_input_size = max_output_size = 64`` there to match, though aihwkit splits a
  dimension evenly, halora in fixed tiles with a smaller edge tile); with ``out_noise``,
  halora's noise on the total grows with the number of row tiles. The default
  ``adc_range`` of 8 (not 12) follows from that. aihwkit's default
  ``bound_management = ITERATIVE`` reruns a clipped product with the inputs halved (up
  to ``max_bm_factor``), which no fixed ADC does; halora clips (aihwkit with
  ``bound_management = NONE``). halora has no input noise,
  IR drop, output non-linearity or asymmetry, and draws ``out_noise`` from a seeded CPU
  generator per layer, so a run is reproducible and the same on every device.

Use it around an evaluation, alone (exact weights, real converters) or on a programmed
chip (it reads ``module.weight`` at call time, so it sees the programmed weights and each
forward's read-noise draw)::

    with program_chip(model, "gaussian:sigma=0.02", seed=0), analog_forward(model, Converters()):
        evaluate(model)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from halora.cim import Placement, layer_generator, rram_layers
from halora.converters import Converters
from halora.errors import UsageError
from halora.noise.mapping import tile_max

BLOCK_ELEMENTS = 2**20
"""Most partial sums computed at once (4 MiB in float32): tokens beyond go in blocks."""

_MARK = "_halora_analog"  # set on the forward this module installs


def analog_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    converters: Converters,
    generator: torch.Generator | None = None,
    stats: AnalogStats | None = None,
) -> torch.Tensor:
    """``x W^T + b`` through DACs and ADCs (see the module docstring); ``weight`` is
    ``[out, in]``. ``generator`` (a CPU generator) draws the output noise when
    ``converters.out_noise > 0``; ``stats`` counts clipped partial sums."""
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the weight {in_features}")
    if converters.out_noise > 0 and generator is None:
        raise ValueError("out_noise > 0 needs a generator")
    lead, dtype = x.shape[:-1], x.dtype
    # half types run the converters in float32: 2**31 DAC levels overflow float16, and
    # bfloat16 holds integers exactly only up to 256 (ADC codes of more than 9 bits)
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    tokens = x.reshape(-1, in_features).to(compute)
    steps, tile_scale = _weight_in_steps(weight.to(compute), converters)
    block = max(1, BLOCK_ELEMENTS // (steps.shape[0] * out_features))
    parts = [
        _block(tokens[start : start + block], steps, tile_scale, converters, generator, stats)
        for start in range(0, tokens.shape[0], block)
    ]
    y = parts[0] if len(parts) == 1 else torch.cat(parts)
    if bias is not None:
        y = y + bias.to(compute)
    return y.to(dtype).reshape(*lead, out_features)


def _weight_in_steps(weight: torch.Tensor, converters: Converters) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight as ``[chunks, rows, out]`` in units that make the matmul of DAC levels come
    out in ADC steps, and ``s_W`` as ``[chunks, 1, out]`` (1 where a tile is all zero).

    The result is a strided view of one ``[out, chunks * rows]`` tensor: bmm reads it as a
    transposed operand (as F.linear reads its weight), faster than a permuted copy."""
    out_features, in_features = weight.shape
    rows, chunks = converters.rows, -(-in_features // converters.rows)
    cols = min(converters.cols, out_features)
    with torch.no_grad():  # the scales are constants for the gradient
        # tile_max cuts [out, in] into (cols outputs x rows inputs), as the noise mapping does
        maxima = tile_max(weight.detach(), (cols, rows))  # [out tiles, chunks]
        maxima = torch.where(maxima > 0, maxima, torch.ones_like(maxima))
        scale = maxima.repeat_interleave(cols, dim=0)[:out_features]  # [out, chunks]
        # p / Δ = sum (n / L_dac) (W / s_W) / Δ: one factor folds L_dac and Δ into the weight
        factor = (converters.dac_levels * converters.adc_step) * scale
    padded = F.pad(weight, (0, chunks * rows - in_features)).view(out_features, chunks, rows)
    steps = padded / factor[:, :, None]
    return steps.permute(1, 2, 0), scale.t().unsqueeze(1)  # [chunks, rows, out], [chunks, 1, out]


def _block(
    x: torch.Tensor,
    steps: torch.Tensor,
    tile_scale: torch.Tensor,
    converters: Converters,
    generator: torch.Generator | None,
    stats: AnalogStats | None,
) -> torch.Tensor:
    """One block of tokens ``[tokens, in]`` -> ``[tokens, out]``."""
    chunks, rows, _ = steps.shape
    n_tokens, in_features = x.shape
    inplace = not torch.is_grad_enabled()
    # [chunks, tokens, rows], contiguous: the batched matmul's fast layout
    padded = F.pad(x, (0, chunks * rows - in_features)).view(n_tokens, chunks, rows)
    padded = padded.transpose(0, 1).contiguous()
    with torch.no_grad():
        s_x = padded.abs().amax(-1, keepdim=True)  # [chunks, tokens, 1]
        s_x = torch.where(s_x > 0, s_x, torch.ones_like(s_x))
    levels = _round(padded * (converters.dac_levels / s_x), inplace)  # DAC: integers in ±L_dac
    sums = torch.bmm(levels, steps)  # [chunks, tokens, out], in ADC steps
    if converters.out_noise > 0:
        noise = torch.randn(sums.shape, generator=generator, dtype=sums.dtype)
        noise = noise.to(sums.device).mul_(converters.out_noise / converters.adc_step)
        sums = sums.add_(noise) if inplace else sums + noise
    if stats is not None:
        stats.count(sums, converters.adc_levels)
    bound = converters.adc_levels
    clipped = sums.clamp_(-bound, bound) if inplace else sums.clamp(-bound, bound)
    codes = _round(clipped, inplace)  # ADC output codes, |code| <= L_adc
    # digital side: code * Δ * s_x * s_W, summed over the row tiles
    unit = s_x * converters.adc_step  # [chunks, tokens, 1]
    if inplace:
        return codes.mul_(tile_scale).mul_(unit).sum(0)
    return (codes * tile_scale * unit).sum(0)


def _round(values: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Round half to even; with gradients, straight through (d round(v) / dv = 1)."""
    if inplace:
        return values.round_()
    return values + (values.round() - values).detach()


@dataclass
class AnalogStats:
    """Partial sums seen and clipped by the ADCs (for choosing ``adc_range``)."""

    seen: int = 0
    clipped: int = 0
    peak: float = 0.0  # largest |partial sum| in ADC steps
    per_layer: dict[str, list[int]] = field(default_factory=dict)

    def count(self, sums: torch.Tensor, bound: int) -> None:
        magnitude = sums.detach().abs()
        self.seen += magnitude.numel()
        self.clipped += int((magnitude > bound).sum())
        self.peak = max(self.peak, float(magnitude.max()))

    @property
    def clip_fraction(self) -> float:
        return self.clipped / self.seen if self.seen else 0.0


class AnalogLayer:
    """The forward installed on one RRAM layer: reads the weight when called, so programmed
    weights and read-noise draws (a pre-hook that swaps ``weight.data``) are seen."""

    def __init__(self, layer: nn.Module, name: str, converters: Converters, seed: int, stats) -> None:
        self.layer, self.name, self.converters = layer, name, converters
        self.transposed = not isinstance(layer, nn.Linear)  # Conv1D stores [in, out]
        # one CPU generator per layer, from (seed, name): reproducible, device-independent
        self.generator = layer_generator(seed, f"analog:{name}") if converters.out_noise > 0 else None
        self.stats: AnalogStats | None = stats

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.weight
        if self.transposed:
            weight = weight.t()
        return analog_linear(x, weight, self.layer.bias, self.converters, self.generator, self.stats)


def _install(layer: nn.Module, name: str, converters: Converters, seed: int, stats) -> None:
    if not (isinstance(layer, nn.Linear) or type(layer).__name__ == "Conv1D"):
        raise UsageError(
            f"RRAM layer {name} is a {type(layer).__name__}: the analog forward handles "
            "nn.Linear and transformers' Conv1D; leave it off RRAM with --rram-targets"
        )
    own = layer.__dict__.get("forward")
    if own is not None:
        why = "the analog forward is on already" if getattr(own, _MARK, False) else "its forward is replaced"
        raise UsageError(
            f"RRAM layer {name}: {why} (nested analog_forward, or accelerate offloading): "
            "install one analog forward on a plain model"
        )
    forward = AnalogLayer(layer, name, converters, seed, stats)
    setattr(forward, _MARK, True)
    # an instance attribute shadows the class's forward: nn.Module.__call__ runs every hook
    # (the chip's read noise among them) and then this
    layer.forward = forward


def _remove(layer: nn.Module) -> None:
    if getattr(layer.__dict__.get("forward"), _MARK, False):
        del layer.forward


@contextmanager
def analog_forward(
    model: nn.Module,
    converters: Converters,
    placement: Placement = Placement(),
    seed: int = 0,
    stats: AnalogStats | None = None,
) -> Iterator[dict[str, nn.Module]]:
    """Every RRAM-placed layer (``halora.cim.rram_layers``) runs through the converters for
    the with-block; the model is back exactly as before after it (no hooks, no attributes).

    LoRA branches and every digital op are untouched: PEFT's LoRA layer calls its
    ``base_layer``, and only base layers are RRAM layers. ``seed`` seeds each layer's output
    noise generator (with the layer's name), so two runs draw the same noise. Yields the
    layers (canonical name -> module). ``stats``, when given, counts clipped partial sums.
    """
    layers = rram_layers(model, placement)
    installed: list[nn.Module] = []
    try:
        for name, layer in layers.items():
            _install(layer, name, converters, seed, stats)
            installed.append(layer)
        yield layers
    finally:
        for layer in installed:
            _remove(layer)
