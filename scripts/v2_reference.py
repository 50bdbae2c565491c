"""Reference models and activations from the authors' own EnCodecMAE v2 code (habla-liaa/encodecmae, main branch).

Our re-implementation of the v2 models is compared against these files; nothing here imports our package.

What it does, per model (``--models``):

1. builds the model the way ``scripts/run_pretraining.sh`` composes it: ginpipe's ``gin_configure_externals`` on the
   text of ``configs/imports``, then ginpipe's own ``gin_parse_with_flags`` on the recipe's gin files in the order of
   the shell script plus its ``--mods`` (the ST recipe's dataset/checkpoint macros bound to harmless values), plus the
   two ``encodecmae.hub.get_model`` bindings that ``hub.load_model`` needs. ``torch.manual_seed(seed)`` right
   before ``model()``. EnCodec is never downloaded: ``encodec.EncodecModel.encodec_model_24khz`` is patched (in
   this process only) to build ``pretrained=False`` and to give every RVQ codebook seeded normal values
   (``inited`` = 1, ``cluster_size`` = 1, ``embed_avg`` = ``embed``), so the targets are non-trivial codes;
2. saves ``OUT/NAME.pt`` in the authors' hub format, ``{'imports', 'config', 'state_dict'}``, ``config`` being
   ``gin.config_str()``;
3. reloads it with the body of their ``hub.load_model`` (minus ``hf_hub_download``: same registry juggling,
   ``gin_configure_externals``, ``gin.parse_config``, ``get_model()``, ``load_state_dict`` strict) and checks that
   the state dict comes back bit for bit;
4. on the reloaded model (eval mode, CPU, float32), runs their ``extract_features_from_array(audio, layer='all')``
   on fixed seeded clips (noise + 440 Hz sine at 24 kHz), and, chunk by chunk, their ``apply_processors`` +
   ``extract_activations`` with the true chunk lengths, and their ``forward`` on the first chunk of the 4.01 s
   clip; everything goes to ``OUT/NAME.reference.npz``, and counts, key lists and notes to ``OUT/NAME.meta.json``.
   Besides the 1.0 s, 4.01 s and 30 s clips, a 147199-sample one has a tail chunk whose last frame is padding (see
   ``CLIPS``). The ST recipes' own processor cannot extract features (see ``ST_GET_MODEL_BINDINGS``).

Environment: the authors' dependencies live in a side folder, never in ``.venv``. torch, torchaudio, encodec,
numpy, scikit-learn, soundfile, joblib, threadpoolctl, tqdm and huggingface_hub come from ``.venv``; the rest is
installed with ``--no-deps`` (their requirements.txt asks for pytorch_lightning>=2.0.0 and ginpipe==0.0.2, which pins
gin-config==0.5.0). ``import librosa`` is lazy (lazy_loader), so it imports without numba/soxr/audioread; only
``librosa.load`` (their ``extract_features_from_file``, not called here) would need them. No stub module is needed.

    .venv/bin/python -m pip install --no-deps --target /tmp/v2deps gin-config==0.5.0 ginpipe==0.0.2 \
        loguru==0.7.3 pytorch-lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0 torchinfo==1.8.0 \
        librosa==0.11.0 lazy_loader==0.6 pandas==3.1.1 pytz tzdata

(``--install`` runs exactly that, with ``--deps DIR`` for the folder.) Then, from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/v2deps:/tmp/ecmae_v2 .venv/bin/python scripts/v2_reference.py --out /tmp/v2ref \
        [--install] [--models ec-ec-small,mel256-ec-base,mel256-ec-base_st,ec-ec-large] [--source /tmp/ecmae_v2]

``--source`` is the folder that holds the ``encodecmae`` package (it must also be on PYTHONPATH, as the gin imports
name ``encodecmae.*``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

DEFAULT_DEPS = "/tmp/v2deps"
DEFAULT_SOURCE = "/tmp/ecmae_v2"
PIP_PACKAGES = [
    "gin-config==0.5.0", "ginpipe==0.0.2", "loguru==0.7.3", "pytorch-lightning==2.6.6",
    "lightning-utilities==0.15.3", "torchmetrics==1.9.0", "torchinfo==1.8.0", "librosa==0.11.0",
    "lazy_loader==0.6", "pandas==3.1.1", "pytz", "tzdata",
]

FS = 24000
SEED = 0
AUDIO_SEED = 1234
CODEBOOK_SEED = 4321
# On this audio a random-init EnCodec encoder outputs nearly the same vector every frame (norm ~0.34, frames
# within ~0.008 of their mean). With codebooks of std 1 every frame picks the code of smallest norm; at 0.03 each
# stream has 2 distinct codes in a 4 s chunk; at 0.01 between 2 and 10, the residual stages varying most.
CODEBOOK_STD = 0.01

# Clips: (key prefix, number of samples). 147199 samples = one 4 s chunk + a 51199-sample tail, a length where
# both EnCodec (ceil(n/320) = 160 frames) and the kaldi fbank (1 + (n-637)//318 = 160) give one frame more than
# features_len = n//320 = 159, so a padding mask appears when the true length is passed.
CLIPS = [("clip1.0s", 24000), ("clip4.01s", 96240), ("clip30.0s", 720000), ("clip6.133s", 147199)]
DECODER_CLIP = "clip4.01s"  # the clip whose first chunk also gets decoder activations and a full forward()

# The recipes of scripts/run_pretraining.sh: gin files in the script's order and its --mods. The
# ST models are the self-train step (their teacher only made the targets, which IdentityTarget reads from data).
DATASETS = ["configs/datasets/audioset-unbalanced-24k.gin", "configs/datasets/fma-large-24k.gin",
            "configs/datasets/librilight-6k-24k.gin"]
PRETRAIN = ["configs/base/unsupervised_pretrain.gin", "configs/models/encodecmae.gin", *DATASETS]
SELF_TRAIN = ["configs/base/self-train.gin", "configs/models/encodecmae.gin", "configs/features/mel.gin",
              "configs/features/st.gin"]
LARGE = ["NUM_ENCODER_LAYERS=20", 'DEVICE="[0,1]"', "MODEL_DIM=1024", "TRAIN_BATCH_SIZE=64",
         "pl.Trainer.strategy='ddp_find_unused_parameters_true'"]
# harmless stand-ins for the ST recipe's paths (nothing is read from them when only the model is built)
ST_PATHS = ["ST_CHECKPOINT='none'", "ST_DATASET_DIR='/nonexistent/st_dataset'", "DEVICE=[0]"]

# What hub.load_model calls: get_model() must hand back the two configurables, uncalled.
GET_MODEL_BINDINGS = """
encodecmae.hub.get_model.model = @encodecmae.models.EncodecMAE
encodecmae.hub.get_model.processor = @encodecmae.tasks.features.SequentialProcessor
"""
# st.gin appends LoadNumpyProcessor (reads the teacher's targets from 'filename_targets') to the processors, and
# extract_features_from_array applies every processor after the first: with the recipe's own processor it fails
# (KeyError 'filename_targets'). Their published ST models do extract features, so their saved processor cannot
# have had it; here the ST models get a scoped processor without it (the training bindings stay as composed).
ST_GET_MODEL_BINDINGS = """
encodecmae.hub.get_model.model = @encodecmae.models.EncodecMAE
encodecmae.hub.get_model.processor = @inference/encodecmae.tasks.features.SequentialProcessor
inference/encodecmae.tasks.features.SequentialProcessor.processors = [
    @encodecmae.tasks.features.ReadAudioProcessor, @encodecmae.tasks.features.MelspectrogramProcessor]
"""
# name: (gin files in run_pretraining.sh's order, its --mods, the get_model bindings)
RECIPES = {
    "ec-ec-small": (PRETRAIN + ["configs/features/wav_only.gin"], ["NUM_ENCODER_LAYERS=5"], GET_MODEL_BINDINGS),
    "ec-ec-base": (PRETRAIN + ["configs/features/wav_only.gin"], [], GET_MODEL_BINDINGS),
    "ec-ec-large": (PRETRAIN + ["configs/features/wav_only.gin"], LARGE, GET_MODEL_BINDINGS),
    "mel256-ec-small": (PRETRAIN + ["configs/features/mel.gin"], ["NUM_ENCODER_LAYERS=5"], GET_MODEL_BINDINGS),
    "mel256-ec-base": (PRETRAIN + ["configs/features/mel.gin"], [], GET_MODEL_BINDINGS),
    "mel256-ec-large": (PRETRAIN + ["configs/features/mel.gin"], LARGE, GET_MODEL_BINDINGS),
    "mel256-ec-base_st": (SELF_TRAIN, ST_PATHS, ST_GET_MODEL_BINDINGS),
    "mel256-ec-large_st": (SELF_TRAIN, ST_PATHS + LARGE, ST_GET_MODEL_BINDINGS),
}
DEFAULT_MODELS = "ec-ec-small,mel256-ec-base,mel256-ec-base_st,ec-ec-large"

# What a re-implementation has to match, found while writing this (also written to every meta.json).
NOTES = [
    "extract_features_from_array: wav_lens_i = [min(max(wav_lens[i] - i, 0), chunk_size) for i in range(batch)] "
    "reuses i (batch index, not chunk offset): every chunk gets features_len = min(total, chunk_size) // hop, so a "
    "tail chunk is never padding-masked (see clip6.133s: *_all vs *_chunk1_acts with the true length)",
    "chunks of <= 2048 samples (min_length) are dropped: the 240-sample tail of 4.01 s gives no frames",
    "hop_size = chunk_size * (1 - overlap): any float overlap makes it a float and range() fails",
    "apply_processors casts every input to the model dtype: wav_lens and features_len are float32",
    "layer='all' = the outputs of the visible encoder's layers (ResiDual branch 0 = post-LN); the last one is "
    "replaced by x0 + final_norm(x1) (postnorm_last_activation=True); no input-embedding row, no decoder_proj",
    "TransformerEncoder builds ONE ff Sequential and passes it to every layer: feed-forward weights are shared "
    "across the layers of the encoder (and of the decoder); the state dict repeats them per layer",
    "MultiHeadAttention splits heads with view(N, T, head_dim, heads): the head index varies fastest; no biases "
    "in wq/wk/wv/wo; head_dim = model_dim // heads, so MODEL_DIM=1024 with 12 heads projects to 85*12 = 1020",
    "keys are masked by adding -1e9, queries are not masked",
    "positional encoding: sinusoidal, times a learnable scalar scale (masker.positional_encoder.scale for the "
    "encoder input, decoder.positional_encoder.scale for the decoder)",
    "EnCodec gives ceil(n/320) frames and the kaldi fbank 1 + (n - 637) // 318 (frame_shift 13.28 ms = 318 "
    "samples, frame_length 26.56 ms = 637), while features_len = n // 320 (hop_length=320 in mel.gin)",
    "extract_features_from_array(extract_decoder=True) permanently sets decoder.key_transformer_out",
    "st.gin's processor chain ends with LoadNumpyProcessor, which extract_features_from_array cannot run "
    "(KeyError 'filename_targets'): the ST models here get get_model.processor = a scoped ReadAudio + Mel chain",
]

# Registry entries that hub.load_model keeps when it clears gin (copied from its body).
HUB_KEPT_REGISTRY = ["gin.macro", "gin.constant", "gin.singleton", "ginpipe.core.execute_pipeline",
                     "encodecmae.hub.get_model"]


# ----------------------------------------------------------------------------------------------- environment

def install(deps: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", deps, *PIP_PACKAGES]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


@contextlib.contextmanager
def neutral_cwd():
    """ginpipe's import_module first looks for ``a/b/__init__.py`` relative to the working directory and, if found,
    executes it as a fresh module: run it from an empty folder so the installed/PYTHONPATH packages are used."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield
        finally:
            os.chdir(old)


def patch_encodec() -> None:
    """Every ``EncodecModel.encodec_model_24khz()`` their code makes is built untrained (no download), with seeded
    codebooks. The codebooks come from their own generator, so they do not shift the global stream of the model's
    other initialisations, and are the same in every call (the reload overwrites them from the state dict anyway)."""
    import encodec

    original = encodec.EncodecModel.encodec_model_24khz

    def untrained_24khz(pretrained: bool = True, repository=None):
        model = original(pretrained=False, repository=None)
        gen = torch.Generator().manual_seed(CODEBOOK_SEED)
        for layer in model.quantizer.vq.layers:
            cb = layer._codebook
            embed = torch.randn(cb.embed.shape, generator=gen) * CODEBOOK_STD
            cb.embed.copy_(embed)
            cb.embed_avg.copy_(embed)
            cb.cluster_size.fill_(1.0)
            cb.inited.fill_(1.0)
        return model

    encodec.EncodecModel.encodec_model_24khz = staticmethod(untrained_24khz)


# ------------------------------------------------------------------------------------------- build and save

def compose_config(source: Path, name: str, imports: str) -> str:
    """Parse the recipe as ginpipe does for run_pretraining.sh (appends, $-keys, OUTPUT_DIR default, --mods), add
    the get_model bindings, and return gin.config_str(): the text that goes into the hub file."""
    import gin
    from ginpipe.core import State, gin_configure_externals, gin_parse_with_flags

    files, mods, get_model_bindings = RECIPES[name]
    pkg = source / "encodecmae"
    gin.clear_config()
    with neutral_cwd():
        gin_configure_externals({"module_list_str": imports})
    flags = {"config_path": [str(pkg / f) for f in files], "mods": list(mods),
             "project_name": f"{name}_model", "experiment_name": "v2_reference"}
    state = State()
    state.flags = flags  # as setup_gin does
    gin_parse_with_flags(state, flags)
    gin.parse_config(get_model_bindings)
    return gin.config_str()


def build_model(seed: int):
    """model, processor exactly as hub.load_model gets them, the global seed set right before model()."""
    from encodecmae.hub import get_model

    model_cls, processor_cls = get_model()
    torch.manual_seed(seed)
    model = model_cls()
    processor = processor_cls()
    return model, processor


def hub_load(model_file: Path):
    """The body of their hub.load_model, minus hf_hub_download and with device='cpu'."""
    import gin
    from encodecmae.hub import get_model
    from ginpipe.core import gin_configure_externals

    config_str = gin.config_str()
    registers = copy.deepcopy(gin.config._REGISTRY)
    gin.clear_config()
    for k in [k for k, v in gin.config._REGISTRY.items() if k not in HUB_KEPT_REGISTRY]:
        gin.config._REGISTRY.pop(k)
    model_state = torch.load(model_file, map_location="cpu")  # as they call it (weights_only by default now)
    with neutral_cwd():
        gin_configure_externals({"module_list_str": model_state["imports"]})
    gin.parse_config(model_state["config"])
    model, processor = get_model()
    model = model()
    processor = processor()
    model.load_state_dict(model_state["state_dict"])  # strict=True, their default
    gin.clear_config()
    gin.config._REGISTRY.clear()
    gin.config._REGISTRY = registers
    gin.parse_config(config_str)
    model.eval()
    model.to("cpu")
    model.processor = processor
    if hasattr(model.visible_encoder, "compile"):
        model.visible_encoder.compile = False
    return model


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def shared_groups(model: torch.nn.Module) -> list[list[str]]:
    """state_dict keys that are one tensor (a module reused in several places)."""
    groups: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        groups.setdefault(v.data_ptr(), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


# ------------------------------------------------------------------------------------------------ reference

def make_audio(n: int) -> np.ndarray:
    """0.1 * N(0,1) noise + 0.1 * sin(2 pi 440 t), float32 at 24 kHz; seeded by the clip length alone."""
    rng = np.random.default_rng([AUDIO_SEED, n])
    t = np.arange(n) / FS
    return (0.1 * rng.standard_normal(n) + 0.1 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def chunk_input(model, chunk: np.ndarray, wav_len: int) -> dict:
    """The batch of one that extract_features_from_array builds for a chunk (their apply_processors)."""
    return model.apply_processors({"wav": chunk[None, :], "wav_lens": np.array([wav_len])})


def np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def chunk_reference(model, audio: np.ndarray, prefix: str, out: dict, meta: dict) -> None:
    """Mirror their chunk loop (chunk = 4 s, chunks of <= 2048 samples skipped), but pass each chunk's TRUE length:
    record per-chunk frame counts, features_len and padding mask, and save every used chunk's activations; the
    first chunk also gets its input features."""
    chunk_size = int(model.wav_encoder.fs * model.processor._processors[0].max_length)
    rows = []
    for ci, start in enumerate(range(0, len(audio), chunk_size)):
        chunk = audio[start:start + chunk_size]
        used = chunk.shape[0] > 2048  # their min_length test
        row = {"chunk": ci, "start": start, "samples": int(chunk.shape[0]), "used": bool(used)}
        if used:
            # their buggy wav_lens_i (see notes): min(max(wav_lens[b] - b, 0), chunk_size) for batch index b = 0
            row["their_wav_len"] = min(max(len(audio) - 0, 0), chunk_size)
            x = model.extract_activations(chunk_input(model, chunk, chunk.shape[0]))
            acts = torch.stack(x["visible_embeddings_activations"]).squeeze(1)  # (layers, frames, dim)
            frames, hop = int(acts.shape[1]), int(model.wav_encoder.hop_length)  # np.int64 for EnCodec
            row.update(frames=frames, features_len=int(x["features_len"][0]),
                       masked_frames=int(x["feature_padding_mask"][0].sum()),
                       their_features_len=row["their_wav_len"] // hop,
                       their_masked_frames=max(0, frames - row["their_wav_len"] // hop))
            out[f"{prefix}_chunk{ci}_acts"] = np32(acts)
            out[f"{prefix}_chunk{ci}_feature_padding_mask"] = np32(x["feature_padding_mask"][0])
            if ci == 0:
                out[f"{prefix}_chunk0_wav_features"] = np32(x["wav_features"][0])  # after the post-net Linear
                out[f"{prefix}_chunk0_encoder_out"] = np32(x["wav_features_encoder_out"][0])  # EnCodec out / mel
                out[f"{prefix}_chunk0_features_len"] = np32(x["features_len"])
                out[f"{prefix}_chunk0_visible_embeddings"] = np32(x["visible_embeddings"][0])
        rows.append(row)
    meta["chunks"][prefix] = rows


def decoder_and_forward(model, audio: np.ndarray, prefix: str, out: dict) -> None:
    """First chunk of one clip: encoder + decoder activations through their extract_features_from_array
    (extract_decoder=True), and their forward() in eval mode (no masking then): targets and predicted tokens."""
    chunk_size = int(model.wav_encoder.fs * model.processor._processors[0].max_length)
    chunk = audio[:chunk_size]
    out[f"{prefix}_chunk0_all_with_decoder"] = model.extract_features_from_array(
        chunk, layer="all", return_type="numpy", extract_decoder=True)
    x = chunk_input(model, chunk, chunk.shape[0])
    if type(model.target_encoder).__name__.endswith("IdentityTarget"):
        # ST models read their targets from the data set: give it fixed seeded tokens, shape (streams=1, frames)
        rng = np.random.default_rng(AUDIO_SEED)
        x["targets"] = torch.from_numpy(rng.integers(0, model.head.num_tokens, (1, 300)))
    with torch.no_grad():
        x = model(x)
    out[f"{prefix}_chunk0_decoder_out"] = np32(x["decoder_out"][0])
    out[f"{prefix}_chunk0_predicted_tokens"] = np32(x["predicted_tokens"][0])  # (frames, streams, tokens)
    out[f"{prefix}_chunk0_targets"] = np32(x["targets"][:, 0])  # (streams, frames)


def mel_counts(model) -> dict | None:
    """Frames of their MelspectrogramProcessor for 4 s and 1 s, next to features_len = n // hop_length."""
    procs = model.processor._processors
    mel = [p for p in procs if type(p).__name__.endswith("MelspectrogramProcessor")]
    if not mel:
        return None
    res = {"mel_kwargs": mel[0].mel_kwargs, "norm_stats": mel[0].norm_stats,
           "hop_length": int(model.wav_encoder.hop_length)}
    for secs in (4, 1):
        n = secs * FS
        y = mel[0]({"wav": np.zeros(n, np.float32)})["wav_features"]
        res[f"{secs}s"] = {"samples": n, "mel_frames": int(y.shape[0]), "mel_bins": int(y.shape[1]),
                           "features_len": n // model.wav_encoder.hop_length}
    return res


def reference(model, out: dict, meta: dict) -> None:
    meta["chunks"] = {}
    for prefix, n in CLIPS:
        audio = make_audio(n)
        out[f"{prefix}_audio"] = audio
        out[f"{prefix}_all"] = model.extract_features_from_array(audio, layer="all", return_type="numpy")
        chunk_reference(model, audio, prefix, out, meta)
        if prefix == DECODER_CLIP:
            decoder_and_forward(model, audio, prefix, out)
        # their output equals the concatenation of the chunks run with true lengths unless a tail chunk would have
        # had a padding mask (their wav_lens_i bug drops it)
        ours = np.concatenate([out[f"{prefix}_chunk{r['chunk']}_acts"] for r in meta["chunks"][prefix] if r["used"]], 1)
        meta.setdefault("their_all_vs_true_length_chunks_max_abs_diff", {})[prefix] = (
            float(np.abs(ours - out[f"{prefix}_all"]).max()) if ours.shape == out[f"{prefix}_all"].shape else "shape")


# --------------------------------------------------------------------------------------------------- driver

def run_model(name: str, source: Path, out_dir: Path, imports: str, show_config: bool) -> dict:
    t0 = time.time()
    config = compose_config(source, name, imports)
    model, _ = build_model(SEED)
    state_dict = model.state_dict()
    model_file = out_dir / f"{name}.pt"
    torch.save({"imports": imports, "config": config, "state_dict": state_dict}, model_file)
    if show_config:
        print(f"---- first 60 lines of {name}.pt['config'] ----")
        print("\n".join(config.splitlines()[:60]))
        print("---- end ----")

    reloaded = hub_load(model_file)
    reload_ok = same_state(state_dict, reloaded.state_dict())
    print(f"[{name}] rebuilt by hub.load_model's body, load_state_dict(strict=True) ok, identical: {reload_ok}")
    if not reload_ok:
        raise SystemExit(f"{name}: reloaded state dict differs")

    meta: dict = {
        "name": name, "recipe_files": RECIPES[name][0], "mods": RECIPES[name][1], "seed": SEED,
        "audio_seed": AUDIO_SEED, "codebook_seed": CODEBOOK_SEED, "codebook_std": CODEBOOK_STD, "fs": FS,
        "clips": dict(CLIPS), "model_class": type(reloaded).__mro__[1].__name__,
        "num_parameters": sum(p.numel() for p in reloaded.parameters()),
        "state_dict": {k: list(v.shape) for k, v in state_dict.items()},
        "shared_state_dict_groups": shared_groups(reloaded),
        "config_lines": len(config.splitlines()), "notes": NOTES,
    }
    out: dict = {}
    with torch.no_grad():
        reference(reloaded, out, meta)
    meta["mel"] = mel_counts(reloaded)
    is_st = type(reloaded.target_encoder).__name__.endswith("IdentityTarget")
    meta["targets_source"] = ("fed: seeded random tokens, passed through by IdentityTarget" if is_st
                              else "their EncodecQuantizer (seeded random codebooks), 8 streams")
    if not is_st:
        t = out[f"{DECODER_CLIP}_chunk0_targets"]
        meta["distinct_target_codes_per_stream"] = [int(len(np.unique(r))) for r in t]
    meta["npz"] = {k: [list(v.shape), str(v.dtype)] for k, v in out.items()}
    np.savez(out_dir / f"{name}.reference.npz", **out)
    meta["seconds"] = round(time.time() - t0, 1)
    (out_dir / f"{name}.meta.json").write_text(json.dumps(meta, indent=1))
    print(f"[{name}] {meta['num_parameters']} parameters, {len(state_dict)} state_dict keys, "
          f"{len(meta['shared_state_dict_groups'])} groups of shared tensors, {meta['seconds']} s")
    for prefix, _ in CLIPS:
        frames = [(r["samples"], r.get("frames"), r.get("features_len"), r.get("masked_frames"))
                  for r in meta["chunks"][prefix]]
        print(f"  {prefix}: all {out[prefix + '_all'].shape}; chunks (samples, frames, features_len, masked): "
              f"{frames}; their output vs true-length chunks: "
              f"{meta['their_all_vs_true_length_chunks_max_abs_diff'][prefix]}")
    if meta["mel"]:
        print(f"  mel: 4 s {meta['mel']['4s']}, 1 s {meta['mel']['1s']}")
    if "distinct_target_codes_per_stream" in meta:
        codes = meta["distinct_target_codes_per_stream"]
        print(f"  distinct target codes per stream ({DECODER_CLIP}, chunk 0): {codes}")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--install", action="store_true", help="pip install the side environment into --deps first")
    ap.add_argument("--deps", default=DEFAULT_DEPS, help="side folder for the authors' dependencies")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, from {', '.join(RECIPES)}")
    ap.add_argument("--source", default=DEFAULT_SOURCE, type=Path, help="folder holding the encodecmae package")
    args = ap.parse_args()

    if args.install:
        install(args.deps)
        # start again in a fresh interpreter, so the new folder is seen by the import system
        argv = [a for a in sys.argv if a != "--install"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.deps, str(args.source),
                                                          os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        os.execve(sys.executable, [sys.executable, *argv], env)

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in RECIPES]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {list(RECIPES)}")
    sys.path.insert(0, str(args.source))
    warnings.filterwarnings("ignore", message=".*weight_norm.*")  # encodec's deprecated torch weight_norm
    # gin wraps every class of torch.nn (configs/imports), deprecated ones included
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"gin\.config")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    patch_encodec()
    imports = (args.source / "encodecmae" / "configs" / "imports").read_text()

    t0 = time.time()
    summary = {}
    for i, name in enumerate(names):
        summary[name] = run_model(name, args.source, args.out, imports, show_config=(i == 0))
    print(f"done in {time.time() - t0:.0f} s; files in {args.out}:")
    for f in sorted(args.out.iterdir()):
        print(f"  {f.name}  {f.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
