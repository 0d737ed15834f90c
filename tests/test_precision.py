"""bf16 on CPU: native-bf16 detection from CPU flags and the oneDNN ISA cap, and the
warning a bf16 CPU run logs when bf16 would be emulated."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from soundry.train import engine
from soundry.train.engine import run_training
from soundry.train.precision import cpu_flag_set, cpu_has_native_bf16, isa_cap_blocks_bf16
from soundry.train.recipes import recipe_from_dict

SKYLAKE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush "
           "mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl "
           "xtopology cpuid pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt "
           "aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch fsgsbase bmi1 hle "
           "avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap clflushopt clwb "
           "avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves arat pku ospke")
ZEN4 = SKYLAKE + " avx512_bf16 avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq"
SAPPHIRE = SKYLAKE + " amx_bf16 avx512_fp16 amx_tile amx_int8"
CPUINFO = "\n".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: {flags}\n"
    f"vmx flags\t: vnmi preemption_timer\nbugs\t\t: spectre_v1\n"
    for i, flags in enumerate([SKYLAKE, SKYLAKE])
)
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics {}\n"
NO_CAP: dict[str, str] = {}


@pytest.mark.parametrize("flags,native", [
    (SKYLAKE, False),
    (ZEN4, True),
    (SAPPHIRE, True),
    (CPUINFO, False),
    (CPUINFO.replace("avx512vl", "avx512vl avx512_bf16"), True),
    (ARM.format("i8mm bf16"), True),
    (ARM.format("i8mm"), False),
    ("", False),
])
def test_detection_from_flags(flags: str, native: bool) -> None:
    assert cpu_has_native_bf16(flags, env=NO_CAP) is native


def test_flag_lines_are_read_exactly() -> None:
    found = cpu_flag_set(CPUINFO)
    assert "avx2" in found and "avx512f" in found
    assert "preemption_timer" not in found and "spectre_v1" not in found  # other lines
    assert "xeon" not in found


@pytest.mark.parametrize("env,native", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}, False),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
    ({"ONEDNN_MAX_CPU_ISA": ""}, True),
])
def test_onednn_isa_cap(env: dict[str, str], native: bool) -> None:
    assert cpu_has_native_bf16(SAPPHIRE, env=env) is native
    assert (isa_cap_blocks_bf16(env) is None) is native


def _run(tmp_path: Path, precision: str) -> None:
    recipe = recipe_from_dict({
        "task": "toy",
        "data": {"sample_rate": 8000, "segment_seconds": 0.032, "batch_size": 2,
                 "num_workers": 0, "valid_count": 1, "valid_seconds": 0.05},
        "model": {"channels": 4, "layers": 1, "kernel_size": 3, "disc_channels": 4},
        "toy": {"items_per_epoch": 4, "valid_clips": 0},
        "train": {"progress": False, "tensorboard": False, "max_steps": 1, "device": "cpu",
                  "precision": precision, "valid_every": 100, "checkpoint_every": 100},
    })
    run_training(recipe, tmp_path / precision)


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path: Path, caplog: Any,
                                                 monkeypatch: Any) -> None:
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="soundry.train"):
        _run(tmp_path, "bf16")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "emulated" in text and "hundreds of times slower than fp32" in text
    assert "train.precision=fp32" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="soundry.train"):
        _run(tmp_path / "fp32", "fp32")  # fp32 runs never warn
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_no_warning_with_native_bf16_and_the_isa_cap_is_named(tmp_path: Path, caplog: Any,
                                                              monkeypatch: Any) -> None:
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="soundry.train"):
        _run(tmp_path, "bf16")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    # the real detection, capped by the environment
    monkeypatch.undo()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with caplog.at_level(logging.WARNING, logger="soundry.train"):
        _run(tmp_path / "capped", "bf16")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in caplog.text and "emulated" in caplog.text
