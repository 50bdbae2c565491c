"""The EnCodecMAE model: v1 parity against an independent reference, masking, loss, batching, frozen codec.

Everything runs on a random-init EnCodec (no download) and tiny sizes, so the file stays fast on 2 cores.
"""
import math
import urllib.error
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from encodecmae_s3prl.upstream import codec as codec_module
from encodecmae_s3prl.upstream.codec import EncodecWeightsError, build_encodec
from encodecmae_s3prl.upstream.components import SinusoidalPositions
from encodecmae_s3prl.upstream.config import EncodecMAEConfig, get_config
from encodecmae_s3prl.upstream.import_v1 import V1CheckpointError, config_from_v1, load_v1, parse_config_gin
from encodecmae_s3prl.upstream.inference import EncodecFeatures
from encodecmae_s3prl.upstream.loss import IGNORE, frame_cross_entropy, masked_prediction_loss
from encodecmae_s3prl.upstream.masking import gather_visible, masked_counts, scatter_back, span_mask
from encodecmae_s3prl.upstream.model import EncodecMAE, build_model

from conftest import tone_batch
from v1_reference import SMALL, V1Spec, make_v1_checkpoint, ref_positions, ref_stack


def tiny(**overrides) -> EncodecMAE:
    torch.manual_seed(0)
    config = replace(get_config("tiny"), **overrides)
    return build_model(config)


# --- (a) v1 parity against the independent reference in v1_reference.py -------------------------------
# heads dividing dim, and heads of dim // heads channels that leave some out (as v1 large: 12 x 85 of 1024),
# with the feed-forward shared by a stack's layers (as published) and one per layer
@pytest.mark.parametrize("spec, shared", [(SMALL, True), (V1Spec(dim=36, heads=5, layers=2, ff=48), True),
                                          (V1Spec(dim=36, heads=5, layers=2, ff=48), False)])
def test_v1_checkpoint_matches_reference_implementation(tmp_path, spec, shared):
    path, state, encodec = make_v1_checkpoint(tmp_path, spec, shared_feed_forward=shared)
    model = load_v1(path)
    config = model.config
    assert config.heads == spec.heads and config.mask_token == "zeros" and model.mask_token is None
    assert config.interleaved_heads and config.encoder_layers == spec.layers
    assert config.shared_feed_forward == shared
    attention = model.encoder.layers[0].attention
    assert attention.wq.weight.shape == (spec.inner, spec.dim) and attention.wo.weight.shape == (spec.dim, spec.inner)
    layers = model.encoder.layers
    # shared: one tied module (one tensor), not copies; the state dict still names it under every layer, as v1
    assert (layers[0].feed_forward is layers[1].feed_forward) == shared
    assert torch.equal(model.state_dict()["encoder.layers.1.feed_forward.0.weight"],
                       state["visible_encoder.encoder_layers.1.ff_layer.0.weight"])
    lengths = [24_000, 9_600]  # multiples of 320: v1 counted floor(len / 320) frames, we count ceil
    wav, wav_lengths = tone_batch(lengths)
    frames = [n // 320 for n in lengths]
    mask = torch.zeros(2, max(frames), dtype=torch.bool)
    mask[0, 10:40], mask[1, 3:18] = True, True

    with torch.no_grad():
        encoded = model.encode(wav, wav_lengths)
        logits = model(*model.training_inputs(wav, wav_lengths), mask=mask).logits
        assert len(encoded.hidden_states) == spec.layers + 2
        for i, (n, t) in enumerate(zip(lengths, frames, strict=True)):
            features = encodec.encoder(wav[i, :n][None, None])[0].T  # (T, 128)
            positions = ref_positions(t, spec.dim, 0.7)
            x = features @ state["feat_projector.weight"].T + state["feat_projector.bias"] + positions
            output, per_layer = ref_stack(x, state, "visible_encoder", spec)
            for ours, ref in zip(encoded.hidden_states, [x, *per_layer, output], strict=True):
                torch.testing.assert_close(ours[i, :t], ref, atol=1e-5, rtol=1e-5)
            assert encoded.hidden_states[-1][i, t:].abs().sum() == 0  # padding frames are zeros

            # training path with the same mask: drop, encode, zeros at the dropped frames, decode, head
            keep = ~mask[i, :t]
            visible, _ = ref_stack(x[keep], state, "visible_encoder", spec)
            decoder_in = torch.zeros(t, spec.dim)
            decoder_in[keep] = visible @ state["decoder_projector.weight"].T + state["decoder_projector.bias"]
            decoded, _ = ref_stack(decoder_in + positions, state, "decoder", spec)
            ref_logits = (decoded @ state["head.layer.weight"].T + state["head.layer.bias"]).view(t, spec.q, 1024)
            torch.testing.assert_close(logits[i, :t], ref_logits, atol=1e-4, rtol=1e-4)

            # targets: v1 called encodec's quantizer at 75 Hz, 6 kbps (8 codebooks)
            ref_codes = encodec.quantizer.encode(features.T[None], 75, 6.0)[:, 0]  # (Q, T)
            assert torch.equal(model.codec.codes(features[None])[0], ref_codes)


def test_shared_feed_forward_trains_one_tensor_and_refuses_untied_files():
    shared, per_layer = tiny(shared_feed_forward=True), tiny(shared_feed_forward=False)
    ff_params = 2 * 64 * 128 + 128 + 64
    # encoder and decoder stacks have 2 layers each: per-layer FFNs add one FFN per extra layer of each stack
    assert per_layer.parameter_counts()["trainable"] - shared.parameter_counts()["trainable"] == 2 * ff_params
    wav, lengths = tone_batch([24_000, 24_000])
    shared.train()
    shared(*shared.training_inputs(wav, lengths), generator=torch.Generator().manual_seed(0)).loss.backward()
    ff = shared.encoder.layers[0].feed_forward[0].weight
    assert ff is shared.encoder.layers[1].feed_forward[0].weight and ff.grad is not None
    # the optimizer sees the tied tensor once
    assert sum(p is ff for p in shared.trainable_parameters()) == 1
    state = shared.state_dict()
    assert torch.equal(state["encoder.layers.0.feed_forward.0.weight"], state["encoder.layers.1.feed_forward.0.weight"])
    # a per-layer model's state dict cannot silently collapse into a tied one
    with pytest.raises(ValueError, match="shared_feed_forward=False"):
        tiny(shared_feed_forward=True).load_state_dict(per_layer.state_dict())
    tiny(shared_feed_forward=False).load_state_dict(shared.state_dict())  # untying keeps the numbers


def test_v1_heads_are_checked_against_the_projections(tmp_path):
    path, _, _ = make_v1_checkpoint(tmp_path, V1Spec(dim=36, heads=5, layers=2, ff=48))
    gin = tmp_path / "config.gin"
    gin.write_text(gin.read_text().replace("NUM_ENCODER_HEADS=5", "NUM_ENCODER_HEADS=4"))
    # 4 heads of 9 channels make 36, but the projections are 35 wide (5 heads of 7)
    with pytest.raises(V1CheckpointError, match=r"gives 4 heads for visible_encoder, but its attention projections "
                                                r"are 35 wide.*fit these weights: \[5, 7, 35\]"):
        load_v1(path)


def test_parameter_counts_match_v1_and_the_paper():
    """Unique trainable parameters (codec excluded) of v1's own modules, counted once on the authors' code at
    v.1.0.0: small 36,121,601, base 47,933,441, large 118,374,401 (no mask token there, nor under recipe v1; the
    paper recipe's learned token adds D). The paper's
    encoder-side counts (torchinfo: a shared module counts once per use, EnCodec included): 51M, 94M, 269M."""
    v1 = {"small": 36_121_601, "base": 47_933_441, "large": 118_374_401}
    paper = {"small": 51e6, "base": 94e6, "large": 269e6}
    codec = build_encodec("random")
    for name in ("small", "base", "large"):
        config = replace(get_config(name), encodec_source="random")
        with torch.device("meta"):  # shapes only: counts without allocating 500 MB
            model = build_model(config, codec=codec)
        counts = model.parameter_counts()
        assert config.recipe == "v1" and counts["trainable"] == v1[name], name
        with torch.device("meta"):
            paper_recipe = build_model(replace(config, recipe="paper"), codec=codec)
        assert paper_recipe.parameter_counts()["trainable"] == v1[name] + config.dim, name
        assert abs(counts["encoder_side_per_use"] - paper[name]) / paper[name] < 0.05, (name, counts)


def test_v1_loading_errors_are_clear(tmp_path):
    path, state, _ = make_v1_checkpoint(tmp_path)
    (tmp_path / "config.gin").unlink()
    with pytest.raises(V1CheckpointError, match="attention heads"):
        load_v1(path)
    gin = tmp_path / "other.gin"
    gin.write_text("NUM_ENCODER_HEADS = 4\nMODEL_DIM = 48\n")
    with pytest.raises(V1CheckpointError, match=f"dim = 48 but the weights have {SMALL.dim}"):
        load_v1(path, gin)
    gin.write_text("NUM_ENCODER_HEADS = 4\n")
    broken = dict(state)
    broken["visible_encoder.encoder_layers.0.extra_gate.weight"] = torch.zeros(1)
    torch.save({"state_dict": broken}, tmp_path / "odd.pt")
    with pytest.raises(V1CheckpointError, match="extra_gate"):
        load_v1(tmp_path / "odd.pt", gin)
    del broken["visible_encoder.encoder_layers.0.extra_gate.weight"]
    del broken["decoder.encoder_layers.1.norm2.bias"]
    torch.save({"state_dict": broken}, tmp_path / "partial.pt")
    with pytest.raises(V1CheckpointError, match=r"missing \['decoder.layers.1.norm2.bias'\]"):
        load_v1(tmp_path / "partial.pt", gin)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(V1CheckpointError, match="no 'state_dict'"):
        load_v1(tmp_path / "other.pt", gin)


def test_parse_config_gin_reads_v1_format():
    text = """
NUM_ENCODEC_TARGETS=8
MODEL_DIM=1024   # large
NUM_ENCODER_LAYERS=20
NUM_DECODER_LAYERS=2
QUANTIZER_WEIGHTS=[0.5, 0.25,
    0.125, 0.125]
tasks.models.EncodecMAE:
    wav_encoder = @tasks.models.encodecmae.encoders.EncodecEncoder
    masked_weight=0.8
    quantizer_weights=%QUANTIZER_WEIGHTS
encoder/tasks.models.transformers.TransformerEncoder:
    model_dim=%MODEL_DIM
    num_layers=%NUM_ENCODER_LAYERS
encoder/tasks.models.transformers.MultiHeadAttention:
    num_heads=16
decoder/tasks.models.transformers.MultiHeadAttention.num_heads = 8
tasks.models.encodecmae.masking.TimeGapMask:
    gap_size = 10
    mask_prop = 0.4
"""
    parsed = parse_config_gin(text)
    assert parsed == {"dim": 1024, "encoder_layers": 20, "decoder_layers": 2, "heads": 16, "decoder_heads": 8,
                      "num_codebooks": 8, "delta": 0.8, "codebook_weights": (0.5, 0.25, 0.125, 0.125),
                      "mask_span": 10, "mask_prop": 0.4}


def test_config_from_v1_needs_heads():
    state = {"feat_projector.weight": torch.zeros(32, 128), "head.layer.weight": torch.zeros(8 * 1024, 32),
             "visible_encoder.encoder_layers.0.ff_layer.0.weight": torch.zeros(64, 32),
             "visible_encoder.encoder_layers.1.ff_layer.0.weight": torch.zeros(64, 32),
             "decoder.encoder_layers.0.ff_layer.0.weight": torch.zeros(64, 32)}
    with pytest.raises(V1CheckpointError, match="config.gin"):
        config_from_v1(state)
    config = config_from_v1(state, {"heads": 4})
    assert (config.dim, config.encoder_layers, config.decoder_layers, config.ff_dim, config.num_codebooks) == \
        (32, 2, 1, 64, 8)


# --- (b) masking -------------------------------------------------------------------------------------
def _runs(row):
    runs, length = [], 0
    for value in row.tolist() + [False]:
        if value:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


@pytest.mark.parametrize("mask_prop,span", [(0.5, 15), (0.3, 7), (0.75, 4), (0.5, 1)])
def test_paper_span_mask_counts_spans_and_padding(mask_prop, span):
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(0, 400, (48,), generator=generator)
        lengths[:3] = torch.tensor([0, 1, span])
        mask = span_mask(lengths, 400, mask_prop, span, generator, recipe="paper")
        assert mask.shape == (48, 400) and mask.dtype == torch.bool
        counts = masked_counts(lengths, mask_prop, "paper")
        assert torch.equal(mask.sum(1), counts)
        assert torch.equal(counts, torch.round(lengths.double() * mask_prop).long())
        assert not (mask & (torch.arange(400)[None] >= lengths[:, None])).any()  # padding never masked
        for row, count in zip(mask, counts.tolist(), strict=True):
            # a union of full spans plus at most one shorter one: at most one run is not a multiple of span
            odd = [r for r in _runs(row) if r % span]
            assert len(odd) == (1 if count % span else 0)
            assert all(r % span == count % span for r in odd)


@pytest.mark.parametrize("recipe", ["v1", "paper"])
def test_span_mask_equal_lengths_deterministic_and_random(recipe):
    lengths = torch.full((16,), 300)
    mask = span_mask(lengths, 320, generator=torch.Generator().manual_seed(0), recipe=recipe)
    assert (mask.sum(1) == 150).all()  # every clip has the same number of visible frames
    again = span_mask(lengths, 320, generator=torch.Generator().manual_seed(0), recipe=recipe)
    other = span_mask(lengths, 320, generator=torch.Generator().manual_seed(1), recipe=recipe)
    assert torch.equal(mask, again) and not torch.equal(mask, other)
    assert len({tuple(row.nonzero().flatten().tolist()) for row in mask}) == 16  # clips differ
    assert not span_mask(lengths, 300, mask_prop=0.0, recipe=recipe).any()
    coverage = span_mask(torch.full((2000,), 300), 300, generator=torch.Generator().manual_seed(2),
                         recipe=recipe).float().mean(0)
    assert 0.4 < coverage[100:200].mean() < 0.6  # interior frames are masked about half the time


def test_gather_and_scatter_back_round_trip():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([40, 17, 1, 33])
    mask = span_mask(lengths, 40, generator=generator)
    x = torch.randn(4, 40, 6, generator=generator)
    visible, visible_padding, visible_index = gather_visible(x, mask, lengths)
    valid = torch.arange(40)[None] < lengths[:, None]
    keep = valid & ~mask
    assert torch.equal((~visible_padding).sum(1), keep.sum(1))
    for b in range(4):  # visible frames in order, then zeros
        assert torch.equal(visible[b, : keep[b].sum()], x[b, keep[b]])
        assert visible[b, keep[b].sum():].abs().sum() == 0
    token = torch.randn(6, requires_grad=True)
    restored = scatter_back(visible, visible_index, visible_padding, 40, token)
    assert torch.equal(restored[keep], x[keep])
    assert torch.equal(restored[~keep], token.detach().expand(int((~keep).sum()), 6))
    restored.sum().backward()
    assert torch.equal(token.grad, torch.full((6,), float((~keep).sum())))
    assert scatter_back(visible, visible_index, visible_padding, 40)[~keep].abs().sum() == 0


# --- (c) loss ----------------------------------------------------------------------------------------
def test_loss_matches_hand_computation():
    # two clips, T = 3 (second clip 2 frames long), two streams of 2 classes
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 0.0]], [[0.0, 2.0], [1.0, 0.0]]],
                           [[[0.0, 0.0], [1.0, 2.0]], [[2.0, 1.0], [0.0, 0.0]], [[9.0, 9.0], [9.0, 9.0]]]])
    targets = torch.tensor([[[0, 1], [1, 0], [1, IGNORE]],
                            [[1, 1], [0, 0], [IGNORE, IGNORE]]])
    mask = torch.tensor([[True, False, False], [True, True, False]])
    weights, delta = torch.tensor([0.75, 0.25]), 0.9

    def ce(logit, t):  # -log softmax by hand
        return math.log(sum(math.exp(v) for v in logit)) - logit[t]

    # stream 0: masked frames (0,0), (1,0), (1,1); visible (0,1), (0,2)
    m0 = (ce([2, 0], 0) + ce([0, 0], 1) + ce([2, 1], 0)) / 3
    u0 = (ce([1, 1], 1) + ce([0, 2], 1)) / 2
    # stream 1: masked (0,0), (1,0), (1,1); visible (0,1) only, (0,2) is ignored
    m1 = (ce([0, 1], 1) + ce([1, 2], 1) + ce([0, 0], 0)) / 3
    u1 = ce([3, 0], 0) / 1
    expected = 0.75 * (delta * m0 + (1 - delta) * u0) + 0.25 * (delta * m1 + (1 - delta) * u1)

    loss, masked, unmasked = masked_prediction_loss(*frame_cross_entropy(logits, targets), mask, weights, delta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(masked, torch.tensor([m0, m1]))
    torch.testing.assert_close(unmasked, torch.tensor([u0, u1]))


def test_model_loss_is_the_weighted_cross_entropy_of_its_codes():
    model = tiny(extra_targets=16)
    wav, lengths = tone_batch([12_000, 7_000])
    extra = torch.randint(0, 16, (2, 40))
    extra[0, :5] = IGNORE
    out = model(*model.training_inputs(wav, lengths), extra_targets=extra, generator=torch.Generator().manual_seed(0))
    assert out.masked_loss.shape == (9,) and out.logits.shape == (2, 38, 8, 1024)
    assert torch.equal(out.frame_lengths, torch.tensor([38, 22]))
    with torch.no_grad():
        features = torch.cat([model.codec.features(wav[:1]), F.pad(model.codec.features(wav[1:, :7000]),
                                                                    (0, 0, 0, 16))])
        targets = model.codec.codes(features).transpose(1, 2)
        padding = torch.arange(38)[None] >= out.frame_lengths[:, None]
        targets = targets.masked_fill(padding[:, :, None], IGNORE)
        ce, valid = frame_cross_entropy(out.logits, targets)
    codec_loss, masked, unmasked = masked_prediction_loss(ce, valid, out.mask, model.stream_weights[:8], 0.9)
    torch.testing.assert_close(out.masked_loss[:8], masked)
    torch.testing.assert_close(out.unmasked_loss[:8], unmasked)
    weight = sum(model.config.codebook_weights)  # the extra stream's default weight, as the paper
    expected = codec_loss + weight * (0.9 * out.masked_loss[8] + 0.1 * out.unmasked_loss[8])
    torch.testing.assert_close(out.loss.detach(), expected)
    with pytest.raises(ValueError, match="extra target stream"):
        model(*model.training_inputs(wav, lengths))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(*model.training_inputs(wav, lengths), extra_targets=torch.full((2, 38), 16))


# --- (d) batching and chunking ---------------------------------------------------------------------
def _assert_same_as_alone(model, lengths):
    wav, wav_lengths = tone_batch(lengths, seed=3)
    with torch.no_grad():
        batch = model.encode(wav, wav_lengths)
        for i, n in enumerate(lengths):
            alone = model.encode(wav[i: i + 1, :n])
            t = int(alone.frame_lengths[0])
            assert t == math.ceil(n / 320) == int(batch.frame_lengths[i])
            for ours, ref in zip(batch.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(ours[i, :t], ref[0], atol=1e-5, rtol=1e-5)
                assert ours[i, t:].abs().sum() == 0
    return wav, batch


def test_padded_batch_equals_each_clip_alone_with_chunks():
    model = tiny(chunk_seconds=0.2).eval()  # 15-frame chunks (4800 samples) keep the test fast
    lengths = [11_000, 4_800, 3_000, 9_600, 321]
    wav, batch = _assert_same_as_alone(model, lengths)
    # a long clip is its chunks, each encoded alone (positions restart), concatenated in time
    with torch.no_grad():
        pieces = [model.encode(wav[:1, s: min(s + 4800, 11_000)]).output[0] for s in range(0, 11_000, 4800)]
    torch.testing.assert_close(batch.output[0, :35], torch.cat(pieces), atol=1e-5, rtol=1e-5)


def test_padded_batch_equals_alone_beyond_four_seconds():
    model = tiny().eval()
    _assert_same_as_alone(model, [100_800, 24_000])  # 4.2 s: a 300-frame chunk plus 15 frames


def test_encodec_features_baseline_gives_codec_features():
    model = EncodecFeatures(tiny().codec).eval()  # the paper's EC baseline: EnCodec's output, no transformer
    wav, lengths = tone_batch([4_000, 2_000])
    out = model.encode(wav, lengths)
    assert len(out.hidden_states) == 1 and out.output.shape == (2, 13, 128)
    torch.testing.assert_close(out.output[1, :7], model.codec.features(wav[1:, :2000])[0])


def test_one_way_into_the_model_per_job():
    """Training: forward on the frozen codec's output (what a codec cache stores, or training_inputs of audio);
    inference: encode on audio. Chunked inference is composed (inference.encode), not inherited."""
    import inspect

    assert list(inspect.signature(EncodecMAE.forward).parameters)[1:4] == ["features", "frame_lengths", "codes"]
    assert "wav" not in inspect.signature(EncodecMAE.forward).parameters
    assert EncodecMAE.__bases__ == (torch.nn.Module,) and EncodecFeatures.__bases__ == (torch.nn.Module,)
    model = tiny()
    wav, lengths = tone_batch([6_000, 4_000])
    inputs = model.training_inputs(wav, lengths)
    assert inputs.features.shape == (2, 19, 128) and inputs.frame_lengths.tolist() == [19, 13]
    assert inputs.codes.shape == (2, 19, model.config.num_codebooks)
    assert model(*inputs, generator=torch.Generator().manual_seed(0)).logits.shape == (2, 19, 8, 1024)
    encoded = model.eval().encode(wav, lengths)
    assert len(encoded.hidden_states) == model.config.encoder_layers + 2
    assert encoded.output.shape == (2, 19, model.config.dim)
    with pytest.raises(ValueError, match="wav_lengths must lie in"):
        model.training_inputs(wav, torch.tensor([6_001, 10]))


# --- (e) the codec stays frozen ------------------------------------------------------------------------
def test_codec_stays_eval_and_unchanged_through_training():
    model = tiny()
    wav, lengths = tone_batch([6_000, 6_000, 4_000])
    model.codec.init_from_audio([wav[0], wav[1], wav[2, :4000]], seed=0)
    before = {k: v.clone() for k, v in model.codec.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()
    assert model.training and model.encoder.training
    assert not any(m.training for m in model.codec.modules())
    for step in range(2):
        out = model(*model.training_inputs(wav, lengths), generator=torch.Generator().manual_seed(step))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.grad is None and not p.requires_grad for p in model.codec.parameters())
    after = model.codec.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in model.codec.modules())
    counts = model.parameter_counts()
    assert counts["trainable"] == counts["total"] - counts["codec"]
    assert sum(p.numel() for p in model.trainable_parameters()) == counts["trainable"]


def test_codec_frames_codes_and_corpus_init():
    codec = build_encodec("random", num_codebooks=4, standardise=True)
    assert codec.needs_corpus_init()
    for samples in (1, 319, 320, 321, 1000):
        assert codec.features(torch.zeros(1, samples)).shape == (1, math.ceil(samples / 320), 128)
    wav, _ = tone_batch([24_000, 24_000])
    features = codec.features(wav)
    codec.init_from_corpus(features.reshape(-1, 128), seed=0)
    assert not codec.needs_corpus_init()
    standard = codec.standardise(features).reshape(-1, 128)
    torch.testing.assert_close(standard.mean(0), torch.zeros(128), atol=1e-3, rtol=0)
    torch.testing.assert_close(standard.std(0), torch.ones(128), atol=1e-3, rtol=0)
    codes = codec.codes(features)
    assert codes.shape == (2, 4, 75) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 1024
    assert len(codes[:, 0].unique()) > 20  # fitted codebooks: many codes in use
    # with more frames than codes, each stage's k-means leaves less error than the one before
    corpus = torch.randn(3000, 128, generator=torch.Generator().manual_seed(0)) + 5.0
    codec.init_from_corpus(corpus, seed=0)
    errors = codec.quantization_errors(corpus)
    # (a later stage may reach zero: 3000 points, 1024 codes per stage)
    assert errors.shape == (4,) and errors[0] > 0 and (errors >= 0).all() and (errors[1:] < errors[:-1]).all()
    twin = build_encodec("random", num_codebooks=4, standardise=True)
    twin.init_from_corpus(corpus, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(codec.state_dict().values(), twin.state_dict().values(), strict=True))


def test_codec_pads_by_copying_with_the_encodec_packages_exact_features():
    """Our SConv1d padding (torch.cat instead of reflection_pad1d) gives encodec's features bit for bit,
    also for inputs shorter than a pad (encodec's own path), and leaves the encodec package alone."""
    from encodec.modules.conv import SConv1d

    codec = build_encodec("random")
    plain = codec_module._encodec_24khz().encoder.eval()
    plain.load_state_dict(codec.encoder.state_dict())
    assert all("forward" not in vars(m) for m in plain.modules() if isinstance(m, SConv1d))
    generator = torch.Generator().manual_seed(0)
    for samples in (1, 5, 7, 321, 24_000, 24_017):
        wav = torch.randn(2, 1, samples, generator=generator) * 0.1
        with torch.no_grad():
            assert torch.equal(codec.encoder(wav), plain(wav)), samples
    x = torch.randn(2, 3, 10, generator=generator)
    for left, right in ((0, 0), (3, 0), (0, 2), (6, 1)):
        assert torch.equal(codec_module.reflect_pad(x, left, right), F.pad(x, (left, right), mode="reflect"))


def test_saved_model_reproduces_its_targets_and_outputs():
    model = tiny()
    wav, lengths = tone_batch([8_000, 5_000])
    model.codec.init_from_audio([wav[0], wav[1, :5000]], seed=3)
    torch.manual_seed(123)  # a different global RNG must not matter
    again = EncodecMAE.from_state_dict(model.config, model.state_dict())
    features = model.codec.features(wav)
    assert torch.equal(model.codec.codes(features), again.codec.codes(features))
    assert not again.codec.needs_corpus_init()
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode(wav, lengths).output, again.eval().encode(wav, lengths).output)


def test_random_codec_is_fixed_and_encodec_files_load(tmp_path, monkeypatch):
    torch.manual_seed(5)
    first = build_encodec("random")
    torch.manual_seed(6)
    second = build_encodec("random")
    first_state, second_state = first.state_dict().values(), second.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(first_state, second_state, strict=True))
    # a local EnCodec state dict (the encodec package's file layout, decoder included)
    from encodec import EncodecModel

    with pytest.warns(FutureWarning):
        full = EncodecModel.encodec_model_24khz(pretrained=False)
    path = tmp_path / "encodec_24khz.th"
    torch.save(full.state_dict(), path)
    loaded = build_encodec(str(path))
    assert not loaded.random_weights and not loaded.needs_corpus_init()
    assert torch.equal(loaded.encoder.model[0].conv.conv.weight_v, full.encoder.model[0].conv.conv.weight_v)
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.th")
    with pytest.raises(EncodecWeightsError, match="not an EnCodec 24 kHz state dict"):
        build_encodec(str(tmp_path / "bad.th"))
    with pytest.raises(EncodecWeightsError, match="neither 'pretrained', 'random' nor an existing file"):
        build_encodec(str(tmp_path / "missing.th"))


def test_pretrained_offline_error_names_the_ways_out(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.delenv(codec_module.ENCODEC_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", offline)  # what torch.hub's downloads open the URL with
    with pytest.raises(EncodecWeightsError) as err:
        build_encodec("pretrained")
    printed = capsys.readouterr()
    assert "Downloading" not in printed.out + printed.err  # nothing was downloaded: nothing says so
    assert not list(tmp_path.rglob("*.partial"))
    message = str(err.value)
    assert str(tmp_path / "checkpoints" / "encodec_24khz-d7cc33bc.th") in message
    assert "ENCODEC_CKPT" in message and "encodec_source" in message and "online" in message


# --- (f) it learns ------------------------------------------------------------------------------------
def test_loss_decreases_on_a_fixed_batch():
    model = tiny()
    wav, lengths = tone_batch([9_600, 9_600, 8_000, 9_600])
    model.codec.init_from_audio([w[:n] for w, n in zip(wav, lengths.tolist(), strict=True)], seed=0)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.05)
    model.train()
    losses = []
    for _ in range(20):
        out = model(*model.training_inputs(wav, lengths), generator=torch.Generator().manual_seed(0))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_bf16_autocast_keeps_codec_and_loss_in_float32():
    model = tiny()
    wav, lengths = tone_batch([6_000, 4_000])
    reference = model.codec.features(wav)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.codec.features(wav)
        out = model(*model.training_inputs(wav, lengths), generator=torch.Generator().manual_seed(0))
    assert features.dtype == torch.float32 and torch.equal(features, reference)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


# --- (g) configs -------------------------------------------------------------------------------------
def test_named_configs_and_errors():
    assert get_config("base").encoder_layers == 10 and get_config("small").encoder_layers == 5
    # v1 large: D 1024 and the base config's 12 heads (85 channels each, projections 1020 wide)
    assert (get_config("large").dim, get_config("large").heads) == (1024, 12)
    assert all(get_config(n).shared_feed_forward for n in ("small", "base", "large"))
    with pytest.raises(ValueError, match="unknown EnCodecMAE config 'x'; known: tiny, small, base, large"):
        get_config("x")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['layerz'\]; valid keys: \['dim'"):
        EncodecMAEConfig.from_dict({"dim": 64, "layerz": 3})
    config = EncodecMAEConfig.from_dict({"dim": 64, "heads": 4, "codebook_weights": [0.5, 0.5], "num_codebooks": 2})
    assert config.codebook_weights == (0.5, 0.5) and config.extra_weight == 1.0
    with pytest.raises(ValueError, match="codebook_weights"):
        EncodecMAEConfig(num_codebooks=4)
    assert tiny(heads=5).encoder.layers[0].attention.inner_dim == 60
    with pytest.raises(ValueError, match="heads = 65: must be in 1..dim=64"):
        EncodecMAEConfig(dim=64, heads=65)


def test_positions_are_sin_even_cos_odd_times_scale():
    positions = SinusoidalPositions(8)
    with torch.no_grad():
        positions.scale.fill_(2.0)
    torch.testing.assert_close(positions.table(5), ref_positions(5, 8, 2.0))
