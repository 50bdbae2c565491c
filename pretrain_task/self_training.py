"""The self-training stage (+ST): k-means targets from a trained model's last encoder layer.

    python -m encodecmae_s3prl.pretrain_task.self_training -k result/pretrain/stage1/states-500000.ckpt \\
        --corpus /data/train.tsv --out result/st_targets [--teacher CKPT] [--recipe v1|paper]

1. embeds ``--num-clips`` random 4 s crops with the teacher (``--teacher``, else the ``-k`` model; no
   masking): the last encoder layer's ``a`` stream, what v1's ``get_activations`` returns and clusters
   (not the output a + LN(b));
2. fits k-means (torch, k-means++ seeding) on ``--kmeans-frames`` frames sampled from those (all of them
   when 0);
3. labels the corpus (``--labels``): ``crop`` labels max(1, floor(duration / 4 s)) stored 4 s crops per
   file, each in its own context, and stage 2 trains on those crops; ``file`` labels whole files in
   4 s chunks from t = 0 and stage 2 draws fresh random crops;
4. writes ``config_model_st.yaml`` (the ``-k`` model + one extra stream of k classes, weight Σγ_q).

The store is a frame store (``frame_store.py``: ``meta.json`` with k, the labels' layout and provenance,
``shard-*.codes.npy`` int16 and their indexes, plus ``kmeans.pt`` and ``config_model_st.yaml``), labelled shard by
shard in a hidden ``.<out>.partial`` folder (a rerun after a crash keeps the shards labelled with the same
centroids) and moved into place when complete.

``--recipe`` sets the defaults of 2 and 3 (the ``-k`` model's recipe unless given): ``v1`` as the
authors' code made the published +ST models (10,000 frames, 300 iterations at most as scikit-learn's
KMeans, per-crop labels), ``paper`` (every frame of the clips, 50 iterations, whole-file labels).

Stage 2 continues from the ``-k`` weights:

    python run_pretrain.py -u encodecmae -n stage2 -g result/st_targets/config_model_st.yaml \\
        -o "config.pretrain_expert.datarc.target_store=result/st_targets,,config.runner.total_steps=150000,,\\
config.pretrain_expert.datarc.init_from=result/pretrain/stage1/states-500000.ckpt"
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from tqdm import tqdm

from encodecmae_s3prl.errors import UserError, user_errors
from encodecmae_s3prl.pretrain_task import frame_store
from encodecmae_s3prl.pretrain_task.corpus import (
    CROP_SECONDS,
    AudioFile,
    CropSampler,
    draw_start_frame,
    load_corpus,
    read_crop_at,
)
from encodecmae_s3prl.pretrain_task.frame_store import FrameStore
from encodecmae_s3prl.settings import add_trust_flag, trust_checkpoint
from encodecmae_s3prl.upstream.atomic import atomic_write_text, remove_temporaries, replace_folder
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.checkpoint import atomic_save
from encodecmae_s3prl.upstream.codec import FRAME_RATE, HOP, SAMPLE_RATE
from encodecmae_s3prl.upstream.kmeans import TooFewPointsError, assign, kmeans
from encodecmae_s3prl.upstream.loading import load_checkpoint
from encodecmae_s3prl.upstream.loss import IGNORE


class TargetStoreError(UserError, ValueError):
    pass


LABELS = ("crop", "file")
# what stage 2 predicts: v1 (the paper) adds the k-means stream beside the codebooks; v2 (the authors' main branch,
# configs/features/st.gin) predicts the k-means stream alone, weight 1 (NUM_TOTAL_TARGETS=1, quantizer_weights [1.])
TARGETS: Dict[str, Dict[str, Any]] = {
    "codec+kmeans": {"codec_targets": True},
    "kmeans": {"codec_targets": False, "extra_target_weight": 1.0},
}
TARGET_NOTES = {"codec+kmeans": "the codebooks plus one extra stream weighted sum(gamma_q) of",
                "kmeans": "no codebook head, one stream of weight 1 of"}
VERSION = 2           # the store's layout: a frame store (1: index.json + codes.npy, no longer read)
FILES_PER_SHARD = 256
# both recipes: k-means with k = 1024 on the activations of 10,000 random training crops (the paper's "10k clips")
KMEANS_CLUSTERS = 1024
KMEANS_CLIPS = 10_000
# what each recipe does in this stage, setting by setting (each also an option of its own)
ST_RECIPES: Dict[str, Dict[str, Any]] = {
    "v1": {"kmeans_frames": 10_000, "iterations": 300, "labels": "crop"},
    "paper": {"kmeans_frames": 0, "iterations": 50, "labels": "file"},
}


class TargetStore:
    """k-means codes at 75 Hz, a ``FrameStore`` (array ``codes``, int16) with the store's ``meta.json``.

    Two layouts (``meta["labels"]``): ``file``, whole files (clips ``(path, 0)``), any crop sliced from them;
    ``crop``, stored crops each labelled in its own context (clips ``(path, start frame)``), which stage 2 trains
    on and which alone have targets.
    """

    def __init__(self, store: FrameStore):
        self.store, self.folder, self.meta = store, store.folder, store.meta
        self.k = int(self.meta["k"])
        self.labels = self.meta.get("labels", "file")

    @property
    def per_crop(self) -> bool:
        return self.labels == "crop"

    def items(self) -> List[Tuple[str, int]]:
        """The stored crops (path, start frame) of a per-crop store; [] for a whole-file store."""
        return list(self.store.clips) if self.per_crop else []

    @property
    def total_frames(self) -> int:
        return sum(clip.frames for clip in self.store.clips.values())

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "TargetStore":
        folder = Path(folder)
        if not (folder / frame_store.META).is_file():
            if (folder / "index.json").is_file():  # index.json + codes.npy, before the frame store
                raise TargetStoreError(
                    f"{folder} is a target store of an older layout (index.json + codes.npy) that this version does "
                    f"not read; rebuild it with: {rebuild_command(folder, _old_provenance(folder))}")
            raise TargetStoreError(f"{folder} is not a complete target store (no {frame_store.META}); rebuild it "
                                   f"with: {rebuild_command(folder)}")
        meta = frame_store.read_json(folder / frame_store.META, rebuild_command(folder))
        if meta.get("version") != VERSION:
            raise TargetStoreError(f"{folder} is a target store of version {meta.get('version')}, this code reads "
                                   f"version {VERSION}; rebuild it with: {rebuild_command(folder, meta)}")
        return cls(FrameStore.open(folder, ("codes",), rebuild_command(folder, meta)))

    def check(self, files: Sequence[AudioFile], k: int, crop_seconds: Optional[float] = None) -> List[AudioFile]:
        """The corpus files to train on: every file is in the store with the right length (files the store
        skipped as unreadable are dropped, and said so once), and k matches the model's extra head; a
        per-crop store's crops are ``crop_seconds`` long."""
        if k != self.k:
            raise TargetStoreError(f"target store {self.folder} has k={self.k} but the model config has "
                                   f"extra_targets={k}: use the config_model_st.yaml written with the store")
        if self.per_crop:
            return self._check_items(files, crop_seconds)
        usable = [f for f in files if f.path not in self.store.skipped]
        if len(usable) < len(files):
            print(f"[self-training] {len(files) - len(usable)} unreadable corpus file(s) have no targets in "
                  f"{self.folder}; training without them", file=sys.stderr)
        missing = [f.path for f in usable if (f.path, 0) not in self.store.clips]
        if missing:
            raise TargetStoreError(f"{len(missing)} corpus file(s) have no targets in {self.folder} "
                                   f"(first: {missing[0]}): the store was built from another corpus")
        if not usable:
            raise TargetStoreError(f"no corpus file has targets in {self.folder}: rebuild the store")
        for f in usable:
            expected = math.ceil(f.seconds * FRAME_RATE)
            stored = self.store.frames((f.path, 0))
            if abs(stored - expected) > 1:
                raise TargetStoreError(f"{f.path}: {stored} target frames stored, {expected} expected from its "
                                       f"length; the file changed since the store was built")
        return usable

    def _check_items(self, files: Sequence[AudioFile], crop_seconds: Optional[float]) -> List[AudioFile]:
        stored = float(self.meta["crop_seconds"])
        if crop_seconds is not None and abs(crop_seconds - stored) > 1e-9:
            raise TargetStoreError(f"target store {self.folder} labels {stored} s crops, but "
                                   f"pretrain_expert.datarc.crop_seconds = {crop_seconds}: set it to {stored}")
        paths = {path for path, _ in self.store.clips}
        usable = [f for f in files if f.path in paths]
        missing = sorted(paths - {f.path for f in files})
        if missing:
            raise TargetStoreError(f"{len(missing)} file(s) of the stored crops are not in the corpus (first: "
                                   f"{missing[0]}): the store was built from another corpus")
        return usable

    def slice(self, path: str, start_frame: int, frames: int) -> torch.Tensor:
        """(frames,) long codes of the file's frames start_frame, start_frame + 1, ...; -100 past its end (or
        the stored crop's end)."""
        first = int(start_frame)
        if self.per_crop:
            if (path, first) not in self.store.clips:
                raise TargetStoreError(f"no stored crop of {path} starts at frame {first} in {self.folder}: "
                                       f"stage 2 trains on the stored crops only (CropSampler.use_items)")
            key, first = (path, first), 0
        else:
            key = (path, 0)
        out = np.full(frames, IGNORE, dtype=np.int64)
        codes = self.store.read(key, "codes", first, frames)
        # checked here, on the host, as they are read: the training step then never reads them back from the device
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= self.k):
            raise TargetStoreError(f"{self.folder}: the targets of {path} hold values outside [0, k={self.k}) (from "
                                   f"{int(codes.min())} to {int(codes.max())}): the store is damaged; rebuild it with: "
                                   f"{rebuild_command(self.folder, self.meta)}")
        out[: len(codes)] = codes
        return torch.from_numpy(out)


def rebuild_command(folder: str | os.PathLike, meta: Optional[dict] = None) -> str:
    """The command that writes the store ``folder`` again (from its provenance where it is known)."""
    provenance = (meta or {}).get("provenance", {})
    student = provenance.get("student", "<the stage-1 checkpoint>")
    teacher = provenance.get("teacher", student)
    words = ["python -m encodecmae_s3prl.pretrain_task.self_training -k", str(student)]
    words += [f"--teacher {teacher}"] if teacher != student else []
    words += [f"--recipe {provenance['recipe']}"] if "recipe" in provenance else []
    return " ".join(words + ["--corpus <the corpus>", f"--out {folder}"])


def _old_provenance(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        return None


def clustered_layer(encoded) -> torch.Tensor:
    """What self-training clusters, (B, T, D): the last encoder layer's ``a`` stream, as v1 (its
    ``get_activations(...)[-1]``), not the encoder output a + LN_final(b)."""
    return encoded.hidden_states[-2]


@torch.no_grad()
def embed_file_frames(model, wav: torch.Tensor) -> torch.Tensor:
    """Self-training features of one 24 kHz clip: (frames, dim)."""
    output = model.encode(wav[None], torch.tensor([wav.numel()]))
    return clustered_layer(output)[0, : int(output.frame_lengths[0])].float()


def _read_whole(file: AudioFile) -> torch.Tensor | None:
    """The whole file, 24 kHz mono; None when it is unreadable, empty or not finite."""
    try:
        return read_audio(file.path, SAMPLE_RATE)
    except AudioReadError:
        return None


def _file_shards(files: Sequence[AudioFile]) -> List[List[AudioFile]]:
    return [list(files[i: i + FILES_PER_SHARD]) for i in range(0, len(files), FILES_PER_SHARD)]


def _build(out: Path, meta: dict, centroids: torch.Tensor, shards: int,
           label: Callable[[int], Tuple[np.ndarray, dict]], extra_files: Optional[Dict[str, str]]) -> "TargetStore":
    """Label shard after shard into a hidden ``.<out>.partial`` folder beside ``out`` (a rerun after a crash
    keeps the shards done with the same centroids), then move it into place whole.

    ``label(k)`` -> (codes (frames,) int16, ``frame_store.write_shard`` keywords: files or items, skipped)."""
    out = Path(out)
    partial = out.parent / f".{out.name}.partial"
    meta = {"store": "self-training targets", "version": VERSION, **meta, "centroids": _digest(centroids)}
    if partial.exists() and _meta_or_none(partial) != meta:  # another run's labels: start over
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    remove_temporaries(partial)  # a killed run's half-written files
    if not (partial / frame_store.META).is_file():
        frame_store.write_meta(partial, meta)
    atomic_save({"centroids": centroids}, partial / "kmeans.pt")
    for k in range(shards):
        if not frame_store.shard_is_sound(partial, k, ("codes",)):
            codes, where = label(k)
            frame_store.write_shard(partial, k, {"codes": codes}, **where)
    for name, text in (extra_files or {}).items():
        atomic_write_text(partial / name, text)
    replace_folder(partial, out)
    return TargetStore.open(out)


def _digest(centroids: torch.Tensor) -> str:
    return hashlib.sha1(centroids.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:20]


def _meta_or_none(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / frame_store.META).read_text())
    except (OSError, ValueError):
        return None


def _stacked(chunks: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def build_store(model, files: Sequence[AudioFile], centroids: torch.Tensor, out: Path,
                provenance: Optional[dict] = None, extra_files: Optional[Dict[str, str]] = None) -> TargetStore:
    """Quantize every whole file and write the store (``_build``: in shards, moved into place when done)."""
    shards = _file_shards(files)

    def label(k: int) -> Tuple[np.ndarray, dict]:
        chunks, lengths, skipped = [], {}, []
        for file in tqdm(shards[k], desc=f"quantize corpus, shard {k + 1}/{len(shards)}", dynamic_ncols=True):
            wav = _read_whole(file)
            if wav is None or wav.numel() < HOP:
                skipped.append(file.path)
                continue
            codes = assign(embed_file_frames(model, wav), centroids).to(torch.int16).numpy()
            lengths[file.path] = (int(codes.shape[0]),)
            chunks.append(codes)
        return _stacked(chunks), {"files": lengths, "skipped": skipped}

    meta = {"k": int(centroids.shape[0]), "labels": "file", "frame_rate": FRAME_RATE, "provenance": provenance or {}}
    return _build(out, meta, centroids, len(shards), label, extra_files)


def stored_crops(files: Sequence[AudioFile], crop_seconds: float, seed: int) -> List[Tuple[AudioFile, int]]:
    """The crops a per-crop store labels, as v1 lists its training items: max(1, floor(duration / crop))
    per file, each at a random start frame (seeded: the same corpus and seed give the same crops)."""
    crops = []
    for number, file in enumerate(files):
        rng = np.random.default_rng([seed, 3, number])
        for _ in range(max(1, int(file.seconds // crop_seconds))):
            crops.append((file, draw_start_frame(file, crop_seconds, rng)))
    return crops


def build_crop_store(model, files: Sequence[AudioFile], centroids: torch.Tensor, out: Path,
                     crop_seconds: float = CROP_SECONDS, seed: int = 0, batch_size: int = 16,
                     provenance: Optional[dict] = None, extra_files: Optional[Dict[str, str]] = None) -> TargetStore:
    """Label each stored crop in its own context (a clip of its own through the model) and write the store
    (``_build``; a shard holds the crops of its files)."""
    shards = _file_shards(files)
    shard_of = {file.path: k for k, group in enumerate(shards) for file in group}
    crops = stored_crops(files, crop_seconds, seed)

    def label(k: int) -> Tuple[np.ndarray, dict]:
        mine = [(file, start) for file, start in crops if shard_of[file.path] == k]
        labelled, skipped = [], set()  # (path, start, codes)
        for begin in tqdm(range(0, len(mine), batch_size), desc=f"label crops, shard {k + 1}/{len(shards)}",
                          dynamic_ncols=True):
            batch = []
            for file, start in mine[begin:begin + batch_size]:
                wav = None if file.path in skipped else read_crop_at(file, crop_seconds, start)
                if wav is None or wav.numel() < HOP:
                    skipped.add(file.path)
                    continue
                batch.append((file, start, wav))
            if not batch:
                continue
            lengths = torch.tensor([wav.numel() for _, _, wav in batch])
            wavs = torch.nn.utils.rnn.pad_sequence([wav for _, _, wav in batch], batch_first=True)
            with torch.no_grad():
                encoded = model.encode(wavs, lengths)
            features = clustered_layer(encoded)
            for row, (file, start, _) in enumerate(batch):
                frames = int(encoded.frame_lengths[row])
                labelled.append((file.path, int(start), assign(features[row, :frames].float(), centroids)))
        labelled = [one for one in labelled if one[0] not in skipped]  # a file that failed once has no crops
        items = [(path, start, len(codes)) for path, start, codes in labelled]
        codes = _stacked([codes.to(torch.int16).numpy() for _, _, codes in labelled])
        return codes, {"items": items, "skipped": sorted(skipped)}

    meta = {"k": int(centroids.shape[0]), "labels": "crop", "frame_rate": FRAME_RATE, "crop_seconds": crop_seconds,
            "provenance": provenance or {}}
    return _build(out, meta, centroids, len(shards), label, extra_files)


def sample_frames(points: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` frames drawn without replacement (all of them when count is 0 or >= their number)."""
    if count <= 0 or count >= points.shape[0]:
        return points
    order = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))
    return points[order[:count]]


def run(checkpoint: str, corpus: Sequence[str], out: Path, num_clips: int = KMEANS_CLIPS, k: int = KMEANS_CLUSTERS,
        iterations: Optional[int] = None, seed: int = 0, batch_size: int = 16, teacher: Optional[str] = None,
        recipe: Optional[str] = None, kmeans_frames: Optional[int] = None, labels: Optional[str] = None,
        crop_seconds: float = CROP_SECONDS, trust: bool = False, targets: Optional[str] = None) -> Path:
    """The whole stage: embed, fit, label, write the store and ``config_model_st.yaml``.

    ``checkpoint`` is the model stage 2 continues; ``teacher`` (default: the same) makes the labels. The
    settings left None take ``recipe``'s values (``ST_RECIPES``; default: the checkpoint's recipe). ``trust``:
    load checkpoints that need classes outside the safe allow-list (``checkpoint.safe_load``). ``targets``: what
    stage 2 predicts (``TARGETS``); None = 'kmeans' for a model built the v2 way (the decoder's own positions),
    else 'codec+kmeans'.
    """
    student = load_checkpoint(checkpoint, trust=trust).eval()
    targets = targets or ("kmeans" if student.config.decoder_positions == "own" else "codec+kmeans")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {tuple(TARGETS)}, got {targets!r}")
    labeller = load_checkpoint(teacher, trust=trust).eval() if teacher else student
    recipe = recipe or student.config.recipe
    if recipe not in ST_RECIPES:
        raise ValueError(f"self-training recipe must be one of {tuple(ST_RECIPES)}, got {recipe!r}")
    defaults = ST_RECIPES[recipe]
    kmeans_frames = defaults["kmeans_frames"] if kmeans_frames is None else kmeans_frames
    iterations = defaults["iterations"] if iterations is None else iterations
    labels = defaults["labels"] if labels is None else labels
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    files = load_corpus(corpus)
    sampler = CropSampler(files, batch_size, crop_seconds=crop_seconds, seed=seed)
    frames = []
    for batch_index in tqdm(range(math.ceil(num_clips / batch_size)), desc="embed clips", dynamic_ncols=True):
        batch = sampler.batch(batch_index, stream=CropSampler.SELF_TRAINING)
        with torch.no_grad():
            encoded = labeller.encode(batch.wavs, batch.lengths)
        valid = ~encoded.padding_mask
        frames.append(clustered_layer(encoded)[valid].float())
    points = sample_frames(torch.cat(frames), kmeans_frames, seed)
    print(f"[self-training] recipe {recipe}: k-means on {points.shape[0]} frames x {points.shape[1]} dims, k={k}, "
          f"at most {iterations} iterations; labels per {labels}")
    centroids = kmeans(points, k, iterations=iterations, seed=seed)
    provenance = {"recipe": recipe, "teacher": str(teacher or checkpoint), "student": str(checkpoint),
                  "kmeans_frames": int(points.shape[0]), "iterations": iterations, "seed": seed}
    config = {"model": "base", **_config_fields(student.config), "extra_targets": k}
    config.pop("extra_target_weight", None)  # defaults to sum of codebook weights, as the paper
    config.update(TARGETS[targets])
    written_with = {"config_model_st.yaml": (
        f"# Stage-2 (self-training) model config written by self_training.py: the stage-1 model with {targets} "
        f"targets:\n# {TARGET_NOTES[targets]} k={k} k-means classes; labels from {teacher or checkpoint}.\n"
        + yaml.safe_dump(config))}
    if labels == "crop":
        store = build_crop_store(labeller, files, centroids, out, crop_seconds, seed, batch_size, provenance,
                                 written_with)
        size = f"{len(store.items())} crops"
    else:
        store = build_store(labeller, files, centroids, out, provenance, written_with)
        size = f"{len(store.store.clips)} files"
    print(f"[self-training] wrote {out}: {size}, {store.total_frames} frames, {len(store.store.skipped)} skipped")
    return Path(out)


def _config_fields(config) -> dict:
    from dataclasses import asdict

    fields = asdict(config)
    fields["codebook_weights"] = list(fields["codebook_weights"])
    return fields


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="EnCodecMAE self-training stage: k-means targets store")
    parser.add_argument("-k", "--ckpt", required=True, help="the model stage 2 continues (its states-N.ckpt)")
    parser.add_argument("--teacher", help="the model whose last layer is clustered and labels the corpus "
                                          "(default: -k); v1's large+ST used base+ST")
    parser.add_argument("--corpus", nargs="+", required=True, help="folders and/or manifest .tsv files")
    parser.add_argument("--out", required=True, type=Path, help="target store folder to write")
    parser.add_argument("--recipe", choices=tuple(ST_RECIPES), help="defaults of the settings below (default: "
                                                                     "the -k checkpoint's recipe)")
    parser.add_argument("--num-clips", type=int, default=KMEANS_CLIPS, help="random crops embedded for k-means")
    parser.add_argument("--kmeans-frames", type=int, help="frames sampled from those for k-means, 0 = all "
                                                          "(v1: 10000; paper: 0)")
    parser.add_argument("--clusters", "--k-classes", dest="k", type=int, default=KMEANS_CLUSTERS)
    parser.add_argument("--iterations", type=int, help="Lloyd iterations at most (v1: 300; paper: 50)")
    parser.add_argument("--labels", choices=LABELS, help="crop: stored crops labelled in their own context, "
                                                         "stage 2 trains on them (v1); file: whole files (paper)")
    parser.add_argument("--crop-seconds", type=float, default=CROP_SECONDS, help="crop length (stage 2's crop_seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", choices=tuple(TARGETS), help="what stage 2 predicts: codec+kmeans (v1, the "
                        "paper) or kmeans alone (v2); default: kmeans for a model built the v2 way (-g ec-ec-* or "
                        "mel256-ec-*), else codec+kmeans")
    add_trust_flag(parser)
    args = parser.parse_args(argv)
    from encodecmae_s3prl.fixes import TRUST_FIXES, corpus_option_fixes

    # k-means knows the counts; the options that set them are known here
    too_few = {TooFewPointsError: f"more frames: raise --num-clips or --kmeans-frames; a smaller k: lower --clusters, "
                                  f"now {args.k}"}
    with user_errors(extra_types=(TooFewPointsError,), fixes={**TRUST_FIXES, **corpus_option_fixes(), **too_few}):
        run(args.ckpt, args.corpus, args.out, args.num_clips, args.k, args.iterations, args.seed,
            teacher=args.teacher, recipe=args.recipe, kmeans_frames=args.kmeans_frames, labels=args.labels,
            crop_seconds=args.crop_seconds, trust=trust_checkpoint(args.trust_checkpoint), targets=args.targets)


if __name__ == "__main__":
    main()
