"""What a codec's level 0 carries: a linear character probe and level-0-alone reconstruction.

`probe_codec(model, data)` encodes every transcribed utterance of `data`, then

- trains a *linear* CTC probe from the one-hot level-0 code of each frame to characters
  (an embedding table of codebook_size x (characters + blank): one-hot times a matrix) on
  part of the utterances and reports its character error rate (greedy decoding) on the
  rest. A frame-wise linear map has no context and no capacity of its own, so a low CER
  means the codes themselves separate the sounds; an empty output scores CER 1.0;
- scores reconstruction from level 0 alone and from all levels (mel distance).

Run it on a semantic codec and on a plain codec of the same size and bitrate (`soundry
probe MODEL DATA --against PLAIN`): distillation should lower the probe's CER.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from soundry.errors import DataError


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(refs: list[str], hyps: list[str]) -> float:
    """Character error rate: total edits / total reference characters."""
    total = sum(len(r) for r in refs)
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True)) / max(total, 1)


def normalise_text(text: str) -> str:
    """Lower case; letters, digits, apostrophes and single spaces only."""
    kept = "".join(c if c.isalnum() or c in "' " else " " for c in text.lower())
    return " ".join(kept.split())


def greedy_ctc(logits: torch.Tensor, alphabet: str) -> str:
    """Best path of [F, 1 + len(alphabet)] logits (index 0 = blank), repeats merged."""
    best = logits.argmax(-1).tolist()
    out, last = [], 0
    for k in best:
        if k != last and k != 0:
            out.append(alphabet[k - 1])
        last = k
    return "".join(out)


def train_probe(codes: list[torch.Tensor], texts: list[str], alphabet: str, vocab: int,
                steps: int, seed: int) -> torch.nn.Embedding:
    """A linear CTC probe (one-hot code -> character logits) fitted on (codes [F], text)."""
    gen = torch.Generator().manual_seed(seed)
    probe = torch.nn.Embedding(vocab, len(alphabet) + 1)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=gen)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    lengths = torch.tensor([c.shape[0] for c in codes])
    padded = torch.nn.utils.rnn.pad_sequence(codes, batch_first=True)  # [N, F]
    targets = [torch.tensor([index[c] for c in t]) for t in texts]
    target_lengths = torch.tensor([t.shape[0] for t in targets])
    flat = torch.cat(targets)
    for _ in range(steps):
        logp = F.log_softmax(probe(padded), dim=-1).transpose(0, 1)  # [F, N, C]
        loss = F.ctc_loss(logp, flat, lengths, target_lengths, zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe


@torch.no_grad()
def probe_codec(model: str | Path, data: str | Path, steps: int = 1500,
                held_out: float = 0.25, seed: int = 0) -> dict[str, Any]:
    """Probe and reconstruction figures of one codec export on transcribed `data`."""
    from soundry.audio.io import read_audio
    from soundry.data.scan import scan
    from soundry.eval.metrics import mel_distance
    from soundry.models.codec_io import load_codec

    codec = load_codec(model).eval()
    index = scan(data)
    items = [it for it in index.items if it.text and normalise_text(it.text)]
    if len(items) < 4:
        raise DataError(f"{data}: the probe needs at least 4 transcribed files, found "
                        f"{len(items)}")
    codes, texts, mel0, mel_all = [], [], [], []
    for it in items:
        audio, _ = read_audio(it.path, sample_rate=codec.sample_rate, channels=codec.channels)
        x = torch.from_numpy(audio)[None]
        c = codec.encode(x)
        n = x.shape[-1]
        mel0.append(mel_distance(x[0], codec.decode_codes(c[:, :1])[0, :, :n],
                                 codec.sample_rate))
        mel_all.append(mel_distance(x[0], codec.decode_codes(c)[0, :, :n], codec.sample_rate))
        codes.append(c[0, 0])
        texts.append(normalise_text(it.text))
    alphabet = "".join(sorted(set("".join(texts))))
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = max(1, round(held_out * len(items)))
    test, train = order[:n_test], order[n_test:]
    with torch.enable_grad():
        probe = train_probe([codes[i] for i in train], [texts[i] for i in train], alphabet,
                            codec.codebook_size, steps, seed)
    hyps = [greedy_ctc(probe(codes[i]), alphabet) for i in test]
    refs = [texts[i] for i in test]
    return {"path": str(model), "utterances": len(items), "train": len(train),
            "test": len(test), "cer": cer(refs, hyps), "cer_blank": 1.0,
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[:3]],
            "mel_level0": float(np.mean(mel0)), "mel_all": float(np.mean(mel_all)),
            "levels": int(codec.n_codebooks)}
