"""The model side: a transformer's shapes from its config.json, and its weight matrices."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from halora.errors import UsageError

MODELS = Path(__file__).resolve().parent.parent / "presets" / "models"
# Same as halora.lora.PAPER_TARGETS, not imported: the energy model stays free of torch.
PAPER_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
LAYOUTS = ("paper", "exact")
# The models whose energy the HaLoRA paper reports (Table 6 / Fig. 7): counted its way by
# default (workload.layout "auto"), so that its figures stay reproduced.
PAPER_MODELS = ("llama-3.2-1b", "llama-3.2-3b")


@dataclass(frozen=True)
class Arch:
    """The shapes of a decoder-only transformer, as read from its config.json."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool

    @property
    def params(self) -> int:
        """Weights of the real model: block matrices, norms, embedding, untied lm_head."""
        block = sum(m.weights for m in block_matrices(self, "exact"))
        norms = (2 * self.layers + 1) * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return block + norms + embeddings


def bundled_models() -> list[str]:
    return sorted(path.stem for path in MODELS.glob("*.json"))


def is_paper_model(arch: Arch) -> bool:
    """Is `arch` one of PAPER_MODELS? Compared by shape, not name: a downloaded config of
    the same model (Llama-3.2-1B, its Instruct variant) counts too."""
    shape = replace(arch, name="")
    return any(shape == replace(load_arch(name), name="") for name in PAPER_MODELS)


def load_arch(name_or_path: str | Path) -> Arch:
    """A bundled model name, a config.json path, or a model folder holding a config.json."""
    name = str(name_or_path)
    if name in bundled_models():
        text = (MODELS / f"{name}.json").read_text(encoding="utf-8")
        return arch_from_config(json.loads(text), name)
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UsageError(
            f"unknown model {name!r}: use one of {', '.join(bundled_models())}, "
            "a config.json path or a model folder"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not a JSON config: {err}") from None
    label = path.parent.name if path.name == "config.json" else path.stem
    return arch_from_config(config, label)


def arch_from_config(config: dict[str, Any], name: str) -> Arch:
    """Read the architecture keys of an HF config (multimodal configs: its text_config)."""
    config = config.get("text_config", config)
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [key for key in required if not isinstance(config.get(key), int)]
    if missing:
        raise UsageError(
            f"model config {name!r} lacks integer {', '.join(missing)}: "
            "give a decoder-only HF config.json (LLaMA/Qwen/Mistral style)"
        )
    heads = config["num_attention_heads"]
    arch = Arch(
        name=name,
        hidden=config["hidden_size"],
        layers=config["num_hidden_layers"],
        heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate=config["intermediate_size"],
        vocab=config["vocab_size"],
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    sizes = (
        arch.hidden,
        arch.layers,
        arch.heads,
        arch.kv_heads,
        arch.head_dim,
        arch.intermediate,
        arch.vocab,
    )
    if min(sizes) < 1:
        raise UsageError(f"model config {name!r} has a size below 1: check its config.json")
    return arch


@dataclass(frozen=True)
class Matrix:
    """One weight matrix, `rows` inputs × `cols` outputs, present `copies` times (layers)."""

    name: str
    rows: int
    cols: int
    copies: int

    @property
    def weights(self) -> int:
        return self.rows * self.cols * self.copies


def block_matrices(arch: Arch, layout: str, include_lm_head: bool = False) -> list[Matrix]:
    """The weight matrices of all blocks. "paper": q, k, v, o as h×h and a two-matrix MLP,
    the standard-transformer count the HaLoRA figures follow; "exact": the real shapes."""
    h, inner = arch.hidden, arch.intermediate
    if layout == "paper":
        shapes = {
            "q_proj": (h, h),
            "k_proj": (h, h),
            "v_proj": (h, h),
            "o_proj": (h, h),
            "up_proj": (h, inner),
            "down_proj": (inner, h),
        }
    else:
        q_dim, kv_dim = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
        shapes = {
            "q_proj": (h, q_dim),
            "k_proj": (h, kv_dim),
            "v_proj": (h, kv_dim),
            "o_proj": (q_dim, h),
            "gate_proj": (h, inner),
            "up_proj": (h, inner),
            "down_proj": (inner, h),
        }
    matrices = [Matrix(name, rows, cols, arch.layers) for name, (rows, cols) in shapes.items()]
    if include_lm_head:
        matrices.append(Matrix("lm_head", h, arch.vocab, 1))
    return matrices


def lora_matrices(base: list[Matrix], rank: int, targets: tuple[str, ...]) -> list[Matrix]:
    """LoRA A (rows × r) and B (r × cols) for every targeted matrix."""
    by_name = {m.name: m for m in base}
    unknown = [t for t in targets if t not in by_name]
    if unknown:
        raise UsageError(
            f"unknown LoRA target {', '.join(unknown)} for this layout: use some of {', '.join(by_name)}"
        )
    return [
        part
        for t in targets
        for part in (
            Matrix(t, by_name[t].rows, rank, by_name[t].copies),
            Matrix(t, rank, by_name[t].cols, by_name[t].copies),
        )
    ]
