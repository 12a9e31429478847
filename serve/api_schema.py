"""The API's OpenAPI description: request bodies from the pydantic models of serve/schemas.py (the ingress reads
bodies itself, to keep its limits and error answers, so FastAPI cannot infer them), responses, the bearer
token when one is required, and the bounds of the model being served.

    GET /openapi.json   this deployment's schema (steps up to the model's trained steps, guidance only where
                        the model was trained for it, the gap reductions its bundle offers)
    GET /docs           Swagger UI on it, its scripts served from the fastapi-offline package (no CDN)
"""

from __future__ import annotations

import copy
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schemas import ErrorResponse, SynthesisOptions, TextSynthesisRequest

SECURITY_SCHEME = "bearerAuth"
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
SCHEMA_REF = "#/components/schemas/{model}"
# Swagger UI's files as the fastapi-offline package ships them, by the name the docs page asks for.
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


@dataclass(frozen=True)
class ServedLimits:
    """What the served model and this service's settings allow beyond the bounds every model shares."""

    max_steps: int  # min(trained steps, ServeConfig.max_steps)
    guidance_allowed: bool
    gap_methods: tuple[str, ...]


def docs_asset(name: str) -> Path | None:
    """The file of a Swagger UI asset, or None for a name that is not one."""
    if name not in DOCS_ASSETS:
        return None
    return Path(str(importlib.resources.files("fastapi_offline") / "static" / name))


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    # Content spelled out: FastAPI would give a `model` the route's own media type (audio/wav).
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model="ErrorResponse")}}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_WAV_HEADERS = {
    name: {"description": description, "required": True, "schema": {"type": kind}}
    for name, kind, description in [
        ("X-Seed", "integer", "The seed used (the request's or a random one): send it again to get the same audio."),
        ("X-Steps", "integer", "Diffusion steps used."),
        ("X-Sampler", "string", "Sampling method used."),
        ("X-Seconds", "number", "Clip length asked for."),
        ("X-Guidance", "number", "Classifier-free guidance weight used."),
        ("X-Gap-Reduction", "string", "Gap reduction used (none for image queries)."),
        ("X-Mel", "string", "The generated mel: base64 of uint8 levels, row-major, low frequencies first."),
        ("X-Mel-Shape", "string", "Shape of X-Mel, as n_mels x frames (e.g. 64x64)."),
        ("X-Batch-Size", "integer", "Requests that shared this one's sampling loop."),
        ("X-Batch-Requests", "integer", "Requests in the whole dynamic batch."),
    ]
}
_WAV = {
    "description": "The sound: a WAV file, 16 kHz, mono, 16-bit PCM.",
    "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
    "headers": _WAV_HEADERS,
}
_SYNTHESIS_ERRORS = {
    413: _error("The body, or the image's pixel count, is over the service's limit."),
    415: _error("Wrong Content-Type, or an upload that is not a decodable image."),
    422: _error("A field out of its bounds, of the wrong type, unknown, or beyond what the served model allows."),
    503: _error("A queue is full or the model is not loaded yet: retry after Retry-After seconds.", _RETRY_AFTER),
}
# FastAPI route arguments (responses, request bodies) of the two endpoints.
SYNTHESIZE_ROUTE: dict[str, Any] = {
    "summary": "Synthesize a sound from a text query",
    "responses": {
        200: _WAV,
        400: _error("The body is not JSON, not a JSON object, or has an invalid Content-Length."),
        **_SYNTHESIS_ERRORS,
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model="TextSynthesisRequest")}}},
        }
    },
}
SYNTHESIZE_IMAGE_ROUTE: dict[str, Any] = {
    "summary": "Synthesize a sound from an image (the paper's image queries)",
    "responses": {200: _WAV, 400: _error("A malformed multipart body."), **_SYNTHESIS_ERRORS},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"$ref": SCHEMA_REF.format(model="ImageSynthesisForm")},
                    "encoding": {"image": {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}},
                }
            },
        }
    },
}
HEALTH_ROUTE: dict[str, Any] = {
    "summary": "Readiness and the served model's identity",
    "responses": {
        200: {
            "description": "Ready (or busy: loaded, a queue full right now). With a token required, a caller "
            "without it gets status and auth_required only.",
            "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model="Health")}}},
        },
        503: _error("Not ready yet (a model still loading or failed).", _RETRY_AFTER),
    },
}

_HEALTH_SCHEMA = {
    "type": "object",
    "title": "Health",
    "required": ["status", "auth_required"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "busy"]},
        "auth_required": {"type": "boolean", "description": "Whether POST endpoints need a bearer token."},
        "model_uri": {"type": "string"},
        "identity": {"type": "object"},
        "clip": {"type": "string"},
        "gap_reduction": {"type": "object"},
        "card": {"type": "object", "description": "What the page shows about the model."},
        "trained_steps": {"type": "integer"},
        "guidance_allowed": {"type": "boolean"},
        "sample_rate": {"type": "integer"},
        "defaults": {"type": "object", "description": "What the service uses for an option left out."},
        "sampler_stats": {"type": "object"},
        "vocoder_hop_length": {"type": "integer"},
    },
}


def image_form_schema() -> dict[str, Any]:
    """The multipart body of /synthesize/image: an image file plus the options as form fields. A form field is
    text: null is not a value there, and an empty field means the default, as leaving it out does. Each field is
    one schema, not `anyOf` (value | empty): fuzzers that negate one branch of an anyOf take "" for invalid."""
    options = SynthesisOptions.model_json_schema(ref_template=SCHEMA_REF)
    properties: dict[str, Any] = {
        "image": {
            "type": "string",
            "format": "binary",
            "description": "The image (PNG, JPEG, WebP, ...): its CLIP embedding is the query.",
        }
    }
    for name, prop in options["properties"].items():
        (value,) = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        field = {**value, "type": sorted({value["type"], "string"})}  # "string": the empty field
        if "enum" in value:
            field["enum"] = [*value["enum"], ""]
        else:
            field["maxLength"] = 0  # the only string a numeric field takes
        properties[name] = {**field, **{k: v for k, v in prop.items() if k in ("title", "description")}}
    return {
        "type": "object",
        "title": "ImageSynthesisForm",
        "required": ["image"],
        "additionalProperties": False,
        "properties": properties,
    }


def _constrain(prop: dict[str, Any], **keywords: Any) -> None:
    """Set keywords on the non-null branch of a property (`anyOf: [X, null]`), or on the property itself."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            branch.update(keywords)


def build_openapi(
    base: dict[str, Any], limits: ServedLimits | None, auth_required: bool, root_path: str = ""
) -> dict[str, Any]:
    """FastAPI's schema of the routes (`base`, not changed) -> the full schema of this deployment. Without
    `limits` (the model not loaded yet) the bounds are those every model shares."""
    schema = copy.deepcopy(base)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template=SCHEMA_REF)
    components["TextSynthesisRequest"] = TextSynthesisRequest.model_json_schema(ref_template=SCHEMA_REF)
    components["ImageSynthesisForm"] = image_form_schema()
    components["Health"] = copy.deepcopy(_HEALTH_SCHEMA)
    if limits is not None:
        for name in ("TextSynthesisRequest", "ImageSynthesisForm"):
            props = components[name]["properties"]
            _constrain(props["steps"], maximum=limits.max_steps)
            if not limits.guidance_allowed:
                _constrain(props["guidance"], maximum=0.0)
        # Image queries ignore gap_reduction, so the form keeps every name; a text query gets the bundle's.
        _constrain(components["TextSynthesisRequest"]["properties"]["gap_reduction"], enum=list(limits.gap_methods))
    if root_path:
        schema["servers"] = [{"url": root_path}]
    if auth_required:
        components_root = schema["components"]
        components_root["securitySchemes"] = {
            SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "The service's access token (CLIPSYNTH_API_TOKEN of the deployment).",
            }
        }
        unauthorized = _error(
            "No valid access token (see the WWW-Authenticate header).",
            {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
        )
        for path, needed in (("/synthesize", True), ("/synthesize/image", True), ("/healthz", False)):
            operation = next(iter(schema["paths"][path].values()))
            # `{}` first: the token is optional there (a probe without it gets the status only).
            operation["security"] = [{SECURITY_SCHEME: []}] if needed else [{}, {SECURITY_SCHEME: []}]
            operation["responses"]["401"] = unauthorized
    return schema
