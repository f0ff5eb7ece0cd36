"""Bad input at the command boundary: one line naming the problem, exit status 2, no
traceback, and nothing left behind in --out."""

from __future__ import annotations

import pytest
import torch

from halora.cli import main

NEEDS_NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")


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
    }


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
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(name, tmp_path, capsys):
    argv, needle = cases(tmp_path)[name]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("halora: error: ") and needle in err[0], err
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


@NEEDS_NO_GPU
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    assert main(["eval", "--model", "tiny", "--device", "cuda"]) == 2
    assert "no CUDA device is available here" in capsys.readouterr().err
