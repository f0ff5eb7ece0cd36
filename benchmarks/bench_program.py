"""Programming a chip on SmolLM2-135M: how long it takes, and what it costs in peak memory.

Timing (one process, one model): for each seed and each noise spec, in alternating order,
time the programming (`Chip(...)`: stashes the clean weights, then draws), one
re-draw (`chip.reprogram`), and the undo (`chip.restore`); report medians, plus the
noise model's own arithmetic over the same layers (no stash, no copies) for comparison.
The very first programming in a process is reported apart: it also pays for copying the
memory-mapped weights into private memory on first write.
The weights' sha256 before and after every restore must match: `restore_bit_identical`.

Peak memory: every measurement runs in a fresh subprocess that loads the model,
(programs a chip,) runs one forward over a fixed 128-token text, (restores,) and reports
ru_maxrss. Ratio = programmed peak / clean peak; target <= 1.25. `model_rss_mib` is the
resident size of the loaded model with every weight touched. On CUDA the same is done in
bf16 with torch.cuda.max_memory_allocated.

    .venv/bin/python benchmarks/bench_program.py            # about 3-4 min on 2 cores
    .venv/bin/python benchmarks/bench_program.py --quick    # about 1-2 min
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from _common import add_threads_argument, emit, environment, log, median, rounded, set_threads

from halora.cim import Chip, layer_generator, rram_layers
from halora.models import SMOLLM2, load_model
from halora.noise import parse_noise_spec
from halora.train import weights_hash

NAME = "bench_program"
SPECS = ("gaussian:sigma=0.02,scale=tile,tile=64", "saf:p0=0.01,p1=0.01", "wan2022:t=86400")
TARGET_RATIO = 1.25
TOKENS = 128
TEXT = " ".join(
    [
        "Compute-in-memory chips store the frozen weights of a language model in resistive",
        "memory cells and multiply inside the array, which saves the energy of moving weights.",
        "The price is noise: every programmed cell lands near, not on, its target conductance,",
        "stuck cells ignore the write entirely, and conductances drift over the following day.",
        "Low-rank adapters live in exact SRAM beside the array and can learn to tolerate that",
        "noise, provided training sees it. This paragraph is long enough to give the model",
        "one hundred and twenty-eight tokens of ordinary English text to read in one forward",
        "pass, so that the activations are of a realistic size next to the weights themselves,",
        "and the measurement is the same for the clean and the programmed model every time.",
    ]
    * 2
)


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(f"{key}:"))


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def child(mode: str, device: str) -> dict:
    """One measurement in this fresh process: 'model' (resident size of the loaded model),
    'clean' (load + forward) or a noise spec (load + program + forward + restore)."""
    cuda = device == "cuda"
    before = _status_kib("VmRSS")
    model, tokenizer = load_model(SMOLLM2, dtype="bfloat16" if cuda else "float32", device=device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model_bytes = torch.cuda.memory_allocated() if cuda else None
    if mode == "model":  # weights are mmapped lazily: touch every one to count it
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.sum()
        return {
            "rss_model_kib": _status_kib("VmRSS") - before,
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        }
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, :TOKENS].to(device)
    chip = None if mode == "clean" else Chip(model, mode, seed=0)
    with torch.no_grad():
        model(ids)
    if chip is not None:
        chip.restore()
    out = {"maxrss_kib": _maxrss_kib(), "rss_before_load_kib": before, "tokens": ids.shape[1]}
    if cuda:
        out |= {"cuda_model_bytes": model_bytes, "cuda_peak_bytes": torch.cuda.max_memory_allocated()}
    return out


def run_child(mode: str, device: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--device", device, "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {mode} on {device} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(specs: tuple[str, ...], repeats: int, device: str, threads: int) -> dict:
    """Clean and programmed peaks, each in fresh processes, alternating the order."""
    modes = ("clean", *specs)
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        for mode in modes if repeat % 2 == 0 else modes[::-1]:
            log(f"memory {device} {repeat + 1}/{repeats}: {mode}")
            runs[mode].append(run_child(mode, device, threads))
    model = run_child("model", device, threads) if device == "cpu" else None
    mib = 1024.0

    def peak(mode: str) -> float:
        return median([r["maxrss_kib"] for r in runs[mode]])

    def above_imports(mode: str) -> float:
        return median([r["maxrss_kib"] - r["rss_before_load_kib"] for r in runs[mode]])

    result: dict = {"tokens": runs["clean"][0]["tokens"], "clean_peak_mib": round(peak("clean") / mib, 1)}
    if model is not None:
        result |= {
            "model_rss_mib": round(model["rss_model_kib"] / mib, 1),
            "model_param_mib": round(model["param_bytes"] / 2**20, 1),
        }
    for spec in specs:
        entry = {
            "peak_mib": round(peak(spec) / mib, 1),
            "ratio": round(peak(spec) / peak("clean"), 4),
            # the same ratio without the ~340 MiB that importing torch + transformers costs
            "ratio_above_imports": round(above_imports(spec) / above_imports("clean"), 4),
        }
        if device == "cuda":
            gpu_clean = median([r["cuda_peak_bytes"] for r in runs["clean"]])
            gpu_peak = median([r["cuda_peak_bytes"] for r in runs[spec]])
            entry |= {
                "cuda_peak_mib": round(gpu_peak / 2**20, 1),
                "cuda_ratio": round(gpu_peak / gpu_clean, 4),
            }
        entry["meets_target"] = entry.get("cuda_ratio", entry["ratio"]) <= TARGET_RATIO
        result[spec] = entry
    if device == "cuda":
        result["cuda_model_mib"] = round(runs["clean"][0]["cuda_model_bytes"] / 2**20, 1)
    return result


def measure_programming(specs: tuple[str, ...], seeds: int) -> dict:
    """Seconds to program, re-draw and restore, per spec; restore checked bit for bit."""
    model, _ = load_model(SMOLLM2)
    layers = rram_layers(model)
    clean_hash = weights_hash(model)
    times = {
        spec: {"program_s": [], "reprogram_s": [], "restore_s": [], "noise_apply_only_s": []}
        for spec in specs
    }
    identical, programmed_differs, first_chip = True, True, None
    for seed in range(seeds):
        for spec in specs if seed % 2 == 0 else specs[::-1]:
            log(f"programming seed {seed + 1}/{seeds}: {spec}")
            clock = time.perf_counter()
            chip = Chip(model, spec, seed)
            times[spec]["program_s"].append(time.perf_counter() - clock)
            first_chip = first_chip or (spec, times[spec]["program_s"][0])
            clock = time.perf_counter()
            chip.reprogram(seed + 1000)
            times[spec]["reprogram_s"].append(time.perf_counter() - clock)
            if seed == 0:
                programmed_differs &= weights_hash(model) != clean_hash
            clock = time.perf_counter()
            chip.restore()
            times[spec]["restore_s"].append(time.perf_counter() - clock)
            if seed == 0:  # hashing takes ~1 s: check each spec once, and everything at the end
                identical &= weights_hash(model) == clean_hash
            noise = parse_noise_spec(spec)
            clock = time.perf_counter()
            for name, layer in layers.items():
                noise.apply(layer.weight, layer_generator(seed, name, layer.weight.device))
            times[spec]["noise_apply_only_s"].append(time.perf_counter() - clock)
    identical &= weights_hash(model) == clean_hash
    rram_weights = sum(layer.weight.numel() for layer in layers.values())
    result: dict = {
        "rram_layers": len(layers),
        "rram_weights": rram_weights,
        "seeds": seeds,
        "restore_bit_identical": identical,
        "programmed_differs_from_clean": programmed_differs,
        # the loaded weights are mmapped copy-on-write: the first write to them in a
        # process also copies them into private memory (training's first programming)
        "first_chip_in_process": {"spec": first_chip[0], "program_s": round(first_chip[1], 4)},
    }
    for spec, columns in times.items():
        entry = {key: round(median(values), 4) for key, values in columns.items()}
        entry["program_mweights_per_s"] = round(rram_weights / 1e6 / entry["program_s"], 1)
        entry["raw"] = {key: rounded(values) for key, values in columns.items()}
        result[spec] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="gaussian only, fewer seeds and repeats")
    parser.add_argument("--seeds", type=int, help="seeds per spec for the timing (default 5, quick 3)")
    parser.add_argument("--repeats", type=int, help="processes per memory measurement (default 2, quick 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.device)))
        return 0
    specs = SPECS[:1] if args.quick else SPECS
    env = environment()
    memory = {"cpu": measure_memory(specs, args.repeats or (1 if args.quick else 2), "cpu", args.threads)}
    if torch.cuda.is_available():
        memory["cuda"] = measure_memory(specs, args.repeats or 1, "cuda", args.threads)
    timing = measure_programming(specs, args.seeds or (3 if args.quick else 5))
    gaussian = SPECS[0]
    summary = {
        "program_s": timing[gaussian]["program_s"],
        "first_program_in_process_s": timing["first_chip_in_process"]["program_s"],
        "reprogram_s": timing[gaussian]["reprogram_s"],
        "restore_s": timing[gaussian]["restore_s"],
        "peak_memory_ratio": memory["cpu"][gaussian]["ratio"],
        "restore_bit_identical": timing["restore_bit_identical"],
        "meets_target": all(m[gaussian]["meets_target"] for m in memory.values()),
    }
    if "cuda" in memory:
        summary["cuda_peak_memory_ratio"] = memory["cuda"][gaussian]["cuda_ratio"]
    emit(
        NAME,
        {
            "benchmark": NAME,
            "model": SMOLLM2,
            "quick": args.quick,
            "target_ratio": TARGET_RATIO,
            "summary": summary,
            "timing": timing,
            "memory": memory,
            "environment": env,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
