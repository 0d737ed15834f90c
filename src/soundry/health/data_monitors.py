"""Monitors of the training data as the model sees it: crops, sample rates, silence."""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

import numpy as np

from soundry.health.core import BatchInfo, Finding, Monitor

DECILES = 10


class CropCoverage(Monitor):
    """`crop_coverage`: random training windows that do not cover their files.

    Only windows of files with room for a random crop (at least 1.5 windows long) count.
    Two signs: one offset value holding most windows (a crop function stuck at 0, an
    inverted flag), and, for files cropped often enough, windows that together touch
    less than half of the file's deciles. Validation crops are fixed on purpose and never
    reach this monitor; nor do one-shot windows (always the file start).
    """

    id = "crop_coverage"
    MAX_OFFSETS = 4096  # distinct offset values tracked (memory bound)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.offsets: Counter[int] = Counter()
        self.windows = 0
        self.first_step: int | None = None
        self.files: dict[str, list[int]] = {}  # "source:file" -> [crops, decile bitmask]

    def on_batch(self, step: int, info: BatchInfo) -> None:
        for file_id, offset, length, total in info.windows or ():
            if total < 1.5 * length or length <= 0:
                continue
            if self.first_step is None:
                self.first_step = step
            self.windows += 1
            if offset in self.offsets or len(self.offsets) < self.MAX_OFFSETS:
                self.offsets[offset] += 1
            key = f"{file_id[0]}:{file_id[1]}"
            entry = self.files.setdefault(key, [0, 0])
            first = min(DECILES - 1, offset * DECILES // total)
            last = min(DECILES - 1, (offset + length - 1) * DECILES // total)
            for d in range(first, last + 1):
                entry[1] |= 1 << d
            entry[0] += 1

    def check(self, step: int) -> list[Finding]:
        cfg = self.cfg
        if self.windows < cfg.min_windows:
            return []
        out = []
        offset, count = self.offsets.most_common(1)[0]
        share = count / self.windows
        if share > cfg.max_same_offset:
            out.append(self.finding(
                step, "error",
                f"{share:.0%} of {self.windows} random training crops start at the same "
                f"offset ({offset}): the crops do not move through the files, so the model "
                "trains on one stretch of each (check the crop / window code and its flags)",
                key="same_offset", since=self.first_step, offset=offset, share=share,
                windows=self.windows, distinct_offsets=len(self.offsets)))
        cropped = [e for e in self.files.values() if e[0] >= cfg.min_windows_per_file]
        if len(cropped) >= 2:
            cover = float(np.mean([bin(e[1]).count("1") / DECILES for e in cropped]))
            if cover < cfg.min_decile_coverage:
                out.append(self.finding(
                    step, "error",
                    f"files cropped {cfg.min_windows_per_file}+ times had on average only "
                    f"{cover:.0%} of their deciles covered by training crops",
                    key="deciles", since=self.first_step, files=len(cropped),
                    mean_decile_coverage=cover))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"offsets": [[k, v] for k, v in self.offsets.items()], "windows": self.windows,
                "first_step": self.first_step, "files": self.files}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.offsets = Counter({int(k): int(v) for k, v in state.get("offsets", [])})
        self.windows = int(state.get("windows", 0))
        self.first_step = state.get("first_step")
        self.files = {k: [int(a), int(b)] for k, (a, b) in state.get("files", {}).items()}


class SampleRate(Monitor):
    """`sample_rate`: content narrower than the model's rate, or files at mixed rates.

    At the start, from the data index: files stored at a rate below the model's (they are
    upsampled, so their top band is empty) and sources at more than one rate. While
    training, on a few items of each batch: the share of items with no energy in the top
    band (above `top_band` x Nyquist), e.g. 48 kHz files band-limited to 4 kHz fed to a 16
    kHz model.
    """

    id = "sample_rate"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.checked = 0
        self.limited = 0
        self.first_step: int | None = None
        self.top_db: deque[float] = deque(maxlen=16)
        self.sample_rate = 0

    def on_start(self, context: dict[str, Any]) -> list[Finding]:
        rates: dict[int, int] = context.get("file_rates") or {}
        model_rate = int(context.get("sample_rate") or 0)
        out = []
        if not rates or not model_rate:
            return out
        lower = {r: n for r, n in rates.items() if r < model_rate}
        total = sum(rates.values())
        if lower:
            n = sum(lower.values())
            out.append(self.finding(
                0, "warning",
                f"{n} of {total} training files are stored below the model's rate "
                f"({', '.join(f'{r} Hz' for r in sorted(lower))} < {model_rate} Hz): "
                f"they are upsampled and hold nothing above {min(lower) // 2} Hz, so the "
                "model learns an empty top band for them",
                key="lower_rate", rates=rates, model_rate=model_rate))
        if len(rates) > 1:
            out.append(self.finding(
                0, "warning",
                f"training files come at {len(rates)} sample rates "
                f"({', '.join(f'{r} Hz: {n}' for r, n in sorted(rates.items()))}); all are "
                f"resampled to {model_rate} Hz, but their bandwidths differ",
                key="mixed_rates", rates=rates, model_rate=model_rate))
        return out

    def on_batch(self, step: int, info: BatchInfo) -> None:
        if info.audio is None or not info.sample_rate:
            return
        self.sample_rate = info.sample_rate
        lengths = info.audio_lengths or [info.audio.shape[-1]] * len(info.audio)
        for row, n in zip(info.audio[: self.cfg.items_per_batch], lengths, strict=False):
            x = row[: max(0, int(n))]
            if x.size < 256 or not np.any(x):
                continue
            spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
            total = float(spec.sum())
            if total <= 0 or not math.isfinite(total):
                continue
            top = float(spec[int(self.cfg.top_band * spec.size):].sum())
            db = 10 * math.log10(max(top / total, 1e-30))
            self.top_db.append(db)
            self.checked += 1
            if db < -self.cfg.empty_db:
                self.limited += 1
                if self.first_step is None:
                    self.first_step = step

    def check(self, step: int) -> list[Finding]:
        cfg = self.cfg
        if self.checked < cfg.min_items:
            return []
        share = self.limited / self.checked
        if share <= cfg.max_band_limited:
            return []
        cut = cfg.top_band * self.sample_rate / 2
        return [self.finding(
            step, "warning",
            f"{share:.0%} of {self.checked} training items checked have no energy above "
            f"{cut:.0f} Hz (< -{cfg.empty_db:g} dB of their total): the data is band-limited "
            f"(e.g. upsampled from {2 * cut:.0f} Hz or less). A {self.sample_rate} Hz model "
            "spends its top band on nothing; resample the data to its real rate or train at it",
            key="band_limited", since=self.first_step, share=share, checked=self.checked,
            top_band_hz=cut, recent_top_band_db=list(self.top_db))]

    def state_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "limited": self.limited, "first_step": self.first_step,
                "top_db": list(self.top_db), "sample_rate": self.sample_rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checked, self.limited = int(state.get("checked", 0)), int(state.get("limited", 0))
        self.first_step = state.get("first_step")
        self.top_db = deque(state.get("top_db", []), maxlen=16)
        self.sample_rate = int(state.get("sample_rate", 0))


class Silence(Monitor):
    """`silence`: many silent or near-silent training items, or clipped data.

    Per item of each batch (its valid samples): RMS in dBFS, and the share of samples in
    flat runs at the item's peak (two or more equal samples at |peak|: what hard clipping
    leaves, whatever gain came after). Decided over the last `window` items.
    """

    id = "silence"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.silent: deque[int] = deque(maxlen=cfg.window)
        self.clipped: deque[int] = deque(maxlen=cfg.window)
        self.first_silent: int | None = None
        self.first_clipped: int | None = None
        self.items = 0

    def on_batch(self, step: int, info: BatchInfo) -> None:
        if info.audio is None:
            return
        lengths = info.audio_lengths or [info.audio.shape[-1]] * len(info.audio)
        for row, n in zip(info.audio, lengths, strict=False):
            x = row[: max(0, int(n))]
            if x.size == 0:
                continue
            self.items += 1
            rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
            silent = rms <= 10 ** (self.cfg.silent_dbfs / 20)
            self.silent.append(int(silent))
            if silent and self.first_silent is None:
                self.first_silent = step
            clipped = False
            if not silent:
                mag = np.abs(x)
                at_peak = mag >= mag.max() * (1 - 1e-6)
                flat = at_peak[1:] & at_peak[:-1]
                clipped = flat.mean() > self.cfg.flat_fraction
            self.clipped.append(int(clipped))
            if clipped and self.first_clipped is None:
                self.first_clipped = step

    def check(self, step: int) -> list[Finding]:
        cfg = self.cfg
        n = len(self.silent)
        if n < cfg.min_items:
            return []
        out = []
        share = sum(self.silent) / n
        if share >= cfg.warn_share:
            severity = "error" if share >= cfg.error_share else "warning"
            out.append(self.finding(
                step, severity,
                f"{share:.0%} of the last {n} training items are silent or near-silent (RMS "
                f"under {cfg.silent_dbfs:g} dBFS): the model learns silence. Check the files "
                "(`soundry data scan`), trim leading/trailing silence, or set "
                "data.loudness.min_lufs so quiet crops are re-drawn",
                key="silent", since=self.first_silent, share=share, items=n))
        clipped = sum(self.clipped) / n
        if clipped > cfg.clipped_share:
            out.append(self.finding(
                step, "warning",
                f"{clipped:.0%} of the last {n} training items are clipped (flat runs at their "
                "peak): the model learns the distortion",
                key="clipped", since=self.first_clipped, share=clipped, items=n))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"silent": list(self.silent), "clipped": list(self.clipped), "items": self.items,
                "first_silent": self.first_silent, "first_clipped": self.first_clipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.silent = deque(state.get("silent", []), maxlen=self.cfg.window)
        self.clipped = deque(state.get("clipped", []), maxlen=self.cfg.window)
        self.items = int(state.get("items", 0))
        self.first_silent, self.first_clipped = state.get("first_silent"), state.get(
            "first_clipped")
