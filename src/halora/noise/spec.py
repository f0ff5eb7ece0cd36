"""Spec strings: ``name:key=value,...`` parsed into models, ``+`` composing them.

The registry :data:`NOISE_MODELS` maps each spec name to its class; a class's dataclass
fields are its keys and its ``_KEYS`` parse their values.
"""

from __future__ import annotations

import re

from halora.errors import UsageError
from halora.noise.base import Chain, NoiseModel, NoNoise
from halora.noise.devices import CmoNoise, CmoReadNoise, Wan2022Noise
from halora.noise.faults import Quantization, StuckAtFaults
from halora.noise.pcm import PcmNoise
from halora.noise.weight import GaussianNoise, LognormalNoise, MultiplicativeNoise, ReadNoise

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
        PcmNoise,
        ReadNoise,
    )
}
"""Registry: spec name -> class (``none`` also answers to ``clean``)."""

GAUSSIAN_TEMPLATE = "gaussian:sigma={sigma},scale=tile,tile=64"
"""The paper's chip at one level: additive Gaussian noise scaled by each 64x64 tile's max|W|
(HaLoRA's block partition); training noise, sweeps, the demo and the study fill in sigma."""

_ALIASES = {"clean": "none"}

# '+' joins models, but not inside a number's exponent such as 1e+06.
_JOIN = re.compile(r"(?<![0-9.][eE])\+")


def _model_list() -> str:
    return ", ".join(n + (" (alias clean)" if n == "none" else "") for n in NOISE_MODELS)


def _model_class(head: str, spec: str) -> type[NoiseModel]:
    name = head.strip().lower()
    cls = NOISE_MODELS.get(_ALIASES.get(name, name))
    if cls is None:
        raise UsageError(f"unknown noise model {head.strip()!r} in {spec!r}; valid models: {_model_list()}")
    return cls


def _parse_params(rest: str, cls: type[NoiseModel], spec: str) -> dict[str, str]:
    """``key -> value text`` of ``k=v,k=v``, keys lower-cased and checked against ``cls``."""
    params: dict[str, str] = {}
    if not rest.strip():
        return params
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
                f"unknown key {key!r} for noise model {cls.name!r} in {spec!r}; valid keys: {valid}"
            )
        if key in params:
            raise UsageError(f"noise spec {spec!r}: key {key!r} given twice for {cls.name!r}")
        params[key] = value
    return params


def _parse_one(part: str, spec: str) -> NoiseModel:
    if not part:
        raise UsageError(
            f"noise spec {spec!r} has an empty part; join models with '+', "
            "e.g. 'gaussian:sigma=0.01+saf:p0=0.001'"
        )
    head, _, rest = part.partition(":")
    cls = _model_class(head, spec)
    params = _parse_params(rest, cls, spec)
    try:
        return cls._from_params(params)
    except UsageError as exc:
        raise UsageError(f"bad noise spec {spec!r}: {exc}") from None


def parse_noise_spec(spec: str) -> NoiseModel:
    """Parse ``name:key=value,...`` (models joined with ``+``) into a model.

    One part gives that model, several give a :class:`~halora.noise.base.Chain`. Raises
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
