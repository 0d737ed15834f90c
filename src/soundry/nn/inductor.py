"""Whether torch.compile's inductor backend can build kernels on a device, and where its
kernel cache lives."""

from __future__ import annotations

import os
import shutil

import torch


def compiler_missing(device: torch.device) -> str | None:
    """Why compilation cannot run on `device`, or None (inductor emits C++ for CPU kernels,
    so a CPU needs a C++ compiler)."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler found (inductor compiles CPU kernels from C++)"
    return None


def key_kernel_cache_by_cpu() -> str:
    """Point inductor's on-disk kernel cache at a folder of its own per CPU capability
    (`<default>-avx2`, `<default>-avx512`, ...) and return it; a cache folder the user
    chose (TORCHINDUCTOR_CACHE_DIR) is kept.

    Why: the cache does not key its CPU kernels on ATEN_CPU_CAPABILITY, so a kernel built
    under one setting was reused under the other: measured with torch 2.13 on an AVX-512
    CPU, a compiled int8 decoding step then returned NaN logits (AVX2 setting reading
    AVX-512 kernels) or corrupted the heap (the reverse)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == default:
        capability = torch.backends.cpu.get_cpu_capability().lower()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default}-{capability}"
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def prepare_compile(device: torch.device) -> str | None:
    """Get ready to torch.compile on `device`: returns why it cannot (no C++ compiler for
    CPU kernels), or None after keying the kernel cache by CPU capability."""
    reason = compiler_missing(device)
    if reason is None:
        key_kernel_cache_by_cpu()
    return reason


__all__ = ["compiler_missing", "key_kernel_cache_by_cpu", "prepare_compile"]
