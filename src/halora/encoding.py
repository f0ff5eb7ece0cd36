"""Prompt + answer to token ids, one way for training and evaluation alike.

The prompt and the answer are tokenized apart and joined, so the answer's tokens are
the same whether the model is trained on them or scored on them. The prompt is tokenized
with the tokenizer's special tokens (a beginning-of-sequence token where the model uses
one), the answer without. When they do not fit, the prompt loses its start, never the
answer: the end of a prompt, next to the answer, is what the answer depends on most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    answer_start: int  # index of the first answer token in input_ids


@dataclass(frozen=True)
class EncodedChoices:
    """A prompt and its options, to score every option after the one shared prompt."""

    prompt_ids: list[int]
    option_ids: list[list[int]]  # one list per option (+ eos), never cut


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, room: int) -> list[int]:
    """The prompt's token ids (with special tokens), cut from the left to at most `room`."""
    ids = tokenizer(prompt, add_special_tokens=True).input_ids
    return ids[max(len(ids) - room, 0) :] if room > 0 else []


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str, add_eos: bool) -> list[int]:
    """The answer's token ids (no special tokens), then the end-of-sequence token if `add_eos`."""
    ids = tokenizer(answer, add_special_tokens=False).input_ids
    if add_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int, add_eos: bool = True
) -> Encoded:
    """Token ids of prompt + answer (+ eos); a long prompt loses its start, never the answer
    (an answer longer than `max_length` alone is cut to it)."""
    answer_part = answer_ids(tokenizer, answer, add_eos)[:max_length]
    prompt_part = prompt_ids(tokenizer, prompt, max_length - len(answer_part))
    return Encoded(prompt_part + answer_part, len(prompt_part))


def labelled_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    answer: str,
    max_length: int,
    train_on_inputs: bool = False,
) -> tuple[list[int], list[int]]:
    """`encode_pair`'s token ids and their labels: -100 on the prompt (no loss there)
    unless `train_on_inputs`."""
    encoded = encode_pair(tokenizer, prompt, answer, max_length)
    labels = list(encoded.input_ids)
    if not train_on_inputs:
        labels[: encoded.answer_start] = [-100] * encoded.answer_start
    return encoded.input_ids, labels


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # any id will do where the tokenizer has none: padded positions are masked out
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def pad_rows(rows: Sequence[Sequence[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids as one [rows, width] tensor padded with `pad` on the left or the
    right, and the attention mask (1 on real tokens)."""
    width = max(max(len(row) for row in rows), 1)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[index, span] = torch.tensor(row, dtype=torch.long)
        mask[index, span] = 1
    return ids, mask


def encode_choices(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    options: Sequence[str],
    max_length: int,
    add_eos: bool = True,
) -> EncodedChoices:
    """Token ids of a prompt and of each of its options (+ eos, as `encode_pair` ends an
    answer: scoring an option then scores the token ids training fits, and an option that
    is a token prefix of another can lose to it). The prompt keeps the end that fits with
    the longest option (+ eos), and at least one token: the first option token is predicted
    from it."""
    option_ids = [answer_ids(tokenizer, option, add_eos) for option in options]
    longest = max((len(ids) for ids in option_ids), default=0)
    return EncodedChoices(prompt_ids(tokenizer, prompt, max(max_length - longest, 1)), option_ids)
