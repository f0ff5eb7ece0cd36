"""Tests for NoiseModel.level and NoiseModel.scaled: a model's magnitude and the same model
with it multiplied (how training ramps the noise up)."""

from __future__ import annotations

import pytest
import torch

from halora.errors import UsageError
from halora.noise import (
    NOISE_MODELS,
    Chain,
    GaussianNoise,
    LognormalNoise,
    MultiplicativeNoise,
    NoNoise,
    ReadNoise,
    StuckAtFaults,
    parse_noise_spec,
)

# One spec per registered model and the level it should report.
LEVELS = {
    "none": ("none", None),
    "gaussian": ("gaussian:sigma=0.02,scale=channel,tile=32", 0.02),
    "read": ("read:sigma=0.01", 0.01),
    "multiplicative": ("multiplicative:sigma=0.05", 0.05),
    "lognormal": ("lognormal:sigma=0.1", 0.1),
    "saf": ("saf:p0=0.01,p1=0.01", None),
    "quant": ("quant:bits=4", None),
    "wan2022": ("wan2022:t=1d", None),
    "cmo": ("cmo:t=1d,accept=0.2", None),
    "cmo_read": ("cmo_read:t=1", None),
}


def test_levels_cover_every_registered_model():
    assert set(LEVELS) == set(NOISE_MODELS)


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_level_is_sigma_or_none(name):
    spec, level = LEVELS[name]
    assert parse_noise_spec(spec).level == level


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_scaled_by_one_is_the_same_object(name):
    model = parse_noise_spec(LEVELS[name][0])
    assert model.scaled(1.0) is model


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_scaled_multiplies_sigma_and_keeps_everything_else(name):
    spec, level = LEVELS[name]
    model = parse_noise_spec(spec)
    half = model.scaled(0.5)
    if level is None:
        assert half is model  # no magnitude: unchanged
    else:
        assert type(half) is type(model)
        assert half.level == level * 0.5
        assert half.spec() == model.spec().replace(f"sigma={level}", f"sigma={level * 0.5}")


def test_chain_level_is_the_first_magnitude_and_scaled_touches_only_sigma_parts():
    chain = parse_noise_spec("gaussian:sigma=0.02+saf:p0=0.01,p1=0.01")
    assert chain.level == 0.02
    assert chain.scaled(0.5) == Chain((GaussianNoise(0.01), StuckAtFaults(p0=0.01, p1=0.01)))
    assert chain.scaled(1.0) is chain
    # the first part with a magnitude, wherever it is
    later = parse_noise_spec("saf:p1=0.1+read:sigma=0.03+gaussian:sigma=0.02")
    assert later.level == 0.03
    assert parse_noise_spec("saf:p1=0.1+quant:bits=4").level is None
    scaled = parse_noise_spec("lognormal:sigma=0.2+none+multiplicative:sigma=0.4").scaled(0.25)
    assert scaled == Chain((LognormalNoise(0.05), NoNoise(), MultiplicativeNoise(0.1)))


def test_scaled_to_zero_is_clean_and_negative_is_rejected():
    w = torch.randn(70, 130, generator=torch.Generator().manual_seed(0))
    zero = GaussianNoise(0.02).scaled(0.0)
    assert zero == GaussianNoise(0.0) and zero.level == 0.0
    assert torch.equal(zero.apply(w, torch.Generator().manual_seed(1)), w)
    with pytest.raises(UsageError, match="sigma must be a finite number >= 0"):
        ReadNoise(0.01).scaled(-1.0)


def test_scaled_model_draws_the_same_normal_matrix():
    w = torch.randn(128, 64, generator=torch.Generator().manual_seed(2))
    scaled = GaussianNoise(0.04).scaled(0.5).apply(w, torch.Generator().manual_seed(3))
    direct = GaussianNoise(0.02).apply(w, torch.Generator().manual_seed(3))
    assert torch.equal(scaled, direct)
