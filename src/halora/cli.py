"""The `halora` command: one sub-command per job, each in halora/commands/<name>.py.

A command module provides `add_arguments(parser)` and `run(args) -> int`; its one-line
help lives in COMMANDS here, so `halora --help` and `--version` import no command module
(and so neither torch nor transformers). Only the command being run is loaded.
Bad input raises UsageError anywhere below; it is printed here as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from halora import __version__
from halora.errors import UsageError

COMMANDS: dict[str, str] = {
    "place": "Show the hybrid placement of a model: parameters on RRAM, SRAM (LoRA) and digital.",
    "energy": "Energy and area of LLM inference on hybrid RRAM/SRAM CIM, RRAM-only, SRAM-only and GPUs.",
    "train": "Train a LoRA adapter: lora, noisy (noise injection), reg (regulariser), halora (both) "
    "or curriculum (noise that grows over training).",
    "eval": "Evaluate a model, optionally with an adapter, clean or on one programmed chip.",
    "sweep": "Sweep adapters over noise levels and chip seeds; write results.json, CSV, summary and plots.",
    "recalibrate": "Tune an adapter's SRAM LoRA to one programmed RRAM chip (task loss, or distillation "
    "from the clean model without labels).",
    "lm-eval": "Evaluate a model (+ adapter) on one programmed chip with lm-evaluation-harness tasks.",
    "demo": "Train lora / noisy / halora adapters on SmolLM2-135M, sweep them over simulated RRAM "
    "chips, print the table and the energy bill.",
    "study": "Robustness study: train a grid of recipes, select per method on the validation split, "
    "compare on test chips with bootstrap intervals and recovery ratios.",
}


def _module_name(command: str) -> str:
    return f"halora.commands.{command.replace('-', '')}"  # "lm-eval" lives in lmeval.py


def _load(name: str):
    return importlib.import_module(_module_name(name))


def build_parser(
    commands: tuple[str, ...] | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top parser, with every command listed; the arguments of `commands` (default: all)
    are added, each from its module (config files set the command parsers' defaults)."""
    parser = argparse.ArgumentParser(
        prog="halora",
        description="LoRA on hybrid RRAM/SRAM compute-in-memory: noise, training, evaluation, energy.",
    )
    parser.add_argument("--version", action="version", version=f"halora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command_parsers = {}
    for name, help_text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if commands is None or name in commands:
            module = _load(name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run)
        command_parsers[name] = command_parser
    return parser, command_parsers


def _command_in(argv: list[str]) -> tuple[str, ...]:
    """The command named in argv: the first word that is one (top-level options take no
    value). None named: only the top-level help or version, and no module is imported."""
    return tuple(word for word in argv if word in COMMANDS)[:1]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse; where the command has --config FILE, its keys become defaults and flags win."""
    words = sys.argv[1:] if argv is None else argv
    parser, command_parsers = build_parser(_command_in(words))
    # a first pass only finds --config: a required flag (--out) may come from the file
    required = [a for p in command_parsers.values() for a in p._actions if a.required]
    for action in required:
        action.required = False
    args = parser.parse_args(argv)
    for action in required:
        action.required = True
    config_path = getattr(args, "config", None)
    if config_path:
        command_parser = command_parsers[args.command]
        command_parser.set_defaults(**_config_defaults(config_path, command_parser, args.command))
    return parser.parse_args(argv)


def _config_defaults(path: str, parser: argparse.ArgumentParser, command: str) -> dict:
    """A config file's keys (flag names, with dashes or underscores, or their aliases) as
    typed defaults of `parser`; the file and the key are named on any error. A required flag
    the file gives is no longer required on the command line."""
    from halora.settings import check_bounds, coerce, field_meta, field_registry, read_config

    where = f"config file {path}"
    dests = {
        option.lstrip("-").replace("-", "_"): action.dest
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    actions = {action.dest: action for action in parser._actions}
    types_of = field_registry(parser)
    defaults = {}
    for key, value in read_config(path).items():
        dest = dests.get(key.replace("-", "_"))
        if dest is None or dest in ("config", "help"):
            raise UsageError(f"{where}: unknown key {key}; use the flag names of `halora {command} --help`")
        if dest in types_of:
            if isinstance(value, str) and _is_repeatable(parser, dest):
                value = [value]
            value = coerce(value, types_of[dest], f"{where}: {key}")
            check_bounds(value, field_meta(parser).get(dest, {}), f"{where}: {key}")
        else:
            value = _plain_value(actions[dest], value, f"{where}: {key}")
        actions[dest].required = False
        defaults[dest] = value
    return defaults


def _is_repeatable(parser: argparse.ArgumentParser, dest: str) -> bool:
    return any(a.dest == dest and isinstance(a, argparse._AppendAction) for a in parser._actions)


def _plain_value(action: argparse.Action, value: object, where: str) -> object:
    """A config value for a flag that is no settings field (--out, --adapters, --base, ...),
    typed as the flag would type it: a wrong type is one line, not a traceback later."""
    from halora.settings import coerce

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return coerce(value, bool, where)
    if isinstance(action, argparse._AppendAction):
        return list(coerce([value] if isinstance(value, str) else value, tuple[str, ...], where))
    return coerce(value, action.type if action.type in (int, float) else str, where)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(argv)
        return int(args._run(args) or 0)
    except UsageError as err:
        print(f"halora: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("halora: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Under torchrun the Trainer opens a process group and nothing closes it: a gloo group
    left to the interpreter's exit aborted a rank now and then ("terminate called without
    an active exception"), so it is closed here, once the command is done."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
