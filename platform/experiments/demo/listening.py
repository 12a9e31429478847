"""The demo's checks of what a user hears: the Serve app asked over HTTP for every query, its wav files
re-analysed and classified, and the same mels through the HiFi-GAN and Griffin-Lim."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clipsynth_platform.runtime.console import progress_bar
from clipsynth_platform.runtime.logs import LogFn, get_logger

from .config import DemoConfig


def synthesize_over_http(config: DemoConfig, model_uri: str, log: LogFn) -> tuple[list[dict], dict]:
    """Start the Serve app on the running Ray, ask it for each query, save the wav files. Returns what was
    written and the service's /healthz (its model card)."""
    from ray import serve
    from ray._common.utils import import_attr

    detail = get_logger("demo").debug  # one line per request, in the log file
    samples = config.root / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    builder = import_attr(config.serve_import_path)
    app = builder({"model_uri": model_uri, "default_steps": config.serve_steps})
    serve.start(http_options={"host": "127.0.0.1", "port": config.serve_port})
    serve.run(app, name="clipsynth", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{config.serve_port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
                if r.status == 200:
                    health = json.loads(r.read())
                    card = health.get("card", {})
                    log(
                        f"serve: ready at {base}: {health.get('model_uri')}, trained on "
                        f"{len(card.get('classes', []))} classes, gap reduction {health['defaults']['gap_reduction']}"
                    )
                    break
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError("the Serve app did not become healthy within 180 s")
        time.sleep(1)

    def ask(query: str, label: str, seed: int, k: int) -> dict:
        body = json.dumps({"query": query, "seed": seed, "steps": config.serve_steps}).encode()
        req = urllib.request.Request(f"{base}/synthesize", data=body, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            wav = r.read()
        path = samples / f"{query.replace(' ', '_')}_{k}.wav"
        path.write_bytes(wav)
        seconds = time.perf_counter() - t0
        detail(f"serve: 'a photo of {query}' (seed {seed}) -> {path} ({len(wav)} bytes, {seconds:.1f} s)")
        bar.update(1)
        return {"query": f"a photo of {query}", "label": label, "seed": seed, "file": str(path), "seconds": seconds}

    asks = [
        (query, label, config.seed + i * config.seeds_per_query + k, k)
        for i, (query, label) in enumerate(config.query_list())
        for k in range(config.seeds_per_query)
    ]
    # As clients would: several requests in flight, so the service's dynamic batching runs them together (a
    # request's audio depends only on its query and seed, not on its batch mates; tests/test_serve_units.py).
    with (
        progress_bar(len(asks), "serve", "requests", log) as bar,
        ThreadPoolExecutor(max_workers=config.serve_concurrency, thread_name_prefix="client") as clients,
    ):
        written = list(clients.map(lambda a: ask(*a), asks))
    log(f"serve: {len(written)} wav files in {samples}")
    return written, health


def judge_served_audio(config: DemoConfig, written: list[dict], log: LogFn):
    """The served wav files, re-analysed into mels and classified by the demo's mel classifier."""
    from clipsynth_platform.evaluation.audio_relevance import judge_wav_files
    from clipsynth_platform.evaluation.mel_classifier import MelClassifier

    judged = [w for w in written if w["label"]]
    classifier = MelClassifier.load(config.root / "mel_classifier")
    result = judge_wav_files(classifier, [w["file"] for w in judged], [w["label"] for w in judged])
    for j in result.judgements:
        log(f"listen: {j.name}: heard as {j.predicted} (p[{j.intended}] = {j.intended_probability:.2f})")
    log(f"served audio relevance {result.relevance:.2f} (chance {result.chance:.3f})")
    return result


def compare_served_vocoders(config: DemoConfig, model_uri: str, log: LogFn) -> dict:
    """The same generated mels through the bundle's HiFi-GAN and Griffin-Lim, each re-analysed and classified."""
    from clipsynth_core import Synthesizer
    from clipsynth_platform.evaluation.audio_relevance import compare_vocoders
    from clipsynth_platform.evaluation.mel_classifier import MelClassifier
    from clipsynth_platform.tracking.registry import resolve_bundle

    pairs = config.query_list()
    queries = [q for q, label in pairs for _ in range(config.seeds_per_query) if label]
    labels = [label for _, label in pairs for _ in range(config.seeds_per_query) if label]
    synth = Synthesizer.load(resolve_bundle(model_uri))
    classifier = MelClassifier.load(config.root / "mel_classifier")
    seeds = [config.seed + 10_000 + i for i in range(len(queries))]
    result = compare_vocoders(synth, classifier, queries, labels, seeds, steps=config.serve_steps)
    parts = ", ".join(f"{name} {r.relevance:.2f}" for name, r in result.audio.items())
    log(f"vocoders on the same {len(queries)} mels: mel {result.mel.relevance:.2f}; audio {parts}")
    figure = class_mel_figure(config, synth, [(q, label) for q, label in pairs if label])
    log(f"generated vs real mel of every class: {figure}")
    return {**result.to_dict(), "figure": str(figure)}


def class_mel_figure(config: DemoConfig, synth, pairs: list[tuple[str, str]]) -> Path:
    """The mel generated for each class's text query beside the first test mel of that class."""
    import numpy as np

    from clipsynth_platform.datasets.splits import iter_split_rows
    from clipsynth_platform.evaluation.plots import generated_vs_real_png

    real: dict = {}
    for row in iter_split_rows(str(config.root / "shards"), "test", ["label", "mel", "n_mels", "mel_frames"]):
        if row["label"] not in real:
            mel = np.asarray(row["mel"], np.float32).reshape(row["n_mels"], row["mel_frames"])
            real[row["label"]] = mel[:, :64]
    pairs = [(q, label) for q, label in pairs if label in real]
    queries = [q for q, _ in pairs]
    generated = synth.sample_mels(synth.encode(queries), steps=config.serve_steps, seed=config.seed).cpu().numpy()
    path = config.root / "class_mels.png"
    return generated_vs_real_png(
        generated,
        np.stack([real[label] for _, label in pairs]),
        [f"a photo of {q}" for q in queries],
        [label for _, label in pairs],
        path,
    )
