"""The twin correction (halora.twin): a closed-form low-rank SRAM branch per RRAM layer."""

import json

import pytest
import torch
from peft import PeftModel
from test_commands import mc_tasks

from halora.cim import program_chip
from halora.cli import main
from halora.errors import UsageError
from halora.lora import LoraSettings, attach_lora
from halora.models import build_tiny, byte_tokenizer
from halora.recalibrate import RecalSettings, recalibrate
from halora.sidecar import weights_hash
from halora.tasks import Example
from halora.twin import correction, embed_state, input_moments, widen, write_correction

NOISE = "gaussian:sigma=0.05"


def source_model(seed: int = 0):
    """A tiny Llama with a rank-2 adapter whose B is drawn (so it changes the outputs)."""
    torch.manual_seed(seed)
    model = attach_lora(build_tiny(), LoraSettings(rank=2, alpha=4.0, dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model.eval()


def batch(seed: int = 1, rows: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (rows, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"]).logits


def test_a_widened_adapter_with_zero_correction_is_the_source_and_loads_in_stock_peft(tmp_path):
    model = source_model()
    inputs = batch()
    reference = logits(model, inputs)
    wide = widen(model, 3)
    assert torch.allclose(logits(wide, inputs), reference, atol=1e-4)
    # every RRAM layer got 3 rows; the task LoRA's layers keep their 2 in front, scaling 1
    ranks = {name: module.r["default"] for name, module in _lora_layers(wide).items()}
    assert set(ranks.values()) == {3, 5} and all(
        module.scaling["default"] == 1.0 for module in _lora_layers(wide).values()
    )
    wide.save_pretrained(tmp_path / "wide")
    stock = PeftModel.from_pretrained(build_tiny(), tmp_path / "wide").eval()
    assert torch.allclose(logits(stock, inputs), reference, atol=1e-4)


def test_another_source_state_swapped_into_the_widened_layout_gives_that_source():
    from peft import get_peft_model_state_dict

    other = source_model(seed=5)
    inputs = batch()
    expected = logits(other, inputs)
    wide = widen(source_model(), 2)
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(wide, embed_state(wide, get_peft_model_state_dict(other)))
    assert torch.allclose(logits(wide, inputs), expected, atol=1e-4)


def test_a_full_rank_correction_undoes_programming_on_the_calibration_inputs():
    model = source_model()
    inputs = batch(rows=8)  # 128 tokens: more than the tiny model's widest input (64)
    clean = logits(model, inputs)
    wide = widen(model, 64)
    moments = input_moments(wide, [inputs])
    with program_chip(wide, NOISE, 0) as chip:
        noisy = logits(wide, inputs)
        removed = write_correction(wide, chip, moments)
        corrected = logits(wide, inputs)
    assert (noisy - clean).abs().max() > 0.1
    assert torch.allclose(corrected, clean, atol=1e-3)
    assert min(removed.values()) > 0.999


def test_the_correction_removes_the_share_it_reports_and_more_with_more_rank():
    torch.manual_seed(0)
    scales = torch.logspace(0, -2, 32)  # outlier channels, as in LLM activations
    x = torch.randn(4096, 32) * scales
    error = torch.randn(24, 32) * 0.1
    values, vectors = torch.linalg.eigh(x.T @ x / len(x))
    before = (x @ error.T).pow(2).sum()
    shares = []
    for rank in (1, 4, 8):
        a, b, share = correction(error, (values, vectors), rank)
        after = (x @ (error + b @ a).T).pow(2).sum()
        assert float(1 - after / before) == pytest.approx(share, abs=1e-3)
        shares.append(share)
    assert shares == sorted(shares) and shares[0] > 1 / 32  # the outlier direction first


def test_twin_recalibration_changes_only_lora_and_leaves_the_base_clean():
    model = widen(source_model(), 4)
    base_hash = weights_hash(model)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    examples = [
        Example(task="add", prompt=f"{a}+{b}=", answer=f"{a + b}") for a in range(4) for b in range(4)
    ]
    settings = RecalSettings(steps=0, twin_rank=4, calib_n=16, batch_size=4, loss="distill", answer_tokens=0)
    result = recalibrate(model, byte_tokenizer(), examples, NOISE, 0, settings)
    assert result.steps == 0 and 0 < result.removed <= 1
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(before[name], tensor)}
    assert changed and all("lora_" in name for name in changed)
    assert weights_hash(model) == base_hash


def test_twin_settings_are_refused_where_they_cannot_work():
    with pytest.raises(UsageError, match="does nothing"):
        RecalSettings(steps=0, twin_rank=0)
    narrow = source_model()
    examples = [Example(task="add", prompt="1+1=", answer="2")]
    with pytest.raises(UsageError, match="widened"):
        recalibrate(
            narrow, byte_tokenizer(), examples, NOISE, 0, RecalSettings(steps=0, twin_rank=2, calib_n=1)
        )
    with pytest.raises(UsageError, match="rank >= 1"):
        widen(narrow, 0)


def test_recalibrate_command_with_a_twin_rank_writes_a_stock_peft_adapter(tmp_path, capsys):
    source = tmp_path / "source"
    source_model().save_pretrained(source)
    out = tmp_path / "tuned"
    args = ["recalibrate", "--model", "tiny", "--adapter", str(source), "--noise", NOISE, "--chip-seed", "1",
            "--tasks", mc_tasks(tmp_path), "--steps", "0", "--twin-rank", "4", "--calib-n", "8",
            "--batch-size", "4", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "twin correction rank 4" in capsys.readouterr().out
    record = json.loads((out / "halora.json").read_text())["recalibration"]
    assert record["settings"]["twin_rank"] == 4 and 0 < record["twin_error_removed"] <= 1
    stock = PeftModel.from_pretrained(build_tiny(), out)
    assert {module.r["default"] for module in _lora_layers(stock).values()} == {4, 6}


def _lora_layers(model):
    from halora.twin import lora_modules

    return lora_modules(model)
