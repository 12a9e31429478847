"""Settings of the service: one typed dataclass with the defaults, overridable as app-builder arguments.

    serve run serve:app_builder model_uri=models:/clipsynth/3 default_steps=50 sampler.num_gpus=0.5 \
        sampler.max_replicas=4 sampler.max_queued_requests=32

Nested deployment settings take dotted keys (`encoder.`, `sampler.`, `vocoder.`, `ingress.`). `serve run
serve:app` uses the defaults, with the model from CLIPSYNTH_MODEL_URI. A Serve config file can override the
same deployment options under `deployments:` (see serve_config.yaml).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from clipsynth_core.diffusion import SAMPLERS
from clipsynth_core.precision import PRECISIONS

MODEL_URI_ENV = "CLIPSYNTH_MODEL_URI"
ALLOWED_SECONDS = (4.16, 8.32)  # 64 and 128 mel frames, the paper's two lengths


@dataclass
class DeploymentSettings:
    """Replicas (autoscaling between min and max), resources per replica and queue bounds of one deployment."""

    min_replicas: int = 1
    max_replicas: int = 1  # above min_replicas turns autoscaling on
    target_ongoing_requests: float = 2.0  # autoscaling target per replica
    num_cpus: float = 1.0
    num_gpus: float = 0.0  # a fraction shares one GPU between replicas
    max_ongoing_requests: int = 8  # requests a replica holds at once (must cover its batch size)
    max_queued_requests: int = 64  # requests waiting at each caller beyond that; more get 503

    def validate(self, name: str) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(f"{name}: need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"{name}: num_cpus and num_gpus must be >= 0")
        if self.max_ongoing_requests < 1:
            raise ValueError(f"{name}: max_ongoing_requests must be >= 1")
        if self.max_queued_requests < 1 and self.max_queued_requests != -1:
            raise ValueError(f"{name}: max_queued_requests must be >= 1 (or -1 for unbounded)")
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"{name}: target_ongoing_requests must be > 0")

    def options(self, retry_after_s: float) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options`."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            # HTTP requests that Serve itself turns away (queue full at the proxy) get a Retry-After too.
            "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s},
        }
        if self.max_replicas > self.min_replicas:
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            opts["num_replicas"] = self.max_replicas
        return opts


@dataclass
class ServeConfig:
    # Bundle directory or MLflow model URI (models:/NAME/VERSION, runs:/...); empty: CLIPSYNTH_MODEL_URI.
    model_uri: str = ""
    # Where pretrained CLIP weights come from when the bundle names a tag (a local file); empty: the bundle's.
    clip_pretrained: str = ""
    # MLflow tracking server for models:/ and runs:/ URIs; empty: MLFLOW_TRACKING_URI of the replicas.
    mlflow_tracking_uri: str = ""
    device: str = "auto"  # "auto": CUDA when the replica has a GPU, else CPU
    # The sampler's U-Net passes: "auto" is bf16 autocast on a GPU (about twice the fp32 rate on tensor cores)
    # and fp32 on a CPU; the diffusion arithmetic stays fp32 either way (clipsynth_core.precision).
    sampler_precision: str = "auto"
    # torch.compile the served U-Net (dynamic shapes: each new batch size compiles once, under a minute on a
    # GPU, several on a CPU; the replica's first requests of that size wait for it).
    compile_sampler: bool = False
    # Request defaults. The paper samples with 1,000 steps; the service defaults to a fast respacing that
    # benchmarks/serve/run.py measures (10x fewer U-Net passes; improved-DDPM's learned variances keep
    # sample quality close to the full schedule at 100 steps, Nichol & Dhariwal 2021, fig. 8).
    default_steps: int = 100
    default_sampler: str = "ddpm"
    default_seconds: float = 4.16
    # Classifier-free guidance when the request gives none (models trained with condition dropout only) and
    # the gap reduction of text queries where the bundle has it: both chosen by benchmarks/beyond/run.py.
    default_guidance: float = 3.0
    default_gap_reduction: str = "prior"
    max_steps: int = 1000
    # Request size limits (HTTP 413 beyond them).
    max_json_bytes: int = 16 * 1024
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    retry_after_s: float = 5.0  # Retry-After of a 503 when a queue is full
    # Dynamic batching (@serve.batch) per deployment.
    encoder_max_batch_size: int = 32
    encoder_batch_wait_s: float = 0.005
    sampler_max_batch_size: int = 16
    sampler_batch_wait_s: float = 0.05
    vocoder_max_batch_size: int = 16
    vocoder_batch_wait_s: float = 0.005
    # CPU reservations fit `serve run serve:app` on a 2-core machine (1.75 CPUs in all): the sampler is the heavy
    # part. Clusters set their own (serve_config.yaml / infra/kuberay/rayservice.yaml, GPU fractions included).
    encoder: DeploymentSettings = field(
        default_factory=lambda: DeploymentSettings(num_cpus=0.25, max_ongoing_requests=64)
    )
    sampler: DeploymentSettings = field(
        default_factory=lambda: DeploymentSettings(num_cpus=1.0, max_ongoing_requests=32, target_ongoing_requests=16)
    )
    vocoder: DeploymentSettings = field(
        default_factory=lambda: DeploymentSettings(num_cpus=0.25, max_ongoing_requests=32)
    )
    ingress: DeploymentSettings = field(
        default_factory=lambda: DeploymentSettings(
            num_cpus=0.25, max_ongoing_requests=256, target_ongoing_requests=64, max_queued_requests=512
        )
    )

    def resolved_model_uri(self) -> str:
        return self.model_uri or os.environ.get(MODEL_URI_ENV, "")

    def validate(self) -> ServeConfig:
        if not 1 <= self.max_steps <= 1000:
            raise ValueError("max_steps must be in 1..1000")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(f"default_steps must be in 1..max_steps ({self.max_steps})")
        if self.sampler_precision not in ("auto", *PRECISIONS):
            raise ValueError(f"sampler_precision must be one of auto, {', '.join(PRECISIONS)}")
        if self.default_sampler not in SAMPLERS:
            raise ValueError(f"default_sampler must be one of {SAMPLERS}")
        if not any(abs(self.default_seconds - s) < 1e-6 for s in ALLOWED_SECONDS):
            raise ValueError(f"default_seconds must be one of {ALLOWED_SECONDS}")
        for name in ("max_json_bytes", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.default_guidance <= 20:
            raise ValueError("default_guidance must be in [0, 20]")
        if self.default_gap_reduction not in ("none", "shift", "prior"):
            raise ValueError("default_gap_reduction must be none, shift or prior")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        for part in ("encoder", "sampler", "vocoder"):
            size = getattr(self, f"{part}_max_batch_size")
            if size < 1 or getattr(self, f"{part}_batch_wait_s") < 0:
                raise ValueError(f"{part}_max_batch_size must be >= 1 and {part}_batch_wait_s >= 0")
            if getattr(self, part).max_ongoing_requests < size:
                # A replica only batches the requests it holds: fewer than a batch caps the batch size.
                raise ValueError(f"{part}.max_ongoing_requests must be >= {part}_max_batch_size ({size})")
        for part in ("encoder", "sampler", "vocoder", "ingress"):
            getattr(self, part).validate(part)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def loggable(self) -> dict:
        """to_dict() with credentials removed from URIs (an MLflow server URL may carry user:password@)."""
        d = self.to_dict()
        for key in ("model_uri", "mlflow_tracking_uri", "clip_pretrained"):
            d[key] = redact_uri(d[key])
        return d

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None = None) -> ServeConfig:
        """Build from builder arguments (`key=value`, values as strings or already typed); unknown keys fail."""
        config = cls()
        for key, raw in (args or {}).items():
            target, name = config, str(key)
            if "." in name:
                part, name = name.split(".", 1)
                sub = getattr(config, part, None)
                if not isinstance(sub, DeploymentSettings):
                    raise ValueError(f"unknown setting {key!r}; deployment parts: encoder, sampler, vocoder, ingress")
                target = sub
            fields = {f.name: f for f in dataclasses.fields(target)}
            if name not in fields or isinstance(getattr(target, name), DeploymentSettings):
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(_known_keys(cls()))}")
            setattr(target, name, _coerce(key, raw, type(getattr(target, name))))
        return config.validate()


def redact_uri(uri: str) -> str:
    """`scheme://user:secret@host/...` -> `scheme://***@host/...`; other strings unchanged."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{path}"


def _known_keys(config: ServeConfig) -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, DeploymentSettings):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


def _coerce(key: str, raw: Any, kind: type) -> Any:
    if not isinstance(raw, str):
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
            return raw
        raise ValueError(f"{key} must be a {kind.__name__}, got {raw!r}")
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        return kind(raw)
    except ValueError:
        raise ValueError(f"{key} must be a {kind.__name__}, got {raw!r}") from None
