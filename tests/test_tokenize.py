"""`soundry tokenize`: a tiny soundry codec and a random-init transformers EnCodec (no
downloads); resume, corrupt inputs, decoding back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from soundry.cli import main
from soundry.data.synth import synthesize
from soundry.data.tokens import TokenIndex
from soundry.generate.tokenize import open_codec, open_recorded_codec, tokenize_dataset

SR = 8000


@pytest.fixture(scope="module")
def tiny_codec(tmp_path_factory):
    from soundry.config import validate
    from soundry.models.codec import CodecConfig, build_codec
    from soundry.models.export import export_codec

    cfg = validate(CodecConfig, {
        "sample_rate": SR, "channels": 1, "encoder_dim": 4, "strides": [2, 4],
        "latent_dim": 8, "decoder_dim": 8, "dilations": [1],
        "quantizer": {"type": "rvq", "n_codebooks": 3, "codebook_size": 16, "codebook_dim": 4},
    })
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("codec") / "tiny"
    export_codec(build_codec(cfg), out)
    return out


@pytest.fixture(scope="module")
def hf_encodec(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.EncodecConfig(
        sampling_rate=SR, audio_channels=1, num_filters=4, upsampling_ratios=[8, 4],
        hidden_size=16, codebook_size=32, codebook_dim=16, num_lstm_layers=1,
        target_bandwidths=[5.0],
    )
    torch.manual_seed(0)
    model = transformers.EncodecModel(cfg)
    for name, buf in model.named_buffers():  # random-init codebooks are all zero
        if name.endswith("codebook.embed"):
            # Equal norms: the nearest entry is then the best-aligned one, which varies.
            buf.copy_(torch.nn.functional.normalize(torch.randn_like(buf), dim=-1) * 0.1)
    out = tmp_path_factory.mktemp("hf") / "encodec"
    model.save_pretrained(str(out))
    return out


@pytest.fixture()
def dataset(tmp_path):
    data = tmp_path / "data"
    manifest = synthesize(data, "music", 3, 0.3, SR)
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with open(manifest, "a") as f:
        f.write(json.dumps({"path": "broken.wav", "tags": ["noise"]}) + "\n")
    return data


def test_tokenize_with_soundry_codec(tiny_codec, dataset, tmp_path):
    codec = open_codec(tiny_codec)
    out = tmp_path / "tokens"
    summary = tokenize_dataset(codec, dataset, out, progress=False)
    assert summary["items"] == 3
    assert [s["path"].endswith("broken.wav") for s in summary["skipped"]] == [True]
    index = TokenIndex.load(out)
    assert index.levels == 3 and index.codebook_size == 16
    assert index.frame_rate == SR / 8 and index.codec["type"] == "soundry"
    item = index.items[0]
    assert item.frames == int(np.ceil(0.3 * SR / 8)) and item.tags and item.text
    # The shards hold exactly what the codec gives for the file.
    from soundry.audio.io import read_audio

    audio, _ = read_audio(dataset / item.id, sample_rate=SR, channels=1)
    np.testing.assert_array_equal(index.codes(0), codec.encode(audio)[0])
    assert len(np.unique(index.codes(0)[0])) > 1
    # Decoding through the recorded codec gives audio of the item's duration.
    wave = open_recorded_codec(index.codec).decode(torch.from_numpy(np.array(index.codes(0))))
    assert wave.shape == (1, item.frames * 8)


def test_tokenize_resumes(tiny_codec, dataset, tmp_path):
    codec = open_codec(tiny_codec)
    out = tmp_path / "tokens"
    calls = {"n": 0}
    encode = codec.encode

    def interrupted(audio):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return encode(audio)

    codec.encode = interrupted
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(codec, dataset, out, shard_frames=1, progress=False)
    assert len(TokenIndex.load(out).items) == 2  # flushed after each file
    codec.encode = encode
    summary = tokenize_dataset(codec, dataset, out, shard_frames=1, progress=False)
    assert summary["encoded_now"] == 1 and summary["items"] == 3
    assert len(summary["skipped"]) == 1, "a skipped input is listed once"
    again = tokenize_dataset(codec, dataset, out, progress=False)
    assert again["encoded_now"] == 0 and again["items"] == 3


def test_tokenize_with_transformers_encodec(hf_encodec, dataset, tmp_path):
    codec = open_codec(hf_encodec)
    levels = codec.model.config.num_quantizers  # at the largest target bandwidth
    assert codec.kind == "transformers" and codec.levels == levels >= 2
    assert codec.codebook_size == 32
    out = tmp_path / "tokens"
    summary = tokenize_dataset(codec, dataset, out, progress=False)
    index = TokenIndex.load(out)
    assert summary["items"] == 3 and index.levels == levels and index.frame_rate == 250
    codes = np.array(index.codes(1))
    assert codes.shape == (levels, index.items[1].frames) and codes.max() < 32
    # Exactly what the transformers model itself gives for the file.
    from soundry.audio.io import read_audio

    audio, _ = read_audio(dataset / index.items[1].id, sample_rate=SR, channels=1)
    with torch.no_grad():
        ref = codec.model.encode(torch.from_numpy(audio)[None], bandwidth=5.0).audio_codes
    np.testing.assert_array_equal(codes, ref[0, 0].numpy())
    wave = open_recorded_codec(index.codec).decode(torch.from_numpy(codes))
    assert wave.shape[0] == 1 and abs(wave.shape[1] - 0.3 * SR) <= 32


def test_tokenize_command(tiny_codec, dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["tokenize", str(tiny_codec), str(dataset), str(out), "--levels", "2"]) == 0
    printed = capsys.readouterr().out
    assert "broken.wav" in printed and str(out) in printed
    assert TokenIndex.load(out).levels == 2


def test_not_a_codec_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["tokenize", str(tmp_path), str(tmp_path), str(tmp_path / "o")]) == 2


def test_lm_export_with_embedded_codec_generates(tiny_codec, tmp_path):
    import shutil

    from soundry.audio.io import audio_info
    from soundry.models.export import load_export
    from soundry.models.lm import TokenLM, TokenLMConfig, export_lm

    codec = open_codec(tiny_codec)
    lm = TokenLM(TokenLMConfig(levels=2, card=16,
                               transformer={"dim": 32, "layers": 1, "heads": 2, "max_len": 128}))
    copy = tmp_path / "codec-copy"
    shutil.copytree(tiny_codec, copy)
    out = export_lm(lm, tmp_path / "lm", codec={**open_codec(copy).record()}, embed_codec=True,
                    frame_rate=codec.frame_rate, sample_rate=codec.sample_rate)
    shutil.rmtree(copy)  # the export must not depend on the original codec directory
    loaded = load_export(out)
    assert loaded.codec_record["path"] == "codec" and loaded.codec_record["embedded"]
    for a, b in zip(lm.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    wav = tmp_path / "out.wav"
    assert main(["generate", str(out), "--text", "anything", "--seconds", "0.01", "--seed", "3",
                 "--out", str(wav)]) == 0
    assert 0 <= audio_info(wav).frames <= 0.01 * SR + 8
    for precision in ("bf16", "int8"):
        assert main(["generate", str(out), "--seconds", "0.01", "--precision", precision,
                     "--out", str(wav)]) == 0


def test_cli_errors_are_clear(tiny_codec, dataset, tmp_path, capsys):
    # A codec export is not an LM; too many levels for the codec.
    assert main(["generate", str(tiny_codec), "--out", str(tmp_path / "x.wav")]) == 2
    assert "not a token LM export" in capsys.readouterr().err
    assert main(["tokenize", str(tiny_codec), str(dataset), str(tmp_path / "t"),
                 "--levels", "9"]) == 2
    assert "has 3 codebooks; 9 were asked for" in capsys.readouterr().err


def test_exported_lm_run_carries_its_codec(tiny_codec, dataset, tmp_path, monkeypatch):
    """The user's path: tokenize, `train --data RELATIVE`, `export` from another folder,
    move the codec away; the export still generates (the codec is embedded), and
    `--codec reference` records the codec's absolute path instead."""
    import shutil
    from pathlib import Path

    import yaml

    from soundry.models.export import load_export

    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "lm" / "tiny.yaml")
    work = tmp_path / "work"
    work.mkdir()
    codec = work / "codec"
    shutil.copytree(tiny_codec, codec)
    monkeypatch.chdir(work)
    assert main(["tokenize", "codec", str(dataset), "tokens", "--levels", "2"]) == 0
    small = ["model.levels=2", "model.loss_weights=null", "model.card=16",
             "model.pattern.delays=[0, 1]",
             "model.transformer.dim=16", "model.transformer.layers=1", "model.transformer.heads=2",
             "model.transformer.max_len=128", "model.text.max_bytes=8",
             "tokens.window_seconds=0.05", "tokens.max_batch_seconds=0.2",
             "tokens.valid_count=1", "valid.demo_count=0", "valid.windows=1",
             "train.max_steps=1", "train.valid_every=1", "train.checkpoint_every=1",
             "train.progress=false", "train.tensorboard=false"]
    assert main(["train", recipe, "--data", "tokens", "--out", "run", *small]) == 0
    config = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert config["tokens"]["path"] == str(work / "tokens")  # not the relative "tokens"
    monkeypatch.chdir(tmp_path)
    assert main(["export", "work/run", "ref", "--codec", "reference"]) == 0
    assert load_export(tmp_path / "ref").codec_record["path"] == str(codec)
    assert main(["export", "work/run", "lm"]) == 0
    shutil.rmtree(codec)
    record = load_export(tmp_path / "lm").codec_record
    assert record["path"] == "codec" and record["embedded"]
    assert (tmp_path / "lm" / "codec" / "model.safetensors").is_file()
    wav = tmp_path / "out.wav"
    assert main(["generate", "lm", "--seconds", "0.05", "--out", str(wav)]) == 0
    assert wav.is_file()
    # the referencing export lost its codec with the folder: a clear error
    assert main(["generate", "ref", "--seconds", "0.05", "--out", str(wav)]) == 2
