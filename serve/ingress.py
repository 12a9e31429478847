"""The HTTP API (FastAPI ingress): validates requests, calls encoder -> sampler -> vocoder, answers a WAV.

    POST /synthesize        JSON {"query": str, "steps": int, "seed": int, "guidance": float, "seconds": float,
                            "sampler": "ddpm"|"ddim"}; only query is required -> 200 audio/wav
    POST /synthesize/image  multipart: an "image" file as the query, plus the same optional fields
    GET  /healthz           200 JSON with the model's identity once every deployment is ready, else 503
    GET  /                  a small web page to try it
    GET  /openapi.json      the API's schema (this deployment's bounds), GET /docs: Swagger UI on it
Bad input of any kind gets a 4xx JSON {"error": "..."}; a full queue gets 503 with Retry-After. With
CLIPSYNTH_API_TOKEN set, the POST endpoints need a bearer token (serve/auth.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipsynth_platform.runtime.logs import configure_logging, get_logger

from .api_schema import (
    DOCS_ASSETS,
    HEALTH_ROUTE,
    SYNTHESIZE_IMAGE_ROUTE,
    SYNTHESIZE_ROUTE,
    ServedLimits,
    build_openapi,
    docs_asset,
)
from .auth import BearerAuth
from .config import ServeConfig
from .schemas import RequestError, parse_form_options, parse_json_request, resolve_gap, resolve_spec
from .wav import wav_bytes

logger = get_logger("serve")

PAGE = (Path(__file__).with_name("page.html")).read_text()
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and the small option fields next to the image
HEALTH_TIMEOUT_S = 10.0

# FastAPI's own /docs loads Swagger UI from a CDN and its /openapi.json cannot await the served model's bounds:
# the ingress serves both itself (routes below).
api = FastAPI(
    title="CLIPSynth",
    version="1.0.0",
    description="Text- or image-queried sound synthesis (CLIPSynth, Dong et al. 2023): POST a query, get a WAV. "
    'Every error is JSON {"error": "..."}; a full queue answers 503 with Retry-After.',
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


class WavResponse(Response):
    media_type = "audio/wav"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, "; ".join(str(e.get("msg")) for e in exc.errors()))


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("request failed: %s", exc)
    return _error(500, "internal error (logged on the server)")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (413) without reading an announced oversized body."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            announced = int(length)
        except ValueError:
            raise RequestError(400, "invalid Content-Length header") from None
        if announced > limit:
            raise RequestError(413, f"the body is {announced} bytes; the limit is {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def mel_header(mel) -> str:
    """A normalised mel [n_mels, T] in [-1, 1] as base64 of uint8 (0..255), row-major."""
    levels = np.clip((np.asarray(mel, dtype=np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return base64.b64encode(levels.tobytes()).decode("ascii")


def model_card(sampler: dict, encoder: dict) -> dict:
    """What the page shows about the model: the encoder, its classes, the CLIP tag, substitutions."""
    identity = sampler.get("identity", {})
    clip = str(encoder.get("clip", ""))
    return {
        "encoder": clip.partition("/")[0],
        "clip_tag": clip.partition("/")[2],
        "clip_random": bool(encoder.get("clip_random", False)),
        "clip_substituted": bool(encoder.get("clip_substituted", False)),
        "classes": list(encoder.get("labels", [])),
        "variant": identity.get("variant", ""),
        "vocoder": identity.get("vocoder", ""),
        "trained_steps": sampler.get("trained_steps"),
        "guidance_allowed": bool(sampler.get("guidance_allowed", False)),
        "gap_methods": list(encoder.get("gap", {}).get("methods", ["none"])),
    }


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> uint8 RGB [H, W, 3]; 415 when they are not an image, 413 when it is too large."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise RequestError(413, f"the image has {width}x{height} pixels; the limit is {max_pixels} pixels")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except RequestError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise RequestError(415, "the upload is not an image this service can decode (PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise RequestError(415, f"the image could not be decoded: {exc}") from None


@serve.deployment(name="SynthesizerIngress")
@serve.ingress(api)
class SynthesizerIngress:
    def __init__(
        self,
        encoder: DeploymentHandle,
        sampler: DeploymentHandle,
        vocoder: DeploymentHandle,
        config: ServeConfig,
    ) -> None:
        configure_logging()  # this replica's `[serve] ...` lines on its stdout, which Serve keeps in its log files
        self.encoder = encoder
        self.sampler = sampler
        self.vocoder = vocoder
        self.config = config
        self._info: dict | None = None
        self._encoder_info: dict | None = None
        self._health: dict | None = None
        self._limits: ServedLimits | None = None
        # From this replica's environment (CLIPSYNTH_API_TOKEN); None: no authentication.
        self.auth = BearerAuth.from_environment()

    # ------------------------------------------------------------------------------------------ helpers
    async def _call(self, response):
        """Await a deployment call; a full queue downstream becomes 503 with Retry-After."""
        try:
            return await response
        except BackPressureError:
            raise RequestError(
                503,
                "the service is at capacity; retry later",
                {"Retry-After": str(math.ceil(self.config.retry_after_s))},
            ) from None
        except DeploymentUnavailableError:
            raise RequestError(503, "the model is not available yet; retry later", {"Retry-After": "5"}) from None

    async def _model_info(self) -> dict:
        if self._info is None:
            self._info = await self._call(self.sampler.info.remote())
        return self._info

    async def _gap_methods(self) -> list[str]:
        if self._encoder_info is None:
            self._encoder_info = await self._call(self.encoder.info.remote())
        return list(self._encoder_info.get("gap", {}).get("methods", ["none"]))

    async def _served_limits(self) -> ServedLimits | None:
        """The served model's bounds for the schema; None while it is not loaded (asked again next time)."""
        if self._limits is None:
            try:
                info, methods = await asyncio.wait_for(
                    asyncio.gather(self._model_info(), self._gap_methods()), timeout=HEALTH_TIMEOUT_S
                )
            except Exception as exc:
                logger.warning("openapi: the model's bounds are not known yet (%s)", type(exc).__name__)
                return None
            self._limits = ServedLimits(
                max_steps=min(int(info["trained_steps"]), self.config.max_steps),
                guidance_allowed=bool(info["guidance_allowed"]),
                gap_methods=tuple(methods),
            )
        return self._limits

    def _authorize(self, request: Request) -> None:
        if self.auth is not None:
            self.auth.require(request.headers.get("authorization"))

    async def _synthesize(self, cond: np.ndarray, spec: dict, info: dict) -> Response:
        sample = await self._call(self.sampler.sample.remote({**spec, "cond": cond}))
        wave = await self._call(self.vocoder.vocode.remote(sample["mel"]))
        headers = {
            "X-Seed": str(spec["seed"]),
            "X-Steps": str(spec["steps"]),
            "X-Sampler": spec["sampler"],
            "X-Seconds": str(spec["seconds"]),
            "X-Guidance": str(spec["guidance"]),
            "X-Gap-Reduction": spec.get("gap", "none"),
            # The generated mel itself, for the page's picture: uint8 rows (low frequencies first), base64.
            "X-Mel": mel_header(sample["mel"]),
            "X-Mel-Shape": "x".join(str(n) for n in np.shape(sample["mel"])),
            # Requests that shared this one's sampling loop, and requests in the whole dynamic batch.
            "X-Batch-Size": str(sample["group_size"]),
            "X-Batch-Requests": str(sample["batch_size"]),
            "Content-Disposition": f'inline; filename="clipsynth-{spec["seed"]}.wav"',
        }
        return WavResponse(wav_bytes(wave, info["sample_rate"]), headers=headers)

    # ------------------------------------------------------------------------------------------- routes
    @api.get("/", response_class=HTMLResponse)
    async def page(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        # As a JS string literal; "<" escaped so that no value can close the <script> element.
        return HTMLResponse(PAGE.replace("__ROOT__", json.dumps(root).replace("<", "\\u003c")))

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return JSONResponse(build_openapi(api.openapi(), await self._served_limits(), self.auth is not None, root))

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="CLIPSynth API",
            swagger_js_url=f"{root}/docs/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/favicon.png",
        )

    @api.get("/docs/{asset}", include_in_schema=False)
    async def docs_file(self, asset: str) -> FileResponse:
        path = docs_asset(asset)
        if path is None:
            raise RequestError(404, f"no such file: {asset}")
        return FileResponse(path, media_type=DOCS_ASSETS[asset], headers={"Cache-Control": "public, max-age=86400"})

    @api.get("/healthz", **HEALTH_ROUTE)
    async def healthz(self, request: Request) -> JSONResponse:
        # With a token: a probe (no Authorization header) gets the status only; credentials, when sent, must hold.
        details = True
        if self.auth is not None:
            authorization = request.headers.get("authorization", "")
            details = bool(authorization.strip())
            if details:
                self.auth.require(authorization)
        try:
            sampler, encoder, vocoder = await asyncio.wait_for(
                asyncio.gather(self.sampler.info.remote(), self.encoder.info.remote(), self.vocoder.info.remote()),
                timeout=HEALTH_TIMEOUT_S,
            )
        except BackPressureError:
            # Loaded, but a queue is full right now: still the model's identity, marked busy.
            if self._health is not None:
                return JSONResponse(self._health_view({**self._health, "status": "busy"}, details))
            return _error(503, "busy: a queue is full", {"Retry-After": str(math.ceil(self.config.retry_after_s))})
        except Exception as exc:
            return _error(503, f"not ready: {type(exc).__name__}: {exc}", {"Retry-After": "5"})
        self._info = sampler
        c = self.config
        self._health = {
            "status": "ready",
            "auth_required": self.auth is not None,
            "model_uri": sampler["model_uri"],
            "identity": sampler["identity"],
            "clip": encoder["clip"],
            "gap_reduction": encoder.get("gap", {"methods": ["none"]}),
            "card": model_card(sampler, encoder),
            "trained_steps": sampler["trained_steps"],
            "guidance_allowed": sampler["guidance_allowed"],
            "sample_rate": sampler["sample_rate"],
            "defaults": {
                "steps": min(c.default_steps, sampler["trained_steps"]),
                "sampler": c.default_sampler,
                "seconds": c.default_seconds,
                "guidance": c.default_guidance if sampler["guidance_allowed"] else 0.0,
                "gap_reduction": c.default_gap_reduction
                if c.default_gap_reduction in encoder.get("gap", {}).get("methods", ["none"])
                else "none",
            },
            "sampler_stats": {k: sampler[k] for k in ("batches", "requests", "largest_batch")},
            "vocoder_hop_length": vocoder["hop_length"],
            "vocoder": {"name": vocoder["vocoder"], "trained_steps": vocoder.get("vocoder_trained_steps")},
        }
        return JSONResponse(self._health_view(self._health, details))

    @staticmethod
    def _health_view(health: dict, details: bool) -> dict:
        return health if details else {"status": health["status"], "auth_required": health["auth_required"]}

    @api.post("/synthesize", response_class=WavResponse, **SYNTHESIZE_ROUTE)
    async def synthesize(self, request: Request) -> Response:
        self._authorize(request)  # before reading anything
        media = _media_type(request)
        if media and media != "application/json" and not media.endswith("+json"):
            raise RequestError(415, f"send JSON (Content-Type: application/json), not {media}")
        req = parse_json_request(await read_body(request, self.config.max_json_bytes))
        info = await self._model_info()
        spec = resolve_spec(req, info, self.config)
        spec["gap"] = resolve_gap(req, await self._gap_methods(), self.config)
        cond = await self._call(self.encoder.encode_text.remote(req.query, spec["gap"]))
        return await self._synthesize(cond, spec, info)

    @api.post("/synthesize/image", response_class=WavResponse, **SYNTHESIZE_IMAGE_ROUTE)
    async def synthesize_image(self, request: Request) -> Response:
        self._authorize(request)
        if _media_type(request) != "multipart/form-data":
            raise RequestError(415, 'send multipart/form-data with the image in a file field named "image"')
        body = await read_body(request, self.config.max_image_bytes + MULTIPART_OVERHEAD)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        except StarletteHTTPException as exc:
            raise RequestError(400, f"malformed multipart body: {exc.detail}") from None
        except Exception as exc:
            raise RequestError(400, f"malformed multipart body: {exc}") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise RequestError(422, 'image: field required (a file field named "image")')
        data = await upload.read()
        if len(data) > self.config.max_image_bytes:
            raise RequestError(413, f"the image is {len(data)} bytes; the limit is {self.config.max_image_bytes}")
        fields = {}
        for key, value in form.multi_items():
            if key == "image":
                continue
            if not isinstance(value, str):
                raise RequestError(422, f"{key}: expected a plain form field, got a file")
            fields[key] = value
        options = parse_form_options(fields)
        image = await asyncio.to_thread(decode_image, data, self.config.max_image_pixels)
        info = await self._model_info()
        spec = resolve_spec(options, info, self.config)
        cond = await self._call(self.encoder.encode_image.remote(image))
        return await self._synthesize(cond, spec, info)
