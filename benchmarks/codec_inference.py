"""Codec inference speed: encode and decode real-time factors of a randomly initialised model.

    python benchmarks/codec_inference.py --recipe recipes/codec/dac-16k.yaml --seconds 10
    python benchmarks/codec_inference.py --preset dac-16k --precision bf16

Prints one JSON line: encode_rtf / decode_rtf are seconds of compute per second of audio
(lower is faster; < 1 is faster than real time), best of --repeats runs after a warm-up.
The model runs as `Codec.optimize_for_inference(precision)` sets it up: eval mode, weight
norm folded, inference mode, 2-D channels-last convs.

Precisions: fp32; bf16 = decoder in bfloat16, encoder and quantizer in float32 (the codes
are exactly the fp32 codes); bf16-all = encoder in bfloat16 too. For the bf16 modes the JSON
also reports `snr_db_vs_fp32` (the decoder output from the same codes against fp32), the
end-to-end SNR of decode(encode(x)) and the fraction of codes equal to the fp32 codes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from soundry.config import read_yaml, validate
from soundry.models.codec import Codec, CodecConfig, build_codec, codec_preset


def model_config(recipe: str | None, preset: str | None) -> tuple[CodecConfig, str]:
    """The `model:` section of a recipe (or a preset) as a validated CodecConfig."""
    if recipe:
        raw = read_yaml(recipe).get("model", {})
        return validate(CodecConfig, raw, source=f"{recipe}: model"), Path(recipe).stem
    name = preset or "dac-16k"
    return validate(CodecConfig, codec_preset(name), source=f"preset {name}"), name


def timed(fn: Any, repeats: int) -> tuple[float, float, Any]:
    """(best wall seconds, best process CPU seconds, result) over `repeats` calls."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, result


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    noise = (est.float() - ref.float()).pow(2).mean().clamp_min(1e-20)
    return float(10 * torch.log10(ref.float().pow(2).mean() / noise))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", help="codec recipe YAML (its model: section is used)")
    p.add_argument("--preset", choices=["dac-44k", "dac-16k", "tiny"], help="instead of --recipe")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16-all"], default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg, name = model_config(args.recipe, args.preset)
    reference: Codec = build_codec(cfg).optimize_for_inference("fp32")
    codec = copy.deepcopy(reference).optimize_for_inference(args.precision)
    x = torch.randn(1, cfg.channels, int(cfg.sample_rate * args.seconds)) * 0.1

    with torch.inference_mode():
        warm = x[..., : cfg.sample_rate]  # kernels, allocator
        codec.decode_codes(codec.encode(warm))
        t_enc, cpu_enc, codes = timed(lambda: codec.encode(x), args.repeats)
        t_dec, cpu_dec, audio = timed(lambda: codec.decode_codes(codes), args.repeats)
        result: dict[str, Any] = {
            "impl": "soundry",
            "model": name,
            "params_m": round(sum(q.numel() for q in codec.parameters()) / 1e6, 2),
            "precision": args.precision,
            "threads": args.threads,
            "seconds": args.seconds,
            "encode_rtf": round(t_enc / args.seconds, 4),
            "decode_rtf": round(t_dec / args.seconds, 4),
            "x_realtime_total": round(args.seconds / (t_enc + t_dec), 2),
            # CPU seconds of this process per audio second (all threads): robust on a busy
            # machine, where wall time also counts waiting for a core.
            "encode_cpu_rtf": round(cpu_enc / args.seconds, 4),
            "decode_cpu_rtf": round(cpu_dec / args.seconds, 4),
        }
        if args.precision != "fp32":
            ref_codes = reference.encode(x)
            ref_audio = reference.decode_codes(ref_codes)
            result["snr_db_vs_fp32"] = round(snr_db(ref_audio, codec.decode_codes(ref_codes)), 2)
            result["end_to_end_snr_db_vs_fp32"] = round(snr_db(ref_audio, audio), 2)
            result["code_agreement"] = round(float((codes == ref_codes).float().mean()), 4)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
