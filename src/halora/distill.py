"""Distillation from the clean model: the KL between next-token distributions.

A noisy chip's harm is a change of the model's next-token distribution. Matching it to the
clean model's, position by position, gives a dense signal on every token (a label only
gives one on the answer's tokens), and needs no labels at all: any prompt of the task will
do. Two forms:

- `kl_full`: KL(p_clean ‖ p_chip) over the whole vocabulary, when both sets of logits are at
  hand (training: the clean forward and the noisy forward of the same batch);
- `kl_topk`: the same KL on a coarse vocabulary of the teacher's top-k tokens plus one
  bucket for all the rest, from targets stored once (`topk_targets`); a per-position top-k
  costs k numbers instead of a 49k-entry distribution. By the data-processing inequality it
  never exceeds the full KL, and like it, it is 0 exactly when the student reproduces the
  teacher's probabilities on those k tokens (and so on the rest bucket).

Both average over the positions where `mask` is 1 and compute in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TopK:
    """A teacher's top-k log-probabilities and their token ids at each position."""

    logprobs: torch.Tensor  # [..., k], float32
    indices: torch.Tensor  # [..., k], int64


def topk_targets(teacher_logits: torch.Tensor, k: int) -> TopK:
    logprobs = F.log_softmax(teacher_logits.float(), dim=-1)
    values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return TopK(values, indices)


def kl_full(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(teacher ‖ student) over the vocabulary."""
    student = F.log_softmax(student_logits.float(), dim=-1)
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    per_position = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    return _masked_mean(per_position, mask)


def kl_topk(student_logits: torch.Tensor, teacher: TopK, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(teacher ‖ student) on top-k tokens + one rest bucket."""
    student = F.log_softmax(student_logits.float(), dim=-1).gather(-1, teacher.indices)
    teacher_p = teacher.logprobs.exp()
    on_topk = (teacher_p * (teacher.logprobs - student)).sum(-1)
    teacher_rest = (1 - teacher_p.sum(-1)).clamp(min=0)
    # log(1 - sum p): log1p keeps the precision where the top-k hold almost all the mass
    student_rest = torch.log1p(-student.exp().sum(-1).clamp(max=1 - 1e-7))
    on_rest = torch.special.xlogy(teacher_rest, teacher_rest) - teacher_rest * student_rest
    return _masked_mean(on_topk + on_rest, mask)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1)
