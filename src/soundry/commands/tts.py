"""`soundry speak`: text in the voice of a prompt, with a TTS export."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "speak",
        help="speak a text in the voice of an audio prompt with a TTS export",
        description=(
            "Speak TEXT (--text) in the voice of PROMPT (--prompt, a short clip of the "
            "voice) with a TTS export; its recorded codec encodes the prompt and decodes the "
            "speech. --text-file speaks one utterance per line into OUT/0001.wav, ..."
        ),
    )
    p.add_argument("model", help="TTS export directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="what is said")
    what.add_argument("--text-file", help="one utterance per line (empty lines skipped)")
    p.add_argument("--prompt", required=True, help="audio clip of the voice to speak in")
    p.add_argument("--prompt-seconds", type=float, default=3.0,
                   help="longest stretch of the prompt used, from its start (default 3)")
    p.add_argument("--out", required=True, help="output .wav (a folder with --text-file)")
    p.add_argument("--steps", type=int, default=None,
                   help="demasking steps (nar; default the model's, 25)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default the "
                   "model's)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default the model's; nar: annealed to 0 over "
                        "the steps; 0 = greedy)")
    p.add_argument("--top-k", type=int, default=None,
                   help="ar: top-k sampling (default the model's)")
    p.add_argument("--duration-scale", type=float, default=1.0,
                   help="multiply the predicted duration (slower > 1 > faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="utterances per batch (--text-file)")
    p.set_defaults(func=_speak)


def _speak(args: argparse.Namespace) -> int:
    import torch

    from soundry.audio.io import read_audio, write_audio
    from soundry.errors import SoundryError
    from soundry.generate.speak import speak
    from soundry.generate.tokenize import open_recorded_codec
    from soundry.models.export import load_export
    from soundry.models.tts import TTSModel

    if args.duration_scale <= 0:
        raise SoundryError(f"--duration-scale must be > 0, got {args.duration_scale}")
    model = load_export(args.model)
    if not isinstance(model, TTSModel):
        raise SoundryError(f"{args.model} is not a TTS export (task: tts)")
    codec = open_recorded_codec(model.codec_record, base=Path(args.model))
    if codec.codebook_size != model.cfg.card or codec.levels < model.cfg.levels:
        raise SoundryError(f"the recorded codec ({codec.levels} levels of "
                           f"{codec.codebook_size} codes) does not fit the model "
                           f"({model.cfg.levels} of {model.cfg.card})")
    if args.text is not None:
        texts = [args.text.strip()]
        if not texts[0]:
            raise SoundryError("--text is empty")
    else:
        try:
            lines = Path(args.text_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SoundryError(f"cannot read --text-file: {exc}") from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise SoundryError(f"{args.text_file} has no text")
    audio, _ = read_audio(args.prompt, sample_rate=codec.sample_rate, channels=codec.channels)
    audio = audio[:, : max(1, round(args.prompt_seconds * codec.sample_rate))]
    prompt = torch.from_numpy(codec.encode(audio)[0, : model.cfg.levels]).long()
    if prompt.shape[1] == 0:
        raise SoundryError(f"the prompt {args.prompt} is shorter than one codec frame")

    if args.text is not None:
        targets = [Path(args.out)]
    else:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        targets = [out_dir / f"{i + 1:04d}.wav" for i in range(len(texts))]
    size = max(1, args.batch)
    for start in range(0, len(texts), size):
        chunk = texts[start: start + size]
        cond = model.make_conditioning(chunk, prompt[None].expand(len(chunk), -1, -1))
        speech = speak(model, cond, duration_scale=args.duration_scale,
                       temperature=args.temperature, cfg_scale=args.cfg, steps=args.steps,
                       top_k=args.top_k, seed=args.seed + start)
        for b, text in enumerate(chunk):
            n = int(speech.lengths[b])
            wave = codec.decode(speech.codes[b, :, :n])
            path = targets[start + b]
            write_audio(path, wave, codec.sample_rate)
            note = " (stopped by the length guard: no EOS)" if bool(speech.stopped[b]) else ""
            print(f"wrote {path} ({n / codec.frame_rate:.2f} s, {n} frames; predicted "
                  f"{float(speech.predicted[b]):.0f}){note}: {text[:60]}")
    return 0
