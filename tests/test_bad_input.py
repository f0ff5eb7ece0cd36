"""Bad input at the command boundary: one line naming the problem, exit status 2, no
traceback, and nothing left behind in --out."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from halora.cli import main
from halora.commands.demo import _refuse_training_run
from halora.errors import UsageError
from halora.lora import LoraSettings, attach_lora
from halora.models import TinyConfig, build_tiny, byte_tokenizer

NEEDS_NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
LMEVAL_TASKS = Path(__file__).parent / "fixtures" / "lmeval"
# Stand-ins in argv for adapter folders, made only by the cases that use them.
OTHER_BASE = "<adapter whose halora.json names other base weights>"
OTHER_SHAPES = "<adapter of other shapes>"
CUT_SHORT = "<model folder whose model.safetensors is cut short>"
PICKLED = "<adapter whose adapter_model.bin pickles more than tensors>"
TRAIN_RUN = "<folder holding a training run>"


def adapter(folder: Path, config: TinyConfig = TinyConfig(), base_sha256: str | None = "0" * 64) -> str:
    """A tiny LoRA adapter whose halora.json says it was trained on smollm2-135m."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's notes on wrapping and saving a test model
        attach_lora(build_tiny(config), LoraSettings(rank=2)).save_pretrained(folder)
    record = {"base_model": "smollm2-135m", "base_model_sha256": base_sha256}
    (folder / "halora.json").write_text(json.dumps(record))
    return str(folder)


def model_cut_short(folder: Path) -> str:
    """A tiny model folder whose weights file a copy or download cut off halfway."""
    build_tiny().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    return str(folder)


def pickled_adapter(folder: Path) -> str:
    """An adapter saved the old way, whose adapter_model.bin also pickles a Python object."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attach_lora(build_tiny(), LoraSettings(rank=2)).save_pretrained(folder)
    (folder / "adapter_model.safetensors").unlink()
    torch.save({"note": argparse.Namespace(by="someone")}, folder / "adapter_model.bin")
    return str(folder)


def training_run(folder: Path) -> str:
    """What `halora train --out folder` leaves at the folder's top level."""
    adapter(folder)
    (folder / "train_log.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    return str(folder)


def made(word: str, tmp_path: Path) -> str:
    """`word` with a stand-in replaced by the folder it stands for."""
    if OTHER_BASE in word:
        return word.replace(OTHER_BASE, adapter(tmp_path / "other-base"))
    if OTHER_SHAPES in word:
        shapes = TinyConfig(hidden_size=32, intermediate_size=64)
        return word.replace(OTHER_SHAPES, adapter(tmp_path / "other-shapes", shapes, None))
    if CUT_SHORT in word:
        return word.replace(CUT_SHORT, model_cut_short(tmp_path / "cut-short"))
    if PICKLED in word:
        return word.replace(PICKLED, pickled_adapter(tmp_path / "pickled"))
    if TRAIN_RUN in word:
        return word.replace(TRAIN_RUN, training_run(tmp_path / "trained"))
    return word


def toml(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def cases(tmp_path):
    existing_file = tmp_path / "a-file"
    existing_file.write_text("x")
    out = str(tmp_path / "out")
    train = ["train", "--model", "tiny", "--out", out]
    return {
        "lr nan": (train + ["--lr", "nan"], "lr must be a finite number"),
        "max length 0": (train + ["--max-length", "0"], "max_length must be >= 1"),
        "unknown schedule": (train + ["--schedule", "wobbly"], "schedule: unknown value 'wobbly'"),
        "unknown logger": (train + ["--report-to", "nosuchlogger"], "--report-to nosuchlogger"),
        "huge sigma": (
            ["eval", "--model", "tiny", "--noise", "gaussian:sigma=1e300"],
            "sigma must be a finite number in [0, 10]",
        ),
        "not a number": (["eval", "--model", "tiny", "--items", "many"], "--items must be an integer"),
        "train out is a file": (["train", "--model", "tiny", "--out", str(existing_file)], "is a file"),
        "sweep out is a file": (["sweep", "--base", "--out", str(existing_file)], "is a file"),
        "demo out is a file": (["demo", "--out", str(existing_file)], "is a file"),
        "train out unwritable": (
            ["train", "--model", "tiny", "--out", "/proc/halora-x"],
            "cannot be written",
        ),
        "sweep out unwritable": (["sweep", "--base", "--out", "/proc/halora-x"], "cannot be written"),
        "unknown study": (["study", "--study", "nosuch", "--out", out], "no study 'nosuch'"),
        "adapter of another base (eval)": (
            ["eval", "--model", "tiny", "--adapter", OTHER_BASE],
            "was trained on smollm2-135m, but the model loaded is tiny (other weights)",
        ),
        "adapter of another base (sweep)": (
            ["sweep", "--model", "tiny", "--adapters", f"a={OTHER_BASE}", "--out", out],
            "or pass --allow-other-base to use it anyway",
        ),
        "adapter of another base (lm-eval)": (
            ["lm-eval", "--model", "tiny", "--adapter", OTHER_BASE, "--lm-tasks", "halora_tiny_mc"]
            + ["--include-path", str(LMEVAL_TASKS)],
            "was trained on smollm2-135m, but the model loaded is tiny",
        ),
        "adapter of other shapes": (
            ["eval", "--model", "tiny", "--adapter", OTHER_SHAPES, "--allow-other-base"],
            "does not fit this model (trained on smollm2-135m, loaded: tiny)",
        ),
        "adapter without adapter_config.json": (
            ["eval", "--model", "tiny", "--adapter", str(tmp_path)],
            "has no adapter_config.json",
        ),
        "config value of the wrong type": (
            train + ["--config", toml(tmp_path, "steps.toml", 'steps = "many"\n')],
            "steps.toml: steps must be an integer, got 'many'",
        ),
        "config value out of range": (
            train + ["--config", toml(tmp_path, "zero.toml", "steps = 0\n")],
            "zero.toml: steps must be >= 1, got 0",
        ),
        "config --out of the wrong type": (
            ["train", "--model", "tiny", "--config", toml(tmp_path, "out.toml", "out = 3\n")],
            "out.toml: out must be a string, got 3",
        ),
        "config switch of the wrong type": (
            ["sweep", "--out", out, "--config", toml(tmp_path, "base.toml", 'base = "yes"\n')],
            "base.toml: base must be true or false, got 'yes'",
        ),
        "config unknown key": (
            train + ["--config", toml(tmp_path, "key.toml", "stepz = 3\n")],
            "key.toml: unknown key stepz",
        ),
        "study value of the wrong type": (
            ["study", "--out", out, "--study", toml(tmp_path, "study.toml", STUDY_WITH_BAD_STEPS)],
            "arm lora: steps must be an integer, got 'many'",
        ),
        "energy tokens out of range": (
            ["energy", "--tokens", "1000000000000"],
            "--tokens must be an integer from 1 to 1,000,000",
        ),
        "energy plot unwritable": (["energy", "--plot", "/proc/halora-x.png"], "cannot be written"),
        "cuda without a GPU": (
            ["eval", "--model", "tiny", "--device", "cuda"],
            "no CUDA device is available here",
        ),
        "model weights cut short": (
            ["eval", "--model", CUT_SHORT, "--items", "1"],
            "model.safetensors is unreadable (incomplete metadata, file not fully covered): "
            "copy or download it again",
        ),
        "adapter pickling more than tensors (eval)": (
            ["eval", "--model", "tiny", "--adapter", PICKLED, "--items", "1"],
            "adapter_model.bin holds more than tensors and is refused for safety (torch weights_only): "
            "re-save it as safetensors (save_pretrained(..., safe_serialization=True))",
        ),
        "adapter pickling more than tensors (recalibrate)": (
            ["recalibrate", "--model", "tiny", "--adapter", PICKLED, "--noise", "gaussian:sigma=0.01"]
            + ["--out", out],
            "adapter_model.bin holds more than tensors and is refused for safety",
        ),
        "demo out holds a training run": (
            ["demo", "--out", TRAIN_RUN],
            "holds a training run, not a demo: pick a new folder",
        ),
    }


STUDY_WITH_BAD_STEPS = '[study]\nmodel = "tiny"\n[[arm]]\nmethod = "lora"\nsteps = "many"\n'


@pytest.mark.parametrize(
    "name",
    [
        "lr nan",
        "max length 0",
        "unknown schedule",
        "unknown logger",
        "huge sigma",
        "not a number",
        "train out is a file",
        "sweep out is a file",
        "demo out is a file",
        "train out unwritable",
        "sweep out unwritable",
        "unknown study",
        "adapter of another base (eval)",
        "adapter of another base (sweep)",
        "adapter of another base (lm-eval)",
        "adapter of other shapes",
        "adapter without adapter_config.json",
        "config value of the wrong type",
        "config value out of range",
        "config --out of the wrong type",
        "config switch of the wrong type",
        "config unknown key",
        "study value of the wrong type",
        "energy tokens out of range",
        "energy plot unwritable",
        pytest.param("cuda without a GPU", marks=NEEDS_NO_GPU),
        "model weights cut short",
        "adapter pickling more than tensors (eval)",
        "adapter pickling more than tensors (recalibrate)",
        "demo out holds a training run",
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(name, tmp_path, capsys):
    argv, needle = cases(tmp_path)[name]
    if argv[0] == "lm-eval":
        pytest.importorskip("lm_eval")
    argv = [made(word, tmp_path) for word in argv]
    before = files_in(tmp_path)
    capsys.readouterr()  # what making the stand-ins printed (save_pretrained's progress bar)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("halora: error: ") and needle in err[0], err
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())
    assert files_in(tmp_path) == before  # the stand-ins' folders are left as they were


def files_in(folder: Path) -> dict[str, int]:
    """Every file under `folder`, with the time it was last written."""
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()
    }


def test_demo_resumes_a_demo_folder_but_not_a_training_run(tmp_path):
    demo = tmp_path / "demo"
    (demo / "adapters" / "lora").mkdir(parents=True)
    (demo / "adapters" / "lora" / "adapter_model.safetensors").write_bytes(b"")
    _refuse_training_run(demo)  # a demo stopped while training: resumed
    (demo / "demo.json").write_text("{}")
    _refuse_training_run(demo)
    _refuse_training_run(tmp_path / "missing")
    with pytest.raises(UsageError, match=r"holds a training run, not a demo: pick a new folder$"):
        _refuse_training_run(Path(training_run(tmp_path / "trained")))


def test_an_adapter_of_another_base_loads_with_allow_other_base(tmp_path, capsys):
    argv = ["eval", "--model", "tiny", "--adapter", made(OTHER_BASE, tmp_path), "--items", "2"]
    assert main([*argv, "--allow-other-base", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter"].endswith("other-base")


def test_the_base_is_hashed_once_for_several_adapters(tmp_path, monkeypatch):
    import halora.lora
    from halora.sidecar import weights_hash

    model = build_tiny()
    record = {"base_model": "tiny", "base_model_sha256": weights_hash(model)}
    folders = [adapter(tmp_path / name) for name in ("a", "b")]
    for folder in folders:
        (Path(folder) / "halora.json").write_text(json.dumps(record))
    calls = []
    monkeypatch.setattr(halora.lora, "weights_hash", lambda m: calls.append(1) or weights_hash(m))
    loaded = halora.lora.load_adapters(model, [("a", folders[0]), ("b", folders[1])])
    assert calls == [1] and set(loaded.peft_config) == {"a", "b"}
