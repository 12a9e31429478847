"""The Ray Serve app end to end on the session's local Ray, serving a tiny bundle registered in a temporary
MLflow registry (SQLite) and loaded by its models:/ URI (tests/serve_service.py starts it): HTTP API, dynamic
batching, every kind of bad input, backpressure (503), and the web page in headless Chromium.

Audio is checked against the core Synthesizer run in this process on the same bundle, seed and steps.
"""

from __future__ import annotations

import asyncio
import io
import wave

import httpx
import numpy as np
import pytest
import torch
from serve_service import CHROMIUM_ARGS, chromium_page, mlflow_tracking

from clipsynth_core import Synthesizer

pytestmark = pytest.mark.ray

SECONDS_TO_SAMPLES = {4.16: 66_560, 8.32: 132_096}  # (frames - 1) * hop + n_fft


def read_wav(data: bytes) -> tuple[int, int, int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), pcm


def pcm16(wave_float: torch.Tensor) -> np.ndarray:
    """The independent reference for the service's WAV samples."""
    return np.round(np.clip(wave_float.numpy(), -1, 1) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def reference(served_bundle) -> Synthesizer:
    return Synthesizer.load(served_bundle)


def test_the_registered_model_resolves_to_the_same_bundle(registered_model, served_bundle, tmp_path):
    from clipsynth_platform.tracking.registry import resolve_bundle

    tracking, model_uri = registered_model
    with mlflow_tracking(tracking):
        local = resolve_bundle(model_uri, dst=tmp_path)
    for name in ("bundle.json", "unet.safetensors", "vocoder.safetensors", "clip.safetensors"):
        assert (local / name).read_bytes() == (served_bundle / name).read_bytes(), name


def post_many(base: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    async def go():
        async with httpx.AsyncClient(base_url=base, timeout=180) as c:
            return await asyncio.gather(*[c.post(path, json=b) for b in bodies])

    return asyncio.run(go())


# ----------------------------------------------------------------------------------------------- basics
def test_healthz_reports_the_identity_of_the_model_from_the_mlflow_registry(client, reference):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["auth_required"] is False
    assert body["model_uri"] == "models:/clipsynth-serve-test/1"
    assert body["identity"] == reference.identity
    assert body["trained_steps"] == 100 and body["guidance_allowed"] is False
    # a bundle without gap statistics: no reduction by default
    assert body["defaults"] == {
        "steps": 2,
        "sampler": "ddpm",
        "seconds": 4.16,
        "guidance": 0.0,
        "gap_reduction": "none",
    }


@pytest.mark.parametrize("seconds", [4.16, 8.32])
def test_synthesize_answers_a_16k_mono_16bit_wav_equal_to_the_core_synthesizer(client, reference, seconds):
    r = client.post("/synthesize", json={"query": "a dog barking", "seed": 1234, "seconds": seconds})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert (r.headers["x-seed"], r.headers["x-steps"], r.headers["x-sampler"]) == ("1234", "2", "ddpm")
    rate, channels, width, pcm = read_wav(r.content)
    assert (rate, channels, width) == (16_000, 1, 2)
    frames = round(seconds / 4.16 * 64)
    assert len(pcm) == SECONDS_TO_SAMPLES[seconds] == (frames - 1) * 1024 + 2048
    # 64 frames are 4.16 s exactly; 128 frames end 1,024 samples short of 8.32 s (the last hop is not a frame).
    assert len(pcm) / rate == pytest.approx({4.16: 4.16, 8.32: 8.256}[seconds])
    expected = pcm16(reference.synthesize(["a dog barking"], steps=2, seed=[1234], seconds=seconds)[0])
    # Same bundle, seed and steps: the same samples (a 16-bit step of slack for float rounding across threads).
    assert np.abs(pcm.astype(np.int32) - expected).max() <= 2
    assert np.abs(expected).max() > 100  # not silence


def test_identical_seed_gives_identical_audio_and_a_random_seed_is_reported(client):
    body = {"query": "rain on a roof", "seed": 77, "steps": 3}
    first, second = client.post("/synthesize", json=body), client.post("/synthesize", json=body)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    other_seed = client.post("/synthesize", json={**body, "seed": 78})
    assert read_wav(other_seed.content)[3].tolist() != read_wav(first.content)[3].tolist()
    other_query = client.post("/synthesize", json={**body, "query": "a church bell"})
    assert read_wav(other_query.content)[3].tolist() != read_wav(first.content)[3].tolist()
    unseeded = client.post("/synthesize", json={"query": "rain on a roof", "steps": 3})
    seed = int(unseeded.headers["x-seed"])
    assert 0 <= seed <= 2**31 - 1
    replay = client.post("/synthesize", json={"query": "rain on a roof", "steps": 3, "seed": seed})
    assert replay.content == unseeded.content


def test_concurrent_requests_share_batches_and_each_gets_its_own_audio(service, reference):
    bodies = [{"query": q, "seed": 10 + i} for i, q in enumerate(["violin", "dog", "violin", "thunder"])]
    bodies.append({"query": "dog", "seed": 99, "steps": 3})  # a different step count in the same burst
    responses = post_many(service, "/synthesize", bodies)
    assert [r.status_code for r in responses] == [200] * len(bodies)
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    assert max(sizes[:4]) > 1, f"no shared batch among concurrent requests: {sizes}"
    assert sizes[4] == 1  # alone in its (steps=3) group whatever shared the dynamic batch
    # A request that shared a batch, and the odd one out, get what they get alone (the unit tests check this
    # for every member of mixed batches; here the whole path through the deployments is checked).
    shared = next(i for i in range(4) if sizes[i] > 1)
    for i in (shared, 4):
        body = bodies[i]
        alone = pcm16(reference.synthesize([body["query"]], steps=body.get("steps", 2), seed=[body["seed"]])[0])
        assert np.abs(read_wav(responses[i].content)[3].astype(np.int32) - alone).max() <= 2
    assert len({r.content for r in responses}) == len(bodies)  # five different sounds
    stats = httpx.get(f"{service}/healthz").json()["sampler_stats"]
    assert stats["largest_batch"] > 1 and stats["requests"] >= len(bodies)


def test_an_image_upload_is_a_query(client, reference):
    from PIL import Image

    image = (np.indices((48, 40)).sum(0) * 3 % 256).astype(np.uint8)[..., None].repeat(3, axis=2)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    r = client.post(
        "/synthesize/image",
        files={"image": ("frame.png", buf.getvalue(), "image/png")},
        data={"seed": "5", "steps": "2"},
    )
    assert r.status_code == 200, r.text
    cond = reference.encoder.encode_image(image[None])
    expected = pcm16(reference.vocode(reference.sample_mels(cond, steps=2, seed=[5])).cpu()[0])
    assert np.abs(read_wav(r.content)[3].astype(np.int32) - expected).max() <= 2


# ------------------------------------------------------------------------------------------------ errors
def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


BAD_REQUESTS = {
    "missing query": ("/synthesize", {"json": {"steps": 2}}, 422, "query: field required"),
    "empty query": ("/synthesize", {"json": {"query": ""}}, 422, "query"),
    "too long query": ("/synthesize", {"json": {"query": "x" * 201}}, 422, "at most 200 characters"),
    "steps too small": ("/synthesize", {"json": {"query": "a", "steps": 0}}, 422, "steps"),
    "steps above 1000": ("/synthesize", {"json": {"query": "a", "steps": 1001}}, 422, "steps"),
    "steps above trained": ("/synthesize", {"json": {"query": "a", "steps": 101}}, 422, "trained with"),
    "seconds not allowed": ("/synthesize", {"json": {"query": "a", "seconds": 3}}, 422, "seconds must be one of"),
    "guidance without dropout": ("/synthesize", {"json": {"query": "a", "guidance": 2}}, 422, "cond_drop_prob"),
    "guidance too large": ("/synthesize", {"json": {"query": "a", "guidance": 25}}, 422, "guidance"),
    "seed out of range": ("/synthesize", {"json": {"query": "a", "seed": 2**31}}, 422, "seed"),
    "wrong type": ("/synthesize", {"json": {"query": "a", "steps": "ten"}}, 422, "valid integer"),
    "unknown field": ("/synthesize", {"json": {"query": "a", "prompt": "b"}}, 422, "prompt: unknown field"),
    "invalid json": (
        "/synthesize",
        {"content": b'{"query": "a"', "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
    ),
    "not an object": ("/synthesize", {"json": ["a"]}, 400, "JSON object"),
    "oversized body": ("/synthesize", {"json": {"query": "a", "pad": "x" * 20_000}}, 413, "limit"),
    "form instead of json": ("/synthesize", {"data": {"query": "a"}}, 415, "application/json"),
    "non-image upload": (
        "/synthesize/image",
        {"files": {"image": ("a.png", b"this is text", "image/png")}},
        415,
        "not an image",
    ),
    "upload without image": ("/synthesize/image", {"data": {"seed": "1"}, "files": {"x": ("x", b"1")}}, 422, "image"),
    "json to image endpoint": ("/synthesize/image", {"json": {"query": "a"}}, 415, "multipart/form-data"),
    "bad image option": (
        "/synthesize/image",
        {"files": {"image": ("a.png", _png(), "image/png")}, "data": {"steps": "0"}},
        422,
        "steps",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_every_kind_of_bad_input_gets_a_4xx_json_error(client, kind):
    path, kwargs, status, fragment = BAD_REQUESTS[kind]
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert fragment in r.json()["error"]


def test_unknown_routes_and_methods_get_json_errors(client):
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json()
    r = client.get("/synthesize")
    assert r.status_code == 405 and "error" in r.json()


def test_oversized_image_is_refused_before_decoding(service):
    # Over the 8 MiB image limit announced by Content-Length: refused without reading it.
    payload = b"\x89PNG" + b"\0" * (8 * 1024 * 1024 + 70 * 1024)
    r = httpx.post(f"{service}/synthesize/image", files={"image": ("big.png", payload, "image/png")}, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["error"]


# ------------------------------------------------------------------------------------------------ the page
def test_the_web_page_synthesizes_and_plays_in_headless_chromium(service):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{service}/")
            page.click("#go")  # no query yet: the page says what is missing, nothing is sent
            assert "type a query" in page.text_content("#status")
            page.fill("#query", "a violin")
            page.fill("#seed", "4")
            page.click("#go")
            page.wait_for_function(
                "() => { const a = document.getElementById('audio'); return a.src && a.readyState >= 1; }",
                timeout=90_000,
            )
            duration = page.evaluate("document.getElementById('audio').duration")
            assert duration == pytest.approx(4.16, abs=0.01)
            src = page.evaluate("document.getElementById('audio').src")
            assert src.startswith("blob:")
            assert page.get_attribute("#download", "href") == src
            assert page.get_attribute("#download", "download") == "clipsynth-4.wav"
            assert page.is_visible("#download")
            assert "seed 4" in page.text_content("#status")
        finally:
            browser.close()


def test_the_page_shows_the_model_card_the_mel_and_the_last_results(service):
    with chromium_page(f"{service}/") as page:
        page.wait_for_selector("#card dl", timeout=60_000)
        card = page.text_content("#card")
        assert "tiny" in card and "unknown classes" in card and "not trained for" in card
        assert page.is_disabled("#guidance")  # the tiny model has no condition dropout
        assert page.eval_on_selector_all("#gap option", "os => os.map(o => o.value)") == ["", "none"]
        for seed in ("1", "2"):
            page.fill("#query", f"a violin {seed}")
            page.fill("#seed", seed)
            page.click("#go")
            page.wait_for_function(f"() => document.querySelectorAll('#history li').length == {seed}", timeout=90_000)
        # The mel of the last result, drawn from the X-Mel header: 64 mel rows, 64 frames, not blank.
        assert page.evaluate("[document.getElementById('mel').width, document.getElementById('mel').height]") == [
            64,
            64,
        ]
        spread = page.evaluate(
            "(() => { const c = document.getElementById('mel'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let lo = 255, hi = 0;"
            " for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }"
            " return hi - lo; })()"
        )
        assert spread > 20
        items = page.locator("#history li")
        assert "a violin 2 (seed 2, guidance 0.0, gap none)" in items.nth(0).text_content()
        assert "a violin 1 (seed 1" in items.nth(1).text_content()
        # The older result replays: its audio element still holds its clip.
        items.nth(1).locator("audio").evaluate("a => a.load()")
        page.wait_for_function(
            "() => document.querySelectorAll('#history li audio')[1].readyState >= 1", timeout=30_000
        )
        assert items.nth(1).locator("audio").evaluate("a => a.duration") == pytest.approx(4.16, abs=0.01)
        # A model whose card names its classes offers them as example queries, and a click synthesizes one.
        page.evaluate(
            "showCard({card: {encoder: 'toy', classes: ['acoustic_guitar', 'cello'], gap_methods: ['none']},"
            " defaults: {guidance: 0, gap_reduction: 'none'}})"
        )
        labels = page.eval_on_selector_all("#examples button", "bs => bs.map(b => b.textContent)")
        assert labels == ["playing acoustic guitar", "playing cello", "playing acoustic guitar + playing cello"]
        page.click("#examples button >> nth=2")
        page.wait_for_function("() => document.querySelectorAll('#history li').length == 3", timeout=90_000)
        assert page.input_value("#query") == "playing acoustic guitar + playing cello"


# ------------------------------------------------------------------------------------ bounded queue -> 503
def test_overload_gets_503_with_retry_after(service):
    """The sampler holds 4 requests (one batch) and queues 5 more. Four slow requests fill it, then a burst of
    twelve quick ones arrives while they run: at most five fit in the queue, the rest are turned away at once."""

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service, timeout=180) as c:
            slow = [
                asyncio.create_task(c.post("/synthesize", json={"query": f"slow {i}", "seed": i, "steps": 15}))
                for i in range(4)
            ]
            await asyncio.sleep(0.5)
            burst = [c.post("/synthesize", json={"query": f"quick {i}", "seed": i, "steps": 1}) for i in range(12)]
            return await asyncio.gather(*slow, *burst)

    responses = asyncio.run(go())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503}, codes
    assert codes.count(503) >= 3, codes  # 16 requests, room for 9 at a time
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2"
            assert "capacity" in r.json()["error"]
    assert httpx.get(f"{service}/healthz").status_code == 200  # and it recovers
