"""Modality-gap reduction (clipsynth_core.modality_gap): the shift's closed form, the prior, the bundle files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipsynth_core.modality_gap import GapReducer, PriorConfig, check_gap_method, train_prior


def _two_cones(n: int = 400, dim: int = 16, seed: int = 0):
    """Paired unit vectors: 4 classes; texts around one offset direction, images around another."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(4, dim, generator=g), dim=-1)
    text_axis, image_axis = torch.zeros(dim), torch.zeros(dim)
    text_axis[0], image_axis[1] = 1.5, 1.5
    cls = torch.randint(0, 4, (n,), generator=g)
    text = F.normalize(centres[cls] + text_axis, dim=-1)  # one text per class: every row of a class shares it
    image = F.normalize(centres[cls] + image_axis + 0.2 * torch.randn(n, dim, generator=g), dim=-1)
    return text, image, cls


def test_shift_moves_the_mean_text_embedding_onto_the_mean_image_embedding():
    text, image, _ = _two_cones()
    reducer = GapReducer.fit(text, image, with_prior=False)
    delta = image.mean(0) - text.mean(0)
    torch.testing.assert_close(reducer.mean_image - reducer.mean_text, delta)
    # Before renormalising, the shifted texts' mean is the image mean exactly (mean(t + d) = mean(t) + d).
    torch.testing.assert_close((text + delta).mean(0), image.mean(0), atol=1e-6, rtol=0)
    shifted = reducer(text, "shift")
    torch.testing.assert_close(shifted, F.normalize(text + delta, dim=-1))
    torch.testing.assert_close(shifted.norm(dim=-1), torch.ones(len(text)))
    # After renormalising the mean moves from far to near the image mean.
    before = (text.mean(0) - image.mean(0)).norm()
    after = (shifted.mean(0) - image.mean(0)).norm()
    assert after < 0.25 * before, (float(before), float(after))


def test_none_is_the_identity_and_unknown_methods_are_refused():
    text, image, _ = _two_cones(n=50)
    reducer = GapReducer.fit(text, image, with_prior=False)
    assert reducer(text, "none") is text
    assert reducer.methods == ("none", "shift")
    with pytest.raises(ValueError, match="not one of"):
        reducer(text, "rotate")
    with pytest.raises(ValueError, match="no prior"):
        reducer(text, "prior")
    with pytest.raises(ValueError, match="dims"):
        reducer(torch.zeros(2, 3), "shift")
    assert check_gap_method("prior") == "prior"


@pytest.mark.slow  # 73 s on 2 shared cores: out of make test-fast
def test_prior_maps_each_text_near_its_class_frames_and_beats_the_shift():
    text, image, cls = _two_cones()
    prior, info = train_prior(text, image, PriorConfig(steps=400, hidden=64, seed=0))
    out = prior(text)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(text)))
    # The cosine a regressor can reach at best: each text's output at its class's mean frame direction.
    class_means = torch.stack([F.normalize(image[cls == c].mean(0), dim=-1) for c in range(4)])
    best = float((class_means[cls] * image).sum(-1).mean())
    assert info["pair_cosine_before"] < 0.5 < info["pair_cosine_after"]
    assert info["pair_cosine_after"] > best - 0.03, (info, best)
    reducer = GapReducer.fit(text, image, PriorConfig(steps=400, hidden=64), with_prior=True)
    shift_cos = float((reducer(text, "shift") * image).sum(-1).mean())
    prior_cos = float((reducer(text, "prior") * image).sum(-1).mean())
    assert prior_cos > shift_cos


def test_a_fresh_prior_is_the_identity_map():
    from clipsynth_core.modality_gap import EmbeddingPrior

    text = F.normalize(torch.randn(5, 16), dim=-1)
    torch.testing.assert_close(EmbeddingPrior(16, 32)(text), text)


def test_train_prior_refuses_unpaired_inputs():
    with pytest.raises(ValueError, match="paired"):
        train_prior(torch.zeros(3, 4), torch.zeros(2, 4))


def test_gap_statistics_round_trip_through_a_directory(tmp_path):
    text, image, _ = _two_cones(n=100)
    reducer = GapReducer.fit(text, image, PriorConfig(steps=20, hidden=32))
    reducer.save(tmp_path)
    again = GapReducer.load(tmp_path)
    for method in ("none", "shift", "prior"):
        torch.testing.assert_close(again(text, method), reducer(text, method))
    assert again.info["gap_norm"] == pytest.approx(reducer.info["gap_norm"])
    assert GapReducer.load(tmp_path / "elsewhere") is None


def test_a_bundle_carries_its_gap_statistics_and_encode_applies_them(tmp_path):
    from clipsynth_core import Synthesizer, SynthesizerConfig
    from clipsynth_core.query_blend import blend

    synth = Synthesizer.untrained(SynthesizerConfig.tiny())
    with pytest.raises(ValueError, match="no gap statistics"):
        synth.encode(["a dog"], "shift")
    dim = synth.encoder.embed_dim
    text, image, _ = _two_cones(n=60, dim=dim)
    synth.gap = GapReducer.fit(text, image, PriorConfig(steps=10, hidden=16))
    again = Synthesizer.load(synth.save(tmp_path / "bundle"))
    assert again.gap is not None and again.gap.methods == ("none", "shift", "prior")
    raw = again.encoder.encode_text(["a dog", "a cat"])
    torch.testing.assert_close(again.encode(["a dog", "a cat"]), raw)
    for method in ("shift", "prior"):
        torch.testing.assert_close(again.encode(["a dog", "a cat"], method), synth.gap(raw, method))
        # a combined query blends the reduced parts
        mixed = again.encode(["a dog*0.7 + a cat*0.3"], method)[0]
        torch.testing.assert_close(mixed, blend(synth.gap(raw, method), [0.7, 0.3]))
    assert Synthesizer.load(Synthesizer.untrained(SynthesizerConfig.tiny()).save(tmp_path / "plain")).gap is None
