"""The one-shot VAE: shapes (mono, stereo), its KL and beta ramp, its recipe checks, the data
it reads (peak normalisation, start jitter, validation from file starts), the posterior
collapse monitor, and the whole user path: train, export, load, sample, interpolate,
encode / decode with codec-only options refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundry.cli import main
from soundry.config import validate
from soundry.errors import ConfigError
from soundry.models.vae import VAEModelConfig, build_vae, slerp
from soundry.train.tasks.vae import KLConfig, VAERecipe, VAETask

NET = {"strides": [2, 4], "encoder_dim": 4, "latent_dim": 8, "decoder_dim": 16}
SMALL = {"sample_rate": 8000, "seconds": 0.25, "latent_dim": 8, "net": NET,
         "posterior_flow": {"layers": 2, "hidden": 16},
         "prior_flow": {"layers": 2, "hidden": 16, "actnorm": False, "standardize": True}}


def small_vae(**extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vae(validate(VAEModelConfig, {**SMALL, **extra}, source="test"))


@pytest.mark.parametrize("extra", [
    {},
    {"channels": 2},
    {"channels": 2, "stereo": "midside", "modulation": "adain", "pooling": "mean",
     "envelope": "latent"},
    {"modulation": "film", "variational": False, "net": {**NET, "upsample": "resize"}},
])
def test_shapes_mono_and_stereo(extra: dict) -> None:
    vae = small_vae(**extra)
    c = vae.channels
    x = torch.randn(3, c, 1900) * 0.1  # shorter than the model's length: padded
    out = vae.train()(x)
    assert out.audio.shape == (3, c, 1900) and out.z.shape == (3, 8)
    assert out.audio.abs().max() <= 1.0
    out.audio.square().mean().backward()
    vae.eval()
    z = vae.encode(torch.randn(2, c, 5000))  # longer: trimmed to the start
    assert z.shape == (2, 8)
    assert vae.decode(z).shape == (2, c, vae.n_samples)
    audio, zs = vae.sample(4, seed=1)
    assert audio.shape == (4, c, vae.n_samples) and zs.shape == (4, 8)
    with pytest.raises(Exception, match="channel"):
        vae.encode(torch.randn(1, 3 - c, 2000))


def test_initial_latent_spreads_over_sounds_and_decoder_starts_from_its_seed() -> None:
    """Against the collapse seen without these: frames batch-normalised before pooling give
    posterior means that differ between sounds by far more than the (uniform) initial
    sampling noise, and the decoder starts independent of z (zero-initialised unpooling and
    FiLM), so z's spread is not noise it must first learn to suppress."""
    vae = small_vae(modulation="film").train()
    x = torch.randn(6, 1, 2000) * torch.logspace(-3, -1, 6)[:, None, None]  # quiet to loud
    h = vae.features(x)
    mean, std = vae.posterior(h)
    assert float(mean.std(dim=0).mean()) > 10 * float(std.mean())
    torch.testing.assert_close(std, torch.full_like(std, vae.config.posterior_init_std))
    z = torch.randn(3, vae.latent_dim) * 3
    y = vae.eval().decode(z)
    torch.testing.assert_close(y[0], y[1])
    torch.testing.assert_close(y[0], y[2])
    plain = small_vae(modulation="film", feature_norm="none").train()
    m0, s0 = plain.posterior(plain.features(x))
    assert float(m0.std(dim=0).mean()) < float(mean.std(dim=0).mean()) / 10


@pytest.mark.parametrize("kind", ["latent", "decoder"])
def test_envelope_starts_flat_and_learns_a_decay(kind: str) -> None:
    """`envelope` scales the decoder's waveform by exp(log-gain per frame): at
    initialisation the gain is 1 everywhere (the same output as without it), a 40 dB decay
    is reachable in a few steps, and an outlying latent's gain stays bounded."""
    plain, env = small_vae(), small_vae(envelope=kind)
    env.load_state_dict(plain.state_dict(), strict=False)
    z = torch.randn(3, env.latent_dim)
    torch.testing.assert_close(env.eval().decode(z), plain.eval().decode(z))
    torch.testing.assert_close(env.gain(z), torch.ones(3, 1, env.n_samples))
    target = torch.logspace(0, -2, env.n_samples)
    # "decoder" reads the decoder's first features: their seed (unpool) learns too
    params = [*env.envelope.parameters(), *(env.unpool.parameters() if kind == "decoder" else [])]
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = (env.gain(z).log() - target.log()).abs().mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        gain = env.gain(z)
        assert float(gain[:, 0, -100:].mean()) < 0.03 < 0.7 < float(gain[:, 0, :100].mean())
        assert float(env.gain(z * 1e4).max()) <= float(np.exp(4.0)) * (1 + 1e-5)
        assert env.decode(z * 1e4).isfinite().all()


def test_midside_codes_mid_and_side() -> None:
    vae = small_vae(channels=2, stereo="midside")
    x = torch.tensor([[[0.5, 0.1], [0.1, -0.3]]])
    coded = vae._to_coded(x)
    torch.testing.assert_close(coded, torch.tensor([[[0.3, -0.1], [0.2, 0.2]]]))
    torch.testing.assert_close(vae._from_coded(coded), x)


def test_sampling_is_seeded_and_interpolation_ends_are_the_reconstructions() -> None:
    vae = small_vae().eval()
    a, za = vae.sample(3, seed=5)
    b, zb = vae.sample(3, seed=5)
    _, zc = vae.sample(3, seed=6)
    assert torch.equal(a, b) and torch.equal(za, zb) and not torch.allclose(za, zc)
    s1, s2 = torch.randn(1, 2000) * 0.2, torch.randn(1, 2000) * 0.2
    for path in ("linear", "slerp"):
        sounds, z = vae.interpolate(s1, s2, steps=9, path=path)
        assert sounds.shape == (9, 1, vae.n_samples)  # both ends counted
        ends = vae.encode(torch.stack([s1, s2]))
        torch.testing.assert_close(z[0], ends[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z[-1], ends[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sounds[0], vae.decode(ends[:1])[0], atol=1e-5, rtol=1e-4)


def test_sampling_defaults_to_the_models_temperature() -> None:
    vae = small_vae(sample_temperature=1.5).eval()
    default, z = vae.sample(4, seed=1)
    wide, zw = vae.sample(4, 1.5, seed=1)
    _, z1 = vae.sample(4, 1.0, seed=1)
    assert torch.equal(z, zw) and torch.equal(default, wide) and not torch.allclose(z, z1)


def test_prior_flow_has_an_optimizer_of_its_own() -> None:
    recipe = validate(VAERecipe, _recipe(), source="t")
    task = VAETask(recipe, _ctx())
    specs = {s.name: s for s in task.optimizers()}
    assert set(specs) == {"discriminator", "generator", "prior"}
    owned = {n: {id(p) for g in s.optimizer.param_groups for p in g["params"]}
             for n, s in specs.items()}
    prior = {id(p) for p in task.generator.prior.parameters()}
    rest = {id(p) for n, p in task.generator.named_parameters() if not n.startswith("prior.")}
    assert owned["prior"] == prior and owned["generator"] == rest and prior and rest
    joint = validate(VAERecipe, _recipe({"model": {**SMALL, "prior_training": "joint"}}),
                     source="t")
    assert {s.name for s in VAETask(joint, _ctx()).optimizers()} == {"discriminator",
                                                                     "generator"}


def test_prior_learns_from_a_queue_of_recent_latents() -> None:
    recipe = validate(VAERecipe, _recipe({"losses": {"prior_nll": {"queue": 5}}}), source="t")
    task = VAETask(recipe, _ctx())
    steps = [torch.full((2, 3), float(i)) for i in range(4)]
    seen = [task.prior_batch(z) for z in steps]
    # this step's latents first, then the previous steps', capped at 5 rows
    assert [b.shape[0] for b in seen] == [2, 4, 5, 5]
    assert seen[3][:, 0].tolist() == [3.0, 3.0, 2.0, 2.0, 1.0]
    assert not seen[3].requires_grad
    # a batch larger than the queue is used whole; latents of another width restart it
    assert task.prior_batch(torch.zeros(7, 3)).shape[0] == 7
    assert task.prior_batch(torch.zeros(2, 4)).shape == (2, 4)


def test_slerp_keeps_the_arc() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    mid = slerp(a, b, torch.tensor([[0.5]]))[0]
    assert float(mid.norm()) == pytest.approx(1.5)
    assert float(mid[0]) == pytest.approx(float(mid[1]))  # on the bisector


def test_kl_closed_form_without_flows_and_estimate_with_them() -> None:
    vae = small_vae(posterior_flow={"layers": 0}, prior_flow={"layers": 0}).train()
    assert vae.exact_kl
    out = vae(torch.randn(4, 1, 2000) * 0.1)
    per_dim = 0.5 * (out.mean ** 2 + out.std ** 2 - 1) - torch.log(out.std)
    torch.testing.assert_close(out.kl(exact=True), per_dim.sum(-1))
    # with flows: log q0 - log det - log p(z_K), whose mean over draws nears the KL
    flowed = small_vae().train()
    assert not flowed.exact_kl
    o = flowed(torch.randn(2, 1, 2000) * 0.1)
    from soundry.nn.flows import standard_normal_log_prob

    manual = o.log_q0 - o.log_det - standard_normal_log_prob(o.z)  # detached prior: N(0, I)
    torch.testing.assert_close(o.kl(exact=False), manual)
    joint = small_vae(prior_training="joint").train()
    assert joint.prior_in_kl and not joint.prior_fitted_apart
    j = joint(torch.randn(2, 1, 2000) * 0.1)
    torch.testing.assert_close(j.kl(exact=False), j.log_q0 - j.log_det - joint.prior_log_prob(j.z))


def test_free_bits_floor_each_dimension() -> None:
    recipe = validate(VAERecipe, _recipe({"losses": {"kl": {"free_bits": 0.5}}}), source="t")
    task = VAETask(recipe, _ctx())
    task.generator = small_vae(posterior_flow={"layers": 0}, prior_flow={"layers": 0})
    out = task.generator.train()(torch.randn(4, 1, 2000) * 0.1)
    per_dim = out.kl_per_dim().mean(0).detach()
    assert float(task.kl_loss(out).detach()) == pytest.approx(float(per_dim.clamp(min=0.5).sum()),
                                                     rel=1e-6)


def test_beta_rises_on_a_log_scale() -> None:
    kl = KLConfig(weight=1e-2, start=1e-6, warmup_steps=100)
    assert kl.beta(0) == pytest.approx(1e-6)
    assert kl.beta(50) == pytest.approx(1e-4)  # geometric midpoint
    assert kl.beta(100) == kl.beta(10_000) == pytest.approx(1e-2)
    assert KLConfig(weight=0.0).beta(3) == 0.0


def _recipe(extra: dict | None = None) -> dict:
    base = {
        "task": "vae",
        "data": {"mode": "oneshot", "sample_rate": 8000, "segment_seconds": 0.25,
                 "valid_seconds": 0.25, "batch_size": 2, "num_workers": 0, "valid_count": 4,
                 "loudness": {"target_lufs": None, "min_lufs": None, "peak": 0.9}},
        "model": SMALL,
        "discriminator": {"members": [{"type": "mpd", "periods": [2, 3], "channels": [4, 8]},
                                      {"type": "mrd", "windows": [256, 128], "channels": 4}]},
        "losses": {"mel": {"windows": [32, 64, 128, 256], "n_mels": [5, 10, 20, 40]},
                   "kl": {"warmup_steps": 4}},
        "schedule": {"phases": [
            {"name": "warmup", "steps": 3, "discriminator": False, "adversarial": False},
            {"name": "gan", "ramp_steps": 2}]},
        "valid": {"samples": 4, "reference_items": 6, "audio_clips": 2},
    }
    for key, value in (extra or {}).items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def _ctx():  # noqa: ANN202
    from soundry.train.task import TaskContext

    return TaskContext()


@pytest.mark.parametrize(("extra", "match"), [
    ({"data": {"mode": "clips"}}, "oneshot"),
    ({"data": {"segment_seconds": 0.5}}, "model.seconds"),
    ({"model": {"sample_rate": 16000}}, "must agree"),
    ({"schedule": {"phases": [{"name": "w", "steps": 2, "weights": {"commitment": 1.0}}]}},
     "commitment"),
    ({"model": {"net": {**NET, "quantizer": {"type": "rvq"}}}}, "own bottleneck"),
    ({"data": {"loudness": {"target_lufs": -16.0, "peak": 0.9}}}, "peak"),
])
def test_recipe_mistakes_are_clear_errors(extra: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(VAERecipe, _recipe(extra), source="test")


def _drums(folder: Path, count: int, seed: int, jitter: bool = False) -> Path:
    """Decaying noise bursts at 8 kHz, 0.3 s, peaks well under 0.9, onsets at 0."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    t = np.arange(2400) / 8000
    for i in range(count):
        tone = np.sin(2 * np.pi * rng.uniform(60, 300) * t)
        noise = rng.normal(0, 1, t.size) * rng.uniform(0, 1)
        x = (0.4 * tone + 0.2 * noise) * np.exp(-t * rng.uniform(8, 40)) * rng.uniform(0.1, 0.5)
        sf.write(folder / f"hit_{i:02d}.wav", x.astype(np.float32), 8000, "FLOAT")
    return folder


def test_oneshot_data_peak_normalised_from_the_start(tmp_path: Path) -> None:
    from soundry.data.config import DataConfig
    from soundry.data.datasets import OneShotDataset
    from soundry.data.loader import build_valid_items, load_sources

    train = _drums(tmp_path / "train", 6, 0)
    valid = _drums(tmp_path / "valid", 3, 1)
    cfg = validate(DataConfig, {**_recipe()["data"], "sources": [{"path": str(train)}],
                                "valid": str(valid)}, source="t")
    items = build_valid_items(cfg)
    for name, clip in items:
        assert float(np.abs(clip).max()) == pytest.approx(0.9, abs=1e-4)
        raw, _ = sf.read(valid / f"{name[3:]}.wav", dtype="float32")
        # the start of the file, not a window centred in it
        np.testing.assert_allclose(clip[0, :100] / 0.9 * np.abs(raw).max(), raw[:100],
                                   atol=1e-5)
    jit = validate(DataConfig, {**cfg.model_dump(), "start_jitter_seconds": 0.01}, source="t")
    ds = OneShotDataset(load_sources(jit).train, jit, seed=0)
    offsets = {ds[(0, i, 0, i % 6)]["offset"] for i in range(30)}
    assert len(offsets) > 3 and max(offsets) <= 80
    with pytest.raises(ConfigError, match="oneshot"):
        validate(DataConfig, {"start_jitter_seconds": 0.01}, source="t")


def test_posterior_collapse_monitor() -> None:
    from soundry.health.config import PosteriorCollapseConfig
    from soundry.health.output_monitors import PosteriorCollapse

    mon = PosteriorCollapse(PosteriorCollapseConfig(after_step=100))
    mon.on_valid(50, {"valid/active_units": 0.0, "valid/latent_dim": 128.0}, {}, 0)
    assert not mon.pending  # during the warm-up
    mon.on_valid(300, {"valid/active_units": 12.0, "valid/latent_dim": 128.0}, {}, 0)
    assert not mon.pending
    mon.on_valid(600, {"valid/active_units": 0.0, "valid/latent_dim": 128.0}, {}, 0)
    assert [f.severity for f in mon.pending] == ["error"]
    assert "posterior collapse" in mon.pending[0].message


def test_train_export_sample_interpolate_encode_decode(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    import yaml

    train = _drums(tmp_path / "train", 8, 0)
    valid = _drums(tmp_path / "valid", 4, 1)
    recipe = tmp_path / "vae.yaml"
    recipe.write_text(yaml.safe_dump(_recipe()))
    run, exp = tmp_path / "run", tmp_path / "exp"
    assert main(["train", str(recipe), "--data", str(train), "--valid", str(valid), "--out",
                 str(run), "--threads", "1", "train.max_steps=6", "train.valid_every=6",
                 "train.checkpoint_every=6", "train.progress=false", "train.ema=null"]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid_row = next(m for m in metrics if "valid/mel_distance" in m)
    for key in ("valid/active_units", "valid/kl/total", "valid/prior/nll_per_dim",
                "valid/samples/diversity", "valid/data/diversity", "valid/samples/nearest_median",
                "valid/flow/log_det", "valid/samples/frechet_t1", "valid/samples/frechet_t1.5"):
        assert np.isfinite(valid_row[key]), key
    assert any("loss/prior_nll" in m and "grad_norm/prior" in m for m in metrics)
    step_dir = sorted((run / "valid").iterdir())[-1]
    for name in ("prior_00.wav", "prior_strip.wav", "prior_strip.png", "interp_strip.wav"):
        assert (step_dir / name).is_file(), name
    strip, sr = sf.read(step_dir / "interp_strip.wav")
    assert sr == 8000 and len(strip) > 9 * 2000

    assert main(["export", str(run), str(exp)]) == 0
    import soundry

    model = soundry.load(str(exp))
    assert all(hasattr(model, m) for m in ("encode", "decode", "sample", "interpolate"))

    assert main(["sample", str(exp), "--count", "3", "--out", str(tmp_path / "s"),
                 "--seed", "2", "--temperature", "0.8"]) == 0
    listing = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert [s["seed"] for s in listing["samples"]] == [2, 3, 4]
    again = model.sample(1, 0.8, seed=3)[0][0, 0].numpy()
    got, _ = sf.read(tmp_path / "s" / "sample_001.wav", dtype="float32")
    np.testing.assert_allclose(got, again, atol=1 / 16000)  # 16-bit WAV

    a, b = valid / "hit_00.wav", valid / "hit_01.wav"
    assert main(["interpolate", str(exp), str(a), str(b), "--steps", "5", "--out",
                 str(tmp_path / "i"), "--path", "slerp"]) == 0
    steps = json.loads((tmp_path / "i" / "interpolation.json").read_text())["steps"]
    assert [s["t"] for s in steps] == [0.0, 0.25, 0.5, 0.75, 1.0]

    lat = tmp_path / "lat.npz"
    assert main(["encode", str(exp), str(a), str(lat)]) == 0
    with np.load(lat) as data:
        assert data["latents"].shape == (1, 8)
    assert main(["decode", str(exp), str(lat), str(tmp_path / "dec.wav")]) == 0
    out, _ = sf.read(tmp_path / "dec.wav", dtype="float32")
    assert out.shape == (model.n_samples,)
    capsys.readouterr()
    assert main(["encode", str(exp), str(a), str(lat), "--levels", "2"]) == 2
    assert "codec-only" in capsys.readouterr().err
    assert main(["decode", str(exp), str(lat), str(tmp_path / "x.wav"), "--precision",
                 "bf16"]) == 2


def test_generation_scores_and_verdict(tmp_path: Path) -> None:
    from soundry.eval.generation import noise_bursts, score_vae, vae_verdict

    vae = small_vae().eval()
    rng = np.random.default_rng(0)
    t = torch.arange(vae.n_samples) / 8000
    def hits(n: int) -> torch.Tensor:  # noqa: E306
        return torch.stack([torch.sin(2 * np.pi * float(rng.uniform(80, 400)) * t)[None]
                            * torch.exp(-t * float(rng.uniform(5, 30))) * 0.8
                            for _ in range(n)]).float()
    train, held = hits(12), hits(6)
    s = score_vae(vae, train, held, n_samples=6, pairs=2)
    assert s["silent"] >= 0 and s["interpolation"]["pairs"] == 2
    assert s["interpolation"]["end_to_recon_max"] == pytest.approx(0.0, abs=1e-6)
    assert set(s["frechet"]) == {"samples", "noise_bursts", "decoder_normal", "train"}
    assert s["frechet"]["train"] < s["frechet"]["noise_bursts"]  # real sounds are nearer
    ok, reasons, _ = vae_verdict(s)
    assert ok == (not reasons)
    # each criterion bites
    good = {**s, "silent": 0, "copies": 0, "in_range_share": 1.0,
            "frechet": {"samples": 1.0, "noise_bursts": 2.0, "decoder_normal": 2.0, "train": 0},
            "diversity_samples": 1.0, "diversity_train": 1.0,
            "nll_per_dim": {"prior": 0.5, "normal": 1.0},
            "interpolation": {"step_ratio_max": 2.0, "end_to_recon_max": 0.0, "pairs": 2},
            "recon_mel_median": 1.0}
    assert vae_verdict(good)[0]
    for bad in ({"silent": 2}, {"copies": 1}, {"in_range_share": 0.5},
                {"diversity_samples": 0.4}, {"nll_per_dim": {"prior": 0.95, "normal": 1.0}},
                {"interpolation": {"step_ratio_max": 4.0, "end_to_recon_max": 0.0}}):
        assert not vae_verdict({**good, **bad})[0], bad
    env = noise_bursts(held)
    assert env.shape == held.shape and float(env[..., -100:].abs().max()) < 0.2


def _train_small(tmp_path: Path) -> tuple[dict, float, list[dict]]:
    """400 reconstruction steps of the small VAE on 96 hits: (last validation row, the
    untrained model's held-out mel distance, health findings)."""
    import yaml

    from soundry.eval.metrics import mel_distance

    train = _drums(tmp_path / "train", 96, 0)
    valid = _drums(tmp_path / "valid", 8, 1)
    recipe = _recipe({"data": {"batch_size": 8}, "losses": {"kl": {"warmup_steps": 150}},
                      "schedule": {"phases": [{"name": "recon", "discriminator": False,
                                               "adversarial": False}]},
                      "optim": {"generator": {"type": "adamw", "lr": 2e-3}}})
    (tmp_path / "vae.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "vae.yaml"), "--data", str(train), "--valid",
                 str(valid), "--out", str(run), "--threads", "1", "train.max_steps=400",
                 "train.valid_every=400", "train.checkpoint_every=400", "train.progress=false",
                 "train.ema=null", "health.posterior_collapse.after_step=0"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "valid/mel_distance" in r][-1]
    untrained = small_vae().eval()
    held = torch.stack([torch.from_numpy(sf.read(p, dtype="float32")[0][None, :2000])
                        for p in sorted(valid.glob("*.wav"))])
    held = held / held.abs().amax(dim=(1, 2), keepdim=True) * 0.9
    with torch.no_grad():
        base = float(np.mean([mel_distance(x, y, 8000) for x, y in
                              zip(held, untrained(held).audio, strict=True)]))
    health = [json.loads(x) for x in (run / "health.jsonl").read_text().splitlines()] \
        if (run / "health.jsonl").is_file() else []
    return last, base, health


@pytest.mark.slow
def test_vae_reconstruction_learns_and_a_collapse_is_reported(tmp_path: Path) -> None:
    last, base, health = _train_small(tmp_path)
    assert last["valid/mel_distance"] < 0.7 * base, (last["valid/mel_distance"], base)
    collapsed = last["valid/active_units"] == 0
    flagged = any(f["monitor"] == "posterior_collapse" and f["severity"] == "error"
                  for f in health)
    assert collapsed == flagged  # a collapse never goes unreported, and only a collapse


@pytest.mark.slow
def test_vae_latent_becomes_active(tmp_path: Path) -> None:
    """The global latent carries the sound (batch-normalised frames, zero-initialised
    unpooling): active units, and prior samples that differ from each other."""
    last, _, health = _train_small(tmp_path)
    assert last["valid/active_units"] >= last["valid/latent_dim"] / 4, last
    assert last["valid/samples/diversity"] > 0.5 * last["valid/data/diversity"], last
    assert not any(f["monitor"] == "posterior_collapse" for f in health)
