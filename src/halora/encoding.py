"""Prompt + answer to token ids, one way for training and evaluation alike.

The prompt and the answer are tokenized apart and joined, so the answer's tokens are
the same whether the model is trained on them or scored on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    answer_start: int  # index of the first answer token in input_ids


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int, add_eos: bool = True
) -> Encoded:
    """Token ids of prompt + answer (+ eos); a long prompt loses its start, never the answer."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
    if add_eos and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    answer_ids = answer_ids[:max_length]
    room = max(max_length - len(answer_ids), 0)
    prompt_ids = prompt_ids[len(prompt_ids) - room :] if room else []
    return Encoded(prompt_ids + answer_ids, len(prompt_ids))
