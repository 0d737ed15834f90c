"""Train the tiny TTS recipes on multi-speaker espeak-ng speech and score what they say.

    python benchmarks/tts_tiny.py --codec CODEC_EXPORT --out runs/tts-check \
        [--modes nar ar] [--seeds 0] [--minutes 30] [--threads 2] [--levels 4]
    python benchmarks/tts_tiny.py --codec CODEC_EXPORT --out runs/tts-check \
        --evaluate runs/tts-check/nar-s0-export ...     # score existing exports only

Steps: build the corpus (`benchmarks/tts_corpus.py`: fixed-rate voices, held-out sentences
rendered by every training voice), tokenize its training half with the codec (`--levels`
levels), train `recipes/tts/tiny-<mode>.yaml` for `--minutes` of wall clock per run, export,
then speak every held-out sentence in every training voice, each voice prompted by one of
its training clips (the first 3 s of its first clip), at the recipe's sampling settings and
greedy (temperature 0).

Scores (`soundry.eval.tts_eval`): median duration error; content (DTW-MCD to the reference
rendering of the right sentence below that to a wrong sentence in the same voice); voice
(output's mean cepstrum nearest the prompted voice's among the training voices; voices'
signatures are taken from the codec's resynthesis of their training clips, the domain the
outputs live in). The codec floor is the same scoring of the codec's own resynthesis of
each reference. Prints one JSON
line per run and per setting, and writes OUT/summary.json and sample WAVs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOUNDRY = [sys.executable, "-m", "soundry"]


def sh(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        sys.exit(f"command failed ({code}), see {log}: {' '.join(cmd)}")


def read_metadata(folder: Path) -> list[dict[str, str]]:
    rows = []
    for line in (folder / "metadata.csv").read_text(encoding="utf-8").splitlines():
        parts = line.split("|")
        if len(parts) >= 4:
            rows.append({"id": parts[0], "text": parts[2] or parts[1], "voice": parts[3],
                         "path": str(folder / f"{parts[0]}.wav")})
    return rows


def health_errors(run: Path) -> list[str]:
    path = run / "health.jsonl"
    if not path.is_file():
        return []
    found = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [f"{f.get('monitor')}: {f.get('message')}" for f in found
            if f.get("severity") == "error"]


def load_mono(path: str, sample_rate: int) -> np.ndarray:
    from soundry.audio.io import read_audio

    audio, _ = read_audio(path, sample_rate=sample_rate, channels=1)
    return audio[0]


def resynthesis(codec: Any) -> Any:
    """mono [T] -> the codec's decoding of its codes, [T]."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        codes = torch.from_numpy(codec.encode(x[None].astype(np.float32))[0])
        return codec.decode(codes)[0][: len(x)]

    return run


def build_cases(corpus: Path, codec: Any) -> tuple[list[Any], dict[str, np.ndarray],
                                                   dict[str, str]]:
    """(cases, voice signatures, voice -> prompt clip path). A voice's signature is the mean
    cepstrum of the codec's resynthesis of its training clips: outputs are heard through
    the codec, so the voices they are compared with are too."""
    from soundry.eval.tts_eval import SpeakCase, voice_signatures

    sample_rate = codec.sample_rate
    through = resynthesis(codec)
    train = read_metadata(corpus / "train")
    test = read_metadata(corpus / "test")
    clips: dict[str, list[np.ndarray]] = {}
    prompts: dict[str, str] = {}
    for row in train:
        clips.setdefault(row["voice"], []).append(through(load_mono(row["path"], sample_rate)))
        prompts.setdefault(row["voice"], row["path"])
    signatures = voice_signatures(clips, sample_rate)
    by_voice: dict[str, list[dict[str, str]]] = {}
    for row in test:
        by_voice.setdefault(row["voice"], []).append(row)
    cases = []
    for voice, rows in sorted(by_voice.items()):
        if voice not in signatures:
            continue
        audio = [load_mono(r["path"], sample_rate) for r in rows]
        for i, row in enumerate(rows):
            cases.append(SpeakCase(text=row["text"], voice=voice, reference=audio[i],
                                   wrong=audio[(i + 1) % len(rows)], id=row["id"]))
    return cases, signatures, prompts


def evaluate(export: Path, corpus: Path, out: Path, settings: dict[str, dict[str, Any]],
             seed: int = 0) -> dict[str, Any]:
    """Score an export on every (held-out sentence, training voice) pair."""
    import soundfile as sf
    import torch

    from soundry.eval.tts_eval import score, summarize
    from soundry.generate.speak import speak
    from soundry.generate.tokenize import open_recorded_codec
    from soundry.models.export import load_export

    model = load_export(export)
    codec = open_recorded_codec(model.codec_record, base=export)
    sr, hop = codec.sample_rate, round(codec.sample_rate / codec.frame_rate)
    cases, signatures, prompts = build_cases(corpus, codec)
    result: dict[str, Any] = {"export": str(export), "cases": len(cases)}
    out.mkdir(parents=True, exist_ok=True)
    for name, kw in settings.items():
        rows = []
        t0 = time.perf_counter()
        for voice in sorted({c.voice for c in cases}):
            group = [c for c in cases if c.voice == voice]
            clip = load_mono(prompts[voice], sr)[: 3 * sr]
            prompt = torch.from_numpy(codec.encode(clip[None])[0, : model.cfg.levels]).long()
            cond = model.make_conditioning([c.text for c in group],
                                           prompt[None].expand(len(group), -1, -1))
            speech = speak(model, cond, seed=seed, **kw)
            for b, case in enumerate(group):
                wave = codec.decode(speech.codes[b, :, : int(speech.lengths[b])])[0]
                row = score(wave, case, signatures, sr, hop)
                row["stopped"] = bool(speech.stopped[b])
                rows.append(row)
                if b < 2:
                    sf.write(out / f"{name}_{case.id}.wav", wave, sr)
        summary = summarize(rows)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        summary["stopped"] = sum(1 for r in rows if r["stopped"])
        result[name] = summary
        (out / f"{name}_rows.json").write_text(json.dumps(rows, indent=1, default=str))
    return result


def codec_floor(codec_path: Path, corpus: Path, levels: int) -> dict[str, Any]:
    """The same scores for the codec's resynthesis of each reference."""
    from soundry.eval.tts_eval import score, summarize
    from soundry.generate.tokenize import open_codec

    codec = open_codec(codec_path, levels)
    sr, hop = codec.sample_rate, round(codec.sample_rate / codec.frame_rate)
    cases, signatures, _ = build_cases(corpus, codec)
    through = resynthesis(codec)
    rows = [score(through(case.reference), case, signatures, sr, hop) for case in cases]
    return {"levels": levels, **summarize(rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codec", type=Path, required=True, help="codec export (16 kHz speech)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--corpus", type=Path, default=None, help="default OUT/corpus")
    p.add_argument("--modes", nargs="+", default=["nar", "ar"], choices=["nar", "ar"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--evaluate", nargs="*", type=Path, default=None,
                   help="only score these exports")
    args = p.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    corpus = args.corpus or out / "corpus"
    if not (corpus / "train" / "metadata.csv").is_file():
        sh([sys.executable, str(ROOT / "benchmarks" / "tts_corpus.py"), str(corpus)], log)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    settings = {"sampled": {}, "greedy": {"temperature": 0.0}}
    summary: dict[str, Any] = {"floor": codec_floor(args.codec, corpus, args.levels)}
    print(json.dumps({"codec_floor": summary["floor"]}), flush=True)

    exports = list(args.evaluate or [])
    if args.evaluate is None:
        tokens = out / f"tokens-{args.levels}"
        if not (tokens / "index.json").is_file():
            sh(SOUNDRY + ["tokenize", str(args.codec), str(corpus / "train"), str(tokens),
                          "--levels", str(args.levels)], log)
        for mode in args.modes:
            for seed in args.seeds:
                run = out / f"{mode}-s{seed}"
                recipe = ROOT / "recipes" / "tts" / f"tiny-{mode}.yaml"
                t0 = time.perf_counter()
                sh(SOUNDRY + ["train", str(recipe), "--data", str(tokens), "--out", str(run),
                              f"seed={seed}", f"train.budget_minutes={args.minutes}",
                              f"model.levels={args.levels}"], log, env)
                minutes = (time.perf_counter() - t0) / 60
                export = out / f"{mode}-s{seed}-export"
                sh(SOUNDRY + ["export", str(run), str(export)], log)
                summary[f"{mode}-s{seed}"] = {"train_minutes": round(minutes, 1),
                                              "health_errors": health_errors(run)}
                exports.append(export)
    for export in exports:
        name = export.name.removesuffix("-export")
        scores = evaluate(export, corpus, out / f"{name}-samples", settings)
        summary.setdefault(name, {}).update(scores)
        print(json.dumps({name: summary[name]}), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
