"""Energy and area of LLM inference on hybrid RRAM/SRAM compute-in-memory, with GPU references.

Reads only configs: a model's config.json (its shapes) and a hardware preset (a TOML file
holding every per-operation energy and area, each with its source). Never loads weights.

    arch = load_arch("llama-3.2-1b")
    hardware = load_preset("paper", {"rram.adc_bits": 10})
    report = estimate(arch, hardware, tokens=512, lora_rank=4, lora_targets=PAPER_TARGETS)
    report.to_json()["hybrid_mj"]

How a run is priced:
1. `block_matrices` lists the weight matrices of the blocks (the preset's `layout` says
   whether to use the config's real shapes or the paper's standard-transformer count).
2. `count_work` counts what the run computes: MACs of each matrix and of the LoRA
   branches, attention (query, key) pairs, elements through the digital unit.
3. Each design turns those counts into a ledger of `Cost(layer_type, component, pj)`:
     hybrid     block weights on RRAM tiles, LoRA branches on SRAM digital CIM
     rram_only  LoRA merged into the RRAM weights (no SRAM for LoRA)
     sram_only  every weight on SRAM digital CIM
   All three run attention on SRAM CIM (its operands change every token, which RRAM
   could only hold with a write-verify per token) and share the digital unit and the
   on-chip data movement.
4. GPUs: energy = TDP × time, time = max(compute at peak, HBM traffic at bandwidth) per
   step: one step for a prefill, one per generated token for a decode.

Where each number comes from, how the default `paper` preset reproduces the paper's
figures, and which of its constants were calibrated: presets/energy/paper.toml.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10: the same parser ships as the `tomli` package
    import tomli as tomllib

from halora.errors import UsageError
from halora.files import write_with

# Same as halora.lora.PAPER_TARGETS, not imported: the energy model stays free of torch.
PAPER_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
DEFAULT_PRESET = "paper"
DESIGNS = ("hybrid", "rram_only", "sram_only")
LAYOUTS = ("paper", "exact")
PHASES = ("prefill", "decode")
PJ_PER_MJ = 1e9
UM2_PER_MM2 = 1e6

# FP16 operations per element in the digital unit: (exp, add, multiply).
DIGITAL_RECIPES = {
    "softmax": (1, 3, 1),  # running max, subtract it, exp, sum, scale by 1/sum
    "norm": (0, 1, 3),  # RMSNorm: square-accumulate, scale by 1/rms, gain
    "activation": (1, 1, 3),  # SiLU x/(1+exp(-x)), the divide as two multiplies
    "gate": (0, 0, 1),  # gated MLP: act(gate) * up
    "residual": (0, 1, 0),
}


def _bundled(kind: str):
    return resources.files("halora") / "presets" / kind


# --------------------------------------------------------------------------- models


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
    return sorted(
        p.name.removesuffix(".json") for p in _bundled("models").iterdir() if p.name.endswith(".json")
    )


def load_arch(name_or_path: str | Path) -> Arch:
    """A bundled model name, a config.json path, or a model folder holding a config.json."""
    name = str(name_or_path)
    if name in bundled_models():
        text = (_bundled("models") / f"{name}.json").read_text(encoding="utf-8")
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
    if (
        min(arch.hidden, arch.layers, arch.heads, arch.kv_heads, arch.head_dim, arch.intermediate, arch.vocab)
        < 1
    ):
        raise UsageError(f"model config {name!r} has a size below 1: check its config.json")
    return arch


# ------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class WorkloadRules:
    """How work is counted (part of a preset because the paper's count is a convention)."""

    layout: str
    causal_attention: bool
    include_lm_head: bool
    weight_bits: int
    activation_bits: int


@dataclass(frozen=True)
class RramTile:
    tile_rows: int
    tile_cols: int
    cell_read_fj: float
    dac_pj: float
    adc_bits: int
    adc_fom_fj_per_step: float
    accumulate_pj: float
    cell_area_um2: float
    adcs_per_tile: int
    adc_area_um2: float
    dac_area_um2: float

    @property
    def adc_pj(self) -> float:
        """Walden scaling: every extra bit of resolution doubles the conversion energy."""
        return self.adc_fom_fj_per_step * 2**self.adc_bits / 1000

    @property
    def tile_area_um2(self) -> float:
        # The preset's ADC area is for 8 bits; a SAR ADC's capacitor array doubles per bit.
        adc_um2 = self.adc_area_um2 * 2 ** (self.adc_bits - 8)
        return (
            self.tile_rows * self.tile_cols * self.cell_area_um2
            + self.adcs_per_tile * adc_um2
            + self.tile_rows * self.dac_area_um2
        )


@dataclass(frozen=True)
class SramCim:
    mac_pj: float
    write_pj_per_byte: float
    bit_area_um2: float


@dataclass(frozen=True)
class Digital:
    add_pj: float
    mult_pj: float
    exp_pj: float
    area_mm2: float

    def pj_per_element(self, recipe: str) -> float:
        exps, adds, mults = DIGITAL_RECIPES[recipe]
        return exps * self.exp_pj + adds * self.add_pj + mults * self.mult_pj


@dataclass(frozen=True)
class Movement:
    pj_per_byte: float


@dataclass(frozen=True)
class GpuRules:
    reference: str
    precision: str


@dataclass(frozen=True)
class Gpu:
    tdp_w: float
    int8_tops: float
    bf16_tflops: float
    hbm_tb_s: float


@dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    workload: WorkloadRules
    rram: RramTile
    sram: SramCim
    digital: Digital
    movement: Movement
    gpu: GpuRules
    gpus: dict[str, Gpu]


_SECTIONS = {
    "workload": WorkloadRules,
    "rram": RramTile,
    "sram": SramCim,
    "digital": Digital,
    "movement": Movement,
    "gpu": GpuRules,
}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def bundled_presets() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml") for p in _bundled("energy").iterdir() if p.name.endswith(".toml")
    )


def load_preset(
    name_or_path: str | Path = DEFAULT_PRESET, overrides: dict[str, Any] | None = None
) -> Hardware:
    """A bundled preset name or a TOML path, then `overrides` ({"rram.adc_bits": 10, ...}).

    Override values may be typed or strings as typed on a command line ("10", "exact").
    """
    table = _read_preset_table(str(name_or_path), seen=())
    for key, value in (overrides or {}).items():
        _set_dotted(table, key, value)
    return _validate(_hardware_from_table(table))


def read_overrides_file(path: str | Path) -> dict[str, Any]:
    """A partial preset (TOML) as dotted overrides, to apply on top of a preset."""
    table = _parse_toml(Path(path))
    if "extends" in table:
        raise UsageError(f"{path} has an 'extends' key: pass a full preset with --preset FILE")
    return _flatten(table)


def parse_override(text: str) -> tuple[str, Any]:
    """'rram.adc_bits=10' -> ('rram.adc_bits', 10); a bare word stays a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r} is not KEY=VALUE: write e.g. --set rram.adc_bits=10")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def _parse_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"preset file {str(path)!r} does not exist: give a TOML file path")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"preset file {path} is not valid TOML: {err}") from None


def _read_preset_table(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if name in seen:
        raise UsageError(f"preset {name!r} extends itself: fix its 'extends' chain")
    if name in bundled_presets():
        table = tomllib.loads((_bundled("energy") / f"{name}.toml").read_text(encoding="utf-8"))
    elif Path(name).suffix == ".toml" or Path(name).is_file():
        table = _parse_toml(Path(name))
    else:
        raise UsageError(
            f"unknown preset {name!r}: use one of {', '.join(bundled_presets())} or a TOML file path"
        )
    base = table.pop("extends", None)
    if base is None:
        return table
    return _merge(_read_preset_table(str(base), seen + (name,)), table)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        both_tables = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_tables else value
    return merged


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _set_dotted(table: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = table
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
        keys = list(_flatten(table))
        close = difflib.get_close_matches(dotted, keys, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(keys[:8])}, ..."
        raise UsageError(f"unknown preset key {dotted!r}: {hint}")
    node[leaf] = value


def _coerce(value: Any, type_name: str, where: str) -> Any:
    # bool is a subclass of int in Python: keep true/false out of numbers and vice versa.
    if isinstance(value, bool) == (type_name == "bool"):
        if type_name == "float" and isinstance(value, int):
            return float(value)
        if isinstance(value, _TYPES[type_name]):
            return value
    raise UsageError(f"preset key {where} must be {_TYPE_WORDS[type_name]}, got {value!r}")


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise UsageError(
            f'preset lacks the table [{where}]: add it, or start the file with extends = "paper"'
        )
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise UsageError(f"unknown preset key {where}.{key}: known keys are {', '.join(fields)}")
    missing = [name for name in fields if name not in table]
    if missing:
        raise UsageError(
            f"preset section [{where}] lacks {', '.join(missing)}: "
            'add them or start the file with extends = "paper"'
        )
    return cls(**{name: _coerce(table[name], fields[name], f"{where}.{name}") for name in fields})


def _hardware_from_table(table: dict[str, Any]) -> Hardware:
    expected = {"name", "description", "gpus", *_SECTIONS}
    for key in table:
        if key not in expected:
            raise UsageError(f"unknown preset section {key!r}: known are {', '.join(sorted(expected))}")
    sections = {key: _build(cls, table.get(key), key) for key, cls in _SECTIONS.items()}
    gpus = {name: _build(Gpu, spec, f"gpus.{name}") for name, spec in table.get("gpus", {}).items()}
    return Hardware(
        name=str(table.get("name", "custom")),
        description=str(table.get("description", "")),
        gpus=gpus,
        **sections,
    )


def _validate(hw: Hardware) -> Hardware:
    rules = hw.workload
    if rules.layout not in LAYOUTS:
        raise UsageError(f"workload.layout {rules.layout!r} is unknown: use one of {', '.join(LAYOUTS)}")
    if hw.gpu.precision not in ("int8", "bf16"):
        raise UsageError(f"gpu.precision {hw.gpu.precision!r} is unknown: use int8 or bf16")
    if hw.gpu.reference not in hw.gpus:
        raise UsageError(
            f"gpu.reference {hw.gpu.reference!r} has no [gpus.{hw.gpu.reference}] "
            f"table: use one of {', '.join(hw.gpus) or '(none defined)'}"
        )
    sections = {
        "workload": rules,
        "rram": hw.rram,
        "sram": hw.sram,
        "digital": hw.digital,
        "movement": hw.movement,
        **{f"gpus.{name}": gpu for name, gpu in hw.gpus.items()},
    }
    for where, section in sections.items():
        for f in dataclasses.fields(section):
            if f.type not in ("int", "float"):
                continue
            value = getattr(section, f.name)
            if value < (1 if f.type == "int" else 0):  # ints are sizes and bit widths
                raise UsageError(
                    f"preset value {where}.{f.name} = {value} is out of range: "
                    "energies and areas must be >= 0, sizes and bits >= 1"
                )
    for name, gpu in hw.gpus.items():
        if min(gpu.tdp_w, gpu.int8_tops, gpu.bf16_tflops, gpu.hbm_tb_s) <= 0:
            raise UsageError(f"gpus.{name} needs a positive TDP, peaks and bandwidth")
    return hw


# ----------------------------------------------------------------------------- work


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


@dataclass(frozen=True)
class Run:
    """What is run: a prefill over `tokens`, or a decode of `tokens` after a `prompt`."""

    tokens: int
    phase: str = "prefill"
    prompt: int = 0

    def pairs_per_step(self, causal: bool) -> np.ndarray:
        """(query, key) pairs per layer in each step. A prefill is one step of `tokens`
        queries; decode step t is one query over the prompt and the t tokens so far."""
        if self.phase == "decode":
            return self.prompt + np.arange(1, self.tokens + 1, dtype=np.float64)
        pairs = self.tokens * (self.tokens + 1) / 2 if causal else float(self.tokens) ** 2
        return np.array([pairs])

    @property
    def tokens_per_step(self) -> int:
        return self.tokens if self.phase == "prefill" else 1

    @property
    def context(self) -> int:
        return self.prompt + self.tokens


@dataclass(frozen=True)
class Work:
    """What one run computes; every count is summed over layers (pairs: per layer)."""

    run: Run
    base: tuple[Matrix, ...]
    lora: tuple[Matrix, ...]
    layers: int
    heads: int
    hidden: int
    intermediate: int
    q_dim: int
    kv_dim: int
    gated: bool
    causal: bool  # does a token attend only to earlier tokens (always, when decoding)
    pairs: float  # (query, key) pairs per layer over the run

    @property
    def tokens(self) -> int:
        return self.run.tokens


def count_work(arch: Arch, rules: WorkloadRules, run: Run, rank: int, targets: tuple[str, ...]) -> Work:
    base = block_matrices(arch, rules.layout, rules.include_lm_head)
    exact = rules.layout == "exact"
    causal = rules.causal_attention or run.phase == "decode"
    return Work(
        run=run,
        base=tuple(base),
        lora=tuple(lora_matrices(base, rank, targets)),
        layers=arch.layers,
        heads=arch.heads,
        hidden=arch.hidden,
        intermediate=arch.intermediate,
        q_dim=arch.heads * arch.head_dim if exact else arch.hidden,
        kv_dim=arch.kv_heads * arch.head_dim if exact else arch.hidden,
        gated=exact,
        causal=causal,
        pairs=float(run.pairs_per_step(causal).sum()),
    )


# -------------------------------------------------------------------------- pricing


@dataclass(frozen=True)
class Cost:
    layer_type: str
    component: str
    pj: float


def _rram_costs(m: Matrix, tokens: int, rram: RramTile) -> list[Cost]:
    """A matrix on RRAM tiles: every cell takes part in one analog MAC per token; each
    row input is converted by a DAC in every column of tiles, each column output by an
    ADC in every row of tiles, and the row-tiles' partial sums are added digitally."""
    reads = tokens * m.copies
    row_tiles, col_tiles = math.ceil(m.rows / rram.tile_rows), math.ceil(m.cols / rram.tile_cols)
    conversions = reads * m.cols * row_tiles
    return [
        Cost(m.name, "rram_array", reads * m.rows * m.cols * rram.cell_read_fj / 1000),
        Cost(m.name, "rram_dac", reads * m.rows * col_tiles * rram.dac_pj),
        Cost(m.name, "rram_adc", conversions * rram.adc_pj),
        Cost(m.name, "rram_accumulate", conversions * rram.accumulate_pj),
    ]


def _shared_costs(work: Work, hw: Hardware) -> list[Cost]:
    """Attention on SRAM CIM, the digital unit and data movement: the same in every design."""
    byte = hw.workload.activation_bits / 8
    per_layer_token = work.layers * work.tokens
    digital = hw.digital.pj_per_element
    costs = [
        # Q·Kᵀ and P·V: q_dim MACs per (query, key) pair each.
        Cost("attention", "sram_attention", 2 * work.q_dim * work.pairs * work.layers * hw.sram.mac_pj),
        # Each new token's key and value are written into the attention SRAM.
        Cost(
            "attention",
            "sram_attention",
            2 * work.kv_dim * per_layer_token * byte * hw.sram.write_pj_per_byte,
        ),
        Cost("softmax", "digital", work.heads * work.pairs * work.layers * digital("softmax")),
        # Two RMSNorms per block and the final one.
        Cost("norm", "digital", (2 * work.layers + 1) * work.hidden * work.tokens * digital("norm")),
        Cost("activation", "digital", work.intermediate * per_layer_token * digital("activation")),
        Cost("residual", "digital", 2 * work.hidden * per_layer_token * digital("residual")),
        # Scores go out to the softmax and probabilities come back.
        Cost(
            "attention",
            "data_movement",
            2 * work.heads * work.pairs * work.layers * byte * hw.movement.pj_per_byte,
        ),
    ]
    if work.gated:
        costs.append(Cost("activation", "digital", work.intermediate * per_layer_token * digital("gate")))
    # Every matrix reads its input from and writes its output to the on-chip buffer. The
    # LoRA branch shares its base matrix's input broadcast and output adder: no extra traffic.
    costs += [
        Cost(
            m.name,
            "data_movement",
            (m.rows + m.cols) * work.tokens * m.copies * byte * hw.movement.pj_per_byte,
        )
        for m in work.base
    ]
    return costs


def design_costs(design: str, work: Work, hw: Hardware) -> list[Cost]:
    """The energy ledger of one design (see the module docstring)."""
    costs = _shared_costs(work, hw)
    for m in work.base:
        if design == "sram_only":
            costs.append(Cost(m.name, "sram_weights", work.tokens * m.weights * hw.sram.mac_pj))
        else:
            costs += _rram_costs(m, work.tokens, hw.rram)
    if design != "rram_only":  # rram_only programs W + BA into the tiles: no separate branch
        costs += [Cost("lora", "sram_lora", work.tokens * m.weights * hw.sram.mac_pj) for m in work.lora]
    return costs


def design_area_mm2(design: str, work: Work, hw: Hardware) -> dict[str, float]:
    """Area by part. Attention SRAM holds one layer's keys and values at the full context
    (blocks run one after another); the digital unit and buffers are a fixed block."""
    bit_um2 = hw.sram.bit_area_um2
    weight_bits, act_bits = hw.workload.weight_bits, hw.workload.activation_bits
    parts = {
        "sram_attention": 2 * work.kv_dim * work.run.context * act_bits * bit_um2,
        "digital": hw.digital.area_mm2 * UM2_PER_MM2,
    }
    lora_weights = sum(m.weights for m in work.lora)
    if design == "sram_only":
        base_weights = sum(m.weights for m in work.base)
        parts["sram_weights"] = (base_weights + lora_weights) * weight_bits * bit_um2
    else:
        tiles = sum(
            math.ceil(m.rows / hw.rram.tile_rows) * math.ceil(m.cols / hw.rram.tile_cols) * m.copies
            for m in work.base
        )
        parts["rram_tiles"] = tiles * hw.rram.tile_area_um2
    if design == "hybrid":
        parts["sram_lora"] = lora_weights * weight_bits * bit_um2
    return {part: um2 / UM2_PER_MM2 for part, um2 in parts.items()}


def gpu_energy_j(gpu: Gpu, precision: str, work: Work) -> float:
    """TDP × time; per step the slower of compute at peak and HBM traffic at bandwidth.
    A prefill is one step that reads the weights once; a decode step re-reads all weights
    and the key/value cache so far."""
    peak_ops = (gpu.int8_tops if precision == "int8" else gpu.bf16_tflops) * 1e12
    bytes_per_value = 1 if precision == "int8" else 2
    weights = sum(m.weights for m in work.base + work.lora)  # one MAC per weight and token
    pairs = work.run.pairs_per_step(work.causal)
    ops = 2 * (weights * work.run.tokens_per_step + 2 * work.q_dim * pairs * work.layers)
    traffic = weights * bytes_per_value
    if work.run.phase == "decode":  # one query per step: its pairs are the cached keys read
        traffic = traffic + 2 * work.kv_dim * work.layers * pairs * bytes_per_value
    seconds = np.maximum(ops / peak_ops, traffic / (gpu.hbm_tb_s * 1e12))
    return float(gpu.tdp_w * seconds.sum())


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class EnergyReport:
    """The estimate of one run. Energies in mJ, areas in mm²."""

    model: str
    preset: str
    layout: str
    run: Run
    lora_rank: int
    lora_targets: tuple[str, ...]
    hybrid_costs: tuple[Cost, ...]
    design_mj: dict[str, float]
    gpu_mj: dict[str, float]
    gpu_reference: str
    area_mm2: dict[str, dict[str, float]]  # design -> part -> mm²

    @property
    def hybrid_mj(self) -> float:
        return self.design_mj["hybrid"]

    @property
    def ratio(self) -> float:
        """Hybrid energy / reference GPU energy."""
        return self.hybrid_mj / self.gpu_mj[self.gpu_reference]

    def breakdown(self) -> dict[str, float]:
        """Hybrid energy by component (mJ)."""
        return _sum_by(self.hybrid_costs, "component")

    def by_layer_type(self) -> dict[str, float]:
        """Hybrid energy by layer type (mJ)."""
        return _sum_by(self.hybrid_costs, "layer_type")

    @property
    def lora_share(self) -> float:
        """LoRA branches' share of the hybrid's energy: the paper's "share of block energy"
        (the blocks are all there is unless the preset adds lm_head)."""
        return self.breakdown().get("sram_lora", 0.0) / self.hybrid_mj

    @property
    def rram_share(self) -> float:
        """RRAM tiles' share (array, DAC, ADC, accumulation): the paper's "RRAM arrays"."""
        rram = sum(mj for part, mj in self.breakdown().items() if part.startswith("rram_"))
        return rram / self.hybrid_mj

    def total_area_mm2(self) -> dict[str, float]:
        return {design: sum(parts.values()) for design, parts in self.area_mm2.items()}

    def to_json(self) -> dict[str, Any]:
        tokens = self.run.tokens
        energies = {**self.design_mj, **self.gpu_mj}
        return _rounded(
            {
                "model": self.model,
                "preset": self.preset,
                "layout": self.layout,
                "phase": self.run.phase,
                "tokens": tokens,
                "prompt": self.run.prompt,
                "lora_rank": self.lora_rank,
                "lora_targets": list(self.lora_targets),
                "hybrid_mj": self.hybrid_mj,
                "gpu": self.gpu_reference,
                "gpu_mj": self.gpu_mj[self.gpu_reference],
                "ratio": self.ratio,
                "rram_only_mj": self.design_mj["rram_only"],
                "sram_only_mj": self.design_mj["sram_only"],
                "gpus_mj": self.gpu_mj,
                "breakdown": self.breakdown(),
                "by_layer_type": self.by_layer_type(),
                "lora_share": self.lora_share,
                "rram_share": self.rram_share,
                "per_token_uj": {name: mj * 1000 / tokens for name, mj in energies.items()},
                "area_mm2": self.total_area_mm2(),
                "hybrid_area_mm2": self.area_mm2["hybrid"],
            }
        )


def _sum_by(costs: tuple[Cost, ...], attribute: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for cost in costs:
        totals[getattr(cost, attribute)] += cost.pj / PJ_PER_MJ
    return dict(totals)


def _rounded(value: Any) -> Any:
    """Six significant digits: more than any figure in the model deserves."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def estimate(
    arch: Arch,
    hardware: Hardware,
    tokens: int,
    lora_rank: int = 4,
    lora_targets: tuple[str, ...] = PAPER_TARGETS,
    phase: str = "prefill",
    prompt: int = 0,
) -> EnergyReport:
    """Energy and area of running `arch` on every design and GPU of `hardware`."""
    if not isinstance(tokens, int) or tokens < 1:
        raise UsageError(f"tokens must be a positive integer, got {tokens!r}")
    if not isinstance(lora_rank, int) or lora_rank < 1:
        raise UsageError(f"LoRA rank must be a positive integer, got {lora_rank!r}")
    if phase not in PHASES:
        raise UsageError(f"phase {phase!r} is unknown: use prefill or decode")
    if prompt < 0 or (prompt and phase == "prefill"):
        raise UsageError("a prompt length (>= 0) only applies to --phase decode")
    if not lora_targets:
        raise UsageError("no LoRA targets: name at least one, e.g. q_proj,v_proj")
    run = Run(tokens, phase, prompt)
    work = count_work(arch, hardware.workload, run, lora_rank, tuple(lora_targets))
    ledgers = {design: design_costs(design, work, hardware) for design in DESIGNS}
    return EnergyReport(
        model=arch.name,
        preset=hardware.name,
        layout=hardware.workload.layout,
        run=run,
        lora_rank=lora_rank,
        lora_targets=tuple(lora_targets),
        hybrid_costs=tuple(ledgers["hybrid"]),
        design_mj={d: sum(c.pj for c in costs) / PJ_PER_MJ for d, costs in ledgers.items()},
        gpu_mj={
            name: gpu_energy_j(gpu, hardware.gpu.precision, work) * 1000
            for name, gpu in hardware.gpus.items()
        },
        gpu_reference=hardware.gpu.reference,
        area_mm2={design: design_area_mm2(design, work, hardware) for design in DESIGNS},
    )


# ----------------------------------------------------------------------------- plot


def plot_report(report: EnergyReport, path: str | Path) -> None:
    """Bar charts: the hybrid's energy by component, and every design and GPU in total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    if fmt not in figure.canvas.get_supported_filetypes():
        plt.close(figure)
        raise UsageError(f"cannot write a plot as .{fmt}: use .png, .pdf or .svg")
    parts = sorted(report.breakdown().items(), key=lambda item: item[1])
    left.barh([name for name, _ in parts], [mj for _, mj in parts], color="tab:blue")
    left.set_xlabel("energy (mJ)")
    left.set_title(f"hybrid CIM by component: {report.hybrid_mj:.1f} mJ")
    totals = {**report.design_mj, **report.gpu_mj}
    colours = ["tab:green"] * len(report.design_mj) + ["tab:gray"] * len(report.gpu_mj)
    bars = right.bar(list(totals), list(totals.values()), color=colours)
    right.bar_label(bars, fmt="%.3g")
    right.set_yscale("log")
    # Log-scale bars grow from the axis floor: put it a decade below the smallest bar.
    right.set_ylim(bottom=10 ** math.floor(math.log10(min(totals.values())) - 1))
    right.set_ylabel("energy (mJ, log)")
    right.set_title("designs and GPUs")
    figure.suptitle(
        f"{report.model}, {report.run.phase} of {report.run.tokens} tokens, preset {report.preset}"
    )
    try:
        write_with(target, lambda tmp: figure.savefig(tmp, format=fmt))
    finally:
        plt.close(figure)
