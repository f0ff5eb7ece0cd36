"""`halora study`: select each method's best recipe on validation chips, compare on test chips."""

from __future__ import annotations

import argparse
from pathlib import Path

from halora.study import load_study, run_study

HELP = (
    "Robustness study: train a grid of recipes, select per method on the validation split, "
    "compare on test chips with bootstrap intervals and recovery ratios."
)
STUDIES = Path(__file__).resolve().parent.parent / "presets" / "studies"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        default="reduced",
        help="reduced (about 30 min on 2 CPU cores), full (for GPUs), or a study "
        "TOML with a [study] table and [[arm]] tables (default: reduced)",
    )
    parser.add_argument("--out", required=True, help="study folder (resumes when it exists)")
    parser.add_argument("--model", help="override [study] model")
    parser.add_argument("--tasks", help="override [study] tasks")


def run(args: argparse.Namespace) -> int:
    overrides = {key: value for key in ("model", "tasks") if (value := getattr(args, key))}
    bundled = STUDIES / f"{args.study}.toml"
    path = bundled if bundled.is_file() else Path(args.study)
    run_study(load_study(path, overrides), args.out)
    return 0
