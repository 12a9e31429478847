"""What the demo tells its user: banners in the log, and the closing one that says where everything is."""

from __future__ import annotations

from typing import Any

from clipsynth_platform.runtime.logs import LogFn

BANNER_WIDTH = 100
NAN = float("nan")


def banner(lines: list[str], log: LogFn) -> None:
    log("#" * BANNER_WIDTH)
    for line in lines:
        log(f"# {line}")
    log("#" * BANNER_WIDTH)


def closing_lines(summary: dict[str, Any], listened: Any) -> list[str]:
    """The closing banner: the figures to look at and the commands to look further (from demo_summary.json's
    fields, and the served audio's judgement: relevance, chance, judgements)."""
    root, tracking, model_uri = summary["output"], summary["mlflow_tracking_uri"], summary["model_uri"]
    metrics = summary["metrics"]
    zero_shot = summary["clip_zero_shot"] or {}
    text, image = metrics.get("image/text", {}), metrics.get("image/image", {})
    lines = [
        f"Done in {summary['seconds']:.0f} s. Everything is under {root}",
        f"  CLIP: {summary['clip_encoder']} ({summary['clip']}); zero-shot on the corpus frames "
        f"{zero_shot.get('accuracy', NAN):.2f}",
        f"  relevance of generated mels: image queries {image.get('relevance', NAN):.2f}, text queries "
        f"{text.get('relevance', NAN):.2f} (chance {listened.chance:.3f})",
        f"  served audio ({summary['serving_vocoder']}), re-analysed and classified: relevance "
        f"{listened.relevance:.2f} over {len(listened.judgements)} text queries",
        f"  samples (16 kHz wav): {root}/samples",
        f"  shards: {summary['shards']}   corpus: {summary['corpus']}",
        f"  model: {model_uri}",
        "Look and listen in MLflow:",
        f"  .venv/bin/mlflow ui --backend-store-uri {tracking}   then open http://127.0.0.1:5000",
        "Serve the model again and open its page:",
        f"  MLFLOW_TRACKING_URI={tracking} CLIPSYNTH_MODEL_URI={model_uri} .venv/bin/serve run serve:app"
        "   then open http://127.0.0.1:8000/",
    ]
    if summary["clip_random"]:
        lines.append("CLIP was RANDOM (--clip-pretrained none): text queries carry no meaning in this run.")
    return lines
