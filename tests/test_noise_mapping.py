"""Tests for halora.noise.mapping: the weight <-> conductance mapping the device models share."""

from __future__ import annotations

import pytest
import torch

from halora.errors import UsageError
from halora.noise import (
    AIHWKIT_TILE,
    FULL,
    CmoNoise,
    CmoReadNoise,
    DifferentialPair,
    GaussianNoise,
    Quantization,
    SingleDevice,
    StuckAtFaults,
    Wan2022Noise,
    parse_noise_spec,
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


# ----------------------------------------------------------------------------- aihwkit tiling


def aihwkit_split_sizes(size: int, max_size: int) -> list[int]:
    """IBM aihwkit's TileModuleArray.get_split_sizes: ceil(size / max) near-equal pieces."""
    if max_size <= 0:
        return [size]
    n_splits = (size + max_size - 1) // max_size
    base, extra = divmod(size, n_splits)
    return [base + (i < extra) for i in range(n_splits)]


def naive_reference(w: torch.Tensor, row_sizes: list[int], col_sizes: list[int]) -> torch.Tensor:
    """max|W| per block of the given row and column sizes, looped."""
    out = torch.empty_like(w)
    r0 = 0
    for rows in row_sizes:
        c0 = 0
        for cols in col_sizes:
            block = (slice(r0, r0 + rows), slice(c0, c0 + cols))
            out[block] = w[block].abs().max()
            c0 += cols
        r0 += rows
    return out


@pytest.mark.parametrize(
    ("shape", "tile"), [((576, 1536), 512), ((577, 1300), 512), ((130, 70), 64), ((200, 50), (48, 16))]
)
def test_even_split_is_aihwkits_tiling(shape, tile):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    tr, tc = (tile, tile) if isinstance(tile, int) else tile
    expected = naive_reference(w, aihwkit_split_sizes(shape[0], tr), aihwkit_split_sizes(shape[1], tc))
    assert torch.equal(tile_reference(w, tile, "even"), expected)
    pair = DifferentialPair(tile, gmin=0.0, gmax=1.0, split="even")
    assert torch.equal(pair.full_scale(w), expected)
    rows = torch.tensor([0, shape[0] - 1, shape[0] // 2, 289 % shape[0]])
    cols = torch.tensor([0, shape[1] - 1, shape[1] // 3, 433 % shape[1]])
    assert torch.equal(pair.full_scale_at(w, rows, cols), expected[rows, cols])


def test_even_split_differs_from_fixed_tiles_where_aihwkit_does():
    """SmolLM2's 576-wide q_proj: aihwkit cuts 288 + 288, fixed 512 tiles cut 512 + 64."""
    w = torch.randn(576, 576, generator=torch.Generator().manual_seed(2))
    assert torch.equal(tile_reference(w, 512, "even"), tile_reference(w, 288))
    assert not torch.equal(tile_reference(w, 512, "even"), tile_reference(w, 512))
    assert AIHWKIT_TILE == (512, 512)


def test_full_tile_is_the_whole_matrix_also_per_dimension():
    w = torch.randn(130, 70, generator=torch.Generator().manual_seed(3))
    for split in ("fixed", "even"):
        assert torch.equal(tile_reference(w, FULL, split), torch.full_like(w, w.abs().max().item()))
    per_column_block = naive_reference(w, [130], [32, 32, 6])
    assert torch.equal(tile_reference(w, (FULL, 32)), per_column_block)
    assert Wan2022Noise(tile=FULL).mapping.full_scale(w).unique().tolist() == [w.abs().max().item()]


@pytest.mark.parametrize(
    ("text", "tile", "canonical"),
    [
        ("full", (FULL, FULL), "full"),
        ("FULLx512", (FULL, 512), "fullx512"),
        ("64xfull", (64, FULL), "64xfull"),
    ],
)
def test_full_tile_in_specs(text, tile, canonical):
    model = parse_noise_spec(f"gaussian:sigma=0.02,tile={text}")
    assert model.tile == tile
    assert model.spec() == f"gaussian:sigma=0.02,scale=tile,tile={canonical}"
    assert parse_noise_spec(model.spec()) == model
    assert GaussianNoise(0.02, tile=text.lower()) == model


@pytest.mark.parametrize(
    "spec",
    [
        "gaussian:sigma=0.02,tile=512,split=even",
        "read:sigma=0.01,tile=full",
        "saf:p0=0.01,tile=512,split=even",
        "quant:bits=4,tile=512,split=even",
        "wan2022:t=1,tile=512,split=even,gmax=25",
        "cmo:accept=0.2,tile=512,split=even",
        "cmo_read:tile=full,split=even",
    ],
)
def test_every_tiled_model_takes_split_and_full_tiles(spec):
    model = parse_noise_spec(spec)
    assert parse_noise_spec(model.spec()) == model
    assert ("split=even" in model.spec()) == ("split=even" in spec)
    w = torch.randn(576, 200, generator=torch.Generator().manual_seed(4)) * 0.05
    out = model.apply(w, torch.Generator().manual_seed(5))
    assert out.shape == w.shape and torch.isfinite(out).all()


def test_split_fixed_is_the_default_and_left_out_of_specs():
    assert parse_noise_spec("wan2022:split=fixed").spec() == "wan2022:t=1,tile=64,gmax=40"
    assert parse_noise_spec("gaussian:sigma=0.02,split=FIXED") == GaussianNoise(0.02)
    with pytest.raises(UsageError, match="split must be one of fixed, even"):
        parse_noise_spec("saf:p0=0.1,split=balanced")
    with pytest.raises(UsageError, match="split must be one of fixed, even"):
        DifferentialPair(64, gmin=0.0, gmax=1.0, split="balanced")


def test_gaussian_noise_follows_the_even_tiles():
    w = torch.randn(577, 300, generator=torch.Generator().manual_seed(6))
    out = GaussianNoise(0.02, tile=512, split="even").apply(w, torch.Generator().manual_seed(7))
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(7))
    expected = noise * naive_reference(w, [289, 288], [300]) * 0.02 + w
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
