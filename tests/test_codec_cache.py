"""Codec cache: EnCodec features and codes computed once per corpus file, crops sliced on frame boundaries."""
import dataclasses
import filecmp

import numpy as np
import pytest
import soundfile
import torch

from encodecmae_s3prl.demo_data import fit_codec_to_synthetic_audio, harmonic_tone, write_wav
from encodecmae_s3prl.pretrain_task import codec_cache as cache_module
from encodecmae_s3prl.pretrain_task.codec_cache import CodecCache, CodecCacheError, build, whole_file_features
from encodecmae_s3prl.pretrain_task.codec_windows import encode_files
from encodecmae_s3prl.pretrain_task.corpus import CropSampler, collate, load_corpus
from encodecmae_s3prl.upstream.loading import model_config_from_yaml
from encodecmae_s3prl.upstream.model import build_model


@pytest.fixture(scope="module")
def model():
    model = build_model(model_config_from_yaml({"model": "tiny"}))
    fit_codec_to_synthetic_audio(model)
    return model


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "audio"
    for i, (rate, seconds) in enumerate([(24000, 6.0), (48000, 5.0), (16000, 7.3), (44100, 4.5), (24000, 2.0)]):
        write_wav(root / f"f{i}.wav", harmonic_tone(110 * (i + 2), seconds, rate, rng), rate)
    (root / "broken.wav").write_bytes(b"RIFF....")
    soundfile.write(root / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    return root


def test_cached_crops_are_the_codec_of_the_file_and_match_the_crop_inside(tmp_path, corpus, model):
    files = load_corpus([str(corpus)], progress=False)
    counts = build(files, model.codec, tmp_path / "cache", 8, files_per_shard=2, progress=False)
    assert counts["skipped"] == 1 and counts["built"] == 3  # nan.wav is unreadable; broken.wav is not in the corpus
    cache = CodecCache.open(tmp_path / "cache")
    usable = cache.check(files, model.codec, 8)
    assert sorted(f.path.split("/")[-1] for f in usable) == [f"f{i}.wav" for i in range(5)]

    sampler = CropSampler(files, batch_size=6, crop_seconds=2.0, seed=1)
    audio = [sampler.example(0, slot) for slot in range(6)]
    sampler.use_cache(cache, usable)
    cached = [sampler.example(0, slot) for slot in range(6)]
    for from_audio, from_cache in zip(audio, cached, strict=True):
        # the same draws: same file, same start frame, same number of frames
        assert (from_audio.path, from_audio.start_frame, from_audio.frames) == \
            (from_cache.path, from_cache.start_frame, from_cache.frames)
        with torch.no_grad():
            features = model.codec.features(from_audio.wav[None])[0]
            codes = model.codec.codes(features[None], 8)[0].T
        # EnCodec on the crop alone and the whole file's features agree inside the crop (not at its two edges)
        inner = slice(40, from_audio.frames - 10)
        agree = (codes[inner] == from_cache.cached.codes[inner].long()).float().mean()
        assert agree > 0.9, (from_audio.path, float(agree))
        relative = (features[inner] - from_cache.cached.features[inner].float()).norm() / features[inner].norm()
        assert relative < 0.02

    batch = collate(cached, 0)
    assert batch.wavs is None and batch.features.dtype == torch.float16 and batch.codes.dtype == torch.int16
    assert batch.features.shape == (6, 150, 128) and batch.codes.shape == (6, 150, 8)
    model.train()
    output = model(features=batch.features, frame_lengths=batch.frame_lengths, codes=batch.codes,
                   generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(output.loss)


def test_whole_file_features_in_windows_match_one_pass(model, monkeypatch):
    wav = torch.from_numpy(harmonic_tone(220.0, 9.0, 24000, np.random.default_rng(3)))
    with torch.no_grad():
        whole = model.codec.features(wav[None])[0]
        monkeypatch.setattr(cache_module, "WINDOW_SECONDS", 2)
        monkeypatch.setattr(cache_module, "WARMUP_SECONDS", 1)
        windowed = whole_file_features(model.codec, wav)
    assert windowed.shape == whole.shape == (675, 128)
    assert (windowed - whole).norm() / whole.norm() < 0.02  # 1 s of context: the windows barely show


def test_interrupted_build_resumes_to_identical_files(tmp_path, corpus, model, monkeypatch):
    files = load_corpus([str(corpus)], progress=False)
    build(files, model.codec, tmp_path / "once", 8, files_per_shard=2, progress=False)

    real_read, calls = cache_module.read_audio, []

    def dies_on_the_fourth(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_read(*args, **kwargs)

    monkeypatch.setattr(cache_module, "read_audio", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        build(files, model.codec, tmp_path / "twice", 8, files_per_shard=2, progress=False)
    assert len(list((tmp_path / "twice").glob("shard-*.json"))) == 1  # shard 0 complete, shard 1 not
    monkeypatch.setattr(cache_module, "read_audio", real_read)
    counts = build(files, model.codec, tmp_path / "twice", 8, files_per_shard=2, progress=False)
    assert counts["present"] == 1 and counts["built"] == 2
    names = sorted(p.name for p in (tmp_path / "once").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "twice").iterdir())
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "once", tmp_path / "twice", names, shallow=False)
    assert not mismatch and not errors

    # two processes, disjoint shards, one cache
    build(files, model.codec, tmp_path / "split", 8, shard=(0, 2), files_per_shard=2, progress=False)
    build(files, model.codec, tmp_path / "split", 8, shard=(1, 2), files_per_shard=2, progress=False)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "once", tmp_path / "split", names, shallow=False)
    assert not mismatch and not errors


def test_cache_of_another_codec_or_changed_files_is_refused(tmp_path, corpus, model):
    files = load_corpus([str(corpus)], progress=False)
    build(files, model.codec, tmp_path / "cache", 8, progress=False)
    other = build_model(model_config_from_yaml({"model": "tiny"}))
    fit_codec_to_synthetic_audio(other, seed=5)
    with pytest.raises(CodecCacheError, match="another codec"):
        build(files, other.codec, tmp_path / "cache", 8, progress=False)
    with pytest.raises(CodecCacheError, match="built with another codec"):
        CodecCache.open(tmp_path / "cache").check(files, other.codec, 8)
    write_wav(corpus / "f0.wav", harmonic_tone(999, 6.0, 24000, np.random.default_rng(9)), 24000)
    with pytest.raises(CodecCacheError, match="changed since the codec cache was built"):
        CodecCache.open(tmp_path / "cache").check(files, model.codec, 8)
    with pytest.raises(CodecCacheError, match="not a codec cache"):
        CodecCache.open(tmp_path / "nothing")


def _build_files(tmp_path, seconds):
    """24 kHz tones of these lengths, and the corpus of them."""
    rng = np.random.default_rng(4)
    for i, length in enumerate(seconds):
        write_wav(tmp_path / "clips" / f"c{i}.wav", harmonic_tone(150.0 + 40 * i, length, 24000, rng), 24000)
    return load_corpus([str(tmp_path / "clips")], progress=False)


def _first_differences_are_ties(codec, features: torch.Tensor, codes: torch.Tensor, other: torch.Tensor) -> bool:
    """Where ``other`` (frames, Q) differs from ``codes``, the codes of ``features`` (frames, 128) fp32: at the
    first stage that differs, both codewords are as near the residual as encodec's float32 distances can tell (a
    tie that a last-bit difference of the features decides; later stages then quantise another residual). Such
    ties are common here: this random-init encoder's frames vary ~1 % around its bias."""
    for frame in torch.nonzero((codes != other).any(dim=1)).flatten().tolist():
        residual = features[frame].double()
        for stage, layer in enumerate(codec.quantizer.vq.layers[: codes.shape[1]]):
            book = layer._codebook.embed.double()
            if codes[frame, stage] != other[frame, stage]:
                pair = book[[int(codes[frame, stage]), int(other[frame, stage])]]
                gap = float(((residual - pair) ** 2).sum(1).diff().abs())
                # encodec ranks codewords by |x|^2 - 2 x.e + |e|^2 in float32: its rounding scales with those terms
                if gap > 4e-6 * float((residual ** 2).sum() + (pair ** 2).sum(1).max()):
                    return False
                break
            residual = residual - book[int(codes[frame, stage])]
    return True


def test_rows_of_a_padded_batch_are_encoded_as_if_alone(model):
    """EnCodec's convolutions pad each clip's end by reflection up to their stride: rows padded with zeros to the
    longest get that padding at their own ends, so their frames are those of the clip alone (zero padding alone
    changes the last frame), on a CPU (clip by clip through the convolutions) and batched (as on a GPU)."""
    codec, rng = model.codec, np.random.default_rng(7)
    clips = [torch.from_numpy(harmonic_tone(f, s, 24000, rng)) for f, s in [(200, 0.11), (310, 0.3371), (450, 0.41)]]
    padded = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    padded = torch.nn.functional.pad(padded, (0, -padded.shape[1] % 320))  # (3, S), S a multiple of 320
    lengths = [clip.numel() for clip in clips]  # none a multiple of 320
    with torch.no_grad():
        alone = [codec.features(clip[None])[0] for clip in clips]
        on_cpu = codec.features(padded, lengths)
        with codec._rows.set(lengths):  # one pass for the whole batch, the path a GPU takes
            batched = codec.encoder(padded[:, None]).transpose(1, 2)
        zero_padded = codec.features(padded)
    for row, frames in enumerate(alone):
        n = len(frames)
        torch.testing.assert_close(on_cpu[row, :n], frames, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched[row, :n], frames, rtol=1e-5, atol=1e-6)
        assert (zero_padded[row, n - 1] - frames[-1]).abs().max() > 1e-5  # what the row-end padding mends


def test_batched_build_is_the_one_window_at_a_time_build(tmp_path, model, monkeypatch):
    """Windows of several files in one EnCodec call, padded to the longest: the features (to fp16 rounding) and the
    codes (but for ties that rounding decides) of each file encoded alone, window by window, as the build did; with
    batch size 1, those calls themselves. Lengths off the 320-sample grid, a file too short to be padded, a whole
    file and a file in three windows (1 s windows after 1 s of context here)."""
    monkeypatch.setattr(cache_module, "WINDOW_SECONDS", 1)
    monkeypatch.setattr(cache_module, "WARMUP_SECONDS", 1)
    files = _build_files(tmp_path, [0.09, 0.4, 1.3701, 2.31])
    codec = model.codec
    build(files, codec, tmp_path / "batched", 8, progress=False, batch_size=4)
    batched = CodecCache.open(tmp_path / "batched")
    equal = 0
    for file in files:
        wav = cache_module.read_audio(file.path, 24000)
        with torch.no_grad():  # the build as it was: each file alone, its windows one by one, codes of the whole
            features = whole_file_features(codec, wav)
            codes = codec.codes(features[None], 8)[0].T.to(torch.int16)
        crop = batched.crop(file.path, 0, 10 ** 9)
        torch.testing.assert_close(crop.features.float(), features.half().float(), rtol=2 ** -10, atol=1e-6)
        assert _first_differences_are_ties(codec, features, codes, crop.codes), file.path
        equal += int((crop.codes == codes).all(dim=1).sum())
    assert equal >= 0.98 * sum(f.frames for f in [batched.store.clips[(p.path, 0)] for p in files])
    alone = encode_files(codec, [wav], 8, 75, 75, batch_size=1)[0]  # the last file: three windows, one at a time
    assert np.array_equal(alone[0], features.half().numpy()) and np.array_equal(alone[1], codes.numpy())


def test_a_damaged_shard_is_named_with_the_command_that_rebuilds_it(tmp_path, model, capsys):
    from encodecmae_s3prl.errors import user_errors
    from encodecmae_s3prl.pretrain_task.frame_store import FrameStoreError

    files = _build_files(tmp_path, [0.3, 0.4, 0.5, 0.6, 0.7])
    build(files, model.codec, tmp_path / "cache", 8, files_per_shard=2, progress=False)
    features = tmp_path / "cache" / "shard-00001.features.npy"
    whole = features.read_bytes()
    features.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    capsys.readouterr()
    with pytest.raises(SystemExit), user_errors():
        CodecCache.open(tmp_path / "cache")
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith(f"error: {features} is truncated or corrupt")
    assert "python -m encodecmae_s3prl.pretrain_task.codec_cache" in error and f"--out {tmp_path / 'cache'}" in error

    index = tmp_path / "cache" / "shard-00000.json"  # found first
    index.write_text(index.read_text()[:-7])
    with pytest.raises(FrameStoreError, match=f"{index} is truncated or corrupt .*rebuild it with: python -m"):
        CodecCache.open(tmp_path / "cache")

    counts = build(files, model.codec, tmp_path / "cache", 8, files_per_shard=2, progress=False)
    assert counts == {"built": 2, "present": 1, "skipped": 0}  # the damaged shards only
    assert features.read_bytes() == whole
    CodecCache.open(tmp_path / "cache").check(files, model.codec, 8)


def test_a_full_disk_while_a_shard_is_written_stops_the_build(tmp_path, model, monkeypatch):
    """Shards are written on a thread of their own: its error (a full disk) is the build's, and no shard is
    left looking done."""
    from encodecmae_s3prl.pretrain_task import frame_store
    from encodecmae_s3prl.upstream.atomic import DiskFullError

    def full(path, write):
        raise DiskFullError(28, f"no space left on the device while writing {path}")

    files = _build_files(tmp_path, [0.3, 0.4, 0.5])
    monkeypatch.setattr(frame_store, "atomic_write", full)
    with pytest.raises(DiskFullError, match="shard-00000.features.npy"):
        build(files, model.codec, tmp_path / "cache", 8, files_per_shard=2, progress=False)
    assert not list((tmp_path / "cache").glob("shard-*"))


def test_training_step_from_the_cache_never_waits_on_the_device(tmp_path, corpus):
    """The expert's step on a loader batch of the codec cache: the loader drew the batch's mask, the one the step
    drew itself before (same seed, batch and rank, so a resumed run still trains on the same masks), and the model's
    forward and the backward read nothing back from the device."""
    from encodecmae_s3prl.pretrain_task.pretrain_expert import UpstreamPretrainExpert
    from encodecmae_s3prl.upstream.host_sync import forbid_host_syncs
    from encodecmae_s3prl.upstream.masking import span_mask

    datarc = {"corpus": [str(corpus)], "train_batch_size": 4, "crop_seconds": 2.0, "num_workers": 1, "seed": 5,
              "precision": "bf16", "codec_cache": str(tmp_path / "cache"), "codec_init_clips": 4}
    expert = UpstreamPretrainExpert(datarc, {"model": "tiny", "recipe": "v1"}, device="cpu")
    expert.masks = dataclasses.replace(expert.masks, rank=1, world_size=3)  # rank 1 of 3, as under torchrun
    expert.next_batch = 2
    batch = next(iter(expert.get_train_dataloader()))
    assert batch.batch_index == 2 and batch.features is not None and batch.mask is not None
    before = span_mask(batch.frame_lengths, batch.features.shape[1], 0.5, 15,
                       torch.Generator().manual_seed(5 * 1_000_003 + 2 * 3 + 1), recipe="v1")
    assert torch.equal(batch.mask.mask, before) and before.any()

    model, forward = expert.model, expert.model.forward

    def forward_without_syncs(*args, **kwargs):
        with forbid_host_syncs("cpu"):
            return forward(*args, **kwargs)

    model.forward = forward_without_syncs
    loss, _ = expert(batch)
    with forbid_host_syncs("cpu"):
        loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.trainable_parameters())
