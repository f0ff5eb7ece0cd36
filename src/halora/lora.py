"""LoRA through PEFT, and the HaLoRA regulariser.

A LoRA layer computes, with the base weight W0 on (noisy) RRAM and A, B on exact SRAM:

        x ──► [ W0 + N ]  (RRAM, frozen, noisy) ─────────────┐
        │                                                     (+) ──► y
        └──► dropout ──► A (r × d_in) ──► B (d_out × r) ──► ×α/r ┘   (SRAM, trained, exact)

HaLoRA (Wu et al., arXiv 2502.19747) adds to the task loss

        μ · Σ_modules ( ‖A Aᵀ‖₂ + ‖Bᵀ B‖₂ )

(spectral norms of r × r matrices: exact and cheap) because the gap between the LoRA
updates under noisy and clean base weights is bounded by that factor times the
gradient error the noise causes. The paper leaves two choices open; both are settings:
`reduction` (sum over modules, or mean: the sum grows with the number of modules and at
μ = 0.1 dominates the loss of a 150-module model) and `scaled` (whether the term is taken
of the scaled factors √(α/r)·A and √(α/r)·B, i.e. multiplied by α/r).
"""

from __future__ import annotations

import pickle
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn

from halora.errors import UsageError
from halora.settings import check, setting
from halora.sidecar import SIDECAR, check_base, read_sidecar, weights_hash

PAPER_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
Reduction = Literal["sum", "mean"]
REDUCTIONS: tuple[Reduction, ...] = ("sum", "mean")


@dataclass(frozen=True)
class LoraSettings:
    """The adapter. Defaults are the paper's: rank 4 on q, k, v, up, down."""

    WHAT: ClassVar[str] = "LoRA setting"

    rank: int = setting(4, "LoRA rank r", min=1)
    # alpha = 2r is the common choice (the paper does not give it); this is the one place
    # the rule lives: None means 2r, resolved when the settings are made.
    alpha: float | None = setting(None, "LoRA alpha (default: 2 x rank)", min=0)
    dropout: float = setting(0.05, "LoRA dropout", min=0, max=0.99, aliases=("lora_dropout",))
    targets: tuple[str, ...] = setting(PAPER_TARGETS, "LoRA target modules (leaf names)")
    rslora: bool = setting(False, "rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023)")

    def __post_init__(self) -> None:
        check(self)
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2.0 * self.rank)
        if not self.targets:
            raise UsageError("LoRA needs at least one target module name")

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.targets),
            use_rslora=self.rslora,
            bias="none",
            task_type="CAUSAL_LM",
        )


def attach_lora(model: nn.Module, settings: LoraSettings = LoraSettings()) -> PeftModel:
    """Wrap a causal LM with a fresh trainable LoRA adapter; the base stays frozen."""
    try:
        return get_peft_model(model, settings.peft_config())
    except ValueError as err:
        raise UsageError(
            f"cannot attach LoRA to targets {', '.join(settings.targets)}: {str(err).splitlines()[0]}"
        ) from err


@dataclass(frozen=True)
class LoraFactors:
    name: str
    a: torch.Tensor  # r × d_in
    b: torch.Tensor  # d_out × r
    scaling: float  # α/r (or α/√r with rsLoRA)


def lora_factors(model: nn.Module) -> list[LoraFactors]:
    """The active adapter's (A, B) of every LoRA layer, as live parameters."""
    factors = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                factors.append(
                    LoraFactors(
                        name,
                        module.lora_A[adapter].weight,
                        module.lora_B[adapter].weight,
                        float(module.scaling[adapter]),
                    )
                )
    return factors


def halora_regularizer(
    factors: list[LoraFactors], reduction: Reduction = "mean", scaled: bool = False
) -> torch.Tensor:
    """Σ or mean over modules of ‖A Aᵀ‖₂ + ‖Bᵀ B‖₂ (times α/r when `scaled`).

    A Aᵀ and Bᵀ B are symmetric positive semi-definite, so their spectral norm is their
    largest eigenvalue; modules of one rank are stacked and solved in one batched call,
    which keeps the term a small share of a training step.
    """
    if not factors:
        raise UsageError("the HaLoRA regulariser needs a model with LoRA layers")
    if reduction not in ("sum", "mean"):
        raise UsageError(f"unknown reduction {reduction!r}: use sum or mean")
    by_rank: dict[int, list[LoraFactors]] = defaultdict(list)
    for factor in factors:
        by_rank[factor.a.shape[0]].append(factor)
    terms = []
    for group in by_rank.values():
        # at least float32: bf16 Gram matrices lose the eigenvalue's precision
        dtype = torch.promote_types(group[0].a.dtype, torch.float32)
        a_list = [f.a.to(dtype) for f in group]
        b_list = [f.b.to(dtype) for f in group]
        grams = [a @ a.T for a in a_list] + [b.T @ b for b in b_list]
        largest = torch.linalg.eigvalsh(torch.stack(grams))[:, -1]
        per_module = largest[: len(group)] + largest[len(group) :]
        if scaled:
            per_module = per_module * per_module.new_tensor([f.scaling for f in group])
        terms.append(per_module)
    total = torch.cat(terms).sum()
    return total / len(factors) if reduction == "mean" else total


def load_adapters(
    model: nn.Module,
    adapters: list[tuple[str, str]],
    model_name: str = "",
    allow_other_base: bool = False,
) -> nn.Module:
    """One PeftModel holding every (label, folder) adapter; switch with set_adapter(label).

    The base stays shared, so every adapter is evaluated on the very same (programmed) chip.
    Each adapter with a halora.json must have been trained on these very base weights (an
    adapter of the same shapes loads on any model and silently means nothing there), unless
    `allow_other_base`. `model_name` names the model in messages (default: its folder).
    """
    if not adapters:
        return model
    name = model_name or _name_of(model)
    for label, folder in adapters:
        if not (Path(folder) / "adapter_config.json").is_file():
            raise UsageError(
                f"adapter {label}={folder} has no adapter_config.json: "
                "give a folder written by `halora train` or PEFT's save_pretrained"
            )
    if not allow_other_base:
        _check_bases(model, name, [folder for _, folder in adapters])
    peft_model = None
    for label, folder in adapters:
        try:
            with quiet_peft_wrap():
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(model, Path(folder), adapter_name=label)
                else:
                    _load_another(peft_model, Path(folder), label)
        except (pickle.UnpicklingError, EOFError) as err:
            raise _unpickling_error(label, folder, err) from err
        except (ValueError, KeyError, RuntimeError) as err:
            trained = _trained_on(folder)
            made_for = f" (trained on {trained}, loaded: {name})" if trained else f" ({name})"
            raise UsageError(
                f"adapter {label}={folder} does not fit this model{made_for}: {_reason(err)}"
            ) from err
    peft_model.eval()
    return peft_model


def adapter_tensors(model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's LoRA tensors under PEFT's state-dict names (not copies). Embedding
    layers are left out explicitly: asked to decide, PEFT probes the model's config for
    resized embeddings, which halora never trains."""
    return get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)


def _load_another(peft_model: PeftModel, folder: Path, label: str) -> None:
    """A second (third, ...) adapter beside the first. PEFT 0.22's missing-key check matches
    the adapter name as a substring of every key (label "b" matches "base_model", so it
    reports the other adapters' keys as missing): its check is off and the loaded tensors are
    compared with the file here instead."""
    import inspect

    if "strict_adapter_check" not in inspect.signature(peft_model.load_adapter).parameters:
        peft_model.load_adapter(folder, adapter_name=label)  # older PEFT: no such check
        return
    peft_model.load_adapter(folder, adapter_name=label, strict_adapter_check="ignore")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return
    from safetensors.torch import load_file

    saved = load_file(str(weights))
    loaded = adapter_tensors(peft_model, label)
    wrong = [
        name for name, tensor in saved.items() if name not in loaded or not torch.equal(loaded[name], tensor)
    ]
    if wrong:
        raise UsageError(f"adapter {label}={folder}: {wrong[0]} did not load ({len(wrong)} tensors in all)")


def _unpickling_error(label: str, folder: str | Path, err: Exception) -> UsageError:
    """An adapter_model.bin that torch will not unpickle: PEFT loads .bin files with
    weights_only=True, which refuses any class or function in the pickle (loading it could
    run code); torch words a damaged file's error the same way, less the "global", and a
    file cut short ends in a bare EOFError."""
    text = str(err)
    if "global" not in text.lower():
        detail = text.split("WeightsUnpickler error:", 1)[-1]
        reason = next((line.strip() for line in detail.splitlines() if line.strip()), "the file ends early")
        return UsageError(
            f"adapter {label}={folder}: adapter_model.bin is unreadable ({reason}): copy it again"
        )
    return UsageError(
        f"adapter {label}={folder}: adapter_model.bin holds more than tensors and is refused for "
        "safety (torch weights_only): re-save it as safetensors "
        "(save_pretrained(..., safe_serialization=True))"
    )


def _reason(err: Exception) -> str:
    """PEFT's reason in one line: torch's first size mismatch, not its "Error(s) in loading"."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return next((line for line in lines if line.startswith("size mismatch")), lines[0])


def _check_bases(model: nn.Module, name: str, folders: list[str]) -> None:
    """check_base for every folder, hashing the base weights once (about 1 s for 135M) and
    only when some folder has a halora.json to compare with."""
    if not any((Path(folder) / SIDECAR).is_file() for folder in folders):
        return
    base_hash = weights_hash(model)
    for folder in folders:
        check_base(folder, model, name, base_hash, allow_flag="--allow-other-base")


def _trained_on(folder: str) -> str | None:
    """The base model named in an adapter's halora.json, if it has a readable one."""
    if not (Path(folder) / SIDECAR).is_file():
        return None
    try:
        return read_sidecar(folder).get("base_model")
    except UsageError:
        return None


def _name_of(model: nn.Module) -> str:
    """A model's name for messages: the folder it was loaded from, or its registered name."""
    path = str(getattr(model, "name_or_path", "") or "")
    return Path(path).name if path else "this model"


# PEFT 0.21 reads `model.is_gradient_checkpointing` whenever it wraps a model, a property
# transformers 5 deprecated: a FutureWarning on every run that halora can neither cause
# nor avoid. Only that warning, only while PEFT wraps a model.
_PEFT_WRAP_WARNING = {
    "message": r"`is_gradient_checkpointing` is deprecated",
    "category": FutureWarning,
    "module": r"transformers\.modeling_utils",
}


@contextmanager
def quiet_peft_wrap() -> Iterator[None]:
    """Silence the one known third-party warning of wrapping a model with PEFT."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **_PEFT_WRAP_WARNING)
        yield


def load_trainable(model: nn.Module, folder: str | Path, label: str = "adapter") -> PeftModel:
    """One adapter, its LoRA weights trainable (recalibration tunes them), dropout off.
    `label` names it in messages, as load_adapters' labels do."""
    try:
        with quiet_peft_wrap():
            peft_model = PeftModel.from_pretrained(model, folder, is_trainable=True)
    except (pickle.UnpicklingError, EOFError) as err:
        raise _unpickling_error(label, folder, err) from err
    peft_model.eval()
    return peft_model


@contextmanager
def quiet_tiny_save() -> Iterator[None]:
    """PEFT looks for the base model's config.json under the model's name whenever it saves
    an adapter (checkpoints too); the tiny test model is built in code, has no folder, and
    PEFT warns on every save. Only that warning, only for tiny, only while saving."""
    from halora.models import TINY

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=rf"Could not find a config file in {TINY} - ",
            category=UserWarning,
            module=r"peft\.utils\.save_and_load",
        )
        yield
