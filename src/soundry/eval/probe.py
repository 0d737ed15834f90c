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
                steps: int, seed: int, batch: int = 32) -> torch.nn.Embedding:
    """A linear CTC probe (one-hot code -> character logits) fitted on (codes [F], text),
    `batch` random utterances a step (Adam)."""
    gen = torch.Generator().manual_seed(seed)
    probe = torch.nn.Embedding(vocab, len(alphabet) + 1)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=gen)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    targets = [torch.tensor([index[c] for c in t]) for t in texts]
    for _ in range(steps):
        pick = torch.randperm(len(codes), generator=gen)[:batch].tolist()
        lengths = torch.tensor([codes[i].shape[0] for i in pick])
        padded = torch.nn.utils.rnn.pad_sequence([codes[i] for i in pick], batch_first=True)
        logp = F.log_softmax(probe(padded), dim=-1).transpose(0, 1)  # [F, N, C]
        loss = F.ctc_loss(logp, torch.cat([targets[i] for i in pick]), lengths,
                          torch.tensor([targets[i].shape[0] for i in pick]),
                          zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe


def _encode_items(codec: Any, data: str | Path, mel: bool = True) -> dict[str, list]:
    """Level-0 codes, normalised transcripts and (`mel`) level-0 / all-level mel distances
    of the transcribed files of `data`."""
    from soundry.audio.io import read_audio
    from soundry.data.scan import scan
    from soundry.eval.metrics import mel_distance

    items = [it for it in scan(data).items if it.text and normalise_text(it.text)]
    out: dict[str, list] = {"codes": [], "texts": [], "mel0": [], "mel_all": []}
    for it in items:
        audio, _ = read_audio(it.path, sample_rate=codec.sample_rate, channels=codec.channels)
        x = torch.from_numpy(audio)[None]
        c = codec.encode(x)
        n = x.shape[-1]
        sr = codec.sample_rate
        if mel:
            out["mel0"].append(mel_distance(x[0], codec.decode_codes(c[:, :1])[0, :, :n], sr))
            out["mel_all"].append(mel_distance(x[0], codec.decode_codes(c)[0, :, :n], sr))
        out["codes"].append(c[0, 0])
        out["texts"].append(normalise_text(it.text))
    return out


@torch.no_grad()
def probe_codec(model: str | Path, data: str | Path, steps: int = 1500,
                held_out: float = 0.25, seed: int = 0, fit: str | Path | None = None
                ) -> dict[str, Any]:
    """Probe and reconstruction figures of one codec export on transcribed `data`.

    `fit`: transcribed files to fit the probe on (e.g. the codec's training set); it is then
    scored on all of `data`. Without it, a `held_out` fraction of `data` is scored and the
    rest fits the probe."""
    from soundry.models.codec_io import load_codec

    codec = load_codec(model).eval()
    scored = _encode_items(codec, data)
    n = len(scored["texts"])
    if fit is not None:
        fitted = _encode_items(codec, fit, mel=False)
        test = list(range(n))
        train_codes, train_texts = fitted["codes"], fitted["texts"]
    else:
        order = np.random.default_rng(seed).permutation(n)
        n_test = max(1, round(held_out * n))
        test = [int(i) for i in order[:n_test]]
        train_codes = [scored["codes"][i] for i in order[n_test:]]
        train_texts = [scored["texts"][i] for i in order[n_test:]]
    if len(train_texts) < 3 or not test:
        raise DataError(f"{data}: the probe needs transcribed files to fit (at least 3) and "
                        f"to score; found {len(train_texts)} and {len(test)}")
    alphabet = "".join(sorted(set("".join(train_texts + [scored["texts"][i] for i in test]))))
    with torch.enable_grad():
        probe = train_probe(train_codes, train_texts, alphabet, codec.codebook_size, steps,
                            seed)
    hyps = [greedy_ctc(probe(scored["codes"][i]), alphabet) for i in test]
    refs = [scored["texts"][i] for i in test]
    return {"path": str(model), "utterances": n, "train": len(train_texts),
            "test": len(test), "cer": cer(refs, hyps), "cer_blank": 1.0,
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[:3]],
            "mel_level0": float(np.mean(scored["mel0"])),
            "mel_all": float(np.mean(scored["mel_all"])), "levels": int(codec.n_codebooks)}
