"""The estimate of one run as a report: totals, breakdowns, shares, JSON and a bar chart."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halora.errors import UsageError
from halora.files import write_with

if TYPE_CHECKING:  # model builds reports; at run time this module needs none of it
    from halora.energy.model import Cost, Run

PJ_PER_MJ = 1e9


@dataclass(frozen=True)
class EnergyReport:
    """The estimate of one run. Energies in mJ, areas in mm²."""

    model: str
    preset: str
    layout: str  # the counting used: "paper" or "exact" (see model.resolve_workload)
    counting: str  # that counting in words, and what it leaves out
    cells_per_weight: int  # RRAM devices per weight charged
    converters: dict[str, int]  # dac_bits, adc_bits, rows (summed per ADC conversion)
    run: Run
    lora_rank: int
    lora_targets: tuple[str, ...]
    twin_rank: int  # the twin correction's rows on every block matrix (0: none)
    hybrid_costs: tuple[Cost, ...]
    design_mj: dict[str, float]
    gpu_mj: dict[str, float]
    gpu_power_w: dict[str, float]  # average power over the run (energy / time)
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
                "counting": self.counting,
                "cells_per_weight": self.cells_per_weight,
                "converters": self.converters,
                "phase": self.run.phase,
                "tokens": tokens,
                "prompt": self.run.prompt,
                "lora_rank": self.lora_rank,
                "lora_targets": list(self.lora_targets),
                "twin_rank": self.twin_rank,
                "hybrid_mj": self.hybrid_mj,
                "gpu": self.gpu_reference,
                "gpu_mj": self.gpu_mj[self.gpu_reference],
                "ratio": self.ratio,
                "rram_only_mj": self.design_mj["rram_only"],
                "sram_only_mj": self.design_mj["sram_only"],
                "gpus_mj": self.gpu_mj,
                "gpu_power_w": self.gpu_power_w,
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
    except OSError as err:  # no such folder, read-only, /proc: nothing is left behind
        raise UsageError(
            f"--plot {target} cannot be written: {err.strerror or err}; pick another file"
        ) from err
    finally:
        plt.close(figure)
