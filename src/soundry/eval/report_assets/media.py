"""Audio and images for a report: embedded as data URIs or copied into a folder beside it.

Pages are assembled with placeholder tokens from `MediaStore.add_*`; `finalize` then decides
how media travel with the HTML and substitutes the tokens:

- "embed": every file becomes a base64 data URI, so the report is one file to send around.
- "folder": files are written to `<report stem>_media/` next to the HTML (created by the
  command) and referenced by relative paths; the folder must travel with the HTML.
- "auto" (default): embed while the media total at most `EMBED_LIMIT_BYTES` (base64 adds a
  third, and browsers get slow with pages of hundreds of megabytes), else use a folder.

Audio is re-encoded as 16-bit PCM WAV, which every browser plays and which halves the size
of float WAVs. Identical files (e.g. the same reference clip at every step) are stored once.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from soundry.errors import SoundryError

EMBED_LIMIT_BYTES = 20 * 1024 * 1024
MEDIA_MODES = ("auto", "embed", "folder")
_TOKEN = re.compile(r"@@media:(\d+)@@")


@dataclass
class MediaItem:
    data: bytes
    mime: str
    filename: str
    digest: str
    duration: float | None = None  # seconds, for audio


class MediaStore:
    """Collects the page's media; `add_*` return a placeholder token used as the `src`."""

    def __init__(self) -> None:
        self.items: list[MediaItem] = []
        self._by_digest: dict[str, int] = {}

    def add_audio(self, path: Path) -> tuple[str, float]:
        """Token for the clip at `path` and its duration in seconds."""
        try:
            audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise SoundryError(f"cannot read validation audio '{path}': {exc}") from None
        buf = io.BytesIO()
        # Clip before converting: float WAVs may hold values just past full scale.
        sf.write(buf, np.clip(audio, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
        token = self._add(buf.getvalue(), "audio/wav", path.stem + ".wav")
        duration = audio.shape[0] / sr if sr else 0.0
        self.items[self._index(token)].duration = duration
        return token, duration

    def add_image(self, path: Path) -> tuple[str, bytes]:
        """Token for the image at `path` and its bytes."""
        data = path.read_bytes()
        mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        return self._add(data, mime, path.name), data

    def total_bytes(self) -> int:
        return sum(len(i.data) for i in self.items)

    def choose_mode(self, mode: str) -> str:
        if mode not in MEDIA_MODES:
            raise SoundryError(f"media mode '{mode}' must be one of {', '.join(MEDIA_MODES)}")
        if mode == "auto":
            return "embed" if self.total_bytes() <= EMBED_LIMIT_BYTES else "folder"
        return mode

    def finalize(self, html: str, out_path: Path, mode: str) -> tuple[str, str, Path | None]:
        """(html with real sources, the mode used, the media folder or None)."""
        mode = self.choose_mode(mode)
        folder: Path | None = None
        if mode == "embed":
            srcs = [
                f"data:{i.mime};base64,{base64.b64encode(i.data).decode('ascii')}"
                for i in self.items
            ]
        else:
            folder = out_path.parent / f"{out_path.stem}_media"
            folder.mkdir(parents=True, exist_ok=True)
            srcs = []
            for item in self.items:
                target = folder / item.filename
                if not target.is_file() or target.read_bytes() != item.data:
                    target.write_bytes(item.data)
                srcs.append(f"{folder.name}/{item.filename}")
        return _TOKEN.sub(lambda m: srcs[int(m.group(1))], html), mode, folder

    # ------------------------------------------------------------------ internals
    def _add(self, data: bytes, mime: str, name: str) -> str:
        digest = hashlib.sha1(data).hexdigest()
        if digest in self._by_digest:
            return f"@@media:{self._by_digest[digest]}@@"
        stem, _, ext = name.rpartition(".")
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "media"
        index = len(self.items)
        self.items.append(MediaItem(data, mime, f"{safe}-{digest[:10]}.{ext}", digest))
        self._by_digest[digest] = index
        return f"@@media:{index}@@"

    @staticmethod
    def _index(token: str) -> int:
        m = _TOKEN.fullmatch(token)
        assert m is not None
        return int(m.group(1))
