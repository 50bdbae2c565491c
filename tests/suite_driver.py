"""Runs X-ARES's own code on our encoders, in the suites' environment (PYTHONPATH=.suites, see
scripts/setup_suites.sh); tests/test_suites.py starts it and reads the JSON it prints last.

    python tests/suite_driver.py xares ENCODER_FILE WORK    # ESC-50-shaped 5-fold task of synthetic clips
    python tests/suite_driver.py mteb SPEC WORK              # an MTEB audio classification task on local clips

Steps, all with X-ARES's own functions: its ``write_audio_tar`` writes the task's WebDataset tars into
WORK/env/esc50like (``.audio_tar_ready`` marks them present, so nothing is downloaded); ``check_audio_encoder`` on the
encoder the file defines and on ``fbank_no_cmvn``; ``XaresTask(config).run()`` (encode, 5-fold MLP, kNN); then the
encoded tars are read back so that the caller can compare them with ``extract``. MTEB: the same clips as a local
``AbsTaskClassification`` (folds 1-4 train, fold 5 test; MTEB's own logistic-regression protocol), run by
``mteb.evaluate`` on ``encodecmae_s3prl.evaluation.mteb.encoder(SPEC)``.
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

CLASSES, PER_FOLD, SECONDS, RATE = 4, 16, 2.0, 16_000


def write_clips(folder: Path) -> dict:
    """PER_FOLD clips per fold of CLASSES learnable sound classes, 16 kHz wav: {fold: [(path, label)]}."""
    from encodecmae_s3prl.demo_data import sound_class, write_wav

    rng = np.random.default_rng(0)
    folds = {}
    for fold in range(1, 6):
        items = []
        for n in range(PER_FOLD):
            label = n % CLASSES
            path = folder / f"fold{fold}_{n:02d}.wav"
            write_wav(path, sound_class(label, SECONDS, RATE, rng), RATE)
            items.append((path, label))
        folds[fold] = items
    return folds


def xares(encoder_py: Path, work: Path) -> dict:
    import torch
    from xares.audio_encoder_checker import check_audio_encoder
    from xares.audiowebdataset import write_audio_tar
    from xares.task import TaskConfig, XaresTask
    from xares.utils import attr_from_py_path

    env = work / "env"
    task_dir = env / "esc50like"
    task_dir.mkdir(parents=True, exist_ok=True)
    folds = write_clips(work / "clips")
    for fold, items in folds.items():
        write_audio_tar([str(p) for p, _ in items], [{"label": label} for _, label in items],
                        str(task_dir / f"wds-audio-fold-{fold}-*.tar"), num_shards=1)
    (task_dir / ".audio_tar_ready").touch()

    sys.path.insert(0, str(encoder_py.parent))
    encoder_class = attr_from_py_path(encoder_py.stem, endswith="Encoder")
    encoder = encoder_class()
    from encodecmae_s3prl.evaluation.xares import XaresEncoder

    fbank = type("FbankNoCmvnEncoder", (XaresEncoder,), {})("fbank_no_cmvn")
    checks = {"ours": bool(check_audio_encoder(encoder)), "fbank_no_cmvn": bool(check_audio_encoder(fbank))}

    config = TaskConfig(name="esc50like", formal_name="ESC-50-like", k_fold_splits=list(range(1, 6)),
                        label_processor=lambda x: x["label"], output_dim=CLASSES, env_root=str(env),
                        encoder=encoder, epochs=40, batch_size_encode=8, num_encoder_workers=0)
    task = XaresTask(config=config)
    (mlp, mlp_size), (knn, knn_size) = task.run()

    # what X-ARES stored for each clip: its encoder output, read back from the encoded tars
    encoded = {}
    for tar_path in sorted(task.encoded_tar_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                if name.endswith(".npy"):
                    array = np.load(io.BytesIO(tar.extractfile(member).read()))
                    encoded[name.rsplit(".", 1)[0]] = array.mean(axis=0).tolist()
    clips = sum(len(items) for items in folds.values())
    return {"checks": checks, "mlp": mlp, "mlp_size": mlp_size, "knn": knn, "knn_size": knn_size,
            "class_name": encoder_class.__name__, "clips": clips, "encoded": encoded,
            "rate": encoder.sampling_rate, "hop_ms": encoder.hop_size_in_ms, "dim": encoder.output_dim,
            "torch": torch.__version__, "clip_folder": str(work / "clips")}


def mteb(spec: str, work: Path) -> dict:
    import datasets
    import mteb as suite
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.task_metadata import TaskMetadata

    from encodecmae_s3prl.evaluation.mteb import encoder

    folds = write_clips(work / "clips")

    def rows(numbers):
        import soundfile

        return [{"audio": {"array": soundfile.read(path, dtype="float32")[0], "sampling_rate": RATE}, "label": label}
                for fold in numbers for path, label in folds[fold]]

    class LocalSyntheticSounds(AbsTaskClassification):
        metadata = TaskMetadata(
            name="LocalSyntheticSounds", description="Four synthetic sound classes (noise colours, tone bands).",
            reference="https://github.com/habla-liaa/encodecmae", dataset={"path": "local/synthetic", "revision": "1"},
            type="AudioClassification", category="a2c", modalities=["audio"], eval_splits=["test"],
            eval_langs=["zxx-Zxxx"], main_score="accuracy", date=("2026-01-01", "2026-12-31"),
            domains=["AudioScene"], task_subtypes=["Environment Sound Classification"], license="mit",
            annotations_creators="derived", dialect=[], sample_creation="created", bibtex_citation="")
        input_column_name = "audio"
        samples_per_label = 8
        n_experiments = 3

        def load_data(self, num_proc=None, **kwargs):
            def dataset(split, folds):  # a fingerprint of our own: datasets' hash of the table trips on pyarrow 26
                table = datasets.table.InMemoryTable.from_pylist(rows(folds))
                return datasets.Dataset(table, fingerprint=f"local-synthetic-{split}")

            self.dataset = datasets.DatasetDict({"train": dataset("train", [1, 2, 3, 4]), "test": dataset("test", [5])})
            self.data_loaded = True

    model = encoder(spec, precision="fp32")
    result = suite.evaluate(model, [LocalSyntheticSounds()], cache=None)
    task_result = result.task_results[0]
    return {"accuracy": float(task_result.get_score()), "meta_name": model.mteb_model_meta.name,
            "embed_dim": model.mteb_model_meta.embed_dim, "n_parameters": model.mteb_model_meta.n_parameters}


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind == "xares":
        result = xares(Path(rest[0]), Path(rest[1]))
    elif kind == "mteb":
        result = mteb(rest[0], Path(rest[1]))
    else:
        raise SystemExit(f"unknown suite {kind!r}")
    print("RESULT " + json.dumps(result))
