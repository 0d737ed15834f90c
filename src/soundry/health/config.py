"""`health:` recipe section: every monitor's switch and thresholds (defaults documented here
and in the README's "Training health" section).

    health:
      check_every: 25            # steps between checks (findings are decided at checks)
      loss_spike: {factor: 20}   # tune a threshold
      crop_coverage: {enabled: false}   # or switch a monitor off
"""

from __future__ import annotations

from pydantic import Field

from soundry.config import Strict


class MonitorConfig(Strict):
    enabled: bool = True


class CropCoverageConfig(MonitorConfig):
    """Random training windows that do not cover the files they come from.

    min_windows: windows (of files with room for a random crop) seen before deciding;
    max_same_offset: error when one offset value accounts for more than this share of them;
    min_windows_per_file / min_decile_coverage: over files cropped at least that often, an
    error when the windows cover on average less than this share of a file's deciles.
    """

    min_windows: int = Field(64, ge=8)
    max_same_offset: float = Field(0.5, gt=0, le=1)
    min_windows_per_file: int = Field(16, ge=2)
    min_decile_coverage: float = Field(0.5, gt=0, le=1)


class SampleRateConfig(MonitorConfig):
    """Data whose content is narrower than the model's sample rate.

    top_band: the band above this fraction of Nyquist is checked (0.6: above 4.8 kHz at
    16 kHz; the margin over a half keeps the window's leakage from a band edge at 0.5
    Nyquist out); empty_db: an item whose energy there is this far below its total is
    band-limited;
    max_band_limited: warning when more than this share of checked items are band-limited
    (after min_items); items_per_batch: items of each batch analysed (cost bound).
    """

    top_band: float = Field(0.6, gt=0, lt=1)
    empty_db: float = Field(60.0, gt=0)
    max_band_limited: float = Field(0.9, gt=0, le=1)
    min_items: int = Field(48, ge=4)
    items_per_batch: int = Field(4, ge=1)


class SilenceConfig(MonitorConfig):
    """Silent or clipped training items (over the last `window` items, after min_items).

    silent_dbfs: an item whose RMS is below this is near-silent; warn_share / error_share:
    shares of near-silent items for a warning / an error; clipped_share: warning when more
    than this share of items are clipped (flat runs at the item's peak covering more than
    `flat_fraction` of its samples).
    """

    silent_dbfs: float = -60.0
    warn_share: float = Field(0.25, gt=0, le=1)
    error_share: float = Field(0.6, gt=0, le=1)
    clipped_share: float = Field(0.2, gt=0, le=1)
    flat_fraction: float = Field(0.002, gt=0, lt=1)
    min_items: int = Field(32, ge=4)
    window: int = Field(256, ge=8)


class OutputSaturationConfig(MonitorConfig):
    """Validation outputs pinned at full scale, constant, silent or far off the reference
    level. An error when the share of affected output clips reaches `error_share`.

    rail: |sample| at or above this is at the rail; pinned_fraction: a clip with more than
    this share of its samples at the rail is saturated; min_diff_std: std of the first
    difference at or below this is a constant/DC output; silent_rms: RMS at or below this is
    silent; level_db: output RMS this far (dB) from its reference's is a level problem
    (warning).
    """

    rail: float = Field(0.99, gt=0, le=1)
    pinned_fraction: float = Field(0.2, gt=0, le=1)
    min_diff_std: float = Field(1e-4, ge=0)
    silent_rms: float = Field(1e-4, ge=0)
    level_db: float = Field(20.0, gt=0)
    error_share: float = Field(0.5, gt=0, le=1)


class CodebookCollapseConfig(MonitorConfig):
    """Codebook usage (share of codes seen at validation) too low or falling.

    min_level_usage: error when a level's usage is under this, or when it uses fewer than
    `min_codes` distinct codes (small codebooks); min_mean_usage: warning when
    the mean over levels is under this; drop: warning when the mean falls below this share
    of its best so far; after_step: validations before this step are not judged (a codec
    may start collapsed and recover).
    """

    min_level_usage: float = Field(0.05, ge=0, le=1)
    min_codes: int = Field(4, ge=1)
    min_mean_usage: float = Field(0.1, ge=0, le=1)
    drop: float = Field(0.5, gt=0, lt=1)
    after_step: int = Field(50, ge=0)


class PosteriorCollapseConfig(MonitorConfig):
    """A VAE's latent unused: no active unit (error) or few (warning, under
    `min_active_share` of the dimensions); validations before `after_step` are not judged
    (the KL warm-up may start from a collapsed posterior)."""

    min_active_share: float = Field(0.02, ge=0, le=1)
    after_step: int = Field(200, ge=0)


class LossSpikeConfig(MonitorConfig):
    """A logged loss far above its running median, or rising for long.

    factor: warning when a value exceeds `factor` x the median of the previous `window`
    values (and the median by at least `min_delta`); error_factor: error at that multiple;
    rise_factor: warning when the median of the last `window // 4` values exceeds the
    median of the `window` before them by this multiple (a sustained rise).
    """

    factor: float = Field(10.0, gt=1)
    error_factor: float = Field(100.0, gt=1)
    rise_factor: float = Field(3.0, gt=1)
    window: int = Field(64, ge=8)
    min_points: int = Field(10, ge=3)
    min_delta: float = Field(0.1, ge=0)


class GradSpikeConfig(MonitorConfig):
    """A network's grad norm far above its running median, or clipping on most steps.

    factor / error_factor: as for loss_spike, on grad_norm/<optimizer>; clip_share:
    warning when clipping was active on more than this share of the last `window` steps.
    """

    factor: float = Field(50.0, gt=1)
    error_factor: float = Field(1000.0, gt=1)
    window: int = Field(64, ge=8)
    min_points: int = Field(10, ge=3)
    clip_share: float = Field(0.9, gt=0, le=1)


class DiscriminatorDominanceConfig(MonitorConfig):
    """The adversarial game out of balance (keys name the task's logged losses).

    Dominance: the discriminator loss's median over the last `window` steps under
    `d_floor` x its median over its first `window` steps while the generator's adversarial
    loss median rose above `g_rise` x its first; for `patience` checks in a row. Never
    learns: after `min_steps` discriminator updates its loss median is still at least
    `stuck` x its first (warning).
    """

    d_loss: str = "loss/d"
    g_loss: list[str] = Field(default_factory=lambda: ["loss/adversarial"])
    window: int = Field(25, ge=4)
    d_floor: float = Field(0.5, gt=0, lt=1)
    g_rise: float = Field(1.5, gt=1)
    patience: int = Field(2, ge=1)
    min_steps: int = Field(300, ge=10)
    stuck: float = Field(0.98, gt=0)


class EosUntrainedConfig(MonitorConfig):
    """A token LM that never learns to stop: no EOS target within the first `min_steps`
    steps (error), or a mean predicted EOS probability at EOS targets under `min_prob`
    after `prob_after` steps (warning)."""

    min_steps: int = Field(50, ge=1)
    min_prob: float = Field(0.01, gt=0, lt=1)
    prob_after: int = Field(500, ge=1)


class ValidVsGenerationConfig(MonitorConfig):
    """LM validation loss rising while training loss falls and the temperature-0 demos
    still change: `rises` validations in a row above the best by `margin` (relative), train
    loss down by `margin` over the same span, and a generation diagnostic moved by more than
    `moved` (relative)."""

    rises: int = Field(2, ge=1)
    margin: float = Field(0.02, ge=0)
    moved: float = Field(0.05, ge=0)
    valid_key: str = "valid/loss"
    train_key: str = "loss/lm"


class HealthConfig(Strict):
    """Training-health monitors (see soundry.health)."""

    enabled: bool = True
    check_every: int = Field(25, ge=1)
    crop_coverage: CropCoverageConfig = Field(default_factory=CropCoverageConfig)
    sample_rate: SampleRateConfig = Field(default_factory=SampleRateConfig)
    silence: SilenceConfig = Field(default_factory=SilenceConfig)
    output_saturation: OutputSaturationConfig = Field(default_factory=OutputSaturationConfig)
    codebook_collapse: CodebookCollapseConfig = Field(default_factory=CodebookCollapseConfig)
    posterior_collapse: PosteriorCollapseConfig = Field(
        default_factory=PosteriorCollapseConfig)
    loss_spike: LossSpikeConfig = Field(default_factory=LossSpikeConfig)
    grad_spike: GradSpikeConfig = Field(default_factory=GradSpikeConfig)
    discriminator_dominance: DiscriminatorDominanceConfig = Field(
        default_factory=DiscriminatorDominanceConfig)
    eos_untrained: EosUntrainedConfig = Field(default_factory=EosUntrainedConfig)
    valid_vs_generation: ValidVsGenerationConfig = Field(
        default_factory=ValidVsGenerationConfig)
