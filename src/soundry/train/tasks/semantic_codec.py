"""The semantic codec: a codec whose first level is distilled from frozen teachers' features.

The codec step (`CodecTask`) plus, per teacher `name` in the recipe's `teachers:`, a
projection head from the chosen levels' quantized outputs (level 0 by default) to the
teacher's feature space and a distillation term `distill_<name>` (cosine, d_axis or mse;
`soundry.losses.distill`) against the teacher's features at the codec's frames. The terms
join the codec's in one generator loss, so phases can reweight them like any other
(`weights: {mel: 0}` is the adversarial-only phase).

Teacher features come from a store `soundry teacher-features` wrote (`teacher_features:`
names its folder; the crop's frames are sliced out of the whole file's features) or are
computed on-line from each training crop (an SSL teacher) or from the file's transcript (a
text LM; its token states are cached per file). Stored SSL features differ from a crop's
on-line ones: the teacher attended across the whole file, an extractor that normalises per
clip normalised over it, and the crop's gain augmentation is not in them. Validation
targets come from the store when it holds the validation file, else on-line.

Logged: `loss/distill_<name>`, and `distill/<name>/cosine`, the per-frame cosine similarity of
the head's prediction and the teacher's features (training batches and validation clips).
Validation also logs `distill/<name>/cosine_const`, the best any constant prediction scores
on the same clips (see `best_constant_cosine`): the level to beat. Reconstruction from
level 0 alone is scored as `mel_distance@1` etc. (`valid.levels` includes 1 by default).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from soundry.audio.dsp import SpectrogramCache
from soundry.errors import SoundryError
from soundry.losses.config import CODEC_TERMS
from soundry.losses.distill import (
    DISTILL_LOSSES,
    best_constant_cosine,
    frame_cosine,
    masked_mean,
)
from soundry.losses.terms import LossTerm, LossTerms
from soundry.models.distill_heads import ProjectionHead, level_sum
from soundry.models.teachers import Teacher, TeacherConfig
from soundry.nn.keyed_random import fold_ids
from soundry.train.optim import build_spec
from soundry.train.registry import EXPORTERS, register_task
from soundry.train.sections import section
from soundry.train.task import OptimizerSpec, TaskContext, Updater, Validation
from soundry.train.tasks.codec import (
    CodecRecipe,
    CodecTask,
    CodecValidConfig,
    export_codec_run,
    fold_channels,
)

log = logging.getLogger("soundry.train")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SemanticValidConfig(CodecValidConfig):
    """Codec validation, scoring level 0 alone (`levels: [1]`) by default."""

    levels: list[int] = Field(default_factory=lambda: [1])


class SemanticCodecRecipe(CodecRecipe):
    """A codec recipe with `teachers:` (at least one) and where their features come from."""

    task: Literal["semantic_codec"] = "semantic_codec"  # type: ignore[assignment]
    loss_terms: ClassVar[LossTerms] = CODEC_TERMS
    teachers: dict[str, TeacherConfig] = Field(min_length=1)
    # a folder `soundry teacher-features` wrote into; None: teachers run on-line
    teacher_features: str | None = None
    valid: SemanticValidConfig = Field(default_factory=SemanticValidConfig)

    def declared_terms(self) -> LossTerms:
        return CODEC_TERMS + LossTerms(
            LossTerm(f"distill_{n}", t.weight, f"distillation of teacher '{n}' ({t.loss})")
            for n, t in self.teachers.items())

    def distill_weights(self) -> dict[str, float]:
        return {f"distill_{n}": float(t.weight) for n, t in self.teachers.items()}

    @model_validator(mode="after")
    def _semantic(self) -> SemanticCodecRecipe:
        bad = [n for n in self.teachers if not _NAME.match(n)]
        if bad:
            raise ValueError(f"teachers: name(s) {bad} must be lower-case identifiers "
                             "(they become loss and log names)")
        if self.model.channels != 1:
            raise ValueError("a semantic codec is mono (teachers read one channel): set "
                             "model.channels and data.channels to 1")
        k = self.model.quantizer.n_codebooks
        for name, t in self.teachers.items():
            out = [i for i in t.levels if not 0 <= i < k]
            if out:
                raise ValueError(f"teachers.{name}.levels {out}: levels are 0..{k - 1}")
        for net in ("generator", "discriminator"):
            if getattr(self.optim, net).clip is None:
                raise ValueError(f"optim.{net}.clip: both networks are clipped in a semantic "
                                 "codec (an unclipped discriminator destabilises the "
                                 "adversarial-only phase)")
        text = any(t.kind == "text_lm" for t in self.teachers.values())
        if self.teacher_features is not None or text:
            if not self.data.snap_to_hop:
                raise ValueError("teacher_features and text_lm teachers need "
                                 "data.snap_to_hop: true (crops must start on a frame to "
                                 "slice a file's features)")
            pitch = self.data.augment.pitch
            if pitch.prob > 0:
                raise ValueError("data.augment.pitch changes timing, so a file's stored or "
                                 "transcript features no longer line up with the crop; "
                                 "turn it off")
        return self


@register_task("semantic_codec")
class SemanticCodecTask(CodecTask):
    """A codec with distillation heads on its first level(s)."""

    recipe_class = SemanticCodecRecipe

    def __init__(self, recipe: SemanticCodecRecipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        from soundry.train.teachers import load_teachers

        self.teachers: dict[str, Teacher] = load_teachers(recipe.teachers)
        dim = self.generator.latent_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed + 7919)
            self.heads = torch.nn.ModuleDict({
                n: ProjectionHead(dim, t.dim, recipe.teachers[n].head,
                                  recipe.teachers[n].head_hidden)
                for n, t in self.teachers.items()})
        self.terms = recipe.declared_terms()
        self.hop = self.generator.hop_length
        self.sample_rate = recipe.model.sample_rate
        self._stores: dict[str, Any] = {}
        self._texts: dict[str, str | None] | None = None
        self._token_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._valid_targets: dict[str, list[torch.Tensor]] | None = None
        if recipe.teacher_features is not None:
            self._open_stores()
        self._check_transcripts()

    # -- Task interface --------------------------------------------------------------------

    def networks(self) -> dict[str, torch.nn.Module]:
        return {**super().networks(), "heads": self.heads}

    def optimizers(self) -> list[OptimizerSpec]:
        steps = self.recipe.train.max_steps
        optim = self.recipe.optim
        return [
            build_spec("discriminator", optim.discriminator,
                       {"discriminator": self.discriminator}, steps),
            build_spec("generator", optim.generator,
                       {"generator": self.generator, "heads": self.heads}, steps),
        ]

    def ema_networks(self) -> list[str]:
        return ["generator", "heads"]  # validation pairs the generator with its heads

    def auxiliary_networks(self) -> dict[str, Any]:
        return {f"teacher_{n}": t.aux for n, t in self.teachers.items()}

    def train_loader(self) -> Any:
        from soundry.data.loader import build_train_loader

        return build_train_loader(
            self.recipe.data, seed=self.recipe.seed, hop=self.hop, overfit=self.ctx.overfit,
            rank=self.ctx.rank, world_size=self.ctx.world_size, with_meta=True)

    def weights_at(self, step: int) -> dict[str, float]:
        return self.gan.plan(step + 1, self._weights(), resolve=False).weights

    def _weights(self) -> dict[str, float]:
        return {**self.recipe.losses.weights(), **self.recipe.distill_weights()}

    # -- teacher targets -------------------------------------------------------------------

    def _open_stores(self) -> None:
        from soundry.data.datasets import target_frames
        from soundry.data.feature_store import find_store
        from soundry.data.loader import load_sources

        sources = load_sources(self.recipe.data)
        sr = self.recipe.data.sample_rate
        files = [(it.path, target_frames(it, sr)) for items in sources.train for it in items]
        texts = {it.path: it.text for items in sources.train for it in items}
        for name, teacher in self.teachers.items():
            store, why = find_store(self.recipe.teacher_features,
                                    teacher.key(self.sample_rate, self.hop), files,
                                    texts if teacher.cfg.kind == "text_lm" else None)
            if store is None:
                raise SoundryError(
                    f"teacher_features {self.recipe.teacher_features}: no stored features "
                    f"of teacher '{name}' for this recipe's training data ({why}); run "
                    f"`soundry teacher-features RECIPE DATA {self.recipe.teacher_features}` "
                    "or drop teacher_features to run the teachers on-line")
            self._stores[name] = store
            log.info("teacher '%s': stored features from %s", name, store.folder)

    def _text_of(self, path: str) -> str | None:
        if self._texts is None:
            from soundry.data.loader import _valid_files, load_sources

            sources = load_sources(self.recipe.data)
            items = [it for its in sources.train for it in its] + _valid_files(self.recipe.data)
            self._texts = {it.path: it.text for it in items}
        return self._texts.get(path)

    def _check_transcripts(self) -> None:
        """Every file an on-line text teacher reads has a transcript (checked before
        training, not when the file first comes up)."""
        online = [n for n, t in self.teachers.items()
                  if t.cfg.kind == "text_lm" and n not in self._stores]
        if not online:
            return
        self._text_of("")  # builds the path -> text map
        assert self._texts is not None
        missing = [p for p, text in self._texts.items() if not text]
        if missing:
            raise SoundryError(
                f"teacher '{online[0]}' reads transcripts, but {len(missing)} file(s) have "
                f"none (e.g. {missing[0]}); give every file a `text` (a manifest column or "
                "LJSpeech's metadata.csv)")

    def _text_frames(self, teacher: Teacher, path: str, file_frames: int) -> torch.Tensor:
        """A text teacher's features of a whole file at its codec frames [H, F]. The token
        states [H, L] are cached per file (far smaller than [H, F]); the stretch is redone."""
        from soundry.models.teachers import align_frames

        key = (teacher.name, path)
        if key not in self._token_cache:
            text = self._text_of(path)
            if not text:
                raise SoundryError(f"teacher '{teacher.name}' needs a transcript of {path} "
                                   "(a manifest `text` column or LJSpeech metadata.csv)")
            self._token_cache[key] = teacher.text_features(text).cpu()
        tokens = self._token_cache[key]
        return align_frames(tokens[None], math.ceil(file_frames / self.hop),
                            teacher.cfg.pooling)[0]

    def _text_window(self, teacher: Teacher, path: str, file_frames: int, offset: int,
                     frames: int) -> tuple[torch.Tensor, int]:
        """A text teacher's features of the crop at `offset` (samples) of `frames` frames:
        ([H, frames], how many lie inside the file; the rest are zeros)."""
        full = self._text_frames(teacher, path, file_frames)
        start = offset // self.hop
        got = full[:, start:start + frames]
        piece = torch.zeros(full.shape[0], frames)
        piece[:, : got.shape[-1]] = got
        return piece, got.shape[-1]

    def targets(self, batch: dict[str, Any], x: torch.Tensor
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Teacher features of a training batch at its frames: name -> ([B, H, F], mask
        [B, F])."""
        frames = math.ceil(x.shape[-1] / self.hop)
        lengths = batch.get("lengths")
        base = torch.ones(x.shape[0], frames)
        if lengths is not None:  # frames past a short file's end are padding
            valid = torch.div(lengths.cpu() + self.hop - 1, self.hop, rounding_mode="floor")
            base = (torch.arange(frames)[None] < valid[:, None]).float()
        metas = batch.get("meta") or []
        out = {}
        for name, teacher in self.teachers.items():
            mask = base.clone()
            if name in self._stores:
                rows = []
                for i, meta in enumerate(metas):
                    feats, n = self._stores[name].get(
                        meta["path"], int(batch["offset"][i]) // self.hop, frames)
                    mask[i, n:] = 0
                    rows.append(feats)
                target = torch.stack(rows)
            elif teacher.cfg.kind == "text_lm":
                rows = []
                for i, meta in enumerate(metas):
                    piece, n = self._text_window(teacher, meta["path"],
                                                 int(batch["file_frames"][i]),
                                                 int(batch["offset"][i]), frames)
                    mask[i, n:] = 0
                    rows.append(piece)
                target = torch.stack(rows)
            else:
                target = teacher.batch_frames(x, self.sample_rate, self.hop)
            out[name] = (target.to(x.device), mask.to(x.device))
        return out

    def predictions(self, level_outputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each head's prediction [B, H, F] from the quantized levels."""
        return {n: self.heads[n](level_sum(level_outputs, self.recipe.teachers[n].levels))
                for n in self.teachers}

    # -- training --------------------------------------------------------------------------

    def train_step(self, batch: Any, step: int, updater: Updater) -> dict[str, Any]:
        x = batch["audio"]
        plan = self.gan.plan(step, self._weights())
        losses = self.losses(x.device)
        gen = self.generator
        ids = batch.get("index") if isinstance(batch, dict) else None
        with section("teachers"):
            targets = self.targets(batch, x) if plan.generator else {}
        with section("generator/forward"):
            if plan.generator:
                out = gen(x, step=step, item_ids=ids)
            else:
                with torch.no_grad():
                    out = gen(x)
        real = SpectrogramCache(fold_channels(x))
        fake = SpectrogramCache(fold_channels(out.audio))
        cosines: dict[str, torch.Tensor] = {}

        def generator_terms() -> dict[str, torch.Tensor]:
            terms = losses.reconstruction(real, fake, plan.weights)
            if gen.quantizer.has_losses:
                terms["commitment"] = out.commitment_loss
                terms["codebook"] = out.codebook_loss
            preds = self.predictions(out.info.level_outputs)
            for name, (target, mask) in targets.items():
                fn = DISTILL_LOSSES[self.recipe.teachers[name].loss]
                terms[f"distill_{name}"] = fn(preds[name], target, mask)
                with torch.no_grad():
                    cosines[name] = masked_mean(frame_cosine(preds[name], target), mask)
            return terms

        logs = self.gan.run(plan, real, fake, updater, generator_terms, self.terms,
                            item_ids=fold_ids(ids, x.shape[1]))
        for name, value in cosines.items():
            logs[f"distill/{name}/cosine"] = value
        return logs

    # -- validation ------------------------------------------------------------------------

    def _valid_windows(self) -> list[tuple[str, np.ndarray, Any, int]]:
        from soundry.data.loader import build_valid_windows

        return build_valid_windows(self.recipe.data, hop=self.hop)

    def valid_items(self) -> list[tuple[str, np.ndarray]]:
        if self._valid_items is None:
            windows = self._valid_windows()
            self._valid_items = [(name, clip) for name, clip, _, _ in windows]
            self._windows = windows
        return self._valid_items

    def valid_targets(self) -> dict[str, list[torch.Tensor]]:
        """Teacher features of each validation clip [H, F] (computed once)."""
        if self._valid_targets is None:
            self.valid_items()
            out: dict[str, list[torch.Tensor]] = {n: [] for n in self.teachers}
            for _, clip, item, offset in self._windows:
                frames = math.ceil(clip.shape[-1] / self.hop)
                for name, teacher in self.teachers.items():
                    store = self._stores.get(name)
                    if store is not None and item.path in store.items:
                        # the training targets' source, so the score measures the same thing
                        out[name].append(store.get(item.path, offset // self.hop, frames)[0])
                    elif teacher.cfg.kind == "text_lm":
                        from soundry.data.datasets import target_frames

                        total = target_frames(item, self.recipe.data.sample_rate)
                        out[name].append(self._text_window(teacher, item.path, total, offset,
                                                           frames)[0])
                    else:
                        out[name].append(teacher.item_frames(clip, self.sample_rate, self.hop))
            self._valid_targets = out
        return self._valid_targets

    @torch.no_grad()
    def validate(self, step: int) -> Validation:
        result = super().validate(step)
        gen = self.generator
        device = next(gen.parameters()).device
        targets = self.valid_targets()
        scores: dict[str, list[float]] = {}
        for i, (_, clip) in enumerate(self.valid_items()):
            x = torch.from_numpy(clip).to(device)[None]
            out = gen(x)
            preds = self.predictions(out.info.level_outputs)
            for name in self.teachers:
                target = targets[name][i][None].to(device)
                pred = preds[name][..., : target.shape[-1]]
                scores.setdefault(f"distill/{name}/cosine", []).append(
                    float(frame_cosine(pred, target).mean()))
        for name in self.teachers:
            stacked = torch.cat([t for t in targets[name]], dim=-1)[None]
            result.metrics[f"distill/{name}/cosine_const"] = float(best_constant_cosine(stacked))
        result.metrics.update({k: float(np.mean(v)) for k, v in scores.items()})
        return result


EXPORTERS.register("semantic_codec")(export_codec_run)
