"""The analog forward (halora.analog): converters on the RRAM layers, and its CLI flags."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import halora.analog as analog_module
import halora.sweep as sweep_module
from halora.analog import AnalogStats, analog_forward, analog_linear
from halora.cim import Placement, program_chip, rram_layers
from halora.cli import main
from halora.converters import Converters
from halora.errors import UsageError
from halora.evaluate import EvalSettings
from halora.lora import LoraSettings, attach_lora
from halora.models import build_tiny, byte_tokenizer
from halora.sweep import BASE, SweepPlan, conditions_from, run_sweep
from halora.tasks import load_tasks

# 32-bit converters and a range of `rows` (the largest possible partial sum): no clipping,
# rounding far below float32's own
EXACT = Converters(dac_bits=32, adc_bits=32, adc_range=64.0)


def tokens(seed: int = 0, batch: int = 2, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 200, (batch, length), generator=generator)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def one_layer(weight, bias=None) -> nn.Linear:
    weight = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def run(layer: nn.Linear, x, converters: Converters) -> torch.Tensor:
    x = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        return analog_linear(x, layer.weight, layer.bias, converters)


# --------------------------------------------------------------------------------------
# The arithmetic
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, cols", [(64, 64), (48, 40), (7, 1000)])
def test_exact_converters_give_the_digital_forward(tiny, rows, cols):
    """48 and 7 rows pad the last chunk with zeros (tiny: 64 and 128 inputs)."""
    model, _ = tiny
    ids = tokens()
    digital = logits(model, ids)
    exact = Converters(dac_bits=32, adc_bits=32, adc_range=float(rows), rows=rows, cols=cols)
    with analog_forward(model, exact):
        analog = logits(model, ids)
    assert relative_error(analog, digital) < 1e-5
    with analog_forward(model, Converters(dac_bits=6, adc_bits=6, rows=rows, cols=cols)):
        coarse = logits(model, ids)
    assert relative_error(coarse, digital) > 1e-3  # the forward really is replaced


def test_more_bits_come_closer_to_the_digital_forward(tiny):
    model, _ = tiny
    ids = tokens()
    digital = logits(model, ids)
    errors = []
    for bits in (4, 6, 8, 10):
        with analog_forward(model, Converters(dac_bits=bits, adc_bits=bits)):
            errors.append(relative_error(logits(model, ids), digital))
    assert errors == sorted(errors, reverse=True), errors


def test_adc_clips_each_partial_sum_to_exactly_its_range_in_output_units():
    # one tile of 4 rows: sums 4 and -4 exceed the range 2; 0.5 does not
    layer = one_layer([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0], [1.0, -1.0, 0.5, 0.0]])
    converters = Converters(rows=4, cols=4, adc_range=2.0, dac_bits=8, adc_bits=8)
    y = run(layer, [[1.0, 1.0, 1.0, 1.0]], converters)
    assert y[0, 0].item() == 2.0 and y[0, 1].item() == -2.0
    assert abs(y[0, 2].item() - 0.5) <= converters.adc_step / 2
    # in output units the bound is adc_range * max|x| * max|W_tile|: 2 * 3 * 0.5
    with torch.no_grad():
        layer.weight.mul_(0.5)
    y = run(layer, [[3.0, 3.0, 3.0, 3.0]], converters)
    assert y[0, 0].item() == pytest.approx(3.0, abs=1e-6) and y[0, 1].item() == pytest.approx(-3.0, abs=1e-6)


def test_each_row_tile_is_clipped_on_its_own_then_added_digitally():
    layer = one_layer([[1.0, 1.0, 1.0, 1.0]])
    # two tiles of 2 rows: each partial sum is 2, clipped to 1.5; the digital sum is 3
    y = run(layer, [[1.0, 1.0, 1.0, 1.0]], Converters(rows=2, adc_range=1.5, dac_bits=2, adc_bits=8))
    assert y.item() == pytest.approx(3.0, abs=1e-6)
    # one tile of 4 rows: one sum of 4, clipped to 1.5
    y = run(layer, [[1.0, 1.0, 1.0, 1.0]], Converters(rows=4, adc_range=1.5, dac_bits=2, adc_bits=8))
    assert y.item() == pytest.approx(1.5, abs=1e-6)


@pytest.mark.parametrize(
    "last, expected",
    [(0.4, 3.0), (0.6, 4.0), (0.5, 4.0), (-0.5, 2.0)],  # 3.5 and 2.5: round half to even
)
def test_adc_rounds_to_the_nearest_step_half_to_even(last, expected):
    # 4-bit ADC over ±7: 7 levels each side, one step = 1 unit; a 2-bit DAC (levels -1, 0, 1)
    # passes the inputs 1 exactly, so the partial sum is 3 + last, exactly
    converters = Converters(rows=4, cols=4, dac_bits=2, adc_bits=4, adc_range=7.0)
    assert converters.adc_step == 1.0
    layer = one_layer([[1.0, 1.0, 1.0, last]])
    assert run(layer, [[1.0, 1.0, 1.0, 1.0]], converters).item() == expected


def test_dac_reduces_inputs_to_the_documented_grid():
    # 3-bit DAC: 3 levels each side, x / max|x| onto k/3; identity weight, exact ADC
    converters = Converters(rows=4, cols=4, dac_bits=3, adc_bits=32, adc_range=4.0)
    layer = one_layer(torch.eye(4).tolist())
    y = run(layer, [[0.9, 0.5, 0.2, -1.0]], converters)
    # 2.7 -> 3, 1.5 -> 2 (half to even), 0.6 -> 1, -3 -> -3
    assert torch.allclose(y, torch.tensor([[1.0, 2 / 3, 1 / 3, -1.0]]), atol=1e-6)
    # the grid scales with the input: the same pattern at twice the size
    y = run(layer, [[1.8, 1.0, 0.4, -2.0]], converters)
    assert torch.allclose(y, torch.tensor([[2.0, 4 / 3, 2 / 3, -2.0]]), atol=1e-6)


def test_each_row_tile_scales_its_inputs_by_their_own_abs_max():
    converters = Converters(rows=2, cols=4, dac_bits=3, adc_bits=32, adc_range=2.0)
    layer = one_layer(torch.eye(4).tolist())
    y = run(layer, [[1.0, 0.4, 0.1, 0.05]], converters)
    # tile 1: max 1, 0.4 -> 1.2/3 -> 1/3; tile 2: max 0.1, 0.05 -> 1.5/3 -> 2/3 of 0.1
    # (one scale for the whole vector would round 0.1 and 0.05 to 0)
    assert torch.allclose(y, torch.tensor([[1.0, 1 / 3, 0.1, 0.2 / 3]]), atol=1e-6)


def test_weight_scale_is_per_tile_of_rows_x_cols():
    # outputs 0-1 are one tile (max 1), output 2 another (max 0.01): with its own scale the
    # small tile keeps its resolution; a 4-bit ADC over ±1 has steps of 1/7
    layer = one_layer([[1.0, 0.0], [0.0, 0.5], [0.01, 0.0]])
    converters = Converters(rows=2, cols=2, dac_bits=8, adc_bits=4, adc_range=1.0)
    y = run(layer, [[1.0, 0.0]], converters)
    assert y[0, 2].item() == pytest.approx(0.01, abs=1e-7)  # normalised: exactly 1 unit
    shared = Converters(rows=2, cols=3, dac_bits=8, adc_bits=4, adc_range=1.0)
    assert run(layer, [[1.0, 0.0]], shared)[0, 2].item() == 0.0  # 0.01 of one step of 1/7


def test_zero_inputs_and_zero_tiles_give_zero_and_bias_is_added():
    layer = one_layer([[0.0, 0.0], [1.0, 2.0]], bias=[0.5, -0.25])
    y = run(layer, [[0.0, 0.0], [1.0, 1.0]], Converters(rows=2, cols=1))
    assert torch.equal(y[0], torch.tensor([0.5, -0.25]))
    assert y[1, 0].item() == 0.5 and y[1, 1].item() == pytest.approx(2.75, abs=0.07)
    assert torch.isfinite(y).all()


def test_token_blocks_give_the_same_result(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(37, 150, generator=generator)
    weight = torch.randn(70, 150, generator=generator)
    whole = analog_linear(x, weight, None, EXACT)
    monkeypatch.setattr(analog_module, "BLOCK_ELEMENTS", 3 * 70 * 4)  # 4 tokens a block
    assert torch.allclose(analog_linear(x, weight, None, EXACT), whole, atol=1e-5)
    assert torch.allclose(whole, F.linear(x, weight), atol=1e-4)


def test_gradients_pass_straight_through_rounding_and_stop_at_clipping():
    layer = one_layer([[1.0, 1.0], [0.3, -0.2]])
    converters = Converters(rows=2, cols=2, adc_range=1.5, dac_bits=4, adc_bits=4)
    x = torch.tensor([[1.0, 1.0]], requires_grad=True)
    y = analog_linear(x, layer.weight, None, converters)
    y[0, 1].backward()
    assert torch.allclose(x.grad, torch.tensor([[0.3, -0.2]]))  # straight through the rounding
    x.grad = None
    analog_linear(x, layer.weight, None, converters)[0, 0].backward()  # sum 2 > 1.5: clipped
    assert torch.equal(x.grad, torch.zeros(1, 2))


# --------------------------------------------------------------------------------------
# Output noise
# --------------------------------------------------------------------------------------


def test_output_noise_is_seeded_and_reproducible(tiny):
    model, _ = tiny
    ids = tokens()
    noisy = Converters(out_noise=0.2)

    def twice(converters, seed):
        with analog_forward(model, converters, seed=seed):
            return logits(model, ids), logits(model, ids)

    first, second = twice(noisy, seed=3)
    again_first, again_second = twice(noisy, seed=3)
    assert torch.equal(first, again_first) and torch.equal(second, again_second)
    assert not torch.equal(first, second)  # a fresh draw every forward
    assert not torch.equal(twice(noisy, seed=4)[0], first)
    quiet_first, quiet_second = twice(Converters(), seed=3)
    assert torch.equal(quiet_first, quiet_second)  # no noise: deterministic
    assert not torch.equal(quiet_first, first)


def test_output_noise_has_its_std_in_normalised_units():
    # a zero weight tile of 1, input 1: every partial sum is pure noise; exact ADC
    converters = Converters(rows=4, cols=4, dac_bits=8, adc_bits=32, adc_range=64.0, out_noise=0.5)
    weight = torch.zeros(4, 8)
    weight[:, 0] = 1.0  # scale 1 on both row tiles, sums 1 and 0
    x = torch.ones(4000, 8)
    generator = torch.Generator().manual_seed(0)
    y = analog_linear(x, weight, None, converters, generator)
    # two partial sums per output, each with std 0.5: std of the total sqrt(2) * 0.5
    assert y.mean().item() == pytest.approx(1.0, abs=0.03)
    assert y.std().item() == pytest.approx(0.5 * 2**0.5, rel=0.05)


# --------------------------------------------------------------------------------------
# Installing and removing
# --------------------------------------------------------------------------------------


def test_the_context_manager_restores_the_model(tiny):
    model, _ = tiny
    ids = tokens()
    before = logits(model, ids)
    layers = rram_layers(model)
    hooks = {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in layers.items()}
    with analog_forward(model, Converters()) as installed:
        assert set(installed) == set(layers)
        assert all("forward" in layer.__dict__ for layer in layers.values())
        assert not torch.equal(logits(model, ids), before)
    assert torch.equal(logits(model, ids), before)
    assert all("forward" not in module.__dict__ for module in model.modules())
    assert hooks == {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in layers.items()}
    with pytest.raises(RuntimeError, match="inside"), analog_forward(model, Converters()):
        raise RuntimeError("inside")
    assert all("forward" not in module.__dict__ for module in model.modules())
    assert torch.equal(logits(model, ids), before)


def test_nested_analog_forward_is_refused_and_the_outer_one_kept(tiny):
    model, _ = tiny
    with analog_forward(model, Converters()):
        with pytest.raises(UsageError, match="on already"), analog_forward(model, Converters()):
            pass
        assert all("forward" in layer.__dict__ for layer in rram_layers(model).values())
    assert all("forward" not in module.__dict__ for module in model.modules())


def test_only_the_placed_layers_are_analog(tiny):
    model, _ = tiny
    with analog_forward(model, Converters(), Placement(rram_targets=("q_proj",))) as layers:
        assert layers and all(name.endswith("q_proj") for name in layers)
        replaced = [name for name, m in model.named_modules() if "forward" in m.__dict__]
        assert sorted(replaced) == sorted(layers)


# --------------------------------------------------------------------------------------
# LoRA and the chip
# --------------------------------------------------------------------------------------


def lora_model():
    torch.manual_seed(0)
    model = attach_lora(build_tiny(), LoraSettings(rank=2))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model.eval()


@pytest.mark.filterwarnings(
    "ignore::FutureWarning:transformers.modeling_utils"
)  # PEFT asks a deprecated property
def test_lora_branch_is_untouched_and_trains_through_the_converters():
    model = lora_model()
    from peft.tuners.lora import Linear as LoraLinear

    name, lora_layer = next((n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear))
    x = torch.randn(3, lora_layer.in_features)
    with torch.no_grad():
        digital_contribution = lora_layer(x) - lora_layer.base_layer(x)
        with analog_forward(model, Converters(adc_bits=6)):
            analog_base = lora_layer.base_layer(x)
            analog_contribution = lora_layer(x) - analog_base
            assert not torch.allclose(analog_base, F.linear(x, lora_layer.base_layer.weight))
            sram = [m for n, m in model.named_modules() if "lora_" in n]
            assert sram and all("forward" not in m.__dict__ for m in sram)
    assert torch.allclose(analog_contribution, digital_contribution, atol=1e-5)

    ids = tokens()
    with analog_forward(model, Converters()):
        model(ids, labels=ids).loss.backward()
    trained = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert all(g is not None and g.abs().sum() > 0 for g in trained.values())


def test_composes_with_a_programmed_chip(tiny):
    model, _ = tiny
    ids = tokens()
    with analog_forward(model, Converters()):
        analog_clean = logits(model, ids)
    with program_chip(model, "gaussian:sigma=0.05", seed=0):
        programmed = logits(model, ids)
        with analog_forward(model, Converters()):
            analog_programmed = logits(model, ids)
        with analog_forward(model, EXACT):
            exact_programmed = logits(model, ids)
    assert not torch.allclose(analog_programmed, analog_clean, atol=1e-3)
    assert relative_error(exact_programmed, programmed) < 1e-5  # it reads the programmed weights


def test_reads_the_weight_the_read_noise_hook_swaps_in(tiny):
    model, _ = tiny
    ids = tokens()
    with program_chip(model, "read:sigma=0.05", seed=1):
        digital = logits(model, ids)
    with program_chip(model, "read:sigma=0.05", seed=1), analog_forward(model, EXACT):
        analog = logits(model, ids)  # the same draw, through exact converters
    assert relative_error(analog, digital) < 1e-5
    assert relative_error(analog, logits(model, ids)) > 1e-3


def test_gpt2_conv1d_layers_are_handled():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    placement = Placement(rram_targets=("c_attn", "c_proj", "c_fc"))
    ids = tokens()
    digital = logits(model, ids)
    with analog_forward(model, EXACT, placement) as layers:
        assert len(layers) == 8
        exact = logits(model, ids)
    with analog_forward(model, Converters(adc_bits=5), placement):
        coarse = logits(model, ids)
    assert relative_error(exact, digital) < 1e-5
    assert relative_error(coarse, digital) > 1e-3


def test_clip_statistics_count_partial_sums(tiny):
    model, _ = tiny
    stats = AnalogStats()
    with analog_forward(model, Converters(adc_range=0.05), stats=stats):
        logits(model, tokens())
    assert stats.seen > 0 and 0 < stats.clip_fraction < 1


# --------------------------------------------------------------------------------------
# eval and sweep
# --------------------------------------------------------------------------------------


def parity_tasks(tmp_path) -> str:
    records = [
        {"prompt": f"{a} and {b} make", "options": [" even", " odd"], "gold": (a + b) % 2, "split": "test"}
        for a in range(4)
        for b in range(4)
    ]
    path = tmp_path / "parity.json"
    path.write_text(json.dumps(records))
    return f"json:{path}"


def eval_json(capsys, tmp_path, *flags) -> dict:
    argv = ["eval", "--model", "tiny", "--tasks", parity_tasks(tmp_path), "--items", "6", "--json"]
    assert main([*argv, *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_analog_flags(tmp_path, capsys):
    plain = eval_json(capsys, tmp_path)
    assert plain["converters"] is None
    result = eval_json(
        capsys, tmp_path, "--analog", "--adc-bits", "6", "--adc-rows", "32", "--out-noise", "0.1"
    )
    assert result["converters"] == {
        "dac_bits": 8,
        "adc_bits": 6,
        "rows": 32,
        "cols": 64,
        "adc_range": 8.0,
        "out_noise": 0.1,
    }
    assert result["tasks"][0]["n"] == plain["tasks"][0]["n"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--adc-bits", "6"], "--adc-bits set the analog forward, which is off: add --analog"),
        (["--analog", "--adc-bits", "1"], "--adc-bits must be >= 2, got 1"),
        (["--analog", "--adc-range", "wide"], "--adc-range must be a number, got 'wide'"),
        (["--analog", "--adc-range", "0"], "--adc-range must be >= 1e-06"),
        (["--analog", "--adc-rows", "0"], "--adc-rows must be >= 1"),
        (["--analog", "--out-noise", "-1"], "--out-noise must be >= 0"),
        (["--analog", "--dac-bits", "33"], "--dac-bits must be <= 32"),
    ],
)
def test_eval_bad_converter_flags_are_one_line(tmp_path, capsys, flags, message):
    argv = ["eval", "--model", "tiny", "--tasks", parity_tasks(tmp_path), "--items", "2", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def sweep_argv(tmp_path, out, *flags) -> list[str]:
    return [
        "sweep",
        "--model",
        "tiny",
        "--base",
        "--tasks",
        parity_tasks(tmp_path),
        "--items",
        "4",
        "--sigmas",
        "0.05",
        "--chips",
        "1",
        "--out",
        str(out),
        *flags,
    ]


def test_sweep_analog_is_in_the_manifest_and_records_and_other_converters_are_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(sweep_argv(tmp_path, out, "--analog", "--adc-bits", "6")) == 0
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["converters"]["adc_bits"] == 6
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert runs and all(r["converters"]["adc_bits"] == 6 for r in runs)
    assert main(sweep_argv(tmp_path, out, "--analog", "--adc-bits", "6")) == 0  # resumes
    capsys.readouterr()
    for flags in (["--analog", "--adc-bits", "7"], []):
        assert main(sweep_argv(tmp_path, out, *flags)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "other converters" in err[0], err


def test_sweep_config_file_sets_the_converters(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text("analog = true\nadc_rows = 32\nadc-range = 4.0\n")
    out = tmp_path / "sweep"
    assert main([*sweep_argv(tmp_path, out), "--config", str(config)]) == 0
    converters = json.loads((out / "sweep.json").read_text())["converters"]
    assert converters["rows"] == 32 and converters["adc_range"] == 4.0
    config.write_text("analog = true\nadc_rows = 0\n")
    assert main([*sweep_argv(tmp_path, tmp_path / "other"), "--config", str(config)]) == 2
    assert "adc_rows must be >= 1" in capsys.readouterr().err


def test_run_sweep_scores_every_cell_through_the_converters(tmp_path, monkeypatch):
    tasks = load_tasks(parity_tasks(tmp_path))
    model = build_tiny()
    plan = SweepPlan(
        conditions=tuple(conditions_from((0.05,), "gaussian:sigma={sigma}", ())),
        seeds=(0,),
        adapters=((BASE, ""),),
        tasks=tuple(t.name for t in tasks),
        eval=EvalSettings(items=None),
        model="tiny",
        converters=Converters(adc_bits=6),
    )
    layer = next(iter(rram_layers(model).values()))
    seen = []
    original = sweep_module.evaluate_task

    def spy(*args, **kwargs):
        seen.append("forward" in layer.__dict__)
        return original(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "evaluate_task", spy)
    records = run_sweep(model, byte_tokenizer(), tasks, plan, tmp_path / "out")
    assert seen == [True, True]  # clean and sigma 0.05, each inside the analog forward
    assert all(r["converters"]["adc_bits"] == 6 for r in records)
    assert "forward" not in layer.__dict__


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layers_run_the_converters_in_float32(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 96, generator=generator)
    weight = torch.randn(40, 96, generator=generator)
    bias = torch.randn(40, generator=generator)
    reference = analog_linear(x.to(dtype).float(), weight.to(dtype).float(), bias.to(dtype).float(), EXACT)
    y = analog_linear(x.to(dtype), weight.to(dtype), bias.to(dtype), EXACT)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert torch.allclose(y.float(), reference, rtol=1e-2, atol=1e-2)
