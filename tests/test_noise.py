"""Tests for halora.noise: realised statistics against the published fits, spec grammar,
determinism, dtypes and error messages. CPU only, a few seconds."""

from __future__ import annotations

import math

import pytest
import torch

from halora.errors import UsageError
from halora.noise import (
    CMO_PROGRAMMING,
    CMO_READ_K,
    CMO_RELAXATION_MEAN,
    CMO_RELAXATION_STD,
    CMO_T_READ,
    NOISE_MODELS,
    WAN2022_COEFFS,
    Chain,
    CmoNoise,
    CmoReadNoise,
    GaussianNoise,
    NoiseModel,
    NoNoise,
    Quantization,
    ReadNoise,
    StuckAtFaults,
    Wan2022Noise,
    parse_noise_spec,
    split_noise,
    tile_reference,
)

# One example spec per registered model (the coverage test below keeps this complete).
EXAMPLES = {
    "none": "none",
    "gaussian": "gaussian:sigma=0.02,scale=tile,tile=32x64",
    "multiplicative": "multiplicative:sigma=0.05",
    "lognormal": "lognormal:sigma=0.05",
    "saf": "saf:p0=0.01,p1=0.02,tile=16",
    "quant": "quant:bits=4,tile=64",
    "wan2022": "wan2022:t=2d,tile=64,gmax=40",
    "cmo": "cmo:t=86400,accept=0.2,tile=64,gmin=9,gmax=88.2",
    "cmo_read": "cmo_read:t=1e+03,tile=32",
    "pcm": "pcm:t=1d,tile=32",
    "read": "read:sigma=0.01,scale=channel",
}
DETERMINISTIC = {"none", "quant"}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_tile_max(w: torch.Tensor, tr: int, tc: int) -> torch.Tensor:
    """Reference implementation: loop over tiles."""
    out = torch.empty_like(w)
    for i in range(0, w.shape[0], tr):
        for j in range(0, w.shape[1], tc):
            block = w[i : i + tr, j : j + tc]
            out[i : i + tr, j : j + tc] = block.abs().max()
    return out


def tiled_weight(rows: int, cols: int, tile: int = 64, seed: int = 1) -> torch.Tensor:
    """Random weights whose tiles have very different scales (0.01 .. 10)."""
    g = gen(seed)
    w = torch.randn(rows, cols, generator=g)
    n_r, n_c = -(-rows // tile), -(-cols // tile)
    scales = 10 ** (torch.rand(n_r, n_c, generator=g) * 3 - 2)
    full = scales.repeat_interleave(tile, 0).repeat_interleave(tile, 1)[:rows, :cols]
    return w * full


def per_tile(values: torch.Tensor, tr: int, tc: int):
    """Yield (tile index, flattened values of that tile), edge tiles included."""
    for i in range(0, values.shape[-2], tr):
        for j in range(0, values.shape[-1], tc):
            yield (i // tr, j // tc), values[..., i : i + tr, j : j + tc].reshape(-1)


def draws(model: NoiseModel, w: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` independent chips: stacked ``apply`` outputs, shape [n, *w.shape]."""
    g = gen(seed)
    return torch.stack([model.apply(w, g) for _ in range(n)])


def rectified_moments(mu: float, s: float) -> tuple[float, float]:
    """Mean and variance of max(0, X), X ~ N(mu, s^2)."""
    a = mu / s
    cdf = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    pdf = math.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    m1 = mu * cdf + s * pdf
    m2 = (mu * mu + s * s) * cdf + mu * s * pdf
    return m1, m2 - m1 * m1


# ----------------------------------------------------------------------------- tiles


@pytest.mark.parametrize("tile", [(64, 64), (32, 64), (7, 5)])
def test_tile_reference_matches_naive_loop_with_edge_tiles(tile):
    w = tiled_weight(200, 130)
    ref = tile_reference(w, tile)
    assert ref.shape == w.shape
    assert torch.equal(ref, naive_tile_max(w, *tile))


def test_tile_reference_accepts_int_tile_and_non_contiguous_input():
    w = tiled_weight(130, 200).t()  # a transposed, non-contiguous view
    assert not w.is_contiguous()
    assert torch.equal(tile_reference(w, 64), naive_tile_max(w, 64, 64))


# ----------------------------------------------------------------------------- gaussian


@pytest.mark.parametrize("tile", [(64, 64), (32, 48)])
def test_gaussian_tile_scaled_std_per_tile_including_edge_tiles(tile):
    w = tiled_weight(180, 150)  # edge tiles of 52 (or 20) rows and 22 (or 6) columns
    sigma = 0.02
    model = GaussianNoise(sigma=sigma, tile=tile)
    out = draws(model, w, 20)
    z = (out - w) / (sigma * naive_tile_max(w, *tile))
    for index, values in per_tile(z, *tile):
        # 5 standard errors of a sample std (the smallest tile: 20x6 elements x 20 draws)
        tol = 5 / math.sqrt(2 * values.numel()) + 0.005
        assert abs(values.std().item() - 1) < tol, index
        assert abs(values.mean().item()) < 5 / math.sqrt(values.numel()), index


def test_gaussian_fast_path_equals_full_reference_formula():
    w = tiled_weight(256, 192)  # a multiple of the tile: the broadcast fast path
    out = GaussianNoise(sigma=0.01).apply(w, gen(3))
    noise = torch.randn(w.shape, generator=gen(3), dtype=torch.float32)
    expected = w + 0.01 * tile_reference(w, 64) * noise
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


def test_gaussian_channel_tensor_abs_scales():
    w = tiled_weight(64, 4096)
    sigma = 0.05
    row_max = w.abs().amax(dim=1, keepdim=True)
    expected_ref = {
        "channel": row_max.expand_as(w),
        "tensor": w.abs().max().expand_as(w),
        "abs": torch.ones_like(w),
    }
    for scale, ref in expected_ref.items():
        out = GaussianNoise(sigma=sigma, scale=scale).apply(w, gen())
        per_row_std = ((out - w) / (sigma * ref)).std(dim=1)  # 4096 samples per row
        assert (per_row_std - 1).abs().max().item() < 0.06, scale
    # the scales really differ: the same draw, different references
    a = GaussianNoise(sigma=sigma, scale="tile").apply(w, gen(5)) - w
    b = GaussianNoise(sigma=sigma, scale="abs").apply(w, gen(5)) - w
    atol = 1e-6 * w.abs().max().item()  # W + n - W loses a few ulps of W
    torch.testing.assert_close(a, b * tile_reference(w, 64), rtol=1e-4, atol=atol)


def test_gaussian_sigma_zero_and_zero_tile_are_clean():
    w = tiled_weight(128, 128)
    assert torch.equal(GaussianNoise(sigma=0.0).apply(w, gen()), w)
    w[:64, :64] = 0
    out = GaussianNoise(sigma=0.1).apply(w, gen())
    assert torch.equal(out[:64, :64], torch.zeros(64, 64))
    assert not torch.equal(out[64:, 64:], w[64:, 64:])


# ----------------------------------------------------------------------------- multiplicative


def test_multiplicative_and_lognormal_realised_statistics():
    w = torch.randn(500, 400, generator=gen(2))
    w[w.abs() < 1e-3] = 1.0  # avoid dividing by ~0
    sigma = 0.1
    ratio = parse_noise_spec(f"multiplicative:sigma={sigma}").apply(w, gen()) / w
    assert abs((ratio - 1).std().item() - sigma) < 0.02 * sigma
    assert abs((ratio - 1).mean().item()) < 5 * sigma / math.sqrt(w.numel())

    ratio = parse_noise_spec(f"lognormal:sigma={sigma}").apply(w, gen()) / w
    assert (ratio > 0).all()  # signs never flip
    log_ratio = ratio.log()
    assert abs(log_ratio.std().item() - sigma) < 0.02 * sigma
    assert abs(ratio.median().item() - 1) < 0.002  # median-preserving (the documented choice)
    assert abs(ratio.mean().item() - math.exp(sigma**2 / 2)) < 0.001  # hence mean-biased

    zeros = torch.zeros(8, 8)
    for spec in ("multiplicative:sigma=0.5", "lognormal:sigma=0.5"):
        assert torch.equal(parse_noise_spec(spec).apply(zeros, gen()), zeros)


# ----------------------------------------------------------------------------- stuck-at faults


def saf_outcomes(w: torch.Tensor, out: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masks of the five distinguishable results of a 0 < |W| < max|W_tile| weight."""
    sign = torch.sign(w)
    return {
        "unchanged": out == w,
        "zero": out == 0,
        "active SA1": out == sign * ref,
        "idle SA1": out == w - sign * ref,
        "active SA0 + idle SA1": out == -sign * ref,
    }


def test_saf_faults_each_device_of_the_pair_at_the_published_rates():
    w = tiled_weight(1000, 1000)
    ref = naive_tile_max(w, 64, 64)
    inside = (w != 0) & (w.abs() < ref)
    p0, p1 = 0.05, 0.1
    out = StuckAtFaults(p0=p0, p1=p1).apply(w, gen())
    healthy = 1 - p0 - p1
    # each device independently SA0 (p0), SA1 (p1) or healthy; idle SA0 changes nothing
    expected = {
        "unchanged": healthy * (1 - p1),
        "zero": p0 * (1 - p1) + p1 * p1,  # active SA0, or both SA1
        "active SA1": p1 * (1 - p1),
        "idle SA1": healthy * p1,  # the near sign flip W - sign(W) max|W_tile|
        "active SA0 + idle SA1": p0 * p1,
    }
    masks = saf_outcomes(w, out, ref)
    n = inside.sum().item()
    for outcome, p in expected.items():
        count = (masks[outcome] & inside).sum().item()
        assert abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p)), (outcome, count / n, p)
    covered = torch.stack(list(masks.values())).any(dim=0)
    assert covered[inside].all()
    # the fraction of weights with a faulty device is 1 - (1 - p0 - p1)^2
    assert abs(1 - masks["unchanged"][inside].float().mean().item() - (1 - healthy * (1 - p1))) < 0.003


def test_saf_idle_device_stuck_at_one_is_a_near_sign_flip():
    w = torch.full((128, 128), 0.25)
    w[::64, ::64] = 1.0  # tile max 1
    w[64:] *= -1
    out = StuckAtFaults(p1=0.2).apply(w, gen(3))
    flipped = (out == w - torch.sign(w)) & (w.abs() < 1)  # 0.25 -> -0.75, -0.25 -> 0.75
    assert flipped[:64].any() and flipped[64:].any()
    assert (out[flipped].sign() == -w[flipped].sign()).all()


def test_saf_cells_follow_their_two_uniform_draws_exactly():
    w = tiled_weight(130, 200)
    w[3, :7] = 0.0
    p0, p1 = 0.1, 0.2
    out = StuckAtFaults(p0=p0, p1=p1, tile=32).apply(w, gen(5))
    g = gen(5)
    u_pos, u_neg = torch.rand(w.shape, generator=g), torch.rand(w.shape, generator=g)
    ref = naive_tile_max(w, 32, 32)

    def held(healthy: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        stuck = torch.where(u < p0, torch.zeros_like(healthy), ref)
        return torch.where(u < p0 + p1, stuck, healthy)

    expected = held(w.clamp(min=0), u_pos) - held((-w).clamp(min=0), u_neg)
    assert torch.equal(out, expected)


def test_saf_zero_weights_and_extremes():
    w = torch.zeros(256, 256)
    w[::64, ::64] = 2.0  # tile max 2
    out = StuckAtFaults(p0=0.0, p1=0.5).apply(w, gen())
    zeros = w == 0
    # a zero weight has both devices at g_min: SA1 on g+ alone -> +2, on g- alone -> -2
    for value in (2.0, -2.0, 0.0):
        share = (out[zeros] == value).float().mean().item()
        assert abs(share - (0.5 if value == 0 else 0.25)) < 0.01, value
    all_sa0 = StuckAtFaults(p0=1.0, p1=0.0).apply(w, gen())
    assert torch.equal(all_sa0, torch.zeros_like(w))
    w2 = tiled_weight(100, 70)
    all_sa1 = StuckAtFaults(p0=0.0, p1=1.0).apply(w2, gen())
    assert torch.equal(all_sa1, torch.zeros_like(w2))  # g+ = g- = g_max
    assert torch.equal(StuckAtFaults(p0=0.0, p1=0.0).apply(w2, gen()), w2)


# ----------------------------------------------------------------------------- quantization


@pytest.mark.parametrize(
    ("spec", "n_levels"), [("quant:bits=3", 7), ("quant:levels=4", 4), ("quant:levels=2", 2)]
)
def test_quant_levels_and_error_bound(spec, n_levels):
    w = tiled_weight(200, 130)
    model = parse_noise_spec(spec)
    out = model.apply(w, gen(0))
    assert torch.equal(out, model.apply(w, gen(99)))  # deterministic
    ref = naive_tile_max(w, 64, 64)
    step = 2 * ref / (n_levels - 1)
    assert ((out - w).abs() <= step / 2 * (1 + 1e-5)).all()
    assert (out.abs() <= ref * (1 + 1e-6)).all()
    for index, values in per_tile(out, 64, 64):
        distinct = values.unique().numel()
        assert distinct <= n_levels, index
    # the full tiles use every level with random data
    assert out[:64, :64].unique().numel() == n_levels
    if n_levels % 2:  # odd: zero is a level and maps exactly
        z = w.clone()
        z[5, 5] = 0.0
        assert model.apply(z, gen())[5, 5].item() == 0.0


def test_quant_bits_means_symmetric_signed_levels():
    assert parse_noise_spec("quant:bits=8") == Quantization(levels=255)
    assert parse_noise_spec("quant:levels=255").spec() == "quant:bits=8,tile=64"
    assert parse_noise_spec("quant:levels=6").spec() == "quant:levels=6,tile=64"


# ----------------------------------------------------------------------------- wan2022


def test_wan2022_polynomial_matches_published_values():
    m = Wan2022Noise(t=1)
    # Wan 2022 via aihwkit's fit: about 1.6 / 2.0 / 1.1 µS at x = 0.1 / 0.5 / 1 at t = 1 s
    got = m.sigma_us(torch.tensor([0.1, 0.5, 1.0])).tolist()
    for value, published in zip(got, (1.6, 2.0, 1.1), strict=True):
        assert abs(value - published) < 0.06


@pytest.mark.parametrize("t", [1.0, 86400.0])
@pytest.mark.parametrize("x", [0.1, 0.5, 1.0])
def test_wan2022_realised_conductance_noise(t, x):
    gmax = 40.0
    w = torch.full((256, 256), x)
    w[::64, ::64] = 1.0  # every tile's max is 1: weight x -> g+ = x * gmax
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[::64, ::64] = False
    out = Wan2022Noise(t=t, gmax=gmax).apply(w, gen())
    dg = ((out - w) * gmax)[keep]  # (g+' - g+) - g-' in µS
    c = WAN2022_COEFFS[t]
    sig_x = sum(ci * x**i for i, ci in enumerate(c))
    mean_p, var_p = rectified_moments(x * gmax, sig_x)  # g+ clamped at >= 0
    mean_n, var_n = rectified_moments(0.0, c[0])  # inactive device at 0 gets sigma(0)
    expected_std = math.sqrt(var_p + var_n)
    assert abs(dg.std().item() / expected_std - 1) < 0.03
    expected_mean = mean_p - x * gmax - mean_n
    assert abs(dg.mean().item() - expected_mean) < 5 * expected_std / math.sqrt(dg.numel())


def test_wan2022_negative_weights_mirror_and_clamp():
    w = -torch.full((128, 128), 0.5)
    w[::64, ::64] = -1.0
    out = Wan2022Noise(t=86400).apply(w, gen())
    assert out.mean().item() < -0.45
    # g+ and g- are clamped at >= 0, so |W'| is at most the noisy active device's value
    zeros = torch.zeros(64, 64)
    assert torch.equal(Wan2022Noise().apply(zeros, gen()), zeros)


# ----------------------------------------------------------------------------- CMO


def cmo_weight(g_target: float, gmin: float, gmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights that map to ``g_target`` µS (tile max 1), and the mask without the max cells."""
    mid, half = (gmin + gmax) / 2, (gmax - gmin) / 2
    w = torch.full((256, 256), (g_target - mid) / half)
    w[::64, ::64] = 1.0
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[::64, ::64] = False
    return w, keep


@pytest.mark.parametrize(
    ("t", "accept"), [(0.0, 2.0), (0.0, 0.2), (1.0, 2.0), (86400.0, 2.0), (86400.0, 0.2)]
)
@pytest.mark.parametrize("g_target", [30.0, 50.0, 70.0])
def test_cmo_realised_programming_and_relaxation(t, accept, g_target):
    model = CmoNoise(t=t, accept=accept)
    half = (model.gmax - model.gmin) / 2
    w, keep = cmo_weight(g_target, model.gmin, model.gmax)
    dg = ((model.apply(w, gen()) - w) * half)[keep]
    c0, c1 = CMO_PROGRAMMING[accept]
    var = (c0 + c1 * g_target) ** 2
    mean = 0.0
    if t > 0:
        var += (CMO_RELAXATION_STD[0] * math.log(t) + CMO_RELAXATION_STD[1]) ** 2
        mean = CMO_RELAXATION_MEAN * math.log(t)
    assert abs(dg.std().item() / math.sqrt(var) - 1) < 0.03
    assert abs(dg.mean().item() - mean) < 5 * math.sqrt(var / dg.numel()) + 1e-4


def test_cmo_clamps_to_conductance_range():
    w = tiled_weight(128, 128)
    out = CmoNoise(t=1e9).apply(w, gen())
    ref = naive_tile_max(w, 64, 64)
    # g in [gmin, gmax] <=> |W'| <= max|W_tile|; both ends are reached at t = 1e9 s
    assert (out.abs() <= ref * (1 + 1e-5)).all()
    assert ((out.abs() - ref).abs() < 1e-5 * ref).any()


def test_cmo_read_noise_std_and_redrawn_each_pass():
    model = CmoReadNoise(t=1.0)
    assert model.per_read
    half = (model.gmax - model.gmin) / 2
    w, keep = cmo_weight(50.0, model.gmin, model.gmax)
    g = gen()
    first, second = model.apply(w, g), model.apply(w, g)
    assert not torch.equal(first, second)
    dg = ((first - w) * half)[keep]
    expected = CMO_READ_K * math.log10(50.0) * math.sqrt(math.log((1.0 + CMO_T_READ) / (2 * CMO_T_READ)))
    assert abs(dg.std().item() / expected - 1) < 0.03
    # more time since programming -> more accumulated 1/f noise
    later = ((CmoReadNoise(t=86400.0).apply(w, gen()) - w) * half)[keep]
    assert later.std().item() > 1.1 * dg.std().item()


@pytest.mark.parametrize(
    "model",
    [Wan2022Noise(t=86400), CmoNoise(t=86400, accept=0.2), CmoNoise(t=0), CmoReadNoise(t=1e3)],
    ids=["wan2022", "cmo", "cmo-t0", "cmo_read"],
)
def test_device_scale_multiplies_every_noise_term(model):
    """With the same draws, scale 0.5 gives half the conductance change: std and mean shift.

    Mid-range weights (CMO at 50 µS, Wan at x = 0.5) keep the clamps out of play, except for
    Wan's idle device at g = 0, where clamp(s * x, 0) = s * clamp(x, 0) still holds.
    """
    if isinstance(model, Wan2022Noise):
        w = torch.full((256, 256), 0.5)
        w[::64, ::64] = 1.0
    else:
        w, _ = cmo_weight(50.0, model.gmin, model.gmax)
    full = model.apply(w, gen(6)) - w
    half = model.scaled(0.5).apply(w, gen(6)) - w
    torch.testing.assert_close(half, 0.5 * full, rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- generic contract


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_determinism_input_untouched_and_dtypes(name):
    model = parse_noise_spec(EXAMPLES[name])
    w = tiled_weight(200, 130) * 0.05
    original = w.clone()
    a = model.apply(w, gen(1))
    b = model.apply(w, gen(1))
    c = model.apply(w, gen(2))
    assert torch.equal(w, original)  # never modified
    assert a is not w and a.data_ptr() != w.data_ptr()
    assert torch.equal(a, b)
    if name in DETERMINISTIC:
        assert torch.equal(a, c)
    else:
        assert not torch.equal(a, c)
        assert not torch.equal(a, w)
    for dtype in (torch.bfloat16, torch.float16):
        low = w.to(dtype)
        low_original = low.clone()
        out = model.apply(low, gen(1))
        assert out.dtype == dtype and out.shape == w.shape and out.device == w.device
        assert torch.equal(low, low_original)
        torch.testing.assert_close(out.float(), model.apply(low.float(), gen(1)).to(dtype).float())


def test_parameter_input_gives_detached_output():
    layer = torch.nn.Linear(130, 200)
    out = GaussianNoise(sigma=0.01).apply(layer.weight, gen())
    assert not out.requires_grad
    assert out.shape == layer.weight.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_and_generator():
    w = tiled_weight(200, 130).cuda().to(torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(0)
    for name, spec in EXAMPLES.items():
        out = parse_noise_spec(spec).apply(w, g)
        assert out.device == w.device and out.dtype == torch.bfloat16, name


def test_draws_are_made_on_the_generator_device_then_moved_to_the_weight():
    """A CPU generator and a weight elsewhere ("meta" here, a GPU on a real chip): the draws
    come from the CPU generator, which advances exactly as for a CPU weight."""
    from halora.noise.base import rand, randn

    w = tiled_weight(64, 96)
    for draw in (randn, rand):
        on_cpu, elsewhere = gen(8), gen(8)
        expected = draw(w, on_cpu)
        moved = draw(w.to("meta"), elsewhere)
        assert moved.device.type == "meta" and moved.shape == w.shape
        assert torch.equal(on_cpu.get_state(), elsewhere.get_state())
        assert torch.equal(draw(w, on_cpu), draw(w, elsewhere))  # in step afterwards too
        assert expected.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_cpu_generator_gives_the_same_chip_on_cpu_and_cuda(name):
    model = parse_noise_spec(EXAMPLES[name])
    w = tiled_weight(200, 130) * 0.05
    on_cpu = model.apply(w, gen(9))
    on_cuda = model.apply(w.cuda(), gen(9))
    assert on_cuda.device.type == "cuda"
    # same draws; only the last bit of transcendental functions may differ between devices
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=1e-5, atol=1e-7)


def test_weight_must_be_2d_float():
    with pytest.raises(ValueError):
        GaussianNoise(sigma=0.1).apply(torch.zeros(4), gen())
    with pytest.raises(TypeError):
        GaussianNoise(sigma=0.1).apply(torch.zeros(4, 4, dtype=torch.int64), gen())


# ----------------------------------------------------------------------------- specs


def test_examples_cover_every_registered_model():
    assert set(EXAMPLES) == set(NOISE_MODELS)
    for name, cls in NOISE_MODELS.items():
        assert cls.name == name and cls.usage and cls.summary and cls.__doc__


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_spec_round_trip(name):
    model = parse_noise_spec(EXAMPLES[name])
    assert isinstance(model, NOISE_MODELS[name])
    assert parse_noise_spec(model.spec()) == model
    assert parse_noise_spec(model.spec()).spec() == model.spec()
    assert str(model) == model.spec()


def test_spec_defaults_aliases_and_normalisation():
    assert parse_noise_spec("gaussian:sigma=0.02") == GaussianNoise(0.02, "tile", (64, 64))
    assert parse_noise_spec(" Gaussian : Sigma=0.02 , TILE=64x64 ") == GaussianNoise(0.02)
    assert parse_noise_spec("clean") == NoNoise() == parse_noise_spec("none")
    assert parse_noise_spec("wan2022:t=1d") == Wan2022Noise(t=86400)
    assert parse_noise_spec("wan2022:t=48h") == Wan2022Noise(t=172800)
    assert parse_noise_spec("wan2022") == Wan2022Noise(t=1, tile=(64, 64), gmax=40)
    assert parse_noise_spec("cmo:t=1e+06") == CmoNoise(t=1e6)
    assert parse_noise_spec("saf:p1=0.1") == StuckAtFaults(p0=0.0, p1=0.1)
    assert GaussianNoise(sigma=1, tile=32).spec() == "gaussian:sigma=1,scale=tile,tile=32"
    assert parse_noise_spec("gaussian:sigma=1e-07").sigma == 1e-7
    m = parse_noise_spec("gaussian:sigma=0.01+saf:p0=0.001,p1=0.001")
    assert m == Chain((GaussianNoise(0.01), StuckAtFaults(0.001, 0.001)))
    assert m.spec() == "gaussian:sigma=0.01,scale=tile,tile=64+saf:p0=0.001,p1=0.001,tile=64"
    assert hash(m) == hash(parse_noise_spec(m.spec()))


# ----------------------------------------------------------------------------- chains


def test_chain_applies_in_order_in_float32():
    w = tiled_weight(128, 96)
    g_noise, quant = GaussianNoise(0.05), Quantization(levels=7)
    ab = Chain((g_noise, quant)).apply(w, gen(4))
    assert torch.equal(ab, quant.apply(g_noise.apply(w, gen(4)), gen()))
    ba = Chain((quant, g_noise)).apply(w, gen(4))
    assert torch.equal(ba, g_noise.apply(quant.apply(w, gen()), gen(4)))
    assert not torch.equal(ab, ba)
    # one rounding to bf16 at the end, not one per stage
    wb = w.bfloat16()
    out = Chain((g_noise, quant)).apply(wb, gen(4))
    assert torch.equal(out, Chain((g_noise, quant)).apply(wb.float(), gen(4)).bfloat16())


def test_chain_flattens_and_reports_per_read():
    a, b, r = GaussianNoise(0.01), StuckAtFaults(p0=0.1), ReadNoise(0.01)
    assert Chain((Chain((a, b)), r)).models == (a, b, r)
    assert not Chain((a, r)).per_read
    assert Chain((r, CmoReadNoise())).per_read
    with pytest.raises(ValueError):
        Chain(())


def test_split_noise():
    a, b, r, cr = GaussianNoise(0.01), StuckAtFaults(p0=0.1), ReadNoise(0.01), CmoReadNoise()
    assert split_noise(a) == (a, None)
    assert split_noise(r) == (None, r)
    assert split_noise(NoNoise()) == (None, None)
    assert split_noise(Chain((r, a, NoNoise(), b, cr))) == (Chain((a, b)), Chain((r, cr)))
    prog, read = split_noise(parse_noise_spec("read:sigma=0.01+gaussian:sigma=0.02"))
    assert prog == GaussianNoise(0.02) and read == ReadNoise(0.01)
    assert not prog.per_read and read.per_read


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("gausian:sigma=0.1", ["unknown noise model 'gausian'", "gaussian", "wan2022", "clean"]),
        ("gaussian:sigm=0.1", ["unknown key 'sigm'", "valid keys: sigma, scale, tile"]),
        ("none:sigma=0.1", ["unknown key 'sigma'", "takes no keys"]),
        ("gaussian:sigma=-0.1", ["sigma must be a finite number in [0, 10]"]),
        ("gaussian:sigma=abc", ["sigma must be a number", "'abc'"]),
        ("gaussian:sigma=nan", ["sigma must be a finite number"]),
        ("gaussian", ["gaussian needs sigma=", "usage: gaussian:sigma=S"]),
        ("gaussian:sigma=0.1,scale=row", ["scale must be one of tile, channel, tensor, abs"]),
        ("gaussian:sigma=0.1,tile=0", ["tile sizes must be >= 1"]),
        ("gaussian:sigma=0.1,tile=8x", ["tile must be an integer or rows x cols"]),
        ("gaussian:sigma", ["expected key=value"]),
        ("gaussian:sigma=0.1,sigma=0.2", ["given twice"]),
        ("read:sigma=-1", ["sigma must be a finite number in [0, 10]"]),
        ("multiplicative:sigma=-1", ["sigma must be"]),
        ("lognormal", ["lognormal needs sigma="]),
        ("saf:p0=1.5", ["p0 is a probability", "[0, 1]"]),
        ("saf:p1=-0.1", ["p1 is a probability"]),
        ("saf:p0=0.6,p1=0.6", ["p0 + p1 must be <= 1"]),
        ("saf", ["saf needs p0=... or p1=..."]),
        ("quant:bits=0", ["bits must be >= 2"]),
        ("quant:bits=1", ["levels=2"]),
        ("quant:bits=2.5", ["bits must be an integer"]),
        ("quant:levels=1", ["levels must be in [2"]),
        ("quant:bits=4,levels=15", ["not both"]),
        ("quant", ["quant needs bits=... or levels=..."]),
        ("quant:bits=4,tile=-1", ["tile sizes must be >= 1"]),
        ("wan2022:t=100", ["no fit for t=100", "86400 (1d)", "172800 (2d)"]),
        ("wan2022:t=soon", ["t must be a time in seconds"]),
        ("wan2022:gmax=0", ["gmax must be > 0"]),
        ("cmo:accept=1", ["accept", "must be 2 or 0.2"]),
        ("cmo:t=0.5", ["t must be 0 (just programmed) or >= 1 s"]),
        ("cmo:gmin=90", ["0 < gmin < gmax"]),
        ("cmo_read:t=0", ["t_read"]),
        ("", ["empty noise spec", "gaussian:sigma=0.01"]),
        ("gaussian:sigma=0.01+", ["empty part"]),
        ("gaussian:sigma=0.01++saf:p0=0.1", ["empty part"]),
    ],
)
def test_bad_specs_raise_one_line_usage_errors(spec, needles):
    with pytest.raises(UsageError) as info:
        parse_noise_spec(spec)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_direct_construction_is_validated():
    with pytest.raises(UsageError, match="sigma"):
        GaussianNoise(sigma=-1.0)
    with pytest.raises(UsageError, match="p0 \\+ p1"):
        StuckAtFaults(p0=0.7, p1=0.7)
    with pytest.raises(UsageError, match="no fit"):
        Wan2022Noise(t=3600)
    with pytest.raises(UsageError, match="tile"):
        Quantization(levels=4, tile=(0, 64))
    with pytest.raises(UsageError, match="spec must be a string"):
        parse_noise_spec(None)  # type: ignore[arg-type]
