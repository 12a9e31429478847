"""The service's pieces without Ray: settings, request validation, WAV encoding, image decoding, and the
serving-side model code (parts loaded separately, batched sampling independent of batch-mates)."""

from __future__ import annotations

import io
import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsynth_core import (
    DiffusionConfig,
    Synthesizer,
    SynthesizerConfig,
)
from clipsynth_platform.serving import (
    SamplingRequest,
    group_indices,
    load_bundle_config,
    load_mel_sampler,
    load_query_encoder,
    load_vocoder,
    model_info,
    sample_batch,
    vocode_batch,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the `serve` package lives at the repo root

from serve.config import DeploymentSettings, ServeConfig, redact_uri
from serve.ingress import decode_image
from serve.schemas import (
    SEED_MAX,
    RequestError,
    SynthesisOptions,
    parse_form_options,
    parse_json_request,
    resolve_spec,
)
from serve.wav import wav_bytes


def tiny_config(cond_drop_prob: float = 0.0) -> SynthesizerConfig:
    return SynthesizerConfig.tiny(diffusion=DiffusionConfig(num_steps=100, cond_drop_prob=cond_drop_prob))


def assert_same_up_to_rounding(actual: np.ndarray, desired: np.ndarray) -> None:
    """Equal but for float rounding: a batched convolution sums in another order, and predicting x0 at the
    noisiest step multiplies eps by up to 1/sqrt(alpha_bar_T), so a 1e-7 difference can reach 1e-3 in a few
    mel bins. A batch-mate leaking into a sample would change most bins by far more."""
    diff = np.abs(np.asarray(actual) - np.asarray(desired))
    assert diff.max() < 0.02, diff.max()
    assert (diff > 1e-5).mean() < 0.005, (diff > 1e-5).mean()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return Synthesizer.untrained(tiny_config()).save(tmp_path_factory.mktemp("serve_units") / "bundle")


# ------------------------------------------------------------------------------------------------ settings
def test_config_from_builder_args_coerces_types_and_dotted_deployment_keys():
    c = ServeConfig.from_args(
        {"default_steps": "50", "sampler.num_gpus": "0.5", "sampler.max_replicas": "4", "default_sampler": "ddim"}
    )
    assert c.default_steps == 50 and c.default_sampler == "ddim"
    assert c.sampler.num_gpus == 0.5 and c.sampler.max_replicas == 4
    opts = c.sampler.options(retry_after_s=c.retry_after_s)
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert opts["autoscaling_config"]["min_replicas"] == 1 and opts["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in opts  # Serve refuses num_replicas together with autoscaling
    assert opts["max_queued_requests"] == c.sampler.max_queued_requests > 0
    fixed = DeploymentSettings(min_replicas=2, max_replicas=2).options(retry_after_s=3)
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["backpressure_config"] == {"status_code": 503, "retry_after_s": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"no_such_key": "1"}, "unknown setting 'no_such_key'"),
        ({"gpu.num_gpus": "1"}, "unknown setting 'gpu.num_gpus'"),
        ({"default_steps": "fast"}, "default_steps must be a int"),
        ({"default_steps": "0"}, "default_steps must be in 1..max_steps"),
        ({"default_sampler": "euler"}, "default_sampler must be one of"),
        ({"default_seconds": "5"}, "default_seconds must be one of"),
        ({"sampler.max_ongoing_requests": "4"}, "sampler.max_ongoing_requests must be >= sampler_max_batch_size"),
        ({"vocoder.min_replicas": "3"}, "vocoder: need 0 <= min_replicas <= max_replicas"),
        ({"ingress.max_queued_requests": "0"}, "ingress: max_queued_requests must be >= 1"),
    ],
)
def test_config_rejects_bad_settings_with_a_clear_message(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ServeConfig.from_args(args)


def test_logged_settings_carry_no_credentials():
    config = ServeConfig(model_uri="models:/clipsynth/3", mlflow_tracking_uri="https://bob:s3cret@mlflow.internal:5000")
    logged = json.dumps(config.loggable())
    assert "s3cret" not in logged and "bob" not in logged
    assert config.loggable()["mlflow_tracking_uri"] == "https://***@mlflow.internal:5000"
    assert config.loggable()["model_uri"] == "models:/clipsynth/3"
    assert redact_uri("http://host/path@not-a-user") == "http://host/path@not-a-user"
    assert config.mlflow_tracking_uri.endswith("s3cret@mlflow.internal:5000")  # the setting itself is untouched


def test_model_uri_comes_from_the_environment_when_not_given(monkeypatch):
    monkeypatch.setenv("CLIPSYNTH_MODEL_URI", "models:/clipsynth/7")
    assert ServeConfig().resolved_model_uri() == "models:/clipsynth/7"
    assert ServeConfig(model_uri="/bundles/a").resolved_model_uri() == "/bundles/a"


# ------------------------------------------------------------------------------------------ validation
INFO = {"trained_steps": 100, "guidance_allowed": False}


def status_of(fn, *args) -> tuple[int, str]:
    with pytest.raises(RequestError) as exc:
        fn(*args)
    return exc.value.status, exc.value.message


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"query": "a", "guidance": NaN}', 400, "NaN is not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b'["dog"]', 400, "must be a JSON object"),
        (b"{}", 422, "query: field required"),
        (b'{"query": ""}', 422, "query: String should have at least 1 character"),
        (b'{"query": "   "}', 422, "query must contain a non-blank character"),
        (json.dumps({"query": "x" * 201}).encode(), 422, "at most 200 characters"),
        (b'{"query": 7}', 422, "query: Input should be a valid string"),
        (b'{"query": "a", "steps": 0}', 422, "steps: Input should be greater than or equal to 1"),
        (b'{"query": "a", "steps": 1001}', 422, "steps: Input should be less than or equal to 1000"),
        (b'{"query": "a", "steps": "10"}', 422, "steps: Input should be a valid integer"),
        (b'{"query": "a", "steps": 2.5}', 422, "steps: Input should be a valid integer"),
        (b'{"query": "a", "seed": true}', 422, "seed: Input should be a valid integer"),
        (b'{"query": "a", "seed": -1}', 422, "seed: Input should be greater than or equal to 0"),
        (b'{"query": "a", "seed": 2147483648}', 422, "seed: Input should be less than or equal to 2147483647"),
        (b'{"query": "a", "guidance": 20.5}', 422, "guidance: Input should be less than or equal to 20"),
        (b'{"query": "a", "seconds": 5.0}', 422, "seconds must be one of 4.16, 8.32"),
        (b'{"query": "a", "sampler": "euler"}', 422, "sampler: Input should be 'ddpm' or 'ddim'"),
        (b'{"query": "a", "temperature": 1}', 422, "temperature: unknown field"),
    ],
)
def test_json_requests_are_rejected_with_the_right_status_and_message(body, status, fragment):
    got_status, message = status_of(parse_json_request, body)
    assert got_status == status
    assert fragment in message


def test_valid_request_gets_defaults_and_checks_against_the_model():
    config = ServeConfig(default_steps=50, default_sampler="ddim")
    spec = resolve_spec(parse_json_request(b'{"query": "a dog", "seconds": 8.32}'), INFO, config)
    assert (spec["steps"], spec["sampler"], spec["seconds"], spec["guidance"]) == (50, "ddim", 8.32, 0.0)
    assert 0 <= spec["seed"] <= SEED_MAX
    seeds = {resolve_spec(SynthesisOptions(), INFO, config)["seed"] for _ in range(8)}
    assert len(seeds) > 1  # random when not given
    assert resolve_spec(SynthesisOptions(seed=7, steps=100), INFO, config)["seed"] == 7
    # The default never exceeds what the model was trained with.
    assert resolve_spec(SynthesisOptions(), {**INFO, "trained_steps": 20}, config)["steps"] == 20
    status, message = status_of(resolve_spec, SynthesisOptions(steps=101), INFO, config)
    assert status == 422 and "101 is more than the 100 diffusion steps the model was trained with" in message
    capped = ServeConfig(max_steps=400, default_steps=100)
    status, message = status_of(resolve_spec, SynthesisOptions(steps=500), {**INFO, "trained_steps": 4000}, capped)
    assert status == 422 and "more than this service allows (400)" in message
    status, message = status_of(resolve_spec, SynthesisOptions(guidance=2.0), INFO, config)
    assert status == 422 and "cond_drop_prob = 0" in message
    guided = resolve_spec(SynthesisOptions(guidance=2.0), {**INFO, "guidance_allowed": True}, config)
    assert guided["guidance"] == 2.0


def test_form_fields_are_read_as_json_scalars_then_checked_strictly():
    opts = parse_form_options({"steps": "12", "seed": "3", "seconds": "8.32", "sampler": "ddim", "guidance": ""})
    assert (opts.steps, opts.seed, opts.seconds, opts.sampler, opts.guidance) == (12, 3, 8.32, "ddim", None)
    assert status_of(parse_form_options, {"steps": "ten"})[0] == 422
    assert "steps: Input should be a valid integer" in status_of(parse_form_options, {"steps": "1.5"})[1]
    assert "query: unknown field" in status_of(parse_form_options, {"query": "dog"})[1]


# ---------------------------------------------------------------------------------------------- WAV, image
def test_wav_is_16_bit_mono_pcm_of_the_clipped_rounded_samples():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, 1e-5], dtype=np.float32)
    data = wav_bytes(x, 16_000)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16_000, 1, 2, len(x))
        pcm = np.frombuffer(w.readframes(len(x)), dtype="<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767, 0]
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and len(data) == 44 + 2 * len(x)
    with pytest.raises(ValueError, match="NaN"):
        wav_bytes(np.array([0.0, np.nan]), 16_000)


def test_uploaded_images_are_decoded_or_refused():
    from PIL import Image

    rgb = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    assert np.array_equal(decode_image(buf.getvalue(), max_pixels=1000), rgb)
    assert decode_image(buf.getvalue(), max_pixels=120).shape == (12, 10, 3)  # exactly at the limit
    assert status_of(decode_image, buf.getvalue(), 119)[0] == 413
    assert status_of(decode_image, b"GIF89a but not really", 1000)[0] == 415
    assert status_of(decode_image, b"plain text, no image", 1000)[0] == 415
    assert status_of(decode_image, buf.getvalue()[:60], 1000)[0] == 415  # truncated PNG


# ------------------------------------------------------------------------------------- serving model code
def test_group_indices_keeps_order_of_first_appearance():
    assert group_indices(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]
    assert group_indices([]) == []


@pytest.mark.slow  # 6 s on 2 shared cores: out of make test-fast
def test_parts_loaded_separately_reproduce_the_whole_synthesizer(bundle):
    whole = Synthesizer.load(bundle)
    config = load_bundle_config(bundle)
    encoder = load_query_encoder(bundle, config)
    sampler = load_mel_sampler(bundle, config)
    vocoder = load_vocoder(bundle, config)
    cond = encoder.encode_text(["a dog barking"])
    assert torch.equal(cond, whole.encode(["a dog barking"]))
    mel = sampler.sample_mels(cond, steps=2, seed=[11], seconds=4.16)
    wave_parts = vocode_batch(vocoder, [mel[0].numpy()])[0]
    wave_whole = whole.synthesize(["a dog barking"], steps=2, seed=[11], seconds=4.16)[0].numpy()
    assert wave_parts.shape == (66_560,)
    np.testing.assert_allclose(wave_parts, wave_whole, atol=1e-6)
    # The sampler process holds no CLIP and no vocoder: using them is an error, not a random model.
    with pytest.raises(RuntimeError, match="does not load the CLIP query encoder"):
        sampler.encode(["a dog"])
    with pytest.raises(RuntimeError, match="does not load the vocoder"):
        sampler.vocode(mel)
    info = model_info(sampler, "models:/x/1", bundle)
    assert info["identity"] == whole.identity and info["trained_steps"] == 100 and not info["guidance_allowed"]


@pytest.mark.slow  # 12 s on 2 shared cores: out of make test-fast
def test_a_mixed_batch_gives_each_request_what_it_gets_alone(bundle):
    sampler = load_mel_sampler(bundle)
    encoder = load_query_encoder(bundle)
    conds = encoder.encode_text(["violin", "dog", "violin", "rain"])
    specs = [
        SamplingRequest(steps=2, seconds=4.16, sampler="ddpm", seed=5),
        SamplingRequest(steps=1, seconds=4.16, sampler="ddpm", seed=6),
        SamplingRequest(steps=2, seconds=4.16, sampler="ddpm", seed=7),
        SamplingRequest(steps=1, seconds=8.32, sampler="ddim", seed=5),
    ]
    outs = sample_batch(sampler, conds, specs)
    assert [o.group_size for o in outs] == [2, 1, 2, 1]
    assert all(o.batch_size == 4 for o in outs)
    assert [o.mel.shape for o in outs] == [(64, 64), (64, 64), (64, 64), (64, 128)]
    for i, spec in enumerate(specs):
        alone = sampler.sample_mels(
            conds[i : i + 1], steps=spec.steps, seed=[spec.seed], seconds=spec.seconds, sampler=spec.sampler
        )[0].numpy()
        assert_same_up_to_rounding(outs[i].mel, alone)
    # Same condition and steps, different seeds: different mels; the condition matters too.
    assert torch.equal(conds[0], conds[2]) and np.abs(outs[0].mel - outs[2].mel).max() > 1e-3
    other_query = sampler.sample_mels(conds[1:2], steps=2, seed=[5])[0].numpy()
    assert np.abs(other_query - outs[0].mel).max() > 1e-3
    # Waveforms of mixed lengths come back per request, each the (frames - 1) x hop + n_fft samples of its mel.
    waves = vocode_batch(load_vocoder(bundle), [o.mel for o in outs])
    assert [w.shape[0] for w in waves] == [66_560, 66_560, 66_560, 132_096]
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_batch(sampler, conds[:1], [SamplingRequest(steps=2, seconds=4.16, sampler="euler", seed=1)])


# ------------------------------------------------------------------------------------------- deploy config
def test_checked_in_serve_config_is_what_serve_build_writes_for_the_app():
    """The same steps as `serve build serve:app` (Ray 2.60's CLI), in this process, against the checked-in file."""
    import yaml
    from ray.serve._private.build_app import build_app
    from ray.serve.deployment import deployment_to_schema
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    import serve

    repo = Path(__file__).resolve().parents[1]
    checked_in = yaml.safe_load((repo / "serve" / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(checked_in)  # what `serve deploy` accepts
    built = build_app(serve.app, name="clipsynth")
    expected = ServeApplicationSchema(
        name="clipsynth",
        route_prefix="/",
        import_path="serve:app",
        runtime_env={},
        deployments=[deployment_to_schema(d) for d in built.deployments],
    ).model_dump(exclude_unset=True)
    app = checked_in["applications"][0]
    assert app == expected
    names = [d["name"] for d in app["deployments"]]
    assert names == ["ClipEncoder", "DiffusionSampler", "Vocoder", "SynthesizerIngress"]
    assert all(d["max_queued_requests"] > 0 for d in app["deployments"])  # every queue is bounded


@pytest.mark.slow  # 6 s on 2 shared cores: out of make test-fast
def test_guided_and_unguided_requests_never_share_a_sampling_loop():
    synth = Synthesizer.untrained(tiny_config(cond_drop_prob=0.1), seed=1)
    conds = synth.encode(["flute", "flute", "drum"])
    specs = [
        SamplingRequest(steps=1, seconds=4.16, sampler="ddpm", seed=3, guidance=0.0),
        SamplingRequest(steps=1, seconds=4.16, sampler="ddpm", seed=3, guidance=3.0),
        SamplingRequest(steps=1, seconds=4.16, sampler="ddpm", seed=4, guidance=1.5),
    ]
    outs = sample_batch(synth, conds, specs)
    assert [o.group_size for o in outs] == [1, 2, 2]
    for i, spec in enumerate(specs):
        alone = synth.sample_mels(conds[i : i + 1], steps=1, seed=[spec.seed], guidance=spec.guidance)[0].numpy()
        assert_same_up_to_rounding(outs[i].mel, alone)
    assert np.abs(outs[0].mel - outs[1].mel).max() > 1e-4  # same seed, guidance changes the sample


def test_gpu_serve_config_asks_for_gpu_fractions_bf16_and_a_compiled_sampler():
    """serve/serve_config_gpu.yaml is what `serve deploy` accepts, and its args build an app whose deployments ask
    Ray for the GPU fractions it names (the sampler's and vocoder's batches fit their queues)."""
    import yaml
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    import serve

    repo = Path(__file__).resolve().parents[1]
    checked_in = yaml.safe_load((repo / "serve" / "serve_config_gpu.yaml").read_text())
    ServeDeploySchema.model_validate(checked_in)
    app = checked_in["applications"][0]
    assert app["import_path"] == "serve:app_builder"
    config = ServeConfig.from_args(app["args"])  # every key a known field, every value in bounds
    assert (config.sampler_precision, config.compile_sampler) == ("bf16", True)
    built = build_app(serve.app_builder(app["args"]), name="clipsynth")
    gpus = {d.name: d.ray_actor_options["num_gpus"] for d in built.deployments}
    assert gpus == {"ClipEncoder": 0.1, "DiffusionSampler": 0.5, "Vocoder": 0.25, "SynthesizerIngress": 0.0}
    assert sum(gpus.values()) <= 1.0  # the three models share one GPU
    sampler = next(d for d in built.deployments if d.name == "DiffusionSampler")
    assert sampler.max_ongoing_requests >= config.sampler_max_batch_size == 64


def test_sampler_precision_is_validated():
    with pytest.raises(ValueError, match="sampler_precision must be one of auto, fp32, bf16"):
        ServeConfig.from_args({"sampler_precision": "fp16"})
    assert ServeConfig.from_args({"compile_sampler": "true"}).compile_sampler is True
