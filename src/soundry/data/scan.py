"""Dataset index: which audio files exist, what they hold, and which are unusable and why.

`scan(path)` accepts

- a folder: every audio file below it (sorted), unless the folder holds a manifest
  (`manifest.jsonl`, `manifest.csv`) or LJSpeech's `metadata.csv` + `wavs/`, which is used;
- a JSONL manifest: one object a line with `path` (relative to the manifest's folder or
  absolute) and optional `text`, `speaker`, `tags` (a mapping; a list is kept under the key
  `keywords`); other keys become tags;
- a CSV manifest with a header row and a `path` column (same optional columns);
- an LJSpeech `metadata.csv` (`id|text|normalized text`, audio in `wavs/<id>.wav`, or
  `<id>.wav` beside it).

Each file is probed cheaply: the header, a WAV data-chunk size check, and decoding a little
audio at its start and end (which catches truncated and corrupt files without decoding
everything). Unusable files land in `skipped` with a reason; nothing raises for a bad file.
NaN/Inf samples in the middle of a file are only found when training reads them (see
`soundry.data.datasets`).

Probe results are cached in `.soundry-index.json` in the scanned folder (or the manifest's
folder), keyed by path and checked against file size and modification time, so a re-scan
only probes new or changed files.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from soundry.audio.io import AUDIO_EXTENSIONS, error_reason
from soundry.errors import DataError

log = logging.getLogger(__name__)

CACHE_NAME = ".soundry-index.json"
_CACHE_VERSION = 1
_MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")
_PROBE_FRAMES = 2048
_KNOWN_KEYS = {"path", "text", "speaker", "tags"}
# keys a manifest may carry that describe the file rather than tag it
_IGNORED_KEYS = {"duration", "frames", "sample_rate", "channels"}


@dataclass
class AudioItem:
    """One usable file: absolute path, native rate (Hz), channels, length (frames, seconds).

    `target` is the matching clean file of a paired source.
    """

    path: str
    sample_rate: int
    channels: int
    frames: int
    duration: float
    text: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    speaker: str | None = None
    target: str | None = None
    #: the original file (relative path) of an item read from a packed set, whose `path`
    #: is a member reference into a shard
    label: str | None = None

    @property
    def name(self) -> str:
        """File name without folder and extension."""
        return Path(self.label or self.path).stem


@dataclass
class DatasetIndex:
    """The usable files of one source and the skipped ones ({path, reason})."""

    root: str
    items: list[AudioItem] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return len(self.items)

    @property
    def total_seconds(self) -> float:
        return float(sum(item.duration for item in self.items))

    def summary(self, with_items: bool = False) -> dict[str, Any]:
        """JSON-ready summary: usable count, total seconds, rates, channels, skipped files."""
        rates: dict[str, int] = {}
        chans: dict[str, int] = {}
        for item in self.items:
            rates[str(item.sample_rate)] = rates.get(str(item.sample_rate), 0) + 1
            chans[str(item.channels)] = chans.get(str(item.channels), 0) + 1
        out: dict[str, Any] = {
            "root": self.root,
            "usable": self.usable,
            "total_seconds": round(self.total_seconds, 3),
            "sample_rates": rates,
            "channels": chans,
            "skipped": list(self.skipped),
        }
        if with_items:
            out["items"] = [asdict(item) for item in self.items]
        return out

    def require_usable(self) -> None:
        """Raise a DataError naming the source and the first skip reasons when it is empty."""
        if self.items:
            return
        if not self.skipped:
            raise DataError(f"no audio files found in '{self.root}'")
        reasons = "; ".join(f"{Path(s['path']).name}: {s['reason']}" for s in self.skipped[:3])
        more = f" (and {len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
        raise DataError(
            f"no usable audio in '{self.root}': all {len(self.skipped)} files were skipped "
            f"({reasons}{more}). Run `soundry data scan {self.root}` for the full list."
        )


@dataclass
class _Entry:
    """A file to probe, with what a manifest said about it."""

    path: Path
    text: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    speaker: str | None = None


# ----------------------------------------------------------------------------- public


def scan(
    path_or_manifest: str | Path, min_seconds: float = 0.0, cache: bool = True
) -> DatasetIndex:
    """Index a folder or manifest (see the module docstring); bad files go to `skipped`.

    `min_seconds`: files shorter than this are skipped as too short. `cache`: read and update
    the probe cache next to the data (silently skipped when the folder is read-only).
    """
    from soundry.data.shards import shard_root

    packed = shard_root(path_or_manifest)
    if packed is not None:  # a packed set (soundry data pack), by path or URL
        return scan_packed(packed, min_seconds)
    src = Path(path_or_manifest).expanduser()
    if not src.exists():
        raise DataError(f"data path '{path_or_manifest}' does not exist")
    entries, cache_dir, missing = _entries(src)
    index = DatasetIndex(root=str(src))
    for p in missing:
        index.skipped.append({"path": str(p), "reason": "missing (listed in manifest)"})

    cache_path = cache_dir / CACHE_NAME
    old = _read_cache(cache_path) if cache else {}
    new: dict[str, dict[str, Any]] = {}
    for entry in entries:
        key = _cache_key(entry.path, cache_dir)
        try:
            st = entry.path.stat()
        except OSError as exc:
            index.skipped.append({"path": str(entry.path), "reason": f"cannot stat: {exc}"})
            continue
        record = old.get(key)
        if not (record and record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns):
            record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **probe(entry.path)}
        new[key] = record
        if "reason" in record:
            index.skipped.append({"path": str(entry.path), "reason": record["reason"]})
            continue
        duration = record["frames"] / record["sample_rate"]
        if duration < min_seconds:
            reason = f"too short ({duration:.3f} s < min_seconds {min_seconds:g} s)"
            index.skipped.append({"path": str(entry.path), "reason": reason})
            continue
        index.items.append(
            AudioItem(
                path=str(entry.path.resolve()),
                sample_rate=record["sample_rate"],
                channels=record["channels"],
                frames=record["frames"],
                duration=duration,
                text=entry.text,
                tags=entry.tags,
                speaker=entry.speaker,
            )
        )
    if cache and new != {k: old.get(k) for k in new}:
        if src.is_dir() and not _has_manifest(src):
            merged = new  # a folder scan saw every file: drop entries of deleted files
        else:
            merged = {**old, **new}
        _write_cache(cache_path, merged)
    return index


def scan_pairs(
    input_path: str | Path, target_path: str | Path, min_seconds: float = 0.0, cache: bool = True
) -> DatasetIndex:
    """Index a paired source: inputs and targets matched by relative path minus extension.

    Items are the inputs, with `target` set and `frames`/`duration` the shorter of the two.
    Inputs without a usable target (or at another sample rate) are skipped with a reason.
    """
    inputs = scan(input_path, min_seconds=min_seconds, cache=cache)
    targets = scan(target_path, min_seconds=min_seconds, cache=cache)
    by_name = {_pair_key(t.path, target_path): t for t in targets.items}
    out = DatasetIndex(root=str(input_path), skipped=list(inputs.skipped) + list(targets.skipped))
    for item in inputs.items:
        target = by_name.get(_pair_key(item.path, input_path))
        if target is None:
            out.skipped.append({"path": item.path, "reason": "no matching target file"})
            continue
        if target.sample_rate != item.sample_rate:
            reason = f"input is {item.sample_rate} Hz but target is {target.sample_rate} Hz"
            out.skipped.append({"path": item.path, "reason": reason})
            continue
        frames = min(item.frames, target.frames)
        item.frames, item.duration = frames, frames / item.sample_rate
        item.target = target.path
        out.items.append(item)
    return out


def probe(path: str | Path) -> dict[str, Any]:
    """Check one file cheaply: {sample_rate, channels, frames} or {reason} when unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return {"reason": f"cannot stat: {exc}"}
    if size == 0:
        return {"reason": "empty file (0 bytes)"}
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return {"reason": f"not readable as audio ({error_reason(exc)})"}
    frames, sr, channels = int(info.frames), int(info.samplerate), int(info.channels)
    if sr <= 0 or channels <= 0:
        return {"reason": f"invalid header (sample rate {sr}, channels {channels})"}
    if frames <= 0:
        return {"reason": "no audio frames (header only)"}
    declared = _wav_declared_frames(path, size)
    if declared is not None and declared > frames:
        return {"reason": f"truncated (header declares {declared} frames, file holds {frames})"}
    try:
        with sf.SoundFile(str(path)) as f:
            n = min(frames, _PROBE_FRAMES)
            head = f.read(n, dtype="float32", always_2d=True)
            f.seek(frames - n)
            tail = f.read(n, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return {"reason": f"corrupt or truncated ({error_reason(exc)})"}
    if len(head) < n or len(tail) < n:
        return {"reason": f"truncated (header declares {frames} frames, fewer can be decoded)"}
    if not (np.isfinite(head).all() and np.isfinite(tail).all()):
        return {"reason": "non-finite samples (NaN/Inf)"}
    return {"sample_rate": sr, "channels": channels, "frames": frames}


# ----------------------------------------------------------------------------- manifests


def _has_manifest(folder: Path) -> bool:
    return any((folder / n).is_file() for n in _MANIFEST_NAMES) or _is_ljspeech(folder)


def _is_ljspeech(folder: Path) -> bool:
    """LJSpeech's layout (metadata.csv + wavs/), or its metadata.csv beside the WAVs."""
    meta = folder / "metadata.csv"
    if not meta.is_file():
        return False
    return (folder / "wavs").is_dir() or (
        _looks_like_ljspeech(meta) and _first_id_wav(meta, folder).is_file())


def _first_id_wav(meta: Path, folder: Path) -> Path:
    with meta.open(encoding="utf-8") as handle:
        return folder / f"{handle.readline().split('|')[0]}.wav"


def _entries(src: Path) -> tuple[list[_Entry], Path, list[Path]]:
    """(files to probe, folder for the cache, manifest paths that do not exist)."""
    if src.is_dir():
        for name in _MANIFEST_NAMES:
            if (src / name).is_file():
                return _entries(src / name)
        if _is_ljspeech(src):
            return _split_missing(_read_ljspeech(src / "metadata.csv"), src)
        files = sorted(
            p for p in src.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
        )
        return [_Entry(p) for p in files if not p.name.startswith(".")], src, []
    suffix = src.suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return [_Entry(src)], src.parent, []
    if suffix in (".jsonl", ".json"):
        return _split_missing(_read_jsonl(src), src.parent)
    if suffix in (".csv", ".tsv", ".txt"):
        if src.name == "metadata.csv" and _looks_like_ljspeech(src):
            return _split_missing(_read_ljspeech(src), src.parent)
        return _split_missing(_read_csv(src), src.parent)
    raise DataError(
        f"'{src}' is neither a folder, an audio file nor a manifest (.jsonl or .csv)"
    )


def _split_missing(entries: list[_Entry], root: Path) -> tuple[list[_Entry], Path, list[Path]]:
    present = [e for e in entries if e.path.is_file()]
    missing = [e.path for e in entries if not e.path.is_file()]
    return present, root, missing


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _entry_from_row(row: dict[str, Any], base: Path, where: str) -> _Entry:
    raw_path = row.get("path")
    if not raw_path:
        raise DataError(f"{where}: row has no 'path'")
    tags_value = row.get("tags")
    tags: dict[str, str] = {}
    if isinstance(tags_value, dict):
        tags = {str(k): str(v) for k, v in tags_value.items()}
    elif isinstance(tags_value, list):
        tags = {"keywords": ", ".join(str(t) for t in tags_value)}
    elif tags_value not in (None, ""):
        tags = {"keywords": str(tags_value)}
    for key, value in row.items():
        if key not in _KNOWN_KEYS and key not in _IGNORED_KEYS and value not in (None, ""):
            tags[str(key)] = str(value)
    text = row.get("text")
    speaker = row.get("speaker")
    return _Entry(
        path=_resolve(base, str(raw_path)),
        text=str(text) if text not in (None, "") else None,
        tags=tags,
        speaker=str(speaker) if speaker not in (None, "") else None,
    )


def _read_jsonl(path: Path) -> list[_Entry]:
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read manifest '{path}': {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"manifest '{path}' line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        entries.append(_entry_from_row(row, path.parent, where))
    return entries


def _read_csv(path: Path) -> list[_Entry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read manifest '{path}': {exc}") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise DataError(
            f"CSV manifest '{path}' needs a header row with a 'path' column "
            f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})"
        )
    return [
        _entry_from_row(row, path.parent, f"manifest '{path}' line {n}")
        for n, row in enumerate(reader, start=2)
    ]


def _looks_like_ljspeech(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return "|" in first and not first.lower().startswith("path")


def _read_ljspeech(path: Path) -> list[_Entry]:
    """LJSpeech: `id|text|normalized text[|speaker]`; the normalised text is used when
    present, and the optional 4th column is the speaker id. Audio
    is `wavs/<id>.wav`, or `<id>.wav` beside metadata.csv when there is no wavs/ folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read '{path}': {exc}") from None
    entries = []
    audio = path.parent / "wavs" if (path.parent / "wavs").is_dir() else path.parent
    for line in lines:
        if not line.strip():
            continue
        parts = line.split("|")
        normalized = parts[2] if len(parts) > 2 else ""
        text = normalized if normalized.strip() else (parts[1] if len(parts) > 1 else "")
        speaker = parts[3].strip() if len(parts) > 3 else ""
        entries.append(
            _Entry(path=audio / f"{parts[0]}.wav", text=text.strip() or None,
                   speaker=speaker or None)
        )
    return entries


# ----------------------------------------------------------------------------- probing helpers


def _wav_declared_frames(path: Path, size: int) -> int | None:
    """Frames the WAV `data` chunk header claims, when that exceeds what the file holds.

    libsndfile silently shortens a truncated WAV to the bytes present; comparing the header
    with the file size is how truncation is detected. None for non-WAV files, streaming
    headers (size 0 or 0xFFFFFFFF) and files whose data chunk fits.
    """
    if path.suffix.lower() != ".wav":
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        chunk, length = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20 : pos + 22])[0]
        if chunk == b"data":
            start = pos + 8
            if length in (0, 0xFFFFFFFF) or block_align == 0 or start + length <= size:
                return None
            return length // block_align
        pos += 8 + length + (length & 1)
    return None


def _pair_key(item_path: str, root: str | Path) -> str:
    root = Path(root)
    base = root if root.is_dir() else root.parent
    p = Path(item_path)
    try:
        rel = p.relative_to(base.resolve())
    except ValueError:
        rel = Path(p.name)
    return str(rel.with_suffix(""))


# ----------------------------------------------------------------------------- cache


def _cache_key(path: Path, cache_dir: Path) -> str:
    try:
        return str(path.relative_to(cache_dir))
    except ValueError:
        return str(path.resolve())


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(path: Path, files: dict[str, dict[str, Any]]) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".soundry-index.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump({"version": _CACHE_VERSION, "files": files}, handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only dataset folder still scans, just without a cache
        log.debug("cannot write scan cache %s: %s", path, exc)


def scan_packed(root: str, min_seconds: float = 0.0) -> DatasetIndex:
    """The `DatasetIndex` of the packed set at `root`: one `AudioItem` per item, its path a
    member reference into its shard; items shorter than `min_seconds` are skipped."""
    from soundry.audio.tar_members import member_ref
    from soundry.data.shards import read_index

    packed = read_index(root)
    out = DatasetIndex(root=root)
    out.skipped.extend(packed.head.get("skipped", []))
    for line in packed.items:
        ref = member_ref(f"{root.rstrip('/')}/{line['shard']}", line["offset"], line["size"])
        if line["duration"] < min_seconds:
            out.skipped.append({"path": line["source"], "reason": (
                f"too short ({line['duration']:.3f} s < min_seconds {min_seconds:g} s)")})
            continue
        out.items.append(AudioItem(
            path=ref, sample_rate=int(line["sample_rate"]), channels=int(line["channels"]),
            frames=int(line["frames"]), duration=float(line["duration"]), text=line.get("text"),
            tags=dict(line.get("tags") or {}), speaker=line.get("speaker"),
            label=line["source"]))
    return out
