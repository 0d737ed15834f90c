"""Whether torch.compile's inductor backend can build kernels on a device."""

from __future__ import annotations

import shutil

import torch


def compiler_missing(device: torch.device) -> str | None:
    """Why compilation cannot run on `device`, or None (inductor emits C++ for CPU kernels,
    so a CPU needs a C++ compiler)."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler found (inductor compiles CPU kernels from C++)"
    return None


__all__ = ["compiler_missing"]
