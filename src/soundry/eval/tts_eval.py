"""Scoring TTS outputs against deterministic reference renderings (no downloaded model).

Each case is a sentence spoken in a training voice: the reference is the same sentence
rendered by the same (deterministic, synthetic) voice; `wrong` is another sentence rendered
by that voice. An output is scored on:

- duration: |output frames - reference frames| / reference frames;
- content: DTW mel-cepstral distortion to the reference lower than to `wrong` (the
  sentence is recognisably the right one, in the same voice);
- voice: its mean cepstrum nearest to the prompted voice's signature (mean over that
  voice's training clips) among all training voices'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from soundry.eval.tts_metrics import dtw_mcd, mean_cepstrum, nearest_voice


@dataclass
class SpeakCase:
    """One test utterance: `text` in `voice`; reference and wrong-sentence audio, mono [T]
    at the scoring rate."""

    text: str
    voice: str
    reference: np.ndarray
    wrong: np.ndarray
    id: str = ""


def voice_signatures(clips: dict[str, Sequence[np.ndarray]], sample_rate: int
                     ) -> dict[str, np.ndarray]:
    """Voice -> mean of its clips' mean cepstra (mono clips [T])."""
    return {v: np.mean([mean_cepstrum(c, sample_rate) for c in cs], axis=0)
            for v, cs in clips.items() if cs}


def score(output: np.ndarray, case: SpeakCase, signatures: dict[str, np.ndarray],
          sample_rate: int, hop: int) -> dict[str, object]:
    """Scores of one mono output [T] (`hop` samples per codec frame, for durations)."""
    frames_out = len(output) / hop
    frames_ref = len(case.reference) / hop
    row: dict[str, object] = {
        "id": case.id, "voice": case.voice,
        "duration_error": abs(frames_out - frames_ref) / max(frames_ref, 1.0),
        "frames": frames_out, "reference_frames": frames_ref,
    }
    try:
        mcd = dtw_mcd(output, case.reference, sample_rate)
        wrong = dtw_mcd(output, case.wrong, sample_rate)
        found = nearest_voice(mean_cepstrum(output, sample_rate), signatures)
    except ValueError:  # silent output: it fails every check
        row.update(mcd=float("nan"), mcd_wrong=float("nan"), content_ok=False,
                   nearest=None, voice_ok=False)
        return row
    row.update(mcd=mcd, mcd_wrong=wrong, content_ok=bool(mcd < wrong), nearest=found,
               voice_ok=found == case.voice)
    return row


def summarize(rows: Sequence[dict[str, object]]) -> dict[str, float]:
    """Median duration error, content and voice pass rates, median MCDs, count."""
    if not rows:
        return {"n": 0}

    def finite(key: str) -> list[float]:
        return [float(r[key]) for r in rows if np.isfinite(float(r[key]))]  # type: ignore[arg-type]

    mcd, wrong = finite("mcd"), finite("mcd_wrong")
    return {
        "n": len(rows),
        "duration_error_median": float(np.median(finite("duration_error"))),
        "content_rate": float(np.mean([bool(r["content_ok"]) for r in rows])),
        "voice_rate": float(np.mean([bool(r["voice_ok"]) for r in rows])),
        "mcd_median": float(np.median(mcd)) if mcd else float("nan"),
        "mcd_wrong_median": float(np.median(wrong)) if wrong else float("nan"),
        "silent": sum(1 for r in rows if r.get("nearest") is None),
    }
