"""Training health: monitors that say, unprompted, when a run is silently failing.

Monitors (ids are stable; recipes tune them under `health.<id>`):
crop_coverage, sample_rate, silence, output_saturation, codebook_collapse,
posterior_collapse, loss_spike,
grad_spike, discriminator_dominance, eos_untrained, valid_vs_generation. See
`soundry.health.config` for each monitor's thresholds and defaults, `soundry.health.runner`
for how the engine feeds them and where findings go, and `soundry.health.doctor` for the
offline re-check (`soundry doctor RUN_DIR`).

A new system adds a monitor by subclassing `Monitor` (the hooks it needs and `check`), a
config class in `health.config`, and an entry in `runner.MONITORS`.
"""

from soundry.health.config import HealthConfig
from soundry.health.core import BatchInfo, Finding, Monitor
from soundry.health.runner import MONITORS, HealthRunner, read_findings

__all__ = ["MONITORS", "BatchInfo", "Finding", "HealthConfig", "HealthRunner", "Monitor",
           "read_findings"]
