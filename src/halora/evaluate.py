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

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

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
        return {
            "task": self.task,
            "scorer": self.scorer,
            "accuracy": self.accuracy,
            "acc_norm": self.acc_norm,
            "n": self.n,
            "chance": self.chance,
            "items": "".join(str(i) for i in self.items),
            "tokens": self.tokens,
        }


def scorer_for(examples: list[Example], requested: str) -> str:
    has_options = all(example.options for example in examples)
    if requested == "loglik" and not has_options:
        raise UsageError("--scorer loglik needs tasks with answer options; this one has none")
    if requested == "auto":
        return "loglik" if has_options else "generate"
    return requested


def evaluate_task(
    model,
    tokenizer,
    task: Task,
    settings: EvalSettings = EvalSettings(),
    examples: list[Example] | None = None,
) -> TaskScore:
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
        scores = logliks[start : start + len(example.options)]
        start += len(example.options)
        per_byte = [s / max(len(o.encode()), 1) for s, o in zip(scores, example.options, strict=True)]
        correct.append(int(_argmax(scores) == example.gold))
        correct_norm.append(int(_argmax(per_byte) == example.gold))
    n = len(examples)
    return TaskScore(
        task.name, "loglik", sum(correct) / n, n, task.chance, sum(correct_norm) / n, correct, tokens
    )


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


@torch.no_grad()
def option_logliks(
    model, tokenizer, pairs: list[tuple[str, str]], settings: EvalSettings
) -> tuple[list[float], int]:
    """Summed log-probability of each option's tokens after its prompt; tokens processed.

    A prompt is run once and its key/value cache is shared by all of its options (a
    multiple-choice item has 2-5 options and a prompt ten times longer than an option),
    and only the positions that predict option tokens get logits.
    """
    prompts: dict[str, list[int]] = {}
    for index, (prompt, _) in enumerate(pairs):
        prompts.setdefault(prompt, []).append(index)
    groups = sorted(prompts.items(), key=lambda item: -len(item[0]))
    results = [0.0] * len(pairs)
    tokens = 0
    batches = range(0, len(groups), settings.batch_size)
    for start in tqdm(batches, desc="loglik", disable=not settings.progress, leave=False):
        batch = groups[start : start + settings.batch_size]
        options = [
            [tokenizer(pairs[i][1], add_special_tokens=False).input_ids for i in indices]
            for _, indices in batch
        ]
        longest = max(len(ids) for per_prompt in options for ids in per_prompt)
        room = max(settings.max_length - longest, 1)
        prompt_ids = [tokenizer(prompt, add_special_tokens=True).input_ids[-room:] for prompt, _ in batch]
        scores, used = _score_options(model, tokenizer, prompt_ids, options)
        tokens += used
        for (_, indices), per_prompt in zip(batch, scores, strict=True):
            for index, score in zip(indices, per_prompt, strict=True):
                results[index] = score
    return results, tokens


def _score_options(
    model, tokenizer, prompt_ids: list[list[int]], options: list[list[list[int]]]
) -> tuple[list[list[float]], int]:
    device = _device_of(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = _pad(prompt_ids, pad, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        logits_to_keep=1,
    )
    first = F.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()  # predicts each option's 1st token
    owners = [row for row, per_prompt in enumerate(options) for _ in per_prompt]
    flat = [ids_ for per_prompt in options for ids_ in per_prompt]
    scores = [
        first[owner, option[0]].item() if option else 0.0 for owner, option in zip(owners, flat, strict=True)
    ]
    tokens = int(mask.sum()) + sum(len(option) for option in flat)
    if max(len(option) for option in flat) > 1:  # the rest of each option, on the shared cache
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_select_indices(torch.tensor(owners, device=device))
        rest, rest_mask = _pad([option[:-1] for option in flat], pad, left=False)
        full_mask = torch.cat([mask[owners], rest_mask], dim=1)
        rest_positions = mask.sum(-1)[owners, None] + torch.arange(rest.shape[1])
        logits = model(
            input_ids=rest.to(device),
            attention_mask=full_mask.to(device),
            position_ids=rest_positions.to(device),
            **{_cache_keyword(model): cache},
        ).logits
        logprobs = F.log_softmax(logits.float(), dim=-1).cpu()
        for row, option in enumerate(flat):
            for step, token in enumerate(option[1:]):
                scores[row] += logprobs[row, step, token].item()
    per_prompt, cursor = [], 0
    for group in options:
        per_prompt.append(scores[cursor : cursor + len(group)])
        cursor += len(group)
    return per_prompt, tokens


def _cache_keyword(model) -> str:
    """transformers 5 names the key/value cache argument `cache`; earlier releases
    `past_key_values` (still accepted, with a deprecation warning)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _pad(rows: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(max(len(row) for row in rows), 1)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[index, span] = torch.tensor(row, dtype=torch.long)
        mask[index, span] = 1
    return ids, mask


def _score_generations(model, tokenizer, task, examples, settings) -> TaskScore:
    completions, tokens = generate(
        model, tokenizer, [e.prompt for e in examples], task.max_new_tokens, settings
    )
    correct = [
        int(task.score(example, text) >= 1.0) for example, text in zip(examples, completions, strict=True)
    ]
    n = len(examples)
    return TaskScore(task.name, "generate", sum(correct) / n, n, task.chance, None, correct, tokens)


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, settings: EvalSettings
) -> tuple[list[str], int]:
    """Greedy completions (new text only), batched with left padding."""
    device = _device_of(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last real token
    texts, tokens = [""] * len(prompts), 0
    try:
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        batches = range(0, len(order), settings.batch_size)
        for start in tqdm(batches, desc="generate", disable=not settings.progress, leave=False):
            chunk = [prompts[i] for i in order[start : start + settings.batch_size]]
            batch = tokenizer(
                chunk, return_tensors="pt", padding=True, truncation=True, max_length=settings.max_length
            ).to(device)
            generated = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            new = generated[:, batch["input_ids"].shape[1] :]
            tokens += int(batch["attention_mask"].sum()) + new.numel()
            for row, text in enumerate(tokenizer.batch_decode(new, skip_special_tokens=True)):
                texts[order[start + row]] = text
    finally:
        tokenizer.padding_side = side
    return texts, tokens


def _device_of(model) -> torch.device:
    return next(model.parameters()).device
