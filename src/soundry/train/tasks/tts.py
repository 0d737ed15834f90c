"""TTS task (`task: tts`): a `TTSModel` on token shards of transcribed, multi-speaker speech.

A step takes whole utterances with a voice prompt from another clip of the same speaker
(`soundry.data.tts`), drops text and prompt together for `model.uncond_frac` of them, and
minimises the masked-token (`nar`) or next-step (`ar`) cross-entropy over every level,
weighted per level, plus the duration head's loss from `model.duration.start_step`.
`level_phases` can train one randomly chosen level per item first, then all levels.

Logged per step: token loss, duration loss and relative error, per-level loss and accuracy
(and the mean mask ratio for `nar`). Validation: the same losses on held-out utterances
(fixed masks), and demos: each held-out sentence spoken in its own (training) voice from a
prompt of another of that voice's clips, at temperature 0 and at `valid.temperature`,
decoded by the codec recorded in the token index, with the duration error and the
DTW mel-cepstral distortion against the codec's resynthesis of the true utterance.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from soundry.config import Strict
from soundry.data.config import DataConfig
from soundry.data.samplers import make_rng
from soundry.data.tokens import TokenIndex
from soundry.data.tts import (
    TTSDataConfig,
    build_tts_loader,
    collate_tts,
    prompt_window,
    speaker_pool,
    tts_split,
)
from soundry.errors import ConfigError, SoundryError
from soundry.models.tts import TTSConfig, TTSModel, tts_export_config
from soundry.train.config import AdamWConfig, OptimizerConfig, WarmupSchedule
from soundry.train.optim import build_spec
from soundry.train.recipe import RecipeBase
from soundry.train.registry import EXPORTERS, register_task
from soundry.train.sections import section
from soundry.train.task import OptimizerSpec, Task, TaskContext, Validation

log = logging.getLogger(__name__)


def _default_optimizer() -> AdamWConfig:
    return AdamWConfig(lr=5e-4, betas=(0.9, 0.98), weight_decay=0.01, clip=1.0,
                       schedule=WarmupSchedule(warmup_steps=200))


class TTSOptim(Strict):
    tts: OptimizerConfig = Field(default_factory=_default_optimizer)


class LevelPhase(Strict):
    """`levels: one`: each item's loss counts one level, drawn from its seed; `all`: every
    level. `steps`: how long the phase lasts (the last phase may leave it unset)."""

    name: str = "all"
    steps: int | None = Field(None, ge=1)
    levels: Literal["one", "all"] = "all"


class TTSValidConfig(Strict):
    """Validation: held-out losses and `demo_count` demos at temperature 0 and at
    `temperature`; unset sampling settings are the model's (`model.sampling`, NAR steps)."""

    demo_count: int = Field(4, ge=0)
    temperature: float | None = Field(None, ge=0)
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=1)
    decode: bool = True


class TTSRecipe(RecipeBase):
    """Recipe of `task: tts`; data comes from `tokens:` (no audio `data:` section)."""

    task: Literal["tts"] = "tts"
    data: DataConfig = Field(default_factory=DataConfig, exclude=True)
    model: TTSConfig = Field(default_factory=TTSConfig)
    tokens: TTSDataConfig = Field(default_factory=TTSDataConfig)
    optim: TTSOptim = Field(default_factory=TTSOptim)
    level_phases: list[LevelPhase] = Field(default_factory=lambda: [LevelPhase()])
    valid: TTSValidConfig = Field(default_factory=TTSValidConfig)

    @classmethod
    def data_flag_overrides(cls, data: list[str], valid: str | None) -> list[str]:
        """`soundry train --data DIR`: the token directory (tokens.path)."""
        if valid is not None:
            raise ConfigError("--valid: a TTS model validates on tokens.valid_count "
                              "utterances held out of its token directory")
        if len(data) > 1:
            raise ConfigError("--data was given more than once; a TTS model reads one token "
                              "directory (tokens.path)")
        # absolute: the run's config (and its export's codec record) must not depend on
        # the folder the run was started from
        return ["tokens.path=" + json.dumps(str(Path(data[0]).resolve()))] if data else []

    @field_validator("data", mode="before")
    @classmethod
    def _no_data_section(cls, value: Any) -> Any:
        if isinstance(value, dict) and not value:
            return {}
        raise ConfigError("task: tts reads token shards and has no data: section; set "
                          "tokens.path (or --data) to a directory made by `soundry tokenize`")

    @model_validator(mode="after")
    def _check_phases(self) -> TTSRecipe:
        if not self.level_phases:
            raise ValueError("level_phases needs at least one phase")
        for phase in self.level_phases[:-1]:
            if phase.steps is None:
                raise ValueError(f"level phase '{phase.name}' is not the last one and needs "
                                 "steps:")
        return self

    def level_mode(self, step: int) -> str:
        """'one' or 'all' at training step `step`."""
        start = 0
        for phase in self.level_phases:
            if phase.steps is None or step < start + phase.steps:
                return phase.levels
            start += phase.steps
        return self.level_phases[-1].levels


@register_task("tts")
class TTSTask(Task):
    """Text-to-speech over codec tokens, NAR (masked) or AR."""

    recipe_class = TTSRecipe

    def __init__(self, recipe: TTSRecipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        self.nets: dict[str, nn.Module] = {}
        self._index: TokenIndex | None = None
        self._codec: Any = None
        self._codec_failed = False
        self._refs: dict[str, np.ndarray] = {}

    @property
    def index(self) -> TokenIndex:
        if self._index is None:
            if not self.recipe.tokens.path:
                raise ConfigError("tokens.path is empty: point it at a directory made by "
                                  "`soundry tokenize`")
            self._index = TokenIndex.load(self.recipe.tokens.path)
            m = self.recipe.model
            if m.levels > self._index.levels:
                raise ConfigError(f"model.levels={m.levels}, but the tokens in "
                                  f"{self._index.root} have {self._index.levels} levels")
            if m.card != self._index.codebook_size:
                raise ConfigError(f"model.card={m.card}, but the tokens in {self._index.root} "
                                  f"have {self._index.codebook_size} codes per level")
        return self._index

    @property
    def model(self) -> TTSModel:
        return self.nets["tts"]  # type: ignore[return-value]

    def networks(self) -> dict[str, nn.Module]:
        if not self.nets:
            _ = self.index
            self.nets["tts"] = TTSModel(self.recipe.model)
        return self.nets

    def optimizers(self) -> list[OptimizerSpec]:
        return [build_spec("tts", self.recipe.optim.tts, {"tts": self.nets["tts"]},
                           self.recipe.train.max_steps)]

    def train_loader(self) -> Any:
        return build_tts_loader(self.recipe.tokens, self.recipe.seed, self.recipe.model.levels,
                                self.index, overfit=self.ctx.overfit, rank=self.ctx.rank,
                                world_size=self.ctx.world_size)

    def ema_networks(self) -> list[str]:
        return ["tts"]

    def fsdp_units(self) -> dict[str, list[nn.Module]]:
        return {"tts": list(self.model.transformer.blocks)}

    def fsdp_methods(self) -> dict[str, tuple[str, ...]]:
        return {"tts": ("prefill", "decode", "nar_logits", "predict_frames")}

    # -- training --------------------------------------------------------------------------

    def level_mask(self, seeds: list[int], mode: str) -> torch.Tensor | None:
        """[B, K] levels counted per item: None (all), or one drawn from each item's seed."""
        if mode == "all":
            return None
        levels = self.recipe.model.levels
        mask = torch.zeros(len(seeds), levels, dtype=torch.bool)
        for b, seed in enumerate(seeds):
            mask[b, random.Random(int(seed) + 3).randrange(levels)] = True
        return mask

    def _loss(self, batch: dict[str, Any], step: int, train: bool) -> Any:
        model = self.model
        device = next(model.parameters()).device
        codes, lengths = batch["codes"].to(device), batch["lengths"].to(device)
        cond = model.make_conditioning(batch["text"], batch["prompt"], batch["prompt_valid"],
                                       seeds=batch["seed"], train=train).to(device)
        # the engine numbers steps from 1; phases count completed steps from 0
        mode = self.recipe.level_mode(step - 1) if train else "all"
        level_mask = self.level_mask(batch["seed"], mode)
        use_duration = step >= self.recipe.model.duration.start_step
        if model.cfg.mode == "nar":
            return model.nar_loss(codes, lengths, cond, batch["seed"], level_mask, use_duration)
        return model.ar_loss(codes, lengths, cond, level_mask, use_duration,
                             seeds=batch["seed"] if train else None)

    def train_step(self, batch: dict[str, Any], step: int, updater: Any) -> dict[str, Any]:
        with section("tts/forward"):
            out = self._loss(batch, step, train=True)
        updater.update("tts", out.loss)
        logs: dict[str, Any] = {"loss/tts": out.token_loss, "loss/duration": out.duration_loss,
                                "duration/error": out.duration_error}
        if out.mask_ratio is not None:
            logs["mask/ratio"] = out.mask_ratio
        for k in range(len(out.level_loss)):
            logs[f"loss/level_{k}"] = out.level_loss[k]
            logs[f"acc/level_{k}"] = out.level_accuracy[k]
        return logs

    # -- validation ------------------------------------------------------------------------

    def _items(self, positions: list[int], seed: int) -> dict[str, Any]:
        """A batch of whole utterances with prompts from other clips of their speakers
        (training clips), drawn from fixed generators."""
        index, cfg = self.index, self.recipe.tokens
        levels = self.recipe.model.levels
        train, _ = tts_split(index, cfg)
        pool = speaker_pool(index, train)
        items = []
        for n, i in enumerate(positions):
            item = index.items[i]
            rng = make_rng(seed, n, 17)
            items.append({
                "codes": np.asarray(index.codes(i)[:levels], dtype=np.int64), "offset": 0,
                "frames": item.frames, "end": True, "text": item.text or "",
                "tags": list(item.tags), "speaker": item.speaker, "seed": n, "id": item.id,
                "prompt": prompt_window(index, pool, i, rng, cfg.prompt_seconds, levels),
            })
        return collate_tts(items)

    def _valid_positions(self) -> list[int]:
        if self.ctx.overfit:
            train, _ = tts_split(self.index, self.recipe.tokens)
            return train[: self.ctx.overfit]
        return tts_split(self.index, self.recipe.tokens)[1]

    def codec(self) -> Any:
        if self._codec is None and not self._codec_failed:
            from soundry.generate.tokenize import open_recorded_codec

            try:
                self._codec = open_recorded_codec(self.index.codec, base=self.index.root)
            except SoundryError as exc:
                log.warning("TTS demos are not decoded: %s", exc)
                self._codec_failed = True
        return self._codec

    @torch.no_grad()
    def validate(self, step: int) -> Validation:
        from soundry.eval.tts_metrics import dtw_mcd
        from soundry.generate.speak import speak

        model, cfg = self.model, self.recipe.valid
        positions = self._valid_positions()
        metrics: dict[str, float] = {}
        audio: dict[str, Any] = {}
        if not positions:
            return Validation(metrics=metrics)
        batch = self._items(positions, seed=self.recipe.seed)
        was_training = model.training
        model.eval()
        try:
            out = self._loss(batch, step, train=False)
        finally:
            model.train(was_training)
        metrics.update(out.metrics())

        n = min(cfg.demo_count, len(positions))
        codec = self.codec() if cfg.decode else None
        sample_rate = codec.sample_rate if codec is not None else 0
        if n == 0:
            return Validation(metrics=metrics)
        demo = {k: (v[:n] if isinstance(v, list | torch.Tensor) else v) for k, v in batch.items()}
        cond = model.make_conditioning(demo["text"], demo["prompt"], demo["prompt_valid"])
        true = demo["lengths"].float()
        sampled = model.cfg.sampling.temperature if cfg.temperature is None else cfg.temperature
        for temperature in sorted({0.0, sampled}):
            tag = f"t{temperature:g}"
            speech = speak(model, cond, temperature=temperature, cfg_scale=cfg.cfg_scale,
                           steps=cfg.steps, top_k=cfg.top_k, seed=self.recipe.seed + step)
            err = (speech.lengths.float() - true).abs() / true
            metrics[f"duration_error_{tag}"] = float(err.mean())
            if codec is None:
                continue
            mcds = []
            for b in range(n):
                wave = codec.decode(speech.codes[b, :, : int(speech.lengths[b])])
                ref = self._reference(codec, demo, b)
                audio[f"demo{b:02d}_{tag}" if temperature else f"demo{b:02d}_out"] = wave
                if temperature == 0:
                    audio[f"demo{b:02d}_ref"] = ref
                try:
                    mcds.append(dtw_mcd(wave[0], ref[0], codec.sample_rate))
                except ValueError:  # a silent output has no frames to align
                    mcds.append(float("nan"))
            finite = [m for m in mcds if np.isfinite(m)]
            if finite:
                metrics[f"mcd_{tag}"] = float(np.mean(finite))
        return Validation(metrics=metrics, audio=audio, sample_rate=sample_rate)

    def _reference(self, codec: Any, demo: dict[str, Any], b: int) -> np.ndarray:
        """The codec's resynthesis of the true utterance b (cached by id)."""
        key = demo["id"][b]
        if key not in self._refs:
            n = int(demo["lengths"][b])
            self._refs[key] = codec.decode(demo["codes"][b, :, :n])
        return self._refs[key]


@EXPORTERS.register("tts")
def export_tts_run(recipe: TTSRecipe, load_network: Any) -> tuple[str, dict, dict]:
    """Exporter of `soundry export`: the model's config, its codec record and weights."""
    state = load_network("tts")
    codec: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    try:
        index = TokenIndex.load(recipe.tokens.path)
        codec = index.codec
        codec.setdefault("levels", recipe.model.levels)
        meta = {"frame_rate": index.frame_rate, "sample_rate": index.sample_rate,
                "speakers": sorted({it.speaker for it in index.items if it.speaker})}
    except SoundryError as exc:
        log.warning("the export records no codec: %s", exc)
    return "tts", tts_export_config(recipe.model, codec, **meta), state
