"""The lm-evaluation-harness bridge, on the tiny model and a six-item local YAML task."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from halora.cim import Placement
from halora.errors import UsageError
from halora.lmeval import INSTALL_HINT, compact_metrics, evaluate_lm_eval, results_table
from halora.lora import LoraSettings, attach_lora
from halora.models import build_tiny

FIXTURE = Path(__file__).parent / "fixtures" / "lmeval"
TASK = "halora_tiny_mc"
NOISE = "gaussian:sigma=0.05"


@pytest.fixture
def lm_eval():
    return pytest.importorskip("lm_eval")


def clean_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def weight_spy(layers: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Records each layer's weight as its first forward pass sees it."""
    seen: dict[str, torch.Tensor] = {}
    for key, layer in layers.items():

        def hook(module, args, output, key=key) -> None:  # None: keep the layer's output
            seen.setdefault(key, module.weight.detach().clone())

        layer.register_forward_hook(hook)
    return seen


def run_fixture(model, tokenizer, **kwargs) -> dict:
    return evaluate_lm_eval(model, tokenizer, [TASK], include_path=str(FIXTURE), **kwargs)


def test_fixture_task_scores_acc_and_restores_chip_bit_for_bit(lm_eval, tiny):
    model, tokenizer = tiny
    clean = clean_copy(model)
    # lm_head on RRAM too: programming unties it from the embeddings, restoring re-ties it
    result = run_fixture(model, tokenizer, noise=NOISE, seed=3, placement=Placement(lm_head=True))
    metrics = result["tasks"][TASK]
    assert 0.0 <= metrics["acc"] <= 1.0 and 0.0 <= metrics["acc_norm"] <= 1.0
    assert result["results"][TASK]["acc,none"] == metrics["acc"]
    assert result["n_samples"][TASK]["effective"] == 6
    assert result["noise"].startswith("gaussian:sigma=0.05") and result["seed"] == 3
    json.dumps(result)  # plain JSON, no numpy or torch objects
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, clean[name]), name
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_the_run_sees_programmed_weights_on_rram_and_clean_ones_elsewhere(lm_eval, tiny):
    model, tokenizer = tiny
    q_proj, head = model.model.layers[0].self_attn.q_proj, model.lm_head
    clean_q, clean_embed = q_proj.weight.detach().clone(), model.model.embed_tokens.weight.detach().clone()
    seen = weight_spy({"q": q_proj, "head": head})
    run_fixture(model, tokenizer, noise=NOISE, placement=Placement(lm_head=True))
    # programmed during the run: HFLM, built on the clean model, must not re-tie lm_head
    assert not torch.equal(seen["q"], clean_q)
    assert not torch.equal(seen["head"], clean_embed)
    assert torch.equal(model.model.embed_tokens.weight, clean_embed)
    seen.clear()
    run_fixture(model, tokenizer, noise="none", limit=2)
    assert torch.equal(seen["q"], clean_q)


def test_an_adapter_runs_as_a_separate_exact_branch(lm_eval, tiny):
    model, tokenizer = tiny
    peft_model = attach_lora(model, LoraSettings(rank=2, dropout=0.0))
    peft_model.eval()
    lora_layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    calls = []
    lora_layer.lora_B["default"].register_forward_hook(lambda m, a, o: calls.append(1))
    result = evaluate_lm_eval(
        peft_model,
        tokenizer,
        [TASK],
        include_path=str(FIXTURE),
        noise=NOISE,
        limit=2,
        batch_size=4,
        num_fewshot=1,
    )
    assert calls, "the LoRA branch never ran"
    assert not lora_layer.merged  # never merged into the noisy base
    assert result["n_shot"][TASK] == 1 and result["n_samples"][TASK]["effective"] == 2


def test_missing_lm_eval_names_the_install_command(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(UsageError) as err:
        run_fixture(*tiny)
    assert str(err.value) == INSTALL_HINT
    assert "pip install 'halora[lm-eval]'" in INSTALL_HINT


def test_unknown_task_is_one_line_with_suggestions(lm_eval, monkeypatch, tiny):
    # index only the local folder: lm-eval's ~15k built-in tasks take ~10 s to index
    class LocalOnly(lm_eval.tasks.TaskManager):
        def __init__(self, include_path=None, include_defaults=True, **kwargs):
            super().__init__(include_path=include_path, include_defaults=False, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalOnly)
    with pytest.raises(UsageError) as err:
        evaluate_lm_eval(*tiny, ["halora_tiny_mcq"], include_path=str(FIXTURE))
    message = str(err.value)
    assert "\n" not in message
    assert "halora_tiny_mcq" in message and f"did you mean {TASK}" in message


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"limit": 0}, "--items"),
        ({"batch_size": 0}, "--eval-batch-size"),
        ({"num_fewshot": -1}, "--num-fewshot"),
        ({"include_path": "/no/such/folder"}, "--include-path"),
        ({"noise": "no_such_noise"}, "no_such_noise"),
    ],
)
def test_bad_settings_are_usage_errors(lm_eval, tiny, kwargs, expected):
    settings = {"include_path": str(FIXTURE), **kwargs}
    with pytest.raises(UsageError, match=expected):
        evaluate_lm_eval(*tiny, [TASK], **settings)


def json_task(folder: Path, data_file: Path) -> None:
    """The usual local task: `datasets`' json builder over a data file, by absolute path."""
    (folder / "local_json.yaml").write_text(
        f"task: local_json\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_file}\n  cache_dir: {folder / 'cache'}\n"
        f"test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )


def test_a_yaml_task_over_a_local_json_file_runs_offline(lm_eval, tiny, tmp_path):
    json_task(tmp_path, FIXTURE / "halora_tiny_mc.jsonl")
    result = evaluate_lm_eval(*tiny, ["local_json"], include_path=str(tmp_path), limit=3)
    assert 0.0 <= result["tasks"]["local_json"]["acc"] <= 1.0


def test_a_missing_data_file_is_a_usage_error(lm_eval, tiny, tmp_path):
    json_task(tmp_path, tmp_path / "missing.jsonl")
    with pytest.raises(UsageError, match="could not load a task's data"):
        evaluate_lm_eval(*tiny, ["local_json"], include_path=str(tmp_path))


def test_command_prints_json_and_writes_the_same_file(lm_eval, tmp_path, capsys):
    from halora.commands import lmeval

    adapter = tmp_path / "adapter"
    attach_lora(build_tiny(), LoraSettings(rank=2)).save_pretrained(adapter)
    parser = argparse.ArgumentParser()
    lmeval.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "--model",
            "tiny",
            "--adapter",
            str(adapter),
            "--noise",
            NOISE,
            "--lm-tasks",
            TASK,
            "--include-path",
            str(FIXTURE),
            "--items",
            "3",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert lmeval.run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "results.json").read_text())
    assert printed["adapter"] == str(adapter) and TASK in printed["tasks"]


def test_compact_metrics_keeps_numbers_and_drops_the_none_filter():
    results = {
        "t": {
            "alias": "t",
            "acc,none": 0.5,
            "acc_stderr,none": "N/A",
            "exact_match,strict-match": 1,
            "sample_len": 6,
        }
    }
    assert compact_metrics(results) == {"t": {"acc": 0.5, "exact_match,strict-match": 1.0}}


def test_the_table_is_lm_evals_own(lm_eval):
    result = {
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.25}},
        "n_shot": {"t": 0},
        "versions": {"t": 1.0},
        "higher_is_better": {"t": {"acc": True}},
    }
    table = results_table(result)
    assert table.splitlines()[0].replace(" ", "").startswith("|Tasks|Version|Filter|n-shot|Metric|")
    assert "0.5" in table and "0.25" in table and "↑" in table


def test_command_prints_the_chip_line_and_lm_evals_table(lm_eval, tmp_path, capsys):
    from halora.cli import main

    argv = ["lm-eval", "--model", "tiny", "--noise", NOISE, "--lm-tasks", TASK]
    assert main([*argv, "--include-path", str(FIXTURE), "--items", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("tiny + no adapter on chip gaussian:sigma=0.05") and "lm-eval" in lines[0]
    assert lines[1].replace(" ", "").startswith("|Tasks|Version|")
    assert any(line.startswith(f"|{TASK}") for line in lines) and any("acc_norm" in line for line in lines)
