"""RRAM non-ideality models: the weight a programmed chip computes with.

In the hybrid compute-in-memory architecture of HaLoRA (Wu et al., "HaLoRA: Hardware-aware
Low-Rank Adaptation for Large Language Models Based on Hybrid Compute-in-Memory
Architecture", arXiv 2502.19747; ACM TODAES 2026) the frozen pretrained weights sit on
noisy 1T1R RRAM crossbars and the LoRA branches on noise-free SRAM. A :class:`NoiseModel`
turns one clean weight matrix (``[out_features, in_features]``, as ``nn.Linear`` stores
it) into the matrix the RRAM arrays actually hold.

Modules:

* :mod:`~halora.noise.base`: the interface, :class:`Chain` and :func:`split_noise`;
* :mod:`~halora.noise.mapping`: crossbar tiles and the weight <-> conductance mapping
  (:class:`DifferentialPair`, :class:`SingleDevice`) that every device model shares:
  ``max|W_tile|`` of a 64x64 tile maps to ``g_max``, so noise "in % of g_max" is
  ``sigma * max|W_tile|`` in weight units. Every tiled model takes ``tile=`` (``64``,
  ``32x64``, ``full``) and ``split=`` (``fixed`` tiles, or ``even`` as aihwkit cuts a
  matrix: ``tile=512,split=even`` is aihwkit's default tiling);
* :mod:`~halora.noise.weight`: Gaussian, read, multiplicative and lognormal noise;
* :mod:`~halora.noise.faults`: stuck-at faults and quantization;
* :mod:`~halora.noise.devices`: the published RRAM device fits (Wan 2022, IBM CMO/HfOx);
* :mod:`~halora.noise.pcm`: IBM's phase-change-memory model (power-law drift), to compare with;
* :mod:`~halora.noise.spec`: spec strings;
* :mod:`~halora.noise.ageing`: time after programming: :func:`at_time` re-times a spec, one
  chip seed ageing through its fits' validity ranges.

Two kinds of model (:attr:`NoiseModel.per_read`): programming noise is drawn once per
chip (each programmed chip is one draw); read noise is drawn anew at every forward pass.
:func:`split_noise` separates the two parts of a composed model. :attr:`NoiseModel.level`
is a model's sigma (None for models whose magnitude is not a sigma) and
:meth:`NoiseModel.scaled` multiplies the magnitude: sigma, the stuck-at probabilities or a
device fit's ``scale``; models without one (``quant``, ``none``) refuse to be scaled.

Spec strings (:func:`parse_noise_spec`): ``name:key=value,key=value``; models are composed
with ``+`` and applied left to right, e.g. ``gaussian:sigma=0.02,scale=tile,tile=64``,
``saf:p0=0.01,p1=0.01``, ``wan2022:t=1d``, ``gaussian:sigma=0.01+saf:p0=0.001,p1=0.001``.
``none`` (alias ``clean``) is the identity. :meth:`NoiseModel.spec` gives the canonical
string with every key spelled out; ``parse_noise_spec(m.spec()) == m``.

Time after programming: ``wan2022``, ``cmo``, ``cmo_read`` and ``pcm`` take ``t`` (seconds,
or ``1s``, ``1h``, ``1d``, ``1w``, ``1mo``, ``1y``); :func:`at_time` / :func:`at_times` re-time a
spec within each fit's validity (:class:`TimeRange`), and one chip seed at several times is
one chip ageing (the same draws at every ``t``). :func:`reference_model` is the chip right
after programming, the reference of drift compensation (:class:`halora.cim.Chip`).

Every model computes in float32 whatever the weight's dtype, takes all randomness from the
``torch.Generator`` it is given, returns a new tensor of the weight's shape, dtype and
device, and never modifies its input. Draws are made on the generator's device and moved
to the weight's; chips use CPU generators, so a chip seed draws the same noise on any device.
"""

from halora.noise.ageing import (
    TIME_DEPENDENT,
    at_time,
    at_times,
    extrapolations,
    is_time_dependent,
    parse_time,
    parse_times,
    reference_model,
    retime,
)
from halora.noise.base import Chain, NoiseModel, NoNoise, TimeRange, split_noise
from halora.noise.devices import (
    CMO_G_RANGE,
    CMO_PROGRAMMING,
    CMO_READ_K,
    CMO_READ_TIMES,
    CMO_RELAXATION_MEAN,
    CMO_RELAXATION_STD,
    CMO_T_READ,
    CMO_TIMES,
    TEN_YEARS,
    WAN2022_COEFFS,
    WAN2022_TIMES,
    CmoNoise,
    CmoReadNoise,
    Wan2022Noise,
)
from halora.noise.faults import Quantization, StuckAtFaults
from halora.noise.mapping import (
    AIHWKIT_TILE,
    DEFAULT_TILE,
    FULL,
    SPLITS,
    DifferentialPair,
    SingleDevice,
    Tile,
    TileLayout,
    TileScale,
    tile_reference,
)
from halora.noise.pcm import (
    PCM_G_MAX,
    PCM_NU_MEAN,
    PCM_NU_STD,
    PCM_PROG_COEFFS,
    PCM_Q,
    PCM_T0,
    PCM_T_READ,
    PCM_TIMES,
    PcmNoise,
)
from halora.noise.spec import GAUSSIAN_TEMPLATE, NOISE_MODELS, parse_noise_spec
from halora.noise.weight import GaussianNoise, LognormalNoise, MultiplicativeNoise, ReadNoise

__all__ = [
    "AIHWKIT_TILE",
    "FULL",
    "GAUSSIAN_TEMPLATE",
    "SPLITS",
    "CMO_G_RANGE",
    "CMO_PROGRAMMING",
    "CMO_READ_K",
    "CMO_READ_TIMES",
    "CMO_RELAXATION_MEAN",
    "CMO_RELAXATION_STD",
    "CMO_T_READ",
    "CMO_TIMES",
    "DEFAULT_TILE",
    "NOISE_MODELS",
    "PCM_G_MAX",
    "PCM_NU_MEAN",
    "PCM_NU_STD",
    "PCM_PROG_COEFFS",
    "PCM_Q",
    "PCM_T0",
    "PCM_TIMES",
    "PCM_T_READ",
    "TEN_YEARS",
    "TIME_DEPENDENT",
    "WAN2022_COEFFS",
    "WAN2022_TIMES",
    "Chain",
    "CmoNoise",
    "CmoReadNoise",
    "DifferentialPair",
    "GaussianNoise",
    "LognormalNoise",
    "MultiplicativeNoise",
    "NoNoise",
    "NoiseModel",
    "PcmNoise",
    "Quantization",
    "ReadNoise",
    "SingleDevice",
    "StuckAtFaults",
    "Tile",
    "TileLayout",
    "TileScale",
    "TimeRange",
    "Wan2022Noise",
    "at_time",
    "at_times",
    "extrapolations",
    "is_time_dependent",
    "parse_noise_spec",
    "parse_time",
    "parse_times",
    "reference_model",
    "retime",
    "split_noise",
    "tile_reference",
]
