"""Pretraining corpus: mixed formats/rates/channels, bad files skipped and counted, deterministic crops."""
import numpy as np
import pytest
import soundfile
import torch

from encodecmae_s3prl.demo_data import harmonic_tone, write_wav
from encodecmae_s3prl.errors import quiet_when_main_leaves
from encodecmae_s3prl.pretrain_task import corpus as corpus_module
from encodecmae_s3prl.pretrain_task.corpus import CorpusError, CropLoader, CropSampler, load_corpus, read_manifest
from encodecmae_s3prl.upstream.kmeans import TooFewPointsError, assign, kmeans


@pytest.fixture
def mixed_corpus(tmp_path):
    """Mono/stereo, 8/16/44.1/48 kHz, wav/flac, one long file, one corrupt, one empty, one NaN, one silent."""
    rng = np.random.default_rng(0)
    root = tmp_path / "audio"
    for i, (rate, seconds) in enumerate([(8000, 2.0), (16000, 5.0), (44100, 3.0), (48000, 20.0)]):
        write_wav(root / f"tone{i}.wav", harmonic_tone(110 * (i + 2), seconds, rate, rng), rate)
    stereo = np.stack([harmonic_tone(330, 3.0, 22050, rng)] * 2, axis=1)
    soundfile.write(root / "sub" / "stereo.flac" if (root / "sub").mkdir() is None else None, stereo, 22050)
    soundfile.write(root / "silent.wav", np.zeros(24000, np.float32), 24000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00junk")
    soundfile.write(root / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = np.full(16000, np.nan, np.float32)
    soundfile.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    return root


def test_folder_scan_skips_unreadable_and_empty(mixed_corpus, capsys):
    files = load_corpus([str(mixed_corpus)], progress=False)
    names = sorted(f.path.split("/")[-1] for f in files)
    assert names == ["nan.wav", "silent.wav", "stereo.flac", "tone0.wav", "tone1.wav", "tone2.wav", "tone3.wav"]
    assert "skipped 2 unreadable" in capsys.readouterr().err


def test_manifest_roundtrip_via_cli(mixed_corpus, tmp_path):
    out = tmp_path / "train.tsv"
    corpus_module._main([str(mixed_corpus), "--out", str(out)])
    files = read_manifest(out)
    assert len(files) == 7
    tone3 = next(f for f in files if f.path.endswith("tone3.wav"))
    assert tone3.sample_rate == 48000 and tone3.num_frames == 20 * 48000


def test_crops_are_24k_mono_4s_padded_and_deterministic(mixed_corpus, capsys):
    files = load_corpus([str(mixed_corpus)], progress=False)
    sampler = CropSampler(files, batch_size=16, seed=3)
    batch = sampler.batch(5)
    assert batch.wavs.shape[0] == 16 and batch.wavs.shape[1] <= 96000
    assert (batch.lengths <= 96000).all() and (batch.lengths > 0).all()
    for row, length in enumerate(batch.lengths.tolist()):
        assert torch.all(batch.wavs[row, length:] == 0)
    assert torch.isfinite(batch.wavs).all()  # the NaN file is skipped, never batched
    assert torch.equal(sampler.batch(5).wavs, batch.wavs)
    assert not torch.equal(sampler.batch(6).wavs, batch.wavs)
    # the NaN file is reported once, not once per draw
    err = capsys.readouterr().err
    assert err.count("nan.wav") <= 1


def test_long_files_are_drawn_in_proportion_to_duration(mixed_corpus):
    files = load_corpus([str(mixed_corpus)], progress=False)
    sampler = CropSampler(files, batch_size=1, seed=0)
    share = sampler.probabilities[[i for i, f in enumerate(files) if f.path.endswith("tone3.wav")][0]]
    total = sum(f.seconds for f in files)
    assert share == pytest.approx(20.0 / total)


def test_loader_streams_the_same_batches_as_the_sampler_and_resumes(mixed_corpus):
    files = load_corpus([str(mixed_corpus)], progress=False)
    sampler = CropSampler(files, batch_size=4, seed=1)
    loader = CropLoader(sampler, start_batch=0, num_workers=2)
    assert loader._torch_loader().worker_init_fn is quiet_when_main_leaves  # Ctrl-C: no worker traceback
    stream = iter(loader)
    first = [next(stream) for _ in range(3)]
    assert [b.batch_index for b in first] == [0, 1, 2]
    resumed = next(iter(CropLoader(sampler, start_batch=2, num_workers=2)))
    assert resumed.batch_index == 2 and torch.equal(resumed.wavs, first[2].wavs)


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CorpusError, match="no readable audio"):
        load_corpus([str(tmp_path / "nothing")], progress=False)
    with pytest.raises(CorpusError, match="neither a folder nor a manifest"):
        load_corpus([str(tmp_path / "missing")], progress=False)
    with pytest.raises(CorpusError, match="empty"):
        load_corpus([], progress=False)


def test_kmeans_recovers_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 5, generator=generator) * 10
    labels = torch.arange(8).repeat_interleave(50)
    points = centers[labels] + 0.1 * torch.randn(400, 5, generator=generator)
    centroids = kmeans(points, 8, seed=0)
    found = assign(points, centroids)
    # each true cluster maps to exactly one code and vice versa
    pairs = set(zip(labels.tolist(), found.tolist(), strict=True))
    assert len(pairs) == 8 and len({c for _, c in pairs}) == 8
    with pytest.raises(TooFewPointsError, match="at least k=8 points, got 4: .*a k of at most 4") as caught:
        kmeans(points[:4], 8)
    assert "--" not in str(caught.value)  # the library names values; a command line adds its own flags


def test_crops_start_on_encodec_frames_and_their_targets_are_their_frames(tmp_path):
    """Every crop starts on a 1/75 s boundary of its file, so its self-training targets (sliced from whole-file
    codes) are exactly its own frames: no half-frame offset."""
    from encodecmae_s3prl.pretrain_task import frame_store
    from encodecmae_s3prl.pretrain_task import self_training as st_module
    from encodecmae_s3prl.pretrain_task.self_training import TargetStore

    rng = np.random.default_rng(1)
    root = tmp_path / "audio"
    for i, (rate, seconds) in enumerate([(24000, 9.3), (48000, 7.1), (44100, 6.2), (16000, 8.05)]):
        write_wav(root / f"f{i}.wav", rng.uniform(-0.5, 0.5, int(rate * seconds)).astype(np.float32), rate)
    files = load_corpus([str(root)], progress=False)
    # a store whose code of frame t is t: a crop's targets must read start_frame, start_frame + 1, ...
    lengths = {f.path: int(np.ceil(f.seconds * 75)) for f in files}
    codes = np.concatenate([np.arange(n) for n in lengths.values()]).astype(np.int16)
    frame_store.write_meta(tmp_path / "st", {"k": 2000, "labels": "file", "version": st_module.VERSION})
    frame_store.write_shard(tmp_path / "st", 0, {"codes": codes}, files={p: (n,) for p, n in lengths.items()})
    store = TargetStore.open(tmp_path / "st")
    sampler = CropSampler(files, batch_size=16, crop_seconds=4.0, seed=3)
    seen = set()
    for batch_index in range(3):
        crops = [sampler.example(batch_index, slot) for slot in range(16)]
        batch = corpus_module.collate(crops, batch_index, targets=store)
        for row, crop in enumerate(crops):
            file = next(f for f in files if f.path == crop.path)
            frames = int(np.ceil(crop.wav.numel() / 320))
            assert crop.wav.numel() == 96_000 and 0 <= crop.start_frame <= lengths[crop.path] - 300
            assert batch.extra_targets[row, :frames].tolist() == list(range(crop.start_frame, crop.start_frame + 300))
            if file.sample_rate == 24000:  # the crop is the file's samples from frame start_frame on, exactly
                data, _ = soundfile.read(crop.path, dtype="float32")
                assert torch.equal(crop.wav, torch.from_numpy(data[crop.start_frame * 320:][:96_000]))
            seen.add(crop.start_frame)
    assert len(seen) > 10  # starts are random, not a fixed grid
