"""`soundry data scan|synth|preview|pack`: look at data before training on it, pack it."""

from __future__ import annotations

import argparse
from typing import Any

SYNTH_KINDS = ("tones", "drums", "speechlike", "music")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "data",
        help="scan a dataset, synthesise toy data, preview training items, pack shards",
        description="Inspect and prepare audio data.",
    )
    verbs = p.add_subparsers(dest="data_command", metavar="VERB")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    s = verbs.add_parser(
        "scan",
        help="index a folder or manifest and list unusable files",
        description="Index a folder (or JSONL/CSV manifest, or LJSpeech metadata.csv): "
        "sample rates, channels, durations, and every file that cannot be used, with the "
        "reason. The index is cached next to the data, so a re-scan is fast.",
    )
    s.add_argument("path", help="folder, manifest (.jsonl/.csv) or LJSpeech metadata.csv")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--min-seconds", type=float, default=0.0, help="skip files shorter than this")
    s.add_argument("--items", action="store_true", help="with --json: list every usable file")
    s.add_argument("--no-cache", action="store_true", help="probe every file again")
    s.set_defaults(func=run_scan)

    y = verbs.add_parser(
        "synth",
        help="write a procedural toy dataset with a manifest",
        description="Write COUNT procedural clips (pure numpy) and manifest.jsonl to OUT.",
    )
    y.add_argument("out", help="output folder")
    y.add_argument("--kind", choices=SYNTH_KINDS, default="tones", help="what to synthesise")
    y.add_argument("--count", type=int, default=16, help="number of clips")
    y.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    y.add_argument("--sample-rate", type=int, default=16000, help="sample rate in Hz")
    y.add_argument("--seed", type=int, default=0, help="random seed")
    y.add_argument("--format", choices=("wav", "flac"), default="wav", help="file format")
    y.set_defaults(func=run_synth)

    v = verbs.add_parser(
        "preview",
        help="write training items exactly as the model sees them",
        description="Write the first COUNT training items of RECIPE (after cropping, "
        "loudness normalisation and augmentation) as WAV files, plus listing.json and "
        "listing.csv with each item's source file, offset and augmentations. RECIPE is a "
        "full recipe or a YAML file with just a `data:` section (and optionally `seed:`).",
    )
    v.add_argument("recipe", help="recipe or data-only YAML")
    v.add_argument("overrides", nargs="*", help="overrides key=value (e.g. data.batch_size=4)")
    v.add_argument("--count", type=int, default=8, help="number of items")
    v.add_argument("--out", default="preview", help="output folder")
    v.add_argument("--hop", type=int, default=1, help="model hop in samples (crop snapping)")
    v.set_defaults(func=run_preview)

    k = verbs.add_parser(
        "pack",
        help="write a dataset as WebDataset tar shards with an index",
        description="Pack the usable files of DATA (folder or manifest, scanned like `data "
        "scan`: bad files skipped and listed) into WebDataset tar shards under OUT, each item "
        "an audio member plus a JSON member (text, tags, speaker, duration), with "
        "items.jsonl and index.json (shards, item counts, total hours). Train on OUT (a path "
        "or fsspec URL) like on a folder.",
    )
    k.add_argument("data", help="folder, manifest (.jsonl/.csv) or LJSpeech metadata.csv")
    k.add_argument("out", help="output folder (must not already hold a packed set)")
    k.add_argument("--shard-size", default="512MB",
                   help="audio bytes per shard before a new one starts (e.g. 512MB, 2GB)")
    k.add_argument("--sample-rate", type=int, default=None,
                   help="resample every file to this rate (default: keep each file's)")
    k.add_argument("--format", choices=("flac", "wav"), default="flac",
                   help="flac: 24-bit lossless for 16/24-bit audio; wav: 32-bit float")
    k.add_argument("--bits", type=int, choices=(16, 24), default=24, help="FLAC bit depth")
    k.add_argument("--min-seconds", type=float, default=0.0, help="skip files shorter than this")
    k.set_defaults(func=run_pack)


def run_scan(args: argparse.Namespace) -> int:
    import json

    from soundry.data.scan import scan

    index = scan(args.path, min_seconds=args.min_seconds, cache=not args.no_cache)
    if args.json:
        print(json.dumps(index.summary(with_items=args.items)))
        return 0 if index.usable else 1
    _print_scan(index)
    return 0 if index.usable else 1


def _print_scan(index: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = index.summary()
    table = Table(title=f"scan of {index.root}", show_header=False, title_justify="left")
    table.add_row("usable files", str(summary["usable"]))
    table.add_row("total duration", _hms(summary["total_seconds"]))
    if index.items:
        durations = sorted(item.duration for item in index.items)
        table.add_row(
            "file durations",
            f"{durations[0]:.2f} s min, {durations[len(durations) // 2]:.2f} s median, "
            f"{durations[-1]:.2f} s max",
        )
    rates = ", ".join(f"{sr} Hz x{n}" for sr, n in sorted(summary["sample_rates"].items()))
    chans = ", ".join(f"{c} ch x{n}" for c, n in sorted(summary["channels"].items()))
    table.add_row("sample rates", rates or "-")
    table.add_row("channels", chans or "-")
    with_text = sum(1 for item in index.items if item.text)
    with_tags = sum(1 for item in index.items if item.tags)
    if with_text or with_tags:
        table.add_row("with text / tags", f"{with_text} / {with_tags}")
    table.add_row("skipped files", str(len(index.skipped)))
    console.print(table)
    if index.skipped:
        skipped = Table(title="skipped", title_justify="left")
        skipped.add_column("file")
        skipped.add_column("reason")
        for row in index.skipped[:50]:
            skipped.add_row(row["path"], row["reason"])
        console.print(skipped)
        if len(index.skipped) > 50:
            console.print(f"... and {len(index.skipped) - 50} more (use --json for all)")
    if not index.usable:
        console.print("[red]no usable audio file[/red]")


def _hms(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d} ({seconds:.1f} s)"


def run_synth(args: argparse.Namespace) -> int:
    from soundry.data.synth import synthesize

    manifest = synthesize(
        args.out, args.kind, args.count, args.seconds, args.sample_rate, args.seed, args.format
    )
    print(f"wrote {args.count} {args.kind} clips of {args.seconds:g} s to {args.out} ({manifest})")
    return 0


def run_preview(args: argparse.Namespace) -> int:
    from soundry.data.preview import preview
    from soundry.train.recipes import load_data_section

    data_cfg, seed = load_data_section(args.recipe, args.overrides)
    rows = preview(data_cfg, seed, args.count, args.out, hop=args.hop)
    print(f"wrote {len(rows)} training items to {args.out} (listing.json, listing.csv)")
    return 0


def parse_size(text: str) -> int:
    """'512MB' / '2GB' / '100k' / '4096' -> bytes (powers of 1024)."""
    import re

    from soundry.errors import SoundryError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise SoundryError(f"--shard-size '{text}' must look like 512MB, 2GB or 4096")
    scale = 1024 ** "_kmgt".index(m.group(2) or "_")
    return max(1, int(float(m.group(1)) * scale))


def run_pack(args: argparse.Namespace) -> int:
    from soundry.data.pack import pack

    result = pack(args.data, args.out, shard_bytes=parse_size(args.shard_size),
                  sample_rate=args.sample_rate, fmt=args.format, bits=args.bits,
                  min_seconds=args.min_seconds)
    print(f"packed {result.items} items ({result.hours:.3f} h) into {len(result.shards)} "
          f"shard(s) in {result.out}; {len(result.skipped)} skipped")
    for entry in result.skipped[:20]:
        print(f"  skipped {entry['path']}: {entry['reason']}")
    if len(result.skipped) > 20:
        print(f"  ... and {len(result.skipped) - 20} more (index.json lists all)")
    return 0
