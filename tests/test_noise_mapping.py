"""Tests for halora.noise.mapping: the weight <-> conductance mapping the device models share."""

from __future__ import annotations

import pytest
import torch

from halora.errors import UsageError
from halora.noise import (
    CmoNoise,
    CmoReadNoise,
    DifferentialPair,
    Quantization,
    SingleDevice,
    StuckAtFaults,
    Wan2022Noise,
    tile_reference,
)


def weight_with_zero_tile() -> torch.Tensor:
    """130x70 (edge tiles of 2 rows and 6 columns), the top-left 64x64 tile all zero."""
    w = torch.randn(130, 70, generator=torch.Generator().manual_seed(0))
    w[:64, :64] = 0.0
    return w


def test_differential_pair_conductances():
    w = weight_with_zero_tile()
    pair = DifferentialPair((64, 64), gmin=2.0, gmax=42.0)
    g_pos, g_neg, scale = pair.to_conductance(w)
    ref = tile_reference(w, 64)
    assert torch.equal(scale.reference, ref)
    active = torch.where(w > 0, g_pos, g_neg)
    inactive = torch.where(w > 0, g_neg, g_pos)
    nonzero = ref > 0
    expected = 2.0 + w.abs() / torch.where(nonzero, ref, 1.0) * 40.0
    torch.testing.assert_close(active, expected)
    assert torch.equal(inactive[w != 0], torch.full_like(inactive[w != 0], 2.0))
    # the tile's largest |W| drives its active device to gmax
    at_max = (w.abs() == ref) & nonzero
    torch.testing.assert_close(active[at_max], torch.full_like(active[at_max], 42.0))
    back = pair.to_weight(g_pos, g_neg, scale)
    torch.testing.assert_close(back, w, rtol=1e-5, atol=1e-6)
    assert torch.equal(back[:64, :64], torch.zeros(64, 64))


def test_single_device_conductances():
    w = weight_with_zero_tile()
    device = SingleDevice((64, 64), gmin=9.0, gmax=88.2)
    assert device.mid == pytest.approx(48.6)
    g, scale = device.to_conductance(w)
    ref = tile_reference(w, 64)
    at_max = (w.abs() == ref) & (ref > 0)
    torch.testing.assert_close(g[at_max], torch.where(w[at_max] > 0, 88.2, 9.0))
    assert (g >= 9.0 - 1e-4).all() and (g <= 88.2 + 1e-4).all()
    assert torch.equal(g[:64, :64], torch.full((64, 64), device.mid))  # weight 0 at mid-range
    back = device.to_weight(g.clone(), scale)
    torch.testing.assert_close(back, w, rtol=1e-5, atol=1e-5)
    assert torch.equal(back[:64, :64], torch.zeros(64, 64))


def test_full_scale_is_the_tile_reference_everywhere_and_at_cells():
    w = weight_with_zero_tile()
    pair = DifferentialPair((32, 48), gmin=0.0, gmax=1.0)
    full = pair.full_scale(w)
    assert torch.equal(full, tile_reference(w, (32, 48)))
    rows = torch.tensor([0, 31, 32, 129, 100])
    cols = torch.tensor([0, 47, 48, 69, 5])
    assert torch.equal(pair.full_scale_at(w, rows, cols), full[rows, cols])


@pytest.mark.parametrize("cls", [DifferentialPair, SingleDevice])
def test_mapping_rejects_bad_ranges_and_tiles(cls):
    with pytest.raises(UsageError, match="gmin < gmax"):
        cls((64, 64), gmin=5.0, gmax=5.0)
    with pytest.raises(UsageError, match="gmin < gmax"):
        cls((64, 64), gmin=-1.0, gmax=5.0)
    with pytest.raises(UsageError, match="tile sizes"):
        cls((0, 64), gmin=0.0, gmax=5.0)
    assert cls(32, gmin=1.0, gmax=2.0).tile == (32, 32)


def test_device_models_share_the_mapping_objects():
    assert Wan2022Noise(gmax=20.0, tile=32).mapping == DifferentialPair((32, 32), gmin=0.0, gmax=20.0)
    assert StuckAtFaults(p0=0.1).mapping == DifferentialPair((64, 64), gmin=0.0, gmax=1.0)
    assert Quantization(levels=7, tile=(8, 16)).mapping == DifferentialPair((8, 16), gmin=0.0, gmax=1.0)
    assert CmoNoise().mapping == SingleDevice((64, 64), gmin=9.0, gmax=88.2)
    assert CmoReadNoise(gmin=1.0, gmax=50.0).mapping == SingleDevice((64, 64), gmin=1.0, gmax=50.0)


def test_cmo_without_noise_sources_is_the_mapping_round_trip():
    """CMO read noise vanishes at g = 1 µS (|log10 g| = 0): a tile of +-max maps to gmin = 1."""
    w = torch.zeros(64, 64)
    w[::2] = -1.0
    out = CmoReadNoise(t=1.0, gmin=1.0, gmax=50.0).apply(w, torch.Generator().manual_seed(0))
    mapping = SingleDevice((64, 64), gmin=1.0, gmax=50.0)
    g, scale = mapping.to_conductance(w)
    assert torch.equal(out[::2], mapping.to_weight(g, scale)[::2])
