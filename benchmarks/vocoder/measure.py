"""What the vocoder benchmark measures on: the demo's train audio, its test windows, its generated mels and the
judge (the metrics themselves: clipsynth_platform.evaluation.vocoder_quality).

`BenchmarkInputs.load` gathers, once per run:
- the train split's audio (what the HiFi-GAN trains on);
- the test split's windows (`reference_windows`: 4.16 s of real audio and its mel, `windows_per_chunk` a chunk);
- generated mels: the demo's diffusion bundle sampled for "playing {class}" of every class, `per_class` seeds
  each, DDPM at `steps` (the service's 25), cached in a .npz under the work directory (keyed by the bundle's
  weights and these settings);
- the judge: the demo's mel classifier.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipsynth_platform.evaluation.mel_classifier import ClassifierFeatures, MelClassifier
from clipsynth_platform.evaluation.vocoder_quality import (
    ReferenceWindows,
    Vocode,
    VocoderQuality,
    generated_class_mels,
    reference_windows,
    score_vocoder,
)


@dataclass
class BenchmarkInputs:
    train_audio: list[np.ndarray]  # int16 PCM of each train chunk
    reference: ReferenceWindows  # real test windows
    generated_mels: torch.Tensor  # [G, 64, 64] from the demo's diffusion bundle
    generated_labels: list[str]  # the class each generated mel was asked for
    judge: MelClassifier

    @classmethod
    def load(
        cls,
        data: str,
        classifier: str,
        bundle_uri: str,
        cache_dir: Path,
        *,
        windows_per_chunk: int = 2,
        per_class: int = 8,
        steps: int = 25,
        seed: int = 0,
        log: Callable[[str], None] = print,
    ) -> BenchmarkInputs:
        from clipsynth_platform.datasets.splits import iter_split_rows

        judge = MelClassifier.load(classifier)
        train = [np.asarray(r["audio"], np.int16) for r in iter_split_rows(data, "train", ["audio"]) if r["audio"]]
        if not train:
            raise SystemExit(f"{data} has no train audio (run `make demo` first)")
        reference = reference_windows(data, "test", windows_per_chunk)
        if bundle_uri:
            generated, intended = cached_generated_mels(
                bundle_uri, list(judge.config.labels), cache_dir, per_class=per_class, steps=steps, seed=seed, log=log
            )
        else:  # a recipe probe before the demo's diffusion model exists: the real-audio figures only
            generated, intended = torch.zeros(0, 64, 64), []
        return cls(train, reference, generated, intended, judge)

    def score(self, vocode: Vocode) -> VocoderQuality:
        return score_vocoder(vocode, self.judge, self.generated_mels, self.generated_labels, self.reference)

    def judge_mels(self) -> dict[str, float]:
        """The judge on the mels themselves, no vocoder: the ceiling of the relevance columns."""
        features = ClassifierFeatures(self.judge, "judge", "cpu")
        nan = float("nan")
        labels = list(self.judge.config.labels)

        def accuracy(mels: torch.Tensor, intended: list[str]) -> float:
            probs = features.predict_proba(mels)
            return float(np.mean([labels[int(p.argmax())] == want for p, want in zip(probs, intended)]))

        return {
            "generated_mels": accuracy(self.generated_mels, self.generated_labels) if self.generated_labels else nan,
            "real_test_mels": accuracy(self.reference.mels, self.reference.labels),
        }


def cached_generated_mels(
    bundle_uri: str,
    labels: list[str],
    cache_dir: Path,
    *,
    per_class: int,
    steps: int,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, list[str]]:
    """generated_class_mels of the bundle, cached by its U-Net weights, the classes, count, steps and seed."""
    from clipsynth_core import Synthesizer
    from clipsynth_platform.tracking.registry import resolve_bundle

    bundle_dir = resolve_bundle(bundle_uri)
    weights = hashlib.sha256((Path(bundle_dir) / "unet.safetensors").read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps([weights, labels, per_class, steps, seed]).encode()).hexdigest()[:16]
    path = cache_dir / f"generated_{key}.npz"
    if path.exists():
        cached = np.load(path)
        return torch.from_numpy(cached["mels"]), [str(x) for x in cached["labels"]]
    t0 = time.perf_counter()
    mels, intended = generated_class_mels(Synthesizer.load(bundle_dir), labels, per_class, steps, seed)
    log(f"[vocoder] sampled {len(intended)} mels from {bundle_uri} in {time.perf_counter() - t0:.0f} s -> {path}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, mels=mels.numpy(), labels=np.array(intended))
    return mels, intended
