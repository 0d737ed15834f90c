"""File-level VAE use: sound file <-> latent (.npz) <-> sound file, prior samples and
interpolations written as WAVs with a JSON listing.

A latents `.npz` holds `latents` (float32 [N, D]: one row per sound) and a JSON `meta`
string (kind "vae", sample rate, channels, latent size, length in samples, source file), so
`decode` needs only the model and the file. Sounds longer than the model's length are
trimmed to their start (a one-shot VAE codes `seconds` of sound), with a notice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from soundry import __version__
from soundry.errors import SoundryError

log = logging.getLogger("soundry.vae")


def load_vae(path: Path | str) -> Any:
    """Load an exported VAE (eval mode); a clear error if the export is another kind."""
    from soundry.models.export import load_export
    from soundry.models.vae import OneShotVAE

    model = load_export(path)
    if not isinstance(model, OneShotVAE):
        raise SoundryError(f"{path} is not a VAE export (sample and interpolate need one)")
    return model


def read_sound(vae: Any, path: Path) -> torch.Tensor:
    """A sound file as [C, n_samples] at the VAE's rate and channels (start kept)."""
    from soundry.models.codec_io import read_for_codec

    audio, _ = read_for_codec(vae, path)  # resamples / converts channels with a notice
    if audio.shape[-1] > vae.n_samples:
        log.info("%s: %.2f s trimmed to the model's %.2f s", path,
                 audio.shape[-1] / vae.sample_rate, vae.n_samples / vae.sample_rate)
    return vae.fit_length(torch.from_numpy(audio)[None])[0]


def _meta(vae: Any, **extra: Any) -> dict[str, Any]:
    return {"kind": "vae", "soundry_version": __version__, "sample_rate": vae.sample_rate,
            "channels": vae.channels, "latent_dim": vae.latent_dim, "length": vae.n_samples,
            **extra}


def encode_file(vae: Any, src: Path, dst: Path) -> dict[str, Any]:
    """Encode one sound to an .npz of its latent [1, D]; returns the metadata written."""
    z = vae.encode(read_sound(vae, src)[None]).float().cpu().numpy()
    meta = _meta(vae, source=str(src))
    save_latents(dst, z, meta)
    return meta


def save_latents(dst: Path, latents: np.ndarray, meta: dict[str, Any]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.npz")
    np.savez(tmp, latents=latents.astype(np.float32), meta=np.array(json.dumps(meta)))
    tmp.replace(dst)


def read_latents(path: Path, vae: Any) -> np.ndarray:
    """latents [N, D] from an .npz written by `encode_file`, checked against `vae`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "latents" not in data:
                raise SoundryError(f"{path} holds codec codes, not VAE latents; decode it "
                                   "with the codec that made it")
            z = data["latents"]
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
    except (OSError, ValueError) as exc:
        raise SoundryError(f"{path} is not a soundry latents file ({exc})") from None
    z = z.reshape(1, -1) if z.ndim == 1 else z
    if z.ndim != 2 or z.shape[1] != vae.latent_dim:
        raise SoundryError(f"{path} holds latents of shape {tuple(z.shape)}; this VAE takes "
                           f"[N, {vae.latent_dim}]")
    if meta.get("sample_rate", vae.sample_rate) != vae.sample_rate:
        raise SoundryError(f"{path} was encoded by a {meta['sample_rate']} Hz VAE; this one "
                           f"is {vae.sample_rate} Hz")
    return z


@torch.no_grad()
def decode_file(vae: Any, src: Path, dst: Path) -> list[Path]:
    """Decode an .npz of latents: one sound per row (dst, or dst_<i> for several rows)."""
    from soundry.audio.io import write_audio

    z = torch.from_numpy(read_latents(src, vae))
    audio = vae.decode(z.to(next(vae.parameters()).device)).float().cpu().numpy()
    paths = [dst] if len(audio) == 1 else [
        dst.with_name(f"{dst.stem}_{i:03d}{dst.suffix}") for i in range(len(audio))]
    for path, sound in zip(paths, audio, strict=True):
        write_audio(path, sound, vae.sample_rate)
    return paths


@torch.no_grad()
def reconstruct_file(vae: Any, src: Path, dst: Path) -> None:
    """Encode then decode one sound."""
    from soundry.audio.io import write_audio

    x = read_sound(vae, src)[None]
    y = vae.decode(vae.encode(x))
    write_audio(dst, y[0].float().cpu().numpy(), vae.sample_rate)


def write_samples(vae: Any, out: Path, count: int, temperature: float | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """`count` prior samples as out/sample_<i>.wav plus out/samples.json (latents, seed,
    temperature; None: the model's `sample_temperature`). Sample i is the same whatever
    `count` when drawn with its own seed (seed + i), so a listing can be extended."""
    from soundry.audio.io import write_audio

    if count < 1:
        raise SoundryError("--count must be at least 1")
    if temperature is None:
        temperature = float(vae.config.sample_temperature)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        audio, z = vae.sample(1, temperature, seed=seed + i)
        name = f"sample_{i:03d}.wav"
        write_audio(out / name, audio[0].float().cpu().numpy(), vae.sample_rate)
        items.append({"file": name, "seed": seed + i, "latent": z[0].cpu().tolist()})
    listing = {**_meta(vae), "temperature": temperature, "seed": seed, "samples": items}
    (out / "samples.json").write_text(json.dumps(listing) + "\n")
    return listing


def write_interpolation(vae: Any, a: Path, b: Path, out: Path, steps: int = 9,
                        path: Literal["linear", "slerp"] = "linear") -> dict[str, Any]:
    """The walk from sound a to sound b in `steps` points (ends included) as
    out/step_<i>.wav plus out/interpolation.json (latents, fractions)."""
    from soundry.audio.io import write_audio

    sounds, z = vae.interpolate(read_sound(vae, a), read_sound(vae, b), steps, path)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (sound, latent) in enumerate(zip(sounds, z, strict=True)):
        name = f"step_{i:02d}.wav"
        write_audio(out / name, sound.float().cpu().numpy(), vae.sample_rate)
        items.append({"file": name, "t": i / (steps - 1), "latent": latent.cpu().tolist()})
    listing = {**_meta(vae), "a": str(a), "b": str(b), "path": path, "steps": items}
    (out / "interpolation.json").write_text(json.dumps(listing) + "\n")
    return listing
