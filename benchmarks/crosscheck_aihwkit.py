"""Cross-check one layer of halora's analog forward against IBM aihwkit 1.2, without noise.

Checks that ``halora.analog.analog_linear`` and aihwkit's analog forward (``AnalogLinear`` with
an ``InferenceRPUConfig``: the C++ tile's DAC, MVM and ADC) give the same output where the
models coincide, and measures by how much they differ where they do not.

Where they coincide: one layer of 64 inputs x 64 outputs (one 64x64 tile: aihwkit's single
analog tile is halora's single partial sum), the weight a 64x64 slice of SmolLM2-135M's
layer-0 q_proj (a seeded Gaussian if the cached model is missing), 256 input tokens (seeded
Gaussian, one outlier channel x6 per 64 inputs). aihwkit is set to no noise of any kind (out_noise,
inp_noise, w_noise 0, no IR drop, no drift compensation, programming noise never applied),
``noise_management = ABS_MAX`` (per input vector and tile, like halora), ``bound_management =
NONE`` (halora's ADC clips), ``weight_scaling_omega = 1`` layer-wise (max|W_tile| -> 1, like
halora's s_W), ``inp_res = out_res = 1 / (2**b - 2)`` (aihwkit's resolution is a fraction of
the full range 2 x bound, so this is halora's 2**(b-1) - 1 levels a side) and ``out_bound =
adc_range = 8``. Cases: (a) exact converters (aihwkit resolution -1, halora 32 bits), (b) 8-bit
DAC only, (c) 8-bit ADC only, (d) 8-bit DAC and ADC (halora's defaults). For each: the
relative error ||y - x W^T|| / ||x W^T|| of each model and their relative difference.

At 512 inputs (one 64x512 weight): halora's eight 64-row partial sums against aihwkit's one
512-row tile differ by design; aihwkit with ``max_input_size = 64`` (eight tiles) and halora
with ``rows = 512`` (one partial sum) are the two pairs that coincide. ``differences`` lists
the settings that cannot be matched, or where aihwkit's defaults differ, with their measured
effect; ``not_compared`` what this check leaves out. Prints one JSON object and writes
benchmarks/results/crosscheck_aihwkit.json.

aihwkit is not a halora dependency: it runs from its own virtual environment (built from the
sdist, see the report), with halora installed there editable and without dependencies::

    OMP_NUM_THREADS=1 /root/aihw-venv/bin/python benchmarks/crosscheck_aihwkit.py   # a few seconds
"""

from __future__ import annotations

from pathlib import Path

import aihwkit
import torch
from _common import emit, environment, log
from aihwkit.nn import AnalogLinear
from aihwkit.simulator.configs import InferenceRPUConfig
from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType, WeightNoiseType

from halora.analog import AnalogStats, analog_linear
from halora.converters import Converters

NAME = "crosscheck_aihwkit"
MODEL = Path.home() / ".cache/halora/smollm2-135m-instruct/model.safetensors"
KEY = "model.layers.0.self_attn.q_proj.weight"
TOKENS, OUT, RANGE = 256, 64, 8.0
EXACT = 32  # halora's "infinite" resolution (its largest); aihwkit takes resolution -1
NOT_COMPARED = [
    "noise: halora's out_noise (Gaussian before the ADC, same units as aihwkit's) is drawn from a seeded "
    "CPU generator per layer, aihwkit's from its own RNG, so only distributions could be compared",
    "aihwkit's inp_noise, w_noise, IR drop, output non-linearity, asymmetries, v_offset, r_series, "
    "stochastic rounding (inp/out_sto_round) and nm_thres input clipping: halora has none of them",
    "programming and drift noise (aihwkit's noise_model, halora's halora.cim chips): different models",
    "more than 64 outputs: halora scales each 64-column tile by its own max|W_tile|; aihwkit's layer-wise "
    "omega spans a whole tile of up to max_output_size (default 512) columns",
    "precision: aihwkit's C++ tile computes in float32; halora in the input's dtype (float32 here)",
]
CASES = {"a_exact": (None, None), "b_dac8_only": (8, None), "c_adc8_only": (None, 8), "d_dac8_adc8": (8, 8)}


def weight(in_features: int) -> tuple[torch.Tensor, str]:
    try:
        from safetensors import safe_open

        with safe_open(str(MODEL), "pt") as handle:
            return handle.get_tensor(KEY)[:OUT, :in_features].float(), f"{KEY}[:{OUT}, :{in_features}]"
    except Exception as err:  # no cached model: a weight of the same scale
        log(f"SmolLM2 weight not loaded ({err}); using a seeded Gaussian")
        g = torch.Generator().manual_seed(1)
        return 0.28 * torch.randn(OUT, in_features, generator=g), "Gaussian std 0.28 (seed 1)"


def inputs(in_features: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, in_features, generator=g)
    # one outlier channel per 64 inputs, x6: the median |partial sum| (0.16-0.18 max|x| max|W| units)
    # is then that of SmolLM2's layer-0 q_proj on real text (0.18; layer 10: 0.26)
    x[:, torch.randperm(in_features, generator=g)[: max(1, in_features // 64)]] *= 6.0
    return x


def resolution(bits: int | None, steps_minus: int = 2) -> float:
    return -1.0 if bits is None else 1.0 / (2**bits - steps_minus)


def aihwkit_forward(x, w, dac, adc, bound=RANGE, rows=512, omega=1.0, columnwise=False, bm="NONE", minus=2):
    """aihwkit's analog forward, noise off; ``rows`` = mapping.max_input_size (tile rows)."""
    rpu = InferenceRPUConfig()
    f = rpu.forward
    f.inp_res, f.out_res = resolution(dac, minus), resolution(adc, minus)
    f.inp_bound, f.out_bound = 1.0, bound
    f.inp_noise = f.out_noise = f.w_noise = f.ir_drop = 0.0
    f.w_noise_type = WeightNoiseType.NONE
    f.noise_management = NoiseManagementType.ABS_MAX
    f.bound_management = BoundManagementType[bm]
    rpu.drift_compensation = None  # programming/drift noise only on program/drift_analog_weights
    rpu.mapping.weight_scaling_omega, rpu.mapping.weight_scaling_columnwise = omega, columnwise
    rpu.mapping.max_input_size, rpu.mapping.max_output_size = rows, 512
    layer = AnalogLinear(w.shape[1], w.shape[0], bias=False, rpu_config=rpu)
    layer.set_weights(w)
    layer.eval()
    with torch.no_grad():
        return layer(x)


def halora_forward(x, w, dac, adc, bound=RANGE, rows=64, stats=None):
    conv = Converters(dac_bits=dac or EXACT, adc_bits=adc or EXACT, rows=rows, cols=64, adc_range=bound)
    with torch.no_grad():
        return analog_linear(x, w, None, conv, stats=stats)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def codes_differing(y_a, y_b, x, w, adc_bits, bound=RANGE) -> int:
    """Outputs of a one-tile layer that differ by half an ADC step or more (a code flipped)."""
    step = bound / (2 ** (adc_bits - 1) - 1) * x.abs().amax(1, keepdim=True) * w.abs().max()
    return int(((y_a - y_b).abs() >= 0.5 * step).sum())


def compare(x, w, pairs) -> dict:
    """Per case: each named forward's relative error vs x W^T, and each pair's relative difference
    (on one tile, also the number of outputs whose ADC code differs)."""
    ref, out = x @ w.t(), {}
    for case, (dac, adc) in CASES.items():
        ys = {name: fn(x, w, dac, adc) for name, fn in pairs["forwards"].items()}
        row = {f"rel_err_{name}": rel(y, ref) for name, y in ys.items()}
        for label, (a, b) in pairs["diffs"].items():
            row[f"rel_diff_{label}"] = rel(ys[a], ys[b])
            row[f"max_abs_diff_{label}"] = float((ys[a] - ys[b]).abs().max())
            if adc and x.shape[1] <= 64:
                row[f"adc_codes_differing_{label}"] = codes_differing(ys[a], ys[b], x, w, adc)
        out[case] = {k: round(v, 8) for k, v in row.items()}
    return out


def effect(what: str, y_aihwkit: torch.Tensor, y_halora: torch.Tensor, ref: torch.Tensor, **extra) -> dict:
    return {
        "what": what,
        "rel_err_aihwkit": round(rel(y_aihwkit, ref), 6),
        "rel_err_halora": round(rel(y_halora, ref), 6),
        "rel_diff": round(rel(y_aihwkit, y_halora), 6),
        **extra,
    }


def differences(x: torch.Tensor, w: torch.Tensor) -> list[dict]:
    """Settings where aihwkit and halora cannot be made identical, or where aihwkit's defaults
    differ: each aihwkit variant on the 64x64 layer at 8/8 bits against halora's default."""
    ref, stats = x @ w.t(), AnalogStats()
    hal = halora_forward(x, w, 8, 8, stats=stats)
    clip = 0.5  # a range small enough that many partial sums clip
    clip_stats = AnalogStats()
    hal_clip = halora_forward(x, w, 8, 8, bound=clip, stats=clip_stats)
    variants = [
        (
            "step size: inp_res = out_res = 1/(2**8-1) (255 steps over 2 x bound) instead of 1/(2**8-2), "
            "the setting equal to halora's 2**(b-1)-1 levels a side",
            dict(minus=1),
        ),
        (
            "aihwkit's default converters, 7-bit DAC (inp_res 1/126) and 9-bit ADC (out_res 1/510), "
            "otherwise matched",
            dict(dac=7, adc=9),
        ),
        (
            "output-bound semantics: weight_scaling_omega = 0 (aihwkit's default), so out_bound 8 is in "
            "raw-weight units, not max|W| units",
            dict(omega=0.0),
        ),
        ("aihwkit's default out_bound 12 (halora: adc_range 8), otherwise matched", dict(bound=12.0)),
        (
            "weight scale per column (weight_scaling_columnwise = True, as StandardHWATrainingPreset) "
            "instead of per 64x64 tile",
            dict(columnwise=True),
        ),
        (
            f"bound management ITERATIVE (aihwkit's default) instead of NONE, range 8 "
            f"({stats.clipped} of {stats.seen} partial sums clip there)",
            dict(bm="ITERATIVE"),
        ),
        (
            "all of aihwkit's default IOParameters with the noise off (7/9 bits, out_bound 12, omega 0, "
            "ITERATIVE)",
            dict(dac=7, adc=9, bound=12.0, omega=0.0, bm="ITERATIVE"),
        ),
    ]
    out = [
        effect(what, aihwkit_forward(x, w, **({"dac": 8, "adc": 8} | kw)), hal, ref) for what, kw in variants
    ]
    clipped = f"{clip_stats.clipped} of {clip_stats.seen} partial sums clip"
    for bm, what in (("NONE", "should equal halora"), ("ITERATIVE", "reruns with halved inputs")):
        y = aihwkit_forward(x, w, 8, 8, bound=clip, bm=bm)
        flips = codes_differing(y, hal_clip, x, w, 8, clip)
        what = f"clipping at range {clip} ({clipped}): aihwkit bound_management {bm} ({what})"
        out.append(effect(what, y, hal_clip, ref, adc_codes_differing=flips))
    # 100 inputs: halora cuts fixed 64 + 36 row tiles, aihwkit (max_input_size 64) splits evenly
    w100, x100 = weight(100)[0], inputs(100)
    y_hal, y_aih = halora_forward(x100, w100, 8, 8), aihwkit_forward(x100, w100, 8, 8, rows=64)
    what = "tile split of 100 inputs: halora 64 + 36 rows, aihwkit max_input_size 64 gives 50 + 50"
    out.append(effect(what, y_aih, y_hal, x100 @ w100.t()))
    return out


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    w64, source64 = weight(64)
    x64 = inputs(64)
    log("64 inputs: one tile")
    one_tile = compare(
        x64,
        w64,
        {
            "forwards": {"halora": halora_forward, "aihwkit": aihwkit_forward},
            "diffs": {"halora_vs_aihwkit": ("halora", "aihwkit")},
        },
    )
    log("512 inputs")
    w512, source512 = weight(512)
    x512 = inputs(512)
    eight_tiles = compare(
        x512,
        w512,
        {
            "forwards": {
                "halora_64rows": halora_forward,
                "halora_512rows": lambda x, w, d, a: halora_forward(x, w, d, a, rows=512),
                "aihwkit_512row_tile": aihwkit_forward,
                "aihwkit_64row_tiles": lambda x, w, d, a: aihwkit_forward(x, w, d, a, rows=64),
            },
            "diffs": {
                "by_design_halora64_vs_aihwkit512": ("halora_64rows", "aihwkit_512row_tile"),
                "coincide_halora64_vs_aihwkit64": ("halora_64rows", "aihwkit_64row_tiles"),
                "coincide_halora512_vs_aihwkit512": ("halora_512rows", "aihwkit_512row_tile"),
            },
        },
    )
    log("differences")
    diffs = differences(x64, w64)
    for d in one_tile.values():
        d["agree"] = d["rel_diff_halora_vs_aihwkit"] < 1e-5
    coincide = [v for d in eight_tiles.values() for k, v in d.items() if k.startswith("rel_diff_coincide")]
    emit(
        NAME,
        {
            "what": "halora.analog.analog_linear vs aihwkit AnalogLinear (InferenceRPUConfig), no noise",
            "aihwkit": aihwkit.__version__,
            "setup": {
                "weight_64": source64,
                "weight_512": source512,
                "tokens": TOKENS,
                "inputs": "seeded N(0,1), in_features // 64 outlier channels x6 (seed 0)",
                "bits": "halora dac_bits/adc_bits; aihwkit inp_res/out_res = 1/(2**b-2), exact = -1 "
                f"(halora {EXACT} bits)",
                "range": f"halora adc_range = aihwkit out_bound = {RANGE}, weight_scaling_omega 1 "
                "(layer-wise), noise_management ABS_MAX, bound_management NONE",
                "rel_err": "||y - x W^T|| / ||x W^T||; rel_diff: ||y_a - y_b|| / ||y_b||",
            },
            "agree_where_models_coincide": all(d["agree"] for d in one_tile.values())
            and max(coincide) < 1e-5,
            "one_tile_64x64": one_tile,
            "in_512": eight_tiles,
            "differences": diffs,
            "not_compared": NOT_COMPARED,
            "environment": environment(),
        },
    )


if __name__ == "__main__":
    main()
