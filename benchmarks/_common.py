"""Helpers shared by the benchmark scripts: threads, environment, medians, output.

A benchmark prints one JSON object on stdout (progress goes to stderr) and writes the
same object atomically to benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from halora import files

RESULTS = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 = torch's default). On a shared 2-core "
        "machine torch's OpenMP threads oversubscribe the cores and a step that takes "
        "3 s single-threaded can take 20-100 s, so one thread gives steadier numbers",
    )


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rounded(values: Sequence[float], digits: int = 4) -> list[float]:
    return [round(v, digits) for v in values]


def environment() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_start": round(os.getloadavg()[0], 2),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": [Path(sys.executable).name, *sys.argv],
    }


def emit(name: str, result: dict[str, Any]) -> None:
    """Print the result on stdout and save it atomically to results/<name>.json."""
    result = {**result}
    result.setdefault("environment", {})["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    files.write_json(RESULTS / f"{name}.json", result)
    print(json.dumps(result, indent=2), flush=True)
