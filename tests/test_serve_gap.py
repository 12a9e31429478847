"""The service's gap reduction, combined queries and default guidance: validation and the encoder's batching."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clipsynth_core import ClipConfig, ClipQueryEncoder
from clipsynth_core.modality_gap import GapReducer, PriorConfig
from clipsynth_core.query_blend import blend
from serve.config import ServeConfig
from serve.deployments import ClipEncoder
from serve.schemas import RequestError, SynthesisOptions, parse_json_request, resolve_gap, resolve_spec


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(RequestError) as exc:
        fn(*args)
    return exc.value.status, exc.value.message


def test_gap_reduction_is_validated_and_defaults_to_what_the_bundle_offers():
    config = ServeConfig()
    assert config.default_gap_reduction == "prior"
    req = parse_json_request(b'{"query": "a cello", "gap_reduction": "shift"}')
    assert resolve_gap(req, ["none", "shift", "prior"], config) == "shift"
    assert resolve_gap(SynthesisOptions(), ["none", "shift", "prior"], config) == "prior"
    assert resolve_gap(SynthesisOptions(), ["none", "shift"], config) == "none"  # the default is not there
    assert resolve_gap(SynthesisOptions(), ["none"], config) == "none"
    status, message = _status(resolve_gap, req, ["none"], config)
    assert status == 422 and "offers none" in message and "fit_modality_gap" in message
    status, _ = _status(parse_json_request, b'{"query": "a", "gap_reduction": "rotate"}')
    assert status == 422
    with pytest.raises(ValueError, match="default_gap_reduction"):
        ServeConfig(default_gap_reduction="rotate").validate()


@pytest.mark.parametrize("query", ["piano + ", "*0.5 + guitar", "a*0 + b*0"])
def test_malformed_combined_queries_are_422(query):
    body = json.dumps({"query": query}).encode()
    status, message = _status(parse_json_request, body)
    assert status == 422 and message.startswith("query:")


def test_default_guidance_applies_only_to_models_trained_with_dropout():
    config = ServeConfig(default_guidance=2.0)
    guided = {"trained_steps": 100, "guidance_allowed": True}
    plain = {"trained_steps": 100, "guidance_allowed": False}
    assert resolve_spec(SynthesisOptions(), guided, config)["guidance"] == 2.0
    assert resolve_spec(SynthesisOptions(guidance=0.0), guided, config)["guidance"] == 0.0
    assert resolve_spec(SynthesisOptions(), plain, config)["guidance"] == 0.0
    with pytest.raises(ValueError, match="default_guidance"):
        ServeConfig(default_guidance=-1).validate()


def test_the_encoder_deployment_reduces_and_blends_each_request_as_asked():
    encoder = ClipQueryEncoder(ClipConfig(model_name="tiny", pretrained="none"))
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(40, encoder.embed_dim, generator=g), dim=-1)
    image = F.normalize(text + 0.5 * torch.randn(40, encoder.embed_dim, generator=g), dim=-1)
    body = object.__new__(ClipEncoder.func_or_class)  # the deployment's class, without a Serve replica
    body.encoder, body.gap = encoder, GapReducer.fit(text, image, PriorConfig(steps=5, hidden=16))
    body.clip_pretrained = ""  # the bundle's own CLIP weights
    items = [("a dog", "none"), ("a dog", "shift"), ("a dog + a cat*0.5", "prior"), ("a cat", "none")]
    out = body._encode_items(items)
    raw = encoder.encode_text(["a dog", "a cat"])
    torch.testing.assert_close(torch.from_numpy(out[0]), raw[0])
    torch.testing.assert_close(torch.from_numpy(out[1]), body.gap(raw[:1], "shift")[0])
    mixed = blend(body.gap(raw, "prior"), [1.0, 0.5])
    torch.testing.assert_close(torch.from_numpy(out[2]), mixed, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.from_numpy(out[3]), raw[1])
    assert body.info()["gap"]["methods"] == ["none", "shift", "prior"]
