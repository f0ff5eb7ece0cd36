import json

import pytest
import torch

from halora.encoding import encode_pair
from halora.errors import UsageError
from halora.evaluate import (
    EvalSettings,
    evaluate_task,
    generate,
    option_logliks,
    option_token_logprobs,
    per_byte,
)
from halora.tasks import load_tasks


def mc_file(tmp_path, count: int = 24):
    records = [
        {
            "prompt": f"{a} plus {b} is",
            "options": [f" {a + b}", f" {a + b + 1}", " nine"],
            "gold": 0,
            "split": "test",
        }
        for a in range(4)
        for b in range(count // 4)
    ]
    path = tmp_path / "sums.json"
    path.write_text(json.dumps(records))
    return path


def forward_loglik(model, prompt_ids: list[int], option_ids: list[int]) -> float:
    """Summed log-probability of the option tokens in one plain forward pass of prompt + option."""
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(option_ids))


def with_eos(tokenizer, option: str) -> list[int]:
    return tokenizer(option, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def direct_loglik(model, tokenizer, prompt: str, option: str) -> float:
    """log P(option + EOS | prompt), from one plain forward pass."""
    return forward_loglik(model, tokenizer(prompt).input_ids, with_eos(tokenizer, option))


def test_option_logliks_match_direct_computation_at_any_batch_size(tiny):
    model, tokenizer = tiny
    pairs = [
        ("2 plus 2 is", " 4"),
        ("a much longer prompt than the others, to pad", " yes"),
        ("x", " seventeen"),
    ]
    expected = [direct_loglik(model, tokenizer, p, o) for p, o in pairs]
    for batch_size in (1, 2, 3):
        got, tokens = option_logliks(model, tokenizer, pairs, EvalSettings(eval_batch_size=batch_size))
        assert got == pytest.approx(expected, abs=1e-4)
        assert tokens == sum(len(tokenizer(p + o).input_ids) for p, o in pairs)  # EOS is never read


def test_a_prompt_that_just_fits_is_scored_whole_whatever_else_is_in_the_batch(tiny):
    model, tokenizer = tiny
    prompt = "2 plus 2 is"
    pairs = [(prompt, " 4"), (prompt, " four"), ("x", " seventeen")]
    fits = len(tokenizer(prompt).input_ids) + len(with_eos(tokenizer, " four"))
    expected = [direct_loglik(model, tokenizer, p, o) for p, o in pairs]
    # one batch: the longer option of "x" must not shorten the other prompt
    got, _ = option_logliks(model, tokenizer, pairs, EvalSettings(max_length=fits, eval_batch_size=2))
    assert got == pytest.approx(expected, abs=1e-4)
    one_short, _ = option_logliks(model, tokenizer, pairs[:2], EvalSettings(max_length=fits - 1))
    assert one_short[1] != pytest.approx(expected[1], abs=1e-4)  # the first prompt token is gone


def test_a_long_prompt_keeps_its_end_and_whole_options_when_scored(tiny):
    model, tokenizer = tiny
    end = " so, all told, the answer is"
    prompts = ["a beginning that the model never sees" + end, "a different start" + end]
    option = " seventeen"
    option_ids = with_eos(tokenizer, option)
    max_length = 24
    kept = tokenizer(prompts[0]).input_ids[-(max_length - len(option_ids)) :]
    assert kept == tokenizer(prompts[1]).input_ids[-len(kept) :]  # the two prompts share their end
    got, tokens = option_logliks(
        model, tokenizer, [(p, option) for p in prompts], EvalSettings(max_length=max_length)
    )
    assert got == pytest.approx([forward_loglik(model, kept, option_ids)] * 2, abs=1e-4)
    assert tokens == 2 * (max_length - 1)  # the EOS is predicted, never read


def test_a_long_prompt_keeps_its_end_when_generating(tiny, monkeypatch):
    model, tokenizer = tiny
    long_prompt, short_prompt = "a beginning that the model never sees, then the end:", "short"
    seen = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or original(**kw))
    texts, _ = generate(model, tokenizer, [short_prompt, long_prompt], 5, EvalSettings(max_length=16))
    rows, mask = seen[0]["input_ids"].tolist(), seen[0]["attention_mask"].tolist()
    short_ids = tokenizer(short_prompt).input_ids
    assert rows[0] == tokenizer(long_prompt).input_ids[-16:] and mask[0] == [1] * 16
    assert rows[1][-len(short_ids) :] == short_ids and mask[1] == [0] * 11 + [1] * 5  # left padded
    alone = original(input_ids=torch.tensor(rows[:1]), max_new_tokens=5, do_sample=False)
    assert texts[1] == tokenizer.decode(alone[0, 16:], skip_special_tokens=True)


def test_encode_pair_keeps_a_prompt_that_fits_and_the_end_of_one_that_does_not(tiny):
    _, tokenizer = tiny
    prompt = "".join(chr(ord("a") + i % 26) for i in range(150))
    prompt_ids, answer_ids = tokenizer(prompt).input_ids, tokenizer(" yes").input_ids
    eos = [tokenizer.eos_token_id]
    fits = encode_pair(tokenizer, prompt, " yes", max_length=256)
    assert fits.input_ids == prompt_ids + answer_ids + eos and fits.answer_start == len(prompt_ids)
    cut = encode_pair(tokenizer, prompt, " yes", max_length=10)
    assert cut.input_ids == prompt_ids[-5:] + answer_ids + eos and cut.answer_start == 5


def test_loglik_scoring_accuracy_and_items(tiny, tmp_path):
    model, tokenizer = tiny
    task = load_tasks(f"json:{mc_file(tmp_path)}")[0]
    score = evaluate_task(model, tokenizer, task, EvalSettings(items=None, eval_batch_size=5))
    assert score.scorer == "loglik" and score.n == 24 and len(score.items) == 24
    assert score.accuracy == sum(score.items) / 24
    assert 0.0 <= score.acc_norm <= 1.0 and score.acc_norm == sum(score.items_norm) / 24
    assert score.chance == pytest.approx(1 / 3)
    again = evaluate_task(model, tokenizer, task, EvalSettings(items=None, eval_batch_size=24))
    assert again.items == score.items and again.items_norm == score.items_norm


def test_greedy_generation_is_batch_independent(tiny):
    model, tokenizer = tiny
    prompts = ["short", "a somewhat longer prompt", "mid length one"]
    alone = [generate(model, tokenizer, [p], 6, EvalSettings())[0][0] for p in prompts]
    batched, _ = generate(model, tokenizer, prompts, 6, EvalSettings(eval_batch_size=3))
    assert batched == alone
    assert tokenizer.padding_side == "right"  # restored after generation


def test_generation_scorer_uses_the_task_scorer(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    path = tmp_path / "gen.json"
    path.write_text(json.dumps([{"prompt": f"q{i}", "answer": "x", "split": "test"} for i in range(6)]))
    task = load_tasks(f"json:{path}")[0]
    calls = []
    monkeypatch.setattr(task, "score", lambda example, text: calls.append(text) or 1.0)
    score = evaluate_task(model, tokenizer, task, EvalSettings(items=None))
    assert score.scorer == "generate" and score.accuracy == 1.0 and len(calls) == 6
    with pytest.raises(UsageError, match="needs tasks with answer options"):
        evaluate_task(model, tokenizer, task, EvalSettings(items=None, scorer="loglik"))


def test_eval_settings_errors():
    with pytest.raises(UsageError, match="scorer: unknown value 'bleu'"):
        EvalSettings(scorer="bleu")
    with pytest.raises(UsageError):
        EvalSettings(eval_batch_size=0)


PREFIX_PROMPT = "3 times 4 minus 1 is"


def test_an_option_is_scored_with_the_end_of_sequence_token_after_it(tiny):
    model, tokenizer = tiny
    pairs = [(PREFIX_PROMPT, " 1"), (PREFIX_PROMPT, " 11")]
    got, _ = option_logliks(model, tokenizer, pairs, EvalSettings())
    assert got == pytest.approx([direct_loglik(model, tokenizer, p, o) for p, o in pairs], abs=1e-4)
    terms, _ = option_token_logprobs(model, tokenizer, pairs, EvalSettings())
    assert [len(t) for t in terms] == [3, 4]  # byte tokens: " ", "1", ("1",) EOS
    # so " 11" beats " 1" exactly when P("1" | " 1") P(EOS | " 11") > P(EOS | " 1")
    assert terms[0][:2] == pytest.approx(terms[1][:2], abs=1e-5)
    without, _ = option_logliks(model, tokenizer, pairs, EvalSettings(), eos=False)
    assert without == pytest.approx([sum(t[:-1]) for t in terms], abs=1e-4)
    assert without[0] > without[1]  # without the end marker the prefix always wins


def test_no_end_of_sequence_token_without_one_in_the_tokenizer(tiny):
    model, tokenizer = tiny
    tokenizer.eos_token = None
    assert tokenizer.eos_token_id is None
    pairs = [(PREFIX_PROMPT, " 1"), (PREFIX_PROMPT, " 11")]
    terms, _ = option_token_logprobs(model, tokenizer, pairs, EvalSettings())
    assert [len(t) for t in terms] == [2, 3]
    expected = [
        forward_loglik(model, tokenizer(p).input_ids, tokenizer(o, add_special_tokens=False).input_ids)
        for p, o in pairs
    ]
    assert [sum(t) for t in terms] == pytest.approx(expected, abs=1e-4)


def end_after(model, tokenizer, prompt: str, ended: str, open_: str, logit: float = 12.0) -> None:
    """Edit the EOS row of the lm_head so that the model ends after prompt + `ended` (EOS
    logit +`logit`) and goes on after prompt + `open_` (EOS logit -`logit`)."""
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie it
    hidden = {}
    for text in (ended, open_):
        ids = torch.tensor([tokenizer(prompt + text).input_ids])
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        hidden[text] = out.hidden_states[-1][0, -1]  # after the final norm: what the lm_head sees
    states = torch.stack([hidden[ended], hidden[open_]])
    row = torch.linalg.pinv(states) @ torch.tensor([logit, -logit])
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = row


def test_a_prefix_option_loses_when_the_model_does_not_end_after_it(tiny, tmp_path):
    model, tokenizer = tiny
    end_after(model, tokenizer, PREFIX_PROMPT, ended=" 11", open_=" 1")
    path = tmp_path / "prefix.json"
    records = [{"prompt": PREFIX_PROMPT, "options": [" 1", " 11"], "gold": 1, "split": "test"}]
    path.write_text(json.dumps(records))
    task = load_tasks(f"json:{path}")[0]
    pairs = [(PREFIX_PROMPT, " 1"), (PREFIX_PROMPT, " 11")]
    terms, _ = option_token_logprobs(model, tokenizer, pairs, EvalSettings())
    assert terms[0][-1] < -10 and terms[1][-1] > -0.01  # log P(EOS | " 1"), log P(EOS | " 11")
    assert sum(terms[1]) > sum(terms[0])
    assert sum(terms[1][:-1]) < sum(terms[0][:-1])  # the old scoring (no EOS) picked " 1"
    score = evaluate_task(model, tokenizer, task, EvalSettings(items=None))
    assert score.items == [1] and score.items_norm == [1] and score.accuracy == 1.0


def test_acc_norm_divides_by_option_bytes_and_both_are_reported(tiny, tmp_path):
    model, tokenizer = tiny
    options = [" 7", " seventy-seven", " \u00e9t\u00e9"]  # 2, 14 and 6 bytes (é is 2 bytes)
    assert per_byte([-4.0, -14.0, -6.0], options) == pytest.approx([-2.0, -1.0, -1.0])
    records = [
        {"prompt": f"item {i}: the answer is", "options": options, "gold": 0, "split": "test"}
        for i in range(12)
    ]
    path = tmp_path / "lengths.json"
    path.write_text(json.dumps(records))
    task = load_tasks(f"json:{path}")[0]
    score = evaluate_task(model, tokenizer, task, EvalSettings(items=None))
    pairs = [(r["prompt"], o) for r in records for o in options]
    expected = [direct_loglik(model, tokenizer, p, o) for p, o in pairs]
    picks, picks_norm = [], []
    for start in range(0, len(expected), 3):
        scores = expected[start : start + 3]
        picks.append(max(range(3), key=scores.__getitem__))
        normed = per_byte(scores, options)
        picks_norm.append(max(range(3), key=normed.__getitem__))
    assert score.items == [int(p == r["gold"]) for p, r in zip(picks, records, strict=True)]
    assert score.items_norm == [int(p == r["gold"]) for p, r in zip(picks_norm, records, strict=True)]
    assert picks != picks_norm  # lengths differ a lot: the two rules disagree somewhere
    assert score.items != score.items_norm and score.accuracy != score.acc_norm
    data = score.to_json()
    assert data["accuracy"] == score.accuracy and data["acc_norm"] == score.acc_norm
    assert data["items"] == "".join(map(str, score.items))
    assert data["items_norm"] == "".join(map(str, score.items_norm))
    json.dumps(data)
