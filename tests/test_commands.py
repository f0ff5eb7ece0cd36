"""The eval and demo commands end to end on the tiny model (the others have their own files)."""

import json
import shutil

from halora.cli import main


def mc_tasks(tmp_path) -> str:
    records = [
        {"prompt": f"{a} and {b} make", "options": [" even", " odd"], "gold": (a + b) % 2}
        for a in range(10)
        for b in range(10)
    ]
    path = tmp_path / "parity.json"
    path.write_text(json.dumps(records))
    return f"json:{path}"


def test_eval_json_on_a_programmed_chip(tmp_path, capsys):
    tasks = mc_tasks(tmp_path)
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny",
                "--tasks",
                tasks,
                "--noise",
                "gaussian:sigma=0.05",
                "--chip-seed",
                "3",
                "--items",
                "8",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["noise"] == "gaussian:sigma=0.05,scale=tile,tile=64" and result["chip_seed"] == 3
    assert result["tasks"][0]["n"] == 8 and 0.0 <= result["average"] <= 1.0


def test_eval_bad_noise_is_one_line(tmp_path, capsys):
    assert main(["eval", "--model", "tiny", "--tasks", mc_tasks(tmp_path), "--noise", "gauss:s=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gauss" in err[0]


def test_demo_pipeline_on_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--model",
        "tiny",
        "--tasks",
        mc_tasks(tmp_path),
        "--steps",
        "2",
        "--train-n",
        "8",
        "--items",
        "4",
        "--chips",
        "1",
        "--sigmas",
        "0.02",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| lora | sigma=0.02 | 1 |" in printed and "A100" in printed
    summary = json.loads((out / "demo.json").read_text())
    assert {"halora@sigma=0.02", "lora+recal@sigma=0.02", "halora+recal@sigma=0.02"} <= set(
        summary["recovery_ratio"]
    )
    results = json.loads((out / "results.json").read_text())
    recalibrated = {r["method"] for r in results["runs"] if "+" in r["method"]}
    assert {r["method"] for r in results["runs"]} - recalibrated == {"lora", "halora"}  # the preset's
    # the preset's twin correction has no gradient steps, so no +steps; one chip: no @other
    assert recalibrated == {"lora+recal", "halora+recal"}
    for name in ("results.csv", "summary.md", "accuracy_vs_sigma.png", "per_task.png"):
        assert (out / name).is_file()
    assert main(argv) == 0  # an existing demo folder resumes: nothing is trained again
    assert "already trained" in capsys.readouterr().out
    stopped = out / "adapters" / "halora"  # killed before its first checkpoint
    shutil.rmtree(stopped)
    stopped.mkdir()
    (stopped / "train_log.jsonl").write_text('{"step": 1}\n')
    assert main(argv) == 0  # starts that training over instead of refusing the folder
    assert (stopped / "adapter_model.safetensors").is_file()
    other = tmp_path / "with-curriculum"
    argv = [*argv[:-3], "--out", str(other), "--methods", "lora", "--with-curriculum", "--no-progress"]
    assert main(argv) == 0
    results = json.loads((other / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} == {"lora", "curriculum", "lora+recal"}
