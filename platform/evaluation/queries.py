"""The test queries: a seeded draw of test rows, frames and noise seeds, identical for text and image queries
so the two differ only in the modality. Text queries put the row's label in the dataset's template; image
queries take the drawn frame's stored CLIP embedding when the split was embedded with the model's CLIP, else
its JPEG (encoded by the model's CLIP on the actors)."""

from __future__ import annotations

import numpy as np

from clipsynth_platform.datasets.schema import image_embeddings_of
from clipsynth_platform.datasets.splits import gather_rows

from .context import EvalContext
from .generation import SampleSpec


def plan_queries(context: EvalContext, query_type: str) -> list[SampleSpec]:
    """The seeded draw of test rows, frames and noise seeds (identical for text and image queries)."""
    c = context.config
    test_rows = context.test_rows
    labelled = [i for i, r in enumerate(test_rows) if r["label"] is not None and r["frame_times"]]
    eligible = labelled or [i for i, r in enumerate(test_rows) if r["frame_times"]]
    if query_type == "text" and not labelled:
        raise ValueError("text queries need labels, and no test row has one")
    if not eligible:
        raise ValueError("no test row has frames to query with")
    rng = np.random.default_rng(c.seed)
    rows = rng.choice(np.asarray(eligible), size=c.num_samples, replace=True)
    frames = [int(rng.integers(0, len(test_rows[r]["frame_times"]))) for r in rows]
    seeds = rng.integers(0, 2**31 - 1, size=c.num_samples)
    specs = []
    for i, (r, f, s) in enumerate(zip(rows.tolist(), frames, seeds.tolist())):
        label = test_rows[r]["label"]
        text = c.template.format(label=label.replace("_", " ")) if query_type == "text" else None
        specs.append(SampleSpec(index=i, seed=int(s), label=label, text=text, row=r, frame=f))
    if query_type == "image":
        attach_images(context, specs)
    return specs


def attach_images(context: EvalContext, specs: list[SampleSpec]) -> None:
    """Give each spec its frame's stored embedding or JPEG, as `--image-queries` says."""
    mode = context.config.image_queries
    data = context.config.data
    sources = [s.source for s in specs]
    rows = sorted({r for r, _ in sources})
    identity = context.synth.config.clip.identity
    stored_ok = all(context.test_rows[r]["clip_model"] == identity for r in rows)
    if mode == "stored" and not stored_ok:
        found = sorted({context.test_rows[r]["clip_model"] for r in rows})
        raise ValueError(f"the test split was embedded with CLIP {found}, the model uses {identity!r}; use frames")
    if mode == "stored" or (mode == "auto" and stored_ok):
        got = gather_rows(data, "test", ["image_embeddings", "embed_dim"], rows)
        for s, (row, frame) in zip(specs, sources):
            s.embedding = image_embeddings_of(got[row])[frame]
        return
    got = gather_rows(data, "test", ["frames_jpeg"], rows)
    for s, (row, frame) in zip(specs, sources):
        jpeg = got[row]["frames_jpeg"][frame]
        if not jpeg:
            raise ValueError(
                f"test row {row} has no JPEG for frame {frame} and its stored embeddings come from "
                f"another CLIP ({context.test_rows[row]['clip_model']!r}, model: {identity!r})"
            )
        s.jpeg = jpeg
