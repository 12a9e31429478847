"""The optional bearer token end to end: a second ingress ("clipsynth-secured" at /secured) in front of the
session service's model deployments (tests/serve_service.py), its token in a file named by
CLIPSYNTH_API_TOKEN_FILE in the replica's environment, as a mounted secret would be."""

from __future__ import annotations

import io
import secrets
import time
from pathlib import Path

import httpx
import pytest
from serve_service import SERVICE_ARGS, chromium_page

pytestmark = pytest.mark.ray

TOKEN = secrets.token_urlsafe(24)
WRONG = secrets.token_urlsafe(24)
CHALLENGE = 'Bearer realm="clipsynth"'


@pytest.fixture(scope="module")
def secured(service, registered_model, tmp_path_factory):
    """The URL of an ingress that requires TOKEN, sharing the session service's encoder, sampler and vocoder."""
    from ray import serve

    from serve.auth import API_TOKEN_FILE_ENV
    from serve.config import ServeConfig
    from serve.ingress import SynthesizerIngress

    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline, as secrets written from files often have
    tracking, model_uri = registered_model
    config = ServeConfig.from_args({"model_uri": model_uri, "mlflow_tracking_uri": tracking, **SERVICE_ARGS})
    handles = [
        serve.get_deployment_handle(name, "clipsynth") for name in ("ClipEncoder", "DiffusionSampler", "Vocoder")
    ]
    ingress = SynthesizerIngress.options(
        num_replicas=1,
        ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": {API_TOKEN_FILE_ENV: str(token_file)}}},
    )
    serve.run(ingress.bind(*handles, config), name="clipsynth-secured", route_prefix="/secured", blocking=False)
    url = f"{service}/secured"
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/healthz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the secured ingress did not become ready"
        time.sleep(1)
    yield url
    serve.delete("clipsynth-secured")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_synthesis_needs_the_token_and_gets_the_same_audio_with_it(secured, client):
    body = {"query": "a bell", "seed": 21, "steps": 2}
    missing = httpx.post(f"{secured}/synthesize", json=body, timeout=60)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == CHALLENGE
    assert "Authorization: Bearer" in missing.json()["error"]
    wrong = httpx.post(f"{secured}/synthesize", json=body, headers=bearer(WRONG), timeout=60)
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == f'{CHALLENGE}, error="invalid_token"'
    assert wrong.json() == {"error": "the access token is not valid"}
    other_scheme = httpx.post(f"{secured}/synthesize", json=body, auth=("user", TOKEN), timeout=60)
    assert other_scheme.status_code == 401 and other_scheme.headers["www-authenticate"] == CHALLENGE
    ok = httpx.post(f"{secured}/synthesize", json=body, headers=bearer(TOKEN), timeout=60)
    assert ok.status_code == 200 and ok.headers["content-type"] == "audio/wav"
    open_service = client.post("/synthesize", json=body)  # the same deployments behind the open ingress
    assert ok.content == open_service.content


def test_the_token_is_checked_before_the_body_is_read_or_validated(secured):
    oversized = httpx.post(
        f"{secured}/synthesize", content=b"x" * 100_000, headers={"content-type": "application/json"}, timeout=60
    )
    assert oversized.status_code == 401  # not 413: nothing is read for a caller without the token
    bad = httpx.post(f"{secured}/synthesize", json={"steps": "x"}, timeout=60)
    assert bad.status_code == 401
    with_token = httpx.post(f"{secured}/synthesize", json={"steps": "x"}, headers=bearer(TOKEN), timeout=60)
    assert with_token.status_code == 422


def test_image_queries_need_the_token_too(secured):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format="PNG")
    files = {"image": ("a.png", buf.getvalue(), "image/png")}
    assert httpx.post(f"{secured}/synthesize/image", files=files, timeout=60).status_code == 401
    r = httpx.post(f"{secured}/synthesize/image", files=files, data={"steps": "2"}, headers=bearer(TOKEN), timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"


def test_healthz_answers_probes_but_keeps_details_for_token_holders(secured):
    probe = httpx.get(f"{secured}/healthz", timeout=30)
    assert probe.status_code == 200 and probe.json() == {"status": "ready", "auth_required": True}
    full = httpx.get(f"{secured}/healthz", headers=bearer(TOKEN), timeout=30).json()
    assert full["status"] == "ready" and full["auth_required"] is True
    assert full["model_uri"] == "models:/clipsynth-serve-test/1" and "card" in full
    wrong = httpx.get(f"{secured}/healthz", headers=bearer(WRONG), timeout=30)
    assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]


def test_the_schema_and_docs_stay_open_and_declare_the_token(secured):
    schema = httpx.get(f"{secured}/openapi.json", timeout=30).json()
    assert schema["servers"] == [{"url": "/secured"}]  # clients and the docs page call the prefixed paths
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The service's access token (CLIPSYNTH_API_TOKEN of the deployment).",
    }
    paths = schema["paths"]
    assert paths["/synthesize"]["post"]["security"] == [{"bearerAuth": []}]
    assert paths["/synthesize/image"]["post"]["security"] == [{"bearerAuth": []}]
    assert paths["/healthz"]["get"]["security"] == [{}, {"bearerAuth": []}]
    assert "401" in paths["/synthesize"]["post"]["responses"]
    docs = httpx.get(f"{secured}/docs", timeout=30)
    assert docs.status_code == 200 and "/secured/openapi.json" in docs.text
    assert httpx.get(f"{secured}/docs/swagger-ui-bundle.js", timeout=30).status_code == 200


def test_the_page_asks_for_the_token_then_synthesizes(secured):
    with chromium_page(f"{secured}/") as page:
        page.wait_for_selector("#token-row:not([hidden])", timeout=60_000)
        assert "needs an access token" in page.text_content("#card")
        page.fill("#token", WRONG)
        page.dispatch_event("#token", "change")
        page.wait_for_function("() => document.getElementById('card').textContent.includes('not valid')")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.wait_for_selector("#card dl", timeout=60_000)
        page.fill("#query", "a violin")
        page.fill("#seed", "3")
        page.click("#go")
        page.wait_for_function("() => document.querySelectorAll('#history li').length == 1", timeout=90_000)
        assert "seed 3" in page.text_content("#status")


def test_no_log_line_holds_a_token(secured):
    """After the requests above (right and wrong tokens), no file in the Ray session's logs holds either."""
    import ray

    httpx.get(f"{secured}/healthz", headers=bearer(WRONG), timeout=30)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # no public API names the session's logs
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any("SynthesizerIngress" in p.name for p in files), "no ingress replica log found"
    for path in files:
        data = path.read_bytes()
        assert TOKEN.encode() not in data and WRONG.encode() not in data, path
