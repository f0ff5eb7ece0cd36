"""The energy and area model: the paper's figures, the model's laws, and bad input."""

from __future__ import annotations

import json

import pytest

from halora.cli import main
from halora.energy import (
    MAX_TOKENS,
    PAPER_TARGETS,
    block_matrices,
    bundled_models,
    estimate,
    load_arch,
    load_preset,
    lora_matrices,
)
from halora.energy.arch import MODELS

# HaLoRA (arXiv 2502.19747), Table 6 / Fig. 7: 512 tokens, LoRA r=4 on the paper's targets.
PAPER = {
    "llama-3.2-1b": {"hybrid_mj": 18.1, "gpu_mj": 550.5, "lora_share": 0.0054, "rram_share": 0.7283},
    "llama-3.2-3b": {"hybrid_mj": 51.3, "gpu_mj": 1666.8, "lora_share": 0.0042, "rram_share": 0.7866},
}
TOLERANCE = 0.10  # the bar: every figure within 10 %


def energy_json(capsys, *flags: str) -> dict:
    assert main(["energy", *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def report(
    model: str = "llama-3.2-1b",
    tokens: int = 512,
    preset: str = "paper",
    overrides: dict | None = None,
    **kwargs,
):
    return estimate(load_arch(model), load_preset(preset, overrides), tokens, **kwargs)


# ------------------------------------------------------------------- paper figures


@pytest.mark.parametrize("model", sorted(PAPER))
def test_default_command_reproduces_the_papers_figures(capsys, model):
    result = energy_json(capsys, "--model", model, "--tokens", "512")
    for key, paper_value in PAPER[model].items():
        assert result[key] == pytest.approx(paper_value, rel=TOLERANCE), key
    paper_ratio = PAPER[model]["hybrid_mj"] / PAPER[model]["gpu_mj"]
    assert result["ratio"] == pytest.approx(paper_ratio, rel=TOLERANCE)


def test_area_of_the_hybrid_against_rram_only_and_sram_only_as_in_the_paper(capsys):
    area = energy_json(capsys, "--model", "llama-3.2-3b", "--tokens", "512")["area_mm2"]
    assert area["hybrid"] / area["rram_only"] == pytest.approx(1.011, rel=TOLERANCE)
    assert area["hybrid"] > area["rram_only"]  # the LoRA SRAM is extra silicon
    assert area["hybrid"] / area["sram_only"] == pytest.approx(0.10, rel=TOLERANCE)


def test_a100_reading_is_int8_peak_at_tdp_over_the_papers_operation_count():
    """550.5 mJ = 400 W / 624 TOPS × 2 ops × (4h² + 2hI) · L · T MACs + full T² attention."""
    arch = load_arch("llama-3.2-1b")
    h, inner, layers, tokens = arch.hidden, arch.intermediate, arch.layers, 512
    ops = 2 * (4 * h * h + 2 * h * inner) * layers * tokens + 4 * layers * tokens**2 * h
    without_lora = ops * 400 / 624e12 * 1000
    result = report(lora_targets=("q_proj",), lora_rank=1)  # LoRA cost made negligible
    assert result.gpu_mj["a100"] == pytest.approx(without_lora, rel=1e-3)
    assert without_lora == pytest.approx(550.5, rel=0.005)


def test_bundled_configs_give_the_official_parameter_counts():
    assert load_arch("llama-3.2-1b").params == 1_235_814_400
    assert load_arch("llama-3.2-3b").params == 3_212_749_824
    assert load_arch("smollm2-135m").params == 134_515_008
    assert set(bundled_models()) >= {"llama-3.2-1b", "llama-3.2-3b", "qwen2.5-0.5b", "smollm2-135m"}


def test_paper_lora_is_1_9m_parameters_on_llama_1b():
    base = block_matrices(load_arch("llama-3.2-1b"), "exact")
    assert sum(m.weights for m in lora_matrices(base, 4, PAPER_TARGETS)) == 1_900_544


def test_json_has_the_documented_keys_and_a_consistent_breakdown(capsys):
    result = energy_json(capsys, "--model", "qwen2.5-0.5b", "--tokens", "64")
    for key in (
        "hybrid_mj",
        "gpu_mj",
        "ratio",
        "rram_only_mj",
        "sram_only_mj",
        "breakdown",
        "lora_share",
        "area_mm2",
        "by_layer_type",
        "gpus_mj",
        "per_token_uj",
    ):
        assert key in result
    assert set(result["area_mm2"]) == {"hybrid", "rram_only", "sram_only"}
    assert set(result["gpus_mj"]) == {"a100", "h100"}
    assert sum(result["breakdown"].values()) == pytest.approx(result["hybrid_mj"], rel=1e-4)
    assert sum(result["by_layer_type"].values()) == pytest.approx(result["hybrid_mj"], rel=1e-4)
    assert result["ratio"] == pytest.approx(result["hybrid_mj"] / result["gpu_mj"], rel=1e-4)


def test_table_is_the_default_output(capsys):
    assert main(["energy", "--model", "smollm2-135m", "--tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert "hybrid CIM" in out and "a100" in out and "rram_adc" in out


# ---------------------------------------------------------------------------- laws


def _weight_energy(result) -> float:
    """Energy spent on the weights: RRAM tiles and LoRA branches."""
    return sum(
        mj for part, mj in result.breakdown().items() if part.startswith("rram_") or part == "sram_lora"
    )


@pytest.mark.parametrize("preset", ["paper", "exact"])
def test_weight_energy_is_linear_in_tokens(preset):
    short, long = report(tokens=200, preset=preset), report(tokens=600, preset=preset)
    assert _weight_energy(long) == pytest.approx(3 * _weight_energy(short), rel=1e-9)
    # Attention grows faster: every token attends to all (paper) or all earlier (exact) tokens.
    attention = "sram_attention"
    assert long.breakdown()[attention] > 3 * short.breakdown()[attention]


def test_lora_share_falls_as_the_model_grows():
    by_size = sorted(bundled_models(), key=lambda name: load_arch(name).params)
    for preset in ("paper", "exact"):
        shares = [report(name, preset=preset).lora_share for name in by_size]
        assert shares == sorted(shares, reverse=True), preset


def test_more_adc_bits_cost_more_adc_energy_as_the_preset_says():
    """The preset's ADC: Walden scaling, energy = FoM × 2^bits."""
    hardware = load_preset("paper")
    fom_pj = hardware.rram.adc_fom_fj_per_step / 1000
    adc = {bits: report(overrides={"rram.adc_bits": bits}).breakdown()["rram_adc"] for bits in (6, 8, 10)}
    assert adc[10] == pytest.approx(4 * adc[8]) and adc[8] == pytest.approx(4 * adc[6])
    assert hardware.rram.adc_pj == pytest.approx(fom_pj * 2**8)
    totals = [report(overrides={"rram.adc_bits": bits}).hybrid_mj for bits in (6, 8, 10)]
    assert totals == sorted(totals)


def test_decode_is_memory_bound_on_the_gpu_and_costs_the_cim_the_same_per_token():
    prefill = report(tokens=64)
    decode = report(tokens=64, phase="decode")
    # The GPU re-reads every weight for each generated token.
    assert decode.gpu_mj["a100"] > 20 * prefill.gpu_mj["a100"]
    one_step = report(tokens=1, phase="decode", lora_targets=("q_proj",), lora_rank=1)
    weights = 4 * 2048**2 * 16 + 2 * 2048 * 8192 * 16  # paper count, one INT8 byte each
    # Memory-bound: drawn at the preset's fraction of TDP (0.2), not at TDP.
    watts = load_preset("paper").gpu.memory_power_fraction * 400
    assert one_step.gpu_mj["a100"] == pytest.approx(watts * weights / 2.039e12 * 1000, rel=1e-3)
    # Weights stay in place on the CIM chip: the same weight energy whichever the phase.
    assert _weight_energy(decode) == pytest.approx(_weight_energy(prefill), rel=1e-9)


def test_exact_layout_counts_the_real_architecture():
    arch = load_arch("llama-3.2-1b")
    paper_weights = sum(m.weights for m in block_matrices(arch, "paper"))
    exact_weights = sum(m.weights for m in block_matrices(arch, "exact"))
    assert paper_weights == 805_306_368 and exact_weights == 973_078_528
    assert report(preset="exact").hybrid_mj > report(preset="paper").hybrid_mj


def test_rram_only_saves_the_lora_branch_and_sram_only_costs_more():
    result = report()
    assert result.design_mj["rram_only"] == pytest.approx(result.hybrid_mj - result.breakdown()["sram_lora"])
    assert result.design_mj["sram_only"] > result.hybrid_mj


# ------------------------------------------------------------------ files, overrides


def test_plot_file_is_written(capsys, tmp_path):
    for name in ("breakdown.png", "breakdown.svg"):
        target = tmp_path / "plots" / name
        assert main(["energy", "--tokens", "32", "--plot", str(target)]) == 0
        assert target.stat().st_size > 1000
    assert (tmp_path / "plots" / "breakdown.png").read_bytes()[:4] == b"\x89PNG"
    assert "plot written" in capsys.readouterr().out


def test_preset_file_and_set_flags_override_figures(capsys, tmp_path):
    overrides = tmp_path / "adc.toml"
    overrides.write_text("[rram]\nadc_bits = 10\n")
    from_file = energy_json(capsys, "--tokens", "32", "--preset-file", str(overrides))
    from_flag = energy_json(capsys, "--tokens", "32", "--set", "rram.adc_bits=10")
    baseline = energy_json(capsys, "--tokens", "32")
    assert from_file["breakdown"] == from_flag["breakdown"]
    assert from_flag["breakdown"]["rram_adc"] == pytest.approx(
        4 * baseline["breakdown"]["rram_adc"], rel=1e-4
    )
    exact = energy_json(capsys, "--tokens", "32", "--set", "workload.layout=exact")
    assert exact["layout"] == "exact"


def test_full_preset_file_may_extend_a_bundled_one(capsys, tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text('extends = "paper"\nname = "mine"\n[gpus.a100]\ntdp_w = 800.0\n')
    mine = energy_json(capsys, "--tokens", "32", "--preset", str(preset))
    paper = energy_json(capsys, "--tokens", "32")
    assert mine["preset"] == "mine"
    assert mine["gpus_mj"]["a100"] == pytest.approx(2 * paper["gpus_mj"]["a100"], rel=1e-4)


def test_model_from_a_config_path_or_folder(capsys, tmp_path):
    config = {
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "vocab_size": 1000,
    }
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    by_folder = energy_json(capsys, "--model", str(folder), "--tokens", "8")
    by_file = energy_json(capsys, "--model", str(folder / "config.json"), "--tokens", "8")
    assert by_folder["hybrid_mj"] == by_file["hybrid_mj"] > 0
    assert by_folder["model"] == "tiny-model"


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--model", "llama-9b"], "unknown model"),
        (["--preset", "nonesuch"], "unknown preset"),
        (["--tokens", "0"], "--tokens"),
        (["--tokens", "many"], "--tokens"),
        (["--tokens", "1000001"], "--tokens must be an integer from 1 to 1,000,000"),
        (["--phase", "decode", "--prompt", "1000001"], "--prompt must be an integer from 0 to 1,000,000"),
        (["--plot", "/proc/halora-chart.png"], "--plot /proc/halora-chart.png cannot be written"),
        (["--rank", "-1"], "--rank"),
        (["--set", "rram.adc_bit=10"], "did you mean rram.adc_bits"),
        (["--set", "rram.adc_bits=ten"], "must be an integer"),
        (["--set", "rram.adc_bits"], "KEY=VALUE"),
        (["--set", "rram.adc_bits=0"], "rram.adc_bits = 0 is out of range"),
        (["--set", "workload.causal_attention=1"], "must be true or false"),
        (["--set", "workload.layout=fancy"], "workload.layout"),
        (["--set", "gpu.reference=tpu"], "gpu.reference"),
        (["--targets", "gate_proj"], "unknown LoRA target"),
        (["--targets", ","], "no LoRA targets"),
        (["--phase", "train"], "phase"),
        (["--prompt", "10"], "--phase decode"),
        (["--preset-file", "missing.toml"], "does not exist"),
        (["--plot", "chart.xyz"], "cannot write a plot"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(capsys, tmp_path, flags, words):
    flags = [str(tmp_path / f) if f.endswith((".toml", ".xyz")) else f for f in flags]
    assert main(["energy", "--tokens", "16", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], captured.err
    assert not list(tmp_path.glob("*.xyz"))


@pytest.mark.parametrize(
    "flag, text, words",
    [
        ("--preset", 'extends = "paper"\n[rram]\nadc_bits = "ten"\n', "rram.adc_bits must be an integer"),
        (
            "--preset",
            'extends = "paper"\n[rram]\nadc_bitz = 8\n',
            "'rram.adc_bitz': did you mean rram.adc_bits",
        ),
        ("--preset", 'extends = "paper"\n[rram]\nadc_bits = 0\n', "rram.adc_bits = 0 is out of range"),
        ("--preset", 'name = "mine"\n', "lacks the table [workload]"),
        ("--preset-file", "[rram]\nadc_bits = 9.5\n", "rram.adc_bits must be an integer"),
        ("--preset-file", "[rram]\nadc_bitz = 9\n", "did you mean rram.adc_bits"),
        ("--preset-file", "[rram\n", "cannot be parsed"),
    ],
)
def test_a_bad_preset_file_is_named_with_the_dotted_key(capsys, tmp_path, flag, text, words):
    preset = tmp_path / "mine.toml"
    preset.write_text(text)
    assert main(["energy", "--tokens", "16", flag, str(preset)]) == 2
    message = capsys.readouterr().err.strip()
    assert str(preset) in message and words in message, message


def test_config_without_architecture_keys_is_a_usage_error(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"n_embd": 768, "n_layer": 12}))
    assert main(["energy", "--model", str(config)]) == 2
    assert "lacks integer hidden_size" in capsys.readouterr().err


def test_library_rejects_non_positive_tokens():
    from halora.errors import UsageError

    with pytest.raises(UsageError, match="tokens"):
        report(tokens=0)


def test_tokens_are_bounded_where_the_table_still_shows_every_figure(capsys, monkeypatch):
    from halora.errors import UsageError

    monkeypatch.setenv("COLUMNS", "80")  # rich's width when printing to a pipe

    with pytest.raises(UsageError, match="from 1 to 1,000,000"):
        report(tokens=MAX_TOKENS + 1)
    assert main(["energy", "--model", "llama-3.2-3b", "--tokens", str(MAX_TOKENS)]) == 0
    assert "…" not in capsys.readouterr().out  # no cell cut


# ------------------------------------------------------------------ the demo's energy lines


def test_demo_energy_names_the_model_it_ran_and_the_papers_reference():
    from halora.demo import DemoSettings, _energy_text

    lines = _energy_text(DemoSettings(model="qwen2.5-0.5b")).splitlines()
    assert lines[1].split()[0] == "qwen2.5-0.5b" and "hybrid CIM" in lines[1]
    assert lines[2].split()[0] == "llama-3.2-1b" and lines[2].endswith("(the paper's reference)")
    assert len(lines) == 3


def test_demo_energy_says_when_there_is_no_preset_for_the_model():
    from halora.demo import DemoSettings, _energy_text

    lines = _energy_text(DemoSettings(model="tiny")).splitlines()
    assert lines[1].startswith("  tiny: no energy preset for this model")
    assert "smollm2" not in lines[1].split(":")[0] and lines[2].split()[0] == "llama-3.2-1b"


def test_demo_energy_reads_a_model_folder(tmp_path):
    from halora.demo import DemoSettings, _energy_text

    (tmp_path / "config.json").write_text((MODELS / "smollm2-135m.json").read_text())
    assert _energy_text(DemoSettings(model=str(tmp_path))).splitlines()[1].split()[0] == tmp_path.name


def test_demo_time_estimate_says_whose_it_is():
    from halora.demo import DemoSettings, _estimate_text

    assert "SmolLM2" not in _estimate_text(DemoSettings(), 25)
    other = _estimate_text(DemoSettings(model="tiny"), 25)
    assert "about 25 min for SmolLM2-135M on 2 CPU cores" in other and "tiny" in other


def test_the_twin_correction_is_charged_as_sram_lora_linear_in_its_rank():
    """Each twin row adds one A and one B row of LoRA work on every block matrix: the SRAM
    LoRA energy grows linearly with the twin rank, and rank 0 is the plain adapter."""
    plain, four, eight = (report("smollm2-135m", twin_rank=rank) for rank in (0, 4, 8))
    assert plain.twin_rank == 0 and eight.to_json()["twin_rank"] == 8
    lora = [each.breakdown()["sram_lora"] for each in (plain, four, eight)]
    assert lora[2] - lora[0] == pytest.approx(2 * (lora[1] - lora[0]), rel=1e-9)
    assert lora[1] > lora[0] and four.breakdown()["rram_array"] == plain.breakdown()["rram_array"]
