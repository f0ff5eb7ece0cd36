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
configuration: it imports no model code, so the energy model can read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from halora.settings import check, setting


@dataclass(frozen=True)
class Converters:
    """DAC and ADC resolution and the rows summed per ADC conversion."""

    WHAT: ClassVar[str] = "converter setting"

    # 8-bit inputs and 8-bit ADCs on 64-row partial sums are the HaLoRA paper's W8A8 chip
    # (64x64 tiles; energy preset `paper`). aihwkit's default analog forward uses 7 and 9.
    dac_bits: int = setting(8, "input DAC resolution in bits (signed inputs)", min=2, max=32)
    adc_bits: int = setting(8, "ADC resolution in bits for each partial sum", min=2, max=32)
    rows: int = setting(64, "inputs summed in analog per ADC conversion (tile rows)", min=1)
    # Partial sums are measured in units of (max|x| of the input vector) x (max|W| of the
    # tile), where a full tile of +1 x +1 products gives `rows`. The ADC covers
    # [-adc_range, +adc_range] of those units and clips outside it.
    adc_range: float = setting(
        12.0, "ADC full scale in normalised partial-sum units (clips beyond)", min=1e-6
    )
    # Gaussian noise on each partial sum before the ADC, in the same normalised units
    # (aihwkit's out_noise, 0.06 by default there); 0 leaves the converters exact but coarse.
    out_noise: float = setting(0.0, "std of analog noise on each partial sum (normalised units)", min=0.0)

    def __post_init__(self) -> None:
        check(self)
