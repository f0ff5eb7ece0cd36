"""Flags shared by several commands, parsed into the library's settings in one place."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

from halora.cim import DEFAULT_RRAM_TARGETS, Placement
from halora.errors import UsageError
from halora.lora import PAPER_TARGETS, LoraSettings
from halora.models import SMOLLM2


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=SMOLLM2,
        help="smollm2-135m (embedded), tiny (random, for tests), or a local "
        "transformers model folder (default: %(default)s)",
    )
    group.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hybrid placement")
    group.add_argument(
        "--rram-targets",
        type=csv_list,
        default=DEFAULT_RRAM_TARGETS,
        help="block linear layers on RRAM, comma-separated, or all-linear "
        f"(default: {','.join(DEFAULT_RRAM_TARGETS)})",
    )
    group.add_argument(
        "--lm-head", action="store_true", help="put lm_head on RRAM too (the paper keeps it digital)"
    )


def add_lora_arguments(parser: argparse.ArgumentParser, rank_default: int | None = 4) -> None:
    group = parser.add_argument_group("LoRA")
    group.add_argument("--rank", type=int, default=rank_default, help="LoRA rank r")
    group.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: 2r)")
    group.add_argument("--lora-dropout", type=float, default=0.05)
    group.add_argument(
        "--targets",
        type=csv_list,
        default=PAPER_TARGETS,
        help=f"LoRA target modules (default: {','.join(PAPER_TARGETS)})",
    )
    group.add_argument("--rslora", action="store_true", help="rank-stabilised scaling α/√r")


def placement_from(args: argparse.Namespace) -> Placement:
    return Placement(rram_targets=tuple(args.rram_targets), lm_head=args.lm_head)


def lora_from(args: argparse.Namespace) -> LoraSettings:
    alpha = args.alpha if args.alpha is not None else 2.0 * args.rank
    return LoraSettings(
        rank=args.rank,
        alpha=alpha,
        dropout=args.lora_dropout,
        targets=tuple(args.targets),
        rslora=args.rslora,
    )


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    settings_class,
    helps: dict[str, str],
    title: str,
    skip: tuple[str, ...] = (),
    default_note: str = "default: %(default)s",
) -> None:
    """One flag per field of a settings dataclass, so flags, config keys and fields match.

    bool fields become --flag / --no-flag; tuple fields take comma-separated values.
    """
    group = parser.add_argument_group(title)
    for spec in dataclasses.fields(settings_class):
        if spec.name in skip:
            continue
        flag = "--" + spec.name.replace("_", "-")
        default = spec.default
        help_text = f"{helps.get(spec.name, '')} ({default_note})".strip()
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif isinstance(default, tuple):
            group.add_argument(
                flag, type=_typed_list(type(default[0]) if default else str), default=default, help=help_text
            )
        else:
            group.add_argument(flag, type=type(default), default=default, help=help_text)


def _typed_list(element_type: type):
    def parse(text: str) -> tuple:
        return tuple(element_type(part) for part in csv_list(text))

    parse.__name__ = f"comma-separated {element_type.__name__}"  # argparse names it in errors
    return parse


def settings_from(args: argparse.Namespace, settings_class, **overrides):
    values = {
        spec.name: getattr(args, spec.name)
        for spec in dataclasses.fields(settings_class)
        if hasattr(args, spec.name)
    }
    values = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in {**values, **overrides}.items()
    }
    return settings_class(**values)


def load_config_file(path: str) -> dict:
    """A TOML or YAML file whose keys are the command's flags (dashes or underscores)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file {path} does not exist")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as err:  # each parser raises its own error type
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"config file {path} cannot be parsed: {first}") from err
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of flag = value")
    return {key.replace("-", "_"): value for key, value in data.items()}
