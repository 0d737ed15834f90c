"""Audio stored inside uncompressed tar files (packed datasets): member references.

A member reference names the bytes of one tar member, `tar+<shard url>@<offset>+<size>`
(the shard by local path or fsspec URL; offset and size in bytes). `open_source` turns any
audio path into what soundfile opens: the path itself, or a seekable read-only file object
over the member's bytes (a few shard files stay open per process). See
`soundry.data.shards` for how packed sets are written and listed.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

from soundry.errors import DataError

MEMBER_PREFIX = "tar+"


def member_ref(shard_url: str, offset: int, size: int) -> str:
    """The path of a tar member's bytes: `tar+<shard url>@<offset>+<size>`."""
    return f"{MEMBER_PREFIX}{shard_url}@{int(offset)}+{int(size)}"


def is_member_ref(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(MEMBER_PREFIX) and "@" in path


def parse_member_ref(ref: str) -> tuple[str, int, int]:
    """(shard url, byte offset, byte size) of a member reference."""
    body = ref[len(MEMBER_PREFIX):]
    url, _, span = body.rpartition("@")
    offset, _, size = span.partition("+")
    try:
        return url, int(offset), int(size)
    except ValueError:
        raise DataError(f"malformed shard member reference '{ref}'") from None


class _Window(io.RawIOBase):
    """A read-only, seekable view of bytes [offset, offset + size) of a file object."""

    def __init__(self, raw: BinaryIO, offset: int, size: int) -> None:
        self.raw, self.offset, self.size, self.pos = raw, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = min(max(0, base + pos), self.size)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        self.raw.seek(self.offset + self.pos)
        data = self.raw.read(n)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


class _Handles:
    """Open shard files of this process (a few, least recently used closed first). Keyed by
    process id, so a forked data worker opens its own instead of sharing the parent's."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.open: OrderedDict[tuple[int, str], Any] = OrderedDict()

    def get(self, url: str) -> BinaryIO:
        key = (os.getpid(), url)
        handle = self.open.pop(key, None)
        if handle is None:
            handle = _open_url(url)
        self.open[key] = handle
        while len(self.open) > self.size:
            _, old = self.open.popitem(last=False)
            try:
                old.close()
            except OSError:
                pass
        return handle


_HANDLES = _Handles()


def _open_url(url: str) -> BinaryIO:
    if "://" not in url or url.startswith("file://"):
        path = url.removeprefix("file://")
        try:
            return open(path, "rb")  # noqa: SIM115  (kept open in _HANDLES)
        except OSError as exc:
            raise DataError(f"cannot open shard '{url}': {exc}") from None
    try:
        import fsspec
    except ImportError:
        raise DataError(f"reading '{url}' needs fsspec (pip install fsspec)") from None
    try:
        return fsspec.open(url, "rb").open()
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"cannot open shard '{url}': {exc}") from None


def open_source(path: str | Path) -> Any:
    """What soundfile should open for `path`: the path itself, or a seekable file object over
    a shard member's bytes for a member reference."""
    if not is_member_ref(path):
        return str(path)
    url, offset, size = parse_member_ref(str(path))
    return _Window(_HANDLES.get(url), offset, size)


__all__ = ["MEMBER_PREFIX", "is_member_ref", "member_ref", "open_source", "parse_member_ref"]
