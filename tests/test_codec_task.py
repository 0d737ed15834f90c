"""The codec system: recipes, one GAN step, schedule phases, export and the file CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures.numerics import assert_codes_agree

from soundry.audio.dsp import SpectrogramCache
from soundry.cli import main as cli
from soundry.paths import recipes_dir
from soundry.train.recipes import load_recipe
from soundry.train.task import TaskContext
from soundry.train.tasks import TASKS

# A very small codec and discriminator so a step takes well under a second on CPU.
SMALL = [
    "model.encoder_dim=4",
    "model.decoder_dim=16",
    "model.latent_dim=16",
    "model.quantizer={type: rvq, n_codebooks: 4, codebook_size: 32, dead_code_threshold: 1.0}",
    "discriminator.members=[{type: mpd, periods: [2, 3], channels: [4, 8, 8]}, "
    "{type: mrd, windows: [256, 128], channels: 4}]",
    "losses.mel.windows=[32, 64, 128, 256]",
    "losses.mel.n_mels=[5, 10, 20, 40]",
    "data.batch_size=2",
    "data.segment_seconds=0.1",
    "data.num_workers=0",
]


def _task(*overrides: str):
    recipe = load_recipe(recipes_dir() / "codec/tiny.yaml", [*SMALL, *overrides])
    torch.manual_seed(0)
    return TASKS.get("codec")(recipe, TaskContext())


class RecordingUpdater:
    """Steps the task's optimizers like the engine and records what happened around each."""

    def __init__(self, task) -> None:
        self.task = task
        self.specs = {s.name: s for s in task.optimizers()}
        self.calls: list[str] = []
        self.snapshots: dict[str, dict[str, dict[str, torch.Tensor]]] = {}

    def _state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            name: {k: v.detach().clone() for k, v in net.state_dict().items()}
            for name, net in self.task.networks().items()
        }

    def update(self, name: str, loss: torch.Tensor) -> bool:
        self.snapshots[f"before_{name}"] = self._state()
        spec = self.specs[name]
        spec.optimizer.zero_grad(set_to_none=True)
        # Gradients other networks hold must not be touched by this update's backward.
        for other, net in self.task.networks().items():
            if other != name:
                for p in net.parameters():
                    p.grad = None
        loss.backward()
        self.grads = {
            n: [p.grad for p in net.parameters()] for n, net in self.task.networks().items()
        }
        self.calls.append(name)
        spec.optimizer.step()
        self.snapshots[f"after_{name}"] = self._state()
        return True


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_every_recipe_validates_and_codec_recipes_build() -> None:
    recipes = sorted(recipes_dir().rglob("*.yaml"))
    assert any(p.parent.name == "codec" for p in recipes)
    for path in recipes:
        recipe = load_recipe(path)
        if recipe.task == "codec" and "dac" not in path.name:  # DAC sizes: see below
            task = TASKS.get("codec")(recipe, TaskContext())
            assert set(task.networks()) == {"generator", "discriminator"}


@pytest.mark.parametrize(
    ("name", "generator_m", "discriminator_m"),
    [("dac-44k", 76.7, 42.5), ("dac-16k", 74.2, 42.5)],
)
def test_dac_recipes_match_published_sizes(
    name: str, generator_m: float, discriminator_m: float
) -> None:
    from soundry.models.codec import build_codec
    from soundry.models.discriminators import build_discriminator

    recipe = load_recipe(recipes_dir() / f"codec/{name}.yaml")
    with torch.device("meta"):
        gen = build_codec(recipe.model)
        disc = build_discriminator(recipe.discriminator, recipe.model.sample_rate)
    g = sum(p.numel() for p in gen.parameters()) / 1e6
    d = sum(p.numel() for p in disc.parameters()) / 1e6
    assert g == pytest.approx(generator_m, rel=0.01)
    assert d == pytest.approx(discriminator_m, rel=0.02)
    assert recipe.losses.weights()["mel"] == 15.0
    assert recipe.optim.generator.betas == (0.8, 0.99)


def test_gan_step_updates_d_then_g_and_g_step_leaves_d_alone() -> None:
    task = _task("schedule.phases=[{name: gan}]")
    updater = RecordingUpdater(task)
    x = 0.3 * torch.randn(2, 1, 1600)
    logs = task.train_step({"audio": x}, 0, updater)
    assert updater.calls == ["discriminator", "generator"]
    snaps = updater.snapshots
    # The D update changes D, not G.
    assert _changed(snaps["before_discriminator"]["discriminator"],
                    snaps["after_discriminator"]["discriminator"])
    assert not _changed(snaps["before_discriminator"]["generator"],
                        snaps["after_discriminator"]["generator"])
    # The G update changes G; D's weights are untouched and got no gradient at all.
    assert _changed(snaps["before_generator"]["generator"], snaps["after_generator"]["generator"])
    assert not _changed(snaps["before_generator"]["discriminator"],
                        snaps["after_generator"]["discriminator"])
    assert all(g is None for g in updater.grads["discriminator"])
    assert all(p.requires_grad for p in task.discriminator.parameters())  # restored after
    for key in ("loss/d", "loss/g", "loss/mel", "loss/adversarial", "loss/feature_matching"):
        assert torch.isfinite(torch.as_tensor(logs[key]))


def test_real_audio_goes_through_the_discriminator_once_per_step() -> None:
    task = _task("schedule.phases=[{name: gan}]")
    seen: list[torch.Tensor] = []
    task.discriminator.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = 0.3 * torch.randn(2, 1, 1600)
    task.train_step({"audio": x}, 0, RecordingUpdater(task))
    real_passes = [a for a in seen if torch.equal(a, x.reshape(2, 1, -1))]
    # D step: one batch [real; detached fake]; G step: fake alone.
    assert len(seen) == 2
    assert torch.equal(seen[0][:2], x) and seen[0].shape[0] == 4
    assert not torch.equal(seen[1], x)
    assert not real_passes


def test_discriminator_windows_cut_real_and_fake_alike_and_are_seeded() -> None:
    # 0.02 s at 16 kHz = 320 of the items' 1600 samples
    task = _task("schedule.phases=[{name: gan}]", "schedule.discriminator_seconds=0.02")
    seen: list[torch.Tensor] = []
    task.discriminator.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = 0.3 * torch.randn(2, 1, 1600)
    logs = task.train_step({"audio": x}, 7, RecordingUpdater(task))
    assert torch.isfinite(torch.as_tensor(logs["loss/feature_matching"]))
    d_batch, g_batch = seen
    assert d_batch.shape == (4, 1, 320) and g_batch.shape == (2, 1, 320)
    # the real windows are windows of x; the G pass scores the fake at the same offsets
    # as the D pass (detached there)
    starts = []
    for i in range(2):
        hits = [o for o in range(1600 - 320 + 1) if torch.equal(x[i, :, o:o + 320], d_batch[i])]
        assert len(hits) == 1
        starts.append(hits[0])
    assert torch.allclose(d_batch[2:], g_batch.detach())
    # seeded by (seed, step): the same step draws the same windows, another step others
    gen = task.gan
    a = gen.windows(*(SpectrogramCache(x),) * 2, 7)[0].audio
    b = gen.windows(*(SpectrogramCache(x),) * 2, 7)[0].audio
    c = gen.windows(*(SpectrogramCache(x),) * 2, 8)[0].audio
    assert torch.equal(a, d_batch[:2]) and torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(starts)) == 2 or starts[0] != 0  # per-item offsets, not all at the start
    # without the key (or a window as long as the items) the discriminator sees everything
    whole = _task("schedule.phases=[{name: gan}]", "schedule.discriminator_seconds=1.0").gan
    assert whole.windows(SpectrogramCache(x), SpectrogramCache(x), 7)[0].audio is x


def test_schedule_phases_switch_at_the_right_steps() -> None:
    task = _task(
        "schedule.phases=[{name: warmup, steps: 3, discriminator: false, adversarial: false}, "
        "{name: disc, steps: 2, generator: false}, {name: gan, weights: {mel: 0.0}}]"
    )
    sched = task.recipe.schedule
    assert [sched.phase_at(s).name for s in range(7)] == [
        "warmup", "warmup", "warmup", "disc", "disc", "gan", "gan",
    ]
    assert sched.boundaries() == [(0, "warmup"), (3, "disc"), (5, "gan")]
    x = 0.3 * torch.randn(2, 1, 1600)
    # Engine steps are 1-based: step 1 is the first optimizer step (0-based schedule step 0).
    expected = {1: ["generator"], 3: ["generator"], 4: ["discriminator"], 5: ["discriminator"],
                6: ["discriminator", "generator"]}
    for step, calls in expected.items():
        updater = RecordingUpdater(task)
        logs = task.train_step({"audio": x}, step, updater)
        assert updater.calls == calls, step
        if step <= 3:
            assert "loss/adversarial" not in logs
    # The adversarial-only phase is a weight setting: mel not computed, adversarial is.
    assert task.weights_at(5)["mel"] == 0.0 and task.weights_at(0)["mel"] == 15.0
    assert "loss/mel" not in logs and "loss/adversarial" in logs


def test_engine_runs_every_phase_for_exactly_its_steps(tmp_path: Path) -> None:
    """Driven through Engine.fit: a 1-step phase runs once, each phase its full length."""
    import json

    from soundry.data.synth import synthesize
    from soundry.train.engine import run_training

    synthesize(tmp_path / "train", "tones", 4, 0.5, 16000, seed=0)
    recipe = load_recipe(
        recipes_dir() / "codec/tiny.yaml",
        [
            *SMALL,
            f"data.sources=[{{path: '{tmp_path / 'train'}'}}]",
            f"data.valid='{tmp_path / 'train'}'",
            "data.valid_count=1",
            "data.valid_seconds=0.2",
            "train.max_steps=6",
            "train.log_every=1",
            "train.valid_every=100",
            "train.checkpoint_every=100",
            "train.progress=false",
            "schedule.phases=[{name: warmup, steps: 1, discriminator: false, "
            "adversarial: false}, {name: disc, steps: 2, generator: false}, "
            "{name: gan, ramp_steps: 2}]",
        ],
    )
    run_training(recipe, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    trained = {r["step"]: ("loss/g" in r, "loss/d" in r) for r in rows if r["kind"] == "train"}
    assert trained == {1: (True, False), 2: (False, True), 3: (False, True),
                       4: (True, True), 5: (True, True), 6: (True, True)}
    # The gan phase ramps the adversarial weight in over its first 2 steps.
    task = TASKS.get("codec")(recipe, TaskContext())
    assert [task.weights_at(s)["adversarial"] for s in (2, 3, 4, 5)] == [1.0, 0.5, 1.0, 1.0]
    assert task.weights_at(3)["feature_matching"] == 1.0  # 2.0 x 0.5


def test_recipe_rejects_unknown_phase_loss_and_rate_mismatch() -> None:
    from soundry.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown loss 'mell'"):
        _task("schedule.phases=[{name: gan, weights: {mell: 1.0}}]")
    with pytest.raises(ConfigError, match="model.sample_rate"):
        _task("data.sample_rate=24000")
    with pytest.raises(ConfigError, match="too short for the largest STFT window"):
        _task("data.segment_seconds=0.005")
    with pytest.raises(ConfigError, match="neither .steps. nor .until. but is not the last"):
        _task("schedule.phases=[{name: a}, {name: b}]")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step tiny codec run on synthetic data, checkpointed."""
    from soundry.data.synth import synthesize
    from soundry.train.engine import run_training

    root = tmp_path_factory.mktemp("codec_run")
    synthesize(root / "train", "tones", 6, 0.6, 16000, seed=0)
    synthesize(root / "valid", "music", 2, 0.6, 16000, seed=1)
    recipe = load_recipe(
        recipes_dir() / "codec/tiny.yaml",
        [
            *SMALL,
            f"data.sources=[{{path: '{root / 'train'}'}}]",
            f"data.valid='{root / 'valid'}'",
            "data.valid_count=2",
            "data.valid_seconds=0.5",
            "train.max_steps=4",
            "train.valid_every=4",
            "train.checkpoint_every=2",
            "schedule.phases=[{name: warmup, steps: 2, discriminator: false, "
            "adversarial: false}, {name: gan}]",
        ],
    )
    run_training(recipe, root / "run")
    return root


def test_run_logs_codec_validation_metrics(trained_run: Path) -> None:
    import json

    rows = [json.loads(x) for x in (trained_run / "run/metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["kind"] == "valid"]
    assert valid, "no validation row"
    last = valid[-1]
    for key in ("valid/mel_distance", "valid/stft_distance", "valid/si_sdr", "valid/l1",
                "valid/perplexity/l0", "valid/usage/mean", "valid/bitrate_kbps",
                "valid/mel_distance@2"):
        assert key in last, key
    assert last["valid/bitrate_kbps"] == pytest.approx(50 * 4 * 5 / 1000)  # 50 Hz, 4 x 5 bits
    wavs = list((trained_run / "run/valid").rglob("*_out.wav"))
    assert wavs and all((w.with_suffix(".png")).is_file() for w in wavs)


def test_export_load_round_trip_gives_identical_outputs(trained_run: Path) -> None:
    import soundry
    from soundry.models.codec import build_codec
    from soundry.train.checkpoint import load_tensors
    from soundry.train.export import export_run, find_checkpoint

    out = trained_run / "export"
    export_run(trained_run / "run", out, checkpoint="last")
    model = soundry.load(str(out))
    recipe = load_recipe(trained_run / "run/config.yaml")
    ref = build_codec(recipe.model)
    ckpt = find_checkpoint(trained_run / "run", "last")
    ref.load_state_dict(load_tensors(ckpt / "generator.safetensors"))
    ref.eval()
    x = 0.3 * torch.randn(1, 1, 32000)  # 100 frames: one argmax tie stays within 99%
    with torch.no_grad():
        codes = model.encode(x)
        # folded, time-major export vs the weight-normed reference: other kernels, so codes
        # agree up to argmax ties and audio (from the same codes) up to fp32 rounding
        assert_codes_agree(codes, ref.encode(x))
        assert torch.allclose(model.decode_codes(codes), ref.decode_codes(codes), atol=1e-4)
        y = model(x).audio
    assert y.shape == x.shape
    from soundry.errors import SoundryError

    with pytest.raises(SoundryError, match="step_00000999"):
        export_run(trained_run / "run", trained_run / "e2", checkpoint="999")


def test_cli_encode_then_decode_equals_reconstruct(trained_run: Path) -> None:
    model = trained_run / "export"
    if not model.is_dir():
        from soundry.train.export import export_run

        export_run(trained_run / "run", model)
    src = trained_run / "input.wav"
    rng = np.random.default_rng(0)
    sf.write(src, (0.2 * rng.standard_normal(16000 * 2 + 123)).astype(np.float32), 16000)
    codes, dec, rec = trained_run / "x.npz", trained_run / "dec.wav", trained_run / "rec.wav"
    assert cli(["encode", str(model), str(src), str(codes), "--chunk-seconds", "0.5"]) == 0
    assert cli(["decode", str(model), str(codes), str(dec), "--chunk-seconds", "0.5"]) == 0
    assert cli(["reconstruct", str(model), str(src), str(rec), "--chunk-seconds", "0.5"]) == 0
    a, sr_a = sf.read(dec, dtype="float32")
    b, sr_b = sf.read(rec, dtype="float32")
    assert sr_a == sr_b == 16000
    assert a.shape == b.shape == (16000 * 2 + 123,)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # bf16 decoding: same codes, output close to fp32.
    rec16 = trained_run / "rec16.wav"
    assert cli(["reconstruct", str(model), str(src), str(rec16), "--chunk-seconds", "0.5",
                "--precision", "bf16"]) == 0
    c, _ = sf.read(rec16, dtype="float32")
    snr = 10 * np.log10(np.sum(b**2) / max(np.sum((b - c) ** 2), 1e-20))
    assert snr > 25.0, snr
    # Fewer levels: a valid, different file; too many: a clear error.
    assert cli(["encode", str(model), str(src), str(codes), "--levels", "2"]) == 0
    assert np.load(codes)["codes"].shape[1] == 2
    assert cli(["encode", str(model), str(src), str(codes), "--levels", "9"]) == 2


def test_cli_resamples_with_a_notice(trained_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = trained_run / "export"
    if not model.is_dir():
        from soundry.train.export import export_run

        export_run(trained_run / "run", model)
    src = trained_run / "input22k.wav"
    sf.write(src, np.zeros(22050, np.float32) + 0.01, 22050)
    with caplog.at_level("WARNING"):
        assert cli(["reconstruct", str(model), str(src), str(trained_run / "r22.wav")]) == 0
    assert "22050 Hz resampled" in caplog.text
    assert sf.info(str(trained_run / "r22.wav")).samplerate == 16000


@pytest.mark.slow
def test_tiny_codec_overfits_one_batch_through_the_codes_path(tmp_path: Path) -> None:
    """Reconstruction training on one fixed batch; scored by decode(encode(x)) in eval mode.

    Quantizer dropout is off, so the decoder learns to rely on every level and decoding
    from fewer levels must be worse. Untrained, the mel distance is about 9.
    """
    from soundry.data.synth import synthesize
    from soundry.eval.metrics import mel_distance

    synthesize(tmp_path, "music", 2, 0.5, 16000, seed=3)
    clips = [sf.read(f, dtype="float32")[0][:8000] for f in sorted(tmp_path.glob("*.wav"))]
    x = torch.from_numpy(np.stack(clips))[:, None]
    task = _task(
        "model.encoder_dim=8",
        "model.decoder_dim=64",
        "model.latent_dim=32",
        "model.quantizer.codebook_size=32",
        "model.quantizer.dropout=0.0",
        "schedule.phases=[{name: recon, discriminator: false, adversarial: false}]",
        "optim.generator.lr=0.006",
        "losses.mel.windows=[32, 64, 128, 256, 512, 1024, 2048]",
        "losses.mel.n_mels=[5, 10, 20, 40, 80, 160, 320]",
    )
    specs = {s.name: s for s in task.optimizers()}

    class Updater:
        def update(self, name: str, loss: torch.Tensor) -> bool:
            specs[name].optimizer.zero_grad(set_to_none=True)
            loss.backward()
            specs[name].optimizer.step()
            return True

    def score(levels: int) -> float:
        task.generator.eval()
        with torch.no_grad():
            codes = task.generator.encode(x)
            y = task.generator.decode_codes(codes[:, :levels])
        task.generator.train()
        return float(mel_distance(x, y, 16000))

    before = score(4)
    for step in range(120):
        task.train_step({"audio": x}, step, Updater())
    after = {n: score(n) for n in (1, 2, 4)}
    assert before > 7.0
    assert after[4] < 4.5, after
    assert after[4] < after[1], after
