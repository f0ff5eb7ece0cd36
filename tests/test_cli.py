from pathlib import Path

import pytest

from halora.cli import _parse, main

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_shipped_configs_use_real_flags(config):
    command = "train" if "train" in config.name else "sweep"
    args = _parse([command, "--config", str(config), "--out", "/tmp/unused"])
    text = config.read_text()
    if command == "sweep":
        assert args.sigmas == (0.005, 0.01, 0.02) and args.seeds == 5
        assert args.extra_noise == ["saf:p0=0.01,p1=0.01"]
    else:
        assert args.method == "halora" and f"mu = {args.mu}" in text


def test_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [unclosed")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "cannot be parsed" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.toml"), "--out", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "halora" in capsys.readouterr().out
