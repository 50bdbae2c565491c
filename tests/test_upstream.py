"""The s3prl upstream: hub entries, Featurizer lengths, batch/alone equality, v1 files via -k, bad input."""
import warnings

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from s3prl import hub
from s3prl.upstream.interfaces import Featurizer
from tqdm import TqdmWarning

import encodecmae_s3prl  # noqa: F401  (registers the hub entries)
from encodecmae_s3prl.demo_data import harmonic_tone, write_wav
from encodecmae_s3prl.extract import main as extract_main
from encodecmae_s3prl.upstream.checkpoint import CheckpointError, atomic_save
from encodecmae_s3prl.upstream.expert import DOWNSAMPLE_RATE, UpstreamExpert
from encodecmae_s3prl.upstream.loading import CHECKPOINT_KEY, model_config_from_yaml
from encodecmae_s3prl.upstream.model import build_model
from encodecmae_s3prl.upstream.published import PublishedCheckpointError

from conftest import tone
from v1_reference import LARGE_GEOMETRY, SMALL, make_v1_checkpoint, ref_features


@pytest.fixture(scope="module")
def tiny_upstream(tiny_ckpt):
    return hub.encodecmae_local(ckpt=str(tiny_ckpt)).eval()


def test_hidden_states_shapes_and_downsample_rate(tiny_upstream):
    wavs = [tone(1.0), tone(0.5, 330)]
    with torch.no_grad():
        out = tiny_upstream(wavs)
    layers = tiny_upstream.model.config.encoder_layers
    assert len(out["hidden_states"]) == layers + 2
    assert out["last_hidden_state"] is out["hidden_states"][-1]
    assert out["hidden_states"][0].shape == (2, round(16000 / DOWNSAMPLE_RATE), 64)
    assert tiny_upstream.get_downsample_rates("hidden_states") == DOWNSAMPLE_RATE


@pytest.mark.parametrize("selection", ["hidden_states", "last_hidden_state"])
def test_featurizer_lengths_from_a_tenth_of_a_second_to_ten_minutes(tiny_upstream, selection):
    featurizer = Featurizer(tiny_upstream, feature_selection=selection, upstream_device="cpu")
    for seconds in (0.1, 1.0, 4.01, 30.0):
        wavs = [tone(seconds), tone(seconds / 2 + 0.1, 330)]
        with torch.no_grad():
            features = featurizer(wavs, tiny_upstream(wavs))
        assert [f.shape[0] for f in features] == [round(len(w) / DOWNSAMPLE_RATE) for w in wavs]
        assert features[0].shape[1] == 64 and all(torch.isfinite(f).all() for f in features)


@pytest.mark.slow  # 10 minutes of audio: 20-80 s on 2 cores; the lengths above and the frame mapping below stay fast
def test_featurizer_ten_minute_clip(tiny_upstream):
    featurizer = Featurizer(tiny_upstream, feature_selection="hidden_states", upstream_device="cpu")
    wav = tone(600.0)
    with torch.no_grad():
        features = featurizer([wav], tiny_upstream([wav]))
    assert features[0].shape == (round(len(wav) / DOWNSAMPLE_RATE), 64) == (45070, 64)


def test_output_frames_follow_the_model_frames():
    """Output frame j shows model frame ceil(j*639/640): identity up to 640 frames, then one repeat per 640."""
    index = UpstreamExpert._output_index(torch.tensor([16000 * 600]), torch.tensor([45000]))[0]
    assert torch.equal(index[:640], torch.arange(640))
    steps = index[1:] - index[:-1]
    assert set(steps.tolist()) == {0, 1} and int(index[-1]) == 44999
    assert abs(index.shape[0] * DOWNSAMPLE_RATE / 16000 - 600) < 0.02


@pytest.mark.parametrize("standardise", [False, True])
def test_padded_batch_gives_each_clip_its_alone_features(tmp_path, standardise):
    """Exact up to float rounding. The random codec's standardisation divides by per-channel stds of ~1e-2
    (a random EnCodec's output is ~99 % constant), which scales conv rounding differences between batch shapes
    by ~100: looser atol there."""
    from dataclasses import asdict

    model = build_model(model_config_from_yaml({"model": "tiny", "standardise_features": standardise}), seed=0)
    model.codec.init_from_audio([tone(2.0, 110), tone(2.0, 440)], seed=0)
    path = tmp_path / "m.ckpt"
    atomic_save({CHECKPOINT_KEY: {"config": asdict(model.config), "state_dict": model.state_dict()}}, path)
    upstream = hub.encodecmae_local(ckpt=str(path)).eval()
    atol = 1e-3 if standardise else 1e-5
    wavs = [tone(5.3, 220, 1), tone(0.7, 330, 2), tone(2.0, 440, 3)]
    with torch.no_grad():
        batch = upstream(wavs)["hidden_states"]
        for i, wav in enumerate(wavs):
            alone = upstream([wav])["hidden_states"]
            frames = alone[0].shape[1]
            for layer_batch, layer_alone in zip(batch, alone, strict=True):
                torch.testing.assert_close(layer_batch[i, :frames], layer_alone[0], atol=atol, rtol=1e-5)


@pytest.mark.parametrize("spec", [SMALL, LARGE_GEOMETRY], ids=["small-geometry", "large-geometry"])
def test_v1_checkpoint_through_encodecmae_local_matches_reference(tmp_path, spec):
    """LARGE_GEOMETRY is v1 large's attention: D 1024, 12 heads of 85 channels, projections 1020 wide."""
    path, state, encodec = make_v1_checkpoint(tmp_path, spec)
    upstream = hub.encodecmae_local(ckpt=str(path)).eval()
    assert upstream.model.config.heads == spec.heads and upstream.model.config.shared_feed_forward
    wav = tone(2.0)
    with torch.no_grad():
        out = upstream([wav])["hidden_states"]
        wav_24k = torchaudio.functional.resample(wav, 16000, 24000)
        x, output, per_layer = ref_features(encodec, state, wav_24k, spec)
    assert len(out) == spec.layers + 2
    shown = out[0].shape[1]  # round(32000/213) = 150 = frames: identity mapping below 640 frames
    for ours, ref in zip(out, [x, *per_layer, output], strict=True):
        torch.testing.assert_close(ours[0], ref[:shown], atol=1e-4, rtol=1e-4)
        assert (ours[0] - ref[:shown]).norm() / ref[:shown].norm() < 1e-2
    # a published entry takes the same file with -k (config.gin beside it)
    published = (hub.encodecmae_large_st if spec is LARGE_GEOMETRY else hub.encodecmae_base_st)(ckpt=str(path))
    with torch.no_grad():
        torch.testing.assert_close(published.eval()([wav])["last_hidden_state"], out[-1])


def test_published_entry_offline_without_k_says_what_to_do(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(PublishedCheckpointError, match="encodecmae-small.*give the path of that model.pt") as caught:
        hub.encodecmae_small()
    assert "-k" not in str(caught.value)  # the library names the file; a command line adds its flag


def test_baselines_encodec_features_and_random_mae(tiny_ckpt):
    wavs = [tone(1.0)]
    ec = hub.encodec_features(ckpt=str(tiny_ckpt)).eval()  # the checkpoint's codec (offline)
    random_mae = hub.encodecmae_random(ckpt=str(tiny_ckpt)).eval()
    with torch.no_grad():
        ec_out = ec(wavs)["hidden_states"]
        r_out = random_mae(wavs)["hidden_states"]
    assert len(ec_out) == 1 and ec_out[0].shape == (1, 75, 128)
    assert len(r_out) == random_mae.model.config.encoder_layers + 2
    # ECMAE-R: same codec as the checkpoint, freshly drawn transformer
    trained = hub.encodecmae_local(ckpt=str(tiny_ckpt)).model
    assert torch.equal(random_mae.model.codec.feature_mean, trained.codec.feature_mean)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(0), "shorter than one"),
    (torch.full((16000,), float("nan")), "NaN"),
    (torch.zeros(100), "shorter than one"),
    (torch.zeros(16000, dtype=torch.int16), "float"),
    (torch.zeros(2, 16000), "1-D"),
])
def test_bad_waveforms_get_clear_errors(tiny_upstream, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_upstream([bad])


def test_silent_audio_works(tiny_upstream):
    """Silence is a valid input (no division by its zero energy): finite features of the usual shape, which
    differ from those of a note."""
    with torch.no_grad():
        silent = tiny_upstream([torch.zeros(16000)])["last_hidden_state"]
        note = tiny_upstream([tone(1.0)])["last_hidden_state"]
    assert silent.shape == note.shape == (1, round(16000 / DOWNSAMPLE_RATE), 64)
    assert torch.isfinite(silent).all()
    assert (silent - note).norm() / note.norm() > 1e-3


def test_wrong_and_truncated_checkpoints(tmp_path, tiny_ckpt):
    other = tmp_path / "other.ckpt"
    atomic_save({"Transformer": {}, "Args": None}, other)
    with pytest.raises(CheckpointError, match="not an EnCodecMAE checkpoint"):
        hub.encodecmae_local(ckpt=str(other))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(tiny_ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        hub.encodecmae_local(ckpt=str(cut))
    with pytest.raises(ValueError, match="needs a checkpoint"):
        hub.encodecmae_local(ckpt=None)


def test_extract_cli_writes_npy_and_manifest(tmp_path, tiny_ckpt, capsys):
    rng = np.random.default_rng(0)
    write_wav(tmp_path / "in" / "a.wav", harmonic_tone(220, 1.0, 44100, rng), 44100)
    write_wav(tmp_path / "in" / "sub" / "b.wav", harmonic_tone(330, 0.5, 16000, rng), 16000)
    write_wav(tmp_path / "in" / "sub" / "c.wav", harmonic_tone(440, 0.8, 16000, rng), 16000)
    write_wav(tmp_path / "in" / "tiny.wav", harmonic_tone(440, 0.005, 16000, rng), 16000)  # shorter than a frame
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF....")
    code = extract_main(["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(tmp_path / "in"), "--out",
                         str(tmp_path / "out"), "--all-layers", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1  # some inputs failed
    a = np.load(tmp_path / "out" / "a.npy")
    b = np.load(tmp_path / "out" / "sub" / "b.npy")
    assert a.shape == (4, round(16000 / DOWNSAMPLE_RATE), 64) and b.shape[1] == round(8000 / DOWNSAMPLE_RATE)
    # the too-short clip was batched with the others: it fails alone, with its own reason
    assert (tmp_path / "out" / "sub" / "c.npy").is_file() and not (tmp_path / "out" / "tiny.npy").exists()
    assert "failed: 2 file(s)" in err and "tiny.wav: 80 samples is shorter than one 75 Hz frame" in err
    assert "broken.wav: cannot decode" in err
    manifest = (tmp_path / "out" / "manifest.tsv").read_text().splitlines()
    assert len(manifest) == 4 and "broken" not in "".join(manifest) and "tiny" not in "".join(manifest)


def test_extract_same_stem_inputs_are_an_error_and_good_runs_exit_0(tmp_path, tiny_ckpt, capsys, monkeypatch):
    rng = np.random.default_rng(1)
    for name in ("a/x.wav", "b/x.wav"):
        write_wav(tmp_path / name, harmonic_tone(220, 0.5, 16000, rng), 16000)
    args = ["-u", "encodecmae_local", "-k", str(tiny_ckpt), "--device", "cpu", "--out"]
    # absolute paths keep only their names: two x.npy -> an explicit error before any work
    assert extract_main([str(tmp_path / "a/x.wav"), str(tmp_path / "b/x.wav"), *args, str(tmp_path / "o1")]) == 2
    assert "would both write x.npy" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    write_wav(tmp_path / "c" / "y.wav", harmonic_tone(220, 0.5, 16000, rng), 16000)
    soundfile.write(tmp_path / "c" / "y.flac", harmonic_tone(330, 0.5, 16000, rng), 16000)
    assert extract_main([str(tmp_path / "c"), *args, str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "y.flac" in err and "y.wav" in err and "would both write y.npy" in err
    # relative file arguments keep their folders: both outputs exist, exit 0
    monkeypatch.chdir(tmp_path)
    assert extract_main(["a/x.wav", "b/x.wav", *args, "o2"]) == 0
    assert (tmp_path / "o2/a/x.npy").is_file() and (tmp_path / "o2/b/x.npy").is_file()
    assert extract_main(["missing.wav", *args, "o3"]) == 2
    assert "error: input missing.wav does not exist" in capsys.readouterr().err


def test_extract_progress_never_passes_its_total(tmp_path, tiny_ckpt, capsys):
    """The bar adds the files' seconds longest first, the total added them in name order: 0.9 + ... + 0.5 is
    3.5000000000000004 and 0.5 + ... + 0.9 is 3.5, so the bar overshot by a rounding error (TqdmWarning)."""
    rng = np.random.default_rng(3)
    for i, seconds in enumerate((0.5, 0.6, 0.7, 0.8, 0.9)):
        write_wav(tmp_path / "in" / f"c{i}.wav", harmonic_tone(220, seconds, 16000, rng), 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TqdmWarning)
        assert extract_main(["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(tmp_path / "in"), "--out",
                             str(tmp_path / "out"), "--batch-size", "2", "--device", "cpu"]) == 0
    assert "| 4/4 audio-s" in capsys.readouterr().err


def test_long_audio_streams_to_disk_exactly_as_forward(tmp_path, tiny_ckpt, capsys):
    """Past --long-seconds a file goes alone through UpstreamExpert.stream, written block by block: same numbers
    as one forward pass, whatever the number of chunks per step."""
    rng = np.random.default_rng(2)
    wav = np.concatenate([harmonic_tone(f, 3.0, 16000, rng) for f in (110, 220, 330, 440, 550, 660, 770)])
    write_wav(tmp_path / "in" / "long.wav", wav, 16000)  # 21 s: 6 chunks
    code = extract_main(["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(tmp_path / "in"), "--out",
                         str(tmp_path / "out"), "--all-layers", "--long-seconds", "5", "--device", "cpu",
                         "--precision", "fp32"])
    assert code == 0
    assert "| 21/21 audio-s" in capsys.readouterr().err  # progress in seconds of audio, moved block by block
    streamed = np.load(tmp_path / "out" / "long.npy")
    upstream = hub.encodecmae_local(ckpt=str(tiny_ckpt)).eval()
    from encodecmae_s3prl.upstream.audio import read_audio

    with torch.no_grad():
        reference = torch.stack(upstream([read_audio(tmp_path / "in" / "long.wav", 16000)])["hidden_states"])[:, 0]
        few = upstream.model.encode(torchaudio.functional.resample(torch.from_numpy(wav), 16000, 24000)[None],
                                    chunks_per_step=1, layers=[-1]).hidden_states
        many = upstream.model.encode(torchaudio.functional.resample(torch.from_numpy(wav), 16000, 24000)[None],
                                     chunks_per_step=16).hidden_states[-1]
    assert streamed.shape == (4, round(len(wav) / DOWNSAMPLE_RATE), 64)
    np.testing.assert_allclose(streamed, reference.numpy(), atol=1e-5, rtol=1e-5)
    assert len(few) == 1
    torch.testing.assert_close(few[0], many, atol=3e-4, rtol=1e-4)  # other batch shapes: fp32 rounding only
    assert extract_main(["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(tmp_path / "in"), "--out",
                         str(tmp_path / "out2"), "--long-seconds", "5", "--layer", "1", "--device", "cpu",
                         "--precision", "fp32"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out2" / "long.npy"), reference[1].numpy(), atol=1e-5, rtol=1e-5)
    # one chunk per step: 6 pieces, each resampled to 24 kHz on its own, laid end to end
    with torch.no_grad():
        pieces = list(upstream.stream(read_audio(tmp_path / "in" / "long.wav", 16000), [0, -1], chunks_per_step=1))
    assert len(pieces) == 6 and [first for first, _ in pieces] == sorted(first for first, _ in pieces)
    for layer, expected in ((0, reference[0]), (1, reference[-1])):
        joined = torch.cat([values[layer] for _, values in pieces])
        assert joined.shape == expected.shape  # every output frame once, in order
        # other batch shapes through EnCodec and the encoder: fp32 rounding only (as few/many above)
        torch.testing.assert_close(joined, expected, atol=3e-4, rtol=1e-4)
        assert (joined - expected).norm() / expected.norm() < 1e-4


@pytest.mark.parametrize("orig,new", [(16000, 24000), (44100, 24000), (48000, 16000), (22050, 16000)])
def test_block_wise_resampling_equals_the_whole_signal_resampled(orig, new):
    """resample() and resample_span() (any span) give the samples of torchaudio's whole-signal resampling."""
    from encodecmae_s3prl.upstream.audio import BLOCK_SECONDS, resample, resample_span, resampled_length

    wav = torch.from_numpy(np.random.default_rng(orig).standard_normal(2 * BLOCK_SECONDS * orig + 12345)).float()
    whole = torchaudio.functional.resample(wav, orig, new)
    assert resampled_length(len(wav), orig, new) == whole.shape[-1]
    torch.testing.assert_close(resample(wav, orig, new), whole, atol=1e-6, rtol=0)
    n = whole.shape[-1]
    for first, stop in ((0, 7), (5, 96_001), (n - 96_000, n), (n // 3 + 1, n // 3 + 65_433)):
        torch.testing.assert_close(resample_span(wav, orig, new, first, stop), whole[first:stop], atol=1e-6, rtol=0)


def test_random_codec_never_fitted_is_refused(tmp_path, tiny_ckpt):
    """An unfitted random EnCodec embeds every clip the same: an error that says what to do, not silence."""
    from encodecmae_s3prl.upstream.expert import UnfittedCodecError

    random_codec = tmp_path / "random_codec.yaml"  # offline: no real EnCodec weights
    random_codec.write_text("encodec_source: random\nstandardise_features: true\n")
    with pytest.raises(UnfittedCodecError, match="never fitted to a corpus.*encodec_24khz.*states-N.ckpt") as caught:
        hub.encodecmae_random(model_config=str(random_codec))
    assert "-k" not in str(caught.value)  # the library names files; a command line adds its flags
    with pytest.raises(UnfittedCodecError):
        UpstreamExpert(build_model(model_config_from_yaml({"model": "tiny"})))
    # the codec of a pretraining checkpoint was fitted to its corpus: clips differ
    upstream = hub.encodecmae_random(ckpt=str(tiny_ckpt)).eval()
    with torch.no_grad():
        a, b = (upstream([tone(1.0, f)])["last_hidden_state"].mean(1) for f in (110.0, 880.0))
    assert (a - b).norm() / a.norm() > 1e-3


def test_extract_adds_its_flags_to_the_unfitted_codec_error(tmp_path, monkeypatch, capsys):
    from encodecmae_s3prl import extract
    from encodecmae_s3prl.upstream.expert import UnfittedCodecError

    def run(args, settings):  # what loading an upstream on an unfitted random codec raises
        raise UnfittedCodecError("never fitted to a corpus")

    monkeypatch.setattr(extract, "run", run)
    assert extract.main(["a.wav", "-u", "encodecmae_random", "--out", str(tmp_path)]) == 2
    assert "error: never fitted to a corpus (a checkpoint with -k, the EnCodec weights with ENCODEC_CKPT=" in (
        capsys.readouterr().err)


def test_read_audio_span_is_the_same_with_or_without_seeking(tmp_path, monkeypatch):
    """A span of a file (start, frames at the file's rate), seekable or read up to it, mixed to mono."""
    from encodecmae_s3prl.upstream.audio import read_audio

    rng = np.random.default_rng(5)
    stereo = rng.standard_normal((48_000, 2)).astype(np.float32) * 0.1
    soundfile.write(tmp_path / "s.wav", stereo, 16000, subtype="FLOAT")
    seeking = read_audio(tmp_path / "s.wav", 16000, start=1234, frames=5000)
    np.testing.assert_allclose(seeking.numpy(), stereo[1234:6234].mean(axis=1), rtol=0, atol=1e-7)
    monkeypatch.setattr(soundfile.SoundFile, "seekable", lambda self: False)
    assert torch.equal(read_audio(tmp_path / "s.wav", 16000, start=1234, frames=5000), seeking)


def test_all_finite_checks_every_block():
    from encodecmae_s3prl.upstream.audio import all_finite

    wav = torch.zeros(2, 10)
    assert all_finite(wav, block=3)
    for bad in (float("nan"), float("inf")):
        wav[1, 9] = bad  # in the last, short block
        assert not all_finite(wav, block=3)
