import json
import shutil

import pytest

from halora.cli import main
from halora.commands.study import STUDIES as STUDY_PRESETS
from halora.errors import UsageError
from halora.pipeline import Arm
from halora.study import StudySettings, choose_arms, load_study

STUDY = """
[study]
model = "tiny"
tasks = "json:{data}"
train_n = 16
select_sigmas = [0.05]
select_chips = 1
val_items = 4
train_seeds = 2
test_sigmas = [0.02, 0.05]
saf = "saf:p0=0.02,p1=0.02"
test_chips = 2
test_items = 6
bootstrap = 200

[study.base]
steps = 4
batch_size = 4
lr = 0.01
warmup_steps = 0
redraw_every = 2

[[arm]]
method = "lora"

[[arm]]
method = "halora"
noise = "gaussian:sigma=0.05"
mu = [0.01, 0.1]

[[arm]]
name = "curriculum"
family = "curriculum"
method = "noisy"
noise = "gaussian:sigma=0.05"
noise_ramp_steps = 2
"""


def write_study(tmp_path, text=STUDY):
    records = [
        {"prompt": f"{a} and {b} make", "options": [" even", " odd"], "gold": (a + b) % 2}
        for a in range(12)
        for b in range(12)
    ]
    data = tmp_path / "parity.json"
    data.write_text(json.dumps(records))
    path = tmp_path / "study.toml"
    path.write_text(text.replace("{data}", str(data)))
    return path


def test_grid_expansion_and_names(tmp_path):
    study = load_study(write_study(tmp_path))
    assert [a.name for a in study.arms] == ["lora", "halora-mu0_01", "halora-mu0_1", "curriculum"]
    assert study.arms[1].settings == {"train_noise": "gaussian:sigma=0.05", "mu": 0.01}
    assert study.arms[3].group == "curriculum" and study.arms[1].group == "halora"
    assert study.test_sigmas == (0.02, 0.05)


@pytest.mark.parametrize(
    "change, message",
    [
        ("mu = [0.01, 0.1]", None),
        ('mu = "high"', "mu must be a number"),
        ('colour = "red"', "unknown key colour"),
    ],
)
def test_bad_arms(tmp_path, change, message):
    text = STUDY.replace("mu = [0.01, 0.1]", change)
    if message is None:
        load_study(write_study(tmp_path, text))
        return
    with pytest.raises(UsageError, match=message):
        load_study(write_study(tmp_path, text))


def test_study_needs_its_baseline():
    with pytest.raises(UsageError, match="baseline"):
        StudySettings(arms=(Arm("h", "halora"),))


def record(method, task, accuracy_items, seed=0, spec="none", noise="clean"):
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "spec": spec,
        "noise": noise,
        "items": "".join(map(str, accuracy_items)),
        "n": len(accuracy_items),
        "accuracy": sum(accuracy_items) / len(accuracy_items),
    }


def test_choose_arms_by_noisy_validation_accuracy():
    study = StudySettings(arms=(Arm("lora", "lora"), Arm("h1", "halora"), Arm("h2", "halora")))
    records = [
        record("lora", "t", [1, 0], spec="g", noise="gaussian"),
        record("h1", "t", [0, 0], spec="g", noise="gaussian"),
        record("h1", "t", [1, 1]),
        record("h2", "t", [1, 1], spec="g", noise="gaussian"),
    ]
    assert choose_arms(study, records) == {"lora": "lora", "halora": "h2"}


def test_study_end_to_end_on_tiny(tmp_path, capsys):
    path = write_study(tmp_path)
    out = tmp_path / "out"
    assert main(["study", "--study", str(path), "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["chosen"]) == {"lora", "halora", "curriculum"}
    rows = report["final"]["loglik"]["rows"]
    specs = {row["spec"] for row in rows}
    assert "none" in specs and len(specs) == 4  # clean, two sigmas, SAF
    for row in rows:
        assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
        assert row["delta_ci95"][0] <= row["delta_vs_baseline"] <= row["delta_ci95"][1]
        if row["method"] == "lora":
            assert row["delta_vs_baseline"] == 0.0
        assert row["cells"] == (1 if row["spec"] == "none" else 2) * 2  # chips x training seeds
    assert set(report["final"]["loglik"]["recovery"]) == specs - {"none"}
    noisy_chips = {
        part: {seed for seeds in report["chips"][part].values() for seed in seeds}  # clean lists none
        for part in ("selection", "test")
    }
    assert noisy_chips["test"] == {0, 1} and noisy_chips["selection"] == {100_000}
    markdown = (out / "report.md").read_text()
    assert "Recovery ratio" in markdown and "Chosen:" in markdown
    trained = sorted(p.parent.name + "/" + p.name for p in (out / "adapters").glob("*/seed*"))
    assert len(trained) == 4 + 3  # every arm at seed 0, each of the 3 kept arms at seed 1 too
    mtimes = {p: p.stat().st_mtime for p in (out / "adapters").rglob("adapter_model.safetensors")}
    assert main(["study", "--study", str(path), "--out", str(out)]) == 0  # resumes: nothing retrained
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    stopped = out / "adapters" / "lora" / "seed1"  # killed before its first checkpoint
    shutil.rmtree(stopped)
    stopped.mkdir()
    (stopped / "train_log.jsonl").write_text('{"step": 1}\n')
    assert main(["study", "--study", str(path), "--out", str(out)]) == 0  # starts that run over
    assert (stopped / "adapter_model.safetensors").is_file()


def test_every_bundled_study_is_tested():
    from halora.commands.study import bundled_studies

    assert set(bundled_studies()) >= {"reduced", "longer", "layers", "full"}


@pytest.mark.parametrize("name", sorted(p.stem for p in STUDY_PRESETS.glob("*.toml")))
def test_bundled_studies_load_and_every_arm_is_a_valid_recipe(name):
    from halora.commands.study import STUDIES

    study = load_study(STUDIES / f"{name}.toml")
    assert study.model in ("smollm2-135m", "gemma3-270m") and study.train_seeds >= 1
    for arm in study.arms:  # TrainSettings checks every value: a typo in a preset fails here
        assert arm.train_settings(study.base, seed=0).method == arm.method


def test_study_flags_override_the_file(tmp_path):
    from halora.cli import _parse
    from halora.commands.study import study_path
    from halora.settings import given_flags

    path = write_study(tmp_path)
    args = _parse(["study", "--study", str(path), "--out", "o", "--test-chips", "3", "--test-sigmas", "0.01"])
    study = load_study(study_path(args.study), given_flags(args, StudySettings))
    assert (study.test_chips, study.test_sigmas, study.test_items) == (3, (0.01,), 6)
    with pytest.raises(UsageError, match="no study 'nosuch'.*reduced"):
        study_path("nosuch")


def test_study_recalibration_axis_on_tiny(tmp_path):
    path = write_study(tmp_path)
    out = tmp_path / "out"
    flags = [
        "--recal-steps",
        "2",
        "--recal-sigmas",
        "0.05",
        "--recal-from",
        "lora,halora",
        "--recal-calib-n",
        "8",
    ]
    assert main(["study", "--study", str(path), "--out", str(out), "--train-seeds", "1", *flags]) == 0
    table = json.loads((out / "results.json").read_text())["recalibration"]
    methods = {row["method"] for row in table["rows"]}
    assert {"lora@0", "lora@0+recal", "lora@0+recal@other", "lora@0+steps"} <= methods
    halora = [row for row in table["rows"] if row["source"].startswith("halora")]
    assert {row["method"].split("@0")[1] for row in halora} == {"", "+steps", "+recal", "+recal@other"}
    assert all(row["recovery"] is not None for row in halora)  # each against lora@0's drop
    assert table["baseline"] == "lora@0" and len(table["own_minus_other"]) == 2
    for row in table["rows"]:
        assert row["chips"] == [0, 1] and row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
    assert "Per-chip recalibration" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "arm, message",
    [
        ("method = 3", "needs a method"),
        ('method = "lora"\nname = 3', "name must be a string"),
        ('method = "lora"\nrank = "x"', "rank must be an integer"),
    ],
)
def test_bad_arm_values_are_one_line(tmp_path, arm, message):
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nmodel = "tiny"\n\n[[arm]]\n{arm}\n')
    with pytest.raises(UsageError, match=message):
        load_study(path)


def test_arm_that_is_not_a_table_is_one_line(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('arm = 3\n[study]\nmodel = "tiny"\n')
    with pytest.raises(UsageError, match=r"\[\[arm\]\] tables"):
        load_study(path)
