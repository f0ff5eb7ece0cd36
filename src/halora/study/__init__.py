"""The robustness study: which training recipe really protects an adapter on a noisy chip.

grid.py    the settings and the grid of arms, from a TOML file
run.py     select on validation chips, then compare on test chips
stats.py   bootstrap intervals and the chip spread
report.py  results.json and report.md
"""

from halora.study.grid import StudySettings, load_study
from halora.study.report import build_report, report_markdown
from halora.study.run import choose_arms, run_study
from halora.study.stats import bootstrap_delta_ci, bootstrap_mean_ci, chip_std

__all__ = [
    "StudySettings",
    "bootstrap_delta_ci",
    "bootstrap_mean_ci",
    "build_report",
    "chip_std",
    "choose_arms",
    "load_study",
    "report_markdown",
    "run_study",
]
