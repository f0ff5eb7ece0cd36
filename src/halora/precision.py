"""Which precisions this machine runs fast, detected rather than assumed.

bf16 autocast pays on a CPU only where it has bf16 matrix units (x86: AVX512-BF16 or AMX;
Arm: the BF16 extension). Elsewhere PyTorch emulates bf16 matmuls, and this project
measured them about 100x slower than fp32 on an AVX2-only CPU (0.65 vs 62 GFLOP/s, a
1024x1024 matmul, 2026-12-03), so bf16 is refused there rather than silently slow.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from halora.errors import UsageError


def cpu_bf16_units() -> str | None:
    """The CPU's bf16 matrix units by name (e.g. "amx_bf16"), or None where it has none."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = capabilities()
        for name in ("amx_bf16", "avx512_bf16"):
            if found.get(name):
                return name
    if platform.machine() in ("aarch64", "arm64"):
        return "arm_bf16" if _arm_has_bf16() else None
    return None


def _arm_has_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return platform.system() == "Darwin"  # Apple M2 and later: no /proc to read
    return any(
        line.startswith("Features") and "bf16" in line.split()
        for line in cpuinfo.read_text(errors="ignore").splitlines()
    )


def check_precision(precision: str, device: str) -> None:
    """Refuse a precision this device cannot run well, in one line with the fix."""
    if precision == "fp32":
        return
    if device.startswith("cuda"):
        return
    if precision == "fp16":
        raise UsageError("--precision fp16 needs a GPU; on a CPU use fp32 (or bf16 where it has bf16 units)")
    if cpu_bf16_units() is None:
        raise UsageError(
            "--precision bf16: this CPU has no bf16 matrix units (AVX512-BF16, AMX or Arm BF16), "
            "where bf16 is slower than fp32; use --precision fp32"
        )
