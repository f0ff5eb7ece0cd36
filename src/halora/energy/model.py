"""Pricing a run: the work it does, each design's energy ledger and area, the GPUs' energy.

`resolve_workload` settles how a model's work is counted (the paper's convention or its
real shapes); `count_work` counts what a run computes; every design (hybrid, rram_only,
sram_only; see halora.energy) prices those counts as a ledger of
`Cost(layer_type, component, pj)`; `estimate` puts the ledgers, the areas and the GPU
energies into an EnergyReport.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from halora.energy.arch import (
    PAPER_TARGETS,
    Arch,
    Matrix,
    block_matrices,
    is_paper_model,
    lora_matrices,
)
from halora.energy.hardware import (
    AUTO_LAYOUT,
    Gpu,
    GpuRules,
    Hardware,
    RramTile,
    WorkloadRules,
)
from halora.energy.report import PJ_PER_MJ, EnergyReport
from halora.errors import UsageError

DESIGNS = ("hybrid", "rram_only", "sram_only")
PHASES = ("prefill", "decode")
UM2_PER_MM2 = 1e6
# Tokens of a run (and of a decode's prompt): up to a million. The bundled models' longest
# context is 131,072 tokens (Llama 3.2); a million leaves room for longer-context configs,
# while beyond it no model runs one pass and the report's figures outgrow its table.
MAX_TOKENS = 1_000_000


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


def resolve_workload(arch: Arch, rules: WorkloadRules) -> WorkloadRules:
    """The counting used for `arch`. Layout "auto" is the paper's count, as the preset sets
    it, for the paper's models (arch.PAPER_MODELS), and for any other model its real
    shapes with causal attention (the `exact` preset's count); "paper" and "exact" stay."""
    if rules.layout != AUTO_LAYOUT:
        return rules
    if is_paper_model(arch):
        return replace(rules, layout="paper")
    return replace(rules, layout="exact", causal_attention=True)


def counting_note(arch: Arch, rules: WorkloadRules, preset_layout: str) -> str:
    """One line: how the work of `arch` was counted under the resolved `rules`, and what
    the count leaves out."""
    if rules.layout == "paper":
        shapes = "the paper's count, q,k,v,o as h×h and up,down (no grouped KV heads, no gate)"
    else:
        shapes = "the real shapes (grouped KV heads, gated MLP)"
    attention = "causal attention" if rules.causal_attention else "full T×T attention"
    left_out = ["the embedding lookup"]
    if not rules.include_lm_head:
        block = sum(m.weights for m in block_matrices(arch, rules.layout))
        lm_head = arch.hidden * arch.vocab
        share = lm_head / block
        left_out.append(f"lm_head ({lm_head / 1e6:.1f} M weights, {share:.0%} of the counted blocks)")
    why = ""
    if preset_layout == AUTO_LAYOUT:
        whose = "a model the paper reports" if rules.layout == "paper" else "not a model the paper reports"
        why = f" [auto: {whose}]"
    return f"{rules.layout}: {shapes}, {attention}; leaves out {' and '.join(left_out)}{why}"


def count_work(
    arch: Arch, rules: WorkloadRules, run: Run, rank: int, targets: tuple[str, ...], twin_rank: int = 0
) -> Work:
    """What `run` computes on `arch`, counted by `rules` (resolved: see resolve_workload).
    `twin_rank`: the twin correction's rows (halora.twin) on every block matrix, charged as
    LoRA branches of that rank beside the task LoRA."""
    rules = resolve_workload(arch, rules)
    base = block_matrices(arch, rules.layout, rules.include_lm_head)
    twin = [m for m in base if m.name != "lm_head"]
    lora = lora_matrices(base, rank, targets)
    if twin_rank:
        lora += lora_matrices(twin, twin_rank, tuple(m.name for m in twin))
    exact = rules.layout == "exact"
    causal = rules.causal_attention or run.phase == "decode"
    return Work(
        run=run,
        base=tuple(base),
        lora=tuple(lora),
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


@dataclass(frozen=True)
class Cost:
    layer_type: str
    component: str
    pj: float


def _rram_costs(m: Matrix, tokens: int, rram: RramTile) -> list[Cost]:
    """A matrix on RRAM tiles: every cell (cells_per_weight per weight) takes part in one
    analog MAC per token; each row input is converted by a DAC in every column of tiles,
    each column output by an ADC in every row of tiles (tile_rows inputs summed per
    conversion), and the row-tiles' partial sums are added digitally."""
    reads = tokens * m.copies
    row_tiles, col_tiles = math.ceil(m.rows / rram.tile_rows), math.ceil(m.cols / rram.tile_cols)
    conversions = reads * m.cols * row_tiles
    cells = m.rows * m.cols * rram.cells_per_weight
    return [
        Cost(m.name, "rram_array", reads * cells * rram.cell_read_fj / 1000),
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
    """The energy ledger of one design (the designs: see halora.energy)."""
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


def gpu_step_seconds(gpu: Gpu, precision: str, work: Work) -> tuple[np.ndarray, np.ndarray]:
    """(compute, memory) seconds of every step: its operations at peak, its HBM traffic at
    full bandwidth. A prefill is one step that reads the weights once; a decode step
    re-reads all weights and the key/value cache so far."""
    peak_ops = (gpu.int8_tops if precision == "int8" else gpu.bf16_tflops) * 1e12
    bytes_per_value = 1 if precision == "int8" else 2
    weights = sum(m.weights for m in work.base + work.lora)  # one MAC per weight and token
    pairs = work.run.pairs_per_step(work.causal)
    ops = 2 * (weights * work.run.tokens_per_step + 2 * work.q_dim * pairs * work.layers)
    traffic = weights * bytes_per_value
    if work.run.phase == "decode":  # one query per step: its pairs are the cached keys read
        traffic = traffic + 2 * work.kv_dim * work.layers * pairs * bytes_per_value
    return ops / peak_ops, np.broadcast_to(traffic / (gpu.hbm_tb_s * 1e12), pairs.shape)


def gpu_seconds(gpu: Gpu, precision: str, work: Work) -> float:
    """The run's time: per step the slower of compute and memory."""
    compute, memory = gpu_step_seconds(gpu, precision, work)
    return float(np.maximum(compute, memory).sum())


def gpu_energy_j(gpu: Gpu, rules: GpuRules, work: Work) -> float:
    """Per step TDP × max(compute time, memory_power_fraction × memory time): a step lasts
    max(c, m) and draws TDP × max(c/m, fraction) of it when memory-bound (m > c), TDP when
    compute-bound. So a compute-bound prefill costs TDP × time, as the paper reads it, and
    a memory-bound decode step between fraction × TDP × m and TDP × m."""
    compute, memory = gpu_step_seconds(gpu, rules.precision, work)
    return float(gpu.tdp_w * np.maximum(compute, rules.memory_power_fraction * memory).sum())


def estimate(
    arch: Arch,
    hardware: Hardware,
    tokens: int,
    lora_rank: int = 4,
    lora_targets: tuple[str, ...] = PAPER_TARGETS,
    phase: str = "prefill",
    prompt: int = 0,
    twin_rank: int = 0,
) -> EnergyReport:
    """Energy and area of running `arch` on every design and GPU of `hardware`; `twin_rank`
    adds the twin correction's SRAM branches (halora.twin) on every block matrix."""
    _check_request(tokens, lora_rank, lora_targets, phase, prompt)
    if not isinstance(twin_rank, int) or twin_rank < 0:
        raise UsageError(f"the twin rank must be an integer >= 0, got {twin_rank!r}")
    run = Run(tokens, phase, prompt)
    rules = resolve_workload(arch, hardware.workload)
    work = count_work(arch, rules, run, lora_rank, tuple(lora_targets), twin_rank)
    ledgers = {design: design_costs(design, work, hardware) for design in DESIGNS}
    gpu_mj = {name: gpu_energy_j(gpu, hardware.gpu, work) * 1000 for name, gpu in hardware.gpus.items()}
    seconds = {name: gpu_seconds(gpu, hardware.gpu.precision, work) for name, gpu in hardware.gpus.items()}
    return EnergyReport(
        model=arch.name,
        preset=hardware.name,
        layout=rules.layout,
        counting=counting_note(arch, rules, hardware.workload.layout),
        cells_per_weight=hardware.rram.cells_per_weight,
        converters={
            "dac_bits": hardware.workload.activation_bits,
            "adc_bits": hardware.rram.adc_bits,
            "rows": hardware.rram.tile_rows,
        },
        run=run,
        lora_rank=lora_rank,
        lora_targets=tuple(lora_targets),
        twin_rank=twin_rank,
        hybrid_costs=tuple(ledgers["hybrid"]),
        design_mj={d: sum(c.pj for c in costs) / PJ_PER_MJ for d, costs in ledgers.items()},
        gpu_mj=gpu_mj,
        gpu_power_w={name: gpu_mj[name] / 1000 / seconds[name] for name in gpu_mj},
        gpu_reference=hardware.gpu.reference,
        area_mm2={design: design_area_mm2(design, work, hardware) for design in DESIGNS},
    )


def _check_request(
    tokens: int, lora_rank: int, lora_targets: tuple[str, ...], phase: str, prompt: int
) -> None:
    if not isinstance(tokens, int) or not 1 <= tokens <= MAX_TOKENS:
        raise UsageError(f"tokens must be an integer from 1 to {MAX_TOKENS:,}, got {tokens!r}")
    if not isinstance(lora_rank, int) or lora_rank < 1:
        raise UsageError(f"LoRA rank must be a positive integer, got {lora_rank!r}")
    if phase not in PHASES:
        raise UsageError(f"phase {phase!r} is unknown: use prefill or decode")
    if prompt > MAX_TOKENS:
        raise UsageError(f"a prompt length must be at most {MAX_TOKENS:,} tokens, got {prompt!r}")
    if prompt < 0 or (prompt and phase == "prefill"):
        raise UsageError("a prompt length (>= 0) only applies to --phase decode")
    if not lora_targets:
        raise UsageError("no LoRA targets: name at least one, e.g. q_proj,v_proj")
