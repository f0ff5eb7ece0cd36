"""`halora study`: select each method's best recipe on validation chips, compare on test chips."""

from __future__ import annotations

import argparse
from pathlib import Path

from halora.converters import add_converter_flags, converters_from
from halora.errors import UsageError
from halora.files import output_folder
from halora.settings import add_flags, given_flags
from halora.study.grid import StudySettings, load_study

STUDIES = Path(__file__).resolve().parent.parent / "presets" / "studies"


def bundled_studies() -> list[str]:
    return sorted(path.stem for path in STUDIES.glob("*.toml"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        default="reduced",
        help=f"a bundled study ({', '.join(bundled_studies())}; reduced takes about 2 h on 2 CPU "
        "cores, full is for GPUs), or a study TOML with a [study] table and [[arm]] tables "
        "(default: reduced)",
    )
    parser.add_argument("--out", required=True, help="study folder (resumes when it exists)")
    add_flags(parser, StudySettings, "study settings (override the file's [study] table)", preset=True)
    add_converter_flags(parser)


def study_path(name: str) -> Path:
    bundled = STUDIES / f"{name}.toml"
    if bundled.is_file():
        return bundled
    if not Path(name).is_file():
        raise UsageError(
            f"no study {name!r}: give a bundled one ({', '.join(bundled_studies())}) or a TOML file"
        )
    return Path(name)


def overrides(args: argparse.Namespace) -> dict:
    """The [study] values the flags set: the settings flags, and --analog with its converter
    flags (over a [study.converters] table)."""
    values = given_flags(args, StudySettings)
    converters = converters_from(args)
    if converters is not None:
        values["converters"] = converters
    return values


def run(args: argparse.Namespace) -> int:
    from halora.study import run_study

    study = load_study(study_path(args.study), overrides(args))
    run_study(study, output_folder(args.out))
    return 0
