import math

import pytest
import torch

from halora.cim import (
    ALL_LINEAR,
    Chip,
    Placement,
    layer_generator,
    layer_seed,
    placement_report,
    program_chip,
    rram_layers,
)
from halora.errors import UsageError
from halora.lora import LoraSettings, attach_lora
from halora.noise import Chain, GaussianNoise, ReadNoise

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def snapshot(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def changed(model, before):
    return {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}


def test_rram_layers_are_the_block_projections(tiny):
    model, _ = tiny
    layers = rram_layers(model)
    assert len(layers) == 7 * model.config.num_hidden_layers
    assert {name.rsplit(".", 1)[-1] for name in layers} == set(PROJECTIONS)
    assert "lm_head" not in " ".join(layers)


def test_placement_counts_every_parameter_once(tiny):
    model, _ = tiny
    base_total = sum(p.numel() for p in model.parameters())
    model = attach_lora(model, LoraSettings(rank=4))
    report = placement_report(model)
    c = model.config
    attention = c.hidden_size * c.hidden_size * 2 + 2 * c.hidden_size * (
        c.num_key_value_heads * c.hidden_size // c.num_attention_heads
    )
    mlp = 3 * c.hidden_size * c.intermediate_size
    assert report.params["rram"] == c.num_hidden_layers * (attention + mlp)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert report.params["sram"] == lora > 0
    assert report.total == base_total + lora
    assert report.lora_modules == 5 * c.num_hidden_layers
    assert math.isclose(sum(report.share(p) for p in report.params), 1.0)


def test_program_changes_only_rram_and_restores_bit_identical(tiny):
    model = attach_lora(tiny[0], LoraSettings(rank=4))
    with torch.no_grad():  # a trained-looking adapter: B is zero at init
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    before = snapshot(model)
    rram_weights = {id(layer.weight) for layer in rram_layers(model).values()}
    rram_names = {name for name, p in model.named_parameters() if id(p) in rram_weights}
    assert len(rram_names) == 7 * model.config.num_hidden_layers
    with program_chip(model, "gaussian:sigma=0.02", seed=3):
        moved = changed(model, before)
        assert moved == rram_names
        assert not any("lora_" in name for name in moved)
    assert changed(model, before) == set()


@pytest.mark.parametrize("store", ["host", "disk"])
def test_same_chip_with_and_without_adapter_and_any_store(store):
    from halora.models import build_tiny

    plain, wrapped = build_tiny(), attach_lora(build_tiny(), LoraSettings(rank=2))
    with program_chip(plain, "gaussian:sigma=0.05", seed=7, store=store):
        plain_noisy = {n: layer.weight.clone() for n, layer in rram_layers(plain).items()}
    with program_chip(wrapped, "gaussian:sigma=0.05", seed=7):
        wrapped_noisy = {n: layer.weight.clone() for n, layer in rram_layers(wrapped).items()}
    assert plain_noisy.keys() == wrapped_noisy.keys()
    for name in plain_noisy:
        assert torch.equal(plain_noisy[name], wrapped_noisy[name]), name


def test_draws_do_not_depend_on_layer_order(tiny):
    model, _ = tiny
    forward = Placement(rram_targets=PROJECTIONS)
    backward = Placement(rram_targets=tuple(reversed(PROJECTIONS)))
    with program_chip(model, "gaussian:sigma=0.05", seed=1, placement=forward):
        first = {n: layer.weight.clone() for n, layer in rram_layers(model).items()}
    with program_chip(model, "gaussian:sigma=0.05", seed=1, placement=backward):
        second = {n: layer.weight.clone() for n, layer in rram_layers(model).items()}
    just_mlp = Placement(rram_targets=("down_proj",))
    with program_chip(model, "gaussian:sigma=0.05", seed=1, placement=just_mlp):
        alone = {n: layer.weight.clone() for n, layer in rram_layers(model, just_mlp).items()}
    for name, weight in first.items():
        assert torch.equal(weight, second[name])
    for name, weight in alone.items():
        assert torch.equal(weight, first[name])


def test_seeds_give_different_chips_and_reprogram_restores_exactly(tiny):
    model, _ = tiny
    before = snapshot(model)
    chip = Chip(model, "gaussian:sigma=0.05", seed=0)
    first = snapshot(model)
    chip.reprogram(1)
    second = snapshot(model)
    chip.reprogram(0)
    assert changed(model, first) == set()
    assert any(not torch.equal(second[name], first[name]) for name in first)
    chip.restore()
    assert changed(model, before) == set()


def test_bf16_program_and_restore(tiny):
    from halora.models import load_model

    model, _ = load_model("tiny", dtype="bfloat16")
    before = snapshot(model)
    with program_chip(model, "gaussian:sigma=0.02", seed=0):
        assert changed(model, before)
        assert all(layer.weight.dtype == torch.bfloat16 for layer in rram_layers(model).values())
    assert changed(model, before) == set()


def test_read_noise_redraws_every_forward_and_unhooks(tiny):
    model, tokenizer = tiny
    batch = tokenizer(["a short input"], return_tensors="pt")
    with torch.no_grad():
        clean = model(**batch).logits
        with program_chip(model, "read:sigma=0.05", seed=0) as chip:
            first, second = model(**batch).logits, model(**batch).logits
            assert chip.programmed
        after = model(**batch).logits
    assert not torch.equal(first, second)
    assert not torch.equal(first, clean)
    assert torch.equal(after, clean)


def test_tied_lm_head_on_rram_keeps_embeddings_clean(tiny):
    model, _ = tiny
    embeddings = model.get_input_embeddings().weight.detach().clone()
    with program_chip(model, "gaussian:sigma=0.05", seed=0, placement=Placement(lm_head=True)):
        assert torch.equal(model.get_input_embeddings().weight, embeddings)
        assert not torch.equal(model.get_output_embeddings().weight, embeddings)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_gpt2_conv1d_layers_are_placed_with_all_linear():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    layers = rram_layers(model, Placement(rram_targets=(ALL_LINEAR,)))
    assert len(layers) == 2 * 4  # c_attn, c_proj (attention), c_fc, c_proj (mlp)
    before = snapshot(model)
    with program_chip(model, "gaussian:sigma=0.05", seed=0, placement=Placement(rram_targets=(ALL_LINEAR,))):
        assert len(changed(model, before)) == 8
    assert changed(model, before) == set()


def test_placement_errors(tiny):
    model, _ = tiny
    with pytest.raises(UsageError, match="no linear layer"):
        rram_layers(model, Placement(rram_targets=("qkv",)))
    with pytest.raises(UsageError):
        program_chip(model, "gaussian:sigma=-1", seed=0).__enter__()


def perplexity(model, tokenizer, text: str) -> float:
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch.input_ids).loss
    return math.exp(loss.item())


PLAIN_TEXT = (
    "The weather was pleasant, so we walked to the park after lunch. "
    "My sister likes to read books about history and science. "
    "The train to the city leaves every morning at eight o'clock. "
    "We planted tomatoes and beans in the garden this spring."
)


@pytest.mark.slow
def test_smollm2_perplexity_rises_with_tile_noise_as_measured(smollm2):
    """paper-facts.md: clean 36.5 -> about 41 / 50 / 135 at sigma 0.005 / 0.01 / 0.02
    (ratios 1.12 / 1.36 / 3.7) with per-64x64-tile max scaling, averaged here over 3 chips."""
    model, tokenizer = smollm2
    clean = perplexity(model, tokenizer, PLAIN_TEXT)
    ratios = {}
    with program_chip(model, "none", seed=0) as chip:  # one stash, many draws
        for sigma in (0.005, 0.01, 0.02):
            values = []
            for seed in range(3):
                chip.reprogram(seed, f"gaussian:sigma={sigma},scale=tile,tile=64")
                values.append(perplexity(model, tokenizer, PLAIN_TEXT))
            ratios[sigma] = sum(values) / len(values) / clean
    assert 15 < clean < 80
    assert 1.0 < ratios[0.005] < 1.35
    assert 1.1 < ratios[0.01] < 1.9
    assert 2.0 < ratios[0.02] < 8.0
    assert perplexity(model, tokenizer, PLAIN_TEXT) == pytest.approx(clean, abs=0)


def test_reprogram_with_another_noise_model_equals_a_fresh_chip(tiny):
    model, _ = tiny
    before = snapshot(model)
    with program_chip(model, "saf:p0=0.05,p1=0.05", seed=4):
        fresh = snapshot(model)
    with program_chip(model, "none", seed=0) as chip:
        assert changed(model, before) == set()
        chip.reprogram(4, "saf:p0=0.05,p1=0.05")
        assert changed(model, fresh) == set()
        chip.reprogram(4, "read:sigma=0.05")  # read noise: hooks installed, weights clean
        assert changed(model, before) == set() and chip.read is not None
    assert changed(model, before) == set()


@pytest.mark.parametrize("device", [None, "cpu", "cuda", torch.device("cuda", 1)])
def test_layer_generators_live_on_the_cpu_whatever_the_weight_device(device):
    generator = layer_generator(3, "model.layers.0.mlp.down_proj", device)
    assert generator.device.type == "cpu"
    assert generator.initial_seed() == layer_seed(3, "model.layers.0.mlp.down_proj")


class _RecordingNoise(GaussianNoise):
    """Gaussian noise that notes the device of every generator it is handed."""

    seen: list

    def apply(self, weight, generator):
        type(self).seen.append(generator.device.type)
        return super().apply(weight, generator)


class _RecordingRead(ReadNoise):
    seen: list

    def apply(self, weight, generator):
        type(self).seen.append(generator.device.type)
        return super().apply(weight, generator)


def test_chip_programs_and_reads_with_cpu_generators(tiny, monkeypatch):
    """Even for a weight reported on "cuda" the chip hands the models CPU generators."""
    import halora.cim as cim

    model, tokenizer = tiny
    _RecordingNoise.seen, _RecordingRead.seen = [], []
    named = []
    real = cim.layer_generator

    def spy(seed, name, device=None):
        named.append(name)
        return real(seed, name, "cuda")  # as a caller on a GPU would name the device

    monkeypatch.setattr(cim, "layer_generator", spy)
    chain = Chain((_RecordingNoise(0.02), _RecordingRead(0.01)))
    with program_chip(model, chain, seed=0), torch.no_grad():
        model(**tokenizer(["a short input"], return_tensors="pt"))
    assert _RecordingNoise.seen and set(_RecordingNoise.seen) == {"cpu"}
    assert _RecordingRead.seen and set(_RecordingRead.seen) == {"cpu"}
    assert len(named) == 2 * len(rram_layers(model))  # programming and read, per layer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_chip_seed_gives_the_same_chip_on_cpu_and_cuda():
    from halora.models import build_tiny

    on_cpu, on_cuda = build_tiny(), build_tiny().cuda()
    with program_chip(on_cpu, "gaussian:sigma=0.05+saf:p0=0.01,p1=0.01", seed=7):
        cpu_chip = {n: layer.weight.clone() for n, layer in rram_layers(on_cpu).items()}
    with program_chip(on_cuda, "gaussian:sigma=0.05+saf:p0=0.01,p1=0.01", seed=7):
        cuda_chip = {n: layer.weight.cpu() for n, layer in rram_layers(on_cuda).items()}
    for name, weight in cpu_chip.items():
        torch.testing.assert_close(cuda_chip[name], weight, rtol=1e-6, atol=1e-7)
