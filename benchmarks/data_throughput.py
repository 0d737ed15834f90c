"""Training-data throughput: random 1 s crops with augmentations from 16-bit FLAC files.

Writes a folder of procedural music clips as 16-bit FLAC into a temporary directory, then
times the training loader (scan cache warm, 2 worker processes): random crops read by
seeking into the FLAC files, loudness measurement with silence retries and normalisation,
and the augmentations (phase all-pass, gain, polarity, dequantisation, resampling-based
pitch shift). Worker start-up is excluded by a few warm-up batches. Prints one JSON line
with `clips_per_s` (target: >= 200 on two cores) and `cpu_ms_per_clip`, the CPU time one
clip costs in a single process (less sensitive to other load on the machine).

`--shards` also packs the same folder (`soundry data pack`, 16-bit FLAC like the folder,
shards of 64 MB) and times the loader on the packed set the same way: one JSON line each
(`"source": "folder"` / `"shards"`) and a last line with the ratio.

    python benchmarks/data_throughput.py --sample-rate 44100 --workers 2 [--shards]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from soundry.data.config import DataConfig
from soundry.data.loader import build_train_loader
from soundry.data.synth import synthesize


def measure(source: str, a: argparse.Namespace) -> dict[str, Any]:
    """Throughput (workers) and single-process CPU cost per clip of the loader over `source`."""
    cfg = DataConfig.model_validate(
        {
            "sources": [{"path": source}],
            "valid": source,  # nothing held out: every file trains
            "sample_rate": a.sample_rate,
            "segment_seconds": a.seconds,
            "batch_size": a.batch_size,
            "num_workers": a.workers,
            "loudness": {"target_lufs": -16.0, "min_lufs": -40.0, "retries": 8},
            "augment": {
                "phase": {"prob": 0.8},
                "gain": {"prob": 1.0, "min_db": -6.0, "max_db": 0.0},
                "polarity": {"prob": 0.5},
                "dequantize": {"prob": 1.0},
                "pitch": {"prob": a.pitch_prob, "min_ratio": 0.8, "max_ratio": 1.25},
            },
        }
    )
    loader = build_train_loader(cfg, seed=0)
    it = iter(loader)
    for _ in range(a.warmup):
        next(it)
    start = time.perf_counter()
    clips = 0
    for _ in range(a.batches):
        clips += next(it)["audio"].shape[0]
    elapsed = time.perf_counter() - start
    loader.close()

    serial = build_train_loader(cfg, seed=1, num_workers=0)
    next(serial)
    cpu = time.process_time()
    for _ in range(max(1, a.batches // 4)):
        next(serial)
    cpu_per_clip = (time.process_time() - cpu) / (max(1, a.batches // 4) * a.batch_size)
    serial.close()
    return {"clips_per_s": round(clips / elapsed, 1),
            "cpu_ms_per_clip": round(cpu_per_clip * 1000, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample-rate", type=int, default=44100)
    p.add_argument("--files", type=int, default=16, help="FLAC files to generate")
    p.add_argument("--file-seconds", type=float, default=10.0, help="length of each file")
    p.add_argument("--seconds", type=float, default=1.0, help="crop length")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=40, help="timed batches")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pitch-prob", type=float, default=0.3, help="probability of pitch shift")
    p.add_argument("--shards", action="store_true", help="also time a packed copy")
    a = p.parse_args()

    common = {
        "clip_seconds": a.seconds,
        "sample_rate": a.sample_rate,
        "workers": a.workers,
        "batch_size": a.batch_size,
        "batches": a.batches,
        "format": "FLAC PCM_16",
        "augment": "phase 0.8, gain 1.0, polarity 0.5, dequantize 1.0, "
        f"pitch {a.pitch_prob}; loudness -16 LUFS, silence retries",
    }
    with tempfile.TemporaryDirectory(prefix="soundry-bench-") as tmp:
        folder = Path(tmp) / "flac"
        synthesize(folder, "music", a.files, a.file_seconds, a.sample_rate, format="flac")
        rows = [{"benchmark": "data_throughput", "source": "folder", **measure(str(folder), a),
                 **common}]
        print(json.dumps(rows[-1]), flush=True)
        if a.shards:
            from soundry.data.pack import pack

            packed = Path(tmp) / "packed"
            pack(folder, packed, shard_bytes=64 * 2**20, fmt="flac", bits=16)
            rows.append({"benchmark": "data_throughput", "source": "shards",
                         **measure(str(packed), a), **common})
            print(json.dumps(rows[-1]), flush=True)
            print(json.dumps({"benchmark": "data_throughput", "summary": True,
                              "shards_over_folder": round(rows[1]["clips_per_s"]
                                                          / rows[0]["clips_per_s"], 3),
                              "shards_cpu_over_folder": round(rows[1]["cpu_ms_per_clip"]
                                                              / rows[0]["cpu_ms_per_clip"], 3)}))


if __name__ == "__main__":
    main()
