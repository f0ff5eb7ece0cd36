"""Time after programming: re-timing specs, validity ranges, one chip ageing, and the PCM model.

CPU only, small tensors, a few seconds.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from halora.errors import UsageError
from halora.noise import (
    CMO_RELAXATION_MEAN,
    CMO_RELAXATION_STD,
    CMO_T_READ,
    NOISE_MODELS,
    PCM_G_MAX,
    PCM_PROG_COEFFS,
    PCM_T0,
    PCM_T_READ,
    TIME_DEPENDENT,
    Chain,
    CmoNoise,
    CmoReadNoise,
    GaussianNoise,
    PcmNoise,
    Wan2022Noise,
    at_time,
    at_times,
    extrapolations,
    parse_noise_spec,
    parse_times,
    reference_model,
)
from halora.noise.base import parse_duration

DAY, WEEK, MONTH, YEAR = 86400.0, 7 * 86400.0, 30 * 86400.0, 365 * 86400.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mid_range(value: float, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights at ``value`` with one 1.0 per 64x64 tile (so max|W_tile| = 1), and the mask of
    the cells at ``value``."""
    w = torch.full((size, size), value)
    w[::64, ::64] = 1.0
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[::64, ::64] = False
    return w, keep


def cmo_weight(g_target: float, model: CmoNoise) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights whose cells sit at ``g_target`` µS under the CMO mapping (clamps out of play)."""
    mid, half = (model.gmin + model.gmax) / 2, (model.gmax - model.gmin) / 2
    return mid_range((g_target - mid) / half)


# ----------------------------------------------------------------------------- durations, specs


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20", 20), ("1s", 1), ("30min", 1800), ("1h", 3600), ("1d", DAY), ("1w", WEEK)]
    + [("1mo", MONTH), ("2mo", 2 * MONTH), ("1y", YEAR), ("10y", 10 * YEAR), ("1.5d", 1.5 * DAY)],
)
def test_parse_duration_units(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_times_and_bad_durations():
    assert parse_times("1s, 1d,1w,1mo") == [1, DAY, WEEK, MONTH]
    for bad in ("1 fortnight", "1d,,1w", "soon"):
        with pytest.raises(UsageError) as info:
            parse_times(bad)
        assert "\n" not in str(info.value)


def test_at_time_sets_every_time_dependent_part_and_keeps_the_rest():
    spec = "gaussian:sigma=0.01+cmo:accept=0.2+cmo_read:tile=32+pcm"
    model = parse_noise_spec(at_time(spec, "1w"))
    gauss, cmo, read, pcm = model.models
    assert gauss == GaussianNoise(0.01)
    assert cmo == CmoNoise(t=WEEK, accept=0.2)
    assert read == CmoReadNoise(t=WEEK, tile=32)
    assert pcm == PcmNoise(t=WEEK)
    assert at_time(spec, WEEK) == at_time(spec, "7d") == model.spec()


def test_at_times_gives_one_spec_per_time_in_order():
    specs = at_times("cmo", "0,1s,1d,1w,1mo")
    assert [parse_noise_spec(s).t for s in specs] == [0, 1, DAY, WEEK, MONTH]
    assert at_times("wan2022", [1, "1d", 172800]) == [
        "wan2022:t=1,tile=64,gmax=40",
        "wan2022:t=86400,tile=64,gmax=40",
        "wan2022:t=172800,tile=64,gmax=40",
    ]
    with pytest.raises(UsageError, match="wan2022 is valid for t = 1s, 1d, 2d only"):
        at_times("wan2022", "1s,1d,1w")  # one bad time fails the list
    with pytest.raises(UsageError, match="no times"):
        at_times("cmo", [])


@pytest.mark.parametrize(
    ("spec", "t", "needle"),
    [
        ("wan2022", "1w", "wan2022 is valid for t = 1s, 1d, 2d only"),
        ("wan2022:t=1d", "12h", "wan2022 is valid for t = 1s, 1d, 2d only"),
        ("cmo", 0.5, "cmo is valid for t = 0 or 1s .. 10y only"),
        ("cmo", "11y", "cmo is valid for t = 0 or 1s .. 10y only"),
        ("cmo+cmo_read", 0, "cmo_read is valid for t = 1s .. 10y only"),
        ("pcm", "10s", "pcm is valid for t = 20s .. 10y only"),
        ("pcm", "11y", "pcm is valid for t = 20s .. 10y only"),
        ("gaussian:sigma=0.02", "1d", "has no time-dependent part"),
        ("none", "1d", "has no time-dependent part"),
        ("saf:p0=0.01+read:sigma=0.01", "1d", "has no time-dependent part"),
    ],
)
def test_at_time_refuses_times_outside_the_fit_and_specs_without_time(spec, t, needle):
    with pytest.raises(UsageError) as info:
        at_time(spec, t)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_every_model_with_a_time_key_declares_its_range():
    with_t = {name for name, cls in NOISE_MODELS.items() if "t" in {f.name for f in dataclasses.fields(cls)}}
    assert with_t == set(TIME_DEPENDENT) == {"wan2022", "cmo", "cmo_read", "pcm"}
    for name in with_t:
        window = NOISE_MODELS[name].time_range
        assert window.accepts(window.reference) and window.source


def test_reference_model_is_the_chip_right_after_programming():
    assert reference_model(CmoNoise(t=WEEK, accept=0.2)) == CmoNoise(t=0, accept=0.2)
    assert reference_model(PcmNoise(t=YEAR, read=0)) == PcmNoise(t=PCM_T0, read=0)
    assert reference_model(Wan2022Noise(t=172800)) == Wan2022Noise(t=1)
    chain = parse_noise_spec("gaussian:sigma=0.01+pcm:t=1mo")
    assert reference_model(chain) == Chain((GaussianNoise(0.01), PcmNoise()))
    assert reference_model(GaussianNoise(0.01)) == GaussianNoise(0.01)


def test_extrapolations_name_the_times_beyond_the_data():
    assert extrapolations(at_time("cmo", "1h")) == []
    assert extrapolations("cmo:t=0") == []
    assert extrapolations("wan2022:t=2d") == []
    assert extrapolations(at_time("pcm", "1d")) == []
    notes = extrapolations(at_time("cmo+pcm", "1w"))
    assert len(notes) == 2 and "cmo" in notes[0] and "1h" in notes[0] and "1d" in notes[1]


# ----------------------------------------------------------------------------- one chip ageing


@pytest.mark.parametrize(
    "models",
    [
        [CmoNoise(t=0), CmoNoise(t=1), CmoNoise(t=WEEK), CmoNoise(t=WEEK, strength=0)],
        [PcmNoise(), PcmNoise(t=YEAR), PcmNoise(t=MONTH, prog=0, drift=2, read=0), PcmNoise(strength=0)],
        [Wan2022Noise(t=1), Wan2022Noise(t=DAY), Wan2022Noise(t=172800)],
        [CmoReadNoise(t=1), CmoReadNoise(t=YEAR)],
    ],
    ids=["cmo", "pcm", "wan2022", "cmo_read"],
)
def test_draws_do_not_depend_on_time_or_scales(models):
    """Every time (t = 0 included) and scale takes the same draws: the generator ends in one
    state, so a chain's later parts see the same numbers at every time."""
    w = torch.randn(96, 80)
    states = []
    for model in models:
        g = gen(3)
        model.apply(w, g)
        states.append(g.get_state())
    assert all(torch.equal(states[0], s) for s in states[1:])


def test_chain_after_cmo_sees_the_same_draws_at_t0_and_later():
    """Stuck-at faults after cmo hit the same cells right after programming and a week later."""
    w = torch.rand(128, 128, generator=gen(0)) * 0.7 + 0.3  # positive: CMO noise flips no sign
    faults = "+saf:p0=0.05,tile=64"
    early = parse_noise_spec("cmo:t=0" + faults).apply(w, gen(1))
    late = parse_noise_spec(at_time("cmo" + faults, "1w")).apply(w, gen(1))
    # an active device stuck at g_min (SA0) gives exactly 0 whatever the CMO noise
    assert torch.equal(early == 0, late == 0) and (early == 0).sum() > 100


def test_cmo_at_t0_is_programming_noise_alone_and_later_adds_the_same_cells_relaxation():
    base = CmoNoise(t=0, accept=2.0)
    w, keep = cmo_weight(50.0, base)
    half = (base.gmax - base.gmin) / 2
    programmed = base.apply(w, gen(5))
    # t = 0: exactly the programming step, the same N1 as any later time
    g = 50.0 + (0.0112185 + 0.0112903 * 50.0) * torch.randn(w.shape, generator=gen(5))
    assert torch.allclose((programmed * half)[keep], (g - (base.gmin + base.gmax) / 2)[keep], atol=2e-5)
    z = []
    for t in (1.0, DAY, WEEK, MONTH):
        dg = ((CmoNoise(t=t).apply(w, gen(5)) - programmed) * half)[keep]  # relaxation, in µS
        log_t = math.log(t)
        z.append((dg - CMO_RELAXATION_MEAN * log_t) / (CMO_RELAXATION_STD[0] * log_t + CMO_RELAXATION_STD[1]))
    # one per-cell z drives the relaxation at every time (the same chip ageing) ...
    for other in z[1:]:
        torch.testing.assert_close(other, z[0], atol=2e-4, rtol=0)
    assert abs(z[0].std().item() - 1) < 0.02
    # ... so the chip at a day and at a month are correlated, yet not the same
    day = CmoNoise(t=DAY).apply(w, gen(5)) - w
    month = CmoNoise(t=MONTH).apply(w, gen(5)) - w
    corr = torch.corrcoef(torch.stack([day[keep], month[keep]]))[0, 1].item()
    assert corr > 0.9 and not torch.equal(day, month)
    # another seed is another chip
    other = CmoNoise(t=DAY).apply(w, gen(6)) - w
    assert abs(torch.corrcoef(torch.stack([day[keep], other[keep]]))[0, 1].item()) < 0.05


def test_wan2022_times_are_one_deviation_per_device_rescaled():
    w, keep = mid_range(0.5)
    one_s = Wan2022Noise(t=1).apply(w, gen(2)) - w
    two_d = Wan2022Noise(t=172800).apply(w, gen(2)) - w
    corr = torch.corrcoef(torch.stack([one_s[keep], two_d[keep]]))[0, 1].item()
    assert corr > 0.9 and not torch.equal(one_s, two_d)


def test_cmo_read_noise_is_one_z_per_pass_scaled_by_its_std_at_t():
    w, keep = cmo_weight(50.0, CmoNoise())
    window = [math.sqrt(math.log((t + CMO_T_READ) / (2 * CMO_T_READ))) for t in (1.0, WEEK)]
    early = CmoReadNoise(t=1).apply(w, gen(4)) - w
    late = CmoReadNoise(t=WEEK).apply(w, gen(4)) - w
    torch.testing.assert_close(late[keep], early[keep] * (window[1] / window[0]), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- PCM


def test_pcm_spec_round_trips_and_defaults():
    model = parse_noise_spec("pcm")
    assert model == PcmNoise() and model.t == PCM_T0 == 20.0
    assert model.spec() == "pcm:t=20,prog=1,drift=1,read=1,tile=64"
    for spec in ("pcm:t=1mo,prog=0,read=0.5,tile=32x64,split=even", "pcm:t=1y,strength=0.25", model.spec()):
        m = parse_noise_spec(spec)
        assert isinstance(m, PcmNoise)
        assert parse_noise_spec(m.spec()) == m and parse_noise_spec(m.spec()).spec() == m.spec()
    assert parse_noise_spec("pcm:t=1mo") == PcmNoise(t=MONTH)
    assert PcmNoise(strength=2.0).scaled(0.25) == PcmNoise(strength=0.5)
    assert PcmNoise().level is None and not PcmNoise.per_read


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("pcm:t=10", "t must be >= t0 = 20 s"),
        ("pcm:prog=-1", "prog (a noise scale) must be a finite number >= 0"),
        ("pcm:read=nan", "read must be a finite number"),
        ("pcm:strength=-1", "strength (noise multiplier) must be a finite number >= 0"),
        ("pcm:gmax=40", "unknown key 'gmax'"),
        ("pcm:t=1fortnight", "a time in seconds"),
    ],
)
def test_pcm_bad_specs(spec, needle):
    with pytest.raises(UsageError) as info:
        parse_noise_spec(spec)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_pcm_at_t0_without_noise_is_the_clean_weights():
    w = torch.randn(100, 70) * 0.05
    out = PcmNoise(t=PCM_T0, prog=0, read=0).apply(w, gen())
    pair = PcmNoise().mapping
    assert torch.equal(out, pair.to_weight(*pair.to_conductance(w)))  # drift factor exactly 1
    torch.testing.assert_close(out, w, rtol=1e-6, atol=1e-9)
    # any drift scale: at t0 there is no drift yet
    assert torch.equal(PcmNoise(t=PCM_T0, prog=0, read=0, drift=3).apply(w, gen(9)), out)
    # later, the same cells drift
    assert not torch.allclose(PcmNoise(t=DAY, prog=0, read=0).apply(w, gen()), w, rtol=1e-3)


def test_pcm_strength_zero_is_the_clean_chip_at_any_time():
    w = torch.randn(100, 70).to(torch.bfloat16)
    for t in (PCM_T0, DAY, 10 * YEAR):
        assert torch.equal(PcmNoise(t=t, strength=0).apply(w, gen()), w)


def test_pcm_programming_noise_matches_the_polynomial():
    w, keep = mid_range(0.5)
    dw = (PcmNoise(drift=0, read=0).apply(w, gen()) - w)[keep] * PCM_G_MAX  # g+ - g- change, µS
    c0, c1, c2 = PCM_PROG_COEFFS
    sigma_active = c0 + c1 * 0.5 + c2 * 0.25
    # the idle device: target 0, noise c0 rectified at 0 (mean and variance of max(0, N(0, c0)))
    idle_mean, idle_var = c0 / math.sqrt(2 * math.pi), c0**2 * (0.5 - 1 / (2 * math.pi))
    assert abs(dw.std().item() / math.sqrt(sigma_active**2 + idle_var) - 1) < 0.03
    assert abs(dw.mean().item() + idle_mean) < 0.02


@pytest.mark.parametrize(("x", "nu_mean", "nu_std"), [(0.5, 0.049, 0.008), (0.01, 0.0958, 0.045)])
def test_pcm_drift_exponent_matches_the_fit_and_is_fixed_per_device(x, nu_mean, nu_std):
    """Drift alone: W' = W (t/t0)^-nu, so nu = -ln(W'/W) / ln(t/t0) per cell, the same at every t."""
    w, keep = mid_range(x)
    nus = []
    for t in (DAY, MONTH, 10 * YEAR):
        out = PcmNoise(t=t, prog=0, read=0).apply(w, gen(1))
        nus.append((-(out / w).log() / math.log(t / PCM_T0))[keep])
    if x == 0.01:  # mu = -0.0155 ln x + 0.0244 unclipped, sigma clipped at 0.045; nu = |N(mu, sigma)|
        z = nu_mean / nu_std
        cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
        pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        mean = nu_mean * (2 * cdf - 1) + 2 * nu_std * pdf
        std = math.sqrt(nu_mean**2 + nu_std**2 - mean**2)
    else:  # both clipped: nu = N(0.049, 0.008), practically never negative
        mean, std = nu_mean, nu_std
    assert abs(nus[0].mean().item() - mean) < 0.02 * mean
    assert abs(nus[0].std().item() / std - 1) < 0.03
    for other in nus[1:]:
        torch.testing.assert_close(other, nus[0], atol=2e-4, rtol=1e-3)


def test_pcm_one_over_f_noise_grows_with_time_and_keeps_its_cells():
    w, keep = mid_range(0.5)
    q_s = 0.0088 / 0.5**0.65
    rel = []
    for t in (DAY, YEAR):
        out = PcmNoise(t=t, prog=0, drift=0).apply(w, gen(2))
        rel.append((out / w - 1)[keep])
        window = math.sqrt(math.log((t + PCM_T_READ) / (2 * PCM_T_READ)))
        assert abs(rel[-1].std().item() / (q_s * window) - 1) < 0.03
    assert rel[1].std() > rel[0].std()
    corr = torch.corrcoef(torch.stack(rel))[0, 1].item()
    assert corr > 0.999  # the same z per device, scaled by the std at t


def test_pcm_drift_shrinks_the_weights_and_two_times_share_the_programming():
    w = torch.randn(128, 128) * 0.05
    day = PcmNoise(t=DAY, read=0).apply(w, gen(8))
    month = PcmNoise(t=MONTH, read=0).apply(w, gen(8))
    programmed = PcmNoise(t=PCM_T0, read=0).apply(w, gen(8))
    assert day.abs().sum() < programmed.abs().sum() and month.abs().sum() < day.abs().sum()
    # the same chip: the ratio to its programmed state is a per-device power of time
    corr = torch.corrcoef(torch.stack([(day - w).flatten(), (month - w).flatten()]))[0, 1].item()
    assert corr > 0.9 and not torch.equal(day, month)
