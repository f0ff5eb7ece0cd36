"""Tests for NoiseModel.level and NoiseModel.scaled: a model's sigma, and the same model with
its magnitude multiplied (how the training curriculum ramps the noise up from 0)."""

from __future__ import annotations

import pytest
import torch

from halora.errors import UsageError
from halora.noise import (
    NOISE_MODELS,
    Chain,
    CmoNoise,
    GaussianNoise,
    LognormalNoise,
    MultiplicativeNoise,
    NoNoise,
    Quantization,
    ReadNoise,
    StuckAtFaults,
    Wan2022Noise,
    parse_noise_spec,
)

# One spec per registered model, the level it reports, and its canonical spec scaled by 0.5
# (None: the model has no magnitude and refuses to be scaled).
LEVELS = {
    "none": ("none", None, None),
    "gaussian": (
        "gaussian:sigma=0.02,scale=channel,tile=32",
        0.02,
        "gaussian:sigma=0.01,scale=channel,tile=32",
    ),
    "read": ("read:sigma=0.01", 0.01, "read:sigma=0.005,scale=tile,tile=64"),
    "multiplicative": ("multiplicative:sigma=0.05", 0.05, "multiplicative:sigma=0.025"),
    "lognormal": ("lognormal:sigma=0.1", 0.1, "lognormal:sigma=0.05"),
    "saf": ("saf:p0=0.01,p1=0.02", None, "saf:p0=0.005,p1=0.01,tile=64"),
    "quant": ("quant:bits=4", None, None),
    "wan2022": ("wan2022:t=1d", None, "wan2022:t=86400,tile=64,gmax=40,strength=0.5"),
    "cmo": ("cmo:t=1d,accept=0.2", None, "cmo:t=86400,accept=0.2,tile=64,gmin=9,gmax=88.2,strength=0.5"),
    "cmo_read": ("cmo_read:t=1", None, "cmo_read:t=1,tile=64,gmin=9,gmax=88.2,strength=0.5"),
    "pcm": ("pcm:t=1d", None, "pcm:t=86400,prog=1,drift=1,read=1,tile=64,strength=0.5"),
}
SCALABLE = sorted(name for name, (_, _, half) in LEVELS.items() if half is not None)


def test_levels_cover_every_registered_model():
    assert set(LEVELS) == set(NOISE_MODELS)


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_level_is_sigma_or_none(name):
    spec, level, _ = LEVELS[name]
    assert parse_noise_spec(spec).level == level


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_scaled_by_one_is_the_same_object(name):
    model = parse_noise_spec(LEVELS[name][0])
    assert model.scaled(1.0) is model


@pytest.mark.parametrize("name", SCALABLE)
def test_scaled_multiplies_the_magnitude_and_keeps_everything_else(name):
    spec, level, half_spec = LEVELS[name]
    model = parse_noise_spec(spec)
    half = model.scaled(0.5)
    assert type(half) is type(model)
    assert half.spec() == half_spec
    assert parse_noise_spec(half_spec) == half
    assert half.level == (None if level is None else level * 0.5)


@pytest.mark.parametrize("name", ["none", "quant"])
def test_models_without_a_magnitude_refuse_to_be_scaled(name):
    model = parse_noise_spec(LEVELS[name][0])
    for factor in (0.0, 0.5, 2.0):
        with pytest.raises(UsageError) as info:
            model.scaled(factor)
        message = str(info.value)
        assert f"'{name}'" in message and "curriculum can only ramp models with a magnitude" in message


def test_device_strength_is_a_spec_key_written_only_when_not_one():
    assert parse_noise_spec("wan2022:t=1").spec() == "wan2022:t=1,tile=64,gmax=40"
    assert parse_noise_spec("wan2022:strength=1").spec() == "wan2022:t=1,tile=64,gmax=40"
    assert parse_noise_spec("cmo:strength=0.25") == CmoNoise(strength=0.25)
    assert Wan2022Noise(strength=2.0).scaled(0.25) == Wan2022Noise(strength=0.5)
    with pytest.raises(UsageError, match="strength .* must be a finite number >= 0"):
        parse_noise_spec("wan2022:strength=-1")
    with pytest.raises(UsageError, match="strength .* must be a finite number >= 0"):
        CmoNoise().scaled(-1.0)


def test_chain_level_is_the_first_sigma_and_scaled_scales_every_part():
    chain = parse_noise_spec("gaussian:sigma=0.02+saf:p0=0.01,p1=0.01")
    assert chain.level == 0.02
    assert chain.scaled(0.5) == Chain((GaussianNoise(0.01), StuckAtFaults(p0=0.005, p1=0.005)))
    assert chain.scaled(1.0) is chain
    # the first part with a sigma, wherever it is
    later = parse_noise_spec("saf:p1=0.1+read:sigma=0.03+gaussian:sigma=0.02")
    assert later.level == 0.03
    assert parse_noise_spec("saf:p1=0.1+quant:bits=4").level is None
    assert parse_noise_spec("wan2022+read:sigma=0.01").level == 0.01
    scaled = parse_noise_spec("lognormal:sigma=0.2+wan2022+multiplicative:sigma=0.4").scaled(0.25)
    assert scaled == Chain((LognormalNoise(0.05), Wan2022Noise(strength=0.25), MultiplicativeNoise(0.1)))


@pytest.mark.parametrize("spec", ["gaussian:sigma=0.02+quant:bits=4", "none+gaussian:sigma=0.02"])
def test_chain_refuses_when_a_part_has_no_magnitude(spec):
    with pytest.raises(UsageError, match="no magnitude"):
        parse_noise_spec(spec).scaled(0.5)
    assert parse_noise_spec(spec).scaled(1.0) == parse_noise_spec(spec)


def test_scaled_to_zero_and_negative():
    zero = GaussianNoise(0.02).scaled(0.0)
    assert zero == GaussianNoise(0.0) and zero.level == 0.0
    with pytest.raises(UsageError, match=r"sigma must be a finite number in \[0, 10\]"):
        ReadNoise(0.01).scaled(-1.0)
    with pytest.raises(UsageError, match="p0 is a probability"):
        StuckAtFaults(p0=0.1).scaled(-1.0)


ZERO_SHAPES = [(128, 192), (70, 130)]  # a whole number of 64x64 tiles, and edge tiles


@pytest.mark.parametrize("shape", ZERO_SHAPES)
@pytest.mark.parametrize("name", SCALABLE)
def test_scaled_to_zero_is_the_clean_weight_bit_for_bit(name, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.05
    w[:3, :5] = 0.0
    zero = parse_noise_spec(LEVELS[name][0]).scaled(0.0)
    for weight in (w, w.bfloat16()):
        out = zero.apply(weight, torch.Generator().manual_seed(1))
        assert out.dtype == weight.dtype and torch.equal(out, weight)


def test_scaled_to_zero_chain_of_every_scalable_model_is_clean():
    chain = parse_noise_spec("+".join(LEVELS[name][0] for name in SCALABLE))
    w = torch.randn(70, 130, generator=torch.Generator().manual_seed(2))
    assert torch.equal(chain.scaled(0.0).apply(w, torch.Generator().manual_seed(3)), w)


@pytest.mark.parametrize("name", SCALABLE)
def test_scaled_models_draw_as_many_numbers_at_every_level(name):
    """A chain's later parts see the same draws all along a curriculum."""
    model = parse_noise_spec(LEVELS[name][0])
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(4))
    states = []
    for factor in (0.0, 0.5, 1.0):
        g = torch.Generator().manual_seed(5)
        model.scaled(factor).apply(w, g)
        states.append(g.get_state())
    assert all(torch.equal(state, states[0]) for state in states)


def test_scaled_model_draws_the_same_normal_matrix():
    w = torch.randn(128, 64, generator=torch.Generator().manual_seed(2))
    scaled = GaussianNoise(0.04).scaled(0.5).apply(w, torch.Generator().manual_seed(3))
    direct = GaussianNoise(0.02).apply(w, torch.Generator().manual_seed(3))
    assert torch.equal(scaled, direct)


def test_quantization_and_none_keep_their_identity_at_factor_one():
    assert Quantization(levels=7).scaled(1.0) == Quantization(levels=7)
    assert NoNoise().scaled(1.0) == NoNoise()
