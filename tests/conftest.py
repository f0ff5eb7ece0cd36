"""Shared fixtures: the tiny random Llama (fast) and SmolLM2-135M (tests marked slow)."""

from __future__ import annotations

import pytest
import torch

from halora.models import SMOLLM2, load_model


@pytest.fixture
def tiny():
    """(model, tokenizer): a fresh tiny random Llama for each test, so tests may change it."""
    return load_model("tiny")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): the embedded SmolLM2-135M, loaded once; tests must restore it."""
    torch.manual_seed(0)
    return load_model(SMOLLM2)
