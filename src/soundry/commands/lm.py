"""`soundry tokenize` (dataset -> token shards) and `soundry generate` (LM export -> audio)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tokenize",
        help="encode a dataset into token shards with a codec",
        description=(
            "Encode every file of DATA (a folder or manifest) with CODEC (a soundry codec "
            "export or a transformers EnCodec/DAC/Mimi directory) into memory-mapped token "
            "shards in OUT. Rerunning resumes; unreadable files are skipped and listed in "
            "OUT/index.json."
        ),
    )
    p.add_argument("codec", help="codec directory")
    p.add_argument("data", help="audio folder or manifest (jsonl/csv)")
    p.add_argument("out", help="output token directory")
    p.add_argument("--levels", type=int, default=None, help="codebooks to keep (default all)")
    p.add_argument("--shard-frames", type=int, default=1 << 20,
                   help="frames per shard file (default 1048576)")
    p.set_defaults(func=_tokenize)

    g = subparsers.add_parser(
        "generate",
        help="generate audio with a token LM export",
        description=(
            "Generate audio from an LM export conditioned on tags or text (and optionally an "
            "audio prompt). The export records its codec, which decodes the tokens."
        ),
    )
    g.add_argument("model", help="LM export directory")
    cond = g.add_mutually_exclusive_group()
    cond.add_argument("--tags", default=None, help="comma-separated tags, e.g. 'rock, drums'")
    cond.add_argument("--text", default=None, help="free text")
    g.add_argument("--prompt", default=None, help="audio file whose codes prefix the output")
    g.add_argument("--seconds", type=float, default=10.0, help="longest output (default 10)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    g.add_argument("--top-k", type=int, default=250, help="0 = off (default 250)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus mass (default off)")
    g.add_argument("--cfg", type=float, default=None,
                   help="guidance scale (default 3 if the model was trained with condition "
                        "dropout, else 1 = off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--count", type=int, default=1, help="outputs to generate (as one batch)")
    g.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="LM weights in bf16 halve the memory read per step; int8 "
                        "(weight-only, bf16 activations) quarters it")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the decoding step (faster steps after a one-off "
                        "compilation; falls back to eager with a notice)")
    g.add_argument("--out", required=True, help="output .wav/.flac (numbered if --count > 1)")
    g.set_defaults(func=_generate)


def _tokenize(args: argparse.Namespace) -> int:
    from soundry.generate.tokenize import open_codec, tokenize_dataset

    codec = open_codec(args.codec, args.levels)
    summary = tokenize_dataset(codec, args.data, args.out, shard_frames=args.shard_frames)
    skipped = summary.pop("skipped")
    print(json.dumps({**summary, "skipped": len(skipped)}))
    for s in skipped[:10]:
        print(f"skipped {s['path']}: {s['reason']}")
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more (see {Path(args.out) / 'index.json'})")
    print(f"tokens written to {args.out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from soundry.audio.io import read_audio, write_audio
    from soundry.errors import SoundryError
    from soundry.generate.sampling import generate
    from soundry.generate.tokenize import open_recorded_codec
    from soundry.models.export import load_export

    model = load_export(args.model)
    if not hasattr(model, "codec_record"):
        raise SoundryError(f"{args.model} is not a token LM export")
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
    elif args.precision == "int8":
        model = model.eval().quantize_int8()
    if args.compile:
        reason = model.compile_decode()
        if reason:
            print(f"--compile: {reason}; decoding eagerly", file=sys.stderr)
    codec = open_recorded_codec(model.codec_record, base=Path(args.model))
    if codec.codebook_size != model.cfg.card:
        raise SoundryError(f"the recorded codec has {codec.codebook_size} codes per level; the "
                           f"model expects {model.cfg.card}")
    count = max(1, args.count)
    prompt = None
    if args.prompt:
        audio, _ = read_audio(args.prompt, sample_rate=codec.sample_rate,
                              channels=codec.channels)
        codes = codec.encode(audio)[0, : model.cfg.levels]
        prompt = torch.from_numpy(codes)[None].expand(count, -1, -1).long()
    tags = [t.strip() for t in args.tags.split(",")] if args.tags else None
    cond = model.make_conditioning(
        texts=[args.text] * count, tags=[tags] * count if tags else None, prompt=prompt
    )
    cfg_scale = args.cfg if args.cfg is not None else (3.0 if model.cfg.uncond_frac > 0 else 1.0)
    max_frames = max(1, round(args.seconds * codec.frame_rate))
    room = model.cfg.transformer.max_len - cond.length
    max_frames = min(max_frames, model.pattern.n_frames(max(room, model.pattern.n_steps(0))))
    out = generate(model, cond, max_frames=max_frames, temperature=args.temperature,
                   top_k=args.top_k or None, top_p=args.top_p, cfg_scale=cfg_scale,
                   seed=args.seed)
    target = Path(args.out)
    for b in range(count):
        n = int(out.lengths[b])
        wave = codec.decode(out.codes[b, :, :n]) if n else torch.zeros(codec.channels, 0).numpy()
        path = target if count == 1 else target.with_name(f"{target.stem}_{b:02d}{target.suffix}")
        write_audio(path, wave, codec.sample_rate)
        ended = "EOS" if n < max_frames else "length limit"
        print(f"wrote {path} ({n / codec.frame_rate:.2f} s, {n} frames, ended by {ended})")
    return 0
