"""Config schema of the data pipeline (the `data:` section of every audio recipe).

A minimal section names its sources; everything else has a default::

    data:
      sources:
        - {path: data/speech, weight: 0.5}
        - {path: data/music, weight: 0.3}
        - {path: data/general, weight: 0.2}
      sample_rate: 24000
      segment_seconds: 0.5
      augment:
        phase: {prob: 0.8}
        gain: {prob: 1.0, min_db: -6, max_db: 0}

Item kinds (`mode`):

- `clips`: random crops of `segment_seconds` (files shorter than that are zero-padded).
- `oneshot`: the first `segment_seconds` of each file, padded or trimmed (short sounds);
  training items may start up to `start_jitter_seconds` late (validation: at 0).
- `utterances`: whole files (cut to at most `segment_seconds`), grouped into batches of
  similar duration by the duration-bucketed sampler (`bucket:`) and zero-padded to the
  longest item of their batch; batches then carry `lengths`.

Audio-to-audio data: a source with `target:` is a paired source (`path` holds the inputs,
`target` the clean targets, matched by relative path without extension: a file on one
side without a partner on the other is skipped and listed); `degrade:` makes pairs on the fly
(target = the clean clip, input = a degraded copy) for every source without a `target`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from soundry.config import Strict


def _prob(default: float = 0.0) -> Any:
    """A probability field: the chance a transform is applied to an item."""
    return Field(default, ge=0.0, le=1.0)


class SourceConfig(Strict):
    """One data source: a folder or manifest, mixed with the others by `weight`.

    `target` makes the source paired: `path` holds degraded inputs and `target` the clean
    versions, matched by relative path without extension.
    """

    path: str
    weight: float = Field(1.0, gt=0)
    name: str | None = None
    target: str | None = None


class LoudnessConfig(Strict):
    """Loudness normalisation and silence rejection (DAC: -16 LUFS target, -40 LUFS floor).

    `target_lufs`: every item is normalised to this loudness (None: left as read); the gain
    is limited so the peak stays within [-1, 1]. `min_lufs`: a random crop quieter than
    this is re-drawn at a new offset up to `retries` times (the loudest try is kept).
    `peak`: normalise every item's peak to this linear level instead (for transients: a 1 s
    drum hit brought to -16 LUFS would clip); needs `target_lufs: null`.
    """

    target_lufs: float | None = -16.0
    min_lufs: float | None = -40.0
    retries: int = Field(8, ge=0)
    peak: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_target(self) -> LoudnessConfig:
        if self.peak is not None and self.target_lufs is not None:
            raise ValueError("loudness.peak and loudness.target_lufs both set: items are "
                             "normalised either by peak or by loudness; set target_lufs: null")
        return self


def _check_range(lo: float, hi: float, what: str) -> None:
    if lo > hi:
        raise ValueError(f"{what}: minimum {lo} is above maximum {hi}")


# ----------------------------------------------------------------------------- augmentations


class GainAugment(Strict):
    """Multiply by a gain drawn uniformly in dB (then peak-limited to [-1, 1])."""

    prob: float = _prob()
    min_db: float = -6.0
    max_db: float = 0.0

    @model_validator(mode="after")
    def _range(self) -> GainAugment:
        _check_range(self.min_db, self.max_db, "gain min_db/max_db")
        return self


class PolarityAugment(Strict):
    """Flip the sign of the waveform."""

    prob: float = _prob()


class PhaseAugment(Strict):
    """Second-order all-pass at a log-uniform frequency in [min_hz, max_hz] (RAVE, r = 0.99)."""

    prob: float = _prob()
    min_hz: float = Field(20.0, gt=0)
    max_hz: float = Field(2000.0, gt=0)
    r: float = Field(0.99, gt=0, lt=1)

    @model_validator(mode="after")
    def _range(self) -> PhaseAugment:
        _check_range(self.min_hz, self.max_hz, "phase min_hz/max_hz")
        return self


class DequantizeAugment(Strict):
    """Add uniform noise one quantisation step wide (+-half a step) at `bits` resolution."""

    prob: float = _prob()
    bits: int = Field(16, ge=2, le=32)


class PitchAugment(Strict):
    """Resample by a factor in [min_ratio, max_ratio]: > 1 raises pitch and tempo."""

    prob: float = _prob()
    min_ratio: float = Field(0.7, gt=0.1, le=10.0)
    max_ratio: float = Field(1.3, gt=0.1, le=10.0)

    @model_validator(mode="after")
    def _range(self) -> PitchAugment:
        _check_range(self.min_ratio, self.max_ratio, "pitch min_ratio/max_ratio")
        return self


class AugmentConfig(Strict):
    """Training-time augmentations; each one is off until its `prob` is set above 0.

    Applied in this order: pitch, phase, gain, polarity, dequantize. Every parameter is
    drawn from the item's generator, seeded by (seed, epoch, index).
    """

    gain: GainAugment = Field(default_factory=GainAugment)
    polarity: PolarityAugment = Field(default_factory=PolarityAugment)
    phase: PhaseAugment = Field(default_factory=PhaseAugment)
    dequantize: DequantizeAugment = Field(default_factory=DequantizeAugment)
    pitch: PitchAugment = Field(default_factory=PitchAugment)


# ----------------------------------------------------------------------------- degradations


NOISE_COLOURS = ("white", "pink", "brown", "blue", "violet")


class NoiseDegrade(Strict):
    """Additive noise at a signal-to-noise ratio drawn uniformly in dB (the achieved SNR is
    the drawn one: the noise is scaled on the clip's own power).

    The noise is synthetic, of a colour drawn from `colours` (power spectrum ~ f^-a: white 0,
    pink 1, brown 2, blue -1, violet -2), or, with `folder`, a random crop of a random file
    of that folder (looped if short).
    """

    prob: float = _prob(1.0)
    min_snr_db: float = 5.0
    max_snr_db: float = 30.0
    colours: list[Literal["white", "pink", "brown", "blue", "violet"]] = Field(
        default_factory=lambda: ["white"], min_length=1)
    folder: str | None = None

    @model_validator(mode="after")
    def _range(self) -> NoiseDegrade:
        _check_range(self.min_snr_db, self.max_snr_db, "noise min_snr_db/max_snr_db")
        return self


class LowpassDegrade(Strict):
    """A low-pass at a cutoff drawn log-uniformly (capped below Nyquist): a Butterworth
    filter (`method: butterworth`), or a bandwidth limit by resampling down to twice the
    cutoff and back up (`method: resample`, what a low-rate recording sounds like)."""

    prob: float = _prob(0.5)
    min_hz: float = Field(1000.0, gt=0)
    max_hz: float = Field(6000.0, gt=0)
    order: int = Field(8, ge=1, le=16)
    method: Literal["butterworth", "resample"] = "butterworth"

    @model_validator(mode="after")
    def _range(self) -> LowpassDegrade:
        _check_range(self.min_hz, self.max_hz, "lowpass min_hz/max_hz")
        return self


class ClipDegrade(Strict):
    """Hard clipping at a fraction of the clip's peak drawn in [min_level, max_level]."""

    prob: float = _prob(0.3)
    min_level: float = Field(0.1, gt=0, le=1)
    max_level: float = Field(0.6, gt=0, le=1)

    @model_validator(mode="after")
    def _range(self) -> ClipDegrade:
        _check_range(self.min_level, self.max_level, "clip min_level/max_level")
        return self


class GainDegrade(Strict):
    """A gain drawn uniformly in dB on the input only (level mismatch to undo)."""

    prob: float = _prob(0.3)
    min_db: float = -20.0
    max_db: float = 0.0

    @model_validator(mode="after")
    def _range(self) -> GainDegrade:
        _check_range(self.min_db, self.max_db, "degrade gain min_db/max_db")
        return self


class ReverbDegrade(Strict):
    """Convolution with a room impulse response; the target stays dry.

    `source`: `synthetic` (a direct path plus exponentially decaying noise with RT60 drawn
    in [min_rt60, max_rt60] s and a direct-to-reverberant ratio in [min_drr_db,
    max_drr_db]), `room` (a shoebox room simulated by `pyroomacoustics`, which must be
    installed, at the drawn RT60) or `folder` (impulse responses read from `folder`, aligned
    to their peak so the direct path lines up with the target).
    """

    prob: float = _prob(0.0)
    source: Literal["synthetic", "room", "folder"] = "synthetic"
    min_rt60: float = Field(0.2, gt=0)
    max_rt60: float = Field(1.0, gt=0)
    min_drr_db: float = -3.0
    max_drr_db: float = 12.0
    folder: str | None = None

    @model_validator(mode="after")
    def _range(self) -> ReverbDegrade:
        _check_range(self.min_rt60, self.max_rt60, "reverb min_rt60/max_rt60")
        _check_range(self.min_drr_db, self.max_drr_db, "reverb min_drr_db/max_drr_db")
        if self.source == "folder" and not self.folder:
            raise ValueError("reverb source 'folder' needs `folder:` (a folder of IR files)")
        return self


class PitchDegrade(Strict):
    """A pitch shift by a number of semitones drawn uniformly in [min_semitones,
    max_semitones], duration kept (phase-vocoder stretch, then resampling): the model learns
    to undo it (the target is the original)."""

    prob: float = _prob(0.0)
    min_semitones: float = Field(-2.0, ge=-24, le=24)
    max_semitones: float = Field(2.0, ge=-24, le=24)

    @model_validator(mode="after")
    def _range(self) -> PitchDegrade:
        _check_range(self.min_semitones, self.max_semitones, "pitch min/max_semitones")
        return self


class CodecDegrade(Strict):
    """An encode/decode round trip through a classical codec (ffmpeg, which must be on
    PATH): a codec drawn from `codecs`, a bitrate drawn uniformly in [min_kbps, max_kbps]."""

    prob: float = _prob(0.0)
    codecs: list[Literal["mp3", "opus", "vorbis", "aac"]] = Field(
        default_factory=lambda: ["mp3", "opus"], min_length=1)
    min_kbps: float = Field(16.0, gt=0)
    max_kbps: float = Field(64.0, gt=0)

    @model_validator(mode="after")
    def _range(self) -> CodecDegrade:
        _check_range(self.min_kbps, self.max_kbps, "codec min_kbps/max_kbps")
        return self


DEGRADE_ORDER = ["pitch", "reverb", "lowpass", "codec", "clip", "noise", "gain"]


class DegradeConfig(Strict):
    """On-the-fly degradations: target = clean clip, input = degraded copy.

    Each degradation fires with its `prob` and draws its parameters from ranges; they are
    applied in `order` (default: pitch, reverb, lowpass, codec, clip, noise, gain). Every
    draw comes from the item's generator, seeded by (seed, epoch, index), one stream per
    degradation: turning one on leaves the others' draws where they were. `degrade: {}`
    turns on noise, lowpass, clip and gain at their default probabilities.
    """

    noise: NoiseDegrade = Field(default_factory=NoiseDegrade)
    lowpass: LowpassDegrade = Field(default_factory=LowpassDegrade)
    clip: ClipDegrade = Field(default_factory=ClipDegrade)
    gain: GainDegrade = Field(default_factory=GainDegrade)
    reverb: ReverbDegrade = Field(default_factory=ReverbDegrade)
    pitch: PitchDegrade = Field(default_factory=PitchDegrade)
    codec: CodecDegrade = Field(default_factory=CodecDegrade)
    order: list[str] = Field(default_factory=lambda: list(DEGRADE_ORDER))

    @model_validator(mode="after")
    def _order(self) -> DegradeConfig:
        unknown = [n for n in self.order if n not in DEGRADE_ORDER]
        if unknown:
            raise ValueError(f"degrade order: unknown degradation(s) {unknown} "
                             f"(valid: {', '.join(DEGRADE_ORDER)})")
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"degrade order lists a degradation twice: {self.order}")
        missing = [n for n in DEGRADE_ORDER if getattr(self, n).prob > 0 and n not in self.order]
        if missing:
            raise ValueError(f"degrade order leaves out {missing}, whose prob is above 0: "
                             "add them to `order` or set their prob to 0")
        return self


# ----------------------------------------------------------------------------- batching


class BucketConfig(Strict):
    """Duration-bucketed batches (mode `utterances`).

    Items are grouped by duration in steps of `bucket_seconds`; a batch holds items of one
    bucket, at most `max_batch_seconds` of padded audio (items x longest item) and at most
    `max_batch_size` items. Batch order is shuffled every epoch.
    """

    bucket_seconds: float = Field(1.0, gt=0)
    max_batch_seconds: float = Field(32.0, gt=0)
    max_batch_size: int | None = Field(None, ge=1)


class DataConfig(Strict):
    """Where audio comes from and how it is cut into training items."""

    sources: list[SourceConfig] = Field(default_factory=list)
    valid: str | None = None
    mode: Literal["clips", "oneshot", "utterances"] = "clips"
    sample_rate: int = Field(16000, gt=0)
    channels: Literal[1, 2] = 1
    segment_seconds: float = Field(0.5, gt=0)
    start_jitter_seconds: float = Field(0.0, ge=0)  # oneshot: random start in [0, this]
    batch_size: int = Field(8, ge=1)
    num_workers: int = Field(2, ge=0)
    min_seconds: float = Field(0.05, ge=0)
    snap_to_hop: bool = True
    valid_count: int = Field(8, ge=1)
    valid_seconds: float = Field(1.0, gt=0)
    loudness: LoudnessConfig = Field(default_factory=LoudnessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    degrade: DegradeConfig | None = None
    bucket: BucketConfig = Field(default_factory=BucketConfig)

    @model_validator(mode="after")
    def _pairs_consistent(self) -> DataConfig:
        paired = [s.target is not None for s in self.sources]
        if self.degrade is None and any(paired) and not all(paired):
            raise ValueError(
                "some sources have a `target` and some do not; give every source a target, "
                "or set `degrade:` so sources without one get degraded pairs on the fly"
            )
        return self

    @model_validator(mode="after")
    def _jitter_needs_oneshot(self) -> DataConfig:
        if self.start_jitter_seconds and self.mode != "oneshot":
            raise ValueError("data.start_jitter_seconds only acts in mode 'oneshot' (clips "
                             "are random crops already)")
        return self

    @property
    def paired(self) -> bool:
        """True when items are (input, target) pairs."""
        return self.degrade is not None or any(s.target is not None for s in self.sources)
