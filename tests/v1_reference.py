"""An independent, deliberately plain implementation of the published EnCodecMAE v1 layer, and a
writer of random checkpoints in the v1 file layout, for parity tests.

Written from the v1 spec, not from our model code: per-head Python loops, explicit ResiDual
streams, heads of ``dim // heads`` channels viewed channel-interleaved as (T, head_dim, H).
"""
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class V1Spec:
    dim: int = 32
    heads: int = 4
    layers: int = 2
    ff: int = 64
    q: int = 8

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def inner(self) -> int:  # width of the attention projections: 1020 for D 1024 and 12 heads
        return self.heads * self.head_dim


SMALL = V1Spec()
# the geometry of the published large (D 1024, 12 heads of 85 channels), with 2 layers to stay fast
LARGE_GEOMETRY = V1Spec(dim=1024, heads=12, layers=2, ff=256, q=8)


def random_encodec(seed: int = 1):
    """A random-init EnCodec 24 kHz whose RVQ has real (random) codebooks: random init leaves zeros."""
    from encodec import EncodecModel

    torch.manual_seed(seed)
    with pytest.warns(FutureWarning):  # encodec still uses the deprecated weight_norm
        encodec = EncodecModel.encodec_model_24khz(pretrained=False)
    for layer in encodec.quantizer.vq.layers:
        layer._codebook.embed.normal_()
        layer._codebook.inited.fill_(1)
    return encodec


def make_v1_checkpoint(folder, spec: V1Spec = SMALL, shared_feed_forward: bool = True, seed: int = 1):
    """A random checkpoint in the published v1 layout with its config.gin; returns (path, state, encodec)."""
    encodec = random_encodec(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape) * scale

    dim, inner = spec.dim, spec.inner
    state = {f"wav_encoder.model.{k}": v for k, v in encodec.encoder.state_dict().items()}
    state.update({f"target_encoder.model.{k}": v for k, v in encodec.quantizer.state_dict().items()})
    state.update({"feat_projector.weight": rand(dim, 128, scale=0.05), "feat_projector.bias": rand(dim),
                  "decoder_projector.weight": rand(dim, dim, scale=dim ** -0.5),
                  "decoder_projector.bias": rand(dim),
                  "positional_encoder.scale": torch.tensor(0.7),
                  "head.layer.weight": rand(spec.q * 1024, dim), "head.layer.bias": rand(spec.q * 1024)})
    for stack in ("visible_encoder", "decoder"):
        def feed_forward():
            return {"ff_layer.0.weight": rand(spec.ff, dim, scale=dim ** -0.5), "ff_layer.0.bias": rand(spec.ff),
                    "ff_layer.2.weight": rand(dim, spec.ff, scale=spec.ff ** -0.5), "ff_layer.2.bias": rand(dim)}

        shared = feed_forward()  # v1 shares one feed-forward module across a stack's layers
        for i in range(spec.layers):
            prefix = f"{stack}.encoder_layers.{i}."
            for w in ("wq", "wk", "wv"):
                state[prefix + f"att_layer.{w}.weight"] = rand(inner, dim, scale=1.5 * dim ** -0.5)
            state[prefix + "att_layer.wo.weight"] = rand(dim, inner, scale=inner ** -0.5)
            for name, value in (shared if shared_feed_forward else feed_forward()).items():
                state[prefix + name] = value
            for norm in ("norm1", "norm2"):
                state[prefix + f"{norm}.weight"] = 1 + rand(dim, scale=0.1)
                state[prefix + f"{norm}.bias"] = rand(dim, scale=0.1)
        state[f"{stack}.final_norm.weight"] = 1 + rand(dim, scale=0.1)
        state[f"{stack}.final_norm.bias"] = rand(dim, scale=0.1)
    path = folder / "model.pt"
    torch.save({"state_dict": state}, path)
    (folder / "config.gin").write_text(
        f"NUM_ENCODEC_TARGETS={spec.q}\nMODEL_DIM={dim}\nNUM_ENCODER_LAYERS={spec.layers}\n"
        f"NUM_ENCODER_HEADS={spec.heads}\nNUM_DECODER_LAYERS={spec.layers}\nNUM_DECODER_HEADS={spec.heads}\n"
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


def ref_attention(x, state, prefix, spec: V1Spec):
    """One clip (T, D) -> (T, D): heads of dim // heads channels, interleaved as (T, head_dim, H)."""
    frames = x.shape[0]
    heads, head_dim = spec.heads, spec.head_dim
    q, k, v = (x @ state[prefix + f"att_layer.{w}.weight"].T for w in ("wq", "wk", "wv"))
    q, k, v = (y.view(frames, head_dim, heads) for y in (q, k, v))
    out = torch.zeros(frames, head_dim, heads)
    for h in range(heads):
        weights = torch.softmax(q[:, :, h] @ k[:, :, h].T * head_dim ** -0.5, dim=-1)
        out[:, :, h] = weights @ v[:, :, h]
    return out.reshape(frames, spec.inner) @ state[prefix + "att_layer.wo.weight"].T


def ref_stack(x, state, stack, spec: V1Spec = SMALL):
    """ResiDual: (a, b) start at x; a <- LN1(a + o), b <- b + o; a <- LN2(a + f), b <- b + f; out a + LN(b)."""
    def norm(y, name):
        return F.layer_norm(y, (spec.dim,), state[name + ".weight"], state[name + ".bias"])

    a = b = x
    per_layer = []
    for i in range(spec.layers):
        prefix = f"{stack}.encoder_layers.{i}."
        o = ref_attention(a, state, prefix, spec)
        a, b = norm(a + o, prefix + "norm1"), b + o
        hidden = torch.relu(a @ state[prefix + "ff_layer.0.weight"].T + state[prefix + "ff_layer.0.bias"])
        f = hidden @ state[prefix + "ff_layer.2.weight"].T + state[prefix + "ff_layer.2.bias"]
        a, b = norm(a + f, prefix + "norm2"), b + f
        per_layer.append(a)
    return a + norm(b, f"{stack}.final_norm"), per_layer


def ref_features(encodec, state, wav_24k, spec: V1Spec = SMALL):
    """Encoder input of one clip (T, D) and the reference encoder's (output, per-layer a stream)."""
    features = encodec.encoder(wav_24k[None, None])[0].T  # (T, 128)
    frames = features.shape[0]
    x = features @ state["feat_projector.weight"].T + state["feat_projector.bias"] + \
        ref_positions(frames, spec.dim, float(state["positional_encoder.scale"]))
    output, per_layer = ref_stack(x, state, "visible_encoder", spec)
    return x, output, per_layer
