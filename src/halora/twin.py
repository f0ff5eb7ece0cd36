"""Per-chip correction from the digital twin: a closed-form low-rank SRAM branch per RRAM layer.

Program-and-verify reads back every programmed conductance, so after programming the error
of each RRAM layer, dW = W' - W, is known off chip (the hardware assumption of per-chip
recalibration, README "Per-chip recalibration"). What the model feels is not dW but its
effect on the layer's real inputs, E|dW x|^2 over calibration prompts. The rank-k branch
C = B A in SRAM that minimises E|(dW + C) x|^2 has a closed form: reduced-rank least
squares in the metric of the inputs' second moment S = E[x x^T] = Q L Q^T (Eckart-Young
on dW S^1/2, ridge-damped so that directions the prompts never excite stay untouched):

        dW Q L^1/2 = U Sigma V^T
        B = -U_k Sigma_k^1/2         A = Sigma_k^1/2 V_k^T L^-1/2 Q^T    (C = B A)

LLM activations are dominated by a few outlier channels, so a small k removes most of
E|dW x|^2 (SmolLM2-135M, sigma 0.02, 128 calibration prompts: k = 4 removes 65 %, 16 82 %,
64 96 %), in seconds and without labels or gradient steps.

Memory: one d_in x d_in moment per distinct layer input (q/k/v and gate/up share theirs),
kept per adapter while its chips are corrected: about 0.4 GB for SmolLM2-135M, 5 GB for
LLaMA-3.2-1B (its 8192-wide down_proj inputs dominate).

The correction is extra rank of the same PEFT adapter, so the result stays one LoRA adapter
that stock PEFT loads:

    x -+-> RRAM  W' = W + dW ---------------------+
       +-> SRAM  [B0 s0 | B] [A0 ; A]  (scaling 1) +-> W x + B0 A0 x s0 + (dW + B A) x
                  task LoRA  correction

Every RRAM layer gets k more rows (a layer without task LoRA gets a rank-k one); the task
LoRA's scaling s0 is folded into its B so that every module has scaling 1. `widen` builds
that structure once around a loaded source adapter, `embed_state` puts any source state of
the same shape into it with a zero correction (identical outputs), and `write_correction`
fills the correction rows for the chip now programmed. Gradient steps on the chip
(halora.recalibrate) can follow and tune task and correction rows together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from halora.cim import Chip, Placement, canonical_name, rram_layers
from halora.errors import UsageError
from halora.lora import adapter_tensors

DAMPING = 1e-4  # ridge on S, relative to its mean eigenvalue: unexcited directions stay put


@dataclass(frozen=True)
class TwinLayout:
    """Where the correction rows sit in a widened adapter (canonical layer names)."""

    rank: int  # correction rows per RRAM layer
    source_ranks: dict[str, int]  # task-LoRA rows at the front of each module (0: none)
    source_scaling: dict[str, float]  # the source adapter's alpha/r, folded into B on embed
    rram: tuple[str, ...]  # the layers that carry a correction


@dataclass
class InputMoments:
    """Eigenpairs of each RRAM layer's input second moment E[x x^T] (calibration prompts,
    clean model with the source adapter); layers that read the same tensor (q/k/v, gate/up)
    share one entry."""

    groups: dict[str, str] = field(default_factory=dict)  # layer -> layer whose input it shares
    eigen: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (L, Q)
    tokens: int = 0

    def of(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.eigen[self.groups[layer]]


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Canonical layer name -> PEFT LoRA layer wrapping it."""
    from peft.tuners.lora import LoraLayer

    modules = model.named_modules()
    return {canonical_name(name): module for name, module in modules if isinstance(module, LoraLayer)}


def widen(model, rank: int, placement: Placement = Placement()):
    """A PeftModel around the same base with the active adapter's LoRA (scaling folded in)
    plus `rank` correction rows on every RRAM layer; the correction starts at zero, so the
    outputs are the source's. The returned model carries its `TwinLayout` as `twin_layout`."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise UsageError(f"the twin correction needs a rank >= 1, got {rank}")
    adapter = model.active_adapter
    config = model.peft_config[adapter]
    if getattr(config, "use_dora", False) or config.modules_to_save:
        raise UsageError("the twin correction widens plain LoRA adapters only (no DoRA, no modules_to_save)")
    sources = lora_modules(model)
    rram = tuple(rram_layers(model, placement))
    layout = TwinLayout(
        rank,
        {name: module.r[adapter] for name, module in sources.items()},
        {name: float(module.scaling[adapter]) for name, module in sources.items()},
        rram,
    )
    state = adapter_tensors(model)
    base = model.unload()
    names = list(dict.fromkeys([*sources, *rram]))
    ranks = {name: layout.source_ranks.get(name, 0) + (rank if name in rram else 0) for name in names}
    wide_config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=names,
        rank_pattern={_exact(name): r for name, r in ranks.items()},
        alpha_pattern={_exact(name): r for name, r in ranks.items()},  # scaling alpha/r = 1
        lora_dropout=0.0,
        bias=config.bias,
        task_type=config.task_type,
    )
    wide = get_peft_model(base, wide_config)
    wide.twin_layout = layout
    embed_into(wide, state)
    return wide


def _exact(name: str) -> str:
    """A rank_pattern key that matches this one module (PEFT matches keys as regexes)."""
    return "^" + name.replace(".", r"\.") + "$"


def embed_state(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A source adapter's state (PEFT state-dict names) in the widened layout: its rows
    first, B times the source scaling, zero correction. A widened state passes unchanged."""
    layout: TwinLayout = model.twin_layout
    wide = {name: torch.zeros_like(tensor) for name, tensor in adapter_tensors(model).items()}
    if all(state.get(name) is not None and state[name].shape == t.shape for name, t in wide.items()):
        return state
    for name, tensor in state.items():
        if name not in wide:
            raise UsageError(
                f"the adapter state has {name}, which the widened adapter lacks: a different source adapter?"
            )
        layer = canonical_name(name.rsplit(".lora_", 1)[0])
        rows = layout.source_ranks.get(layer, 0)
        if name.endswith("lora_A.weight"):
            wide[name][:rows] = tensor
        else:
            wide[name][:, :rows] = tensor * layout.source_scaling[layer]
    return wide


def embed_into(model, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, embed_state(model, state))


class _MomentHooks:
    """Forward hooks that add each RRAM layer's unpadded inputs to a running x x^T."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.groups: dict[str, str] = {}
        self.tokens = 0
        self.mask: torch.Tensor | None = None
        # q/k/v (and gate/up) read one tensor one after another: the last input seen, and
        # the layer that first read it, tell which layers share a moment
        self._last: tuple[torch.Tensor, str] | None = None
        self._handles = [layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str):
        def hook(module, args, output) -> None:
            x = args[0]
            first = self._last[1] if self._last is not None and self._last[0] is x else name
            self._last = (x, first)
            self.groups[name] = first
            if first != name:
                return
            rows = x.detach().reshape(-1, x.shape[-1])
            if self.mask is not None:
                rows = rows[self.mask.reshape(-1).to(rows.device).bool()]
            rows = rows.float()  # float32 sums: a 1B model's moments are GBs already
            product = rows.T @ rows
            self.sums[name] = product if name not in self.sums else self.sums[name] + product

        return hook

    def batch(self, mask: torch.Tensor) -> None:
        self.mask, self._last = mask, None
        self.tokens += int(mask.sum())

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def input_moments(model, batches, placement: Placement = Placement()) -> InputMoments:
    """E[x x^T] of every RRAM layer's input over `batches` (dicts of input_ids and
    attention_mask; padding is left out), as eigenpairs. `model` as it is now: call it on
    the clean model with the source adapter, before programming."""
    hooks = _MomentHooks(rram_layers(model, placement))
    device = next(model.parameters()).device
    try:
        for batch in batches:
            hooks.batch(batch["attention_mask"])
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    finally:
        hooks.close()
    if not hooks.tokens:
        raise UsageError("no calibration tokens for the twin correction: check --calib-n")
    moments = InputMoments(dict(hooks.groups), tokens=hooks.tokens)
    for name, total in hooks.sums.items():
        values, vectors = torch.linalg.eigh(total.double() / hooks.tokens)
        moments.eigen[name] = (values.clamp_min(0).float(), vectors.float())
    return moments


def correction(error: torch.Tensor, eigen: tuple[torch.Tensor, torch.Tensor], rank: int):
    """(A [k, in], B [out, k], share of E|dW x|^2 removed) for one layer's error dW [out, in]."""
    values, vectors = (t.to(error.device) for t in eigen)
    values = values + DAMPING * values.mean().clamp_min(torch.finfo(values.dtype).tiny)
    u, sigma, vh = torch.linalg.svd(error.float() @ (vectors * values.sqrt()), full_matrices=False)
    k = min(rank, sigma.numel())
    root = sigma[:k].sqrt()
    a = (root[:, None] * vh[:k]) @ (vectors * values.rsqrt()).T
    b = -u[:, :k] * root
    if k < rank:  # a layer narrower than the rank: the spare rows stay zero
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
    total = float((sigma**2).sum())
    return a, b, float((sigma[:k] ** 2).sum()) / total if total > 0 else 1.0


@torch.no_grad()
def write_correction(model, chip: Chip, moments: InputMoments, rank: int | None = None) -> dict[str, float]:
    """Fill the correction rows of the widened `model` for the programmed `chip` (the first
    `rank` of them; the rest are zeroed); returns the share of E|dW x|^2 removed per layer."""
    layout: TwinLayout = model.twin_layout
    rank = layout.rank if rank is None else rank
    if not 1 <= rank <= layout.rank:
        raise UsageError(f"twin rank {rank}: the adapter was widened by {layout.rank} rows")
    adapter = model.active_adapter
    modules = lora_modules(model)
    removed = {}
    for name in layout.rram:
        a, b, removed[name] = correction(chip.programming_error(name), moments.of(name), rank)
        lora_a, lora_b = modules[name].lora_A[adapter].weight, modules[name].lora_B[adapter].weight
        lora_a[-layout.rank :] = 0
        lora_b[:, -layout.rank :] = 0
        start = lora_a.shape[0] - layout.rank
        lora_a[start : start + rank] = a.to(lora_a.dtype)
        lora_b[:, start : start + rank] = b.to(lora_b.dtype)
    return removed
