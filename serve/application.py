"""The composed application: SynthesizerIngress -> ClipEncoder, DiffusionSampler, Vocoder.

serve run serve:app                                   # defaults, model from CLIPSYNTH_MODEL_URI
serve run serve:app_builder model_uri=/path/to/bundle default_steps=50 sampler.num_gpus=0.5
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from clipsynth_platform.runtime.logs import configure_logging, get_logger

from .config import ServeConfig
from .deployments import ClipEncoder, DiffusionSampler, Vocoder
from .ingress import SynthesizerIngress

logger = get_logger("serve")


def build_app(config: ServeConfig) -> Application:
    """Bind the four deployments with the replica, resource and queue settings of `config`."""
    configure_logging()  # the driver's lines; each replica configures its own process the same way
    config.validate()
    if not config.model_uri:
        # Bind the URI now (the driver's environment): replicas on other nodes may not share that environment.
        config.model_uri = config.resolved_model_uri()
    logger.info("CLIPSynth serve config: %s", json.dumps(config.loggable(), sort_keys=True))
    retry = config.retry_after_s
    encoder = ClipEncoder.options(**config.encoder.options(retry)).bind(config)
    sampler = DiffusionSampler.options(**config.sampler.options(retry)).bind(config)
    vocoder = Vocoder.options(**config.vocoder.options(retry)).bind(config)
    return SynthesizerIngress.options(**config.ingress.options(retry)).bind(encoder, sampler, vocoder, config)


def app_builder(args: Mapping[str, Any]) -> Application:
    """`serve run serve:app_builder key=value ...`: ServeConfig fields, dotted for deployments."""
    return build_app(ServeConfig.from_args(dict(args)))


app = build_app(ServeConfig())
