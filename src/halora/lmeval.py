"""A bridge to EleutherAI's lm-evaluation-harness: score a programmed chip (+ adapter) on lm-eval tasks.

lm-eval is an optional dependency (``pip install 'halora[lm-eval]'``), imported only here and
only when called. The model object is handed to lm-eval's HFLM as it is, a PeftModel
included: the LoRA branches run exact and separate from the noisy base weights, nothing is
merged. Everything runs offline: lm-eval's built-in tasks work when their datasets are in
the local Hugging Face cache; local YAML tasks (``include_path``) may load local files.

Relative ``dataset_kwargs: data_files`` paths in a YAML task are resolved by `datasets`
against the working folder, not the YAML's folder; ``custom_dataset: !function mod.fn`` is
resolved beside the YAML (tests/fixtures/lmeval/ shows both the task and the loader).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from halora.cim import Placement, program_chip
from halora.errors import UsageError
from halora.noise import parse_noise_spec

INSTALL_HINT = "lm-eval is not installed: pip install 'halora[lm-eval]' (or pip install lm-eval)"
# lm-eval warns on every pre-built model that "many model arguments may be ignored": expected here
_HFLM_LOGGER = "lm_eval.models.huggingface"
# The parts of lm-eval's output its results table reads besides "results" and "n-shot".
TABLE_KEYS = ("versions", "higher_is_better", "group_subtasks", "groups")


def evaluate_lm_eval(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str],
    include_path: str | None = None,
    noise: str = "none",
    seed: int = 0,
    placement: Placement = Placement(),
    limit: int | None = None,
    batch_size: int = 16,
    num_fewshot: int | None = None,
    manager: Any | None = None,
) -> dict:
    """Run lm-eval `tasks` on `model` (a transformers model or PeftModel) on one programmed chip.

    Returns {"tasks": {task: {metric: value}}, "results": lm-eval's raw "results" section,
    "n_samples", "n_shot", "noise", "seed", "lm_eval_version", and what lm-eval's table
    needs (see `results_table`): "versions", "higher_is_better", "group_subtasks" and
    "groups" (group tasks only)}. The chip is restored after,
    weights bit for bit. lm-eval seeds the global random, numpy and torch generators.
    `manager`: a TaskManager from `task_manager(tasks, include_path)`, to check the task
    names before a large model loads; built here when None.
    """
    lm_eval = import_lm_eval()
    check_numbers(limit, batch_size, num_fewshot)
    noise_model = parse_noise_spec(noise)  # bad specs fail before the slow task loading
    if manager is None:
        manager = task_manager(tasks, include_path)
    # HFLM re-ties the embeddings when it is built: build it on the clean model, or an
    # lm_head placed on RRAM (untied by programming) would be tied back to the clean embeddings.
    lm = _wrap(model, tokenizer, batch_size)
    with program_chip(model, noise_model, seed, placement) as chip:
        raw = _simple_evaluate(lm_eval, lm, tasks, manager, limit, num_fewshot)
    results = _plain(raw["results"])
    return {
        "tasks": compact_metrics(results),
        "results": results,
        "n_samples": _plain(raw.get("n-samples", {})),
        "n_shot": _plain(raw.get("n-shot", {})),
        "noise": chip.noise.spec(),
        "seed": seed,
        "lm_eval_version": raw.get("lm_eval_version"),
        **{key: _plain(raw[key]) for key in TABLE_KEYS if key in raw},
    }


def results_table(result: dict) -> str:
    """lm-eval's own Markdown table of a result of `evaluate_lm_eval` (as `lm-eval run`
    prints it), and its table of groups when a task is a group."""
    from lm_eval.utils import make_table

    raw = {key: result[key] for key in TABLE_KEYS if key in result}
    raw |= {"results": result["results"], "n-shot": result.get("n_shot", {})}
    raw.setdefault("versions", {})
    tables = [make_table(raw)] + ([make_table(raw, "groups")] if raw.get("groups") else [])
    return "\n".join(table.rstrip("\n") for table in tables)


def import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (fails here, not mid-run)
    except ImportError as err:
        raise UsageError(INSTALL_HINT) from err
    return lm_eval


def check_numbers(limit: int | None, batch_size: int, num_fewshot: int | None) -> None:
    if limit is not None and limit < 1:
        raise UsageError(f"--items must be at least 1 item per task, got {limit}")
    if batch_size < 1:
        raise UsageError(f"--eval-batch-size must be at least 1, got {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be 0 or more, got {num_fewshot}")


def task_manager(tasks: list[str], include_path: str | None = None):
    """An lm-eval TaskManager that knows every name in `tasks`, or a one-line UsageError."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise UsageError("give at least one lm-eval task, e.g. --lm-tasks arc_easy")
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise UsageError(f"--include-path {include_path} is not a folder of lm-eval task YAML files")
        # Indexing lm-eval's ~15k built-in tasks takes ~10 s; skip it when the local
        # folder has every task (local tasks take precedence over built-ins anyway).
        local = TaskManager(include_path=include_path, include_defaults=False)
        if not _unknown(local, tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = _unknown(manager, tasks)
    if unknown:
        raise UsageError(_unknown_message(unknown, manager.all_tasks, include_path))
    return manager


def _unknown(manager, tasks: list[str]) -> list[str]:
    known = set(manager.all_tasks)
    # lm-eval also takes a path to a task YAML file as a task name
    return [name for name in tasks if name not in known and not Path(name).is_file()]


def _unknown_message(unknown: list[str], known: list[str], include_path: str | None) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3)
        parts.append(f"{name} (did you mean {', '.join(close)}?)" if close else name)
    where = f" built in or under {include_path}" if include_path else " built in"
    return (
        f"unknown lm-eval task {'; '.join(parts)}: no such task{where} "
        "(list them with `lm-eval ls tasks`; local YAML tasks need --include-path)"
    )


def _wrap(model: nn.Module, tokenizer: Any, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    with _quiet(_HFLM_LOGGER):
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _simple_evaluate(
    lm_eval, lm, tasks: list[str], manager, limit: int | None, num_fewshot: int | None
) -> dict:
    try:
        # log_samples=False: per-item records are large and not reported
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            log_samples=False,
        )
    except OSError as err:  # ConnectionError offline, FileNotFoundError for local data files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"lm-eval could not load a task's data ({first}): offline, only datasets "
            "in the local Hugging Face cache or local files (--include-path) work"
        ) from err


def compact_metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's "results": numbers only, and "acc,none" -> "acc"
    (a metric under a named filter keeps it: "exact_match,strict-match")."""
    compact = {}
    for task, entries in results.items():
        metrics = {}
        for key, value in entries.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # alias, name, sample_len; "N/A" stderrs
            metric, _, filter_name = key.partition(",")
            metrics[metric if filter_name == "none" else key] = float(value)
        compact[task] = metrics
    return compact


def _plain(obj: Any) -> Any:
    """JSON-safe copy: lm-eval's results may hold numpy scalars and dtypes."""
    return json.loads(json.dumps(obj, default=_builtin))


def _builtin(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return str(value)
