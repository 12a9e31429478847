"""The API described: the schema the service publishes at /openapi.json, its Swagger UI page working offline, and
a property-based fuzz of the real app from that schema (schemathesis), on the session's Ray (tests/
serve_service.py).

The fuzz calls every documented operation with valid and invalid requests. Every answer must be documented
(status, content type, headers, body schema), none may be a 5xx, requests the schema allows must be served,
and requests it forbids refused. Image uploads in valid requests are real images of random sizes and modes
(registered per media type below); invalid ones are random bytes. One rule is in the schema's words only: a
combined query ("a + b") must be well formed, which no JSON Schema pattern says; a valid request whose query is
not gets 422 naming the query. Examples are derandomized, so a CI run is reproducible.
"""

from __future__ import annotations

import io
from collections import Counter
from urllib.parse import urlsplit

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance
from serve_service import chromium_page

from clipsynth_core.query_blend import parse_query
from serve.api_schema import IMAGE_MEDIA_TYPES, ServedLimits, build_openapi
from serve.ingress import api

pytestmark = pytest.mark.ray

PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}
# The schema the service must publish: the bounds of every model narrowed to the test service's (tests/
# serve_service.py: max_steps 16 below the tiny model's 100 trained steps, no guidance, no gap statistics).
# Built here because the fuzz's cases are made at collection, before the service runs; the first test checks
# that the service publishes exactly this.
SERVED_LIMITS = ServedLimits(max_steps=16, guidance_allowed=False, gap_methods=("none",))
EXPECTED_SCHEMA = build_openapi(api.openapi(), SERVED_LIMITS, auth_required=False)


def test_the_service_publishes_the_schema_of_its_model(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    published = r.json()
    assert published == EXPECTED_SCHEMA
    request = published["components"]["schemas"]["TextSynthesisRequest"]
    steps = next(b for b in request["properties"]["steps"]["anyOf"] if b["type"] == "integer")
    assert (steps["minimum"], steps["maximum"]) == (1, 16)
    assert {"200", "400", "413", "415", "422", "503"} <= set(published["paths"]["/synthesize"]["post"]["responses"])
    assert "security" not in published["paths"]["/synthesize"]["post"]  # no token configured


def test_the_docs_page_renders_the_api_from_local_files_only(service):
    requested: list[str] = []
    with chromium_page(f"{service}/docs", requested) as page:
        page.wait_for_selector(".opblock-summary-path", timeout=60_000)
        paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent.trim())")
        assert {"/synthesize", "/synthesize/image", "/healthz"} <= set(paths)
        assert not page.is_visible(".btn.authorize")  # no token configured: nothing to authorize
        operation = "#operations-default-synthesize_synthesize_post"
        page.click(f"{operation} .opblock-summary")
        page.wait_for_selector(f"{operation} .opblock-section-request-body", timeout=30_000)
        text = page.text_content(operation)
        assert '"query": "a dog barking"' in text and "audio/wav" in text and "X-Seed" in text
    assert requested, "the page made no request"
    base = urlsplit(service).netloc
    assert {urlsplit(url).netloc for url in requested if not url.startswith("data:")} == {base}, requested


# --------------------------------------------------------------------------------------------------- the fuzz
@st.composite
def encoded_images(draw: st.DrawFn, pil_format: str) -> bytes:
    """An image file of `pil_format`: 1 to 64 pixels a side, random pixels, one of several colour modes."""
    from PIL import Image

    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1"]))
    if pil_format in ("JPEG", "BMP") and mode in ("RGBA", "P"):
        mode = "RGB"  # modes these formats cannot store
    pixels = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (height, width, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=pil_format)
    return buf.getvalue()


assert set(PIL_FORMATS) == set(IMAGE_MEDIA_TYPES)
for media_type, pil_format in PIL_FORMATS.items():
    schemathesis.openapi.media_type(media_type, encoded_images(pil_format))

schema = schemathesis.openapi.from_dict(EXPECTED_SCHEMA)
# (operation, status class) -> answers, over the whole fuzz: the last test checks that it reached the model.
ANSWERS: Counter[tuple[str, str]] = Counter()


def malformed_combined_query(body: object) -> bool:
    if not (isinstance(body, dict) and isinstance(body.get("query"), str)):
        return False
    try:
        parse_query(body["query"])
    except ValueError:
        return True
    return False


def valid_data_is_served(ctx, response, case) -> bool | None:
    """schemathesis's positive_data_acceptance, but for a malformed combined query: then a 422 on the query."""
    ANSWERS[(case.operation.label, f"{response.status_code // 100}xx")] += 1
    if case.meta is not None and case.meta.generation.mode.is_positive and malformed_combined_query(case.body):
        assert response.status_code == 422, f"a malformed combined query got {response.status_code}"
        assert response.json()["error"].startswith("query:"), response.text
        return True
    return positive_data_acceptance(ctx, response, case)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,  # a synthesis takes a second or more on a busy machine
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_documented_and_none_is_a_server_error(case, service):
    case.call_and_validate(
        base_url=service,
        timeout=60,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_data_is_served],
    )


@pytest.mark.slow
def test_the_fuzz_reached_the_model_and_its_refusals():
    """The fuzz above (run it with this test) must have had sounds synthesized and requests refused on both
    endpoints: a fuzz that never gets past validation tests nothing behind it."""
    for operation in ("POST /synthesize", "POST /synthesize/image"):
        assert ANSWERS[(operation, "2xx")] >= 10, ANSWERS
        assert ANSWERS[(operation, "4xx")] >= 10, ANSWERS
    assert sum(n for (_, status), n in ANSWERS.items() if status == "5xx") == 0, ANSWERS
