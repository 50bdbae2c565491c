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
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from tqdm import tqdm

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.pretrain_task.corpus import AudioFile, CropSampler, draw_start_frame, load_corpus, read_crop_at
from encodecmae_s3prl.upstream.atomic import replace_folder
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.checkpoint import atomic_save
from encodecmae_s3prl.upstream.codec import HOP, SAMPLE_RATE
from encodecmae_s3prl.upstream.kmeans import assign, kmeans
from encodecmae_s3prl.upstream.loading import load_checkpoint
from encodecmae_s3prl.upstream.model import FRAME_RATE, IGNORE


class TargetStoreError(UserError, ValueError):
    pass


LABELS = ("crop", "file")
# what each recipe does in this stage, setting by setting (each also an option of its own)
ST_RECIPES: Dict[str, Dict[str, Any]] = {
    "v1": {"kmeans_frames": 10_000, "iterations": 300, "labels": "crop"},
    "paper": {"kmeans_frames": 0, "iterations": 50, "labels": "file"},
}


class TargetStore:
    """k-means codes at 75 Hz: ``codes.npy`` (int16, concatenated) + ``index.json``.

    Two layouts (``index["labels"]``): ``file``, whole files (``files``: path -> [offset, frames]), any crop
    sliced from them; ``crop``, stored crops each labelled in its own context (``items``: [path, start
    frame, offset, frames]), which stage 2 trains on and which alone have targets.
    """

    def __init__(self, folder: Path, codes: np.ndarray, index: dict):
        self.folder, self.codes, self.index = folder, codes, index
        self.k = int(index["k"])
        self.labels = index.get("labels", "file")
        self._items: Dict[Tuple[str, int], Tuple[int, int]] = {
            (path, int(start)): (int(offset), int(length)) for path, start, offset, length in index.get("items", [])}

    @property
    def per_crop(self) -> bool:
        return self.labels == "crop"

    def items(self) -> List[Tuple[str, int]]:
        """The stored crops (path, start frame) of a per-crop store; [] for a whole-file store."""
        return list(self._items)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "TargetStore":
        folder = Path(folder)
        try:
            index = json.loads((folder / "index.json").read_text())
            codes = np.load(folder / "codes.npy", mmap_mode="r")
        except (OSError, ValueError) as err:
            raise TargetStoreError(f"{folder} is not a complete target store ({err}); rerun "
                                   f"python -m encodecmae_s3prl.pretrain_task.self_training") from None
        if codes.shape[0] != index["total_frames"]:
            raise TargetStoreError(f"{folder}: codes.npy has {codes.shape[0]} frames, index.json says "
                                   f"{index['total_frames']}: the store is corrupt, rebuild it")
        return cls(folder, codes, index)

    def check(self, files: Sequence[AudioFile], k: int, crop_seconds: Optional[float] = None) -> List[AudioFile]:
        """The corpus files to train on: every file is in the store with the right length (files the store
        skipped as unreadable are dropped, and said so once), and k matches the model's extra head; a
        per-crop store's crops are ``crop_seconds`` long."""
        if k != self.k:
            raise TargetStoreError(f"target store {self.folder} has k={self.k} but the model config has "
                                   f"extra_targets={k}: use the config_model_st.yaml written with the store")
        if self.per_crop:
            return self._check_items(files, crop_seconds)
        skipped = set(self.index.get("skipped", []))
        usable = [f for f in files if f.path not in skipped]
        if len(usable) < len(files):
            print(f"[self-training] {len(files) - len(usable)} unreadable corpus file(s) have no targets in "
                  f"{self.folder}; training without them", file=sys.stderr)
        missing = [f.path for f in usable if f.path not in self.index["files"]]
        if missing:
            raise TargetStoreError(f"{len(missing)} corpus file(s) have no targets in {self.folder} "
                                   f"(first: {missing[0]}): the store was built from another corpus")
        if not usable:
            raise TargetStoreError(f"no corpus file has targets in {self.folder}: rebuild the store")
        for f in usable:
            expected = math.ceil(f.seconds * FRAME_RATE)
            stored = self.index["files"][f.path][1]
            if abs(stored - expected) > 1:
                raise TargetStoreError(f"{f.path}: {stored} target frames stored, {expected} expected from its "
                                       f"length; the file changed since the store was built")
        return usable

    def _check_items(self, files: Sequence[AudioFile], crop_seconds: Optional[float]) -> List[AudioFile]:
        stored = float(self.index["crop_seconds"])
        if crop_seconds is not None and abs(crop_seconds - stored) > 1e-9:
            raise TargetStoreError(f"target store {self.folder} labels {stored} s crops, but "
                                   f"pretrain_expert.datarc.crop_seconds = {crop_seconds}: set it to {stored}")
        paths = {path for path, _ in self._items}
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
            if (path, first) not in self._items:
                raise TargetStoreError(f"no stored crop of {path} starts at frame {first} in {self.folder}: "
                                       f"stage 2 trains on the stored crops only (CropSampler.use_items)")
            offset, length = self._items[(path, first)]
            first = 0
        else:
            offset, length = self.index["files"][path]
        out = np.full(frames, IGNORE, dtype=np.int64)
        take = max(0, min(frames, length - first))
        out[:take] = self.codes[offset + first: offset + first + take]
        return torch.from_numpy(out)


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


def build_store(model, files: Sequence[AudioFile], centroids: torch.Tensor, out: Path) -> dict:
    """Quantize every file and write the store atomically (a temp folder renamed into place)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    chunks, index, offset, skipped = [], {}, 0, []
    for file in tqdm(files, desc="quantize corpus", dynamic_ncols=True):
        wav = _read_whole(file)
        if wav is None or wav.numel() < HOP:
            skipped.append(file.path)
            continue
        codes = assign(embed_file_frames(model, wav), centroids).to(torch.int16).numpy()
        index[file.path] = [offset, int(codes.shape[0])]
        chunks.append(codes)
        offset += codes.shape[0]
    meta = {"k": int(centroids.shape[0]), "labels": "file", "frame_rate": FRAME_RATE, "total_frames": offset,
            "files": index, "skipped": skipped}
    return _write_store(tmp, out, np.concatenate(chunks) if chunks else np.zeros(0, np.int16), meta, centroids)


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
                     crop_seconds: float = 4.0, seed: int = 0, batch_size: int = 16) -> dict:
    """Label each stored crop in its own context (a clip of its own through the model) and write the store
    atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    crops = stored_crops(files, crop_seconds, seed)
    chunks, items, offset, skipped = [], [], 0, set()
    for begin in tqdm(range(0, len(crops), batch_size), desc="label crops", dynamic_ncols=True):
        batch = []
        for file, start in crops[begin:begin + batch_size]:
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
            codes = assign(features[row, :frames].float(), centroids).to(torch.int16).numpy()
            items.append([file.path, int(start), offset, frames])
            chunks.append(codes)
            offset += frames
    skipped_files = sorted(skipped)
    items = [item for item in items if item[0] not in skipped]  # a file that failed once has no crops
    meta = {"k": int(centroids.shape[0]), "labels": "crop", "frame_rate": FRAME_RATE, "crop_seconds": crop_seconds,
            "total_frames": offset, "items": items, "skipped": skipped_files}
    return _write_store(tmp, out, np.concatenate(chunks) if chunks else np.zeros(0, np.int16), meta, centroids)


def _write_store(tmp: Path, out: Path, codes: np.ndarray, meta: dict, centroids: torch.Tensor) -> dict:
    """codes.npy, index.json and kmeans.pt written in ``tmp``, then renamed to ``out`` in one step."""
    np.save(tmp / "codes.npy", codes)
    (tmp / "index.json").write_text(json.dumps(meta))
    atomic_save({"centroids": centroids}, tmp / "kmeans.pt")
    replace_folder(tmp, out)
    return meta


def sample_frames(points: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` frames drawn without replacement (all of them when count is 0 or >= their number)."""
    if count <= 0 or count >= points.shape[0]:
        return points
    order = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))
    return points[order[:count]]


def run(checkpoint: str, corpus: Sequence[str], out: Path, num_clips: int = 10_000, k: int = 1024,
        iterations: Optional[int] = None, seed: int = 0, batch_size: int = 16, teacher: Optional[str] = None,
        recipe: Optional[str] = None, kmeans_frames: Optional[int] = None, labels: Optional[str] = None,
        crop_seconds: float = 4.0) -> Path:
    """The whole stage: embed, fit, label, write the store and ``config_model_st.yaml``.

    ``checkpoint`` is the model stage 2 continues; ``teacher`` (default: the same) makes the labels. The
    settings left None take ``recipe``'s values (``ST_RECIPES``; default: the checkpoint's recipe).
    """
    student = load_checkpoint(checkpoint).eval()
    labeller = load_checkpoint(teacher).eval() if teacher else student
    recipe = recipe or student.config.recipe
    if recipe not in ST_RECIPES:
        raise ValueError(f"self-training recipe must be one of {tuple(ST_RECIPES)}, got {recipe!r}")
    defaults = ST_RECIPES[recipe]
    kmeans_frames = defaults["kmeans_frames"] if kmeans_frames is None else kmeans_frames
    iterations = defaults["iterations"] if iterations is None else iterations
    labels = defaults["labels"] if labels is None else labels
    if labels not in LABELS:
        raise ValueError(f"--labels must be one of {LABELS}, got {labels!r}")
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
    if labels == "crop":
        meta = build_crop_store(labeller, files, centroids, out, crop_seconds, seed, batch_size)
        size = f"{len(meta['items'])} crops"
    else:
        meta = build_store(labeller, files, centroids, out)
        size = f"{len(meta['files'])} files"
    provenance = {"recipe": recipe, "teacher": str(teacher or checkpoint), "student": str(checkpoint),
                  "kmeans_frames": int(points.shape[0]), "iterations": iterations, "seed": seed}
    index_path = Path(out) / "index.json"
    index_path.write_text(json.dumps({**json.loads(index_path.read_text()), "provenance": provenance}))
    config = {"model": "base", **_config_fields(student.config), "extra_targets": k}
    config.pop("extra_target_weight", None)  # defaults to sum of codebook weights, as the paper
    (Path(out) / "config_model_st.yaml").write_text(
        "# Stage-2 (self-training) model config written by self_training.py: the stage-1 model plus one\n"
        f"# extra target stream of k={k} k-means classes weighted sum(gamma_q); labels from {teacher or checkpoint}.\n"
        + yaml.safe_dump(config))
    print(f"[self-training] wrote {out}: {size}, {meta['total_frames']} frames, {len(meta['skipped'])} skipped")
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
    parser.add_argument("--num-clips", type=int, default=10_000, help="random crops embedded for k-means")
    parser.add_argument("--kmeans-frames", type=int, help="frames sampled from those for k-means, 0 = all "
                                                          "(v1: 10000; paper: 0)")
    parser.add_argument("--clusters", "--k-classes", dest="k", type=int, default=1024)
    parser.add_argument("--iterations", type=int, help="Lloyd iterations at most (v1: 300; paper: 50)")
    parser.add_argument("--labels", choices=LABELS, help="crop: stored crops labelled in their own context, "
                                                         "stage 2 trains on them (v1); file: whole files (paper)")
    parser.add_argument("--crop-seconds", type=float, default=4.0, help="crop length (stage 2's crop_seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.ckpt, args.corpus, args.out, args.num_clips, args.k, args.iterations, args.seed, teacher=args.teacher,
        recipe=args.recipe, kmeans_frames=args.kmeans_frames, labels=args.labels, crop_seconds=args.crop_seconds)


if __name__ == "__main__":
    main()
