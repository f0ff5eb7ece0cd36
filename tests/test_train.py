import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback

from halora.cim import Placement, rram_layers
from halora.cli import main
from halora.errors import UsageError
from halora.lora import LoraSettings
from halora.models import build_tiny, byte_tokenizer
from halora.tasks import Example
from halora.train import METHODS, SIDECAR, NoiseInjection, TrainSettings, train, weights_hash

LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)


def examples(count: int = 32) -> list[Example]:
    return [
        Example(task="add", prompt=f"{a}+{b}=", answer=f"{a + b}")
        for a in range(8)
        for b in range(count // 8)
    ]


def quick(method: str, **overrides) -> TrainSettings:
    values = dict(
        method=method,
        steps=24,
        batch_size=8,
        lr=3e-2,
        warmup_steps=0,
        train_noise="gaussian:sigma=0.02",
        redraw_every=5,
        mu=0.01,
        logging_steps=4,
        save_steps=1000,
        progress=False,
    )
    return TrainSettings(**{**values, **overrides})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_restores_the_clean_base(method, tmp_path):
    model, tokenizer = build_tiny(), byte_tokenizer()
    clean_hash = weights_hash(model)
    result = train(model, tokenizer, examples(), tmp_path / method, quick(method), LORA)
    losses = [record["loss"] for record in result.log]
    assert losses[-1] < 0.8 * losses[0], losses
    assert weights_hash(model) == clean_hash  # no noise left in the base
    regs = [record.get("reg") for record in result.log]
    assert all(r is not None for r in regs) == (method in ("reg", "halora"))
    assert bool(result.draws) == (method in ("noisy", "halora", "curriculum"))


class WatchBase(TrainerCallback):
    """Records one RRAM weight at every step begin (after the noise callback has run)."""

    def __init__(self, model):
        self.rram = next(iter(rram_layers(model).values())).weight
        self.rram_seen = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.rram_seen.append(self.rram.detach().clone())


def test_noise_is_redrawn_exactly_every_k_steps(tmp_path, monkeypatch):
    import halora.train as train_module

    watchers = []
    original = train_module.HaloraTrainer.__init__

    def with_watcher(self, *args, callbacks=None, **kwargs):
        watcher = WatchBase(kwargs["model"])
        watchers.append(watcher)
        original(self, *args, callbacks=[*callbacks, watcher], **kwargs)

    monkeypatch.setattr(train_module.HaloraTrainer, "__init__", with_watcher)
    model = build_tiny()
    clean = next(iter(rram_layers(model).values())).weight.detach().clone()
    result = train(
        model, byte_tokenizer(), examples(), tmp_path / "run", quick("noisy", steps=13, redraw_every=4), LORA
    )
    assert result.draws == [(0, 0), (4, 1), (8, 2), (12, 3)]
    seen = watchers[0].rram_seen
    assert len(seen) == 13
    changes = [step for step in range(1, 13) if not torch.equal(seen[step], seen[step - 1])]
    assert changes == [4, 8, 12]
    assert all(not torch.equal(weight, clean) for weight in seen)


def test_adapter_round_trips_through_stock_peft(tmp_path):
    model, tokenizer = build_tiny(), byte_tokenizer()
    out = tmp_path / "run"
    train(model, tokenizer, examples(), out, quick("halora"), LORA, model_name="tiny")
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_A" in key or "lora_B" in key for key in saved)
    batch = tokenizer(["3+4="], return_tensors="pt")
    with torch.no_grad():
        trained = model(**batch).logits
        loaded = PeftModel.from_pretrained(build_tiny(), out)
        missing = [
            n
            for n, p in loaded.named_parameters()
            if "lora_" in n and not any(torch.equal(p, t) for t in saved.values())
        ]
        assert not missing
        assert torch.allclose(loaded(**batch).logits, trained, atol=1e-6)
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["method"] == "halora" and sidecar["base_model"] == "tiny"
    assert sidecar["base_model_sha256"] == weights_hash(build_tiny())
    assert sidecar["training"]["train_noise"] == "gaussian:sigma=0.02"
    assert sidecar["noise_seed_used"] == 1234 and sidecar["training"]["noise_seed"] is None
    assert (out / "train_log.jsonl").read_text().count("\n") >= 1


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["halora", "curriculum"])
def test_resume_equals_uninterrupted(method, tmp_path, monkeypatch):
    """Resumed at step 4, mid-way through the draw of step 3: the curriculum's draw must
    keep the ramp factor of step 3, not take the one of the resume step."""
    import halora.train as train_module

    settings = quick(method, steps=12, save_steps=4, redraw_every=3)
    lora = LoraSettings(rank=4, alpha=8, dropout=0.1)  # dropout: the RNG must resume too
    train(build_tiny(), byte_tokenizer(), examples(), tmp_path / "whole", settings, lora)

    original = train_module.HaloraTrainer.__init__

    def interrupted(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*callbacks, StopAt(6)], **kwargs)

    monkeypatch.setattr(train_module.HaloraTrainer, "__init__", interrupted)
    model = build_tiny()
    clean = weights_hash(model)
    with pytest.raises(KeyboardInterrupt):
        train(model, byte_tokenizer(), examples(), tmp_path / "split", settings, lora)
    assert weights_hash(model) == clean  # interrupted: base restored
    monkeypatch.setattr(train_module.HaloraTrainer, "__init__", original)
    train(build_tiny(), byte_tokenizer(), examples(), tmp_path / "split", settings, lora, resume=True)
    whole = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    split = load_file(tmp_path / "split" / "adapter_model.safetensors")
    assert whole.keys() == split.keys()
    for key in whole:
        assert torch.equal(whole[key], split[key]), key


def test_train_errors(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        train(build_tiny(), byte_tokenizer(), examples(), tmp_path / "used", quick("lora"), LORA)
    with pytest.raises(UsageError, match="nothing to resume"):
        train(build_tiny(), byte_tokenizer(), examples(), tmp_path / "new", quick("lora"), LORA, resume=True)
    with pytest.raises(UsageError, match="method: unknown value 'dora'"):
        TrainSettings(method="dora")
    with pytest.raises(UsageError):
        TrainSettings(train_noise="gaussian:sigma=abc")
    with pytest.raises(UsageError, match="no training examples"):
        train(build_tiny(), byte_tokenizer(), [], tmp_path / "empty", quick("lora"), LORA)


def test_cli_train_with_config_file(tmp_path, capsys):
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"prompt": e.prompt, "answer": e.answer} for e in examples()]))
    config = tmp_path / "run.toml"
    config.write_text(
        'method = "halora"\nsteps = 6\nmu = 0.05\nredraw-every = 2\n'
        "rank = 2\nbatch_size = 4\nno_such_key = 1\n"
    )
    out = tmp_path / "out"
    argv = [
        "train",
        "--model",
        "tiny",
        "--tasks",
        f"json:{data}",
        "--config",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "unknown key no_such_key" in capsys.readouterr().err
    config.write_text('method = "halora"\nsteps = 6\nmu = 0.05\nredraw-every = 2\nrank = 2\nbatch_size = 4\n')
    assert main([*argv, "--steps", "4"]) == 0
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["training"]["steps"] == 4  # the flag beats the file
    assert sidecar["training"]["mu"] == 0.05 and sidecar["lora"]["rank"] == 2
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2


def test_noise_curriculum_and_noise_targets(tmp_path, monkeypatch):
    import halora.train as train_module

    watchers = []
    original = train_module.HaloraTrainer.__init__

    def with_watcher(self, *args, callbacks=None, **kwargs):
        watchers.append(WatchBase(kwargs["model"]))
        original(self, *args, callbacks=[*callbacks, watchers[-1]], **kwargs)

    monkeypatch.setattr(train_module.HaloraTrainer, "__init__", with_watcher)
    model = build_tiny()
    clean = {n: layer.weight.detach().clone() for n, layer in rram_layers(model).items()}
    train(
        model,
        byte_tokenizer(),
        examples(),
        tmp_path / "ramp",
        quick("noisy", steps=12, redraw_every=3, noise_ramp_steps=9),
        LORA,
    )
    first = next(iter(clean.values()))
    sizes = [float((seen - first).norm()) for seen in watchers[0].rram_seen[::3]]
    assert sizes[0] == 0.0 and sizes[1] < sizes[2] < sizes[3]  # 0, 1/3, 2/3, full sigma
    watchers.clear()
    monkeypatch.setattr(train_module.HaloraTrainer, "__init__", original)

    seen_noise = {}

    class Probe(WatchBase):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            for name, layer in rram_layers(model).items():
                seen_noise[name] = not torch.equal(layer.weight, clean[name])

    def with_probe(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*callbacks, Probe(kwargs["model"])], **kwargs)

    monkeypatch.setattr(train_module.HaloraTrainer, "__init__", with_probe)
    train(
        build_tiny(),
        byte_tokenizer(),
        examples(),
        tmp_path / "targets",
        quick("noisy", steps=2, noise_targets=("down_proj",)),
        LORA,
    )
    assert {name for name, noisy in seen_noise.items() if noisy} == {
        name for name in clean if name.endswith("down_proj")
    }


def test_curriculum_ramps_its_noise_over_two_thirds_of_the_steps_by_default():
    assert quick("curriculum", steps=60).ramp_steps == 40
    assert quick("curriculum", steps=60, noise_ramp_steps=10).ramp_steps == 10
    assert quick("noisy", steps=60).ramp_steps == 0
    assert quick("curriculum").injects_noise and not quick("curriculum").regularizes
    injection = NoiseInjection(None, quick("curriculum", steps=12), Placement())
    assert [injection.noise_scale(step) for step in (0, 4, 8, 12)] == [0.0, 0.5, 1.0, 1.0]


def test_gradient_accumulation_and_checkpointing_train_halora(tmp_path):
    model, tokenizer = build_tiny(), byte_tokenizer()
    settings = quick("halora", batch_size=4, grad_accum=2, gradient_checkpointing=True)
    result = train(model, tokenizer, examples(), tmp_path / "ga", settings, LORA)
    losses = [record["loss"] for record in result.log]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(record["reg"] > 0 for record in result.log)


def test_reg_term_counts_once_per_optimizer_step_under_accumulation(tmp_path):
    """mu * reg must weigh the same with 2 x 4 accumulated examples as with one batch of 8."""
    common = dict(steps=6, mu=1.0, reduction="sum")
    whole = train(
        build_tiny(),
        byte_tokenizer(),
        examples(),
        tmp_path / "one",
        quick("reg", batch_size=8, grad_accum=1, **common),
        LORA,
    )
    split = train(
        build_tiny(),
        byte_tokenizer(),
        examples(),
        tmp_path / "two",
        quick("reg", batch_size=4, grad_accum=2, **common),
        LORA,
    )
    assert whole.steps == split.steps == 6
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=1e-3, atol=1e-5), key


@pytest.mark.slow
def test_ddp_on_cpu_with_torchrun(tmp_path):
    """Two data-parallel ranks (gloo, CPU) train halora with noise re-draws: one adapter saved."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"prompt": e.prompt, "answer": e.answer} for e in examples(64)]))
    out = tmp_path / "ddp"
    done = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "-m",
            "halora.cli",
            "train",
            "--model",
            "tiny",
            "--tasks",
            f"json:{data}",
            "--train-n",
            "40",
            "--method",
            "halora",
            "--steps",
            "4",
            "--redraw-every",
            "2",
            "--batch-size",
            "4",
            "--logging-steps",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained halora for 4 steps") == 1  # printed by the main rank only
    assert json.loads((out / SIDECAR).read_text())["method"] == "halora"
    assert load_file(out / "adapter_model.safetensors")


def test_training_seeds_draw_different_training_noise():
    assert quick("noisy").effective_noise_seed == 1234  # seed 0 keeps the draws it always had
    assert quick("noisy", seed=1).effective_noise_seed == 1235
    assert quick("noisy", seed=1, noise_seed=7).effective_noise_seed == 7
    first = NoiseInjection(None, quick("noisy"), Placement())
    second = NoiseInjection(None, quick("noisy", seed=1), Placement())
    assert first.settings.effective_noise_seed != second.settings.effective_noise_seed


def test_read_noise_under_checkpointing_is_refused(tmp_path):
    settings = quick("noisy", train_noise="gaussian:sigma=0.02+read:sigma=0.01", gradient_checkpointing=True)
    with pytest.raises(UsageError, match="read noise"):
        train(build_tiny(), byte_tokenizer(), examples(), tmp_path / "x", settings, LORA)
    assert not (tmp_path / "x" / "adapter_model.safetensors").exists()


def test_curriculum_ramps_every_model_with_a_magnitude_and_refuses_the_rest():
    for spec in ("gaussian:sigma=0.02", "saf:p0=0.01,p1=0.01", "wan2022:t=1", "cmo:t=1+cmo_read:t=1"):
        TrainSettings(method="curriculum", steps=9, train_noise=spec)
    with pytest.raises(UsageError, match="quant"):
        TrainSettings(method="curriculum", steps=9, train_noise="quant:bits=4")
    TrainSettings(method="noisy", train_noise="quant:bits=4")  # no ramp: nothing to scale


def test_distill_objective_logs_a_kl_that_is_zero_without_noise(tmp_path):
    model, tokenizer = build_tiny(), byte_tokenizer()
    clean_hash = weights_hash(model)
    settings = quick("noisy", objective="both", train_noise="gaussian:sigma=0", steps=8)
    result = train(model, tokenizer, examples(), tmp_path / "zero", settings, LORA)
    assert all(record["kl"] == pytest.approx(0.0, abs=1e-6) for record in result.log)
    settings = quick("noisy", objective="both", train_noise="gaussian:sigma=0.2", steps=8)
    result = train(model, tokenizer, examples(), tmp_path / "noisy", settings, LORA)
    assert all(record["kl"] > 1e-5 for record in result.log)
    assert weights_hash(model) == clean_hash  # noise and clean copy both gone


def test_distill_objective_alone_lowers_the_kl(tmp_path):
    settings = quick("noisy", objective="distill", train_noise="gaussian:sigma=0.3", steps=24, lr=1e-2)
    result = train(build_tiny(), byte_tokenizer(), examples(), tmp_path / "d", settings, LORA)
    kls = [record["kl"] for record in result.log]
    assert kls[-1] < kls[0], kls


def test_distill_objective_needs_training_noise():
    with pytest.raises(UsageError, match="injects no noise"):
        TrainSettings(method="lora", objective="distill")
