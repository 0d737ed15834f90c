"""Loading a semantic codec's teachers: checked, frozen, recorded as auxiliary networks."""

from __future__ import annotations

from pathlib import Path

from soundry.errors import ConfigError
from soundry.models.teachers import DEFAULT_SSL_RATE, Teacher, TeacherConfig, read_teacher_meta
from soundry.train.auxiliary import load_auxiliary


def load_teacher(name: str, cfg: TeacherConfig) -> Teacher:
    """Load and freeze teacher `name` (see `soundry.models.teachers`); ConfigError when its
    directory is missing, unreadable, of another kind, or (text_lm) has no tokenizer."""
    meta = read_teacher_meta(name, cfg)
    aux = load_auxiliary(cfg.path, kind="transformers")
    aux.module.eval()
    aux.module.requires_grad_(False)
    path = Path(cfg.path)
    if cfg.kind == "text_lm":
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"teachers.{name}.path '{cfg.path}': no usable tokenizer "
                              f"({exc})") from None
        return Teacher(name, cfg, aux, meta, tokenizer=tokenizer)
    extractor, rate = None, DEFAULT_SSL_RATE
    if (path / "preprocessor_config.json").is_file():
        from transformers import AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        rate = int(getattr(extractor, "sampling_rate", rate) or rate)
    return Teacher(name, cfg, aux, meta, extractor=extractor, sample_rate=rate)


def load_teachers(teachers: dict[str, TeacherConfig]) -> dict[str, Teacher]:
    """Every teacher of a recipe, by name."""
    return {name: load_teacher(name, cfg) for name, cfg in teachers.items()}
