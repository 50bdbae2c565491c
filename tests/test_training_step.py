"""The lean training step: bf16 within tolerance of fp32, cached codec output equal to the codec's, the
attention's internal head order invisible in files, accuracy on demand."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from encodecmae_s3prl.demo_data import fit_codec_to_synthetic_audio, harmonic_tone
from encodecmae_s3prl.pretrain_task.corpus import BatchMasks
from encodecmae_s3prl.upstream.codec import FrozenEncodec
from encodecmae_s3prl.upstream.components import SelfAttention
from encodecmae_s3prl.upstream.config import get_config
from encodecmae_s3prl.upstream.host_sync import HostSyncError, forbid_host_syncs
from encodecmae_s3prl.upstream.masking import HostMask
from encodecmae_s3prl.upstream.model import EncodecMAE, build_model


def _model(**overrides) -> EncodecMAE:
    torch.manual_seed(0)
    config = replace(get_config("tiny"), dim=96, heads=4, **overrides)
    model = build_model(config)
    fit_codec_to_synthetic_audio(model)
    return model.train()


def _batch(count=4, seconds=2.0):
    rng = np.random.default_rng(0)
    wav = torch.stack([torch.from_numpy(harmonic_tone(110 * 2 ** (i / 3), seconds, 24000, rng)) for i in range(count)])
    return wav, torch.full((count,), wav.shape[1])


def test_bf16_loss_is_the_fp32_loss_within_bf16_tolerance():
    model = _model()
    wav, lengths = _batch()
    losses = {}
    for precision in ("fp32", "bf16"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = model(*model.training_inputs(wav, lengths), generator=torch.Generator().manual_seed(3))
        losses[precision] = output.loss
        assert output.loss.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: ~0.4 % per rounding; the loss of ~7 nats may move by a few hundredths
    assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < 0.01, losses


def test_step_from_codec_output_equals_step_from_audio():
    """forward(features=..., codes=...) (what the codec cache feeds) is the same step as forward(wav)."""
    model = _model()
    wav, lengths = _batch()
    with torch.no_grad():
        features = model.codec.features(wav)
        codes = model.codec.codes(features, 8).transpose(1, 2)
        from_audio = model(*model.training_inputs(wav, lengths), generator=torch.Generator().manual_seed(1))
        cached = model(features=features, frame_lengths=FrozenEncodec.frame_lengths(lengths), codes=codes,
                       generator=torch.Generator().manual_seed(1))
        # stored as the cache stores them: fp16 features, int16 codes
        stored = model(features=features.half(), frame_lengths=FrozenEncodec.frame_lengths(lengths),
                       codes=codes.short(), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cached.loss, from_audio.loss)
    assert torch.equal(cached.mask, from_audio.mask)
    assert abs(stored.loss - from_audio.loss) / from_audio.loss < 1e-3
    acc = from_audio.masked_accuracy()
    hits = (from_audio.logits.argmax(-1) == codes) & from_audio.mask[:, :, None]
    assert float(acc) == float(hits.sum() / (from_audio.mask.sum() * 8))


@pytest.mark.parametrize("recipe, ragged", [("v1", False), ("paper", True)], ids=["v1_equal_crops", "paper_ragged"])
def test_step_with_a_host_mask_is_the_same_step_and_never_waits_on_the_device(recipe, ragged):
    """The step as training runs it (mask drawn on the host, targets checked where they were read) gives the very
    mask, loss and gradients of the step that draws its own mask, and reads nothing back from the device; the
    latter does (so the check can fail)."""
    torch.manual_seed(0)
    model = build_model(replace(get_config("tiny"), recipe=recipe, extra_targets=6)).train()
    # the codec's output as a cache holds it (fp16 features, int16 codes); ragged: padding in the decoder and
    # unequal visible counts in the encoder
    frame_lengths = torch.tensor([150, 131, 97, 150] if ragged else [150] * 4)
    valid = torch.arange(150)[None, :] < frame_lengths[:, None]
    features = (torch.randn(4, 150, 128) * valid[:, :, None]).half()
    codes = torch.randint(0, 1024, (4, 150, 8), dtype=torch.int16)
    extra = torch.randint(0, 6, (4, 150))
    inputs = dict(features=features, frame_lengths=frame_lengths, codes=codes, extra_targets=extra)
    masks = BatchMasks.of_model(model.config, seed=3, rank=1, world_size=2)

    def step(**how):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(**inputs, **how)
        output.loss.backward()
        return output, [p.grad.clone() for p in model.trainable_parameters()]

    reference, reference_grads = step(generator=masks.generator(7))
    host = HostMask.draw(frame_lengths, 150, model.config.mask_prop, model.config.mask_span, masks.generator(7),
                         model.config.resolved_mask_layout)
    visible = (valid & ~reference.mask).sum(dim=1)
    assert (host.visible_width, host.padded, host.visible_padded) == \
        (int(visible.max()), ragged, bool((visible < visible.max()).any()))
    with forbid_host_syncs("cpu"):
        output, grads = step(mask=host, validate_targets=False)
    assert torch.equal(output.mask, reference.mask) and torch.equal(host.mask, reference.mask)
    assert torch.equal(output.loss, reference.loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads, strict=True))
    with pytest.raises(HostSyncError, match="_local_scalar_dense"), forbid_host_syncs("cpu"):
        step(generator=masks.generator(7))
    # callers that do not say the targets were checked get the clear error, not a device-side assert
    with pytest.raises(ValueError, match=r"extra_targets must be in \[0, 6\) or -100, got \[(6|7|8|9|10|11)[],]"):
        model(**{**inputs, "extra_targets": extra + 6}, mask=host)


def test_step_with_a_host_mask_traces_as_one_graph():
    """With its mask and shapes from the host, the step has nothing for torch.compile to break on (a scalar read
    or a shape read from the data would split it): one graph, as CUDA graphs need."""
    import torch._dynamo

    model = build_model(replace(get_config("tiny"), recipe="v1")).train()
    frame_lengths = torch.full((4,), 150)
    host = HostMask.draw(frame_lengths, 150, 0.5, 15, torch.Generator().manual_seed(0), "v1")
    inputs = dict(features=torch.randn(4, 150, 128), frame_lengths=frame_lengths,
                  codes=torch.randint(0, 1024, (4, 150, 8)))
    traced = torch._dynamo.explain(model)(**inputs, mask=host)
    assert (traced.graph_count, traced.graph_break_count) == (1, 0), traced.break_reasons
    torch._dynamo.reset()


def test_attention_runs_in_head_order_but_saves_v1_interleaved_order():
    attention = SelfAttention(10, 3, interleaved_heads=True)  # 3 heads of 3 channels: 9 wide
    state = attention.state_dict()
    order = attention.interleaved_order()
    assert order.tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]  # v1 channel c = d * 3 + h -> ours h * 3 + d
    torch.testing.assert_close(state["wq.weight"], attention.wq.weight[order].detach())
    torch.testing.assert_close(state["wo.weight"], attention.wo.weight[:, order].detach())
    again = SelfAttention(10, 3, interleaved_heads=True)
    again.load_state_dict(state)
    x = torch.randn(2, 7, 10)
    torch.testing.assert_close(again(x), attention(x))
    # the v1 computation on the saved (interleaved) weights: channels viewed as (T, head_dim, H)
    q, k, v = (x @ state[f"{w}.weight"].T for w in ("wq", "wk", "wv"))
    q, k, v = (t.view(2, 7, 3, 3).permute(0, 3, 1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) * 3 ** -0.5, dim=-1)
    merged = (weights @ v).permute(0, 2, 3, 1).reshape(2, 7, 9)
    torch.testing.assert_close(attention(x), merged @ state["wo.weight"].T)


def test_pretrain_data_config_defaults_are_the_shipped_yaml():
    from dataclasses import asdict
    from pathlib import Path

    import pytest
    import yaml

    from encodecmae_s3prl.pretrain_task.pretrain_expert import ConfigError, PretrainDataConfig

    shipped = yaml.safe_load((Path(__file__).parents[1] / "pretrain_task" / "config_runner.yaml").read_text())
    datarc = shipped["pretrain_expert"]["datarc"]
    defaults = asdict(PretrainDataConfig())
    assert {k: defaults[k] for k in datarc} == {**datarc, "corpus": tuple(datarc["corpus"])}
    assert PretrainDataConfig.from_dict(datarc) == PretrainDataConfig()
    with pytest.raises(ConfigError, match=r"pretrain_expert.datarc: unknown key\(s\) \['batch_size'\] "
                                          r"\(did you mean 'train_batch_size'\?\); valid keys"):
        PretrainDataConfig.from_dict({"batch_size": 8})
    with pytest.raises(ConfigError, match="pretrain_expert.datarc.loader = 'tf': must be 'torch' or 'fairseq2'"):
        PretrainDataConfig.from_dict({"loader": "tf"})
    assert PretrainDataConfig.from_dict({"corpus": "/data/a.tsv"}).corpus == ("/data/a.tsv",)
