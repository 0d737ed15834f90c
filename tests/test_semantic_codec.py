"""The semantic codec: teachers, alignment, distillation losses, heads, the feature store and
the task (tiny random transformers teachers built here, loaded by path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from soundry.errors import ConfigError, SoundryError  # noqa: E402
from soundry.losses.distill import (  # noqa: E402
    axis_cosine,
    best_constant_cosine,
    cosine_loss,
    d_axis_loss,
    mse_loss,
)
from soundry.models.distill_heads import ProjectionHead  # noqa: E402
from soundry.models.teachers import TeacherConfig, align_frames  # noqa: E402
from soundry.models.tiny_teachers import make_tiny_teacher  # noqa: E402
from soundry.train.teachers import load_teacher  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return {k: make_tiny_teacher(k, root / k) for k in ("wavlm", "hubert", "w2v-bert", "gpt2")}


def _speechy(seconds: float, seed: int) -> np.ndarray:
    """A voiced, time-varying signal (vowel-like harmonics under a moving envelope)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 110 + 40 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
    return (0.2 * x * env + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight transcribed clips (LJSpeech layout), lengths not multiples of the hop."""
    root = tmp_path_factory.mktemp("speech")
    (root / "wavs").mkdir()
    rows = []
    words = ["a bright kite", "nine tired horses", "the storm began", "a long letter",
             "summer festival", "distant bell", "yellow night", "quiet river"]
    for i, text in enumerate(words):
        sf.write(root / "wavs" / f"u{i}.wav", _speechy(1.0 + 0.137 * i, i), SR)
        rows.append(f"u{i}|{text}|{text}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def speech_valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three clips never trained on (other seeds, so other contours)."""
    root = tmp_path_factory.mktemp("speech_valid")
    for i in range(3):
        sf.write(root / f"v{i}.wav", _speechy(1.2, 100 + i), SR)
    return root


# ----------------------------------------------------------------------------- losses


def test_cosine_loss_on_known_vectors() -> None:
    t = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]])  # [1, H=2, F=3]
    assert cosine_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_loss(-t, t).item() == pytest.approx(2.0, abs=1e-6)
    ortho = torch.stack([t[:, 1], -t[:, 0]], dim=1)  # each frame turned by 90 degrees
    assert cosine_loss(ortho, t).item() == pytest.approx(1.0, abs=1e-6)
    # a mask leaves frames out: frame 2 is wrong, but masked
    s = t.clone()
    s[0, :, 2] = -s[0, :, 2]
    assert cosine_loss(s, t).item() == pytest.approx(2 / 3, abs=1e-6)
    assert cosine_loss(s, t, torch.tensor([[1.0, 1.0, 0.0]])).item() == pytest.approx(0, abs=1e-6)


def test_d_axis_loss_follows_speechtokenizer_formula() -> None:
    """SpeechTokenizer's corrected d-axis loss on [B, T, D] features is
    -log(sigmoid(cosine_similarity(S, T, axis=1))).mean(): cosine over time, per dim."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)  # [B, H, F]
    reference = -torch.log(torch.sigmoid(
        F.cosine_similarity(s.transpose(1, 2), t.transpose(1, 2), dim=1))).mean()
    assert d_axis_loss(s, t).item() == pytest.approx(reference.item(), rel=1e-5)
    # known values: identical trajectories give cos 1 -> -log sigmoid(1) = 0.31326
    assert d_axis_loss(t, t).item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), rel=1e-5)
    assert d_axis_loss(-t, t).item() == pytest.approx(-math.log(1 / (1 + math.exp(1))), rel=1e-5)
    # it is not the per-frame cosine: scaling one dimension's trajectory changes nothing
    scaled = t.clone()
    scaled[:, 0] *= 10
    assert d_axis_loss(scaled, t).item() == pytest.approx(d_axis_loss(t, t).item(), rel=1e-5)
    assert cosine_loss(scaled, t).item() > 0.01
    # masked frames count in neither the dot product nor the norms
    mask = torch.ones(2, 7)
    mask[:, 5:] = 0
    trimmed = axis_cosine(s[..., :5], t[..., :5])
    assert torch.allclose(axis_cosine(s, t, mask), trimmed, atol=1e-6)


def test_mse_loss_uses_frame_normalised_teacher() -> None:
    t = torch.tensor([[[1.0, 4.0], [3.0, 8.0]]])  # frames (1, 3) and (4, 8)
    target = torch.tensor([[[-1.0, -1.0], [1.0, 1.0]]])  # each frame standardised
    assert mse_loss(target, t).item() == pytest.approx(0.0, abs=1e-4)
    assert mse_loss(torch.zeros_like(t), t).item() == pytest.approx(1.0, abs=1e-4)
    assert mse_loss(target, 100 * t).item() == pytest.approx(0.0, abs=1e-4)  # scale-free


def test_best_constant_cosine_bounds_every_constant() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 8, 40, generator=g) + 2.0  # a shared offset: constants do well
    best = best_constant_cosine(t).item()
    mean = t.mean(dim=(0, 2))[None, :, None].expand_as(t)
    assert 1 - cosine_loss(mean, t).item() <= best + 1e-6
    for _ in range(5):
        c = torch.randn(8, generator=g)[None, :, None].expand_as(t)
        assert 1 - cosine_loss(c, t).item() <= best + 1e-6


# ----------------------------------------------------------------------------- alignment


def test_align_frames_lengths_and_pooling() -> None:
    x = torch.arange(12.0).reshape(1, 1, 12)
    assert align_frames(x, 12).equal(x)
    avg = align_frames(x, 4, "avg")
    assert avg.flatten().tolist() == [1.0, 4.0, 7.0, 10.0]  # means of 3 frames each
    up = align_frames(torch.tensor([[[0.0, 1.0, 2.0]]]), 6, "avg")
    assert up.flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]  # uniform stretch
    lin = align_frames(torch.tensor([[[0.0, 2.0]]]), 4, "interp")
    assert lin.flatten().tolist() == pytest.approx([0.0, 0.5, 1.5, 2.0])


@pytest.mark.parametrize("kind", ["wavlm", "hubert", "w2v-bert"])
@pytest.mark.parametrize(("rate", "hop", "seconds"), [(16000, 320, 1.0), (24000, 480, 0.73),
                                                     (16000, 160, 0.5)])
def test_ssl_features_align_to_codec_frames(teachers: dict[str, Path], kind: str, rate: int,
                                           hop: int, seconds: float) -> None:
    teacher = load_teacher(kind, TeacherConfig(kind="ssl", path=str(teachers[kind]), layer=1))
    n = int(seconds * rate)
    audio = np.random.default_rng(0).standard_normal((1, n)).astype(np.float32) * 0.1
    feats = teacher.item_frames(audio, rate, hop)
    assert feats.shape == (32, math.ceil(n / hop))
    assert teacher.sample_rate == 16000 and teacher.dim == 32
    assert torch.isfinite(feats).all() and feats.std() > 0.1


def test_layer_choice_and_average(teachers: dict[str, Path]) -> None:
    path = str(teachers["wavlm"])
    audio = _speechy(0.6, 1)[None]
    per_layer = [load_teacher("w", TeacherConfig(kind="ssl", path=path, layer=i)
                              ).item_frames(audio, SR, 320) for i in range(3)]
    avg = load_teacher("w", TeacherConfig(kind="ssl", path=path)).item_frames(audio, SR, 320)
    assert torch.allclose(avg, torch.stack(per_layer).mean(0), atol=1e-5)
    assert not torch.allclose(per_layer[1], per_layer[2])


def test_text_teacher_stretches_tokens_uniformly(teachers: dict[str, Path]) -> None:
    teacher = load_teacher("llm", TeacherConfig(kind="text_lm", path=str(teachers["gpt2"]),
                                                layer=2))
    tokens = teacher.text_features("abc")  # byte-level: 3 tokens
    assert tokens.shape == (32, 3)
    frames = teacher.text_frames("abc", 7)
    assert frames.shape == (32, 7)
    shown = [0, 0, 1, 1, 1, 2, 2]  # floor((f + 1/2) * 3 / 7): the token under f's centre
    for f in range(7):
        assert torch.allclose(frames[:, f], tokens[:, shown[f]])
    with pytest.raises(SoundryError, match="transcript"):
        teacher.item_frames(np.zeros((1, 3200), np.float32), SR, 320, text=None)


# ----------------------------------------------------------------------------- config errors


def test_teacher_directory_errors(tmp_path: Path, teachers: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        load_teacher("x", TeacherConfig(kind="ssl", path=str(tmp_path / "missing")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable config.json"):
        load_teacher("x", TeacherConfig(kind="ssl", path=str(broken)))
    with pytest.raises(ConfigError, match="not a causal language model"):
        load_teacher("x", TeacherConfig(kind="text_lm", path=str(teachers["wavlm"])))
    with pytest.raises(ConfigError, match="not a self-supervised speech model"):
        load_teacher("x", TeacherConfig(kind="ssl", path=str(teachers["gpt2"])))
    with pytest.raises(ConfigError, match="hidden states 0..2"):
        load_teacher("x", TeacherConfig(kind="ssl", path=str(teachers["wavlm"]), layer=5))


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projection_head_shapes(kind: str) -> None:
    head = ProjectionHead(64, 768, kind, hidden=128 if kind == "mlp" else None)
    assert head(torch.randn(2, 64, 13)).shape == (2, 768, 13)
    n_params = sum(p.numel() for p in head.parameters())
    expected = 64 * 768 + 768 if kind == "linear" else 64 * 128 + 128 + 128 * 768 + 768
    assert n_params == expected


# ----------------------------------------------------------------------------- the task


def _recipe(teachers: dict[str, Path], speech_dir: Path, **extra: object) -> dict:
    raw = {
        "task": "semantic_codec",
        "teachers": {"wavlm": {"kind": "ssl", "path": str(teachers["wavlm"]), "weight": 5.0}},
        "data": {"sources": [{"path": str(speech_dir)}], "sample_rate": SR,
                 "segment_seconds": 0.4, "batch_size": 2, "num_workers": 0,
                 "valid_count": 2, "valid_seconds": 0.6},
        "model": {"preset": "tiny", "decoder_dim": 64,
                  "quantizer": {"type": "fsq", "levels": [8, 8], "n_codebooks": 3}},
        "discriminator": {"members": [{"type": "mpd", "periods": [2, 3],
                                       "channels": [4, 8, 8, 8]}]},
        "losses": {"mel": {"windows": [64, 256], "n_mels": [16, 32]}},
        "schedule": {"phases": [{"name": "warm", "steps": 2, "discriminator": False,
                                 "adversarial": False},
                                {"name": "adv_only", "weights": {"mel": 0.0}}]},
        "train": {"max_steps": 3, "log_every": 1, "valid_every": 3, "checkpoint_every": 3,
                  "best_metric": None},
    }
    raw.update(extra)
    return raw


def _task(raw: dict, run_dir: Path | None = None):  # noqa: ANN202
    from soundry.train.recipes import recipe_from_dict
    from soundry.train.task import TaskContext
    from soundry.train.tasks.semantic_codec import SemanticCodecTask

    recipe = recipe_from_dict(raw)
    return SemanticCodecTask(recipe, TaskContext(run_dir=run_dir, max_steps=3))


def test_recipe_checks(teachers: dict[str, Path], speech_dir: Path) -> None:
    from soundry.train.recipes import recipe_from_dict

    raw = _recipe(teachers, speech_dir)
    assert "distill_wavlm" in recipe_from_dict(raw).declared_terms()
    bad = _recipe(teachers, speech_dir, schedule={"phases": [{"weights": {"distill_wavlmm": 0}}]})
    with pytest.raises(ConfigError, match="distill_wavlm"):
        recipe_from_dict(bad)
    bad = _recipe(teachers, speech_dir)
    bad["teachers"]["wavlm"]["levels"] = [3]
    with pytest.raises(ConfigError, match="levels"):
        recipe_from_dict(bad)
    bad = _recipe(teachers, speech_dir, optim={"discriminator": {"clip": None}})
    with pytest.raises(ConfigError, match="clipped"):
        recipe_from_dict(bad)
    with pytest.raises(ConfigError, match="no such directory"):
        raw = _recipe(teachers, speech_dir)
        raw["teachers"] = {"w": {"kind": "ssl", "path": "/nope"}}
        _task(raw)
    with pytest.raises(SoundryError, match="soundry teacher-features"):
        _task(_recipe(teachers, speech_dir, teacher_features=str(speech_dir / "none")))


def test_heads_sized_from_teacher_config(teachers: dict[str, Path], speech_dir: Path) -> None:
    raw = _recipe(teachers, speech_dir)
    raw["teachers"]["llm"] = {"kind": "text_lm", "path": str(teachers["gpt2"]), "head": "linear"}
    task = _task(raw)
    cfg = json.loads((teachers["gpt2"] / "config.json").read_text())
    assert task.heads["llm"].net.out_channels == cfg["n_embd"]
    assert task.heads["wavlm"].net[-1].out_channels == 32
    assert task.heads["wavlm"].net[0].in_channels == task.generator.latent_dim


def test_distillation_gradient_reaches_encoder_not_teacher(teachers: dict[str, Path],
                                                           speech_dir: Path) -> None:
    from soundry.losses.distill import cosine_loss

    task = _task(_recipe(teachers, speech_dir))
    batch = next(iter(task.train_loader()))
    x = batch["audio"]
    targets = task.targets(batch, x)
    out = task.generator(x, step=1)
    pred = task.predictions(out.info.level_outputs)["wavlm"]
    target, mask = targets["wavlm"]
    cosine_loss(pred, target, mask).backward()
    enc = [p.grad for p in task.generator.encoder.parameters()]
    assert all(g is not None for g in enc)
    assert sum(float(g.abs().sum()) for g in enc) > 0
    assert all(p.grad is None for p in task.generator.decoder.parameters())
    teacher = task.teachers["wavlm"].module
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_training_run_keeps_teacher_frozen_and_out_of_checkpoints(
        teachers: dict[str, Path], speech_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from soundry.train.engine import run_training
    from soundry.train.recipes import recipe_from_dict

    raw = _recipe(teachers, speech_dir)
    raw["teachers"]["llm"] = {"kind": "text_lm", "path": str(teachers["gpt2"]), "weight": 1.0,
                              "loss": "d_axis"}
    run = tmp_path / "run"
    run_training(recipe_from_dict(raw), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss/distill_wavlm" in r]
    assert train and all("distill/llm/cosine" in r for r in train)
    valid = [r for r in rows if "valid/distill/wavlm/cosine" in r][-1]
    for key in ("valid/distill/wavlm/cosine_const", "valid/distill/llm/cosine",
                "valid/mel_distance@1"):
        assert math.isfinite(valid[key])
    # the adversarial-only phase (step 3) ran with the mel weight at 0 and logged audio
    last = [r for r in train if r["step"] == 3][0]
    assert "loss/mel" not in last and "loss/adversarial" in last and "loss/distill_llm" in last
    assert "loss/mel" in [r for r in train if r["step"] == 1][0]
    assert (run / "valid").exists() and list((run / "valid").rglob("*_out.wav"))
    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    teacher = load_teacher("w", TeacherConfig(kind="ssl", path=str(teachers["wavlm"])))
    teacher_names = set(teacher.module.state_dict())  # e.g. feature_projection.projection.weight
    files = list(ckpt.glob("*.safetensors"))
    assert files
    for f in files:
        assert "teacher" not in f.name
        with safe_open(str(f), "pt") as fh:
            assert not [k for k in fh.keys() if any(k.endswith(t) for t in teacher_names)]
    from soundry.train.auxiliary import content_hash

    provenance = json.dumps(json.loads((run / "provenance.json").read_text()))
    assert "teacher_wavlm" in provenance and content_hash(teachers["wavlm"]) in provenance
    assert content_hash(teachers["gpt2"]) in provenance


def test_precomputed_features_equal_online(teachers: dict[str, Path], speech_dir: Path,
                                           tmp_path: Path) -> None:
    import yaml

    from soundry.cli import main
    from soundry.data.datasets import target_frames
    from soundry.data.feature_store import find_store
    from soundry.data.scan import scan

    raw = _recipe(teachers, speech_dir)
    raw["teachers"]["llm"] = {"kind": "text_lm", "path": str(teachers["gpt2"])}
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    store_dir = tmp_path / "features"
    assert main(["teacher-features", str(recipe_path), str(speech_dir), str(store_dir)]) == 0
    items = scan(speech_dir).items
    files = [(it.path, target_frames(it, SR)) for it in items]
    task = _task(raw)
    from soundry.audio.io import read_audio

    for name, teacher in task.teachers.items():
        store, why = find_store(store_dir, teacher.key(SR, task.hop), files)
        assert store is not None, why
        for it in items[:3]:
            audio, _ = read_audio(it.path, sample_rate=SR, channels=1)
            online = teacher.item_frames(audio, SR, task.hop, text=it.text)
            assert torch.allclose(store.full(it.path), online, atol=1e-5), name
    # training slices a crop's frames out of the stored file features
    stored = _task({**raw, "teacher_features": str(store_dir)})
    batch = next(iter(stored.train_loader()))
    targets = stored.targets(batch, batch["audio"])
    for i, meta in enumerate(batch["meta"]):
        start = int(batch["offset"][i]) // stored.hop
        full = stored._stores["wavlm"].full(meta["path"])
        frames = targets["wavlm"][0].shape[-1]
        assert torch.equal(targets["wavlm"][0][i], full[:, start:start + frames])
    # a store for other weights does not match
    other = make_tiny_teacher("wavlm", tmp_path / "other", seed=1)
    cfg = TeacherConfig(kind="ssl", path=str(other))
    assert find_store(store_dir, load_teacher("o", cfg).key(SR, task.hop), files)[0] is None
    # nor does a text teacher's store once a transcript changed
    llm = task.teachers["llm"]
    texts = {it.path: it.text for it in items}
    assert find_store(store_dir, llm.key(SR, task.hop), files, texts)[0] is not None
    texts[items[0].path] = "another sentence"
    store, why = find_store(store_dir, llm.key(SR, task.hop), files, texts)
    assert store is None and "lacks 1 file" in why
    # past a file's end: zeros, and the count of real frames
    path = items[0].path
    total = stored._stores["wavlm"].items[path]["codec_frames"]
    feats, n = stored._stores["wavlm"].get(path, total - 3, 10)
    assert n == 3 and feats.shape == (32, 10) and feats[:, 3:].abs().sum() == 0
    assert torch.equal(feats[:, :3], stored._stores["wavlm"].full(path)[:, -3:])


def test_teacher_features_of_long_and_tiny_files(teachers: dict[str, Path],
                                                 speech_dir: Path, tmp_path: Path) -> None:
    """A file over the 30 s chunk (with a 5 ms tail) and a 10 ms file: one frame per hop."""
    import yaml

    from soundry.cli import main
    from soundry.data.feature_store import FeatureStore

    folder = tmp_path / "odd"
    folder.mkdir()
    lengths = {"long.wav": 30 * SR + 80, "tiny.wav": 160}
    for name, n in lengths.items():
        sf.write(folder / name, 0.1 * np.sin(np.arange(n) / 7.0).astype(np.float32), SR)
    raw = _recipe(teachers, speech_dir)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "features"
    assert main(["teacher-features", str(recipe_path), str(folder), str(out),
                 "data.min_seconds=0"]) == 0
    store = FeatureStore(next(out.glob("wavlm-*")))
    for name, n in lengths.items():
        feats = store.full(str(folder / name))
        assert feats.shape == (32, math.ceil(n / 320)) and torch.isfinite(feats).all()


@pytest.mark.parametrize("quantizer", [
    {"level0": "plain", "init": "data"}, {"split": True, "init": "data"},
    {"level0": "plain", "split": True}])
def test_plain_and_split_level0_train_with_restarts(quantizer: dict) -> None:
    """Training passes with dead-code restarts (a plain level 0 has another code size than
    the factorised levels, so each stage draws from its own pool)."""
    from soundry.models.codec import codec_from_preset

    codec = codec_from_preset("tiny", quantizer={
        "type": "rvq", "n_codebooks": 3, "codebook_size": 32, "dead_code_threshold": 100.0,
        "restart_every": 2, **quantizer})
    books = [s.codebook.weight.detach().clone() for s in codec.quantizer.stages]
    x = torch.from_numpy(_speechy(0.5, 0))[None, None].repeat(2, 1, 1)
    for step in range(1, 5):
        out = codec(x, step=step)
        (out.audio.pow(2).mean() + out.commitment_loss + out.codebook_loss).backward()
        assert torch.isfinite(out.audio).all()
    for before, stage in zip(books, codec.quantizer.stages, strict=True):
        assert not torch.equal(before, stage.codebook.weight)  # restarted (or data-initialised)


def test_plain_and_split_level0() -> None:
    from soundry.models.codec import codec_from_preset

    x = torch.from_numpy(_speechy(0.5, 0))[None, None]
    plain = codec_from_preset("tiny", quantizer={"type": "rvq", "n_codebooks": 3,
                                                 "codebook_size": 32, "level0": "plain"})
    stage0 = plain.quantizer.stages[0]
    assert stage0.codebook.weight.shape == (32, plain.latent_dim)
    assert isinstance(stage0.in_proj, torch.nn.Identity)
    split = codec_from_preset("tiny", quantizer={"type": "rvq", "n_codebooks": 3,
                                                 "codebook_size": 32, "split": True}).eval()
    with torch.no_grad():
        z = split.encoder(x)
        q = split.quantizer
        s0 = q.stages[0](z)
        s1 = q.stages[1](z)  # stage 1 quantizes z itself, beside level 0
        s2 = q.stages[2](z - s1.out)
        codes = split.encode(x)
        assert torch.equal(codes[:, 0], s0.codes) and torch.equal(codes[:, 1], s1.codes)
        assert torch.equal(codes[:, 2], s2.codes)
        latents = q.decode_codes(codes)
        assert torch.allclose(latents, s0.out + s1.out + s2.out, atol=1e-5)


# ----------------------------------------------------------------------------- the probe


def test_cer_and_greedy_ctc() -> None:
    from soundry.eval.probe import cer, edit_distance, greedy_ctc, normalise_text

    assert edit_distance("kitten", "sitting") == 3
    assert cer(["abc", "de"], ["abc", ""]) == pytest.approx(2 / 5)
    logits = torch.full((6, 4), -5.0)
    for f, k in enumerate([1, 1, 0, 1, 2, 0]):  # a a _ a b _ -> "aab"
        logits[f, k] = 5.0
    assert greedy_ctc(logits, "abc") == "aab"
    assert normalise_text("Hello,  World! It's") == "hello world it's"


def test_linear_probe_reads_informative_codes_not_constant_ones() -> None:
    from soundry.eval.probe import cer, greedy_ctc, train_probe

    rng = np.random.default_rng(0)
    alphabet = "abcdefgh"
    texts = ["".join(rng.choice(list(alphabet), size=int(rng.integers(4, 9))))
             for _ in range(40)]

    def codes_of(text: str, informative: bool) -> torch.Tensor:
        # three frames a character, a silence code (0) between characters
        seq = []
        for ch in text:
            seq += [1 + alphabet.index(ch) if informative else 1] * 3 + [0]
        return torch.tensor(seq)

    for informative, bound in ((True, 0.1), (False, None)):
        codes = [codes_of(t, informative) for t in texts]
        probe = train_probe(codes[:30], texts[:30], alphabet, 16, steps=300, seed=0)
        with torch.no_grad():
            hyps = [greedy_ctc(probe(c), alphabet) for c in codes[30:]]
        score = cer(texts[30:], hyps)
        if bound is not None:
            assert score < bound
        else:
            assert score > 0.6  # one code for every character: nothing to read


def test_probe_command_on_two_codecs(speech_dir: Path, tmp_path: Path) -> None:
    from soundry.cli import main
    from soundry.models.codec import codec_from_preset
    from soundry.models.export import export_codec

    for name in ("a", "b"):
        export_codec(codec_from_preset("tiny", decoder_dim=64), tmp_path / name)
    out = tmp_path / "probe.json"
    assert main(["probe", str(tmp_path / "a"), str(speech_dir), "--against",
                 str(tmp_path / "b"), "--steps", "20", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("model", "against"):
        r = result[key]
        assert r["utterances"] == 8 and r["test"] == 2 and r["train"] == 6
        # a random codec's level 0 does not spell anything out
        assert r["cer"] > 0.5 and math.isfinite(r["mel_level0"]) and math.isfinite(r["mel_all"])


def test_report_reads_distillation_cosine_as_higher_is_better() -> None:
    from soundry.eval.directions import direction

    assert direction("valid/distill/ssl/cosine") == "higher"
    assert direction("loss/distill_ssl") == "lower"
    assert direction("valid/distill/ssl/cosine_const") is None  # a reference, not a score


@pytest.mark.slow
def test_level0_learns_the_teachers_features(teachers: dict[str, Path], speech_dir: Path,
                                             speech_valid: Path, tmp_path: Path) -> None:
    """A few hundred steps: on held-out clips the head's cosine with a (learnable) random
    w2v-BERT rises from ~0 to above the best constant predictor's, and reconstruction
    improves."""
    from soundry.train.engine import run_training
    from soundry.train.recipes import recipe_from_dict

    raw = _recipe(teachers, speech_dir)
    raw["teachers"] = {"ssl": {"kind": "ssl", "path": str(teachers["w2v-bert"]),
                               "weight": 10.0}}
    raw["data"].update(batch_size=4, valid_count=3, valid_seconds=1.0, valid=str(speech_valid))
    raw["model"]["quantizer"] = {"type": "fsq", "levels": [16, 16], "n_codebooks": 3,
                                 "bypass": 0.5}
    raw["optim"] = {"generator": {"lr": 1e-3, "clip": 1000.0}}
    raw["schedule"] = {"phases": [{"name": "warm", "discriminator": False,
                                   "adversarial": False}]}
    raw["train"] = {"max_steps": 250, "log_every": 50, "valid_every": 250,
                    "valid_at_start": True, "checkpoint_every": 250, "best_metric": None}
    run = tmp_path / "run"
    run_training(recipe_from_dict(raw), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r.get("kind") == "valid"]
    start, end = valid[0], valid[-1]
    cos = "valid/distill/ssl/cosine"
    const = end["valid/distill/ssl/cosine_const"]
    assert start[cos] < const
    assert end[cos] > const + 0.05, (start[cos], end[cos], const)
    assert end["valid/mel_distance"] < start["valid/mel_distance"] - 1.0
