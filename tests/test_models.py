import json

import pytest
import torch

from halora.cli import main
from halora.errors import UsageError
from halora.models import build_tiny, byte_tokenizer, load_model


def test_tiny_is_deterministic_llama():
    first, second = build_tiny(), build_tiny()
    assert first.config.model_type == "llama"
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = byte_tokenizer()
    text = "Question: 3 + 4 = ?\nAnswer: 7 — héllo"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None


def test_tiny_forward_and_dtype(tiny):
    model, tokenizer = tiny
    batch = tokenizer(["hello"], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape[-1] == len(tokenizer)
    model_bf16, _ = load_model("tiny", dtype="bfloat16")
    assert next(model_bf16.parameters()).dtype == torch.bfloat16


def test_local_folder_round_trip(tmp_path, tiny):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(str(tmp_path))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded_tokenizer("abc").input_ids == tokenizer("abc").input_ids


@pytest.mark.parametrize(
    "bad, message",
    [
        ("/no/such/folder", "neither a known name"),
        ("smollm3", "neither a known name"),
    ],
)
def test_bad_model_names(bad, message):
    with pytest.raises(UsageError, match=message):
        load_model(bad)


def test_folder_without_config(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        load_model(str(tmp_path))


def test_bad_dtype():
    with pytest.raises(UsageError, match="unknown dtype"):
        load_model("tiny", dtype="float8")


def test_cli_bad_model_is_one_line_exit_2(capsys):
    assert main(["place", "--model", "/no/such/folder"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a known name" in err[0]


def test_cli_place_tiny_json(capsys):
    assert main(["place", "--model", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"]["sram"] > 0 and report["params"]["rram"] > 0
    assert report["total_params"] == sum(report["params"].values())


@pytest.mark.slow
def test_smollm2_loads_from_cache(smollm2):
    model, tokenizer = smollm2
    assert model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.decode(tokenizer("The sky is blue.").input_ids).endswith("The sky is blue.")
