"""Frozen teachers of a semantic codec, and their features aligned to the codec's frames.

Two kinds, both `transformers` models loaded from a local directory (nothing downloaded):

- `ssl`: a self-supervised speech model (WavLM, HuBERT, wav2vec2, w2v-BERT, data2vec-audio).
  The audio is resampled to the teacher's rate (its `preprocessor_config.json`
  `sampling_rate`, else 16 kHz), run through its feature extractor when the directory has
  one (raw samples otherwise), and the hidden states of `layer` are taken: an index into
  `hidden_states` (0 = the input to the first transformer layer, i = after layer i) or
  "avg", the mean over all of them (SpeechTokenizer's default teacher target).
- `text_lm`: a causal language model's hidden states for the transcript (its tokenizer must
  be in the directory). Tokens are aligned to frames without a forced aligner: the token
  sequence is stretched uniformly over the utterance's frames. That assumes a constant
  speaking rate and speech filling the file from start to end; leading or trailing
  silence and pauses shift words against their frames. It is the baseline a forced
  aligner would improve on.

Alignment in time (`align_frames`): teacher frames (an SSL model's 50 Hz, or tokens) map onto
the codec's frames F = ceil(samples / hop) of the same span, by average pooling (`avg`: each
codec frame averages the teacher frames it covers; when the teacher is coarser, frames are
repeated, which for text is the uniform stretch) or linear interpolation (`interp`).

`soundry.train.teachers.load_teacher` loads one. Features of a whole file (`item_frames`)
are what `soundry teacher-features` stores and what training slices a crop out of;
`batch_frames` runs an SSL teacher on training crops on-line. Both go through the same
code, so on the same audio they agree; on a crop they do not quite: a teacher run on the
whole file attends across all of it, and a feature extractor that normalises per clip
(WavLM-large, w2v-BERT) normalises over the whole file, not over the crop.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from soundry.config import Strict
from soundry.errors import ConfigError, SoundryError

#: `transformers` model types accepted as self-supervised speech teachers
SSL_TYPES = ("wavlm", "hubert", "wav2vec2", "wav2vec2-conformer", "wav2vec2-bert",
             "data2vec-audio", "unispeech", "unispeech-sat", "sew", "sew-d")
DEFAULT_SSL_RATE = 16000
#: clips shorter than this are zero-padded for an SSL teacher (its conv stack's minimum)
MIN_SECONDS = 0.1


class TeacherConfig(Strict):
    """One entry of a semantic codec's `teachers:` section."""

    kind: Literal["ssl", "text_lm"]
    path: str  # a local transformers directory (save_pretrained layout)
    layer: int | Literal["avg"] = "avg"
    weight: float = Field(1.0, ge=0)  # the weight of its `distill_<name>` loss term
    loss: Literal["cosine", "d_axis", "mse"] = "cosine"
    head: Literal["mlp", "linear"] = "mlp"  # mlp: Linear-GELU-Linear
    head_hidden: int | None = Field(None, ge=1)  # None: the teacher's feature size
    pooling: Literal["avg", "interp"] = "avg"
    # the quantizer levels whose outputs (summed) the head reads
    levels: list[int] = Field(default_factory=lambda: [0], min_length=1)


def read_teacher_meta(name: str, cfg: TeacherConfig) -> dict[str, Any]:
    """The teacher's config.json, checked to exist and to be of the stated kind
    (ConfigError otherwise, before any training starts)."""
    path = Path(cfg.path)
    where = f"teachers.{name}.path '{cfg.path}'"
    if not path.is_dir():
        raise ConfigError(f"{where}: no such directory (a local model directory is needed; "
                          "nothing is downloaded)")
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: unreadable config.json ({exc})") from None
    model_type = meta.get("model_type")
    if cfg.kind == "ssl" and model_type not in SSL_TYPES:
        raise ConfigError(f"{where}: model_type '{model_type}' is not a self-supervised speech "
                          f"model (kind ssl takes {', '.join(SSL_TYPES)})")
    if cfg.kind == "text_lm":
        try:
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        except ImportError:
            raise SoundryError("transformers is not installed (pip install 'soundry[hf]')"
                               ) from None
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in SSL_TYPES:
            raise ConfigError(f"{where}: model_type '{model_type}' is not a causal language "
                              "model (kind text_lm)")
    layers = int(meta.get("num_hidden_layers", meta.get("n_layer", 0)))
    if isinstance(cfg.layer, int) and not 0 <= cfg.layer <= layers:
        raise ConfigError(f"teachers.{name}.layer {cfg.layer}: the teacher has hidden states "
                          f"0..{layers}")
    return meta


def align_frames(x: torch.Tensor, frames: int, pooling: str = "avg") -> torch.Tensor:
    """Teacher features [B, H, L] over the same span as `frames` codec frames -> [B, H, frames].

    avg: adaptive average pooling when L >= frames; else each codec frame f shows teacher
    frame floor((f + 1/2) L / frames), the one whose span holds f's centre (the uniform
    stretch); interp: linear interpolation."""
    if frames < 1:
        raise ValueError("frames must be >= 1")
    x = x.float()
    if x.shape[-1] == frames:
        return x
    if pooling == "interp" and x.shape[-1] > 1:
        return F.interpolate(x, size=frames, mode="linear", align_corners=False)
    if x.shape[-1] >= frames:
        return F.adaptive_avg_pool1d(x, frames)
    return F.interpolate(x, size=frames, mode="nearest-exact")


def _layer(hidden: tuple[torch.Tensor, ...], layer: int | str) -> torch.Tensor:
    """The chosen hidden state [B, L, H] -> [B, H, L]."""
    h = torch.stack(hidden).mean(0) if layer == "avg" else hidden[int(layer)]
    return h.transpose(1, 2).float()


class Teacher:
    """A loaded teacher: `aux` (the frozen network, handed to the engine), its feature size
    `dim`, and for `ssl` its `sample_rate`; for `text_lm` its `tokenizer`."""

    def __init__(self, name: str, cfg: TeacherConfig, aux: Any, meta: dict[str, Any],
                 tokenizer: Any = None, extractor: Any = None, sample_rate: int = 0) -> None:
        self.name = name
        self.cfg = cfg
        self.aux = aux
        self.meta = meta
        self.tokenizer = tokenizer
        self.extractor = extractor
        self.sample_rate = sample_rate
        text = meta.get("text_config") or {}  # multimodal configs nest the LM's
        self.dim = int(meta.get("hidden_size", meta.get("n_embd", text.get("hidden_size", 0))))
        if self.dim < 1:
            raise ConfigError(f"teachers.{name}: config.json gives no hidden_size")

    @property
    def module(self) -> nn.Module:
        return self.aux.module

    def key(self, sample_rate: int, hop: int) -> dict[str, Any]:
        """Everything that defines this teacher's features at a codec's frames (hashed into
        the name of a precomputed feature store)."""
        return {"kind": self.cfg.kind, "sha256": self.aux.digest, "layer": self.cfg.layer,
                "teacher_rate": self.sample_rate, "pooling": self.cfg.pooling,
                "codec_rate": int(sample_rate), "hop": int(hop), "version": 1}

    def _device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # -- ssl -------------------------------------------------------------------------------

    @torch.no_grad()
    def ssl_features(self, audio: list[np.ndarray]) -> torch.Tensor:
        """Equal-length mono clips [T] at the teacher's rate -> hidden states [B, H, L]."""
        if self.extractor is not None:
            inputs = self.extractor(audio, sampling_rate=self.sample_rate, return_tensors="pt")
            inputs = {k: v for k, v in inputs.items()
                      if k in ("input_values", "input_features", "attention_mask")}
        else:
            inputs = {"input_values": torch.from_numpy(np.stack(audio)).float()}
        dev = self._device()
        # the teacher runs in its own precision, whatever autocast the caller is under
        with torch.autocast(dev.type, enabled=False):
            out = self.module(**{k: v.to(dev) for k, v in inputs.items()},
                              output_hidden_states=True)
        return _layer(out.hidden_states, self.cfg.layer)

    def _to_teacher_rate(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from soundry.audio.io import resample

        mono = np.asarray(audio, dtype=np.float32).reshape(1, -1)
        if sample_rate != self.sample_rate:
            mono = resample(mono, sample_rate, self.sample_rate)
        return np.ascontiguousarray(mono.reshape(-1), dtype=np.float32)

    def batch_frames(self, audio: torch.Tensor, sample_rate: int, hop: int) -> torch.Tensor:
        """SSL features of clips [B, 1, T] at `sample_rate`, aligned to ceil(T / hop) frames
        [B, H, F] (on-line extraction, e.g. of training crops). Clips shorter than
        `MIN_SECONDS` (a teacher's conv stack needs ~25 ms) are zero-padded for the teacher
        and their frames trimmed back."""
        if self.cfg.kind != "ssl":
            raise SoundryError(f"teacher '{self.name}' reads text, not audio")
        n = audio.shape[-1]
        frames = math.ceil(n / hop)
        short = max(0, math.ceil(MIN_SECONDS * sample_rate / hop) * hop - n)
        x = audio.float().cpu()
        if short:
            x = F.pad(x, (0, short))
        clips = [self._to_teacher_rate(a, sample_rate) for a in x.numpy()]
        feats = self.ssl_features(clips)
        return align_frames(feats, math.ceil(x.shape[-1] / hop), self.cfg.pooling)[..., :frames]

    # -- text ------------------------------------------------------------------------------

    @torch.no_grad()
    def text_features(self, text: str) -> torch.Tensor:
        """Hidden states of the transcript's tokens [H, L] (float32). A transcript longer
        than the model's positions runs in consecutive windows of that many tokens."""
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.shape[-1] == 0:
            raise SoundryError(f"teacher '{self.name}': the transcript {text!r} has no tokens")
        dev = self._device()
        window = int(self.meta.get("max_position_embeddings", self.meta.get("n_positions", 0))
                     or ids.shape[-1])
        parts = []
        with torch.autocast(dev.type, enabled=False):
            for start in range(0, ids.shape[-1], window):
                out = self.module(input_ids=ids[:, start:start + window].to(dev),
                                  output_hidden_states=True)
                parts.append(_layer(out.hidden_states, self.cfg.layer)[0])
        return torch.cat(parts, dim=-1)

    def text_frames(self, text: str, frames: int) -> torch.Tensor:
        """Transcript features stretched uniformly over `frames` frames: [H, frames]."""
        return align_frames(self.text_features(text)[None], frames, self.cfg.pooling)[0]

    # -- whole items -----------------------------------------------------------------------

    def item_frames(self, audio: np.ndarray, sample_rate: int, hop: int,
                    text: str | None = None) -> torch.Tensor:
        """Features of one whole item (audio [C, T] or [T] at `sample_rate`) at its
        ceil(T / hop) codec frames: [H, F] float32 on the CPU."""
        n = np.asarray(audio).shape[-1]
        frames = math.ceil(n / hop)
        if self.cfg.kind == "text_lm":
            if not text:
                raise SoundryError(f"teacher '{self.name}' needs a transcript for every "
                                   "file (a manifest's `text`, or LJSpeech's metadata.csv)")
            return self.text_frames(text, frames).cpu()
        x = torch.from_numpy(np.asarray(audio, dtype=np.float32).reshape(1, 1, n))
        return self.batch_frames(x, sample_rate, hop)[0].cpu()
