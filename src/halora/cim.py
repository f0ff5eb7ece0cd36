"""What lives where on the hybrid compute-in-memory chip, and programming a chip.

The paper's mapping (Wu et al., HaLoRA, arXiv 2502.19747):

    RRAM analog CIM   the frozen base weights of the linear layers inside the
                      transformer blocks (q, k, v, o, gate, up, down): dense, efficient, noisy
    SRAM digital CIM  the LoRA branches A and B (and the attention matmuls, which have
                      no weights): exact and rewritable
    digital           embeddings, norms, biases, softmax, activations, lm_head (by default)

Programming a chip writes the RRAM-placed weights through a noise model, once per chip
seed. Each layer's draw derives from (seed, layer name) alone, so the same chip comes
out whatever the order of layers and whether or not a PEFT adapter wraps the model:
every adapter is evaluated on identical chips. The generators live on the CPU, so a seed
draws the same noise on a CPU and on a GPU (the arithmetic after the draw may still round
differently in the last bit). The LoRA path is never touched.

Undo is exact: the clean weights are stashed before the first write and copied back
bit for bit. To keep peak memory near the clean model's (a second copy of a 3B model
does not fit beside it on a GPU), the stash lives off the weights' device: in host
memory for accelerator weights, in an unlinked temporary file for CPU weights. Only
`store="device"` keeps the clean copy beside the weights (one more copy of the RRAM
weights in memory), for `Chip.clean_view`: distillation reads the clean and the
programmed model at every step.

Drift compensation (`compensate=True`, after IBM aihwkit's GlobalDriftCompensation): the
periphery of each RRAM layer measures, once, how much its output has shrunk or grown since
programming and scales the layer's digital output back by one factor alpha. See
`global_drift_alpha` and `Chip`.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from halora.errors import UsageError
from halora.noise import NoiseModel, parse_noise_spec, reference_model, retime, split_noise
from halora.seeds import derive_seed
from halora.settings import check, setting

# Llama/Qwen/Gemma/Mistral names; GPT-2 style models use c_attn, c_proj, c_fc.
DEFAULT_RRAM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"
_IN_BLOCK = re.compile(r"\.\d+\.")  # a module inside a ModuleList of blocks: "...layers.3.mlp..."
_PEFT_PREFIX = "base_model.model."

Store = Literal["auto", "host", "disk", "device"]

CLEAN_REFERENCE = "clean"
"""``compensate_ref`` value that calibrates against the clean weights (aihwkit's
GlobalDriftCompensationWithExactReference) instead of the chip right after programming."""


@dataclass(frozen=True)
class Placement:
    """Which weights go onto RRAM. Everything else is SRAM (LoRA) or digital."""

    WHAT: ClassVar[str] = "placement"

    rram_targets: tuple[str, ...] = setting(
        DEFAULT_RRAM_TARGETS,
        f"block linear layers on RRAM (leaf names), or {ALL_LINEAR} for every linear layer in a block",
    )
    # The paper maps the transformer blocks only; lm_head is a large matrix too and a
    # designer may want it on RRAM (it is then noisy, and untied from the embeddings).
    lm_head: bool = setting(False, "put lm_head on RRAM too (the paper keeps it digital)")

    def __post_init__(self) -> None:
        check(self)
        if not self.rram_targets:
            raise UsageError("the RRAM placement needs at least one target layer name")


@dataclass(frozen=True)
class ChipChoice:
    """One programmed chip: its noise spec and its seed (the same pair, the same chip)."""

    WHAT: ClassVar[str] = "chip setting"

    noise: str = setting("none", "chip noise spec, e.g. gaussian:sigma=0.02 (see the README's noise table)")
    chip_seed: int = setting(
        0, "chip seed: the same spec and seed give the same chip", min=0, aliases=("seed",)
    )

    def __post_init__(self) -> None:
        check(self)
        parse_noise_spec(self.noise)  # a bad spec fails before the model loads


def canonical_name(name: str) -> str:
    """The layer's name without PEFT's wrapping, so draws match with and without an adapter."""
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX) :]
    return name.replace(".base_layer", "")


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2) is a linear layer with a transposed weight.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _adapter_module_ids(model: nn.Module) -> set[int]:
    """ids of the modules inside adapter branches (LoRA A and B, dropout): the SRAM side."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapter_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            base_ids = {id(m) for m in base.modules()}
            adapter_ids.update(
                id(child) for child in module.modules() if child is not module and id(child) not in base_ids
            )
    return adapter_ids


def rram_layers(model: nn.Module, placement: Placement = Placement()) -> dict[str, nn.Module]:
    """Canonical name -> linear layer whose weight lives on RRAM, in model order."""
    lora_ids = _adapter_module_ids(model)
    every_linear = placement.rram_targets == (ALL_LINEAR,)
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not _is_linear(module) or id(module) in lora_ids:
            continue
        canonical = canonical_name(name)
        leaf = canonical.rsplit(".", 1)[-1]
        in_block = bool(_IN_BLOCK.search(f".{canonical}."))
        targeted = in_block and (every_linear or leaf in placement.rram_targets)
        if targeted or (placement.lm_head and leaf == "lm_head"):
            layers[canonical] = module
    if not layers:
        raise UsageError(
            f"no linear layer inside the transformer blocks matches the RRAM targets "
            f"{', '.join(placement.rram_targets)}: name them with --rram-targets or use {ALL_LINEAR}"
        )
    return layers


@dataclass
class PlacementReport:
    """Parameters per place, as in the paper's "LoRA is 0.15 % of LLaMA-3.2-1B"."""

    params: dict[str, int]
    rram_layers: int
    lora_modules: int
    tile: tuple[int, int] = (64, 64)
    rram_tiles: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.params.values())

    def share(self, place: str) -> float:
        return self.params[place] / self.total if self.total else 0.0

    def to_json(self) -> dict:
        return {
            "params": self.params,
            "total_params": self.total,
            "share": {place: self.share(place) for place in self.params},
            "rram_layers": self.rram_layers,
            "lora_modules": self.lora_modules,
            "rram_tiles": self.rram_tiles,
            "tile": list(self.tile),
            "notes": self.notes,
        }


def placement_report(
    model: nn.Module, placement: Placement = Placement(), tile: tuple[int, int] = (64, 64)
) -> PlacementReport:
    """Count every parameter once (tied weights once) as RRAM, SRAM (LoRA) or digital."""
    layers = rram_layers(model, placement)
    rram_ids = {id(layer.weight) for layer in layers.values()}
    lora_ids = _adapter_module_ids(model)
    sram_ids = {id(p) for m in model.modules() if id(m) in lora_ids for p in m.parameters(recurse=False)}
    params = {"rram": 0, "sram": 0, "digital": 0}
    for parameter in model.parameters():  # yields each shared tensor once
        place = "rram" if id(parameter) in rram_ids else "sram" if id(parameter) in sram_ids else "digital"
        params[place] += parameter.numel()
    tiles = sum(_tile_count(layer.weight.shape, tile) for layer in layers.values())
    notes = []
    if placement.lm_head and _tied_lm_head(model):
        notes.append("lm_head is tied to the input embeddings: programming unties it")
    return PlacementReport(params, len(layers), _count_lora_modules(model), tile, tiles, notes)


def _count_lora_modules(model: nn.Module) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(1 for m in model.modules() if isinstance(m, LoraLayer))


def _tile_count(shape: torch.Size, tile: tuple[int, int]) -> int:
    rows, cols = shape
    return -(-rows // tile[0]) * -(-cols // tile[1])


def _tied_lm_head(model: nn.Module) -> bool:
    get_in, get_out = (
        getattr(model, "get_input_embeddings", None),
        getattr(model, "get_output_embeddings", None),
    )
    if get_in is None or get_out is None or get_out() is None:
        return False
    return get_in().weight is get_out().weight


def layer_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (chip seed, canonical layer name): order-independent draws."""
    return derive_seed("halora", seed, name)


def layer_generator(seed: int, name: str, device: torch.device | str | None = None) -> torch.Generator:
    """The layer's generator: on the CPU whatever ``device`` the weight is on.

    The noise models draw on the generator's device and move the draws to the weight's, so
    one chip seed gives the same chip on a CPU and on any GPU (a CUDA generator's stream
    differs from the CPU's). ``device`` is accepted for callers that name the weight's device.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(layer_seed(seed, name))
    return generator


class _MemoryStash:
    """Clean weights as tensors in memory: on the host (CPU copies, for weights on an
    accelerator) or on the weights' own device (`on_device`: `Chip.clean_view` points the
    layers at them without a copy, for one more copy of the RRAM weights in memory)."""

    def __init__(self, on_device: bool = False) -> None:
        self.on_device = on_device
        self._tensors: dict[str, torch.Tensor] = {}

    def put(self, name: str, weight: torch.Tensor) -> None:
        weight = weight.detach()
        self._tensors[name] = weight.clone() if self.on_device else weight.to("cpu", copy=True)

    def restore_into(self, name: str, weight: torch.Tensor) -> None:
        weight.copy_(self._tensors[name])

    def tensor(self, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
        return self._tensors[name]

    def close(self) -> None:
        self._tensors.clear()


class _DiskStash:
    """Clean weights as raw bytes in an unlinked temporary file: for CPU weights, where
    host memory is the same memory. Restoring reads straight into the weight's storage."""

    def __init__(self, directory: str | None = None) -> None:
        # closed in close(), when the chip is restored; unlinked from the start
        self._file = tempfile.TemporaryFile(  # noqa: SIM115
            dir=directory or os.environ.get("HALORA_STASH_DIR")
        )
        self._offsets: dict[str, tuple[int, int]] = {}

    def put(self, name: str, weight: torch.Tensor) -> None:
        data = _raw_bytes(weight.detach().to("cpu").contiguous())
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(data)
        self._offsets[name] = (offset, len(data))

    def restore_into(self, name: str, weight: torch.Tensor) -> None:
        offset, size = self._offsets[name]
        self._file.seek(offset)
        if weight.device.type == "cpu" and weight.is_contiguous():
            view = _raw_bytes(weight.detach())
            if self._file.readinto(view) != size:
                raise RuntimeError(f"stash of {name} is truncated")
            return
        weight.copy_(self.tensor(name, weight))

    def tensor(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A CPU copy of the stashed weight (shaped and typed like `like`)."""
        offset, size = self._offsets[name]
        self._file.seek(offset)
        staging = torch.empty_like(like, device="cpu").contiguous()
        if self._file.readinto(_raw_bytes(staging)) != size:
            raise RuntimeError(f"stash of {name} is truncated")
        return staging

    def close(self) -> None:
        self._file.close()


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's storage (bf16 included)."""
    return memoryview(tensor.view(-1).view(torch.uint8).numpy())


def global_drift_alpha(reference: torch.Tensor, current: torch.Tensor) -> float:
    """One output scale for a layer: ``alpha = |W_ref X|_1 / |W_t X|_1 = sum|W_ref| / sum|W_t|``.

    ``X`` is the calibration input: the one-hot vectors ``e_1 .. e_n`` (the identity), the
    readout tensor of aihwkit's GlobalDriftCompensation (``eye(in_size)``; its readout is the
    mean of ``|W X|``, and the means' ratio is this one). One-hot inputs read every weight once
    and cannot cancel, unlike an all-ones input whose row sums of signed weights can be near 0.
    Sums in float64. Returns 1 when the current readout is 0 (an all-zero layer: nothing to scale).
    """
    current_sum = current.detach().double().abs().sum().item()
    reference_sum = reference.detach().double().abs().sum().item()
    if current_sum == 0 or not math.isfinite(current_sum) or not math.isfinite(reference_sum):
        return 1.0
    return reference_sum / current_sum


class Chip:
    """One programmed chip: a noise model written into a model's RRAM-placed weights.

    Use `program_chip(...)` as a context manager, or call `restore()` yourself.
    `reprogram(seed)` draws a new chip from the same clean weights (training re-draws
    the noise every K steps this way) without stashing them again.

    `compensate=True` adds global drift compensation (aihwkit's GlobalDriftCompensation, one
    scale per layer rather than per 512x512 analog tile): after programming a layer at its
    time t, the same chip (same seed, same draws) is programmed at the reference time and
    `alpha = sum|W_ref| / sum|W_t|` (`global_drift_alpha`, calibration input the one-hot
    vectors) is measured once; the programmed weight is multiplied by alpha, which is what
    scaling the layer's digital output does. The reference (`compensate_ref`): None, the chip
    right after programming (each time-dependent part at its reference time: wan2022 1 s,
    cmo 0, pcm t0 = 20 s; see `halora.noise.reference_model`), as aihwkit reads its baseline
    right after programming; a time (seconds or `1h`) for that time instead; or "clean" for the
    clean weights (aihwkit's GlobalDriftCompensationWithExactReference). A model that is its
    own reference (no time-dependent part, or already at its reference time) gets alpha = 1
    without a second draw. The readout is noiseless: read noise, if any, is applied afterwards
    at every pass to the compensated weights (for the tile-scaled read models that is the same
    as scaling the noisy output by alpha, since their noise is relative to the tile's max).
    `alphas` holds the factor per layer and `compensation_json()` a summary. `restore()`
    still gives the clean weights bit for bit (they come from the stash).
    """

    def __init__(
        self,
        model: nn.Module,
        noise: NoiseModel | str,
        seed: int,
        placement: Placement = Placement(),
        store: Store = "auto",
        *,
        compensate: bool = False,
        compensate_ref: float | str | None = None,
    ) -> None:
        self.model = model
        self.compensate = compensate
        self.compensate_ref = compensate_ref
        self.alphas: dict[str, float] = {}
        self._set_noise(noise)
        self.placement = placement
        self.layers = rram_layers(model, placement)
        self.seed = seed
        self._untied: nn.Parameter | None = None
        self._stash = None
        self._hooks: list = []
        self._store = store
        self._program_all(seed, first=True)
        self._install_read_noise()

    def _set_noise(self, noise: NoiseModel | str) -> None:
        """The noise model, its programming and read parts, and the compensation reference."""
        self.noise = parse_noise_spec(noise) if isinstance(noise, str) else noise
        self.programming, self.read = split_noise(self.noise)
        self._reference = self._compensation_reference()

    def _compensation_reference(self) -> NoiseModel | str | None:
        """What `compensate` calibrates against: a programming model, "clean", or None (off)."""
        if not self.compensate or self.programming is None:
            return None
        ref = self.compensate_ref
        if isinstance(ref, str) and ref.strip().lower() == CLEAN_REFERENCE:
            return CLEAN_REFERENCE
        if ref is None:
            return reference_model(self.programming)
        return retime(self.programming, ref)

    def compensation_json(self) -> dict | None:
        """What drift compensation did, for a results file: None when it is off.

        ``reference`` is the spec (or "clean") calibrated against, ``alpha`` the factor per
        layer (canonical names) and ``alpha_mean``/``alpha_min``/``alpha_max`` their summary.
        """
        if not self.compensate:
            return None
        values = list(self.alphas.values())
        reference = self._reference
        return {
            "compensate": True,
            "reference": reference.spec() if isinstance(reference, NoiseModel) else reference,
            "calibration_input": "one-hot (identity)",
            "alpha_mean": sum(values) / len(values) if values else None,
            "alpha_min": min(values) if values else None,
            "alpha_max": max(values) if values else None,
            "alpha": dict(self.alphas),
        }

    @property
    def programmed(self) -> bool:
        return self._stash is not None

    def reprogram(
        self, seed: int, noise: NoiseModel | str | None = None, *, compensate: bool | None = None
    ) -> None:
        """Draw a new chip (new seed, optionally a new noise model, compensation switched on
        or off) from the stashed clean weights, without stashing them again."""
        if not self.programmed:
            raise RuntimeError("this chip was restored; program a new one")
        if compensate is not None:
            self.compensate = compensate
        if noise is not None or compensate is not None:
            self._set_noise(self.noise if noise is None else noise)
        self._remove_read_noise()
        self.seed = seed
        self._program_all(seed, first=False)
        self._install_read_noise()

    def restore(self) -> None:
        """Put the clean weights back, bit for bit, and remove the read-noise hooks."""
        if not self.programmed:
            return
        self._remove_read_noise()
        with torch.no_grad():
            for name, layer in self.layers.items():
                self._stash.restore_into(name, layer.weight)
        self._stash.close()
        self._stash = None
        self._retie_lm_head()

    @torch.no_grad()
    def programming_error(self, name: str) -> torch.Tensor:
        """W' - W of one RRAM layer, [out, in] as nn.Linear stores it, float32, on the
        weight's device: what program-and-verify's read-back tells a digital twin (read
        noise, drawn afresh at every pass, is not part of it)."""
        layer = self.layers[name]
        clean = self._stash.tensor(name, layer.weight).to(layer.weight.device)
        error = layer.weight.float() - clean.float()
        return error if isinstance(layer, nn.Linear) else error.t()

    @contextmanager
    def clean_view(self) -> Iterator[None]:
        """The clean weights in place of the programmed ones for a with-block, read noise
        off: the layers point at the stashed clean tensors (no copy), then back. Needs
        store="device". Nothing may write the weights inside the block."""
        if not (isinstance(self._stash, _MemoryStash) and self._stash.on_device):
            raise RuntimeError('clean_view needs a chip programmed with store="device"')
        programmed = {name: layer.weight.data for name, layer in self.layers.items()}
        for handles in self._hooks:
            handles.hook.enabled = False
        try:
            for name, layer in self.layers.items():
                layer.weight.data = self._stash.tensor(name)
            yield
        finally:
            for name, layer in self.layers.items():
                layer.weight.data = programmed[name]
            for handles in self._hooks:
                handles.hook.enabled = True

    @torch.no_grad()
    def _program_all(self, seed: int, first: bool) -> None:
        if first:
            self._untie_lm_head_if_placed()
            self._stash = self._make_stash()
        self.alphas = {}
        for name, layer in self.layers.items():
            weight = layer.weight
            if first:
                self._stash.put(name, weight)
            else:
                self._stash.restore_into(name, weight)
            if self.programming is not None:
                generator = layer_generator(seed, name)
                programmed = _as_linear_layout(layer, self.programming.apply, weight, generator)
                if self._reference is not None:
                    programmed = self._compensated(layer, name, seed, programmed)
                weight.copy_(programmed)

    def _compensated(self, layer: nn.Module, name: str, seed: int, programmed: torch.Tensor) -> torch.Tensor:
        """``programmed`` times the layer's alpha (recorded in `alphas`); the layer still holds
        the clean weight, from which the reference is drawn with the same generator seed."""
        reference = self._reference
        if reference == self.programming:
            self.alphas[name] = 1.0  # its own reference: alpha is 1 by construction
            return programmed
        if reference == CLEAN_REFERENCE:
            ref_weight = layer.weight
        else:
            generator = layer_generator(seed, name)  # the same chip: same seed, same draws
            ref_weight = _as_linear_layout(layer, reference.apply, layer.weight, generator)
        alpha = global_drift_alpha(ref_weight, programmed)
        self.alphas[name] = alpha
        return (programmed.float() * alpha).to(programmed.dtype)

    def _make_stash(self):
        devices = {layer.weight.device.type for layer in self.layers.values()}
        store = self._store
        if store == "auto":
            store = "disk" if devices == {"cpu"} else "host"
        if store == "host":
            return _MemoryStash()
        if store == "disk":
            return _DiskStash()
        if store == "device":
            return _MemoryStash(on_device=True)
        raise UsageError(f"unknown stash store {store!r}: use auto, host, disk or device")

    def _remove_read_noise(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _install_read_noise(self) -> None:
        if self.read is None:
            return
        for name, layer in self.layers.items():
            self._hooks.append(_ReadNoiseHook.attach(layer, self.read, self.seed, name))

    def _untie_lm_head_if_placed(self) -> None:
        """A tied lm_head on RRAM gets its own copy, so the embeddings stay clean."""
        if not (self.placement.lm_head and _tied_lm_head(self.model)):
            return
        head = self.model.get_output_embeddings()
        self._untied = head.weight
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
        for name, layer in self.layers.items():
            if layer is head:
                self.layers[name] = head

    def _retie_lm_head(self) -> None:
        if self._untied is not None:
            self.model.get_output_embeddings().weight = self._untied
            self._untied = None

    def __enter__(self) -> Chip:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _as_linear_layout(layer: nn.Module, apply, weight: torch.Tensor, generator) -> torch.Tensor:
    """Noise models see [out, in] as nn.Linear stores it; Conv1D stores [in, out]."""
    if isinstance(layer, nn.Linear):
        return apply(weight, generator)
    return apply(weight.t(), generator).t()


class _ReadNoiseHook:
    """Read noise: a fresh draw around the programmed weight at every forward pass.

    The programmed weight is swapped out for a noisy copy before the layer runs and
    swapped back after, so one layer's worth of memory is extra at any time. Draws come
    from a per-layer CPU generator seeded from (chip seed, name): a run is reproducible, and
    the same on every device (the draws move to the weight's device afterwards).
    """

    def __init__(self, layer: nn.Module, model: NoiseModel, seed: int, name: str) -> None:
        self.layer, self.model = layer, model
        self.generator = layer_generator(seed, f"read:{name}")  # CPU, as for programming
        self.saved: torch.Tensor | None = None
        self.enabled = True  # off while Chip.clean_view shows the clean weights

    @classmethod
    def attach(cls, layer: nn.Module, model: NoiseModel, seed: int, name: str):
        hook = cls(layer, model, seed, name)
        pre = layer.register_forward_pre_hook(hook.before)
        post = layer.register_forward_hook(hook.after)
        return _Handles(hook, pre, post)

    def before(self, module: nn.Module, args) -> None:
        if not self.enabled:
            return
        self.saved = module.weight.data
        with torch.no_grad():
            module.weight.data = _as_linear_layout(module, self.model.apply, self.saved, self.generator)

    def after(self, module: nn.Module, args, output) -> None:
        if self.saved is None:
            return
        module.weight.data = self.saved
        self.saved = None


@dataclass
class _Handles:
    hook: _ReadNoiseHook
    pre: torch.utils.hooks.RemovableHandle
    post: torch.utils.hooks.RemovableHandle

    def remove(self) -> None:
        self.pre.remove()
        self.post.remove()


@contextmanager
def program_chip(
    model: nn.Module,
    noise: NoiseModel | str,
    seed: int,
    placement: Placement = Placement(),
    store: Store = "auto",
    *,
    compensate: bool = False,
    compensate_ref: float | str | None = None,
) -> Iterator[Chip]:
    """Program one chip for the duration of a with-block; the clean model comes back after.

    ``compensate`` and ``compensate_ref``: global drift compensation, as in `Chip`.

    >>> with program_chip(model, "gaussian:sigma=0.02", seed=0):
    ...     evaluate(model)
    >>> with program_chip(model, "pcm:t=1mo", seed=0, compensate=True) as chip:
    ...     evaluate(model), chip.compensation_json()["alpha_mean"]
    """
    chip = Chip(model, noise, seed, placement, store, compensate=compensate, compensate_ref=compensate_ref)
    try:
        yield chip
    finally:
        chip.restore()
