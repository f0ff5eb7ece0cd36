"""The robustness study: which training recipe really protects an adapter on a noisy chip.

grid.py    the settings and the grid of arms, from a TOML file
run.py     select on validation chips, then compare on test chips
stats.py   bootstrap intervals and the chip spread
report.py  results.json and report.md
"""

from halora.study.grid import StudySettings, load_study
from halora.study.report import build_report, report_markdown
from halora.study.run import choose_arms, run_study
from halora.study.stats import Estimate, Recovery, accuracy_ci, chip_std, delta_ci, recovery_ci

__all__ = [
    "Estimate",
    "Recovery",
    "StudySettings",
    "accuracy_ci",
    "delta_ci",
    "recovery_ci",
    "build_report",
    "chip_std",
    "choose_arms",
    "load_study",
    "report_markdown",
    "run_study",
]
