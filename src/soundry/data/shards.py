"""Packed datasets: WebDataset tar shards with an index, read by random access.

`pack(DATA, OUT)` (`soundry data pack`) scans a folder or manifest like `soundry data scan`
(bad files skipped and listed), and writes

    OUT/shard-000000.tar ...   WebDataset shards: per item `<key>.flac` (or `.wav`) and
                               `<key>.json` (text, tags, speaker, duration, rate, source)
    OUT/items.jsonl            one line per item: shard, byte offset and size of its audio
                               member inside the (uncompressed) tar, and its metadata
    OUT/index.json             shard list with item counts and bytes, items, total hours

`index.json` is written last, so a killed pack leaves no index (and no half dataset that
looks whole). The shards are plain WebDataset tars: `webdataset.WebDataset(urls)` streams
them too.

Training reads a packed set wherever a folder or manifest is accepted (`--data OUT`,
`data.sources[].path`), by local path or any fsspec URL (`file://`, `memory://`, `s3://`
with the s3fs backend): `scan` sees `index.json` and lists the items from `items.jsonl`. An
item's audio is read by seeking to its member in the tar (one ranged read; no extraction),
so packed items go through the same samplers as files: every epoch a seeded permutation
of all items (a full shuffle, not a shuffle buffer), split across ranks and workers by the
global item index (no duplicates, none lost, equal step counts per rank), random crops
seeded by (seed, epoch, index), source mixing by weight, exact mid-epoch resume. The one
cost is a random read per item where streaming would read shards in order; on local disk
and object stores with ranged GETs this is what a folder of files costs too.

An item's path is a member reference, `tar+<shard url>@<offset>+<size>`
(`soundry.audio.tar_members`), which every audio reader opens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundry.errors import DataError

INDEX_NAME = "index.json"
ITEMS_NAME = "items.jsonl"
FORMAT = "soundry-shards"


# ----------------------------------------------------------------------------- reading


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _read_text(url: str) -> str:
    if "://" not in url or url.startswith("file://"):
        return Path(url.removeprefix("file://")).read_text()
    import fsspec

    with fsspec.open(url, "rt") as fh:
        return fh.read()


def shard_root(path: str | Path) -> str | None:
    """The folder URL of a packed set when `path` is one (its folder, or its index.json),
    else None."""
    text = str(path)
    base = text[: -len(INDEX_NAME)].rstrip("/") if text.endswith(INDEX_NAME) else text
    try:
        head = json.loads(_read_text(_join(base, INDEX_NAME)))
    except (OSError, ValueError, DataError, ImportError):
        return None
    except Exception:  # noqa: BLE001  (any fsspec backend error means: not a packed set)
        return None
    return base if isinstance(head, dict) and head.get("format") == FORMAT else None


@dataclass
class ShardIndex:
    """A packed set's index.json and its item lines."""

    root: str
    head: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)


def read_index(root: str) -> ShardIndex:
    """index.json and items.jsonl of the packed set at `root` (folder path or URL)."""
    head = json.loads(_read_text(_join(root, INDEX_NAME)))
    if head.get("version") != 1:
        raise DataError(f"packed set '{root}' has index version {head.get('version')}; this "
                        "soundry reads version 1")
    items = [json.loads(line) for line in _read_text(_join(root, ITEMS_NAME)).splitlines()
             if line.strip()]
    if len(items) != head.get("items"):
        raise DataError(f"packed set '{root}': {ITEMS_NAME} lists {len(items)} items, "
                        f"{INDEX_NAME} says {head.get('items')}")
    return ShardIndex(root, head, items)


__all__ = ["FORMAT", "INDEX_NAME", "ITEMS_NAME", "ShardIndex", "read_index", "shard_root"]
