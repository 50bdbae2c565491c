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
from encodecmae_s3prl.upstream.import_v1 import (V1CheckpointError, config_from_v1, load_v1, parse_config_gin)
from encodecmae_s3prl.upstream.masking import gather_visible, masked_counts, scatter_back, span_mask
from encodecmae_s3prl.upstream.model import (IGNORE, EncodecMAE, EncodecMAEConfig, frame_cross_entropy,
                                             get_config, masked_prediction_loss)

torch.set_num_threads(2)


def tiny(**overrides) -> EncodecMAE:
    torch.manual_seed(0)
    return EncodecMAE(replace(get_config("tiny"), **overrides))


def tones(lengths, seed=0):
    """Padded (B, S) batch of noisy sines at 24 kHz, one frequency per clip."""
    generator = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        t = torch.arange(n) / 24_000
        wav[i, :n] = 0.5 * torch.sin(2 * math.pi * (110 * (i + 1)) * t) + 0.05 * torch.randn(n, generator=generator)
    return wav, torch.tensor(lengths)


# --- (a) v1 parity: an independent straightforward implementation of the v1 spec ---------------------
V1_DIM, V1_HEADS, V1_LAYERS, V1_FF, V1_Q = 32, 4, 2, 64, 8


def make_v1_checkpoint(folder):
    """A tiny random checkpoint in the published v1 layout, config.gin beside it; returns the EnCodec used."""
    from encodec import EncodecModel

    torch.manual_seed(1)
    with pytest.warns(FutureWarning):  # encodec still uses the deprecated weight_norm
        encodec = EncodecModel.encodec_model_24khz(pretrained=False)
    for layer in encodec.quantizer.vq.layers:  # give the RVQ real codebooks (random init leaves zeros)
        layer._codebook.embed.normal_()
        layer._codebook.inited.fill_(1)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape) * scale

    state = {f"wav_encoder.model.{k}": v for k, v in encodec.encoder.state_dict().items()}
    state.update({f"target_encoder.model.{k}": v for k, v in encodec.quantizer.state_dict().items()})
    state.update({"feat_projector.weight": rand(V1_DIM, 128, scale=0.05), "feat_projector.bias": rand(V1_DIM),
                  "decoder_projector.weight": rand(V1_DIM, V1_DIM), "decoder_projector.bias": rand(V1_DIM),
                  "positional_encoder.scale": torch.tensor(0.7),
                  "head.layer.weight": rand(V1_Q * 1024, V1_DIM), "head.layer.bias": rand(V1_Q * 1024)})
    for stack in ("visible_encoder", "decoder"):
        # v1 shares one feed-forward module across a stack's layers
        ff = {"ff_layer.0.weight": rand(V1_FF, V1_DIM), "ff_layer.0.bias": rand(V1_FF),
              "ff_layer.2.weight": rand(V1_DIM, V1_FF), "ff_layer.2.bias": rand(V1_DIM)}
        for i in range(V1_LAYERS):
            prefix = f"{stack}.encoder_layers.{i}."
            for w in ("wq", "wk", "wv", "wo"):
                state[prefix + f"att_layer.{w}.weight"] = rand(V1_DIM, V1_DIM, scale=0.3)
            for name, value in ff.items():
                state[prefix + name] = value
            for norm in ("norm1", "norm2"):
                state[prefix + f"{norm}.weight"] = 1 + rand(V1_DIM, scale=0.1)
                state[prefix + f"{norm}.bias"] = rand(V1_DIM, scale=0.1)
        state[f"{stack}.final_norm.weight"] = 1 + rand(V1_DIM, scale=0.1)
        state[f"{stack}.final_norm.bias"] = rand(V1_DIM, scale=0.1)
    path = folder / "model.pt"
    torch.save({"state_dict": state}, path)
    (folder / "config.gin").write_text(
        f"NUM_ENCODEC_TARGETS={V1_Q}\nMODEL_DIM={V1_DIM}\nNUM_ENCODER_LAYERS={V1_LAYERS}\n"
        f"NUM_ENCODER_HEADS={V1_HEADS}\nNUM_DECODER_LAYERS={V1_LAYERS}\nNUM_DECODER_HEADS={V1_HEADS}\n"
        "MASKED_LOSS_WEIGHT=0.9\n"
        "tasks.models.EncodecMAE:\n    masked_weight=%MASKED_LOSS_WEIGHT\n"
        "encoder/tasks.models.transformers.MultiHeadAttention:\n    model_dim=%MODEL_DIM\n"
        "    num_heads=%NUM_ENCODER_HEADS\n"
        "decoder/tasks.models.transformers.MultiHeadAttention:\n    num_heads=%NUM_DECODER_HEADS\n")
    return path, state, encodec


def ref_positions(frames, dim, scale):
    table = torch.zeros(frames, dim)
    for t in range(frames):
        for i in range(0, dim, 2):
            angle = t / 10000 ** (i / dim)
            table[t, i], table[t, i + 1] = math.sin(angle), math.cos(angle)
    return scale * table


def ref_attention(x, state, prefix):
    """One clip (T, D), heads interleaved: channels viewed as (T, head_dim, H)."""
    frames, dim = x.shape
    head_dim = dim // V1_HEADS
    q, k, v = (x @ state[prefix + f"att_layer.{w}.weight"].T for w in ("wq", "wk", "wv"))
    q, k, v = (y.view(frames, head_dim, V1_HEADS) for y in (q, k, v))
    out = torch.zeros(frames, head_dim, V1_HEADS)
    for h in range(V1_HEADS):
        weights = torch.softmax(q[:, :, h] @ k[:, :, h].T * head_dim ** -0.5, dim=-1)
        out[:, :, h] = weights @ v[:, :, h]
    return out.reshape(frames, dim) @ state[prefix + "att_layer.wo.weight"].T


def ref_stack(x, state, stack):
    """ResiDual: (a, b) start at x; a <- LN1(a + o), b <- b + o; a <- LN2(a + f), b <- b + f; out a + LN(b)."""
    def norm(y, name):
        return F.layer_norm(y, (V1_DIM,), state[name + ".weight"], state[name + ".bias"])

    a = b = x
    per_layer = []
    for i in range(V1_LAYERS):
        prefix = f"{stack}.encoder_layers.{i}."
        o = ref_attention(a, state, prefix)
        a, b = norm(a + o, prefix + "norm1"), b + o
        hidden = torch.relu(a @ state[prefix + "ff_layer.0.weight"].T + state[prefix + "ff_layer.0.bias"])
        f = hidden @ state[prefix + "ff_layer.2.weight"].T + state[prefix + "ff_layer.2.bias"]
        a, b = norm(a + f, prefix + "norm2"), b + f
        per_layer.append(a)
    return a + norm(b, f"{stack}.final_norm"), per_layer


def test_v1_checkpoint_matches_reference_implementation(tmp_path):
    path, state, encodec = make_v1_checkpoint(tmp_path)
    model = load_v1(path)
    assert model.config.heads == V1_HEADS and model.config.mask_token == "zeros" and model.mask_token is None
    assert model.config.interleaved_heads and model.config.encoder_layers == V1_LAYERS
    lengths = [24_000, 9_600]  # multiples of 320: v1 counted floor(len / 320) frames, we count ceil
    wav, wav_lengths = tones(lengths)
    frames = [n // 320 for n in lengths]
    mask = torch.zeros(2, max(frames), dtype=torch.bool)
    mask[0, 10:40], mask[1, 3:18] = True, True

    with torch.no_grad():
        encoded = model.encode(wav, wav_lengths)
        logits = model(wav, wav_lengths, mask=mask).logits
        assert len(encoded.hidden_states) == V1_LAYERS + 2
        for i, (n, t) in enumerate(zip(lengths, frames)):
            features = encodec.encoder(wav[i, :n][None, None])[0].T  # (T, 128)
            positions = ref_positions(t, V1_DIM, 0.7)
            x = features @ state["feat_projector.weight"].T + state["feat_projector.bias"] + positions
            output, per_layer = ref_stack(x, state, "visible_encoder")
            for ours, ref in zip(encoded.hidden_states, [x, *per_layer, output]):
                torch.testing.assert_close(ours[i, :t], ref, atol=1e-5, rtol=1e-5)
            assert encoded.hidden_states[-1][i, t:].abs().sum() == 0  # padding frames are zeros

            # training path with the same mask: drop, encode, zeros at the dropped frames, decode, head
            keep = ~mask[i, :t]
            visible, _ = ref_stack(x[keep], state, "visible_encoder")
            decoder_in = torch.zeros(t, V1_DIM)
            decoder_in[keep] = visible @ state["decoder_projector.weight"].T + state["decoder_projector.bias"]
            decoded, _ = ref_stack(decoder_in + positions, state, "decoder")
            ref_logits = (decoded @ state["head.layer.weight"].T + state["head.layer.bias"]).view(t, V1_Q, 1024)
            torch.testing.assert_close(logits[i, :t], ref_logits, atol=1e-4, rtol=1e-4)

            # targets: v1 called encodec's quantizer at 75 Hz, 6 kbps (8 codebooks)
            ref_codes = encodec.quantizer.encode(features.T[None], 75, 6.0)[:, 0]  # (Q, T)
            assert torch.equal(model.codec.codes(features[None])[0], ref_codes)


def test_v1_loading_errors_are_clear(tmp_path):
    path, state, _ = make_v1_checkpoint(tmp_path)
    (tmp_path / "config.gin").unlink()
    with pytest.raises(V1CheckpointError, match="attention heads"):
        load_v1(path)
    gin = tmp_path / "other.gin"
    gin.write_text("NUM_ENCODER_HEADS = 4\nMODEL_DIM = 48\n")
    with pytest.raises(V1CheckpointError, match="dim = 48 but the weights have 32"):
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
def test_span_mask_counts_spans_and_padding(mask_prop, span):
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(0, 400, (48,), generator=generator)
        lengths[:3] = torch.tensor([0, 1, span])
        mask = span_mask(lengths, 400, mask_prop, span, generator)
        assert mask.shape == (48, 400) and mask.dtype == torch.bool
        counts = masked_counts(lengths, mask_prop)
        assert torch.equal(mask.sum(1), counts)
        assert torch.equal(counts, torch.round(lengths.double() * mask_prop).long())
        assert not (mask & (torch.arange(400)[None] >= lengths[:, None])).any()  # padding never masked
        for row, count in zip(mask, counts.tolist()):
            # a union of full spans plus at most one shorter one: at most one run is not a multiple of span
            odd = [r for r in _runs(row) if r % span]
            assert len(odd) == (1 if count % span else 0)
            assert all(r % span == count % span for r in odd)


def test_span_mask_equal_lengths_deterministic_and_random():
    lengths = torch.full((16,), 300)
    mask = span_mask(lengths, 320, generator=torch.Generator().manual_seed(0))
    assert (mask.sum(1) == 150).all()  # every clip has the same number of visible frames
    again = span_mask(lengths, 320, generator=torch.Generator().manual_seed(0))
    other = span_mask(lengths, 320, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, again) and not torch.equal(mask, other)
    assert len({tuple(row.nonzero().flatten().tolist()) for row in mask}) == 16  # clips differ
    assert not span_mask(lengths, 300, mask_prop=0.0).any()
    coverage = span_mask(torch.full((2000,), 300), 300, generator=torch.Generator().manual_seed(2)).float().mean(0)
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

    def ce(l, t):  # -log softmax by hand
        return math.log(sum(math.exp(v) for v in l)) - l[t]

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
    wav, lengths = tones([12_000, 7_000])
    extra = torch.randint(0, 16, (2, 40))
    extra[0, :5] = IGNORE
    out = model(wav, lengths, extra_targets=extra, generator=torch.Generator().manual_seed(0))
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
        model(wav, lengths)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(wav, lengths, extra_targets=torch.full((2, 38), 16))


# --- (d) batching and chunking ---------------------------------------------------------------------
def _assert_same_as_alone(model, lengths):
    wav, wav_lengths = tones(lengths, seed=3)
    with torch.no_grad():
        batch = model.encode(wav, wav_lengths)
        for i, n in enumerate(lengths):
            alone = model.encode(wav[i: i + 1, :n])
            t = int(alone.frame_lengths[0])
            assert t == math.ceil(n / 320) == int(batch.frame_lengths[i])
            for ours, ref in zip(batch.hidden_states, alone.hidden_states):
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


def test_features_only_gives_codec_features():
    model = tiny().eval()
    model.features_only = True
    wav, lengths = tones([4_000, 2_000])
    out = model.encode(wav, lengths)
    assert len(out.hidden_states) == 1 and out.output.shape == (2, 13, 128)
    torch.testing.assert_close(out.output[1, :7], model.codec.features(wav[1:, :2000])[0])


# --- (e) the codec stays frozen ------------------------------------------------------------------------
def test_codec_stays_eval_and_unchanged_through_training():
    model = tiny()
    wav, lengths = tones([6_000, 6_000, 4_000])
    model.codec.init_from_audio([wav[0], wav[1], wav[2, :4000]], seed=0)
    before = {k: v.clone() for k, v in model.codec.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()
    assert model.training and model.encoder.training
    assert not any(m.training for m in model.codec.modules())
    for step in range(2):
        out = model(wav, lengths, generator=torch.Generator().manual_seed(step))
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
    wav, _ = tones([24_000, 24_000])
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
    assert all(torch.equal(a, b) for a, b in zip(codec.state_dict().values(), twin.state_dict().values()))


def test_saved_model_reproduces_its_targets_and_outputs():
    model = tiny()
    wav, lengths = tones([8_000, 5_000])
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
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
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


def test_pretrained_offline_error_names_the_ways_out(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.delenv(codec_module.ENCODEC_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(EncodecWeightsError) as err:
        build_encodec("pretrained")
    message = str(err.value)
    assert str(tmp_path / "checkpoints" / "encodec_24khz-d7cc33bc.th") in message
    assert "ENCODEC_CKPT" in message and "encodec_source" in message and "online" in message


# --- (f) it learns ------------------------------------------------------------------------------------
def test_loss_decreases_on_a_fixed_batch():
    model = tiny()
    wav, lengths = tones([9_600, 9_600, 8_000, 9_600])
    model.codec.init_from_audio([w[:n] for w, n in zip(wav, lengths.tolist())], seed=0)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.05)
    model.train()
    losses = []
    for _ in range(20):
        out = model(wav, lengths, generator=torch.Generator().manual_seed(0))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_bf16_autocast_keeps_codec_and_loss_in_float32():
    model = tiny()
    wav, lengths = tones([6_000, 4_000])
    reference = model.codec.features(wav)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.codec.features(wav)
        out = model(wav, lengths, generator=torch.Generator().manual_seed(0))
    assert features.dtype == torch.float32 and torch.equal(features, reference)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


# --- (g) configs -------------------------------------------------------------------------------------
def test_named_configs_and_errors():
    assert get_config("base").encoder_layers == 10 and get_config("small").encoder_layers == 5
    assert (get_config("large").dim, get_config("large").heads) == (1024, 16)
    with pytest.raises(ValueError, match="unknown EnCodecMAE config 'x'; known: tiny, small, base, large"):
        get_config("x")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['layerz'\]; valid keys: \['dim'"):
        EncodecMAEConfig.from_dict({"dim": 64, "layerz": 3})
    config = EncodecMAEConfig.from_dict({"dim": 64, "heads": 4, "codebook_weights": [0.5, 0.5], "num_codebooks": 2})
    assert config.codebook_weights == (0.5, 0.5) and config.extra_weight == 1.0
    with pytest.raises(ValueError, match="codebook_weights"):
        EncodecMAEConfig(num_codebooks=4)
    with pytest.raises(ValueError, match="heads = 5: must be a divisor of dim=64"):
        EncodecMAEConfig(dim=64, heads=5)


def test_positions_are_sin_even_cos_odd_times_scale():
    positions = SinusoidalPositions(8)
    with torch.no_grad():
        positions.scale.fill_(2.0)
    torch.testing.assert_close(positions.table(5), ref_positions(5, 8, 2.0))
