"""`soundry data preview`: training items exactly as the model will see them.

Writes the first `count` items of the training loader (after cropping, loudness
normalisation and augmentation) as float WAV files, so nothing is lost to requantisation,
plus `listing.json` and `listing.csv` saying where each came from: source, file, offset and
the augmentations applied. It is the first thing to listen to before a long run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from soundry.data.config import DataConfig

_CSV_COLUMNS = (
    "file", "source", "path", "target", "offset", "offset_seconds", "epoch", "index",
    "replaced", "augment", "degrade", "peak",
)


def preview(
    data_cfg: DataConfig,
    seed: int,
    count: int,
    out_dir: str | Path,
    hop: int = 1,
) -> list[dict[str, Any]]:
    """Write `count` training items to `out_dir` and return their listing rows."""
    import numpy as np

    from soundry.audio.io import write_audio
    from soundry.data.loader import build_train_loader

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loader = build_train_loader(data_cfg, seed, hop=hop, with_meta=True, num_workers=0)
    names = loader.sources.names if loader.sources is not None else []
    rows: list[dict[str, Any]] = []
    try:
        for batch in loader:
            for b, meta in enumerate(batch["meta"]):
                if len(rows) >= count:
                    break
                stem = f"item_{len(rows):03d}"
                audio = batch["audio"][b, :, : int(batch["lengths"][b])].numpy()
                write_audio(out / f"{stem}.wav", audio, data_cfg.sample_rate, subtype="FLOAT")
                if "input" in batch:
                    noisy = batch["input"][b, :, : int(batch["lengths"][b])].numpy()
                    write_audio(out / f"{stem}_input.wav", noisy, data_cfg.sample_rate, "FLOAT")
                source = int(batch["source"][b])
                rows.append(
                    {
                        "file": f"{stem}.wav",
                        "source": names[source] if source < len(names) else str(source),
                        "path": meta["path"],
                        "target": meta.get("target"),
                        "offset": meta["offset"],
                        "offset_seconds": meta["offset_seconds"],
                        "epoch": int(batch["epoch"][b]),
                        "index": int(batch["index"][b]),
                        "replaced": meta["replaced"],
                        "augment": meta["augment"],
                        "degrade": meta.get("degrade", {}),
                        "peak": round(float(np.abs(audio).max()) if audio.size else 0.0, 4),
                    }
                )
            if len(rows) >= count:
                break
    finally:
        loader.close()
    (out / "listing.json").write_text(json.dumps(rows, indent=2) + "\n")
    with (out / "listing.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            flat = dict(row)
            flat["augment"] = json.dumps(row["augment"], sort_keys=True)
            flat["degrade"] = json.dumps(row["degrade"], sort_keys=True)
            writer.writerow(flat)
    return rows
