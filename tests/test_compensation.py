"""Global drift compensation on a programmed chip (halora.cim.Chip ``compensate=True``).

The tiny random Llama of conftest.py; CPU only, a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from halora.cim import Chip, global_drift_alpha, layer_generator, program_chip, rram_layers
from halora.errors import UsageError
from halora.noise import TimeRange, at_time, parse_noise_spec
from halora.noise.base import Float32Model


@dataclass(frozen=True)
class GlobalShrink(Float32Model):
    """Drift that is a pure global scale: every weight times ``(t / 1 s)^-0.1``, no noise."""

    t: float = 1.0

    name: ClassVar[str] = "shrink"
    time_range: ClassVar[TimeRange] = TimeRange(
        reference=1.0, low=1.0, high=1e9, measured=(1.0, 1e9), source="test"
    )

    def _apply_f32(self, w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return w * self.t**-0.1


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def tokens_for(model) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))


def clean_weights(model) -> dict[str, torch.Tensor]:
    return {name: layer.weight.detach().clone() for name, layer in rram_layers(model).items()}


def test_alpha_is_the_ratio_of_one_hot_readouts():
    w = torch.randn(30, 20)
    assert global_drift_alpha(w, 0.5 * w) == pytest.approx(2.0, rel=1e-7)
    # |W X|_1 with X the identity, i.e. every one-hot input read once
    eye = torch.eye(20)
    ref, cur = w, w * torch.rand(30, 20)
    expected = (ref @ eye).abs().sum() / (cur @ eye).abs().sum()
    assert global_drift_alpha(ref, cur) == pytest.approx(expected.item(), rel=1e-6)
    assert global_drift_alpha(w, torch.zeros(30, 20)) == 1.0


def test_compensation_removes_a_global_drift_scale_exactly(tiny):
    model, _ = tiny
    tokens = tokens_for(model)
    clean = logits(model, tokens)
    aged = GlobalShrink(t=1e6)  # x 0.25
    with program_chip(model, aged, seed=0):
        drifted = logits(model, tokens)
    with program_chip(model, aged, seed=0, compensate=True) as chip:
        compensated = logits(model, tokens)
        alphas = list(chip.alphas.values())
    assert not torch.allclose(drifted, clean, atol=1e-3)  # the drift is visible ...
    torch.testing.assert_close(compensated, clean, rtol=1e-4, atol=1e-5)  # ... and compensated
    assert len(alphas) == len(rram_layers(model))
    assert alphas == pytest.approx([1e6**0.1] * len(alphas), rel=1e-6)


def test_restore_after_a_compensated_chip_is_bit_exact_and_reprogram_recomputes(tiny):
    model, _ = tiny
    before = clean_weights(model)
    with program_chip(model, "pcm:t=1mo", seed=3, compensate=True) as chip:
        first = dict(chip.alphas)
        assert any(not torch.equal(layer.weight, before[n]) for n, layer in chip.layers.items())
        chip.reprogram(4)
        assert chip.alphas != first and set(chip.alphas) == set(first)
        chip.reprogram(3)
        assert chip.alphas == first  # the same seed is the same chip, the same alphas
    after = clean_weights(model)
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_compensation_undoes_most_of_pcm_drift_and_reports_alpha(tiny):
    model, _ = tiny
    before = clean_weights(model)
    spec = "pcm:t=1y,prog=0,read=0"  # drift alone: conductances only decay
    with program_chip(model, spec, seed=1):
        drifted = clean_weights(model)
    with program_chip(model, spec, seed=1, compensate=True) as chip:
        compensated = clean_weights(model)
        report = chip.compensation_json()
    for name, w in before.items():
        err_drift = (drifted[name] - w).norm()
        err_comp = (compensated[name] - w).norm()
        assert err_comp < 0.5 * err_drift, name
    assert report["reference"] == "pcm:t=20,prog=0,drift=1,read=0,tile=64"
    assert report["calibration_input"] == "one-hot (identity)"
    assert set(report["alpha"]) == set(before)
    assert all(a > 1.2 for a in report["alpha"].values())  # (1 y / 20 s)^nu, nu >= 0.049
    assert report["alpha_min"] <= report["alpha_mean"] <= report["alpha_max"]


def test_alpha_is_measured_on_the_same_chip_at_the_reference_time(tiny):
    model, _ = tiny
    spec = "cmo:t=1mo,accept=0.2"
    name, layer = next(iter(rram_layers(model).items()))
    w = layer.weight.detach().clone()
    reference = parse_noise_spec("cmo:t=0,accept=0.2").apply(w, layer_generator(5, name))
    aged = parse_noise_spec(spec).apply(w, layer_generator(5, name))
    with program_chip(model, spec, seed=5, compensate=True) as chip:
        assert chip.alphas[name] == pytest.approx(global_drift_alpha(reference, aged), rel=1e-12)
        torch.testing.assert_close(layer.weight, aged * chip.alphas[name], rtol=1e-6, atol=1e-8)


def test_a_model_that_is_its_own_reference_gets_alpha_one_and_the_same_chip(tiny):
    model, _ = tiny
    for spec in ("gaussian:sigma=0.02", "cmo:t=0"):
        with program_chip(model, spec, seed=2):
            plain = clean_weights(model)
        with program_chip(model, spec, seed=2, compensate=True) as chip:
            assert set(chip.alphas.values()) == {1.0}
            compensated = clean_weights(model)
        assert all(torch.equal(plain[n], compensated[n]) for n in plain)


def test_reference_choices_clean_and_a_time(tiny):
    model, _ = tiny
    with program_chip(model, "gaussian:sigma=0.05", seed=0, compensate=True, compensate_ref="clean") as chip:
        report = chip.compensation_json()
        assert report["reference"] == "clean"
        assert all(a < 1 for a in chip.alphas.values())  # noise adds L1 mass: scaled down
    with program_chip(model, "pcm:t=1mo", seed=0, compensate=True, compensate_ref="1d") as chip:
        assert chip.compensation_json()["reference"] == at_time("pcm", "1d")
    with pytest.raises(UsageError, match="has no time-dependent part"):
        Chip(model, "gaussian:sigma=0.05", seed=0, compensate=True, compensate_ref="1d")
    with pytest.raises(UsageError, match="pcm is valid for t = 20s .. 10y only"):
        Chip(model, "pcm:t=1mo", seed=0, compensate=True, compensate_ref=1)


def test_read_noise_is_left_out_of_the_calibration_and_applied_after(tiny):
    model, _ = tiny
    spec = "cmo:t=1w+cmo_read:t=1w"
    with program_chip(model, "cmo:t=1w", seed=7, compensate=True) as chip:
        alone = dict(chip.alphas)
    with program_chip(model, spec, seed=7, compensate=True) as chip:
        assert chip.alphas == alone  # the readout is noiseless
        assert chip.compensation_json()["reference"].startswith("cmo:t=0,")
        assert chip.read is not None and len(chip._hooks) == len(chip.layers)
        tokens = tokens_for(model)
        assert not torch.equal(logits(model, tokens), logits(model, tokens))  # read noise each pass


def test_compensation_off_reports_nothing(tiny):
    model, _ = tiny
    with program_chip(model, "pcm:t=1mo", seed=0) as chip:
        assert chip.compensation_json() is None and chip.alphas == {}


def test_bf16_compensated_chip_restores_bit_exact(tiny):
    model = tiny[0].to(torch.bfloat16)
    before = clean_weights(model)
    with program_chip(model, GlobalShrink(t=1e6), seed=0, compensate=True) as chip:
        for name, layer in chip.layers.items():
            assert layer.weight.dtype == torch.bfloat16
            torch.testing.assert_close(layer.weight, before[name], rtol=2e-2, atol=1e-6)
    after = clean_weights(model)
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_one_chip_seed_ages_on_the_model(tiny):
    """The same seed at three times is one chip: its errors are correlated, not redrawn."""
    model, _ = tiny
    before = clean_weights(model)
    errors = []
    for t in (0, "1d", "1mo"):
        with program_chip(model, at_time("cmo", t), seed=11):
            errors.append(torch.cat([(clean_weights(model)[n] - w).flatten() for n, w in before.items()]))
    with program_chip(model, "cmo:t=86400", seed=12):
        other = torch.cat([(clean_weights(model)[n] - w).flatten() for n, w in before.items()])
    corr = torch.corrcoef(torch.stack(errors + [other]))
    assert corr[1, 2] > 0.9 and corr[0, 1] > 0.3 and not torch.equal(errors[1], errors[2])
    assert abs(corr[1, 3]) < 0.1  # another seed is another chip
