"""Token LM task: train a `TokenLM` on token shards made by `soundry tokenize`.

A training step lays the batch's windows out with the model's codebook pattern (EOS where a
window reaches its item's end, PAD past it), builds the text/tag prefix (tags shuffled and
conditions dropped per item, from the item's seed) and minimises the per-level
cross-entropy. Logged per step: loss, and per level the loss, accuracy and output entropy.
With `prompt.frac` > 0, the start of some windows becomes an audio-prompt prefix, so the
model learns to continue a prompt (`soundry generate --prompt`).

Validation: teacher-forced loss on held-out windows, the vocabulary coverage of the
training data per level, and demo generations at each of `valid.temperatures` for the
conditions of the first validation items (training items with --overfit), decoded to audio
through the codec recorded in the token index, with the coverage of generated tokens per
level and the mean entropy of the model's predictions while generating.
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
from soundry.data.samplers import FixedItemsSampler
from soundry.data.tokens import (
    TokenDataConfig,
    TokenIndex,
    build_token_loader,
    collate_tokens,
    split_items,
)
from soundry.errors import ConfigError, SoundryError
from soundry.models.lm import TokenLM, TokenLMConfig, lm_export_config
from soundry.train.config import AdamWConfig, OptimizerConfig, WarmupSchedule
from soundry.train.optim import build_spec
from soundry.train.recipe import RecipeBase
from soundry.train.registry import EXPORTERS, register_task
from soundry.train.sections import section
from soundry.train.task import OptimizerSpec, Task, TaskContext, Validation

log = logging.getLogger(__name__)


def _default_optimizer() -> AdamWConfig:
    return AdamWConfig(
        lr=1e-4,
        betas=(0.8, 0.95),
        weight_decay=0.01,
        clip=1.0,
        schedule=WarmupSchedule(warmup_steps=500),
    )


class LMOptim(Strict):
    lm: OptimizerConfig = Field(default_factory=_default_optimizer)


class LMPromptConfig(Strict):
    """Audio prompts in training: for a fraction `frac` of the items (chosen by the item's
    seed) the first `seconds` of the window become the prompt prefix and the model learns to
    continue it. Items shorter than the prompt plus one frame keep no prompt."""

    frac: float = Field(0.0, ge=0.0, le=1.0)
    seconds: float = Field(3.0, gt=0)


class LMValidConfig(Strict):
    """Validation: held-out windows for the loss; demo generations per temperature.

    demo_count: conditions generated for (0: no demos); demo_seconds: longest demo;
    cfg_scale: guidance of the demos (1: none); decode: decode demos to audio.
    """

    windows: int = Field(8, ge=0)
    demo_count: int = Field(2, ge=0)
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0])
    demo_seconds: float = Field(5.0, gt=0)
    top_k: int | None = Field(250, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    cfg_scale: float = Field(1.0, ge=0)
    decode: bool = True


# Where each key of the audio `data:` section lives for a token LM.
_DATA_EQUIVALENTS: dict[str, str] = {
    "sources": "set tokens.path (or --data) to a directory made by `soundry tokenize`",
    "valid": "validation uses tokens.valid_count items held out of tokens.path",
    "mode": "tokens are cut into windows of tokens.window_seconds",
    "sample_rate": "it is fixed by the codec the tokens were made with (tokens.path/index.json)",
    "channels": "it is fixed by the codec the tokens were made with (tokens.path/index.json)",
    "segment_seconds": "set tokens.window_seconds",
    "batch_size": "set tokens.max_batch_size (and tokens.max_batch_seconds)",
    "num_workers": "set tokens.num_workers",
    "min_seconds": "it applies when the audio is tokenized (`soundry tokenize`)",
    "snap_to_hop": "it applies when the audio is tokenized (`soundry tokenize`)",
    "valid_count": "set tokens.valid_count",
    "valid_seconds": "validation windows are tokens.window_seconds long (demos: "
                     "valid.demo_seconds)",
    "loudness": "it applies when the audio is tokenized (`soundry tokenize`)",
    "augment": "token LMs train without audio augmentations",
    "degrade": "token LMs train without audio degradations",
    "bucket": "set tokens.bucket_seconds and tokens.max_batch_seconds",
}


def _leaf_keys(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict) and value:
        return [k for key, v in value.items() for k in _leaf_keys(v, f"{prefix}.{key}")]
    return [prefix]


def _is_resolved_default(value: dict[str, Any]) -> bool:
    """True for the all-defaults `data:` section that resolved configs of LM runs held
    before the section was dropped (so such runs still resume)."""
    if set(value) != set(DataConfig.model_fields):
        return False
    try:
        return DataConfig.model_validate(value) == DataConfig()
    except ValueError:
        return False


class LMRecipe(RecipeBase):
    """Recipe of the token LM task (`task: lm`); data comes from `tokens:`.

    The LM has no audio `data:` section: any key under it is refused (none of them would
    act) with the name of the `tokens:` key that does the job.
    """

    task: Literal["lm"] = "lm"
    data: DataConfig = Field(default_factory=DataConfig, exclude=True)
    model: TokenLMConfig = Field(default_factory=TokenLMConfig)
    tokens: TokenDataConfig = Field(default_factory=TokenDataConfig)
    optim: LMOptim = Field(default_factory=LMOptim)
    prompt: LMPromptConfig = Field(default_factory=LMPromptConfig)
    valid: LMValidConfig = Field(default_factory=LMValidConfig)

    @classmethod
    def data_flag_overrides(cls, data: list[str], valid: str | None) -> list[str]:
        """`soundry train --data DIR`: the token directory (tokens.path). There is no
        separate validation data: --valid is refused (see tokens.valid_count)."""
        if valid is not None:
            raise ConfigError("--valid: a token LM validates on tokens.valid_count items held "
                              "out of its token directory (--data / tokens.path); it takes "
                              "no separate validation data")
        if len(data) > 1:
            raise ConfigError(f"--data was given {len(data)} times; a token LM reads one token "
                              "directory (tokens.path); tokenize all the audio into one with "
                              "`soundry tokenize`")
        # absolute: the run's config (and its export's codec record) must not depend on
        # the folder the run was started from
        return ["tokens.path=" + json.dumps(str(Path(data[0]).resolve()))] if data else []

    @field_validator("data", mode="before")
    @classmethod
    def _no_data_section(cls, value: Any) -> Any:
        if isinstance(value, dict) and (not value or _is_resolved_default(value)):
            return {}
        keys = _leaf_keys(value, "data") if isinstance(value, dict) else ["data"]
        problems = []
        for key in keys:
            top = key.split(".")[1] if "." in key else ""
            hint = _DATA_EQUIVALENTS.get(top, "the token LM's data settings are under "
                                              "tokens: (path, window_seconds, max_batch_size, "
                                              "num_workers, valid_count, ...)")
            problems.append(f"{key} has no effect on a token LM; {hint}")
        # a ConfigError (not a ValueError) so the message reaches the user as it is
        raise ConfigError("task: lm reads token shards and has no data: section:\n  "
                          + "\n  ".join(problems))

    @model_validator(mode="after")
    def _check(self) -> LMRecipe:
        if not self.model.transformer.causal:
            # Next-step targets with bidirectional attention would let the model copy them.
            raise ValueError("the lm task trains next-step prediction and needs "
                             "model.transformer.causal: true")
        return self


def coverage(codes: np.ndarray | torch.Tensor, card: int,
             valid: np.ndarray | torch.Tensor | None = None) -> list[float]:
    """Fraction of the `card` codes used, per level, by codes [..., K, T] (where valid)."""
    codes = torch.as_tensor(np.asarray(codes)).long()
    levels = codes.shape[-2]
    flat = codes.transpose(0, -2).reshape(levels, -1) if codes.dim() > 2 else codes
    mask = None
    if valid is not None:
        v = torch.as_tensor(np.asarray(valid)).bool()
        mask = v.transpose(0, -2).reshape(levels, -1) if v.dim() > 2 else v
    out = []
    for k in range(levels):
        row = flat[k] if mask is None else flat[k][mask[k]]
        row = row[(row >= 0) & (row < card)]
        out.append(float(torch.unique(row).numel()) / card)
    return out


@register_task("lm")
class LMTask(Task):
    """Autoregressive (or masked) token LM over codec tokens."""

    recipe_class = LMRecipe

    def __init__(self, recipe: LMRecipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        self.nets: dict[str, nn.Module] = {}
        self._index: TokenIndex | None = None
        self._codec: Any = None
        self._codec_failed = False
        self._data_coverage: list[float] | None = None
        self._step_share: torch.Tensor | None = None  # set per step under grad_accum

    # -- setup -----------------------------------------------------------------------------

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
    def model(self) -> TokenLM:
        return self.nets["lm"]  # type: ignore[return-value]

    def networks(self) -> dict[str, nn.Module]:
        if not self.nets:
            _ = self.index  # validate the model against the data before building it
            self.nets["lm"] = TokenLM(self.recipe.model)
        return self.nets

    def optimizers(self) -> list[OptimizerSpec]:
        return [build_spec("lm", self.recipe.optim.lm, {"lm": self.nets["lm"]},
                           self.recipe.train.max_steps)]

    def train_loader(self) -> Any:
        self._loader = build_token_loader(
            self.recipe.tokens, self.recipe.seed, levels=self.recipe.model.levels,
            overfit=self.ctx.overfit, index=self.index, rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        return self._loader

    def _overfit_batch(self) -> dict[str, Any]:
        """The very windows `--overfit` trains on (same items, same crops), as one batch."""
        loader = getattr(self, "_loader", None) or self.train_loader()
        sampler = loader.sampler
        while not isinstance(sampler, FixedItemsSampler):
            sampler = sampler.base  # ShardedSampler
        unique = list(dict.fromkeys(sampler.keys))
        return collate_tokens([loader.dataset[key] for key in unique])

    def ema_networks(self) -> list[str]:
        return ["lm"]

    def fsdp_units(self) -> dict[str, list[nn.Module]]:
        return {"lm": list(self.model.transformer.blocks)}

    def fsdp_methods(self) -> dict[str, tuple[str, ...]]:
        return {"lm": ("prefill", "decode")}  # validation's demo generations

    # -- training --------------------------------------------------------------------------

    def _sequences(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        model = self.model
        device = next(model.parameters()).device
        codes = batch["codes"].to(device)
        seq = model.pattern.build(codes, lengths=batch["lengths"].to(device),
                                  ends=batch["ends"].to(device))
        return seq, device

    def split_prompts(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
        """Move the first `prompt.seconds` of chosen windows into a prompt.

        Returns (batch with the remaining codes, prompt [B, K, P] or None, prompt_valid
        [B, P] or None); prompts are left-padded, items without one have no valid frames.
        """
        cfg = self.recipe.prompt
        if cfg.frac <= 0:
            return batch, None, None
        frames = max(1, round(cfg.seconds * self.index.frame_rate))
        codes, lengths = batch["codes"], batch["lengths"]
        chosen = [
            random.Random(seed + 1).random() < cfg.frac and int(n) > frames
            for seed, n in zip(batch["seed"], lengths.tolist(), strict=True)
        ]
        if not any(chosen):
            return batch, None, None
        batch_size, levels, _ = codes.shape
        prompt = codes.new_zeros(batch_size, levels, frames)
        prompt_valid = torch.zeros(batch_size, frames, dtype=torch.bool, device=codes.device)
        rest = codes.clone()
        new_lengths = lengths.clone()
        for b, take in enumerate(chosen):  # per item in the batch, not per frame
            if take:
                prompt[b] = codes[b, :, :frames]
                prompt_valid[b] = True
                rest[b, :, : codes.shape[2] - frames] = codes[b, :, frames:]
                rest[b, :, codes.shape[2] - frames :] = 0
                new_lengths[b] = lengths[b] - frames
        return {**batch, "codes": rest, "lengths": new_lengths}, prompt, prompt_valid

    def begin_step(self, step: int, batches: list[Any]) -> None:
        """Gradient accumulation: each micro-batch's loss is divided by the whole step's
        counted cells per level (over every micro-batch and process) / (processes x
        micro-batches), so the accumulated, averaged gradient is the token-weighted mean
        over the step, as one batch holding all of it gives. Windows differ in length, so
        dividing each micro-batch by its own count would weight its tokens unequally."""
        n_out = self.model.tokens.n_output
        total = None
        for batch in batches:
            seq, _ = self._sequences(self.split_prompts(batch)[0])
            count = (seq[:, :, 1:] < n_out).float().sum(dim=(0, 2))
            total = count if total is None else total + count
        assert total is not None
        self._step_share = self._global_share(total) / len(batches)

    def _denominator(self, count: torch.Tensor) -> torch.Tensor:
        """What this micro-batch's per-level losses are divided by (see `begin_step`)."""
        if self._step_share is not None:
            return self._step_share.to(count.device)
        return self._global_share(count)

    def _global_share(self, count: torch.Tensor) -> torch.Tensor:
        """This process's share of the global batch's counted cells per level: the global
        count / processes (the local count on one process). Windows differ in length, so
        the processes' shares of a global batch hold different numbers of cells; dividing
        by the share makes the averaged gradient the global token-weighted mean."""
        if self.ctx.world_size == 1:
            return count
        import torch.distributed as dist

        total = count.detach().clone()
        dist.all_reduce(total)
        return total / self.ctx.world_size

    def train_step(self, batch: dict[str, Any], step: int, updater: Any) -> dict[str, Any]:
        model = self.model
        batch, prompt, prompt_valid = self.split_prompts(batch)
        seq, device = self._sequences(batch)
        cond = model.make_conditioning(texts=batch["text"], tags=batch["tags"],
                                       seeds=batch["seed"], train=True, prompt=prompt,
                                       prompt_valid=prompt_valid).to(device)
        with section("lm/forward"):
            out = model.loss(seq, cond, denominator=self._denominator)
        updater.update("lm", out.loss)
        logs: dict[str, Any] = {"loss/lm": out.loss.detach()}
        if out.eos_count is not None:  # read by the eos_untrained health monitor
            logs["eos/targets"] = out.eos_count
            logs["eos/prob"] = out.eos_prob
        for k in range(len(out.level_loss)):
            logs[f"loss/level_{k}"] = out.level_loss[k]
            logs[f"acc/level_{k}"] = out.level_accuracy[k]
            logs[f"entropy/level_{k}"] = out.level_entropy[k]
        return logs

    # -- validation ------------------------------------------------------------------------

    def _validation_batch(self) -> dict[str, Any] | None:
        """Held-out windows from each item's start; with --overfit, the training windows."""
        if self.ctx.overfit:
            return self._overfit_batch()
        index, levels = self.index, self.recipe.model.levels
        _, valid = split_items(index, self.recipe.tokens.valid_count)
        window = max(1, round(self.recipe.tokens.window_seconds * index.frame_rate))
        items = []
        for i in valid:
            item = index.items[i]
            items.append({
                "codes": np.asarray(index.codes(i, 0, window)[:levels], dtype=np.int64),
                "offset": 0, "end": item.frames <= window, "text": item.text,
                "tags": list(item.tags), "speaker": item.speaker, "seed": 0, "id": item.id,
            })
        return collate_tokens(items) if items else None

    def data_coverage(self) -> list[float]:
        """Per level, the fraction of the codebook that occurs in the training data."""
        if self._data_coverage is None:
            index, levels, card = self.index, self.recipe.model.levels, self.index.codebook_size
            if self.ctx.overfit:
                batch = self._overfit_batch()
                self._data_coverage = coverage(batch["codes"], card, self._frame_mask(batch))
                return self._data_coverage
            seen = np.zeros((levels, card), dtype=bool)
            for i in split_items(index, self.recipe.tokens.valid_count)[0]:
                codes = np.asarray(index.codes(i)[:levels], dtype=np.int64)
                for k in range(levels):
                    seen[k, codes[k]] = True
            self._data_coverage = seen.mean(axis=1).tolist()
        return self._data_coverage

    @staticmethod
    def _frame_mask(batch: dict[str, Any]) -> torch.Tensor:
        """[B, K, T] bool: frames inside each item's length."""
        codes, lengths = batch["codes"], batch["lengths"]
        frames = torch.arange(codes.shape[2])[None, None, :] < lengths[:, None, None]
        return frames.expand(codes.shape)

    def codec(self) -> Any:
        """The codec recorded in the token index (None when it cannot be opened)."""
        if self._codec is None and not self._codec_failed:
            from soundry.generate.tokenize import open_recorded_codec

            try:
                self._codec = open_recorded_codec(self.index.codec, base=self.index.root)
            except SoundryError as exc:
                log.warning("demo generations are not decoded: %s", exc)
                self._codec_failed = True
        return self._codec

    def validate(self, step: int) -> Validation:
        from soundry.generate.sampling import generate

        model, cfg, index = self.model, self.recipe.valid, self.index
        device = next(model.parameters()).device
        metrics: dict[str, float] = {}
        for k, value in enumerate(self.data_coverage()):
            metrics[f"data_coverage/level_{k}"] = value

        batch = self._validation_batch()
        if batch is not None and cfg.windows > 0:
            chosen = {k: (v[: cfg.windows] if isinstance(v, list | torch.Tensor) else v)
                      for k, v in batch.items()}
            seq = model.pattern.build(chosen["codes"].to(device),
                                      chosen["lengths"].to(device), chosen["ends"].to(device))
            cond = model.make_conditioning(texts=chosen["text"], tags=chosen["tags"])
            out = model.loss(seq, cond.to(device))
            metrics.update(out.metrics())

        audio: dict[str, Any] = {}
        n_demos = min(cfg.demo_count, len(batch["id"]) if batch is not None else 0)
        demos = range(n_demos)
        sample_rate = 0
        if n_demos and cfg.temperatures:
            cond = model.make_conditioning(texts=batch["text"][:n_demos],
                                           tags=batch["tags"][:n_demos])
            max_frames = max(1, round(cfg.demo_seconds * index.frame_rate))
            max_frames = min(max_frames, self._max_frames(cond.length))
            codec = self.codec() if cfg.decode else None
            for temperature in cfg.temperatures:
                trace: list[torch.Tensor] = []
                gen = generate(model, cond, max_frames=max_frames, temperature=temperature,
                               top_k=cfg.top_k, top_p=cfg.top_p, cfg_scale=cfg.cfg_scale,
                               seed=self.recipe.seed + step, trace=trace)
                tag = f"t{temperature:g}"
                cover = coverage(gen.codes, index.codebook_size, gen.valid)
                for k, value in enumerate(cover):
                    metrics[f"gen_coverage_{tag}/level_{k}"] = value
                metrics[f"gen_frames_{tag}"] = float(gen.lengths.float().mean())
                metrics[f"gen_entropy_{tag}"] = _trace_entropy(trace, len(demos))
                if codec is not None:
                    for b in range(len(demos)):
                        n = int(gen.lengths[b])
                        if n == 0:
                            continue
                        wave = codec.decode(gen.codes[b, :, :n])
                        audio[f"gen_{tag}_{b:02d}"] = wave.astype(np.float32)
                    sample_rate = codec.sample_rate
        return Validation(metrics=metrics, audio=audio, sample_rate=sample_rate)

    def _max_frames(self, prefix: int) -> int:
        """Most frames whose sequence fits the model's positions after a `prefix`."""
        model = self.model
        room = model.cfg.transformer.max_len - prefix
        return max(0, model.pattern.n_frames(room)) if room >= model.pattern.n_steps(0) else 0


def _trace_entropy(trace: list[torch.Tensor], batch: int) -> float:
    """Mean entropy (nats) of the conditional rows' predictions over a generation."""
    if not trace:
        return 0.0
    logits = torch.stack([t[:batch] for t in trace])
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


@EXPORTERS.register("lm")
def export_lm_run(recipe: LMRecipe, load_network: Any) -> tuple[str, dict, dict]:
    """Exporter of `soundry export`: the LM's config, its codec (as the token index
    recorded it) and its weights."""
    state = load_network("lm")
    codec: dict[str, Any] = {}
    try:
        index = TokenIndex.load(recipe.tokens.path)
        codec = index.codec
        codec.setdefault("levels", recipe.model.levels)
        meta = {"frame_rate": index.frame_rate, "sample_rate": index.sample_rate}
    except SoundryError as exc:
        log.warning("the export records no codec: %s", exc)
        meta = {}
    return "lm", lm_export_config(recipe.model, codec, **meta), state

