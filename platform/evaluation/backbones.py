"""The networks the metrics are computed with: the FAD audio embedder (VGGish, or the mel classifier's audio
embedding when VGGish's weights are absent), the Inception FID on mel images, and the mel classifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipsynth_core import MelConfig
from clipsynth_platform.runtime.logs import LogFn, progress

from .config import EvalConfig, is_random_identity
from .embedders import (
    AudioEmbedder,
    BackboneWeightsError,
    build_audio_embedder,
    resolve_vggish_path,
    vggish_help,
)
from .inception_fid import build_mel_image_fid
from .mel_classifier import (
    ClassifierAudioEmbedder,
    ClassifierFeatures,
    MelFeatureExtractor,
    build_mel_feature_extractor,
)


def is_random(backbone: Any) -> bool:
    return bool(getattr(backbone, "random", False)) or is_random_identity(backbone.identity)


@dataclass
class Backbones:
    embedder: AudioEmbedder
    fad_metric: str  # "fad" (VGGish) or "fad_melclf"
    fid: MelFeatureExtractor | None
    extractor: MelFeatureExtractor | None  # the mel classifier: fd_melclf and relevance
    fad_fallback: str | None = None  # why FAD is not VGGish's, when it fell back
    fid_absent: str | None = None  # why fid is not computed

    @classmethod
    def build(
        cls, config: EvalConfig, mel: MelConfig, labels: tuple[str, ...], device: torch.device, log: LogFn | None = None
    ) -> Backbones:
        """The backbones the config names (loading their weights); `mel` is the bundle's mel."""
        log = log or progress("evaluate")
        extractor = (
            None
            if config.mel_classifier.lower() == "none"
            else build_mel_feature_extractor(config.mel_classifier, device, labels=labels)
        )
        embedder, fad_fallback = _fad_embedder(config.fad_backbone, extractor, mel, device, log)
        fid, fid_absent = _mel_image_fid(config.fid_backbone, mel.segment_frames, device, log)
        backbones = cls(embedder, getattr(embedder, "metric_name", "fad"), fid, extractor, fad_fallback, fid_absent)
        for name, backbone in (("FAD", embedder), ("FID", fid), ("mel classifier", extractor)):
            if backbone is not None and is_random(backbone):
                log(f"note: the {name} backbone {backbone.identity} is RANDOM: its numbers carry no meaning")
        return backbones

    def random_metrics(self) -> list[str]:
        """The metrics this evaluation computes with a random backbone."""
        out = []
        if is_random(self.embedder):
            out.append(self.fad_metric)
        if self.fid is not None and is_random(self.fid):
            out.append("fid")
        if self.extractor is not None and is_random(self.extractor):
            out += ["fd_melclf", "relevance"]
        return out


def _classifier_embedder(extractor: MelFeatureExtractor | None, mel: MelConfig, why: str) -> ClassifierAudioEmbedder:
    if not isinstance(extractor, ClassifierFeatures):
        raise BackboneWeightsError(
            f"{why}, and there is no mel classifier to fall back on (--mel-classifier DIR, or "
            "$CLIPSYNTH_MEL_CLASSIFIER; train one with jobs/train_mel_classifier.py)"
        )
    return ClassifierAudioEmbedder(extractor, mel)


def _fad_embedder(
    spec: str, extractor: MelFeatureExtractor | None, mel: MelConfig, device: torch.device, log: LogFn
) -> tuple[AudioEmbedder, str | None]:
    """The FAD embedder `--fad-backbone` names, and why it fell back from VGGish (None when it did not)."""
    spec = str(spec).strip()
    if spec in ("melclf", "mel-classifier"):
        return _classifier_embedder(extractor, mel, f"--fad-backbone {spec} needs the mel classifier"), None
    if spec == "auto":
        path, where = resolve_vggish_path()
        if path is not None:
            return build_audio_embedder(f"vggish:{path}", device), None
        fallback = f"no VGGish weights at {where}"
        embedder = _classifier_embedder(extractor, mel, vggish_help(f"no file at {where}"))
        log(
            f"note: {fallback}; FAD is measured with the mel classifier's audio embedding "
            f"and logged as {embedder.metric_name} (not comparable to VGGish FADs). See jobs/evaluate.py --help."
        )
        return embedder, fallback
    return build_audio_embedder(spec, device), None


def _mel_image_fid(
    spec: str, window_frames: int, device: torch.device, log: LogFn
) -> tuple[MelFeatureExtractor | None, str | None]:
    """The Inception FID `--fid-backbone` names, or None and why it is absent."""
    spec = str(spec).strip()
    if spec.lower() == "none":
        return None, "disabled (--fid-backbone none)"
    try:
        return build_mel_image_fid(spec, device, window_frames=window_frames), None
    except BackboneWeightsError as exc:
        if spec != "inception":  # a file asked for by name must be there
            raise
        log(f"note: fid is not computed: {exc}")
        return None, "no FID Inception weights"
