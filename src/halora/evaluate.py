"""Scoring a model (clean or programmed, with or without an adapter) on tasks.

Two scorers, as lm-evaluation-harness defines them:
- log-likelihood multiple choice, where a task has options. Each option is scored as
  the summed log-probability of its tokens after the prompt *followed by the tokenizer's
  end-of-sequence token*, log P(option + EOS | prompt): the same token ids training fits
  (encoding.encode_pair ends every answer with EOS). Without the end marker an option
  whose tokens are a prefix of another's could never lose to it (log P(" 1") >
  log P(" 11") whatever the model, as SmolLM2 splits digits; " mother" always beats
  " mother-in-law"); with it, " 1" must also say "and nothing more". Two accuracies:
  `acc`, the option with the highest summed log-probability (EOS included) wins, and
  `acc_norm`, the highest summed log-probability (EOS included) divided by the option
  text's length in UTF-8 bytes (lm-evaluation-harness's acc_norm; the harness divides by
  len() of the string, the same for ASCII options). Both keep their per-item 1/0 verdicts
  (`items`, `items_norm`) for bootstrap intervals. A tokenizer without an EOS token scores
  the options alone. Degrades gradually under noise;
- greedy generation with the task's answer extraction, where it has none (or when asked):
  exact answers, which collapse once the model's first token goes wrong.
Both are batched and deterministic, and both take their token ids from halora.encoding,
as training does: the prompt with its special tokens, a long prompt cut from its start
(prompt + option + EOS fit `max_length`, as prompt + answer + EOS do in training).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from halora.encoding import encode_choices, pad_id, pad_rows, prompt_ids
from halora.errors import UsageError
from halora.settings import check, setting
from halora.tasks import Example, Task

SCORERS = ("auto", "loglik", "generate")


@dataclass(frozen=True)
class EvalSettings:
    """How to score. Items come from the task's test split unless `split` says val."""

    WHAT: ClassVar[str] = "evaluation setting"

    items: int | None = setting(
        100, "evaluation items per task (none: the whole split)", min=1, aliases=("n", "test_n", "limit")
    )
    eval_batch_size: int = setting(16, "items scored per forward pass", min=1, aliases=("batch_size",))
    max_length: int = setting(
        256, "tokens of prompt + longest option (generation: prompt); a long prompt loses its start", min=1
    )
    scorer: str = setting("auto", "auto: loglik where a task has options, else generate", choices=SCORERS)
    split: str = setting("test", "the split scored (val for selection)", choices=("test", "val"))
    progress: bool = setting(False, "show a progress bar", flag=False)

    def __post_init__(self) -> None:
        check(self)


@dataclass
class TaskScore:
    """`accuracy` is acc (loglik: summed log-probability of option + EOS) or the generation
    accuracy; `acc_norm` (loglik only) divides that sum by the option's byte length."""

    task: str
    scorer: str
    accuracy: float
    n: int
    chance: float
    acc_norm: float | None = None
    items: list[int] = field(default_factory=list)  # 1/0 per item for `accuracy`: bootstrap CIs
    items_norm: list[int] | None = None  # 1/0 per item for `acc_norm` (loglik only)
    tokens: int = 0  # tokens the model read (for throughput)

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "scorer": self.scorer,
            "accuracy": self.accuracy,
            "acc_norm": self.acc_norm,
            "n": self.n,
            "chance": self.chance,
            "items": _bits(self.items),
            "items_norm": None if self.items_norm is None else _bits(self.items_norm),
            "tokens": self.tokens,
        }


def _bits(items: list[int]) -> str:
    return "".join(str(i) for i in items)


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
    examples = examples if examples is not None else task.examples(settings.split, settings.items)
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
        correct.append(int(_argmax(scores) == example.gold))
        correct_norm.append(int(_argmax(per_byte(scores, example.options)) == example.gold))
    n = len(examples)
    return TaskScore(
        task.name,
        "loglik",
        accuracy=sum(correct) / n,
        n=n,
        chance=task.chance,
        acc_norm=sum(correct_norm) / n,
        items=correct,
        items_norm=correct_norm,
        tokens=tokens,
    )


def per_byte(scores: list[float], options: list[str]) -> list[float]:
    """acc_norm's scores: each option's log-likelihood over its text's length in UTF-8 bytes."""
    return [score / max(len(option.encode()), 1) for score, option in zip(scores, options, strict=True)]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal scores


def option_logliks(
    model, tokenizer, pairs: list[tuple[str, str]], settings: EvalSettings, eos: bool = True
) -> tuple[list[float], int]:
    """Summed log-probability of each option's tokens, then of the end-of-sequence token
    (unless `eos` is false, or the tokenizer has none), after its prompt; tokens read.
    `option_token_logprobs` has the terms of each sum."""
    per_token, tokens = option_token_logprobs(model, tokenizer, pairs, settings, eos)
    return [sum(terms) for terms in per_token], tokens


@torch.no_grad()
def option_token_logprobs(
    model, tokenizer, pairs: list[tuple[str, str]], settings: EvalSettings, eos: bool = True
) -> tuple[list[list[float]], int]:
    """Log-probability of each token of each option after its prompt, the end-of-sequence
    token last when `eos` (and the tokenizer has one); tokens the model read.

    A prompt is run once and its key/value cache is shared by all of its options (a
    multiple-choice item has 2-5 options and a prompt ten times longer than an option),
    and only the positions that predict option tokens get logits. A prompt too long for
    `settings.max_length` with its longest option (+ EOS) keeps its end.
    """
    prompts: dict[str, list[int]] = {}  # prompt text -> indices of its pairs
    for index, (prompt, _) in enumerate(pairs):
        prompts.setdefault(prompt, []).append(index)
    groups = sorted(prompts.items(), key=lambda item: -len(item[0]))
    results: list[list[float]] = [[] for _ in pairs]
    tokens = 0
    batches = range(0, len(groups), settings.eval_batch_size)
    for start in tqdm(batches, desc="loglik", disable=not settings.progress, leave=False):
        batch = groups[start : start + settings.eval_batch_size]
        encoded = [
            encode_choices(tokenizer, prompt, [pairs[i][1] for i in indices], settings.max_length, eos)
            for prompt, indices in batch
        ]
        scores, used = _score_options(
            model, tokenizer, [e.prompt_ids for e in encoded], [e.option_ids for e in encoded]
        )
        tokens += used
        for (_, indices), per_prompt in zip(batch, scores, strict=True):
            for index, terms in zip(indices, per_prompt, strict=True):
                results[index] = terms
    return results, tokens


def _score_options(
    model, tokenizer, prompt_ids: list[list[int]], options: list[list[list[int]]]
) -> tuple[list[list[list[float]]], int]:
    """Per prompt, per option, the log-probability of each option token; tokens read (each
    prompt once, each option but its last token, which is only predicted)."""
    device = _device_of(model)
    pad = pad_id(tokenizer)
    ids, mask = pad_rows(prompt_ids, pad, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        logits_to_keep=1,
    )
    owners = [row for row, per_prompt in enumerate(options) for _ in per_prompt]
    flat = [ids_ for per_prompt in options for ids_ in per_prompt]
    # the last prompt position predicts each option's first token
    firsts = _token_logprobs(
        out.logits[owners, -1:], torch.tensor([[option[0] if option else 0] for option in flat])
    )
    terms = [[row[0]] if option else [] for row, option in zip(firsts, flat, strict=True)]
    tokens = int(mask.sum()) + sum(max(len(option) - 1, 0) for option in flat)
    if max(len(option) for option in flat) > 1:  # the rest of each option, on the shared cache
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_select_indices(torch.tensor(owners, device=device))
        rest, rest_mask = pad_rows([option[:-1] for option in flat], pad, left=False)
        targets, _ = pad_rows([option[1:] for option in flat], 0, left=False)
        full_mask = torch.cat([mask[owners], rest_mask], dim=1)
        rest_positions = mask.sum(-1)[owners, None] + torch.arange(rest.shape[1])
        logits = model(
            input_ids=rest.to(device),
            attention_mask=full_mask.to(device),
            position_ids=rest_positions.to(device),
            **{_cache_keyword(model): cache},
        ).logits
        for row, (option, picked) in enumerate(zip(flat, _token_logprobs(logits, targets), strict=True)):
            terms[row] += picked[: len(option) - 1]
    per_prompt, cursor = [], 0
    for group in options:
        per_prompt.append(terms[cursor : cursor + len(group)])
        cursor += len(group)
    return per_prompt, tokens


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> list[list[float]]:
    """log_softmax(logits)[..., target] per row and position, without the log_softmax tensor."""
    logits = logits.float()
    picked = logits.gather(-1, targets.to(logits.device)[..., None])[..., 0]
    return (picked - torch.logsumexp(logits, dim=-1)).cpu().tolist()


def _cache_keyword(model) -> str:
    """transformers 5 names the key/value cache argument `cache`; earlier releases
    `past_key_values` (still accepted, with a deprecation warning)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _score_generations(model, tokenizer, task, examples, settings) -> TaskScore:
    completions, tokens = generate(
        model, tokenizer, [e.prompt for e in examples], task.max_new_tokens, settings
    )
    correct = [
        int(task.score(example, text) >= 1.0) for example, text in zip(examples, completions, strict=True)
    ]
    n = len(examples)
    accuracy = sum(correct) / n
    return TaskScore(task.name, "generate", accuracy, n, task.chance, items=correct, tokens=tokens)


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, settings: EvalSettings
) -> tuple[list[str], int]:
    """Greedy completions (new text only), batched with left padding (generation continues
    from the last real token). A prompt longer than `settings.max_length` keeps its end."""
    new_ids, tokens = generate_ids(model, tokenizer, prompts, max_new_tokens, settings)
    return tokenizer.batch_decode(new_ids, skip_special_tokens=True), tokens


@torch.no_grad()
def generate_ids(
    model, tokenizer, prompts: list[str], max_new_tokens: int, settings: EvalSettings
) -> tuple[list[list[int]], int]:
    """`generate`'s greedy completions as token ids, each cut after its first
    end-of-sequence token (kept); tokens the model read."""
    device = _device_of(model)
    completions: list[list[int]] = [[] for _ in prompts]
    tokens = 0
    eos = tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = range(0, len(order), settings.eval_batch_size)
    for start in tqdm(batches, desc="generate", disable=not settings.progress, leave=False):
        rows = [
            prompt_ids(tokenizer, prompts[i], settings.max_length)
            for i in order[start : start + settings.eval_batch_size]
        ]
        ids, mask = pad_rows(rows, pad_id(tokenizer), left=True)
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = generated[:, ids.shape[1] :].tolist()
        tokens += int(mask.sum()) + sum(len(row) for row in new)
        for row, completion in enumerate(new):
            if eos is not None and eos in completion:
                completion = completion[: completion.index(eos) + 1]
            completions[order[start + row]] = completion
    return completions, tokens


def _device_of(model) -> torch.device:
    return next(model.parameters()).device
