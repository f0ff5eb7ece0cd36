"""Sweep records -> results.json, CSV, a Markdown summary and plots.

A record is one cell: {method, task, noise, spec, sigma, seed, accuracy, n, items, ...}.
Summaries average over chip seeds (mean +/- std) per method, noise condition and task,
and over tasks for the "average" column (each seed's task average first, then its spread
over seeds, so the std is the chip-to-chip spread of the average). The average also gets
a 95 % interval from the hierarchical bootstrap of halora.study.stats (chips, then test
items; one training seed per method label).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from pathlib import Path

from halora import files
from halora.sweep import BASE

AVERAGE = "average"
BASELINE = "lora"  # every recovery ratio is of this method's drop
CSV_KEYS = (
    "method",
    "task",
    "noise",
    "spec",
    "sigma",
    "seed",
    "accuracy",
    "acc_norm",
    "n",
    "scorer",
    "chance",
)


def write_results(out: str | Path, records: list[dict], meta: dict) -> dict[str, Path]:
    """results.json, results.csv and summary.md in `out`, each written atomically."""
    out = Path(out)
    records = sorted(records, key=_order)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "summary.md"}
    rows = summary_rows(records)  # bootstrapped once, for the JSON and the Markdown alike
    files.write_json(paths["json"], {"meta": meta, "runs": records, "summary": rows})
    files.write_text(paths["csv"], to_csv(records))
    files.write_text(paths["md"], markdown_summary(records, meta.get("title", "halora sweep"), rows))
    return paths


def _order(record: dict) -> tuple:
    return (
        record["method"],
        record["noise"] != "clean",
        record["noise"],
        record["sigma"] if record["sigma"] is not None else -1,
        record["seed"],
        record["task"],
    )


def to_csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_KEYS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def condition_label(record: dict) -> str:
    if record["noise"] == "clean":
        return "clean"
    if record["sigma"] is not None and record["noise"] == "gaussian":
        return f"sigma={record['sigma']:g}"
    return record["spec"]


def summary_rows(records: list[dict], resamples: int = 1000) -> list[dict]:
    """One row per (method, condition): mean and std over seeds, per task and on average;
    the average also has `low` and `high`, its 95 % bootstrap interval (None without
    per-item results)."""
    cells: dict[tuple, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    meta: dict[tuple, dict] = {}
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        key = (record["method"], record["spec"])
        cells[key][record["seed"]][record["task"]] = 100.0 * record["accuracy"]
        meta[key] = record
        grouped[key].append(record)
    rows = []
    for key, by_seed in cells.items():
        tasks = sorted({task for scores in by_seed.values() for task in scores})
        row = {
            "method": key[0],
            "noise": meta[key]["noise"],
            "spec": key[1],
            "sigma": meta[key]["sigma"],
            "condition": condition_label(meta[key]),
            "seeds": len(by_seed),
            "tasks": {},
        }
        for task in tasks:
            row["tasks"][task] = _mean_std([s[task] for s in by_seed.values() if task in s])
        complete = [s for s in by_seed.values() if len(s) == len(tasks)]
        row["tasks"][AVERAGE] = _mean_std([statistics.fmean(s.values()) for s in complete])
        row["tasks"][AVERAGE].update(_interval(grouped[key], resamples))
        row["acc_norm"] = _acc_norm(grouped[key], resamples)
        rows.append(row)
    return sorted(
        rows,
        key=lambda r: (
            r["method"],
            r["noise"] != "clean",
            r["noise"],
            r["sigma"] if r["sigma"] is not None else -1,
            r["spec"],
        ),
    )


def _interval(cells: list[dict], resamples: int) -> dict[str, float | None]:
    """The task average's 95 % interval over chips and items; None where the cells lack
    per-item results (records written before they were kept)."""
    # imported here: halora.study's __init__ loads the training pipeline, and a module of it
    # importing halora.report at its top would otherwise be a circular import
    from halora.study.stats import accuracy_ci

    try:
        estimate = accuracy_ci(cells, resamples)
    except ValueError:
        return {"low": None, "high": None}
    return {"low": estimate.low, "high": estimate.high}


def _acc_norm(cells: list[dict], resamples: int) -> dict[str, float] | None:
    """The task-averaged acc_norm (log-likelihood per byte, as lm-eval reports it beside
    acc) with its interval; None where the cells have no per-item acc_norm (generation)."""
    from halora.study.stats import accuracy_ci

    if not all(cell.get("items_norm") for cell in cells):
        return None
    estimate = accuracy_ci(cells, resamples, field="items_norm")
    return {"mean": estimate.value, "low": estimate.low, "high": estimate.high}


def _mean_std(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "std": float("nan")}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def average_of(rows: list[dict], method: str, condition: str) -> dict[str, float] | None:
    for row in rows:
        if row["method"] == method and row["condition"] == condition:
            return row["tasks"][AVERAGE]
    return None


def recovery(clean: float, on_chip: float, robust_on_chip: float) -> float | None:
    """The recovery ratio (robust - baseline on chip) / (baseline clean - baseline on chip):
    1.0 means the robust method recovers all of the accuracy the baseline loses on the chip.
    None where the baseline loses nothing (the ratio would divide by zero or flip sign)."""
    lost = clean - on_chip
    return (robust_on_chip - on_chip) / lost if lost > 0 else None


def recovery_ratio(
    rows: list[dict], condition: str, robust: str = "halora", baseline: str = "lora"
) -> float | None:
    """The recovery ratio of `robust` on one condition of summary rows (task averages)."""
    clean = average_of(rows, baseline, "clean")
    lost = average_of(rows, baseline, condition)
    kept = average_of(rows, robust, condition)
    if not (clean and lost and kept):
        return None
    return recovery(clean["mean"], lost["mean"], kept["mean"])


def recovery_estimate(
    records: list[dict],
    condition: str,
    robust: str = "halora",
    baseline: str = "lora",
    resamples: int = 1000,
    seed: int = 0,
) -> dict | None:
    """The recovery ratio of `robust` on one condition (a condition_label) with its 95 %
    interval from one joint bootstrap of the three accuracies over chips and items, as
    {value, low, high, bounded, drop_significant, drop}; None where a side is missing or
    the cells lack per-item results. Quote the ratio only where drop_significant."""
    from halora.study.stats import recovery_ci  # here, not at the top: see _interval

    on_chip = [r for r in records if condition_label(r) == condition and r["noise"] != "clean"]
    method = [r for r in on_chip if r["method"] == robust]
    base = [r for r in on_chip if r["method"] == baseline]
    clean = [r for r in records if r["noise"] == "clean" and r["method"] == baseline]
    if not (method and base and clean):
        return None
    try:
        return recovery_ci(method, base, clean, resamples, seed).to_json()
    except ValueError:
        return None


def markdown_summary(records: list[dict], title: str, rows: list[dict] | None = None) -> str:
    """The summary table and recovery ratios; `rows` are summary_rows(records) if computed."""
    rows = rows if rows is not None else summary_rows(records)
    tasks = sorted({task for row in rows for task in row["tasks"] if task != AVERAGE})
    header = ["method", "chip", "seeds", *tasks, AVERAGE, "acc_norm average"]
    lines = [
        f"# {title}",
        "",
        "Accuracy (acc) in % (per task: mean ± std over chip seeds; average: mean [95 % interval] "
        "from a bootstrap over chips and test items); acc_norm: the same average with options "
        "scored per byte, as lm-eval reports it.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [_fmt(row["tasks"].get(task)) for task in tasks]
        cells += [_fmt_ci(row["tasks"].get(AVERAGE)), _fmt_ci(row.get("acc_norm"))]
        lines.append(f"| {row['method']} | {row['condition']} | {row['seeds']} | " + " | ".join(cells) + " |")
    ratios = [
        (row["method"], row["condition"], recovery_estimate(records, row["condition"], robust=row["method"]))
        for row in rows
        if row["method"] not in (BASELINE, BASE) and row["noise"] != "clean"
    ]
    if any(ratio is not None for *_, ratio in ratios):
        lines += [
            "",
            f"Recovery ratio (method − {BASELINE} on chip) / ({BASELINE} clean − {BASELINE} on chip), "
            "95 % interval:",
            "",
        ]
        lines += [
            f"- {method} on {condition}: {_fmt_recovery(ratio)}"
            for method, condition, ratio in ratios
            if ratio is not None
        ]
    return "\n".join(lines) + "\n"


def _fmt_recovery(ratio: dict) -> str:
    """A ratio only where lora's drop is significant: else its denominator may be 0."""
    if not ratio["drop_significant"] or ratio["value"] is None:
        return "n/a (lora's drop is not significant)"
    return f"{ratio['value']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}]"


def _fmt(stat: dict[str, float] | None) -> str:
    if not stat or stat["mean"] != stat["mean"]:
        return "–"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _fmt_ci(stat: dict | None) -> str:
    """`mean [low, high]`, or mean ± std where there is no interval."""
    if not stat or stat.get("low") is None or stat["mean"] != stat["mean"]:
        return _fmt(stat)
    return f"{stat['mean']:.1f} [{stat['low']:.1f}, {stat['high']:.1f}]"


def _error_bar(stat: dict) -> tuple[float, float]:
    """(below, above) the mean: the 95 % interval where there is one, else the std."""
    if stat.get("low") is None:
        return stat["std"], stat["std"]
    return max(stat["mean"] - stat["low"], 0.0), max(stat["high"] - stat["mean"], 0.0)


def plot_sweep(records: list[dict], out: str | Path) -> list[Path]:
    """accuracy_vs_sigma.png (average, error bars: the 95 % bootstrap interval) and
    per_task.png (one panel per task, error bars: the std over chip seeds)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary_rows(records) if r["noise"] in ("clean", "gaussian")]
    methods = sorted({r["method"] for r in rows})
    tasks = sorted({t for r in rows for t in r["tasks"] if t != AVERAGE})
    out = Path(out)
    written = []
    for name, panels in (("accuracy_vs_sigma.png", [AVERAGE]), ("per_task.png", tasks)):
        columns = min(len(panels), 3)
        rows_count = -(-len(panels) // columns)
        figure, axes = plt.subplots(
            rows_count, columns, figsize=(4.5 * columns, 3.4 * rows_count), squeeze=False
        )
        for axis, panel in zip(axes.flat, panels, strict=False):
            for method in methods:
                points = sorted(
                    (r["sigma"], r["tasks"][panel])
                    for r in rows
                    if r["method"] == method and panel in r["tasks"]
                )
                if points:
                    axis.errorbar(
                        [p[0] for p in points],
                        [p[1]["mean"] for p in points],
                        yerr=np.transpose([_error_bar(p[1]) for p in points]),
                        marker="o",
                        capsize=3,
                        label=method,
                    )
            axis.set_title(panel)
            axis.set_xlabel("sigma (tile-64 Gaussian, x max|W_tile|)")
            axis.set_ylabel("accuracy (%)")
            axis.grid(alpha=0.3)
        for axis in list(axes.flat)[len(panels) :]:
            axis.set_visible(False)
        axes.flat[0].legend()
        figure.tight_layout()
        files.write_with(out / name, lambda path, fig=figure: fig.savefig(path, dpi=120, format="png"))
        plt.close(figure)
        written.append(out / name)
    return written
