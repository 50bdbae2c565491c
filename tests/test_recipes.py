"""The two pretraining recipes: ``v1`` (the authors' code at tag v.1.0.0, which trained the published models)
and ``paper`` (the paper's text). Masking statistics against figures recorded from the authors' own
``TimeGapMask``, the decoder input at masked frames, and the recipe recorded in checkpoints.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from encodecmae_s3prl.upstream.checkpoint import safe_load
from encodecmae_s3prl.upstream.config import get_config
from encodecmae_s3prl.upstream.loading import CHECKPOINT_KEY, load_checkpoint, model_config_from_yaml
from encodecmae_s3prl.upstream.masking import masked_counts, span_mask
from encodecmae_s3prl.upstream.model import EncodecMAE, build_model

from conftest import tone_batch

# Recorded from the authors' TimeGapMask (encodecmae/tasks/models/encodecmae/masking.py at tag v.1.0.0, its
# create_mask run unchanged on 20,000 clips of L frames each, padded width = L, gap_size 15, python's random
# seeded 0); the command is in benchmarks/README.md ("Masking"). (L, mask_prop) -> masked frames per clip
# (the same in every clip), runs per clip, mean run length, share of runs longer than 15, P(frame 0 masked).
TIMEGAPMASK = {
    (75, 0.5): dict(count=37, runs=2.4406, mean_run=15.161, share_over_15=0.3005, first=0.0472),
    (75, 0.3): dict(count=22, runs=1.8914, mean_run=11.632, share_over_15=0.1002, first=0.0204),
    (300, 0.5): dict(count=150, runs=7.5584, mean_run=19.846, share_over_15=0.4342, first=0.0448),
    (300, 0.3): dict(count=90, runs=5.5657, mean_run=16.170, share_over_15=0.2189, first=0.0230),
    (301, 0.5): dict(count=150, runs=7.5737, mean_run=19.805, share_over_15=0.4321, first=0.0445),
    (301, 0.3): dict(count=90, runs=5.5716, mean_run=16.153, share_over_15=0.2169, first=0.0223),
}


def mask_statistics(mask: torch.Tensor) -> dict:
    """Per-clip figures of a (B, T) mask: masked counts, runs per clip, run lengths."""
    m = np.pad(mask.numpy().astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(m, axis=1)
    lengths = np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]
    return dict(counts=mask.sum(1), runs=float((edges == 1).sum(1).mean()), mean_run=float(lengths.mean()),
                share_over_15=float((lengths > 15).mean()), first=float(mask[:, 0].float().mean()))


@pytest.mark.parametrize("frames,prop", sorted(TIMEGAPMASK))
def test_v1_masking_matches_the_authors_timegapmask(frames, prop):
    reference = TIMEGAPMASK[(frames, prop)]
    mask = span_mask(torch.full((6000,), frames), frames, prop, 15, torch.Generator().manual_seed(frames),
                     recipe="v1")
    ours = mask_statistics(mask)
    assert (ours["counts"] == reference["count"]).all()  # exact, floor(prop * L)
    # tolerances: about 4 standard errors of 6,000 clips against 20,000
    assert ours["runs"] == pytest.approx(reference["runs"], rel=0.025)
    assert ours["mean_run"] == pytest.approx(reference["mean_run"], rel=0.025)
    assert ours["share_over_15"] == pytest.approx(reference["share_over_15"], abs=0.02)
    assert ours["first"] == pytest.approx(reference["first"], abs=0.012)


def test_paper_masking_is_measurably_not_v1():
    """The test above tells the layouts apart: disjoint spans rarely make runs longer than 15 frames."""
    mask = span_mask(torch.full((6000,), 300), 300, 0.5, 15, torch.Generator().manual_seed(0), recipe="paper")
    ours = mask_statistics(mask)
    v1 = TIMEGAPMASK[(300, 0.5)]
    assert ours["share_over_15"] < v1["share_over_15"] - 0.3 and ours["mean_run"] < v1["mean_run"] - 3


@pytest.mark.parametrize("prop", [0.5, 0.3, 0.75, 0.05])
def test_v1_masks_exactly_floor_of_prop_frames_and_never_padding(prop):
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(0, 420, (256,), generator=generator)
    lengths[:5] = torch.tensor([0, 1, 14, 15, 16])
    mask = span_mask(lengths, 420, prop, 15, generator, recipe="v1")
    expected = (lengths.float() * prop).long()
    assert torch.equal(masked_counts(lengths, prop, "v1"), expected)
    assert torch.equal(mask.sum(1), expected)
    assert not (mask & (torch.arange(420)[None] >= lengths[:, None])).any()


def test_v1_mask_is_deterministic_under_the_generator_whatever_else_draws():
    lengths = torch.full((128,), 300)
    first = span_mask(lengths, 300, generator=torch.Generator().manual_seed(7), recipe="v1")
    torch.rand(1000)  # the global generator is not used
    again = span_mask(lengths, 300, generator=torch.Generator().manual_seed(7), recipe="v1")
    assert torch.equal(first, again)


def test_recipe_names_and_rows():
    for name in ("small", "base", "large"):
        config = get_config(name)
        assert config.recipe == "v1" and config.resolved_mask_layout == "v1" and config.resolved_mask_token == "zeros"
    paper = replace(get_config("base"), recipe="paper")
    assert paper.resolved_mask_layout == "paper" and paper.resolved_mask_token == "learned"
    # each row is its own switch: the v1 recipe with the paper's learned token only
    ablation = model_config_from_yaml({"model": "base", "mask_token": "learned"})
    assert ablation.recipe == "v1" and ablation.resolved_mask_layout == "v1"
    assert ablation.resolved_mask_token == "learned"
    with pytest.raises(ValueError, match=r"recipe = 'v2': must be one of \('v1', 'paper'\)"):
        replace(get_config("base"), recipe="v2")
    with pytest.raises(ValueError, match="mask_layout"):
        replace(get_config("base"), mask_layout="random")


def _decoder_input(model: EncodecMAE, seed: int = 0):
    """What the decoder receives in one training step (forward hook), and the step's mask."""
    seen = {}

    def keep_input(module, args, output):
        seen["x"] = args[0]

    handle = model.decoder.register_forward_hook(keep_input)
    wav, lengths = tone_batch([24_000, 16_000])
    with torch.no_grad():
        out = model(*model.training_inputs(wav, lengths), generator=torch.Generator().manual_seed(seed))
    handle.remove()
    return seen["x"], out.mask


@pytest.mark.parametrize("recipe", ["v1", "paper"])
def test_decoder_input_at_masked_frames(recipe):
    torch.manual_seed(0)
    config = replace(get_config("tiny"), recipe=recipe)
    model = build_model(config).eval()
    x, mask = _decoder_input(model)
    fill = torch.zeros(config.dim) if recipe == "v1" else model.mask_token.detach()
    expected = model.positions(fill.expand(1, x.shape[1], -1))[0]      # (T, D): the fill plus positions
    assert mask.any()
    for b in range(x.shape[0]):
        torch.testing.assert_close(x[b][mask[b]], expected[mask[b]])
    assert (model.mask_token is None) == (recipe == "v1")


@pytest.mark.parametrize("recipe", ["v1", "paper"])
def test_checkpoints_record_their_recipe(tmp_path, recipe):
    from encodecmae_s3prl.demo_data import write_tiny_encodecmae_checkpoint
    from encodecmae_s3prl.evaluation import hear_api
    from encodecmae_s3prl.registry import load_hub_upstream

    path = write_tiny_encodecmae_checkpoint(tmp_path / "states-1.ckpt", recipe=recipe)
    assert safe_load(path)[CHECKPOINT_KEY]["config"]["recipe"] == recipe
    model = load_checkpoint(path)
    assert model.config.recipe == recipe and (model.mask_token is None) == (recipe == "v1")
    # the upstream (how extract and compare load it too) and the HEAR API
    upstream = load_hub_upstream("encodecmae_local", str(path))
    assert upstream.model.config.recipe == recipe
    with torch.no_grad():
        hidden = upstream([torch.zeros(8000).uniform_(-0.5, 0.5)])["hidden_states"]
        assert len(hidden) == model.config.encoder_layers + 2
        hear = hear_api.load_model(str(path), device="cpu")
        assert hear_api.get_scene_embeddings(torch.zeros(1, 8000).uniform_(-0.5, 0.5), hear).isfinite().all()
