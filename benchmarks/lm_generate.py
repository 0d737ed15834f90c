"""Batch-1 token-LM decoding speed on CPU: frames per second and the memory-bound estimate.

Random init, delay pattern, top-k 250, no guidance. Prints one JSON line. Batch-1 decoding
re-reads every weight once per step, so steps/s <= bandwidth / weight bytes; the line
reports that bound (at the bandwidth measured here, a float32 matrix-vector product over
256 MB, or `--bandwidth-gbs`) and the fraction of it reached, and the same at the bandwidth
of a product the size of the weights (`footprint_*`: weights that fit in the last-level
cache are read from it, faster than DRAM allows). `--precision int8` adds the
int8 model's greedy-token agreement with float32 over the run and its logit error on the
float32 run's sequence (max and mean, over the logits' spread).

    python benchmarks/lm_generate.py --dim 512 --layers 8 --heads 8 --codebooks 4 \
        --card 1024 --steps 250 [--precision bf16|int8] \
        [--peer ../shared/peers/hf_lm_generate.py]

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
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="int8: weight-only int8 projections with bf16 activations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="memory bandwidth for the bound (default: measured here, float32 "
                        "matrix-vector over 256 MB)")
    p.add_argument("--peer", default=None, help="path of hf_lm_generate.py to compare with")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoding step (compile time reported apart)")
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
    params = sum(p.numel() for p in model.parameters())
    agreement = {}
    if a.precision == "int8":
        agreement = _agreement_with_fp32(model, a.steps)
    if a.precision == "bf16":
        model = model.to(torch.bfloat16)
    elif a.precision == "int8":
        model.quantize_int8()
    # Weights read per step: every parameter and int8 weight (with its scales) but the
    # embedding tables, of which only K rows are read.
    tables = {id(model.audio_embed.weight), id(model.text_embed.weight)}
    bytes_per_step = sum(t.numel() * t.element_size() for t in model.parameters()
                         if id(t) not in tables)
    bytes_per_step += sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                          if n.endswith(("qweight", "scale_bf16")))
    bandwidth = a.bandwidth_gbs or measure_bandwidth_gbs()
    # The same read at the weights' own size: where they fit in the last-level cache (int8
    # weights of this model, 27 MB, in a 32 MB L3) every step reads them from the cache,
    # not from DRAM, and this is the bound that holds.
    footprint_bandwidth = measure_bandwidth_gbs(max(1, bytes_per_step // 2**20))

    compile_s = None
    if a.compile:
        reason = model.compile_decode()
        if reason:
            raise SystemExit(f"--compile: {reason}")
        start = time.perf_counter()
        generate(model, None, batch=1, max_frames=a.steps, top_k=250, seed=0,
                 min_frames=a.steps)  # compiles (for every cache length: dynamic)
        compile_s = time.perf_counter() - start
    generate(model, None, batch=1, max_frames=8, top_k=250, seed=0)  # warm-up
    best = float("inf")
    for r in range(a.repeats):
        start = time.perf_counter()
        # min_frames: a random model may sample EOS early; time exactly `steps` frames.
        out = generate(model, None, batch=1, max_frames=a.steps, top_k=250, seed=r,
                       min_frames=a.steps)
        best = min(best, time.perf_counter() - start)
    assert int(out.lengths[0]) == a.steps
    bound_steps = bandwidth * 1e9 / bytes_per_step
    steps_per_s = out.steps / best
    peer = _run_peer(a) if a.peer else {}
    if peer:
        peer["speedup_vs_peer"] = round(a.steps / best / peer["peer_frames_per_s"], 2)
    print(
        json.dumps(
            {
                "impl": "soundry",
                "precision": a.precision,
                "compile": a.compile,
                "first_run_s_with_compile": round(compile_s, 1) if compile_s else None,
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
                "bandwidth_gbs": round(bandwidth, 1),
                "bandwidth_measured": a.bandwidth_gbs is None,
                "memory_bound_steps_per_s": round(bound_steps, 1),
                "fraction_of_bound": round(steps_per_s / bound_steps, 3),
                "footprint_bandwidth_gbs": round(footprint_bandwidth, 1),
                "footprint_bound_steps_per_s": round(footprint_bandwidth * 1e9
                                                     / bytes_per_step, 1),
                "fraction_of_footprint_bound": round(
                    steps_per_s / (footprint_bandwidth * 1e9 / bytes_per_step), 3),
                **agreement,
                **peer,
            }
        )
    )


def measure_bandwidth_gbs(megabytes: int = 256, repeats: int = 20) -> float:
    """Weight-read bandwidth of this machine (GB/s): a float32 matrix-vector product over a
    `megabytes` matrix, the access pattern of batch-1 decoding (256 MB: too large for any
    cache, DRAM's bandwidth). Best of 3 rounds of `repeats` products."""
    n = int((megabytes * 2**20 / 4) ** 0.5)
    w, x = torch.randn(n, n), torch.randn(n)
    repeats = max(repeats, 5120 // megabytes)  # small matrices: enough work to time
    for _ in range(3):
        torch.mv(w, x)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mv(w, x)
        best = min(best, time.perf_counter() - start)
    return w.numel() * 4 * repeats / best / 1e9


def _agreement_with_fp32(model: TokenLM, steps: int) -> dict:
    """Greedy decoding with int8 weights against float32: the share of identical tokens
    over `steps` frames, the first frame where they part, and the largest logit error of
    the int8 model on the float32 run's sequence (one full pass), over the logits' spread.
    """
    import copy

    ref = generate(model, None, batch=1, max_frames=steps, top_k=1, seed=0, min_frames=steps)
    quant = copy.deepcopy(model).quantize_int8()
    out = generate(quant, None, batch=1, max_frames=steps, top_k=1, seed=0, min_frames=steps)
    same = out.codes == ref.codes  # [1, K, T]
    parted = (~same.all(dim=1)[0]).nonzero()
    with torch.no_grad():
        a, b = model(ref.seq), quant(ref.seq)
    return {"greedy_token_agreement": round(float(same.float().mean()), 4),
            "greedy_first_difference_frame": int(parted[0]) if len(parted) else None,
            "logit_error_max_over_std": round(float((a - b).abs().max() / a.std()), 4),
            "logit_error_mean_over_std": round(float((a - b).abs().mean() / a.std()), 4)}


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
