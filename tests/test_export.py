"""Model exports: config.json + model.safetensors, loaded by kind, identical outputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from fixtures.numerics import assert_close, assert_codes_agree
from safetensors.torch import load_file

import soundry
from soundry.errors import SoundryError
from soundry.models.codec import codec_from_preset
from soundry.models.export import (
    EXPORT_KINDS,
    codec_export_config,
    export_codec,
    load_export,
    save_export,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_codec(**overrides):
    torch.manual_seed(0)
    codec = codec_from_preset("tiny", **overrides)
    with torch.no_grad():  # weights unlike a fresh init, as after training
        for p in codec.parameters():
            p.mul_(1.0 + 0.1 * torch.randn_like(p))
        codec.quantizer.steps.fill_(123)
    return codec.eval()


@pytest.mark.parametrize("fold", [True, False])
def test_codec_round_trip_gives_identical_outputs(tmp_path, fold: bool) -> None:
    codec = trained_codec(channels=2)
    out_dir = export_codec(codec, tmp_path / "model", fold=fold)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["kind"] == "codec" and config["soundry_version"] == soundry.__version__
    assert config["sample_rate"] == 16000 and config["channels"] == 2
    assert config["weight_norm_folded"] is fold
    keys = load_file(str(out_dir / "model.safetensors")).keys()
    assert any(k.endswith("weight_g") for k in keys) is not fold

    loaded = soundry.load(str(out_dir))
    assert not loaded.training
    assert loaded.hop_length == codec.hop_length and loaded.n_codebooks == codec.n_codebooks
    x = torch.randn(2, 2, 16000) * 0.3  # 4 x 50 frames
    with torch.inference_mode():
        ref_codes = codec.encode(x)
        codes = loaded.encode(x)
        ref_audio = codec.decode_codes(ref_codes)
        audio = loaded.decode_codes(ref_codes)
    # The loader always folds weight norm, the caller's codec keeps it: other kernels, so
    # float32 rounding over the network's depth (eps 1.2e-7; 1e-4 on outputs of order 1),
    # codes up to argmax ties, audio through the same codes (see fixtures.numerics).
    assert ref_audio.abs().mean() > 0.01  # a real signal, so the tolerance means something
    assert_codes_agree(codes, ref_codes)
    assert_close(audio, ref_audio)
    # Against the caller's codec folded in this process the weights are the same bits and
    # the same kernels run in the same order: there equality is exact.
    folded = copy.deepcopy(codec).remove_weight_norm()
    ours, theirs = folded.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.inference_mode():
        assert torch.equal(loaded.encode(x), folded.encode(x))
        assert torch.equal(loaded.decode_codes(ref_codes), folded.decode_codes(ref_codes))
    assert int(loaded.quantizer.steps) == 123  # buffers travel too
    assert codec.encoder.stem.weight_norm  # exporting does not fold the caller's module


def test_export_from_a_config_and_a_training_state_dict(tmp_path) -> None:
    """What a run exporter has: the recipe's `model:` config and checkpoint weights."""
    codec = trained_codec()
    config = codec_export_config(codec.config)
    assert config["codebook_size"] == 256 and config["frame_rate"] == 50.0
    save_export(tmp_path / "m", "codec", config, codec.state_dict())
    loaded = load_export(tmp_path / "m")
    x = torch.randn(2, 1, 16000) * 0.3  # 100 frames
    with torch.inference_mode():
        out, ref = loaded(x), codec(x)
        # weight norm kept here, folded by the loader: float32 rounding (fixtures.numerics)
        assert_codes_agree(out.codes, ref.codes)
        assert_close(loaded.decode_codes(ref.codes), codec.decode_codes(ref.codes))


def test_overwrite_is_complete_and_keeps_other_files(tmp_path) -> None:
    out = tmp_path / "m"
    save_export(out, "codec", codec_export_config(trained_codec()), trained_codec().state_dict())
    (out / "README.txt").write_text("notes")
    small = trained_codec(quantizer={"n_codebooks": 2})
    save_export(out, "codec", codec_export_config(small), small.state_dict())
    assert (out / "README.txt").read_text() == "notes"
    assert load_export(out).n_codebooks == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_kinds_dispatch_and_errors(tmp_path) -> None:
    assert "codec" in EXPORT_KINDS
    seen = {}

    @EXPORT_KINDS.register("test-echo")
    def _load(config, state):
        seen.update(config=config, state=state)
        return torch.nn.Identity()

    try:
        save_export(tmp_path / "e", "test-echo", {"x": 1}, {"w": torch.ones(2)})
        assert isinstance(load_export(tmp_path / "e"), torch.nn.Identity)
    finally:
        EXPORT_KINDS._entries.pop("test-echo")
    assert seen["config"]["x"] == 1 and torch.equal(seen["state"]["w"], torch.ones(2))

    with pytest.raises(SoundryError, match="does not exist"):
        load_export(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SoundryError, match="not a soundry export"):
        load_export(tmp_path / "empty")
    save_export(tmp_path / "u", "no-such-kind", {}, {"w": torch.ones(1)})
    with pytest.raises(SoundryError, match="no-such-kind"):
        load_export(tmp_path / "u")
    codec = trained_codec()
    state = codec.state_dict()
    state.pop("decoder.proj.bias")
    save_export(tmp_path / "bad", "codec", codec_export_config(codec), state)
    with pytest.raises(SoundryError, match="decoder.proj.bias"):
        load_export(tmp_path / "bad")
