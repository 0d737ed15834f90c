"""Batch-1 token-LM decoding speed on CPU: frames per second and the memory-bound estimate.

Random init, delay pattern, top-k 250, no guidance. Prints one JSON line. Batch-1 decoding
re-reads every weight once per step, so steps/s <= bandwidth / parameter bytes; the line
reports that bound (at `--bandwidth-gbs`, ~24 GB/s on the reference machine) and the
fraction of it reached.

    python benchmarks/lm_generate.py --dim 512 --layers 8 --heads 8 --codebooks 4 \
        --card 1024 --steps 250 [--precision bf16] [--peer ../shared/peers/hf_lm_generate.py]

With `--peer`, the transformers MusicGen peer script runs right after at the same size (same
machine, same moment) and the line adds its frames/s and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from soundry.generate.sampling import generate
from soundry.models.lm import TokenLM, TokenLMConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--codebooks", type=int, default=4)
    p.add_argument("--card", type=int, default=1024)
    p.add_argument("--steps", type=int, default=250, help="frames to generate")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    p.add_argument("--bandwidth-gbs", type=float, default=24.0)
    p.add_argument("--peer", default=None, help="path of hf_lm_generate.py to compare with")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    cfg = TokenLMConfig(
        levels=a.codebooks,
        card=a.card,
        pattern={"type": "delay"},
        transformer={
            "dim": a.dim,
            "layers": a.layers,
            "heads": a.heads,
            "mlp_hidden": 4 * a.dim * 2 // 3,  # the parameter count of a 4x MLP
            "max_len": a.steps + a.codebooks + 8,
        },
    )
    model = TokenLM(cfg).eval()
    if a.precision == "bf16":
        model = model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    # Weights read per step: everything but the embedding tables (only K rows are read).
    read = params - model.audio_embed.weight.numel() - model.text_embed.weight.numel()
    bytes_per_step = read * (2 if a.precision == "bf16" else 4)

    generate(model, None, batch=1, max_frames=8, top_k=250, seed=0)  # warm-up
    best = float("inf")
    for r in range(a.repeats):
        start = time.perf_counter()
        # min_frames: a random model may sample EOS early; time exactly `steps` frames.
        out = generate(model, None, batch=1, max_frames=a.steps, top_k=250, seed=r,
                       min_frames=a.steps)
        best = min(best, time.perf_counter() - start)
    assert int(out.lengths[0]) == a.steps
    bound_steps = a.bandwidth_gbs * 1e9 / bytes_per_step
    steps_per_s = out.steps / best
    peer = _run_peer(a) if a.peer else {}
    if peer:
        peer["speedup_vs_peer"] = round(a.steps / best / peer["peer_frames_per_s"], 2)
    print(
        json.dumps(
            {
                "impl": "soundry",
                "precision": a.precision,
                "dim": a.dim,
                "layers": a.layers,
                "codebooks": a.codebooks,
                "batch": 1,
                "frames": a.steps,
                "forward_passes": out.steps,
                "s": round(best, 3),
                "frames_per_s": round(a.steps / best, 2),
                "steps_per_s": round(steps_per_s, 1),
                "params": params,
                "weight_bytes_per_step": bytes_per_step,
                "memory_bound_steps_per_s": round(bound_steps, 1),
                "fraction_of_bound": round(steps_per_s / bound_steps, 3),
                **peer,
            }
        )
    )


def _run_peer(a: argparse.Namespace) -> dict:
    """frames/s of the peer script at the same size, and soundry's speed ratio over it."""
    cmd = [sys.executable, a.peer, "--dim", str(a.dim), "--layers", str(a.layers),
           "--heads", str(a.heads), "--codebooks", str(a.codebooks), "--card", str(a.card),
           "--steps", str(a.steps), "--threads", str(a.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    return {"peer_frames_per_s": json.loads(line)["frames_per_s"]}


if __name__ == "__main__":
    main()
