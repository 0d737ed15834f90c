"""Training-health monitors: each planted fault is flagged by its monitor (by id) within about
100 steps, with worker processes loading the data; clean runs raise no error-level finding.
Every test uses the monitors' default thresholds."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from soundry.data.tokens import TokenShardWriter
from soundry.health import MONITORS, HealthConfig
from soundry.health.doctor import diagnose
from soundry.paths import recipes_dir
from soundry.train.engine import run_training
from soundry.train.recipes import load_recipe, recipe_from_dict

SMALL = [
    "model.encoder_dim=4",
    "model.decoder_dim=16",
    "model.latent_dim=16",
    "model.quantizer={type: fsq, levels: [4, 4], n_codebooks: 3, dropout: 0.5, bypass: 0.5}",
    "discriminator.members=[{type: mpd, periods: [2, 3], channels: [4, 8, 8]}, "
    "{type: mrd, windows: [256, 128], channels: 4}]",
    "losses.mel.windows=[32, 64, 128, 256]",
    "losses.mel.n_mels=[5, 10, 20, 40]",
    "data.batch_size=4",
    "data.segment_seconds=0.1",
    "data.num_workers=2",
    "data.valid_count=2",
    "data.valid_seconds=0.25",
    "train.progress=false",
    "train.log_every=10",
    "train.checkpoint_every=1000",
    "valid.levels=[]",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def broadband(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise bursts and chirps: energy across the whole band, a different shape per file."""
    t = np.arange(n)
    x = 0.3 * rng.standard_normal(n) * (0.5 + 0.5 * np.sin(2 * np.pi * t / rng.uniform(800, 4000)))
    x += 0.3 * np.sin(2 * np.pi * rng.uniform(0.002, 0.05) * t * (1 + t / n))
    return (x / np.abs(x).max() * 0.7).astype(np.float32)


def write_files(folder, count: int = 12, seconds: float = 1.0, sr: int = 16000,
                transform=None, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        x = broadband(rng, int(seconds * sr))
        if transform is not None:
            x = transform(x, sr)
        sf.write(folder / f"f{i:02d}.wav", x, sr)


def codec_recipe(tmp_path, data=None, *overrides: str, valid=None):
    data = data or tmp_path / "train"
    if not data.exists():
        write_files(data)
    valid = valid or tmp_path / "valid"
    if not valid.exists():
        write_files(valid, count=2, seed=99)
    return load_recipe(recipes_dir() / "codec/tiny.yaml", [
        *SMALL, f"data.sources=[{{path: '{data}'}}]", f"data.valid='{valid}'", *overrides])


def findings(run_dir) -> list[dict]:
    path = run_dir / "health.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def flagged(run_dir, monitor: str, severity: str | None = None) -> list[dict]:
    return [f for f in findings(run_dir) if f["monitor"] == monitor
            and (severity is None or f["severity"] == severity)]


def errors(run_dir) -> list[dict]:
    return [f for f in findings(run_dir) if f["severity"] == "error"]


# ----------------------------------------------------------------------------- config


def test_every_monitor_has_a_recipe_section_and_strict_keys():
    cfg = HealthConfig()
    assert set(MONITORS) == {
        "crop_coverage", "sample_rate", "silence", "output_saturation", "codebook_collapse",
        "posterior_collapse",
        "loss_spike", "grad_spike", "discriminator_dominance", "eos_untrained",
        "valid_vs_generation"}
    for mid in MONITORS:
        assert getattr(cfg, mid).enabled
    with pytest.raises(Exception, match="threshold_typo"):
        HealthConfig.model_validate({"loss_spike": {"threshold_typo": 3}})
    with pytest.raises(Exception, match="not_a_monitor"):
        HealthConfig.model_validate({"not_a_monitor": {}})


# ----------------------------------------------------------------------------- data faults


def test_crop_coverage_flags_crops_stuck_at_offset_zero(tmp_path, monkeypatch):
    import soundry.data.datasets as datasets

    monkeypatch.setattr(datasets, "random_offset", lambda rng, total, frames, hop=1: 0)
    recipe = codec_recipe(tmp_path, None, "train.max_steps=60", "train.valid_every=1000")
    run_training(recipe, tmp_path / "run")
    hit = flagged(tmp_path / "run", "crop_coverage", "error")
    assert hit and hit[0]["step"] <= 100
    assert hit[0]["evidence"]["offset"] == 0


def test_sample_rate_flags_band_limited_48k_files(tmp_path):
    def band_limit(x, sr):  # nothing above 4 kHz
        spec = np.fft.rfft(x)
        spec[int(4000 / (sr / 2) * (len(spec) - 1)):] = 0
        return (np.fft.irfft(spec, len(x)) * 0.9).astype(np.float32)

    write_files(tmp_path / "train48", sr=48000, transform=band_limit)
    recipe = codec_recipe(tmp_path, tmp_path / "train48", "train.max_steps=30",
                          "train.valid_every=1000")
    run_training(recipe, tmp_path / "run")
    hit = flagged(tmp_path / "run", "sample_rate")
    assert [f["key"] for f in hit] == ["band_limited"]
    assert hit[0]["step"] <= 100


def test_sample_rate_flags_files_below_the_model_rate_and_mixed_rates(tmp_path):
    write_files(tmp_path / "mixed", count=6, sr=16000)
    write_files(tmp_path / "mixed" / "low", count=6, sr=8000, seed=1)
    recipe = codec_recipe(tmp_path, tmp_path / "mixed", "train.max_steps=2",
                          "train.valid_every=1000")
    run_training(recipe, tmp_path / "run")
    keys = {f["key"] for f in flagged(tmp_path / "run", "sample_rate")}
    assert {"lower_rate", "mixed_rates"} <= keys


def test_silence_flags_a_silent_dataset(tmp_path):
    write_files(tmp_path / "quiet", transform=lambda x, sr: (x * 1e-4).astype(np.float32))
    recipe = codec_recipe(tmp_path, tmp_path / "quiet", "train.max_steps=30",
                          "train.valid_every=1000", "data.loudness.target_lufs=null")
    run_training(recipe, tmp_path / "run")
    hit = flagged(tmp_path / "run", "silence", "error")
    assert hit and hit[0]["key"] == "silent" and hit[0]["step"] <= 100


def test_silence_flags_clipped_data(tmp_path):
    write_files(tmp_path / "clipped", transform=lambda x, sr: np.clip(x * 4, -0.8, 0.8))
    recipe = codec_recipe(tmp_path, tmp_path / "clipped", "train.max_steps=30",
                          "train.valid_every=1000")
    run_training(recipe, tmp_path / "run")
    assert [f["key"] for f in flagged(tmp_path / "run", "silence")] == ["clipped"]


# ----------------------------------------------------------------------------- output faults


def test_output_saturation_flags_outputs_pinned_at_the_rail(tmp_path, monkeypatch):
    from soundry.models import codec as codec_mod

    real = codec_mod.Codec._decode_latent

    def pinned(self, latents):  # the decoder's output driven into the rail
        y = real(self, latents)
        return torch.tanh(y * 0 + 50.0 + y)

    monkeypatch.setattr(codec_mod.Codec, "_decode_latent", pinned)
    recipe = codec_recipe(tmp_path, None, "train.max_steps=50", "train.valid_every=50")
    run_training(recipe, tmp_path / "run")
    hit = flagged(tmp_path / "run", "output_saturation", "error")
    assert hit and "pinned" in hit[0]["message"]


def test_codebook_collapse_flags_a_constant_latent(tmp_path, monkeypatch):
    from soundry.models import codec as codec_mod

    real = codec_mod.Codec._encode_latent

    def constant(self, x):  # every frame the same latent: one code per level
        z = real(self, x)
        return z * 0 + 0.3

    monkeypatch.setattr(codec_mod.Codec, "_encode_latent", constant)
    recipe = codec_recipe(tmp_path, None, "train.max_steps=50", "train.valid_every=50")
    run_training(recipe, tmp_path / "run")
    hit = flagged(tmp_path / "run", "codebook_collapse", "error")
    assert hit and hit[0]["step"] == 50


# ----------------------------------------------------------------------------- optimisation


def test_loss_spike_flags_the_commitment_blow_up_of_a_mass_restart(tmp_path):
    """DAC's quantizer, tiny and from scratch: the first mass dead-code restart (step 10)
    makes the commitment loss jump by four orders of magnitude."""
    recipe = codec_recipe(tmp_path, None, "train.max_steps=40", "train.valid_every=1000",
                          "model.quantizer={type: rvq, n_codebooks: 4, codebook_size: 32, "
                          "init: data}")
    run_training(recipe, tmp_path / "run")
    hit = {f["key"]: f for f in flagged(tmp_path / "run", "loss_spike", "error")}
    assert "loss/commitment" in hit and hit["loss/commitment"]["since"] <= 100


def test_loss_spike_judges_a_signed_noisy_loss_against_its_spread():
    """A flow's NLL per sound changes sign from batch to batch (median ~0, values +-50): a
    value of 63 is noise, not a 400x jump; a jump to 5000 still is an error. A positive
    loss keeps the plain ratio to its median."""
    from soundry.health.train_monitors import LossSpike

    rng = np.random.default_rng(0)
    for key, base, noise, value, expected in (
            ("loss/prior_nll", 0.0, 25.0, 63.0, None),
            ("loss/prior_nll", 0.0, 25.0, 5000.0, "error"),
            ("loss/mel", 3.0, 0.1, 45.0, "warning"),
            ("loss/mel", 3.0, 0.1, 400.0, "error")):
        monitor = LossSpike(HealthConfig().loss_spike)
        for step in range(1, 65):
            monitor.on_scalars(step, {key: base + noise * rng.standard_normal()})
        assert monitor.check(64) == []
        monitor.on_scalars(65, {key: value})
        found = [f.severity for f in monitor.check(70) if f.key == key]
        assert found == ([expected] if expected else []), (key, value)


def test_grad_spike_flags_a_jump_far_above_the_running_median():
    """The rule itself, on a planted series (default thresholds): noise around 10, then one
    step at 60x (warning) and, separately, one at 2000x (error)."""
    from soundry.health.train_monitors import GradSpike

    rng = np.random.default_rng(0)
    for jump, severity in ((600.0, "warning"), (20000.0, "error")):
        monitor = GradSpike(HealthConfig().grad_spike)
        for step in range(1, 41):
            monitor.on_scalars(step, {"grad_norm/generator": 10 + rng.uniform(-2, 2)})
        assert monitor.check(40) == []
        monitor.on_scalars(41, {"grad_norm/generator": jump})
        (f,) = monitor.check(50)
        assert (f.monitor, f.key, f.severity, f.since) == ("grad_spike", "generator", severity, 41)


def test_grad_spike_flags_clipping_on_every_step(tmp_path):
    recipe = codec_recipe(tmp_path, None, "train.max_steps=60", "train.valid_every=1000",
                          "optim.generator.clip=0.001")
    run_training(recipe, tmp_path / "run")
    assert [f["key"] for f in flagged(tmp_path / "run", "grad_spike")] == ["generator:clipping"]


def test_discriminator_lr_x100_is_flagged_as_dominance(tmp_path):
    recipe = codec_recipe(tmp_path, None, "train.max_steps=200", "train.valid_every=1000",
                          "schedule.phases=[{name: gan}]", "optim.discriminator.lr=0.01")
    run_training(recipe, tmp_path / "run")
    hit = flagged(tmp_path / "run", "discriminator_dominance")
    assert hit and hit[0]["key"] == "dominates"


# ----------------------------------------------------------------------------- token LMs


def token_data(tmp_path, n_items: int = 12, frames: int = 30):
    meta = {"codec": {}, "levels": 2, "codebook_size": 16, "frame_rate": 10.0,
            "sample_rate": 8000, "channels": 1}
    writer = TokenShardWriter(tmp_path / "tokens", meta)
    rng = np.random.default_rng(0)
    for i in range(n_items):
        base = rng.integers(0, 16, (2, 4))
        codes = np.tile(base, (1, frames // 4 + 1))[:, :frames]  # learnable, item-specific
        writer.add(f"s{i}", [codes], [f"i{i}"], tags=[f"t{i % 3}"])
    writer.flush()
    return tmp_path / "tokens"


def lm_recipe(tokens, **train):
    return recipe_from_dict({
        "task": "lm",
        "model": {"levels": 2, "card": 16, "pattern": {"type": "delay"},
                  "transformer": {"dim": 32, "layers": 1, "heads": 2, "max_len": 64}},
        "tokens": {"path": str(tokens), "max_batch_size": 4, "window_seconds": 2.0,
                   "num_workers": 2, "valid_count": 3},
        "optim": {"lm": {"type": "adamw", "lr": 3e-3}},
        "valid": {"decode": False, "demo_count": 1, "temperatures": [0.0],
                  "demo_seconds": 1.0, "windows": 3},
        "train": {"max_steps": 60, "log_every": 10, "valid_every": 1000,
                  "checkpoint_every": 1000, "progress": False, **train},
    })


def test_eos_untrained_flags_a_loss_mask_without_eos(tmp_path, monkeypatch):
    from soundry.models.patterns import Pattern

    real = Pattern.build

    def no_eos(self, codes, lengths=None, ends=True):  # every window treated as unfinished
        if isinstance(ends, torch.Tensor):
            ends = torch.zeros_like(ends)
        return real(self, codes, lengths=lengths, ends=ends)

    monkeypatch.setattr(Pattern, "build", no_eos)
    run_training(lm_recipe(token_data(tmp_path)), tmp_path / "run")
    hit = flagged(tmp_path / "run", "eos_untrained", "error")
    assert hit and hit[0]["step"] <= 100


def test_clean_lm_run_sees_eos_and_stays_quiet(tmp_path):
    run_training(lm_recipe(token_data(tmp_path), valid_every=30), tmp_path / "run")
    assert not errors(tmp_path / "run")
    assert not flagged(tmp_path / "run", "eos_untrained")


def test_valid_vs_generation_flags_overfitting_with_moving_demos(tmp_path):
    rng = np.random.default_rng(3)
    meta = {"codec": {}, "levels": 2, "codebook_size": 16, "frame_rate": 10.0,
            "sample_rate": 8000, "channels": 1}
    writer = TokenShardWriter(tmp_path / "tokens", meta)
    for i in range(8):  # random codes: nothing generalises, so validation loss rises
        writer.add(f"s{i}", [rng.integers(0, 16, (2, 20))], [f"i{i}"], tags=["x"])
    writer.flush()
    recipe = lm_recipe(tmp_path / "tokens", max_steps=400, valid_every=40)
    recipe.model.transformer.dim = 64
    recipe.optim.lm.lr = 1e-2
    run_training(recipe, tmp_path / "run")
    assert flagged(tmp_path / "run", "valid_vs_generation", "warning")


# ----------------------------------------------------------------------------- clean runs


def test_clean_toy_run_is_quiet(tmp_path):
    recipe = load_recipe(recipes_dir() / "toy.yaml", ["train.progress=false"])
    run_training(recipe, tmp_path / "run")
    assert findings(tmp_path / "run") == []


# ----------------------------------------------------------------------------- the x100 case


def test_tiny_codec_with_both_lrs_x100_is_flagged_everywhere(tmp_path, caplog, capsys):
    """The deterministic way to provoke the collapse: at least two of the four monitors
    fire, in the console, in health.jsonl, by `soundry doctor` and in the report."""
    from soundry.cli import main

    recipe = load_recipe(recipes_dir() / "codec/tiny.yaml", [
        f"data.sources=[{{path: '{tmp_path / 'train'}'}}]", f"data.valid='{tmp_path / 'valid'}'",
        "optim.generator.lr=0.1", "optim.discriminator.lr=0.01", "train.max_steps=100",
        "train.valid_every=50", "train.checkpoint_every=50", "train.progress=false",
        "data.valid_count=2", "data.num_workers=2"])
    write_files(tmp_path / "train")
    write_files(tmp_path / "valid", count=2, seed=99)
    with caplog.at_level(logging.WARNING, logger="soundry.health"):
        run_training(recipe, tmp_path / "run")
    four = {"loss_spike", "grad_spike", "codebook_collapse", "output_saturation"}
    recorded = {f["monitor"] for f in findings(tmp_path / "run")} & four
    assert len(recorded) >= 2, findings(tmp_path / "run")
    console = {m for m in four if any(f"[{m}]" in r.getMessage() for r in caplog.records)}
    assert console == recorded
    doctored = {f.monitor for f in diagnose(tmp_path / "run")} & four
    assert recorded <= doctored
    capsys.readouterr()
    assert main(["doctor", str(tmp_path / "run")]) == (
        1 if any(f["severity"] == "error" for f in findings(tmp_path / "run")) else 0)
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    health_at = html.index('id="health"')
    assert health_at < html.index('id="overview"')
    for m in recorded:
        assert f"<code>{m}</code>" in html


def test_doctor_rechecks_a_run_offline_and_resumed_runs_keep_state(tmp_path, monkeypatch):
    import soundry.data.datasets as datasets

    monkeypatch.setattr(datasets, "random_offset", lambda rng, total, frames, hop=1: 0)
    recipe = codec_recipe(tmp_path, None, "train.max_steps=40", "train.valid_every=1000",
                          "train.checkpoint_every=20")
    run_training(recipe, tmp_path / "run")
    (tmp_path / "run" / "health.jsonl").unlink()  # the doctor decides from the saved state
    got = diagnose(tmp_path / "run")
    assert any(f.monitor == "crop_coverage" and f.severity == "error" for f in got)
    from soundry.cli import main

    assert main(["doctor", str(tmp_path / "run")]) == 1
    assert main(["doctor", str(tmp_path / "nothing")]) == 2


def test_monitors_can_be_switched_off_and_tuned(tmp_path, monkeypatch):
    import soundry.data.datasets as datasets

    monkeypatch.setattr(datasets, "random_offset", lambda rng, total, frames, hop=1: 0)
    recipe = codec_recipe(tmp_path, None, "train.max_steps=40", "train.valid_every=1000",
                          "health.crop_coverage.enabled=false")
    run_training(recipe, tmp_path / "run")
    assert not flagged(tmp_path / "run", "crop_coverage")
