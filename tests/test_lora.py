import pytest
import torch

from halora.errors import UsageError
from halora.lora import LoraFactors, LoraSettings, attach_lora, halora_regularizer, lora_factors


def direct_term(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖A Aᵀ‖₂ + ‖Bᵀ B‖₂ from the largest singular value of a full SVD."""
    return torch.linalg.svdvals(a @ a.T)[0] + torch.linalg.svdvals(b.T @ b)[0]


def random_factors(count: int, rank: int = 4, seed: int = 0) -> list[LoraFactors]:
    generator = torch.Generator().manual_seed(seed)
    factors = []
    for index in range(count):
        a = torch.randn(rank, 32 + index, generator=generator, dtype=torch.float64)
        b = torch.randn(16 + index, rank, generator=generator, dtype=torch.float64)
        factors.append(LoraFactors(f"m{index}", a.requires_grad_(), b.requires_grad_(), 2.0))
    return factors


def test_reg_matches_svd_on_known_matrices():
    a = torch.diag(torch.tensor([3.0, 1.0])).double()  # ‖A Aᵀ‖₂ = 9
    b = torch.tensor([[2.0, 0.0], [0.0, 0.5], [0.0, 0.0]]).double()  # ‖Bᵀ B‖₂ = 4
    factor = LoraFactors("m", a, b, 1.0)
    assert halora_regularizer([factor]).item() == pytest.approx(13.0)
    factors = random_factors(5)
    expected = sum(direct_term(f.a, f.b) for f in factors)
    assert halora_regularizer(factors, "sum").item() == pytest.approx(expected.item(), rel=1e-10)
    assert halora_regularizer(factors, "mean").item() == pytest.approx(expected.item() / 5, rel=1e-10)
    assert halora_regularizer(factors, "sum", scaled=True).item() == pytest.approx(
        2.0 * expected.item(), rel=1e-10
    )


def test_reg_gradient_matches_svd_gradient():
    factors = random_factors(3, seed=1)
    halora_regularizer(factors, "sum").backward()
    ours = [(f.a.grad.clone(), f.b.grad.clone()) for f in factors]
    for f in factors:
        a, b = f.a.detach().requires_grad_(), f.b.detach().requires_grad_()
        direct_term(a, b).backward()
        got = ours[factors.index(f)]
        assert torch.allclose(got[0], a.grad, rtol=1e-8, atol=1e-10)
        assert torch.allclose(got[1], b.grad, rtol=1e-8, atol=1e-10)
    # analytic check: d σ_max(A)² / dA = 2 σ u vᵀ
    u, s, vh = torch.linalg.svd(factors[0].a.detach())
    analytic = 2 * s[0] * torch.outer(u[:, 0], vh[0])
    assert torch.allclose(ours[0][0], analytic, rtol=1e-8, atol=1e-10)


def test_reg_on_a_peft_model_and_zero_init(tiny):
    model = attach_lora(tiny[0], LoraSettings(rank=4, targets=("q_proj", "v_proj")))
    factors = lora_factors(model)
    assert len(factors) == 2 * model.base_model.model.config.num_hidden_layers
    assert all(f.a.shape[0] == 4 and f.b.shape[1] == 4 for f in factors)
    reg = halora_regularizer(factors)  # B = 0 at init: only the A term is left
    expected = sum(torch.linalg.matrix_norm(f.a @ f.a.T, ord=2) for f in factors) / len(factors)
    assert reg.item() == pytest.approx(expected.item(), rel=1e-5)
    reg.backward()
    assert all(f.a.grad is not None for f in factors)


def test_lora_settings_errors(tiny):
    with pytest.raises(UsageError, match="rank"):
        LoraSettings(rank=0)
    with pytest.raises(UsageError, match="dropout"):
        LoraSettings(dropout=1.5)
    with pytest.raises(UsageError, match="cannot attach"):
        attach_lora(tiny[0], LoraSettings(targets=("no_such_layer",)))
    with pytest.raises(UsageError, match="reduction"):
        halora_regularizer(random_factors(1), "max")
    with pytest.raises(UsageError, match="LoRA layers"):
        halora_regularizer([])
