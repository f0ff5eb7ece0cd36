"""`halora study`: select each method's best recipe on validation chips, compare on test chips."""

from __future__ import annotations

import argparse
from pathlib import Path

from halora.errors import UsageError

HELP = (
    "Robustness study: train a grid of recipes, select per method on the validation split, "
    "compare on test chips with bootstrap intervals and recovery ratios."
)
STUDIES = Path(__file__).resolve().parent.parent / "presets" / "studies"


def bundled_studies() -> list[str]:
    return sorted(path.stem for path in STUDIES.glob("*.toml"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        default="reduced",
        help=f"a bundled study ({', '.join(bundled_studies())}; reduced takes about 70 min on 2 CPU "
        "cores, full is for GPUs), or a study TOML with a [study] table and [[arm]] tables "
        "(default: reduced)",
    )
    parser.add_argument("--out", required=True, help="study folder (resumes when it exists)")
    parser.add_argument("--model", help="override [study] model")
    parser.add_argument("--tasks", help="override [study] tasks")


def study_path(name: str) -> Path:
    bundled = STUDIES / f"{name}.toml"
    if bundled.is_file():
        return bundled
    if not Path(name).is_file():
        raise UsageError(
            f"no study {name!r}: give a bundled one ({', '.join(bundled_studies())}) or a TOML file"
        )
    return Path(name)


def run(args: argparse.Namespace) -> int:
    from halora.study import load_study, run_study

    overrides = {key: value for key in ("model", "tasks") if (value := getattr(args, key))}
    run_study(load_study(study_path(args.study), overrides), args.out)
    return 0
