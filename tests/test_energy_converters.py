"""One chip for accuracy and energy: converters, devices per weight, GPU decode power, counting."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from halora.cli import main
from halora.converters import Converters
from halora.energy import (
    Hardware,
    block_matrices,
    converters_of,
    estimate,
    gpu_step_seconds,
    load_arch,
    load_preset,
    noise_cells_per_weight,
    resolve_workload,
    with_cells_per_weight,
    with_converters,
)
from halora.energy.arch import MODELS
from halora.energy.model import Run, count_work

PAPER_MODELS = ("llama-3.2-1b", "llama-3.2-3b")
OTHER_MODELS = ("smollm2-135m", "qwen2.5-0.5b")


def report(model: str = "llama-3.2-1b", hardware=None, tokens: int = 64, **kwargs):
    return estimate(load_arch(model), hardware or load_preset("paper"), tokens, **kwargs)


def energy_json(capsys, *flags: str) -> dict:
    assert main(["energy", "--tokens", "64", *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def converted(**settings: int) -> Hardware:
    hardware = load_preset("paper")
    return with_converters(hardware, dataclasses.replace(converters_of(hardware), **settings))


# ---------------------------------------------------------------- converters


def test_the_paper_preset_charges_the_analog_forwards_default_converters():
    assert converters_of(load_preset("paper")) == Converters()  # 8-bit DAC and ADC, 64 rows
    assert report().converters == {"dac_bits": 8, "adc_bits": 8, "rows": 64}


@pytest.mark.parametrize("bits", [6, 9, 12])
def test_adc_bits_scale_the_conversion_energy_by_walden_and_the_total_by_the_adc_share(bits):
    base, other = report(), report(hardware=converted(adc_bits=bits))
    factor = 2.0 ** (bits - 8)  # Walden: conversion energy × 2 per extra bit
    assert other.breakdown()["rram_adc"] == pytest.approx(factor * base.breakdown()["rram_adc"], rel=1e-12)
    expected_total = base.hybrid_mj + (factor - 1) * base.breakdown()["rram_adc"]
    assert other.hybrid_mj == pytest.approx(expected_total, rel=1e-12)
    unchanged = {k: v for k, v in base.breakdown().items() if k != "rram_adc"}
    assert {k: v for k, v in other.breakdown().items() if k != "rram_adc"} == pytest.approx(unchanged)
    assert other.converters["adc_bits"] == bits


@pytest.mark.parametrize("rows", [32, 100, 128])
def test_rows_per_adc_set_the_number_of_conversions(rows):
    """ceil(R / rows) conversions per column and token for a matrix of R rows."""
    arch, hardware = load_arch("smollm2-135m"), converted(rows=rows)
    result = report("smollm2-135m", hardware)
    rules = resolve_workload(arch, hardware.workload)
    conversions = sum(
        64 * m.copies * m.cols * math.ceil(m.rows / rows) for m in block_matrices(arch, rules.layout)
    )
    assert result.breakdown()["rram_adc"] * 1e9 == pytest.approx(conversions * hardware.rram.adc_pj)
    accumulate = result.breakdown()["rram_accumulate"] * 1e9
    assert accumulate == pytest.approx(conversions * hardware.rram.accumulate_pj)
    base = report("smollm2-135m")  # the array and the DACs do not depend on the rows per ADC
    for part in ("rram_array", "rram_dac"):
        assert result.breakdown()[part] == pytest.approx(base.breakdown()[part], rel=1e-12)


def test_halving_the_rows_per_adc_doubles_the_conversions_of_the_paper_model():
    base, half = report(), report(hardware=converted(rows=32))  # LLaMA's sizes are multiples of 64
    for part in ("rram_adc", "rram_accumulate"):
        assert half.breakdown()[part] == pytest.approx(2 * base.breakdown()[part], rel=1e-12)


def test_dac_bits_are_the_activation_bits_moved_and_the_dac_energy_stays_flat():
    base, narrow = report(), report(hardware=converted(dac_bits=4))
    assert narrow.breakdown()["data_movement"] == pytest.approx(base.breakdown()["data_movement"] / 2)
    assert narrow.breakdown()["rram_dac"] == base.breakdown()["rram_dac"]  # flat per conversion
    assert narrow.breakdown()["sram_attention"] < base.breakdown()["sram_attention"]  # 4-bit K/V writes
    assert narrow.converters["dac_bits"] == 4


def test_converter_flags_match_the_library_and_set(capsys):
    flags = energy_json(capsys, "--adc-bits", "10", "--adc-rows", "128", "--dac-bits", "6")
    library = report(hardware=with_converters(load_preset("paper"), Converters(6, 10, 128)))
    assert flags["hybrid_mj"] == pytest.approx(library.hybrid_mj, rel=1e-5)
    assert flags["converters"] == {"dac_bits": 6, "adc_bits": 10, "rows": 128}
    by_set = energy_json(capsys, "--set", "rram.adc_bits=10")
    assert energy_json(capsys, "--adc-bits", "10")["breakdown"] == by_set["breakdown"]


# ---------------------------------------------------------- devices per weight


def test_mappings_say_how_many_devices_hold_a_weight():
    from halora.noise import DifferentialPair, SingleDevice

    assert DifferentialPair.cells_per_weight == 2 and SingleDevice.cells_per_weight == 1
    assert "cells_per_weight" not in {f.name for f in dataclasses.fields(DifferentialPair)}


@pytest.mark.parametrize(
    "spec, cells",
    [
        ("wan2022:t=1d", 2),  # differential pair
        ("saf:p0=0.01,p1=0.01", 2),
        ("quant:bits=4", 2),
        ("cmo:t=1", 1),  # one device per weight
        ("cmo:t=1+saf:p0=0.001,p1=0.001", 2),  # a chain needs the most any part needs
        ("gaussian:sigma=0.01", None),  # per-weight abstraction: the preset's count
        ("none", None),
    ],
)
def test_noise_specs_give_their_devices_per_weight(spec, cells):
    assert noise_cells_per_weight(spec) == cells


def test_a_differential_pair_doubles_the_array_energy_and_cell_area_and_nothing_else():
    hardware = load_preset("paper")
    one, two = report(), report(hardware=with_cells_per_weight(hardware, 2))
    assert two.breakdown()["rram_array"] == pytest.approx(2 * one.breakdown()["rram_array"], rel=1e-12)
    others = {k: v for k, v in one.breakdown().items() if k != "rram_array"}
    assert {k: v for k, v in two.breakdown().items() if k != "rram_array"} == others
    assert two.gpu_mj == one.gpu_mj and two.design_mj["sram_only"] == one.design_mj["sram_only"]
    # Area: exactly one more cell per weight on every tile; ADCs, DACs, SRAM unchanged.
    rram = hardware.rram
    tiles = one.area_mm2["hybrid"]["rram_tiles"] * 1e6 / rram.tile_area_um2
    extra_mm2 = tiles * rram.tile_rows * rram.tile_cols * rram.cell_area_um2 / 1e6
    for design in ("hybrid", "rram_only"):
        assert two.area_mm2[design]["rram_tiles"] == pytest.approx(
            one.area_mm2[design]["rram_tiles"] + extra_mm2, rel=1e-12
        )
        assert {k: v for k, v in two.area_mm2[design].items() if k != "rram_tiles"} == {
            k: v for k, v in one.area_mm2[design].items() if k != "rram_tiles"
        }


def test_noise_flag_sets_the_devices_per_weight_and_the_report_says_so(capsys):
    paper = energy_json(capsys)
    pair = energy_json(capsys, "--noise", "wan2022:t=1d")
    gauss = energy_json(capsys, "--noise", "gaussian:sigma=0.02")
    assert paper["cells_per_weight"] == 1 and paper["cells_per_weight_from"] == "preset paper"
    assert pair["cells_per_weight"] == 2 and "wan2022" in pair["cells_per_weight_from"]
    assert pair["breakdown"]["rram_array"] == pytest.approx(2 * paper["breakdown"]["rram_array"], rel=1e-5)
    assert gauss["cells_per_weight"] == 1 and "no device mapping" in gauss["cells_per_weight_from"]
    assert energy_json(capsys, "--cells-per-weight", "2")["breakdown"] == pair["breakdown"]


# ------------------------------------------------------------------ GPU power


@pytest.mark.parametrize("model", ["smollm2-135m", "llama-3.2-1b"])
def test_decode_draws_below_tdp_and_costs_the_memory_bound_power_per_token(model):
    hardware = load_preset("paper")
    fraction = hardware.gpu.memory_power_fraction
    result = report(model, tokens=128, phase="decode", prompt=64)
    work = count_work(load_arch(model), hardware.workload, Run(128, "decode", 64), 4, result.lora_targets)
    for name, gpu in hardware.gpus.items():
        compute, memory = gpu_step_seconds(gpu, "int8", work)
        assert np.all(compute < fraction * memory)  # batch-1 decode: memory-bound
        assert result.gpu_power_w[name] == pytest.approx(fraction * gpu.tdp_w, rel=1e-9)
        per_token_j = result.gpu_mj[name] / 1000 / 128
        assert per_token_j == pytest.approx(fraction * gpu.tdp_w * memory.mean(), rel=1e-9)
        assert per_token_j < gpu.tdp_w * memory.mean()  # the old TDP × time reading


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_the_papers_prefill_stays_at_tdp(model):
    result = report(model, tokens=512)
    hardware = load_preset("paper")
    for name, gpu in hardware.gpus.items():
        assert result.gpu_power_w[name] == pytest.approx(gpu.tdp_w, rel=1e-9)


def test_memory_power_fraction_is_checked(capsys):
    assert main(["energy", "--set", "gpu.memory_power_fraction=1.5"]) == 2
    assert "gpu.memory_power_fraction" in capsys.readouterr().err


# ------------------------------------------------------------------- counting


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_the_papers_models_are_counted_the_papers_way(model):
    result = report(model, tokens=512)
    assert result.layout == "paper" and "auto: a model the paper reports" in result.counting
    forced = report(model, load_preset("paper", {"workload.layout": "paper"}), tokens=512)
    assert result.hybrid_mj == forced.hybrid_mj


@pytest.mark.parametrize("model", OTHER_MODELS)
def test_other_models_are_counted_from_their_real_architecture(model):
    result = report(model, tokens=512)
    assert result.layout == "exact" and "not a model the paper reports" in result.counting
    assert result.hybrid_mj == pytest.approx(report(model, load_preset("exact"), tokens=512).hybrid_mj)
    paper_count = report(model, load_preset("paper", {"workload.layout": "paper"}), tokens=512)
    assert paper_count.layout == "paper" and paper_count.hybrid_mj != result.hybrid_mj


def test_a_downloaded_copy_of_a_paper_model_is_recognised_by_its_shapes(tmp_path):
    folder = tmp_path / "Llama-3.2-1B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text((MODELS / "llama-3.2-1b.json").read_text())
    assert report(str(folder), tokens=512).layout == "paper"


def test_the_report_says_how_it_counted_and_what_it_leaves_out(capsys):
    assert main(["energy", "--model", "smollm2-135m", "--tokens", "16"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "counting: exact" in out and "leaves out the embedding lookup and lm_head" in out
    assert "1 device(s) per weight (from preset paper)" in out and "64 rows summed per ADC" in out


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--adc-bits", "1"], "--adc-bits must be an integer from 2 to 32"),
        (["--dac-bits", "eight"], "--dac-bits must be an integer from 2 to 32"),
        (["--adc-rows", "0"], "--adc-rows must be an integer >= 1"),
        (["--cells-per-weight", "0"], "--cells-per-weight must be an integer from 1 to 64"),
        (["--noise", "wan2022:t=1d", "--cells-per-weight", "2"], "not both"),
    ],
)
def test_bad_chip_flags_are_one_line_and_exit_status_2(capsys, flags, words):
    assert main(["energy", "--tokens", "16", *flags]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and words in lines[0], captured.err


def test_the_paper_preset_is_one_device_per_weight():
    assert load_preset("paper").rram.cells_per_weight == 1
