"""Request validation of the HTTP API: bounds that hold for every model (pydantic, strict types), then the
bounds of the model being served (trained steps, guidance only with condition dropout). The same models
describe the API in its OpenAPI schema (serve/api_schema.py)."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clipsynth_core.query_blend import MAX_PARTS, parse_query

from .config import ALLOWED_SECONDS, ServeConfig

QUERY_MAX_CHARS = 200
SEED_MAX = 2**31 - 1
STEPS_MAX = 1000
GUIDANCE_MAX = 20.0
# The characters str.strip() removes (str.isspace), spelled out: regex engines disagree on what `\s` is (ECMAScript
# leaves out U+001C..U+001F, which Python strips, and adds U+FEFF), and the schema must say exactly what passes.
WHITESPACE_CLASS = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NON_BLANK_PATTERN = f"[^{WHITESPACE_CLASS}]"  # JSON Schema patterns match anywhere: one such character somewhere


class RequestError(Exception):
    """A bad request: answered with `status` and JSON {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class SynthesisOptions(BaseModel):
    """Optional sampling parameters; null or absent means the service default (a random seed for `seed`)."""

    # Strict: "5" is not a step count and true is not a seed; unknown fields are typos, not ignored.
    model_config = ConfigDict(strict=True, extra="forbid")

    steps: int | None = Field(
        None,
        ge=1,
        le=STEPS_MAX,
        description="Diffusion sampling steps (respaced). At most the steps the served model was trained with and "
        "the service's max_steps; the schema at /openapi.json gives this deployment's limit. Default: the "
        "service's (GET /healthz, defaults.steps).",
    )
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Seed of the sampling noise: the same seed gives the same audio."
    )
    guidance: float | None = Field(
        None,
        ge=0.0,
        le=GUIDANCE_MAX,
        allow_inf_nan=False,
        description="Classifier-free guidance weight (0 = none). Only for models trained with condition dropout "
        "(GET /healthz, guidance_allowed); other models accept 0 only.",
    )
    seconds: Annotated[float, Field(json_schema_extra={"enum": list(ALLOWED_SECONDS)})] | None = Field(
        None, allow_inf_nan=False, description="Length of the clip: 64 or 128 mel frames."
    )
    sampler: Literal["ddpm", "ddim"] | None = Field(None, description="Sampling method.")
    gap_reduction: Literal["none", "shift", "prior"] | None = Field(
        None,
        description="Modality-gap reduction of a text query; the bundle's methods are in GET /healthz "
        "(card.gap_methods). Ignored for image queries.",
    )

    @field_validator("steps", "seed", mode="before")
    @classmethod
    def _integral_number(cls, v: Any) -> Any:
        # JSON has one number type: 11.0 is the integer 11 (JSON Schema says so too, and some clients write it);
        # 11.5, "11" and true stay errors.
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    @field_validator("seconds")
    @classmethod
    def _seconds_allowed(cls, v: float | None) -> float | None:
        # Exactly one of the two, as the schema's enum says (8.320000000000002 is not 8.32 to a client's validator).
        if v is None or v in ALLOWED_SECONDS:
            return v
        raise ValueError(f"seconds must be one of {', '.join(str(s) for s in ALLOWED_SECONDS)}")


class TextSynthesisRequest(SynthesisOptions):
    """A text query and optional sampling parameters."""

    query: str = Field(
        min_length=1,
        max_length=QUERY_MAX_CHARS,
        json_schema_extra={"pattern": NON_BLANK_PATTERN},
        description='What it should sound like (encoded as "a photo of {query}"). Combined queries blend parts: '
        f'"a + b" or "a*0.7 + b*0.3" (at most {MAX_PARTS} parts, no empty part, weights >= 0 and not all 0; a '
        "'+' inside a word, as in \"C++\", is text); a malformed one gets 422.",
        examples=["a dog barking", "playing violin + rain on a roof"],
    )

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must contain a non-blank character")
        parse_query(v)  # a combined query ("a + b", "a*0.7 + b*0.3") must be well formed
        return v


class ErrorResponse(BaseModel):
    """Every error answer (4xx, 503): one readable message."""

    error: str = Field(description='What was wrong, e.g. "steps: Input should be less than or equal to 1000".')


def validation_message(exc: ValidationError) -> str:
    """One readable line per problem: `steps: Input should be less than or equal to 1000`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            msg = "field required"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return "; ".join(parts)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_request(body: bytes) -> TextSynthesisRequest:
    """Body bytes -> validated request; RequestError 400 (not JSON / not an object) or 422 (bad fields)."""
    try:
        # NaN and Infinity are not JSON (Python's parser accepts them by default).
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RequestError(400, 'the body must be a JSON object like {"query": "a dog barking"}')
    try:
        return TextSynthesisRequest.model_validate(obj)
    except ValidationError as exc:
        raise RequestError(422, validation_message(exc)) from None


def parse_form_options(fields: dict[str, str]) -> SynthesisOptions:
    """Form fields (strings) -> options: numbers are read as JSON numbers ("5" -> 5, " 5" is text), then checked
    strictly; an empty field means the default."""
    values: dict[str, Any] = {}
    for key, raw in fields.items():
        if raw == "":
            continue  # what an HTML form sends for an input left empty
        values[key] = raw
        if raw == raw.strip():  # json.loads would skip the spaces around a number; the schema does not
            try:
                value = json.loads(raw, parse_constant=_reject_constant)
            except ValueError:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = value
    try:
        return SynthesisOptions.model_validate(values)
    except ValidationError as exc:
        raise RequestError(422, validation_message(exc)) from None


def resolve_spec(options: SynthesisOptions, info: dict, config: ServeConfig) -> dict:
    """Fill defaults and check the options against the served model. Returns steps, seconds, sampler, seed,
    guidance (a dict, as it travels to the sampler deployment)."""
    trained = int(info["trained_steps"])
    limit = min(trained, config.max_steps)
    steps = options.steps if options.steps is not None else min(config.default_steps, limit)
    if steps > trained:
        raise RequestError(422, f"steps: {steps} is more than the {trained} diffusion steps the model was trained with")
    if steps > config.max_steps:
        raise RequestError(422, f"steps: {steps} is more than this service allows ({config.max_steps})")
    default_guidance = config.default_guidance if info["guidance_allowed"] else 0.0
    guidance = options.guidance if options.guidance is not None else default_guidance
    if guidance != 0 and not info["guidance_allowed"]:
        raise RequestError(
            422,
            "guidance: this model was trained without condition dropout (cond_drop_prob = 0), so classifier-free "
            "guidance is not available; send guidance 0 or leave it out",
        )
    return {
        "steps": int(steps),
        "seconds": float(options.seconds if options.seconds is not None else config.default_seconds),
        "sampler": options.sampler or config.default_sampler,
        "seed": int(options.seed if options.seed is not None else secrets.randbelow(SEED_MAX + 1)),
        "guidance": float(guidance),
    }


def resolve_gap(options: SynthesisOptions, methods: list[str], config: ServeConfig) -> str:
    """The gap reduction of a text query: the request's, else the service default where the bundle has it."""
    if options.gap_reduction is None:
        return config.default_gap_reduction if config.default_gap_reduction in methods else "none"
    if options.gap_reduction not in methods:
        raise RequestError(
            422,
            f"gap_reduction: this model's bundle offers {', '.join(methods)} (fit the statistics with "
            "jobs/fit_modality_gap.py)",
        )
    return options.gap_reduction
