"""The converters at the edge of an RRAM crossbar, as one setting read by both sides.

An RRAM tile computes a matrix-vector product in analog: a DAC per row turns each digital
input into a voltage, every column sums its cells' currents over the tile's rows, and an
ADC per column (shared through a multiplexer) turns that partial sum back into a number;
the digital periphery adds the partial sums of a layer's row tiles::

    x (digital) -> DAC(dac_bits) -> [rows x cols crossbar] -> ADC(adc_bits) -> + -> y
                                     one partial sum per `rows` inputs         digital

The analog forward (:mod:`halora.analog`) quantises accuracy with these settings and the
energy model (:mod:`halora.energy`) charges one conversion per DAC and ADC with the same
ones, so accuracy and energy describe the same hardware. This module holds only the
configuration and its command-line flags: it imports no model code, so the energy model
can read it.

Units. A crossbar row carries one input, a column one output: a tile holds ``rows`` inputs
x ``cols`` outputs of the weight, i.e. the block ``W[o:o+cols, i:i+rows]`` of the
``[out, in]`` matrix, the same 64x64 blocks the noise mapping scales to the conductance
range (:mod:`halora.noise.mapping`). Inputs reach the DAC divided by ``s_x``, the abs-max of
the input vector's slice on that tile (aihwkit's noise management ``abs_max``, per tile), so
they lie in [-1, 1]; weights sit in the tile as ``W / s_W`` with ``s_W = max|W_tile|``
(``g_max``). A partial sum is measured in those normalised units,
``p = sum_i (x_i / s_x)(W_ji / s_W)``, so ``|p| <= rows`` and a full tile of ``+1 x +1``
products gives ``rows``. The ADC covers ``[-adc_range, +adc_range]`` of these units with
``2**(adc_bits-1) - 1`` levels on each side of 0 and clips beyond; the DAC has
``2**(dac_bits-1) - 1`` levels on each side (symmetric, signed; aihwkit's
``inp_res = 1 / (2**dac_bits - 2)`` and ``out_res = 1 / (2**adc_bits - 2)``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from halora.errors import UsageError
from halora.settings import check, field_meta, field_registry, flag_name, help_of, hints, setting

# The ADC's full scale trades clipping against step size. With 8-bit converters on
# SmolLM2-135M (its 210 RRAM layers, exact weights), the mean token NLL over the digital
# forward rises by, on 16 x 128 tokens of the default suite's test items / of README.md
# (2026-12-06):
#     adc_range   6              8              10             12
#                 +0.23 / +0.23  +0.20 / +0.17  +0.23 / +0.21  +0.27 / +0.31
# and, on 3 x 512 README tokens, +0.27 at 4 and +0.69 at 16. The partial sums are small:
# median |p| 0.26 units, 99th percentile 1.75, 99.99th 3.3; a step of 12 / 127 = 0.094
# rounds 12 % of them to 0 (8 / 127: 8 %), while below about 5 the clipped outliers
# start to cost (2.6e-6 of the partial sums clip at 8, 1.4e-5 at 4). aihwkit's out_bound
# of 12 bounds a sum over up to 512 rows; over 64 rows, 8 does better.
# benchmarks/bench_analog.py repeats the scan ("adc_range_scan").
DEFAULT_ADC_RANGE = 8.0


@dataclass(frozen=True)
class Converters:
    """DAC and ADC resolution, the tile they sit on, and the ADC's full scale."""

    WHAT: ClassVar[str] = "converter setting"

    # 8-bit inputs and 8-bit ADCs on 64-row partial sums are the HaLoRA paper's W8A8 chip
    # (64x64 tiles; energy preset `paper`). aihwkit's default analog forward uses 7 and 9.
    dac_bits: int = setting(8, "input DAC resolution in bits (signed, symmetric)", min=2, max=32)
    adc_bits: int = setting(8, "ADC resolution in bits for each partial sum (signed)", min=2, max=32)
    rows: int = setting(64, "inputs summed in analog per ADC conversion (tile rows)", min=1)
    # The outputs of one tile share its weight scale max|W_tile|, as the noise mapping's
    # 64x64 tiles share one conductance range.
    cols: int = setting(64, "outputs per tile sharing one weight scale max|W_tile| (tile columns)", min=1)
    adc_range: float = setting(
        DEFAULT_ADC_RANGE,
        "ADC full scale in normalised partial-sum units (max|x| x max|W_tile|; clips beyond)",
        min=1e-6,
    )
    # Gaussian noise on each partial sum before the ADC, in the same normalised units
    # (aihwkit's out_noise, 0.06 by default there); 0 leaves the converters exact but coarse.
    out_noise: float = setting(0.0, "std of analog noise on each partial sum (normalised units)", min=0.0)

    def __post_init__(self) -> None:
        check(self)

    @property
    def dac_levels(self) -> int:
        """Levels on each side of 0: inputs land on ``k / dac_levels``, ``|k| <= dac_levels``."""
        return 2 ** (self.dac_bits - 1) - 1

    @property
    def adc_levels(self) -> int:
        """Levels on each side of 0: partial sums land on ``k * adc_step``, ``|k| <= adc_levels``."""
        return 2 ** (self.adc_bits - 1) - 1

    @property
    def adc_step(self) -> float:
        """One ADC level in normalised partial-sum units."""
        return self.adc_range / self.adc_levels

    def describe(self) -> str:
        """One line for a report: '8-bit DAC, 8-bit ADC on 64x64 tiles, range ±8'."""
        noise = f", out noise {self.out_noise:g}" if self.out_noise else ""
        return (
            f"{self.dac_bits}-bit DAC, {self.adc_bits}-bit ADC on {self.rows}x{self.cols} tiles, "
            f"range ±{self.adc_range:g}{noise}"
        )


# --------------------------------------------------------------------------------------
# Command-line flags: --analog switches the analog forward on, the others set it
# --------------------------------------------------------------------------------------

# field -> flag: the field names stay what the energy model reads, the flags say "ADC"
FLAGS = {
    "dac_bits": "dac_bits",
    "adc_bits": "adc_bits",
    "rows": "adc_rows",
    "cols": "adc_cols",
    "adc_range": "adc_range",
    "out_noise": "out_noise",
}


def add_converter_flags(parser: argparse.ArgumentParser) -> None:
    """--analog and one flag per Converters field (default: the field's), also config keys."""
    group = parser.add_argument_group("analog forward (DAC/ADC on the RRAM layers)")
    group.add_argument(
        "--analog",
        action="store_true",
        help="run the RRAM layers through DACs and ADCs on partial sums (halora.analog); "
        "the clean condition then means exact weights, real converters",
    )
    defaults = Converters()
    for spec in dataclasses.fields(Converters):
        dest, hint = FLAGS[spec.name], hints(Converters)[spec.name]
        group.add_argument(
            flag_name(dest),
            dest=dest,
            type=_number_parser(hint, flag_name(dest)),
            default=None,  # None: not given, so --adc-bits without --analog can be refused
            metavar="N" if hint is int else "X",
            help=f"{help_of(Converters, spec.name)} (with --analog; default {getattr(defaults, spec.name)})",
        )
        field_registry(parser)[dest] = hint  # config files are typed and bounded like the flag
        field_meta(parser)[dest] = dict(spec.metadata)


def converters_from(args: argparse.Namespace) -> Converters | None:
    """The Converters the flags ask for, or None without --analog (a converter flag alone is
    refused: it would otherwise be silently ignored)."""
    values = {name: getattr(args, dest, None) for name, dest in FLAGS.items()}
    given = {name: value for name, value in values.items() if value is not None}
    if not getattr(args, "analog", False):
        if given:
            flags = ", ".join(flag_name(FLAGS[name]) for name in given)
            them = "them" if len(given) > 1 else "it"
            raise UsageError(f"{flags} set the analog forward, which is off: add --analog, or drop {them}")
        return None
    try:
        return Converters(**given)
    except UsageError as err:  # name the flag, not the field
        message = str(err)
        for name, dest in FLAGS.items():
            message = message.replace(f"{Converters.WHAT} {name} ", f"{flag_name(dest)} ")
        raise UsageError(message) from None


def _number_parser(hint: Any, flag: str):
    def parse(text: str) -> Any:
        try:
            return hint(text)
        except ValueError:
            word = "an integer" if hint is int else "a number"
            raise UsageError(f"{flag} must be {word}, got {text!r}") from None

    parse.__name__ = "an integer" if hint is int else "a number"
    return parse
