"""Robustness of the trained adapters on simulated chips, from a demo or sweep folder.

For each noise condition: the recovery ratio (halora - lora_on_chip) / (lora_clean -
lora_on_chip) on the task-averaged accuracy, and each method's std over chip seeds. With
no folder given it runs `halora demo --quick` into a temporary folder first (about 5 min).

    .venv/bin/python benchmarks/bench_robustness.py runs/demo-20261128-233000
    .venv/bin/python benchmarks/bench_robustness.py          # runs the quick demo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import emit, environment, log

from halora.report import recovery_ratio, summary_rows

NAME = "bench_robustness"


def robustness(records: list[dict], robust: str = "halora", baseline: str = "lora") -> dict:
    rows = summary_rows(records)
    conditions = [r["condition"] for r in rows if r["method"] == baseline and r["condition"] != "clean"]
    table = {}
    for condition in conditions:
        per_method = {
            r["method"]: {
                "mean": round(r["tasks"]["average"]["mean"], 2),
                "seed_std": round(r["tasks"]["average"]["std"], 2),
                "seeds": r["seeds"],
            }
            for r in rows
            if r["condition"] == condition
        }
        ratios = {
            method: recovery_ratio(rows, condition, method, baseline)
            for method in per_method
            if method != baseline
        }
        rounded = {m: None if v is None else round(v, 3) for m, v in ratios.items()}
        table[condition] = {"methods": per_method, "recovery_ratio": rounded}
    clean = {r["method"]: round(r["tasks"]["average"]["mean"], 2) for r in rows if r["condition"] == "clean"}
    return {"clean": clean, "conditions": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="a demo or sweep folder holding results.json")
    args = parser.parse_args()
    env = environment()
    if args.folder:
        folder = Path(args.folder)
    else:
        folder = Path(tempfile.mkdtemp(prefix="halora-bench-robustness-"))
        log(f"running halora demo --quick into {folder}")
        subprocess.run(
            [sys.executable, "-m", "halora.cli", "demo", "--quick", "--no-progress", "--out", str(folder)],
            check=True,
            stdout=sys.stderr,
        )
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    emit(
        NAME,
        {
            "benchmark": NAME,
            "source": str(folder),
            "settings": results["meta"].get("demo"),
            **robustness(results["runs"]),
            "environment": env,
        },
    )


if __name__ == "__main__":
    main()
