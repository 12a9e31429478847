"""The API's description against its validation, without a service: every request the OpenAPI schema allows is
accepted by the ingress's parsers and every one it forbids refused (checked with an independent JSON Schema
validator), the per-model bounds, the bearer token's rules, and the Swagger UI files."""

from __future__ import annotations

import json
import re

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from serve.api_schema import DOCS_ASSETS, ServedLimits, build_openapi, docs_asset, image_form_schema
from serve.auth import API_TOKEN_ENV, API_TOKEN_FILE_ENV, BearerAuth
from serve.ingress import api
from serve.schemas import NON_BLANK_PATTERN, RequestError, TextSynthesisRequest, parse_form_options, parse_json_request

LIMITS = ServedLimits(max_steps=40, guidance_allowed=False, gap_methods=("none", "shift"))


def _accepted(parse, value) -> bool:
    try:
        parse(value)
    except RequestError as exc:
        assert exc.status in (400, 422), exc.status
        return False
    return True


def test_the_non_blank_pattern_matches_exactly_what_strip_keeps():
    for code in range(0x110000):
        c = chr(code)
        assert (re.search(NON_BLANK_PATTERN, c) is None) == c.isspace(), hex(code)


JSON_BODIES = [
    {"query": "a dog"},
    {"query": "a dog", "steps": 11, "seed": 0, "guidance": 0, "seconds": 8.32, "sampler": "ddim"},
    {"query": "a dog", "steps": 11.0},  # JSON's one number type: the integer 11
    {"query": "a dog", "steps": None, "seed": None, "guidance": None, "seconds": None, "gap_reduction": None},
    {"query": "\ufeff"},  # not whitespace to Python (U+FEFF is to ECMAScript's \s)
    {"query": "x" * 200},
    {"query": "C++ + a harp*0.5"},
    {"query": ""},
    {"query": " \t"},
    {"query": "\x1c"},  # whitespace to Python's strip (not to ECMAScript's \s)
    {"query": "x" * 201},
    {"steps": 3},
    {"query": "a", "steps": 11.5},
    {"query": "a", "steps": "11"},
    {"query": "a", "steps": True},
    {"query": "a", "steps": 0},
    {"query": "a", "steps": 1001},
    {"query": "a", "seed": -1},
    {"query": "a", "seed": 2**31},
    {"query": "a", "guidance": 20.5},
    {"query": "a", "seconds": 4.2},
    {"query": "a", "seconds": 8.320000000000002},  # what the fuzz sent: not the enum's 8.32
    {"query": "a", "seconds": "4.16"},
    {"query": "a", "sampler": "euler"},
    {"query": "a", "gap_reduction": "rotate"},
    {"query": "a", "prompt": "b"},
    ["a"],
    "a dog",
]


@pytest.mark.parametrize("body", JSON_BODIES, ids=[json.dumps(b)[:40] for b in JSON_BODIES])
def test_a_json_body_is_accepted_exactly_when_the_schema_allows_it(body):
    schema = TextSynthesisRequest.model_json_schema()
    valid = Draft202012Validator(schema).is_valid(body)
    assert _accepted(parse_json_request, json.dumps(body).encode()) == valid, (body, valid)


FORM_FIELDS = [
    ({"steps": 5, "seed": 3, "guidance": 0, "seconds": 4.16, "sampler": "ddpm", "gap_reduction": "prior"}, True),
    ({"steps": 5.0}, True),
    ({"steps": "", "sampler": "", "seconds": ""}, True),  # empty fields: the defaults
    ({"steps": " "}, False),
    ({"steps": " 5"}, False),
    ({"steps": 5.5}, False),
    ({"steps": "five"}, False),
    ({"steps": 0}, False),
    ({"seconds": 4.2}, False),
    ({"seconds": 8.320000000000002}, False),
    ({"sampler": "ddpm "}, False),
    ({"gap_reduction": "rotate"}, False),
    ({"query": "a dog"}, False),
]


@pytest.mark.parametrize("fields,allowed", FORM_FIELDS, ids=[json.dumps(f)[:40] for f, _ in FORM_FIELDS])
def test_image_form_fields_are_accepted_exactly_when_the_schema_allows_them(fields, allowed):
    schema = image_form_schema()
    form = {"image": "<the file>", **fields}
    assert Draft202012Validator(schema).is_valid(form) == allowed
    # On the wire every field is text: numbers as JSON writes them, strings as they are.
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    assert _accepted(parse_form_options, text) == allowed


def test_the_schema_carries_the_served_models_bounds_and_is_valid_openapi():
    base = api.openapi()
    before = json.dumps(base, sort_keys=True)
    generic = build_openapi(base, None, auth_required=False)
    served = build_openapi(base, LIMITS, auth_required=False, root_path="/api")
    assert json.dumps(base, sort_keys=True) == before  # FastAPI's cached schema is not changed
    for document in (generic, served, build_openapi(base, LIMITS, auth_required=True)):
        validate_openapi(document)

    def props(document, name):
        return document["components"]["schemas"][name]["properties"]

    def bound(prop, key):
        return next(b for b in prop.get("anyOf", [prop]) if b.get("type") != "null")[key]

    assert bound(props(generic, "TextSynthesisRequest")["steps"], "maximum") == 1000
    assert bound(props(generic, "TextSynthesisRequest")["guidance"], "maximum") == 20
    text, form = props(served, "TextSynthesisRequest"), props(served, "ImageSynthesisForm")
    assert bound(text["steps"], "maximum") == bound(form["steps"], "maximum") == 40
    assert bound(text["guidance"], "maximum") == bound(form["guidance"], "maximum") == 0
    assert bound(text["gap_reduction"], "enum") == ["none", "shift"]
    assert form["gap_reduction"]["enum"] == ["none", "shift", "prior", ""]  # ignored for images: any name
    assert served["servers"] == [{"url": "/api"}] and "servers" not in generic
    assert "securitySchemes" not in served["components"]
    wav = served["paths"]["/synthesize"]["post"]["responses"]["200"]
    assert list(wav["content"]) == ["audio/wav"] and wav["headers"]["X-Seed"]["schema"] == {"type": "integer"}
    for status in ("400", "413", "415", "422", "503"):
        content = served["paths"]["/synthesize"]["post"]["responses"][status]["content"]
        assert content == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    image_body = served["paths"]["/synthesize/image"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert image_body["schema"] == {"$ref": "#/components/schemas/ImageSynthesisForm"}
    assert form["image"] == {
        "type": "string",
        "format": "binary",
        "description": "The image (PNG, JPEG, WebP, ...): its CLIP embedding is the query.",
    }


# ------------------------------------------------------------------------------------------- the bearer token
TOKEN = "s3cret-token-of-32-characters-xx"


def _status(call) -> tuple[int, dict[str, str]]:
    with pytest.raises(RequestError) as exc:
        call()
    return exc.value.status, exc.value.headers


def test_the_token_comes_from_the_environment_or_a_file_and_is_off_by_default(tmp_path):
    assert BearerAuth.from_environment({}) is None
    assert BearerAuth.from_environment({API_TOKEN_ENV: "  "}) is None
    assert BearerAuth.from_environment({API_TOKEN_ENV: TOKEN}) == BearerAuth.from_token(TOKEN)
    with pytest.raises(ValueError, match="at least 16"):
        BearerAuth.from_environment({API_TOKEN_ENV: "short"})
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    assert BearerAuth.from_environment({API_TOKEN_FILE_ENV: str(secret)}) == BearerAuth.from_token(TOKEN)
    with pytest.raises(ValueError, match="not both"):
        BearerAuth.from_environment({API_TOKEN_ENV: TOKEN, API_TOKEN_FILE_ENV: str(secret)})
    with pytest.raises(ValueError, match="cannot read"):
        BearerAuth.from_environment({API_TOKEN_FILE_ENV: str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        BearerAuth.from_environment({API_TOKEN_FILE_ENV: str(tmp_path / "empty")})


def test_the_token_is_required_with_the_challenge_of_rfc_6750_and_never_shown():
    auth = BearerAuth.from_token(TOKEN)
    assert TOKEN not in repr(auth) and auth.token_digest.hex() not in repr(auth)
    auth.require(f"Bearer {TOKEN}")
    auth.require(f"bearer   {TOKEN} ")  # the scheme is case-insensitive
    assert _status(lambda: auth.require(None)) == (401, {"WWW-Authenticate": 'Bearer realm="clipsynth"'})
    assert _status(lambda: auth.require(f"Basic {TOKEN}")) == (401, {"WWW-Authenticate": 'Bearer realm="clipsynth"'})
    wrong = {"WWW-Authenticate": 'Bearer realm="clipsynth", error="invalid_token"'}
    assert _status(lambda: auth.require(f"Bearer {TOKEN}x")) == (401, wrong)
    assert _status(lambda: auth.require(f"Bearer {TOKEN[:-1]}")) == (401, wrong)
    assert auth.holds_token("Bearer ") is None and auth.holds_token(f"Bearer {TOKEN}") is True


def test_the_docs_page_assets_are_the_packaged_swagger_ui():
    for name in DOCS_ASSETS:
        path = docs_asset(name)
        assert path is not None and path.stat().st_size > 1000, name
    assert b"SwaggerUIBundle" in docs_asset("swagger-ui-bundle.js").read_bytes()
    assert docs_asset("../../__init__.py") is None and docs_asset("redoc.standalone.js") is None
