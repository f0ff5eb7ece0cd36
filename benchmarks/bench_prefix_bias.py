"""Prefix bias of log-likelihood multiple choice: options scored without and with EOS.

Without an end marker an option whose tokens are a prefix of another option's can never
lose to it (log P(" 1") > log P(" 11") whatever the model: SmolLM2 splits digits): a gold
option that extends a distractor (" 11" when " 1" is offered) can never win acc, and a
gold option that a distractor extends can never lose to it. halora now scores
log P(option + EOS | prompt), as training fits answers. This script measures what that
changes, on SmolLM2-135M with no adapter and the default suite's test items:

- per task, acc and acc_norm (summed log-probability / option bytes) under the old
  scoring (option tokens only) and the new one (option tokens + EOS), and how many items
  change verdict (gained: wrong -> right, lost: right -> wrong);
- items whose gold option is a token prefix of a distractor (`gold_prefix_of_distractor`:
  the old acc could not lose them to that distractor) and items where a distractor is a
  token prefix of the gold option (`distractor_prefix_of_gold`: the old acc could never
  pick the gold one), with their old and new verdicts.

Both scorings come from one pass: the per-token log-probabilities of option + EOS
(`option_token_logprobs`); the old score is the sum without the EOS term. That is exact
where no prompt is cut (prompt + longest option + EOS within `max_length`, checked and
reported as `prompts_cut`), and checked against `option_logliks(eos=False)` on a few items.

    .venv/bin/python benchmarks/bench_prefix_bias.py              # 4-5 min (1 thread, busy 2 cores)
    .venv/bin/python benchmarks/bench_prefix_bias.py --quick      # 40 items per task
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import add_threads_argument, emit, environment, log, set_threads

from halora.evaluate import EvalSettings, option_logliks, option_token_logprobs, per_byte
from halora.models import SMOLLM2, load_model
from halora.tasks import load_tasks

NAME = "bench_prefix_bias"
CHECKED_ITEMS = 8  # items per task re-scored the old way, to check the derived old scores


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def is_proper_prefix(short: list[int], long: list[int]) -> bool:
    return len(short) < len(long) and long[: len(short)] == short


def measure_task(model, tokenizer, task, n: int, settings: EvalSettings) -> dict:
    examples = task.examples("test", n)
    pairs = [(e.prompt, option) for e in examples for option in e.options]
    started = time.perf_counter()
    terms, tokens = option_token_logprobs(model, tokenizer, pairs, settings, eos=True)
    seconds = time.perf_counter() - started
    new = [sum(t) for t in terms]
    old = [sum(t[:-1]) for t in terms]  # the EOS term is last
    eos_terms = [t[-1] for t in terms]

    check_pairs = [(e.prompt, option) for e in examples[:CHECKED_ITEMS] for option in e.options]
    direct_old, _ = option_logliks(model, tokenizer, check_pairs, settings, eos=False)
    old_check_error = max(abs(a - b) for a, b in zip(direct_old, old, strict=False))

    verdicts = {key: [] for key in ("old", "new", "old_norm", "new_norm")}
    gold_prefix, distractor_prefix = [], []
    prompts_cut = 0
    eos_gold, eos_other = [], []
    start = 0
    for index, example in enumerate(examples):
        count = len(example.options)
        rows = slice(start, start + count)
        start += count
        for key, scores in (("old", old[rows]), ("new", new[rows])):
            verdicts[key].append(int(argmax(scores) == example.gold))
            normed = per_byte(scores, list(example.options))
            verdicts[f"{key}_norm"].append(int(argmax(normed) == example.gold))
        ids = [tokenizer(o, add_special_tokens=False).input_ids for o in example.options]
        gold_ids = ids[example.gold]
        others = [ids_ for i, ids_ in enumerate(ids) if i != example.gold]
        if any(is_proper_prefix(gold_ids, other) for other in others):
            gold_prefix.append(index)
        if any(is_proper_prefix(other, gold_ids) for other in others):
            distractor_prefix.append(index)
        room = settings.max_length - max(len(i) for i in ids) - 1
        prompts_cut += len(tokenizer(example.prompt).input_ids) > room
        eos_gold.append(eos_terms[rows][example.gold])
        eos_other += [e for i, e in enumerate(eos_terms[rows]) if i != example.gold]

    def changes(old_key: str, new_key: str) -> dict:
        pairs_ = list(zip(verdicts[old_key], verdicts[new_key], strict=True))
        return {
            "changed": sum(a != b for a, b in pairs_),
            "gained": sum(a < b for a, b in pairs_),
            "lost": sum(a > b for a, b in pairs_),
        }

    def subset(indices: list[int]) -> dict:
        return {
            "items": len(indices),
            "acc_old_correct": sum(verdicts["old"][i] for i in indices),
            "acc_new_correct": sum(verdicts["new"][i] for i in indices),
            "acc_norm_old_correct": sum(verdicts["old_norm"][i] for i in indices),
            "acc_norm_new_correct": sum(verdicts["new_norm"][i] for i in indices),
        }

    count = len(examples)
    result = {
        "n": count,
        "options_per_item": round(len(pairs) / count, 2),
        "chance": round(task.chance, 4),
        "acc_old": round(sum(verdicts["old"]) / count, 4),
        "acc_new": round(sum(verdicts["new"]) / count, 4),
        "acc_norm_old": round(sum(verdicts["old_norm"]) / count, 4),
        "acc_norm_new": round(sum(verdicts["new_norm"]) / count, 4),
        "acc_verdicts": changes("old", "new"),
        "acc_norm_verdicts": changes("old_norm", "new_norm"),
        "gold_prefix_of_distractor": subset(gold_prefix),
        "distractor_prefix_of_gold": subset(distractor_prefix),
        "median_logp_eos_after_gold": round(statistics.median(eos_gold), 3),
        "median_logp_eos_after_distractor": round(statistics.median(eos_other), 3) if eos_other else None,
        "prompts_cut": prompts_cut,
        "old_score_check_max_abs_error": float(f"{old_check_error:.2e}"),
        "tokens": tokens,
        "seconds": round(seconds, 1),
    }
    log(
        f"{task.name}: acc {result['acc_old']} -> {result['acc_new']}, acc_norm "
        f"{result['acc_norm_old']} -> {result['acc_norm_new']}, changed {result['acc_verdicts']['changed']} "
        f"({seconds:.0f} s)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 test items per task")
    parser.add_argument("--n", type=int, default=None, help="test items per task (default 200)")
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    n = args.n or (40 if args.quick else 200)
    env = environment()
    started = time.perf_counter()
    model, tokenizer = load_model(SMOLLM2)
    tasks = load_tasks("default")
    settings = EvalSettings(items=n, eval_batch_size=32)
    per_task = {task.name: measure_task(model, tokenizer, task, n, settings) for task in tasks}
    total = sum(r["n"] for r in per_task.values())

    def mean_of(key: str) -> float:  # unweighted over tasks, as the sweep's "average" column
        return round(statistics.fmean(r[key] for r in per_task.values()), 4)

    emit(
        NAME,
        {
            "benchmark": NAME,
            "model": SMOLLM2,
            "adapter": None,
            "eos_token": tokenizer.eos_token,
            "eos_token_id": tokenizer.eos_token_id,
            "items_per_task": n,
            "max_length": settings.max_length,
            "quick": args.quick,
            "summary": {
                "items": total,
                "acc_old_mean": mean_of("acc_old"),
                "acc_new_mean": mean_of("acc_new"),
                "acc_norm_old_mean": mean_of("acc_norm_old"),
                "acc_norm_new_mean": mean_of("acc_norm_new"),
                "acc_changed": sum(r["acc_verdicts"]["changed"] for r in per_task.values()),
                "acc_norm_changed": sum(r["acc_norm_verdicts"]["changed"] for r in per_task.values()),
                "gold_prefix_of_distractor": sum(
                    r["gold_prefix_of_distractor"]["items"] for r in per_task.values()
                ),
                "distractor_prefix_of_gold": sum(
                    r["distractor_prefix_of_gold"]["items"] for r in per_task.values()
                ),
                "prompts_cut": sum(r["prompts_cut"] for r in per_task.values()),
                "seconds": round(time.perf_counter() - started, 1),
            },
            "tasks": per_task,
            "environment": env,
        },
    )


if __name__ == "__main__":
    main()
