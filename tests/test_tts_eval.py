"""TTS evaluation: `soundry eval TTS_EXPORT TEST --prompts TRAIN`, with optional local ASR
and speaker-embedding models (tiny random `transformers` models saved to disk)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundry.cli import main
from soundry.errors import SoundryError
from soundry.eval.tts_run import LocalASR, SpeakerEmbedder, cosine, evaluate_tts, read_corpus
from soundry.generate.tokenize import open_codec
from soundry.models.tts import TTSConfig, TTSModel, export_tts
from soundry.nn.transformer import TransformerConfig

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

SR = 8000
VOICES = {"low": 110.0, "high": 260.0}


def vowel(f0: float, seconds: float, seed: int) -> np.ndarray:
    """A harmonic 'voice' with a slow pitch wobble (mono float32 [T])."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def ljspeech(folder: Path, rows: list[tuple[str, str, str, np.ndarray]]) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for ident, text, voice, audio in rows:
        sf.write(folder / f"{ident}.wav", audio, SR)
        lines.append(f"{ident}|{text}|{text}|{voice}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from soundry.config import validate
    from soundry.models.codec import CodecConfig, build_codec
    from soundry.models.export import export_codec

    root = tmp_path_factory.mktemp("tts_eval")
    cfg = validate(CodecConfig, {
        "sample_rate": SR, "channels": 1, "encoder_dim": 4, "strides": [2, 4],
        "latent_dim": 8, "decoder_dim": 8, "dilations": [1],
        "quantizer": {"type": "rvq", "n_codebooks": 2, "codebook_size": 16, "codebook_dim": 4},
    })
    torch.manual_seed(0)
    codec = export_codec(build_codec(cfg), root / "codec")
    train = ljspeech(root / "train", [
        (f"tr{i}_{v}", f"clip {i}", v, vowel(f0, 0.5, i)) for v, f0 in VOICES.items()
        for i in range(2)])
    test = ljspeech(root / "test", [
        (f"te{i}_{v}", f"banana {i}", v, vowel(f0, 0.4 + 0.1 * i, 10 + i))
        for v, f0 in VOICES.items() for i in range(2)])
    torch.manual_seed(0)
    model = TTSModel(TTSConfig(mode="nar", levels=2, card=16, nar={"steps": 2},
                               transformer=TransformerConfig(dim=16, layers=1, heads=2,
                                                             causal=False, max_len=512)))
    export = export_tts(model, root / "tts", {"type": "soundry", "path": str(codec)},
                        frame_rate=SR / 8, sample_rate=SR)
    return {"root": root, "codec": codec, "train": train, "test": test, "export": export}


def ctc_model(path: Path, favourite: str = "a") -> Path:
    """A tiny wav2vec2 CTC model whose output layer always prefers `favourite`."""
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4}
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(path / "vocab.json"), unk_token="<unk>",
                                                  pad_token="<pad>", word_delimiter_token="|")
    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000,
                                                      padding_value=0.0, do_normalize=True)
    transformers.Wav2Vec2Processor(feature_extractor=extractor,
                                   tokenizer=tokenizer).save_pretrained(path)
    cfg = transformers.Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, pad_token_id=0)
    model = transformers.Wav2Vec2ForCTC(cfg)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[vocab[favourite]] = 10.0
    model.save_pretrained(path)
    return path


def xvector_model(path: Path) -> Path:
    cfg = transformers.WavLMConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, tdnn_dim=(8, 8), tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1), xvector_output_dim=8)
    torch.manual_seed(0)
    transformers.WavLMForXVector(cfg).save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000,
                                          padding_value=0.0).save_pretrained(path)
    return path


def test_read_corpus_needs_speakers(tmp_path: Path, setup: dict[str, Path]) -> None:
    rows = read_corpus(setup["test"])
    assert {r["voice"] for r in rows} == set(VOICES) and rows[0]["text"] == "banana 0"
    (tmp_path / "metadata.csv").write_text("a|text|text\n")
    with pytest.raises(SoundryError, match="speaker"):
        read_corpus(tmp_path)


def test_local_asr_transcribes_through_its_processor(tmp_path: Path) -> None:
    asr = LocalASR(ctc_model(tmp_path / "asr", favourite="b"))
    assert asr.sample_rate == 16000
    said = asr.transcribe(vowel(200.0, 0.5, 0), SR)  # resampled 8 -> 16 kHz
    assert said == "b"  # every frame says 'b'; CTC merges the repeats


def test_speaker_embeddings_compare_voices(tmp_path: Path) -> None:
    emb = SpeakerEmbedder(xvector_model(tmp_path / "spk"))
    a = emb.embed(vowel(110.0, 0.5, 0), SR)
    assert a.shape == (8,) and abs(np.linalg.norm(a) - 1) < 1e-5
    assert cosine(a, emb.embed(vowel(110.0, 0.5, 0), SR)) == pytest.approx(1.0, abs=1e-5)
    assert cosine(a, emb.embed(np.random.default_rng(0).normal(0, 0.3, SR // 2), SR)) < 0.999


def test_evaluate_scores_every_case_and_the_codec_floor(tmp_path: Path,
                                                        setup: dict[str, Path]) -> None:
    from soundry.models.export import load_export

    model = load_export(setup["export"])
    codec = open_codec(setup["codec"])
    asr = LocalASR(ctc_model(tmp_path / "asr"))
    speaker = SpeakerEmbedder(xvector_model(tmp_path / "spk"))
    result = evaluate_tts(model, codec, setup["test"], setup["train"],
                          {"greedy": {"temperature": 0.0, "frames": torch.tensor([20] * 2)}},
                          out_dir=tmp_path / "out", asr=asr, speaker=speaker,
                          prompt_seconds=0.05)
    assert result["cases"] == 4
    floor, greedy = result["floor"], result["greedy"]
    assert floor["n"] == greedy["n"] == 4
    assert floor["duration_error_median"] < 0.05  # the codec keeps the length
    # the transcript is always "a": CER = edits("banana i" -> "a") / characters
    assert greedy["cer"] == pytest.approx(7 / 8)
    assert floor["cer_reference"] == pytest.approx(greedy["cer"])
    assert -1.0 <= greedy["speaker_similarity"] <= 1.0
    # lengths were given: 20 frames of 8 samples against references of 0.4 and 0.5 s
    rows = json.loads((tmp_path / "out" / "greedy_rows.json").read_text())
    assert sorted({r["frames"] for r in rows}) == [20.0]
    assert {r["reference_frames"] for r in rows} == {400.0, 500.0}
    assert len(list((tmp_path / "out").glob("greedy_*.wav"))) == 4


def test_a_prompt_longer_than_the_model_is_a_clear_error(setup: dict[str, Path]) -> None:
    from soundry.generate.speak import speak
    from soundry.models.export import load_export

    model = load_export(setup["export"])
    cond = model.make_conditioning(["hi"], torch.zeros(1, 2, 600, dtype=torch.long))
    with pytest.raises(SoundryError, match="shorter prompt"):
        speak(model, cond)


def test_eval_command_dispatches_on_a_tts_export(tmp_path: Path, setup: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    assert main(["eval", str(setup["export"]), str(setup["test"])]) != 0
    assert "--prompts TRAIN_DIR" in capsys.readouterr().err
    assert main(["eval", str(setup["export"]), str(setup["test"]), "--prompts",
                 str(setup["train"]), "--out", str(out), "--temperature", "0.5",
                 "--prompt-seconds", "0.05"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"floor", "greedy", "sampled"} <= set(summary) and summary["sampled"]["n"] == 4
    assert "content" in capsys.readouterr().out
