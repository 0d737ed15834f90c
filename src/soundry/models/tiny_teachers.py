"""Tiny randomly initialised teachers, written in `transformers`' save_pretrained layout.

For trying a semantic-codec recipe end to end without any pretrained weights (nothing can
be downloaded here) and for tests: `soundry teacher-features` and training load them by
path exactly as they would load a real WavLM or LLM directory. Their features carry no
meaning, but they are a fixed, non-trivial function of the audio (or transcript).

Which one to distil from in a smoke run: "w2v-bert" (a random w2v-BERT over 80-bin fbank
frames). Its features are a smooth function of the short-time spectrum, as a trained
model's are: a ridge regression from five frames of log spectra reaches a per-frame
cosine of 0.70 on held-out speech, against 0.35 for the best constant. A random WavLM,
HuBERT or wav2vec2 runs random convolutions over the raw waveform, and its features are
close to noise: consecutive frames share a cosine of 0.35, and the same ridge regression
scores 0.37, below the constant's 0.39. No student can learn those, so they only check
the plumbing (loading, alignment, shapes).

    make_tiny_teacher("w2v-bert", "teachers/w2v-bert-tiny")   # also wavlm, hubert, gpt2
"""

from __future__ import annotations

from pathlib import Path

import torch

from soundry.errors import SoundryError

TINY_KINDS = ("w2v-bert", "wavlm", "hubert", "wav2vec2", "gpt2")


def _conv_stack() -> dict:
    # wav2vec2's 7-layer feature encoder (hop 320 = 20 ms at 16 kHz), narrow
    return {"conv_dim": (32,) * 7, "conv_stride": (5, 2, 2, 2, 2, 2, 2),
            "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64}


def make_tiny_teacher(kind: str, out: str | Path, seed: int = 0, hidden: int = 32) -> Path:
    """Write a tiny random `kind` model (and its feature extractor or tokenizer) to `out`."""
    try:
        import transformers as tf
    except ImportError:
        raise SoundryError("transformers is not installed (pip install 'soundry[hf]')") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "w2v-bert":
            config = tf.Wav2Vec2BertConfig(
                hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=2 * hidden, feature_projection_input_dim=160,
                conv_depthwise_kernel_size=5, output_hidden_size=hidden)
            model = tf.Wav2Vec2BertModel(config)
            # 80 log-mel bins every 10 ms, two frames stacked: 50 Hz, as w2v-BERT 2.0
            tf.SeamlessM4TFeatureExtractor(feature_size=80, num_mel_bins=80, stride=2,
                                           sampling_rate=16000, padding_value=1.0
                                           ).save_pretrained(str(out))
        elif kind in ("wavlm", "hubert", "wav2vec2"):
            conv = _conv_stack() | {"hidden_size": hidden}
            config = {"wavlm": tf.WavLMConfig, "hubert": tf.HubertConfig,
                      "wav2vec2": tf.Wav2Vec2Config}[kind](**conv)
            model = {"wavlm": tf.WavLMModel, "hubert": tf.HubertModel,
                     "wav2vec2": tf.Wav2Vec2Model}[kind](config)
            tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                        do_normalize=True, return_attention_mask=False
                                        ).save_pretrained(str(out))
        elif kind == "gpt2":
            config = tf.GPT2Config(n_embd=hidden, n_layer=2, n_head=2, vocab_size=256,
                                   n_positions=1024, bos_token_id=0, eos_token_id=0)
            model = tf.GPT2LMHeadModel(config)
            _byte_tokenizer().save_pretrained(str(out))
        else:
            raise SoundryError(f"tiny teacher kind '{kind}': use one of {', '.join(TINY_KINDS)}")
        model.save_pretrained(str(out))
    return out


def _byte_tokenizer():  # noqa: ANN202 (a transformers tokenizer)
    """A byte-level tokenizer with no merges: one token per UTF-8 byte (256 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)
