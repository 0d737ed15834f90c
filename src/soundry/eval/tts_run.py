"""Score a TTS export on held-out sentences spoken by its training voices
(`soundry eval TTS_EXPORT TEST_DIR --prompts TRAIN_DIR`).

TEST_DIR and TRAIN_DIR are LJSpeech-style folders (`id|text|text|speaker`, WAVs beside).
Each test row is a case: its text is spoken in its speaker's voice, prompted by the first
`prompt_seconds` of that speaker's first clip in TRAIN_DIR; the test WAV is the reference
rendering and the next test sentence of the same speaker the wrong one
(`soundry.eval.tts_eval`). Voice signatures come from the codec's resynthesis of each
speaker's TRAIN_DIR clips (outputs live in the codec's domain). The codec floor scores the
codec's own resynthesis of every reference the same way.

Optional, from local `transformers` directories (nothing is downloaded):
- `asr`: a CTC model (wav2vec2, HuBERT, WavLM, data2vec-audio with a CTC head and its
  processor) or Whisper: character error rate of the outputs against their texts (and of
  the references, the ASR's own floor on this voice set);
- `speaker_model`: an x-vector model (`AutoModelForAudioXVector`, e.g. WavLM for speaker
  verification): cosine similarity of each output's embedding to its prompt's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundry.errors import SoundryError
from soundry.eval.probe import cer, normalise_text
from soundry.eval.tts_eval import SpeakCase, score, summarize, voice_signatures

log = logging.getLogger(__name__)


def read_corpus(folder: Path) -> list[dict[str, str]]:
    """Rows {id, text, voice, path} of an LJSpeech folder with a speaker column."""
    meta = Path(folder) / "metadata.csv"
    if not meta.is_file():
        raise SoundryError(f"{folder} has no metadata.csv (id|text|normalized text|speaker)")
    audio = meta.parent / "wavs" if (meta.parent / "wavs").is_dir() else meta.parent
    rows = []
    for line in meta.read_text(encoding="utf-8").splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[3].strip():
            continue
        text = parts[2].strip() if parts[2].strip() else parts[1].strip()
        rows.append({"id": parts[0], "text": text, "voice": parts[3].strip(),
                     "path": str(audio / f"{parts[0]}.wav")})
    if not rows:
        raise SoundryError(f"{meta}: no rows with a speaker id (4th column)")
    return rows


def load_mono(path: str, sample_rate: int) -> np.ndarray:
    from soundry.audio.io import read_audio

    audio, _ = read_audio(path, sample_rate=sample_rate, channels=1)
    return audio[0]


def resynthesis(codec: Any) -> Callable[[np.ndarray], np.ndarray]:
    """mono [T] -> the codec's decoding of its own codes of it, [T]."""

    def run(x: np.ndarray) -> np.ndarray:
        codes = torch.from_numpy(codec.encode(x[None].astype(np.float32))[0])
        return codec.decode(codes)[0][: len(x)]

    return run


def build_cases(test_dir: Path, train_dir: Path, codec: Any
                ) -> tuple[list[SpeakCase], dict[str, np.ndarray], dict[str, str]]:
    """(cases, voice signatures, voice -> prompt clip path) for the test speakers that
    TRAIN_DIR has clips of (others are left out with a warning)."""
    sample_rate = codec.sample_rate
    through = resynthesis(codec)
    clips: dict[str, list[np.ndarray]] = {}
    prompts: dict[str, str] = {}
    for row in read_corpus(train_dir):
        clips.setdefault(row["voice"], []).append(through(load_mono(row["path"], sample_rate)))
        prompts.setdefault(row["voice"], row["path"])
    signatures = voice_signatures(clips, sample_rate)
    by_voice: dict[str, list[dict[str, str]]] = {}
    for row in read_corpus(test_dir):
        by_voice.setdefault(row["voice"], []).append(row)
    missing = sorted(set(by_voice) - set(signatures))
    if missing:
        log.warning("test speakers without training clips are left out: %s", ", ".join(missing))
    cases = []
    for voice, rows in sorted(by_voice.items()):
        if voice not in signatures:
            continue
        audio = [load_mono(r["path"], sample_rate) for r in rows]
        for i, row in enumerate(rows):
            cases.append(SpeakCase(text=row["text"], voice=voice, reference=audio[i],
                                   wrong=audio[(i + 1) % len(rows)], id=row["id"]))
    if not cases:
        raise SoundryError(f"no test speaker of {test_dir} has clips in {train_dir}")
    return cases, signatures, prompts


# ----------------------------------------------------------------------------- optional models


def _model_type(path: Path) -> str:
    config = Path(path) / "config.json"
    if not config.is_file():
        raise SoundryError(f"'{path}' is not a transformers model directory (no config.json)")
    return str(json.loads(config.read_text()).get("model_type", ""))


class LocalASR:
    """Transcribe speech with a local `transformers` CTC model or Whisper."""

    def __init__(self, path: str | Path) -> None:
        try:
            import transformers
        except ImportError:
            raise SoundryError("--asr needs the `transformers` package") from None
        self.whisper = _model_type(Path(path)) == "whisper"
        self.processor = transformers.AutoProcessor.from_pretrained(path)
        if self.whisper:
            self.model = transformers.WhisperForConditionalGeneration.from_pretrained(path)
        else:
            self.model = transformers.AutoModelForCTC.from_pretrained(path)
        self.model.eval()
        extractor = getattr(self.processor, "feature_extractor", self.processor)
        self.sample_rate = int(getattr(extractor, "sampling_rate", 16000))

    @torch.inference_mode()
    def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
        from soundry.audio.io import resample

        x = resample(audio[None], sample_rate, self.sample_rate)[0] if sample_rate != \
            self.sample_rate else audio
        inputs = self.processor(x, sampling_rate=self.sample_rate, return_tensors="pt")
        if self.whisper:
            ids = self.model.generate(inputs["input_features"])
            return self.processor.batch_decode(ids, skip_special_tokens=True)[0]
        logits = self.model(inputs["input_values"]).logits
        return self.processor.batch_decode(logits.argmax(-1))[0]


class SpeakerEmbedder:
    """Speaker embeddings from a local `transformers` x-vector model."""

    def __init__(self, path: str | Path) -> None:
        try:
            import transformers
        except ImportError:
            raise SoundryError("--speaker-model needs the `transformers` package") from None
        _model_type(Path(path))
        self.extractor = transformers.AutoFeatureExtractor.from_pretrained(path)
        self.model = transformers.AutoModelForAudioXVector.from_pretrained(path).eval()
        self.sample_rate = int(getattr(self.extractor, "sampling_rate", 16000))

    @torch.inference_mode()
    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from soundry.audio.io import resample

        x = resample(audio[None], sample_rate, self.sample_rate)[0] if sample_rate != \
            self.sample_rate else audio
        inputs = self.extractor(x, sampling_rate=self.sample_rate, return_tensors="pt")
        out = self.model(**inputs).embeddings[0].float()
        return torch.nn.functional.normalize(out, dim=-1).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


# ----------------------------------------------------------------------------- evaluation


def evaluate_tts(
    model: Any,
    codec: Any,
    test_dir: Path,
    train_dir: Path,
    settings: dict[str, dict[str, Any]],
    out_dir: Path | None = None,
    asr: LocalASR | None = None,
    speaker: SpeakerEmbedder | None = None,
    seed: int = 0,
    prompt_seconds: float = 3.0,
    keep_audio: int = 2,
) -> dict[str, Any]:
    """Speak every case under each named setting (keyword arguments of
    `soundry.generate.speak.speak`) and score it; with `out_dir`, write `<setting>_rows.json`
    and the first `keep_audio` outputs per voice as WAVs. Returns {"cases", "floor",
    <setting>: summary}."""
    import soundfile as sf

    from soundry.generate.speak import speak

    sr = codec.sample_rate
    hop = round(sr / codec.frame_rate)
    cases, signatures, prompts = build_cases(test_dir, train_dir, codec)
    through = resynthesis(codec)
    floor_rows = []
    for case in cases:
        row = score(through(case.reference), case, signatures, sr, hop)
        if asr is not None:
            row["transcript"] = asr.transcribe(case.reference, sr)
        floor_rows.append(row)
    result: dict[str, Any] = {"cases": len(cases), "floor": summarize(floor_rows)}
    if asr is not None:
        result["floor"]["cer_reference"] = cer(
            [normalise_text(c.text) for c in cases],
            [normalise_text(str(r["transcript"])) for r in floor_rows])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for name, kwargs in settings.items():
        rows: list[dict[str, Any]] = []
        start = time.perf_counter()
        for voice in sorted({c.voice for c in cases}):
            group = [c for c in cases if c.voice == voice]
            clip = load_mono(prompts[voice], sr)[: max(1, round(prompt_seconds * sr))]
            prompt = torch.from_numpy(codec.encode(clip[None])[0, : model.cfg.levels]).long()
            cond = model.make_conditioning([c.text for c in group],
                                           prompt[None].expand(len(group), -1, -1))
            speech = speak(model, cond, seed=seed, **kwargs)
            prompt_embedding = speaker.embed(clip, sr) if speaker is not None else None
            for b, case in enumerate(group):
                wave = codec.decode(speech.codes[b, :, : int(speech.lengths[b])])[0]
                row = score(wave, case, signatures, sr, hop)
                row["stopped"] = bool(speech.stopped[b])
                row["text"] = case.text
                if asr is not None:
                    row["transcript"] = asr.transcribe(wave, sr)
                if speaker is not None and prompt_embedding is not None:
                    row["speaker_similarity"] = cosine(speaker.embed(wave, sr), prompt_embedding)
                rows.append(row)
                if out_dir is not None and b < keep_audio:
                    sf.write(out_dir / f"{name}_{case.id}.wav", wave, sr)
        summary: dict[str, Any] = summarize(rows)
        summary["stopped"] = sum(1 for r in rows if r["stopped"])
        summary["seconds"] = round(time.perf_counter() - start, 1)
        if asr is not None:
            summary["cer"] = cer([normalise_text(str(r["text"])) for r in rows],
                                 [normalise_text(str(r["transcript"])) for r in rows])
        if speaker is not None:
            summary["speaker_similarity"] = float(np.mean([r["speaker_similarity"]
                                                           for r in rows]))
        result[name] = summary
        if out_dir is not None:
            (out_dir / f"{name}_rows.json").write_text(json.dumps(rows, indent=1, default=str))
    return result
