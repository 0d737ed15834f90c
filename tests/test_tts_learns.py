"""A tiny TTS really learns to read, end to end on the engine: token shards -> training ->
export -> `soundry speak`.

The "speech" is synthetic codes: each letter of a text lasts `FRAMES_PER_LETTER` frames
whose codes depend on the letter (level 0) and on the speaker (level 1), so reading an
unseen text means aligning letters to frames, and speaking in the prompted voice means
taking level 1 from the prompt. Held-out texts are never trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundry.audio.io import audio_info
from soundry.cli import main
from soundry.data.tokens import TokenShardWriter
from soundry.generate.speak import speak
from soundry.models.export import load_export
from soundry.train.engine import run_training
from soundry.train.export import export_run
from soundry.train.recipes import recipe_from_dict

LETTERS = "abcdef"
FRAMES_PER_LETTER = 3
SPEAKERS = 2
SR, HOP = 8000, 8


def utterance(text: str, speaker: int) -> np.ndarray:
    """codes [2, 3 x len(text)]: level 0 the letter, level 1 the speaker (+ letter parity)."""
    level0 = np.repeat([LETTERS.index(c) for c in text], FRAMES_PER_LETTER)
    level1 = 8 + 4 * speaker + level0 % 2
    return np.stack([level0, level1]).astype(np.int64)


def tiny_codec(path):
    from soundry.config import validate
    from soundry.models.codec import CodecConfig, build_codec
    from soundry.models.export import export_codec

    cfg = validate(CodecConfig, {
        "sample_rate": SR, "channels": 1, "encoder_dim": 4, "strides": [2, 4],
        "latent_dim": 8, "decoder_dim": 8, "dilations": [1],
        "quantizer": {"type": "rvq", "n_codebooks": 2, "codebook_size": 16, "codebook_dim": 4},
    })
    torch.manual_seed(0)
    return export_codec(build_codec(cfg), path)


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["nar", "ar"])
def test_tiny_tts_reads_unseen_texts_in_the_prompted_voice(tmp_path, one_thread, mode):
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list(LETTERS), rng.integers(3, 7))) for _ in range(80)]
    train_texts, test_texts = texts[:72], texts[72:]
    codec = tiny_codec(tmp_path / "codec")
    meta = {"codec": {"type": "soundry", "path": str(codec)}, "levels": 2,
            "codebook_size": 16, "frame_rate": SR / HOP, "sample_rate": SR, "channels": 1}
    writer = TokenShardWriter(tmp_path / "tokens", meta)
    for i, text in enumerate(train_texts):
        writer.add(f"u{i}.wav", [utterance(text, i % SPEAKERS)], [f"u{i}"], text=text,
                   speaker=f"spk{i % SPEAKERS}")
    writer.flush()

    recipe = recipe_from_dict({
        "task": "tts", "seed": 0,
        "model": {"mode": mode, "levels": 2, "card": 16,
                  "transformer": {"dim": 64, "layers": 2, "heads": 4, "causal": mode == "ar",
                                  "max_len": 128},
                  "uncond_frac": 0.0, "sampling": {"cfg_scale": 1.0}},
        "tokens": {"path": str(tmp_path / "tokens"), "min_seconds": 0.0,
                   "prompt_seconds": [0.006, 0.012], "max_batch_size": 16,
                   "max_batch_seconds": 100.0, "bucket_seconds": 0.01, "valid_count": 2},
        "optim": {"tts": {"type": "adamw", "lr": 3e-3, "betas": [0.9, 0.98],
                          "schedule": {"type": "warmup", "warmup_steps": 30}}},
        "valid": {"demo_count": 1},
        "train": {"max_steps": 1500, "log_every": 100, "valid_every": 1500,
                  "checkpoint_every": 1500, "progress": False, "tensorboard": False},
    })
    summary = run_training(recipe, tmp_path / "run")
    assert summary["status"] == "completed"
    assert "valid/duration_error_t0" in summary["valid"]
    export_run(tmp_path / "run", tmp_path / "export")
    model = load_export(tmp_path / "export")

    # unseen texts, each in both voices, prompted by a training clip of that voice
    rows = [(t, s) for t in test_texts for s in range(SPEAKERS)]
    prompts = torch.stack([torch.from_numpy(utterance("abc", s)[:, :6]) for _, s in rows])
    cond = model.make_conditioning([t for t, _ in rows], prompts)
    truth = [utterance(t, s) for t, s in rows]
    true_frames = torch.tensor([u.shape[1] for u in truth])

    speech = speak(model, cond, temperature=0.0, seed=0)
    dur_err = (speech.predicted - true_frames).abs() / true_frames
    assert float(dur_err.median()) < 0.2, f"duration errors {dur_err.tolist()}"

    # content and voice with the true length (isolates reading from the duration head)
    speech = speak(model, cond, temperature=0.0, frames=true_frames, seed=0)
    level0 = level1 = cells = 0
    for b, codes in enumerate(truth):
        n = min(codes.shape[1], int(speech.lengths[b]))
        got = speech.codes[b, :, :n].numpy()
        level0 += int((got[0] == codes[0, :n]).sum())
        level1 += int((got[1] == codes[1, :n]).sum())
        cells += codes.shape[1]
    assert level0 / cells > 0.8, f"letters read right on {level0 / cells:.0%} of frames"
    assert level1 / cells > 0.8, f"voice codes right on {level1 / cells:.0%} of frames"

    wav = tmp_path / "said.wav"
    voice = tmp_path / "voice.wav"
    import soundfile as sf

    sf.write(voice, np.random.default_rng(1).normal(0, 0.1, SR // 10).astype(np.float32), SR)
    assert main(["speak", str(tmp_path / "export"), "--text", "abcd", "--prompt", str(voice),
                 "--temperature", "0", "--out", str(wav)]) == 0
    assert audio_info(wav).frames > 0
