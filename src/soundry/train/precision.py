"""Whether the CPU computes bf16 natively (bf16 autocast on CPU is emulated otherwise).

On x86, oneDNN runs bf16 matmuls and convolutions with native instructions only on CPUs
with AVX512-BF16 (`avx512_bf16`) or AMX (`amx_bf16`); elsewhere it converts to fp32 and
back around every operation, which can be hundreds of times slower than plain fp32.
`ONEDNN_MAX_CPU_ISA` (or its older name `DNNL_MAX_CPU_ISA`) caps the instructions oneDNN
may use, so a cap below AVX512_CORE_BF16 makes bf16 emulated on any CPU. On ARM, the
`bf16` feature (Armv8.6 BF16) counts as native.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

# /proc/cpuinfo flags that mean native bf16 matmuls
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ARM_BF16_FEATURE = "bf16"
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# oneDNN's ISA caps in increasing order, up to the last one without native bf16
_ISA_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                     "AVX512_CORE_VNNI")


def isa_cap_blocks_bf16(env: Mapping[str, str] | None = None) -> str | None:
    """The environment setting (e.g. 'ONEDNN_MAX_CPU_ISA=AVX2') that keeps oneDNN below
    AVX512_CORE_BF16, or None when there is no such cap."""
    env = os.environ if env is None else env
    for name in ISA_ENV:
        value = env.get(name)
        if value and value.strip().upper() in _ISA_WITHOUT_BF16:
            return f"{name}={value.strip()}"
    return None


def read_cpu_flags() -> str | None:
    """The text of /proc/cpuinfo (None off Linux or when it cannot be read)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None


def cpu_flag_set(text: str) -> set[str]:
    """Every flag of the `flags` (x86) and `Features` (ARM) lines of a cpuinfo text; a text
    without such lines is read as a bare list of flags."""
    lines = [line.partition(":")[2] for line in text.splitlines()
             if line.split(":")[0].strip().lower() in ("flags", "features")]
    if not lines and ":" not in text:
        lines = [text]
    return {flag.lower() for line in lines for flag in line.split()}


def cpu_has_native_bf16(flags: str | None = None, env: Mapping[str, str] | None = None
                        ) -> bool:
    """True when this CPU runs bf16 matmuls natively.

    flags: a /proc/cpuinfo text or a plain list of flags (default: this machine's
    /proc/cpuinfo). env: the environment to read the oneDNN ISA cap from (default:
    os.environ). Without flags to go on (not Linux, unreadable), True: no claim is made.
    """
    if isa_cap_blocks_bf16(env) is not None:
        return False
    text = read_cpu_flags() if flags is None else flags
    if text is None:
        return True
    found = cpu_flag_set(text)
    return bool(found & NATIVE_BF16_FLAGS) or ARM_BF16_FEATURE in found


def bf16_cpu_warning(env: Mapping[str, str] | None = None) -> str:
    """The warning for a bf16 run on a CPU without native bf16."""
    cap = isa_cap_blocks_bf16(env)
    why = (f"{cap} keeps oneDNN below AVX512_CORE_BF16" if cap else
           "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag)")
    return (f"train.precision=bf16 on CPU, but {why}: bf16 matmuls on this CPU are emulated "
            "and can be hundreds of times slower than fp32. Use train.precision=fp32.")
