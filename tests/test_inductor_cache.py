"""Inductor's kernel cache is kept apart per CPU capability."""

from __future__ import annotations

import os

import pytest
import torch

from soundry.nn.inductor import key_kernel_cache_by_cpu, prepare_compile


def test_kernel_cache_is_keyed_by_cpu_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert key_kernel_cache_by_cpu() == default + "-avx2"
    # inductor may already have written its default into the environment: still keyed
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert key_kernel_cache_by_cpu() == default + "-avx512"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default + "-avx512"


def test_a_chosen_kernel_cache_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert key_kernel_cache_by_cpu() == str(tmp_path)


def test_prepare_compile_keys_the_cache_only_when_it_can_compile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = prepare_compile(torch.device("cpu"))
    assert reason is not None and "C++ compiler" in reason
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert prepare_compile(torch.device("cpu")) is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.abspath(default_cache_dir()) + "-avx2"
