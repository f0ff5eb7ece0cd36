from pathlib import Path

import pytest

from halora.cli import COMMANDS, _parse, main

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_the_shipped_configs_are_found():
    assert {c.name for c in CONFIGS} >= {"sweep_paper.toml", "train_halora.toml"}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_shipped_configs_use_real_flags(config):
    command = "train" if "train" in config.name else "sweep"
    args = _parse([command, "--config", str(config), "--out", "/tmp/unused"])
    text = config.read_text()
    if command == "sweep":
        assert args.sigmas == (0.005, 0.01, 0.02) and args.chips == 5 and args.items == 100
        assert args.extra_noise == ("saf:p0=0.01,p1=0.01",)
    else:
        assert args.method == "halora" and f"mu = {args.mu}" in text
        assert args.train_noise.startswith("gaussian:sigma=0.01") and args.targets[0] == "q_proj"


def test_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [unclosed")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "cannot be parsed" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.toml"), "--out", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    typed = tmp_path / "typed.toml"
    typed.write_text('steps = "many"\n')
    assert main(["train", "--config", str(typed), "--out", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(typed) in err[0] and "steps" in err[0] and "integer" in err[0]
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 1\n")
    assert main(["train", "--config", str(unknown), "--out", "x"]) == 2
    assert "unknown key colour" in capsys.readouterr().err


def test_one_name_per_meaning_with_old_spellings_as_aliases():
    new = _parse(["eval", "--chip-seed", "3", "--items", "7", "--eval-batch-size", "2"])
    old = _parse(["eval", "--seed", "3", "--n", "7", "--batch-size", "2"])
    for args in (new, old):
        assert (args.chip_seed, args.items, args.eval_batch_size) == (3, 7, 2)
    sweep = _parse(
        ["sweep", "--out", "o", "--seeds", "4", "--test-n", "9", "--extra-noise", "saf:p0=0.1,p1=0"]
    )
    assert (sweep.chips, sweep.items, sweep.extra_noise) == (4, 9, ["saf:p0=0.1,p1=0"])
    train = _parse(["train", "--out", "o", "--noise", "gaussian:sigma=0.1", "--seed", "5"])
    assert (train.train_noise, train.seed) == ("gaussian:sigma=0.1", 5)
    lm = _parse(["lm-eval", "--lm-tasks", "t", "--limit", "3", "--out", "folder"])
    assert lm.items == 3


def test_a_bad_flag_value_is_one_line(capsys):
    assert main(["eval", "--items", "many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["halora: error: --items must be an integer, got 'many'"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_renders_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: halora {command}") and "--model" in text


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "halora" in capsys.readouterr().out


def test_top_level_help_and_version_import_no_command_module():
    """`halora --help` and `--version` answer at once: torch, transformers and the command
    modules stay unloaded (checked in a fresh interpreter)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from halora.cli import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'transformers', 'peft', 'halora.commands.train')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print('LOADED', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out and "COMMAND" in out
