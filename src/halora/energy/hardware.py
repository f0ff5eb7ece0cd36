"""The hardware side: per-operation energies and areas, read from a preset (TOML).

A preset holds one table per section below ([workload], [rram], [sram], [digital],
[movement], [gpu]) and a [gpus.NAME] table per GPU; `extends = "paper"` starts from
another preset and changes some of its figures. The bundled presets live in
presets/energy/, every figure with its source.

Files are read and values typed by halora.settings (read_toml, coerce). Its messages
name a field as "what field"; the preset's keys are nested, so each value is coerced
here under its dotted key, the one --set takes (rram.adc_bits), and every message
names the preset and that key.

Two settings come from the accuracy side, so that accuracy and energy describe one chip:
`with_converters` takes the DAC/ADC resolution and the rows per ADC conversion from the
`Converters` the analog forward uses (halora.converters), and `noise_cells_per_weight`
reads how many RRAM devices a noise model's mapping puts on each weight.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from halora.converters import Converters
from halora.energy.arch import LAYOUTS
from halora.errors import UsageError
from halora.settings import coerce, hints, read_toml

PRESETS = Path(__file__).resolve().parent.parent / "presets" / "energy"
PRESET_FILE = "preset file"
DEFAULT_PRESET = "paper"
GPU_PRECISIONS = ("int8", "bf16")
EXTEND_HINT = 'start the file with extends = "paper"'
# workload.layout: a counting (arch.LAYOUTS), or "auto": the paper's count for the paper's
# models, the real architecture for every other (model.resolve_workload).
AUTO_LAYOUT = "auto"
WORKLOAD_LAYOUTS = (AUTO_LAYOUT, *LAYOUTS)

# FP16 operations per element in the digital unit: (exp, add, multiply).
DIGITAL_RECIPES = {
    "softmax": (1, 3, 1),  # running max, subtract it, exp, sum, scale by 1/sum
    "norm": (0, 1, 3),  # RMSNorm: square-accumulate, scale by 1/rms, gain
    "activation": (1, 1, 3),  # SiLU x/(1+exp(-x)), the divide as two multiplies
    "gate": (0, 0, 1),  # gated MLP: act(gate) * up
    "residual": (0, 1, 0),
}


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
    tile_rows: int  # also the rows summed per ADC conversion (Converters.rows)
    tile_cols: int
    cells_per_weight: int  # RRAM devices per weight: 1 (paper), 2 for a differential pair
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
        """A tile of tile_rows × tile_cols weights, each on `cells_per_weight` devices; the
        devices of a weight share its row DAC and column ADC (a differential pair is read
        as one current difference), so only the cell area grows with them."""
        # The preset's ADC area is for 8 bits; a SAR ADC's capacitor array doubles per bit.
        adc_um2 = self.adc_area_um2 * 2 ** (self.adc_bits - 8)
        return (
            self.tile_rows * self.tile_cols * self.cells_per_weight * self.cell_area_um2
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
    # Power, as a fraction of TDP, while HBM streams at full bandwidth and the compute units
    # idle: a step draws TDP × max(compute time, fraction × memory time) / its time.
    memory_power_fraction: float


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


SECTIONS = {
    "workload": WorkloadRules,
    "rram": RramTile,
    "sram": SramCim,
    "digital": Digital,
    "movement": Movement,
    "gpu": GpuRules,
}
# The preset's own labels, outside any table, and their values when a preset leaves them out.
LABELS = {"name": "custom", "description": ""}


def bundled_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS.glob("*.toml"))


def load_preset(
    name_or_path: str | Path = DEFAULT_PRESET, overrides: dict[str, Any] | None = None
) -> Hardware:
    """A bundled preset name or a TOML path, then `overrides` ({"rram.adc_bits": 10, ...}),
    typed values such as parse_override and read_overrides_file give."""
    name = str(name_or_path)
    source = f"preset {name}" if name in bundled_presets() else f"{PRESET_FILE} {name}"
    table = _read_preset_table(name, seen=())
    for key, value in (overrides or {}).items():
        _set_dotted(table, key, value, source)
    return _validate(_hardware_from_table(table, source), source)


def read_overrides_file(path: str | Path) -> dict[str, Any]:
    """A partial preset (TOML) as dotted overrides, to apply on top of a preset."""
    table = read_toml(path, PRESET_FILE)
    where = f"{PRESET_FILE} {path}"
    if "extends" in table:
        raise UsageError(f"{where} has an 'extends' key: pass a full preset with --preset FILE")
    return {key: _typed(key, value, where) for key, value in _flatten(table).items()}


def parse_override(text: str) -> tuple[str, Any]:
    """'rram.adc_bits=10' -> ('rram.adc_bits', 10): the value read as its key's type."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise UsageError(f"--set {text!r} is not KEY=VALUE: write e.g. --set rram.adc_bits=10")
    return key, _typed(key, _from_text(raw, _field_type(key)), "--set")


# ------------------------------------------------------ settings shared with accuracy


def converters_of(hw: Hardware) -> Converters:
    """The converter settings `hw` charges, as the analog forward reads them. adc_range and
    out_noise keep their defaults: they change accuracy, not energy (an ADC's conversion
    energy depends on its resolution, Walden's figure of merit × 2^bits, not its range)."""
    return Converters(dac_bits=hw.workload.activation_bits, adc_bits=hw.rram.adc_bits, rows=hw.rram.tile_rows)


def with_converters(hw: Hardware, converters: Converters) -> Hardware:
    """`hw` charging the converters of the analog forward:
    dac_bits -> workload.activation_bits (the bits of every activation the chip moves, writes
        into the key/value SRAM and feeds a DAC; the DAC's energy per conversion stays the
        preset's flat rram.dac_pj, see presets/energy/paper.toml),
    adc_bits -> rram.adc_bits (Walden: conversion energy × 2 per extra bit),
    rows     -> rram.tile_rows (inputs summed per ADC conversion: a matrix of R rows needs
        ceil(R / rows) conversions per column and token)."""
    return replace(
        hw,
        workload=replace(hw.workload, activation_bits=converters.dac_bits),
        rram=replace(hw.rram, adc_bits=converters.adc_bits, tile_rows=converters.rows),
    )


def with_cells_per_weight(hw: Hardware, cells: int) -> Hardware:
    """`hw` with `cells` RRAM devices per weight (array energy and cell area scale with it)."""
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 1:
        raise UsageError(f"cells per weight must be an integer >= 1, got {cells!r}")
    return replace(hw, rram=replace(hw.rram, cells_per_weight=cells))


def noise_cells_per_weight(spec: str) -> int | None:
    """RRAM devices per weight that the noise model `spec` assumes: its mapping's
    `cells_per_weight` (a differential pair: 2; a single device: 1); for a chain, the most
    any part needs. None when no part has a device mapping: gaussian, read, multiplicative
    and lognormal noise are per-weight abstractions (sigma in % of the tile's g_max) that
    say nothing of how a weight is stored, so the preset's count holds (paper: one 8-bit
    weight per 1T1R cell). Imports the noise models (and torch) only when called."""
    from halora.noise import parse_noise_spec

    model = parse_noise_spec(spec)
    counts = [
        getattr(getattr(part, "mapping", None), "cells_per_weight", None)
        for part in getattr(model, "models", (model,))
    ]
    known = [count for count in counts if count is not None]
    return max(known) if known else None


# --------------------------------------------------------------------- reading tables


def _read_preset_table(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
    """The preset's tables, merged over those of the preset it extends."""
    if name in seen:
        raise UsageError(f"preset {name!r} extends itself: fix its 'extends' chain")
    if name in bundled_presets():
        path = PRESETS / f"{name}.toml"
    elif Path(name).suffix == ".toml" or Path(name).is_file():
        path = Path(name)
    else:
        raise UsageError(
            f"unknown preset {name!r}: use one of {', '.join(bundled_presets())} or a TOML file path"
        )
    table = read_toml(path, PRESET_FILE)
    base = table.pop("extends", None)
    if base is None:
        return table
    base_name = coerce(base, str, f"{PRESET_FILE} {path}: extends")
    return _merge(_read_preset_table(base_name, seen + (name,)), table)


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


def _set_dotted(table: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = table
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
        raise _unknown_key(dotted, list(_flatten(table)), source)
    node[leaf] = value


def _unknown_key(dotted: str, known: list[str], where: str) -> UsageError:
    close = difflib.get_close_matches(dotted, known, n=1)
    more = ", ..." if len(known) > 8 else ""
    hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known[:8])}{more}"
    return UsageError(f"{where}: unknown key {dotted!r}: {hint}")


# ------------------------------------------------------------------------ typing values


def _field_type(dotted: str) -> Any:
    """The type of a key as --set writes it (rram.adc_bits, gpus.a100.tdp_w, name);
    None for a key no preset has."""
    section, _, key = dotted.partition(".")
    if section == "gpus":
        section_class, key = Gpu, key.partition(".")[2]
    else:
        section_class = SECTIONS.get(section)
    if section_class is None:
        return str if dotted in LABELS else None
    return hints(section_class).get(key)


def _from_text(raw: str, hint: Any) -> Any:
    """Command-line text as `hint`, booleans spelt as in TOML. Text that does not read as
    one stays text, for coerce to name the key and the type it expected."""
    if hint is bool:
        return {"true": True, "false": False}.get(raw, raw)
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            return raw
    return raw


def _typed(dotted: str, value: Any, where: str) -> Any:
    """`value` as the type of key `dotted`; `where` (a file, a flag) says where it was given.
    Keys of GPUs the preset lacks pass here and are named by load_preset."""
    hint = _field_type(dotted)
    if hint is None:
        raise _unknown_key(dotted, _section_keys(), where)
    return coerce(value, hint, f"{where}: {dotted}")


def _section_keys() -> list[str]:
    """Every key of a preset outside its [gpus.NAME] tables, as --set writes it."""
    return [*LABELS, *(f"{name}.{key}" for name, cls in SECTIONS.items() for key in hints(cls))]


# ------------------------------------------------------------- building and validating


def _hardware_from_table(table: dict[str, Any], source: str) -> Hardware:
    known = {*LABELS, *SECTIONS, "gpus"}
    for key in table:
        if key not in known:
            raise UsageError(f"{source}: unknown section {key!r}: known are {', '.join(sorted(known))}")
    sections = {key: _section(cls, table.get(key), key, source) for key, cls in SECTIONS.items()}
    gpu_tables = coerce(table.get("gpus", {}), dict, f"{source}: gpus")
    gpus = {name: _section(Gpu, spec, f"gpus.{name}", source) for name, spec in gpu_tables.items()}
    labels = {
        key: coerce(table.get(key, default), str, f"{source}: {key}") for key, default in LABELS.items()
    }
    return Hardware(**labels, **sections, gpus=gpus)


def _section(cls: type, table: Any, name: str, source: str) -> Any:
    """The table [name] as `cls`; every key present, each value coerced under its dotted key."""
    if not isinstance(table, dict):
        raise UsageError(f"{source} lacks the table [{name}]: add it, or {EXTEND_HINT}")
    types_of = hints(cls)
    for key in table:
        if key not in types_of:
            raise _unknown_key(f"{name}.{key}", [f"{name}.{known}" for known in types_of], source)
    missing = [key for key in types_of if key not in table]
    if missing:
        raise UsageError(f"{source}: [{name}] lacks {', '.join(missing)}: add them or {EXTEND_HINT}")
    return cls(**{key: coerce(table[key], hint, f"{source}: {name}.{key}") for key, hint in types_of.items()})


def _validate(hw: Hardware, source: str) -> Hardware:
    """What the types cannot say: known names, and no figure out of range."""
    if hw.workload.layout not in WORKLOAD_LAYOUTS:
        raise UsageError(
            f"{source}: workload.layout {hw.workload.layout!r} is unknown: "
            f"use one of {', '.join(WORKLOAD_LAYOUTS)}"
        )
    if hw.gpu.memory_power_fraction > 1:
        raise UsageError(
            f"{source}: gpu.memory_power_fraction = {hw.gpu.memory_power_fraction} is above 1: "
            "give the fraction of TDP drawn while memory-bound, from 0 to 1"
        )
    if hw.gpu.precision not in GPU_PRECISIONS:
        raise UsageError(
            f"{source}: gpu.precision {hw.gpu.precision!r} is unknown: use {' or '.join(GPU_PRECISIONS)}"
        )
    if hw.gpu.reference not in hw.gpus:
        raise UsageError(
            f"{source}: gpu.reference {hw.gpu.reference!r} has no [gpus.{hw.gpu.reference}] "
            f"table: use one of {', '.join(hw.gpus) or '(none defined)'}"
        )
    sections = {name: getattr(hw, name) for name in SECTIONS}
    sections.update({f"gpus.{name}": gpu for name, gpu in hw.gpus.items()})
    for name, section in sections.items():
        _check_ranges(section, name, source)
    for name, gpu in hw.gpus.items():
        if min(gpu.tdp_w, gpu.int8_tops, gpu.bf16_tflops, gpu.hbm_tb_s) <= 0:
            raise UsageError(f"{source}: gpus.{name} needs a positive TDP, peaks and bandwidth")
    return hw


def _check_ranges(section: Any, name: str, source: str) -> None:
    """Integers are sizes and bit widths (>= 1); numbers are energies and areas (>= 0)."""
    for key, hint in hints(type(section)).items():
        if hint not in (int, float):
            continue
        value = getattr(section, key)
        if value < (1 if hint is int else 0):
            raise UsageError(
                f"{source}: {name}.{key} = {value} is out of range: "
                "energies and areas must be >= 0, sizes and bits >= 1"
            )
