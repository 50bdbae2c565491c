"""The paper's self-training stage (+ST): k-means targets from a stage-1 model's last encoder layer.

    python -m encodecmae_s3prl.pretrain_task.self_training -k result/pretrain/stage1/states-500000.ckpt \\
        --corpus /data/train.tsv --out result/st_targets [--num-clips 10000] [--k 1024]

1. embeds ``--num-clips`` random 4 s crops with the stage-1 model (no masking): the last encoder
   layer's ``a`` stream, what v1's ``get_activations`` returns and clusters (not the output a + LN(b));
2. fits k-means (torch, batched) on those frames;
3. quantizes every corpus file, whole, into a target store aligned to the 75 Hz frames (training crops
   start on those frames, so each crop's targets are exactly its frames);
4. writes ``config_model_st.yaml`` (stage-1 model + one extra stream of k classes, weight Σγ_q).

Stage 2 continues from the stage-1 weights:

    python run_pretrain.py -u encodecmae -n stage2 -g result/st_targets/config_model_st.yaml \\
        -o "config.pretrain_expert.datarc.target_store=result/st_targets,,config.runner.total_steps=150000,,\\
config.pretrain_expert.datarc.init_from=result/pretrain/stage1/states-500000.ckpt"
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
import yaml
from tqdm import tqdm

from encodecmae_s3prl.pretrain_task.corpus import AudioFile, CropSampler, load_corpus
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.checkpoint import atomic_save
from encodecmae_s3prl.upstream.codec import HOP, SAMPLE_RATE
from encodecmae_s3prl.upstream.kmeans import assign, kmeans
from encodecmae_s3prl.upstream.loading import load_checkpoint
from encodecmae_s3prl.upstream.model import FRAME_RATE, IGNORE


class TargetStoreError(ValueError):
    pass


class TargetStore:
    """Per-file k-means codes at 75 Hz: ``codes.npy`` (all files concatenated, int16) + ``index.json``."""

    def __init__(self, folder: Path, codes: np.ndarray, index: dict):
        self.folder, self.codes, self.index = folder, codes, index
        self.k = int(index["k"])

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

    def check(self, files: Sequence[AudioFile], k: int) -> List[AudioFile]:
        """The corpus files to train on: every file is in the store with the right length (files the store
        skipped as unreadable are dropped, and said so once), and k matches the model's extra head."""
        if k != self.k:
            raise TargetStoreError(f"target store {self.folder} has k={self.k} but the model config has "
                                   f"extra_targets={k}: use the config_model_st.yaml written with the store")
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

    def slice(self, path: str, start_frame: int, frames: int) -> torch.Tensor:
        """(frames,) long codes of the file's frames start_frame, start_frame + 1, ...; -100 past its end."""
        offset, length = self.index["files"][path]
        first = int(start_frame)
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
    np.save(tmp / "codes.npy", np.concatenate(chunks) if chunks else np.zeros(0, np.int16))
    meta = {"k": int(centroids.shape[0]), "frame_rate": FRAME_RATE, "total_frames": offset, "files": index,
            "skipped": skipped}
    (tmp / "index.json").write_text(json.dumps(meta))
    atomic_save({"centroids": centroids}, tmp / "kmeans.pt")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return meta


def run(checkpoint: str, corpus: Sequence[str], out: Path, num_clips: int = 10_000, k: int = 1024,
        iterations: int = 50, seed: int = 0, batch_size: int = 16) -> Path:
    model = load_checkpoint(checkpoint).eval()
    files = load_corpus(corpus)
    sampler = CropSampler(files, batch_size, crop_seconds=4.0, seed=seed)
    frames = []
    for batch_index in tqdm(range(math.ceil(num_clips / batch_size)), desc="embed clips", dynamic_ncols=True):
        batch = sampler.batch(batch_index, stream=CropSampler.SELF_TRAINING)
        with torch.no_grad():
            encoded = model.encode(batch.wavs, batch.lengths)
        valid = ~encoded.padding_mask
        frames.append(clustered_layer(encoded)[valid].float())
    points = torch.cat(frames)
    print(f"[self-training] k-means: {points.shape[0]} frames x {points.shape[1]} dims, k={k}")
    centroids = kmeans(points, k, iterations=iterations, seed=seed)
    meta = build_store(model, files, centroids, out)
    config = {"model": "base", **_config_fields(model.config), "extra_targets": k}
    config.pop("extra_target_weight", None)  # defaults to sum of codebook weights, as the paper
    (Path(out) / "config_model_st.yaml").write_text(
        "# Stage-2 (self-training) model config written by self_training.py: the stage-1 model plus one\n"
        f"# extra target stream of k={k} k-means classes weighted sum(gamma_q).\n" + yaml.safe_dump(config))
    print(f"[self-training] wrote {out}: {len(meta['files'])} files, {meta['total_frames']} frames, "
          f"{len(meta['skipped'])} skipped")
    return Path(out)


def _config_fields(config) -> dict:
    from dataclasses import asdict

    fields = asdict(config)
    fields["codebook_weights"] = list(fields["codebook_weights"])
    return fields


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="EnCodecMAE self-training stage: k-means targets store")
    parser.add_argument("-k", "--ckpt", required=True, help="stage-1 states-N.ckpt")
    parser.add_argument("--corpus", nargs="+", required=True, help="folders and/or manifest .tsv files")
    parser.add_argument("--out", required=True, type=Path, help="target store folder to write")
    parser.add_argument("--num-clips", type=int, default=10_000)
    parser.add_argument("--clusters", "--k-classes", dest="k", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.ckpt, args.corpus, args.out, args.num_clips, args.k, args.iterations, args.seed)


if __name__ == "__main__":
    main()
