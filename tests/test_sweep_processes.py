"""A sweep split over processes the way torchrun starts them: RANK and WORLD_SIZE in the
environment, nothing else (no process group, no torchrun needed; also on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from halora.cli import main
from halora.lora import LoraSettings, attach_lora
from halora.models import build_tiny


@pytest.fixture
def sweep_args(tmp_path):
    """A sweep of the base and one random adapter over 3 chips (clean + 2 seeds of one sigma)."""
    torch.manual_seed(1)
    model = attach_lora(build_tiny(), LoraSettings(rank=2))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    records = [
        {"prompt": f"{a} and {b}", "options": [" yes", " no"], "gold": (a + b) % 2, "split": "test"}
        for a in range(3)
        for b in range(3)
    ]
    (tmp_path / "pairs.json").write_text(json.dumps(records))
    return [
        "sweep",
        "--model",
        "tiny",
        "--tasks",
        f"json:{tmp_path / 'pairs.json'}",
        "--base",
        "--adapters",
        f"lora={tmp_path / 'adapter'}",
        "--sigmas",
        "0.05",
        "--chips",
        "2",
        "--items",
        "9",
    ]


def launch(argv: list[str], rank: int, world: int, logs) -> subprocess.Popen:
    """One rank as torchrun would start it, its output into logs/rank{R}.out and .err."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env.update(RANK=str(rank), WORLD_SIZE=str(world), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    logs.mkdir(exist_ok=True)
    with open(logs / f"rank{rank}.out", "w") as out, open(logs / f"rank{rank}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "halora.cli", *argv], env=env, stdout=out, stderr=err)


def cells(path) -> dict[str, dict]:
    return {record["key"]: record for record in map(json.loads, path.read_text().splitlines())}


def runs(out) -> list[str]:
    results = json.loads((out / "results.json").read_text())
    return sorted(json.dumps(r, sort_keys=True) for r in results["runs"])


def test_two_processes_split_the_chips_and_rank_0_gathers_them(sweep_args, tmp_path):
    split, logs = tmp_path / "split", tmp_path / "logs"
    ranks = {rank: launch([*sweep_args, "--out", str(split)], rank, 2, logs) for rank in (1, 0)}
    for rank, process in ranks.items():
        if process.wait(timeout=600) != 0:
            for other in ranks.values():
                other.kill()  # rank 0 would wait for a failed rank's share
            pytest.fail(f"rank {rank} failed: " + (logs / f"rank{rank}.err").read_text()[-3000:])
    assert "wrote " in (logs / "rank0.out").read_text()
    assert (logs / "rank1.out").read_text() == ""  # only rank 0 gathers, writes and prints

    # chips in order: clean, sigma 0.05 seed 0, seed 1; rank r takes chips r, r + 2, ...
    chips = {0: {(0.0, 0), (0.05, 1)}, 1: {(0.05, 0)}}
    for rank, share in chips.items():
        mine = cells(split / f"cells-rank{rank}.jsonl")
        assert {(r["sigma"], r["seed"]) for r in mine.values()} == share
        assert len(mine) == 2 * len(share)  # base and lora on each of its chips
        assert not (split / f"cells-rank{rank}.lock").exists()

    single = tmp_path / "single"
    assert main([*sweep_args, "--out", str(single)]) == 0
    assert runs(split) == runs(single)
    assert len(runs(single)) == 2 * 3
