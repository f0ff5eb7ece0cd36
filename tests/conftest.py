"""Shared fixtures: the tiny random Llama (fast) and SmolLM2-135M (tests marked slow)."""

from __future__ import annotations

import json

import pytest
import torch

from halora.lora import LoraSettings, attach_lora
from halora.models import SMOLLM2, build_tiny, load_model


@pytest.fixture
def tiny():
    """(model, tokenizer): a fresh tiny random Llama for each test, so tests may change it."""
    return load_model("tiny")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): the embedded SmolLM2-135M, loaded once; tests must restore it."""
    torch.manual_seed(0)
    return load_model(SMOLLM2)


@pytest.fixture
def two_adapters(tmp_path):
    """Two random tiny-Llama adapters (B drawn, so they differ from the base) and a small
    multiple-choice task: (folder, adapter folders, task spec)."""
    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = attach_lora(build_tiny(), LoraSettings(rank=2))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.5)
        model.save_pretrained(tmp_path / f"a{seed}")
        folders.append(str(tmp_path / f"a{seed}"))
    records = [
        {"prompt": f"{a} and {b}", "options": [" yes", " no"], "gold": (a + b) % 2, "split": "test"}
        for a in range(3)
        for b in range(3)
    ]
    (tmp_path / "pairs.json").write_text(json.dumps(records))
    return tmp_path, folders, f"json:{tmp_path / 'pairs.json'}"
