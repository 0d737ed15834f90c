"""Config schema of the data pipeline (the `data:` section of every audio recipe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from soundry.config import Strict


class SourceConfig(Strict):
    """One data source: a folder or manifest, mixed with the others by `weight`."""

    path: str
    weight: float = Field(1.0, gt=0)
    name: str | None = None


class LoudnessConfig(Strict):
    """Loudness normalisation and silence rejection (DAC: -16 LUFS target, -40 LUFS floor)."""

    target_lufs: float | None = -16.0
    min_lufs: float | None = -40.0
    retries: int = Field(8, ge=0)


class DataConfig(Strict):
    """Where audio comes from and how it is cut into training items."""

    sources: list[SourceConfig] = Field(default_factory=list)
    valid: str | None = None
    sample_rate: int = Field(16000, gt=0)
    channels: Literal[1, 2] = 1
    segment_seconds: float = Field(0.5, gt=0)
    batch_size: int = Field(8, ge=1)
    num_workers: int = Field(2, ge=0)
    min_seconds: float = Field(0.05, ge=0)
    snap_to_hop: bool = True
    valid_count: int = Field(8, ge=1)
    valid_seconds: float = Field(1.0, gt=0)
    loudness: LoudnessConfig = Field(default_factory=LoudnessConfig)
