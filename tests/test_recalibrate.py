"""Per-chip recalibration and the distillation KL, on the tiny model."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from test_commands import mc_tasks

from halora.cim import program_chip, rram_layers
from halora.cli import main
from halora.distill import kl_full, kl_topk, topk_targets
from halora.errors import UsageError
from halora.lora import LoraSettings
from halora.models import build_tiny, byte_tokenizer
from halora.precision import check_precision
from halora.recalibrate import RecalSettings, calibration_examples, recalibrate
from halora.sidecar import weights_hash
from halora.tasks import Example
from halora.tasks.jsonfile import JsonTask
from halora.train import TrainSettings, train

NOISE = "gaussian:sigma=0.1"


def examples(count: int = 32) -> list[Example]:
    return [
        Example(task="add", prompt=f"{a}+{b}=", answer=f"{a + b}")
        for a in range(8)
        for b in range(count // 8)
    ]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A tiny LoRA adapter trained for a few steps (B is not zero), without dropout."""
    out = tmp_path_factory.mktemp("adapter") / "lora"
    settings = TrainSettings(
        method="lora", steps=8, batch_size=8, lr=3e-2, warmup_steps=0, logging_steps=4, progress=False
    )
    train(
        build_tiny(),
        byte_tokenizer(),
        examples(),
        out,
        settings,
        LoraSettings(dropout=0.0),
        model_name="tiny",
    )
    return out


def tuned_model(adapter_dir):
    model = PeftModel.from_pretrained(build_tiny(), adapter_dir, is_trainable=True)
    return model, byte_tokenizer()


def test_recalibration_changes_only_lora_and_leaves_the_base_clean(adapter_dir, tmp_path):
    model, tokenizer = tuned_model(adapter_dir)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    base_hash = weights_hash(model)
    settings = RecalSettings(steps=5, calib_n=16, batch_size=4, lr=1e-2, loss="both")
    result = recalibrate(model, tokenizer, examples(16), NOISE, 0, settings)
    assert result.steps == 5 and len(result.losses) == 5
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("lora_" in name for name in changed)
    assert weights_hash(model) == base_hash  # the chip's noise is gone from the base
    # the tuned adapter is a stock PEFT adapter
    model.save_pretrained(tmp_path / "tuned")
    stock = PeftModel.from_pretrained(build_tiny(), tmp_path / "tuned")
    saved = load_file(tmp_path / "tuned" / "adapter_model.safetensors")
    name = next(iter(saved))
    loaded = dict(stock.named_parameters())[name.replace(".weight", ".default.weight")]
    assert torch.equal(loaded, saved[name])


def test_distillation_loss_is_zero_without_noise_and_positive_with_it(adapter_dir):
    settings = RecalSettings(steps=1, calib_n=8, batch_size=8, lr=0.0, loss="distill")
    model, tokenizer = tuned_model(adapter_dir)
    clean = recalibrate(model, tokenizer, examples(8), "none", 0, settings)
    noisy = recalibrate(model, tokenizer, examples(8), NOISE, 0, settings)
    assert clean.losses[0] == pytest.approx(0.0, abs=1e-6)
    assert noisy.losses[0] > 1e-4


def test_distillation_reduces_the_kl_on_the_chip(adapter_dir):
    model, tokenizer = tuned_model(adapter_dir)
    settings = RecalSettings(steps=12, calib_n=16, batch_size=8, lr=1e-2, loss="distill")
    result = recalibrate(model, tokenizer, examples(16), "gaussian:sigma=0.3", 1, settings)
    assert result.losses[-1] < 0.8 * result.losses[0], result.losses


def test_topk_kl_is_zero_at_equality_and_below_the_full_kl():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 50, generator=generator)
    student = teacher + 0.5 * torch.randn(2, 5, 50, generator=generator)
    mask = torch.ones(2, 5)
    targets = topk_targets(teacher, 8)
    assert kl_topk(teacher, targets, mask) == pytest.approx(0.0, abs=1e-6)
    assert kl_full(teacher, teacher, mask) == pytest.approx(0.0, abs=1e-6)
    coarse, full = kl_topk(student, targets, mask), kl_full(student, teacher, mask)
    assert 0 < coarse <= full + 1e-6
    # with every token kept, the coarse KL is the full one
    assert kl_topk(student, topk_targets(teacher, 50), mask) == pytest.approx(float(full), rel=1e-4)


def test_masked_positions_do_not_count():
    teacher = torch.randn(1, 4, 10)
    student = teacher.clone()
    student[0, 3] += 5.0  # differs only where the mask is 0
    mask = torch.tensor([[1, 1, 1, 0]])
    assert kl_full(student, teacher, mask) == pytest.approx(0.0, abs=1e-6)


def test_calibration_items_come_from_the_train_split(tmp_path):
    records = [{"prompt": f"q{i}", "options": [" a", " b"], "gold": i % 2} for i in range(200)]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(records))
    task = JsonTask(path)
    chosen = calibration_examples([task], 10)
    assert len(chosen) == 10
    test_prompts = {e.prompt for e in task.examples("test")}
    assert not test_prompts & {e.prompt for e in chosen}


def test_bf16_is_refused_on_a_cpu_without_bf16_units(monkeypatch):
    monkeypatch.setattr("halora.precision.cpu_bf16_units", lambda: None)
    with pytest.raises(UsageError, match="no bf16 matrix units"):
        check_precision("bf16", "cpu")
    monkeypatch.setattr("halora.precision.cpu_bf16_units", lambda: "amx_bf16")
    check_precision("bf16", "cpu")  # accepted where the units exist
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        check_precision("fp16", "cpu")


def test_train_refuses_bf16_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("halora.precision.cpu_bf16_units", lambda: None)
    tasks = tmp_path / "t.json"
    tasks.write_text(json.dumps([{"prompt": "1+1=", "answer": "2"}] * 20))
    code = main(["train", "--model", "tiny", "--tasks", f"json:{tasks}", "--steps", "2",
                 "--precision", "bf16", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bf16" in err[0]
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_recalibrate_command_writes_a_named_chip_adapter(adapter_dir, tmp_path, capsys):
    out = tmp_path / "tuned"
    args = ["recalibrate", "--model", "tiny", "--adapter", str(adapter_dir), "--noise", NOISE,
            "--chip-seed", "3", "--tasks", mc_tasks(tmp_path), "--steps", "3", "--calib-n", "8",
            "--batch-size", "4", "--evaluate", "4", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "accuracy on this chip" in capsys.readouterr().out
    record = json.loads((out / "halora.json").read_text())
    recal = record["recalibration"]
    assert recal["chip"] == {"noise": NOISE, "chip_seed": 3} and recal["steps"] == 3
    assert recal["labels_used"] is False and set(recal["evaluation"]) == {"items", "before", "after"}
    assert record["method"] == "lora"  # the source adapter's provenance is kept
    # a second run into the same folder is refused, and the folder is left as it was
    assert main(args) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_recalibrate_refuses_an_adapter_of_other_weights(adapter_dir, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for path in adapter_dir.iterdir():
        if path.is_file():
            (foreign / path.name).write_bytes(path.read_bytes())
    record = json.loads((foreign / "halora.json").read_text())
    record["base_model_sha256"] = "0" * 64
    (foreign / "halora.json").write_text(json.dumps(record))
    code = main(["recalibrate", "--model", "tiny", "--adapter", str(foreign), "--noise", NOISE,
                 "--tasks", mc_tasks(tmp_path), "--steps", "1", "--out", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "was trained on" in err[0]
    assert not (tmp_path / "x").exists()


def test_clean_view_shows_clean_weights_without_read_noise(tiny):
    model, _ = tiny
    layers = rram_layers(model)
    name, layer = next(iter(layers.items()))
    clean = layer.weight.detach().clone()
    x = torch.randn(3, layer.in_features)
    with program_chip(model, "gaussian:sigma=0.1+read:sigma=0.05", 0, store="device") as chip:
        programmed = layer.weight.detach().clone()
        assert not torch.equal(programmed, clean)
        with chip.clean_view():
            assert torch.equal(layer.weight, clean)
            assert torch.equal(layer(x), layer(x))  # read noise is off
        assert torch.equal(layer.weight, programmed)
        assert not torch.equal(layer(x), layer(x))  # and back on
    assert torch.equal(layer.weight, clean)


def test_clean_view_needs_the_device_store(tiny):
    model, _ = tiny
    with (
        program_chip(model, "gaussian:sigma=0.1", 0) as chip,
        pytest.raises(RuntimeError, match="device"),
        chip.clean_view(),
    ):
        pass


def test_recalibration_over_chips_scores_own_other_and_equal_compute(adapter_dir, tmp_path):
    from halora.evaluate import EvalSettings
    from halora.recal_sweep import RecalPlan, RecalRunner, run_recalibration
    from halora.tasks import load_tasks

    model, tokenizer = tuned_model(adapter_dir)
    model.eval()
    tasks = load_tasks(mc_tasks(tmp_path))
    evaluation = EvalSettings(items=6)
    plan = RecalPlan(
        (("lora", str(adapter_dir)),), (NOISE,), (0, 1), RecalSettings(steps=2, calib_n=8), evaluation
    )
    runner = RecalRunner(model, tokenizer, tasks, evaluation, tmp_path / "recal")
    records = run_recalibration(runner, plan, log=lambda _: None)
    methods = {(r["method"], r["seed"], r.get("tuned_on")) for r in records if r["noise"] != "clean"}
    assert ("lora+recal", 0, 0) in methods and ("lora+recal", 1, 1) in methods
    assert ("lora+recal@other", 1, 0) in methods and ("lora+recal@other", 0, 1) in methods
    assert {("lora", 0, None), ("lora+steps", 1, None)} <= methods
    assert {r["method"] for r in records if r["noise"] == "clean"} == {"lora", "lora+steps"}
    # a second run finds everything cached: nothing is tuned again
    tuned = []
    again = RecalRunner(model, tokenizer, tasks, evaluation, tmp_path / "recal")
    assert len(run_recalibration(again, plan, log=tuned.append)) == len(records)
    assert not [line for line in tuned if "recalibrated" in line]
