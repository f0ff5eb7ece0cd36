"""Scoring a model (clean or programmed, with or without an adapter) on tasks.

Two scorers, as lm-evaluation-harness defines them:
- log-likelihood multiple choice, where a task has options: the option whose tokens get
  the highest summed log-probability after the prompt wins (`acc`), or the highest per
  byte of option text (`acc_norm`). It degrades gradually under noise;
- greedy generation with the task's answer extraction, where it has none (or when asked):
  exact answers, which collapse once the model's first token goes wrong.
Both are batched and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from halora.encoding import encode_pair
from halora.errors import UsageError
from halora.tasks import Example, Task

SCORERS = ("auto", "loglik", "generate")


@dataclass(frozen=True)
class EvalSettings:
    """How to score. Test items come from the task's test split."""

    n: int | None = 100  # items per task (None: the whole split)
    batch_size: int = 16
    max_length: int = 256  # prompt + option tokens; a long prompt loses its start
    scorer: str = "auto"  # auto: loglik where a task has options, else generate
    split: str = "test"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise UsageError(f"unknown scorer {self.scorer!r}: use one of {', '.join(SCORERS)}")
        if self.batch_size < 1 or (self.n is not None and self.n < 1):
            raise UsageError("evaluation batch size and items per task must be >= 1")


@dataclass
class TaskScore:
    task: str
    scorer: str
    accuracy: float
    n: int
    chance: float
    acc_norm: float | None = None
    items: list[int] = field(default_factory=list)  # 1/0 per item: bootstrap CIs need them
    tokens: int = 0  # tokens the model processed (for throughput)

    def to_json(self) -> dict:
        return {"task": self.task, "scorer": self.scorer, "accuracy": self.accuracy,
                "acc_norm": self.acc_norm, "n": self.n, "chance": self.chance,
                "items": "".join(str(i) for i in self.items), "tokens": self.tokens}


def scorer_for(examples: list[Example], requested: str) -> str:
    has_options = all(example.options for example in examples)
    if requested == "loglik" and not has_options:
        raise UsageError("--scorer loglik needs tasks with answer options; this one has none")
    if requested == "auto":
        return "loglik" if has_options else "generate"
    return requested


def evaluate_task(model, tokenizer, task: Task, settings: EvalSettings = EvalSettings(),
                  examples: list[Example] | None = None) -> TaskScore:
    """Accuracy of `model` on `task`; pass `examples` to reuse a loaded split."""
    examples = examples if examples is not None else task.examples(settings.split, settings.n)
    if not examples:
        raise UsageError(f"task {task.name} has no {settings.split} items")
    scorer = scorer_for(examples, settings.scorer)
    was_training = model.training
    model.eval()  # dropout off: scoring is deterministic
    try:
        if scorer == "loglik":
            return _score_choices(model, tokenizer, task, examples, settings)
        return _score_generations(model, tokenizer, task, examples, settings)
    finally:
        model.train(was_training)


def _score_choices(model, tokenizer, task, examples, settings) -> TaskScore:
    pairs = [(example.prompt, option) for example in examples for option in example.options]
    logliks, tokens = option_logliks(model, tokenizer, pairs, settings)
    correct, correct_norm, start = [], [], 0
    for example in examples:
        scores = logliks[start:start + len(example.options)]
        start += len(example.options)
        per_byte = [s / max(len(o.encode()), 1) for s, o in zip(scores, example.options, strict=True)]
        correct.append(int(_argmax(scores) == example.gold))
        correct_norm.append(int(_argmax(per_byte) == example.gold))
    n = len(examples)
    return TaskScore(task.name, "loglik", sum(correct) / n, n, task.chance,
                     sum(correct_norm) / n, correct, tokens)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


@torch.no_grad()
def option_logliks(model, tokenizer, pairs: list[tuple[str, str]],
                   settings: EvalSettings) -> tuple[list[float], int]:
    """Summed log-probability of each option's tokens after its prompt; tokens processed.

    Rows are padded on the left, so every option ends at the last position and only the
    last few positions need logits: the vocabulary projection and log-softmax, which would
    otherwise dominate a small model's forward pass, run on those positions alone.
    """
    encoded = [encode_pair(tokenizer, prompt, option, settings.max_length, add_eos=False)
               for prompt, option in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    results = [0.0] * len(encoded)
    device = _device_of(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = 0
    batches = range(0, len(order), settings.batch_size)
    for start in tqdm(batches, desc="loglik", disable=not settings.progress, leave=False):
        batch = [encoded[i] for i in order[start:start + settings.batch_size]]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            ids[row, width - len(item.input_ids):] = torch.tensor(item.input_ids)
            mask[row, width - len(item.input_ids):] = 1
        tokens += int(mask.sum())
        answer_lengths = [len(e.input_ids) - max(e.answer_start, 1) for e in batch]
        keep = max(answer_lengths) + 1  # logits at t predict token t + 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as if each row were unpadded
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device), logits_to_keep=keep).logits
        logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts the last keep-1 tokens
        targets = ids[:, width - keep + 1:].to(device)
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
        for row, length in enumerate(answer_lengths):
            results[order[start + row]] = float(picked[row, picked.shape[1] - length:].sum())
    return results, tokens


def _score_generations(model, tokenizer, task, examples, settings) -> TaskScore:
    completions, tokens = generate(model, tokenizer, [e.prompt for e in examples],
                                   task.max_new_tokens, settings)
    correct = [int(task.score(example, text) >= 1.0) for example, text in
               zip(examples, completions, strict=True)]
    n = len(examples)
    return TaskScore(task.name, "generate", sum(correct) / n, n, task.chance, None, correct, tokens)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int,
             settings: EvalSettings) -> tuple[list[str], int]:
    """Greedy completions (new text only), batched with left padding."""
    device = _device_of(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last real token
    outputs, tokens = [], 0
    try:
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        texts = [""] * len(prompts)
        batches = range(0, len(order), settings.batch_size)
        for start in tqdm(batches, desc="generate", disable=not settings.progress, leave=False):
            chunk = [prompts[i] for i in order[start:start + settings.batch_size]]
            batch = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                              max_length=settings.max_length).to(device)
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
            new = generated[:, batch["input_ids"].shape[1]:]
            tokens += int(batch["attention_mask"].sum()) + new.numel()
            for row, text in enumerate(tokenizer.batch_decode(new, skip_special_tokens=True)):
                texts[order[start + row]] = text
        outputs = texts
    finally:
        tokenizer.padding_side = side
    return outputs, tokens


def _device_of(model) -> torch.device:
    return next(model.parameters()).device
