"""The TTS text front end: bytes by default, espeak-ng phonemes through phonemizer."""

from __future__ import annotations

import builtins
import shutil

import pytest

from soundry.errors import ConfigError
from soundry.models.lm import ByteTokenizer
from soundry.models.tts import TextFrontend, TTSTextConfig


def test_bytes_frontend_reads_the_text_itself() -> None:
    front = TextFrontend(TTSTextConfig())
    ids, valid = front.batch(["hi", "héllo"])
    assert ids[0, -3:].tolist() == [ord("h"), ord("i"), ByteTokenizer.EOS]
    assert valid[1].sum() == len("héllo".encode()) + 2  # BOS, UTF-8 bytes, EOS
    assert not valid[0, 0]  # left-padded


def test_phonemes_without_phonemizer_name_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_phonemizer(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("phonemizer"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_phonemizer)
    front = TextFrontend(TTSTextConfig(frontend="phonemes"))
    with pytest.raises(ConfigError, match="pip install phonemizer"):
        front.batch(["hello"])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_phonemes_frontend_reads_espeak_phonemes() -> None:
    pytest.importorskip("phonemizer", reason="the phonemizer package is not installed")
    front = TextFrontend(TTSTextConfig(frontend="phonemes", language="en-us"))
    said = front.string("The cat sat.")
    assert said != "The cat sat." and "æ" in said  # IPA, not the spelling
    assert front.string("") == ""  # the null text stays empty
    ids, valid = front.batch(["The cat sat."])
    assert int(valid.sum()) == len(said.encode()) + 2


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_phoneme_model_copies_after_use() -> None:
    import copy
    import pickle

    pytest.importorskip("phonemizer", reason="the phonemizer package is not installed")
    from soundry.models.tts import TTSConfig, TTSModel
    from soundry.nn.transformer import TransformerConfig

    model = TTSModel(TTSConfig(levels=2, card=16, text=TTSTextConfig(frontend="phonemes"),
                               transformer=TransformerConfig(dim=16, layers=1, heads=2,
                                                             causal=False)))
    said = model.frontend.string("hello there")  # loads the espeak backend
    twin = copy.deepcopy(model)  # as the EMA copy is made
    assert twin.frontend.string("hello there") == said
    assert pickle.loads(pickle.dumps(model.frontend)).string("hello there") == said
