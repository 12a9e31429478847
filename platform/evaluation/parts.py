"""What one evaluation invocation works with, whatever it scores: the config, what was loaded (the context), the
backbones, the reference statistics and the sampler. The variants (variants.py) and the MLflow side
(tracking.py) read these; the runner adds the variant that is scored (runner.Evaluation)."""

from __future__ import annotations

from clipsynth_platform.runtime.logs import LogFn, progress

from .backbones import Backbones
from .context import EvalContext
from .generation import EvalSampler, SamplingOptions
from .references import References


class EvalParts:
    def __init__(self, context: EvalContext, backbones: Backbones, model_name: str, log: LogFn | None = None) -> None:
        self.log = log or progress("evaluate")
        self.config = context.config
        self.context = context
        self.backbones = backbones
        self.model_name = model_name
        self.references = References(context, backbones, self.log)
        c = self.config
        options = SamplingOptions(steps=c.steps, sampler=c.sampler, guidance=c.guidance, seconds=c.seconds, gap=c.gap)
        self.sampler = EvalSampler(
            context.bundle_dir, options, c.batch_size, c.num_workers, c.cpus_per_worker, c.ray_address, self.log
        )

    def close(self) -> None:
        self.sampler.close()
        self.context.close()
