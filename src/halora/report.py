"""Sweep records -> results.json, CSV, a Markdown summary and plots.

A record is one cell: {method, task, noise, spec, sigma, seed, t, compensate, accuracy, n,
items, ...}; on the time axis `t` is the time after programming in seconds and a
compensated condition's spec ends in "|comp" (halora.sweep).
Summaries average over chip seeds (mean +/- std) per method, noise condition and task,
and over tasks for the "average" column (each seed's task average first, then its spread
over seeds, so the std is the chip-to-chip spread of the average). The average also gets
a 95 % interval from the hierarchical bootstrap of halora.study.stats (chips, then test
items; one training seed per method label). A sweep with a time axis also gets
accuracy_vs_time.png: accuracy against t per method, without (solid) and with (dashed) drift
compensation.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from pathlib import Path

from halora import files
from halora.noise.base import format_duration
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
    "t",
    "compensate",
    "accuracy",
    "acc_norm",
    "n",
    "scorer",
    "chance",
)


def write_results(
    out: str | Path,
    records: list[dict],
    meta: dict,
    extra: dict | None = None,
    appendix: list[str] | None = None,
) -> dict[str, Path]:
    """results.json, results.csv and summary.md in `out`, each written atomically. `extra`
    adds top-level keys to results.json and `appendix` lines to the end of summary.md (the
    sweep's recalibration table); without them both are what they always were."""
    out = Path(out)
    records = sorted(records, key=_order)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "summary.md"}
    rows = summary_rows(records)  # bootstrapped once, for the JSON and the Markdown alike
    files.write_json(paths["json"], {"meta": meta, "runs": records, "summary": rows, **(extra or {})})
    files.write_text(paths["csv"], to_csv(records))
    markdown = markdown_summary(records, meta.get("title", "halora sweep"), rows)
    if appendix:
        markdown += "\n" + "\n".join(appendix).rstrip("\n") + "\n"
    files.write_text(paths["md"], markdown)
    return paths


def _order(record: dict) -> tuple:
    return (
        record["method"],
        record["noise"] != "clean",
        record["noise"],
        record["sigma"] if record["sigma"] is not None else -1,
        *_time_order(record),
        record["seed"],
        record["task"],
    )


def _time_order(record: dict) -> tuple[float, bool]:
    """Times in time order (not as spec text sorts them), each plain before compensated;
    conditions off the time axis (and records from before it) first."""
    t = record.get("t")
    return (t if t is not None else -1.0, bool(record.get("compensate")))


def to_csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_KEYS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def condition_label(record: dict) -> str:
    if record["noise"] == "clean":
        return "clean"
    if record.get("t") is not None:
        return time_label(record["noise"], record["t"], bool(record.get("compensate")))
    if record["sigma"] is not None and record["noise"] == "gaussian":
        return f"sigma={record['sigma']:g}"
    return record["spec"]


def time_label(noise: str, t: float, compensate: bool) -> str:
    """A time condition for tables: `cmo+cmo_read t=1d`, `... (comp)` with compensation."""
    return f"{noise} t={format_duration(t)}" + (" (comp)" if compensate else "")


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
            "t": meta[key].get("t"),
            "compensate": bool(meta[key].get("compensate")),
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
            *_time_order(r),
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
    """accuracy_vs_sigma.png (average, error bars: the 95 % bootstrap interval),
    per_task.png (one panel per task, error bars: the std over chip seeds) and, when the
    sweep has a time axis, accuracy_vs_time.png (see `plot_accuracy_vs_time`)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every_row = summary_rows(records)
    rows = [r for r in every_row if r["noise"] in ("clean", "gaussian") and r.get("t") is None]
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
    points = [
        {
            "method": r["method"],
            "noise": r["noise"],
            "t": r["t"],
            "compensate": r["compensate"],
            **r["tasks"][AVERAGE],
        }
        for r in every_row
        if r.get("t") is not None
    ]
    if points:
        clean = {r["method"]: r["tasks"][AVERAGE]["mean"] for r in every_row if r["noise"] == "clean"}
        written.append(plot_accuracy_vs_time(points, out / TIME_PLOT, clean))
    return written


TIME_PLOT = "accuracy_vs_time.png"
# Ticks of the time axis (seconds), as halora.noise's durations spell them; 10y is the
# longest time the device fits accept.
TIME_TICKS = (
    (1.0, "1s"),
    (60.0, "1min"),
    (3600.0, "1h"),
    (86400.0, "1d"),
    (604800.0, "1w"),
    (2592000.0, "1mo"),
    (31536000.0, "1y"),
    (315360000.0, "10y"),
)
ZERO_AT = 0.1  # where t = 0 (just programmed, cmo alone) sits on the log axis, labelled "0"


def plot_accuracy_vs_time(
    points: list[dict], path: str | Path, clean: dict[str, float] | None = None
) -> Path:
    """Accuracy against the time after programming, one colour per method: solid without,
    dashed with drift compensation, dotted the method's clean-chip accuracy (`clean`, per
    method); log-x in seconds with 1s/1h/1d/1w/1mo ticks. Each point is {method, noise, t,
    compensate, mean} with `low`/`high` (the 95 % bootstrap interval over chips and items,
    the error bar) or `std`. The series are nudged apart along x (a few % of a decade) so
    that equal values and their error bars stay visible."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    methods = sorted({p["method"] for p in points})
    series = [(m, c) for m in methods for c in (False, True) if any(_in_series(p, m, c) for p in points)]
    for number, (method, compensate) in enumerate(series):
        line = sorted((p for p in points if _in_series(p, method, compensate)), key=lambda p: p["t"])
        nudge = 10 ** (DODGE * (number - (len(series) - 1) / 2))
        colour = f"C{methods.index(method)}"
        axis.errorbar(
            [(p["t"] if p["t"] > 0 else ZERO_AT) * nudge for p in line],
            [p["mean"] for p in line],
            yerr=np.transpose([_error_bar(p) for p in line]),
            color=colour,
            linestyle="--" if compensate else "-",
            marker="o",
            capsize=3,
            label=f"{method}, compensated" if compensate else method,
        )
    for method, accuracy in (clean or {}).items():
        if method in methods:
            axis.axhline(accuracy, color=f"C{methods.index(method)}", linestyle=":", linewidth=1)
    _time_axis(axis, [p["t"] for p in points])
    axis.set_title(", ".join(sorted({p["noise"] for p in points})) + ": accuracy after programming")
    axis.set_ylabel("accuracy (%), 95 % interval" + ("; dotted: clean chip" if clean else ""))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    files.write_with(Path(path), lambda file: figure.savefig(file, dpi=120, format="png"))
    plt.close(figure)
    return Path(path)


DODGE = 0.04  # decades between neighbouring series of the time plot


def _in_series(point: dict, method: str, compensate: bool) -> bool:
    return point["method"] == method and bool(point["compensate"]) == compensate


def _time_axis(axis, times: list[float]) -> None:
    """Log-x in seconds, ticked at the named durations the plotted times span."""
    axis.set_xscale("log")
    positive = [t for t in times if t > 0] or [1.0]
    low, high = min(positive) / 3, max(positive) * 3
    ticks = [(x, text) for x, text in TIME_TICKS if low <= x <= high]
    if any(t == 0 for t in times):
        ticks.insert(0, (ZERO_AT, "0"))
    axis.set_xticks([x for x, _ in ticks], [text for _, text in ticks])
    axis.minorticks_off()
    axis.set_xlabel("time after programming (log scale)")
