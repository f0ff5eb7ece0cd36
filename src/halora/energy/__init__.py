"""Energy and area of LLM inference on hybrid RRAM/SRAM compute-in-memory, with GPU references.

Reads only configs: a model's config.json (its shapes) and a hardware preset (a TOML file
holding every per-operation energy and area, each with its source). Never loads weights.

    arch = load_arch("llama-3.2-1b")
    hardware = load_preset("paper", {"rram.adc_bits": 10})
    report = estimate(arch, hardware, tokens=512, lora_rank=4, lora_targets=PAPER_TARGETS)
    report.to_json()["hybrid_mj"]

How a run is priced:
1. `block_matrices` lists the weight matrices of the blocks (the preset's `layout` says
   whether to use the config's real shapes or the paper's standard-transformer count;
   "auto", the default, takes the paper's count for the paper's models and the real
   shapes for every other: `resolve_workload`).
2. `count_work` counts what the run computes: MACs of each matrix and of the LoRA
   branches, attention (query, key) pairs, elements through the digital unit.
3. Each design turns those counts into a ledger of `Cost(layer_type, component, pj)`:
     hybrid     block weights on RRAM tiles, LoRA branches on SRAM digital CIM
     rram_only  LoRA merged into the RRAM weights (no SRAM for LoRA)
     sram_only  every weight on SRAM digital CIM
   All three run attention on SRAM CIM (its operands change every token, which RRAM
   could only hold with a write-verify per token) and share the digital unit and the
   on-chip data movement.
4. GPUs: time = max(compute at peak, HBM traffic at bandwidth) per step: one step for a
   prefill, one per generated token for a decode; energy = TDP × time when compute-bound,
   at least `gpu.memory_power_fraction` × TDP × time when memory-bound (decode).

The accuracy side's settings carry over: `with_converters(hardware, converters)` charges
the DAC/ADC resolution and rows per ADC conversion of a `halora.converters.Converters`,
and `with_cells_per_weight(hardware, noise_cells_per_weight(spec))` the RRAM devices per
weight that a noise model's mapping assumes (a differential pair: 2).

Where each number comes from, how the default `paper` preset reproduces the paper's
figures, and which of its constants were calibrated: presets/energy/paper.toml.

Modules: `arch` (a model's shapes and weight matrices), `hardware` (the per-operation
figures and their presets), `model` (work, ledgers, areas, GPUs, `estimate`), `report`
(EnergyReport, plot_report). Their public names are all importable from here.
"""

from halora.energy.arch import (
    LAYOUTS,
    PAPER_MODELS,
    PAPER_TARGETS,
    Arch,
    Matrix,
    arch_from_config,
    block_matrices,
    bundled_models,
    is_paper_model,
    load_arch,
    lora_matrices,
)
from halora.energy.hardware import (
    AUTO_LAYOUT,
    DEFAULT_PRESET,
    DIGITAL_RECIPES,
    WORKLOAD_LAYOUTS,
    Digital,
    Gpu,
    GpuRules,
    Hardware,
    Movement,
    RramTile,
    SramCim,
    WorkloadRules,
    bundled_presets,
    converters_of,
    load_preset,
    noise_cells_per_weight,
    parse_override,
    read_overrides_file,
    with_cells_per_weight,
    with_converters,
)
from halora.energy.model import (
    DESIGNS,
    MAX_TOKENS,
    PHASES,
    UM2_PER_MM2,
    Cost,
    Run,
    Work,
    count_work,
    counting_note,
    design_area_mm2,
    design_costs,
    estimate,
    gpu_energy_j,
    gpu_seconds,
    gpu_step_seconds,
    resolve_workload,
)
from halora.energy.report import PJ_PER_MJ, EnergyReport, plot_report

__all__ = [
    "AUTO_LAYOUT",
    "DEFAULT_PRESET",
    "DESIGNS",
    "DIGITAL_RECIPES",
    "LAYOUTS",
    "MAX_TOKENS",
    "PAPER_MODELS",
    "PAPER_TARGETS",
    "PHASES",
    "PJ_PER_MJ",
    "UM2_PER_MM2",
    "WORKLOAD_LAYOUTS",
    "Arch",
    "Cost",
    "Digital",
    "EnergyReport",
    "Gpu",
    "GpuRules",
    "Hardware",
    "Matrix",
    "Movement",
    "RramTile",
    "Run",
    "SramCim",
    "Work",
    "WorkloadRules",
    "arch_from_config",
    "block_matrices",
    "bundled_models",
    "bundled_presets",
    "converters_of",
    "count_work",
    "counting_note",
    "design_area_mm2",
    "design_costs",
    "estimate",
    "gpu_energy_j",
    "gpu_seconds",
    "gpu_step_seconds",
    "is_paper_model",
    "load_arch",
    "load_preset",
    "lora_matrices",
    "noise_cells_per_weight",
    "parse_override",
    "plot_report",
    "read_overrides_file",
    "resolve_workload",
    "with_cells_per_weight",
    "with_converters",
]
