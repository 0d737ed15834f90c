"""`soundry teacher-features | tiny-teacher | probe`: the semantic codec's tools."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("soundry")

#: the longest stretch an SSL teacher sees at once when extracting a whole file
CHUNK_SECONDS = 30.0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "teacher-features", help="precompute a semantic codec's teacher features",
        description="Run every teacher of a semantic-codec RECIPE once over the files of "
        "DATA (folders or manifests) and store their features at the codec's frame rate in "
        "safetensors shards under OUT, keyed by a hash of the teacher's weights, layer, "
        "rates and pooling and of the data index. Point the recipe's teacher_features at "
        "OUT and training slices each crop's features out of the store instead of running "
        "the teachers every step.")
    p.add_argument("recipe", type=Path)
    p.add_argument("--device", default=None,
                   help="where the teachers run (default: cuda when available, else cpu)")
    p.add_argument("paths", nargs="+", metavar="DATA... OUT [key=value ...]",
                   help="data folders or manifests (transcripts for a text-LM teacher come "
                   "from the manifest's text column), then the store folder (what the "
                   "recipe's teacher_features names), then any recipe overrides")
    p.set_defaults(func=_teacher_features)

    p = sub.add_parser(
        "tiny-teacher", help="write a tiny random teacher (WavLM, HuBERT, GPT-2) to try a "
        "semantic-codec recipe offline",
        description="A randomly initialised transformers model in save_pretrained layout, "
        "with its feature extractor or tokenizer: loadable by path like a real teacher. Its "
        "features mean nothing; it exercises the pipeline.")  # noqa: ISC001
    p.add_argument("kind", choices=["w2v-bert", "wavlm", "hubert", "wav2vec2", "gpt2"],
                   help="w2v-bert: the one a student can learn (see soundry.models."
                   "tiny_teachers); the others check the plumbing")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tiny_teacher)

    p = sub.add_parser(
        "probe", help="what a codec's level 0 carries: a linear character probe",
        description="Encode transcribed utterances with MODEL, train a linear CTC probe from "
        "the one-hot level-0 codes to characters on part of them and report its character "
        "error rate on the rest; with --against, the same for a second codec (a plain codec "
        "beside a semantic one). Also scores reconstruction from level 0 alone vs all levels.")
    p.add_argument("model", type=Path, help="exported codec directory")
    p.add_argument("data", help="a folder or manifest with transcripts")
    p.add_argument("--against", type=Path, default=None, help="a second codec to compare")
    p.add_argument("--steps", type=int, default=1500, help="probe training steps")
    p.add_argument("--held-out", type=float, default=0.25,
                   help="fraction of DATA scored when --fit is not given")
    p.add_argument("--fit", default=None, help="transcribed files to fit the probe on (e.g. "
                   "the training set); DATA is then scored whole")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write probe.json here")
    p.set_defaults(func=_probe)


def _teacher_features(args: argparse.Namespace) -> int:
    from soundry.data.datasets import target_frames
    from soundry.data.feature_store import write_store
    from soundry.data.scan import scan
    from soundry.errors import ConfigError
    from soundry.train.recipes import load_recipe
    from soundry.train.teachers import load_teachers

    overrides = [a for a in args.paths if "=" in a]
    paths = [a for a in args.paths if "=" not in a]
    if len(paths) < 2:
        raise ConfigError("teacher-features needs at least one DATA folder and an OUT folder")
    data, out = paths[:-1], Path(paths[-1])
    recipe: Any = load_recipe(args.recipe, overrides)
    if getattr(recipe, "task", None) != "semantic_codec":
        raise ConfigError(f"{args.recipe}: teacher-features needs a semantic_codec recipe "
                          f"(task is '{getattr(recipe, 'task', None)}')")
    from soundry.models.codec import build_codec

    hop = build_codec(recipe.model).hop_length
    sr = recipe.data.sample_rate
    items = []
    for d in data:
        index = scan(d, min_seconds=recipe.data.min_seconds)
        index.require_usable()
        items += index.items
    files = [(it.path, target_frames(it, sr)) for it in items]
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teachers = load_teachers(recipe.teachers)
    for name, teacher in teachers.items():
        teacher.aux.prepare(device)
        def features(teacher: Any = teacher) -> Any:
            for i, it in enumerate(items):
                yield it.path, files[i][1], _item_features(teacher, it, sr, hop)
                if (i + 1) % 50 == 0 or i + 1 == len(items):
                    print(f"  {teacher.name}: {i + 1}/{len(items)} files", flush=True)

        texts = ({it.path: it.text for it in items} if teacher.cfg.kind == "text_lm"
                 else None)
        folder = write_store(out, name, teacher.key(recipe.model.sample_rate, hop),
                             features(), files, texts)
        print(f"teacher '{name}': features of {len(items)} files in {folder}")
    return 0


def _item_features(teacher: Any, item: Any, sample_rate: int, hop: int) -> Any:
    """A whole file's features [H, ceil(T / hop)]: an SSL teacher runs on chunks of at most
    CHUNK_SECONDS (a multiple of the hop) so long files fit in memory."""
    import torch

    from soundry.audio.io import read_audio

    audio, _ = read_audio(item.path, sample_rate=sample_rate, channels=1)
    if teacher.cfg.kind == "text_lm":
        return teacher.item_frames(audio, sample_rate, hop, text=item.text)
    chunk = max(hop, int(CHUNK_SECONDS * sample_rate) // hop * hop)
    starts = list(range(0, audio.shape[-1], chunk))
    if len(starts) > 1 and audio.shape[-1] - starts[-1] < sample_rate:
        starts.pop()  # a short tail joins the chunk before it (a teacher needs some audio)
    ends = [*starts[1:], audio.shape[-1]]
    parts = [teacher.item_frames(audio[:, s:e], sample_rate, hop)
             for s, e in zip(starts, ends, strict=True)]
    out = torch.cat(parts, dim=-1)
    assert out.shape[-1] == math.ceil(audio.shape[-1] / hop)
    return out


def _tiny_teacher(args: argparse.Namespace) -> int:
    from soundry.models.tiny_teachers import make_tiny_teacher

    out = make_tiny_teacher(args.kind, args.out, seed=args.seed)
    print(f"wrote a tiny random {args.kind} to {out}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    import json

    from soundry.eval.probe import probe_codec

    opts = {"steps": args.steps, "held_out": args.held_out, "seed": args.seed, "fit": args.fit}
    results = {"model": probe_codec(args.model, args.data, **opts)}
    if args.against is not None:
        results["against"] = probe_codec(args.against, args.data, **opts)
    for name, r in results.items():
        print(f"{name:8s} {r['path']}: level-0 character probe CER {r['cer']:.3f} "
              f"(an empty transcript: {r['cer_blank']:.3f}); mel distance level 0 alone "
              f"{r['mel_level0']:.3f}, all {r['levels']} levels {r['mel_all']:.3f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")
    return 0
