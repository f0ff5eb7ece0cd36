"""What an adapter folder records beside PEFT's files: halora.json, the provenance of a run.

PEFT drops unknown keys from adapter_config.json, so how an adapter was trained (method,
noise, seeds, the base model and a hash of its weights, versions) lives in this sidecar.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from halora.cim import canonical_name
from halora.errors import UsageError

if TYPE_CHECKING:
    from halora.cim import Placement
    from halora.lora import LoraSettings
    from halora.train import TrainSettings

SIDECAR = "halora.json"
# Training settings that only mean something when the method uses them: recorded as null
# otherwise, so halora.json never shows a noise, a mu or a KL weight the run did not apply.
NOISE_KEYS = ("train_noise", "redraw_every", "noise_seed", "noise_ramp_steps", "noise_targets")
REG_KEYS = ("mu", "reduction", "reg_scaled", "mu_warmup_steps")
DISTILL_KEYS = ("distill_weight",)


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the base model's named tensors: ties an adapter to the weights it was
    trained on. Adapter tensors are left out, so the hash is the same with or without one."""
    digest = hashlib.sha256()
    base = {
        canonical_name(name): tensor for name, tensor in model.state_dict().items() if "lora_" not in name
    }
    for name, tensor in sorted(base.items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def sidecar(
    settings: TrainSettings,
    lora: LoraSettings,
    placement: Placement,
    model_name: str,
    base_hash: str,
    extra: dict,
) -> dict:
    """What PEFT's adapter_config.json cannot hold: how the adapter was trained."""
    import peft
    import transformers

    from halora import __version__

    return {
        "halora_version": __version__,
        "method": settings.method,
        "training": used_settings(settings),
        "noise_ramp_steps_used": settings.ramp_steps if settings.injects_noise else 0,
        "noise_seed_used": settings.effective_noise_seed if settings.injects_noise else None,
        "lora": asdict(lora),
        "placement": asdict(placement),
        "base_model": model_name,
        "base_model_sha256": base_hash,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "command": sys.argv,
        **extra,
    }


def used_settings(settings: TrainSettings) -> dict:
    """The training settings as the run used them: those of a part the method leaves out
    (noise, the regulariser, the KL term) are None."""
    unused = (
        (() if settings.injects_noise else NOISE_KEYS)
        + (() if settings.regularizes else REG_KEYS)
        + (() if settings.distills else DISTILL_KEYS)
    )
    return {key: None if key in unused else value for key, value in asdict(settings).items()}


def read_sidecar(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / SIDECAR
    if not path.is_file():
        raise UsageError(f"{adapter_dir} has no {SIDECAR}: not an adapter trained by halora train")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from err


def check_base(
    adapter_dir: str | Path,
    model: torch.nn.Module,
    model_name: str,
    base_hash: str | None = None,
    allow_flag: str = "",
) -> dict:
    """An adapter's sidecar, after checking it was trained on these very base weights (an
    adapter fits any model of the same shapes, and silently means nothing on another one).
    Adapters without a sidecar (stock PEFT) pass unchecked: {} is returned.

    `base_hash`: weights_hash(model) when the caller has it already (it takes about 1 s for
    a 135M model: a caller checking several adapters computes it once). `allow_flag`: the
    caller's flag that skips this check, named in the message."""
    if not (Path(adapter_dir) / SIDECAR).is_file():
        return {}
    record = read_sidecar(adapter_dir)
    trained_on = record.get("base_model_sha256")
    if trained_on and trained_on != (base_hash or weights_hash(model)):
        trained_name = record.get("base_model") or "another model"
        raise UsageError(_other_base_message(adapter_dir, trained_name, model, model_name, allow_flag))
    return record


def _other_base_message(
    adapter_dir: str | Path, trained_name: str, model: torch.nn.Module, model_name: str, allow_flag: str
) -> str:
    """Both models named. The hash covers the dtype, so a model loaded in another dtype than
    float32 has other weights too: the fix then names the dtype."""
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    dtype_name = str(dtype).removeprefix("torch.")
    full = dtype == torch.float32
    loaded = model_name if full else f"{model_name} in {dtype_name}"
    fix = trained_name if full else f"{trained_name} in the dtype it was trained in"
    escape = f", or pass {allow_flag} to use it anyway" if allow_flag else ""
    return (
        f"adapter {adapter_dir} was trained on {trained_name}, but the model loaded is {loaded} "
        f"(other weights): load {fix}{escape}"
    )
