"""The authors' v2 models (lpepino/encodecmae-v2): files in their format load through every path a v1 checkpoint
takes, the mel input is v2's kaldi fbank, and a file this loader cannot build is one clear line.
scripts/v2_reference.py and scripts/v2_side_by_side.py check the same against the authors' own code."""
import json

import numpy as np
import pytest
import torch

from encodecmae_s3prl.upstream.import_v2 import V2CheckpointError, load_v2
from encodecmae_s3prl.upstream.loading import load_checkpoint
from encodecmae_s3prl.upstream.mel import MelFrontEnd

from synthetic_data import write_v2_checkpoint

KINDS = [("encodec", False), ("mel256", False), ("mel256", True), ("encodec", True)]


@pytest.fixture(scope="module")
def v2_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    return {kind: write_v2_checkpoint(root / f"{kind[0]}{'_st' if kind[1] else ''}.pt", *kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"{k[0]}{'_st' if k[1] else ''}")
def test_a_v2_file_loads_as_the_model_it_was_written_from(v2_files, kind):
    """Every hidden state of every frame equals the model the file was written from (clips of 5 s and 1.25 s in
    one batch: two chunks, padding); the config says what the gin and the weights say."""
    path, source = v2_files[kind]
    model = load_checkpoint(path)
    config = model.config
    assert (config.input, config.decoder_positions, config.codec_targets) == (kind[0], "own", not kind[1])
    assert (config.dim, config.encoder_layers, config.heads, config.chunk_seconds) == (64, 2, 2, 4.0)
    assert config.extra_targets == (1024 if kind[1] else 0)
    wav = torch.randn(2, 120_000) * 0.1
    lengths = torch.tensor([120_000, 30_000])
    ours, theirs = model.encode(wav, lengths), source.encode(wav, lengths)
    assert len(ours.hidden_states) == 4 and ours.hidden_states[-1].shape == (2, 375, 64)
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.positions.scale.item() == pytest.approx(0.7) and model.decoder_positions.scale.item() == \
        pytest.approx(1.3)  # the decoder's own positions, not the encoder's


def test_mel_front_end_is_v2s_kaldi_fbank_on_the_encodec_grid():
    """v2's mel.gin: kaldi fbank at 24 kHz, shift 13.28 ms, length 26.56 ms, 256 bins, hanning, htk_compat, no
    energy, no dither, then (x + 6.12) / 4.82: a window of 637 samples every 318. A 4 s chunk has 300 frames, as the
    EnCodec grid; 1 s has 74 kaldi frames and 75 on the grid, the 75th read as a query only."""
    import torchaudio.compliance.kaldi as kaldi

    def v2(wav):
        return (kaldi.fbank(wav[None], sample_frequency=24000, frame_shift=13.28, frame_length=26.56,
                            num_mel_bins=256, window_type="hanning", htk_compat=True, use_energy=False,
                            dither=0.0) + 6.12) / 4.82

    front = MelFrontEnd()
    torch.manual_seed(0)
    for seconds, grid, kaldi_count, keys in ((4.0, 300, 300, 300), (1.0, 75, 74, 74), (2.0, 150, 149, 149)):
        wav = torch.randn(int(24000 * seconds)) * 0.1
        reference = v2(wav)
        features, valid = front.chunk(wav)
        assert reference.shape[0] == kaldi_count and features.shape == (grid, 256) and valid == keys
        n = min(grid, kaldi_count)
        torch.testing.assert_close(features[:n], reference[:n], rtol=0, atol=0)
    features, valid = front.chunk(torch.randn(240) * 0.1)  # a 4.01 s clip's tail: shorter than one window
    assert features.shape == (1, 256) and valid == 1 and torch.isfinite(features).all()


def test_v2_through_s3prl_hear_api_extract_compare_and_table1_specs(v2_files, tmp_path, capsys):
    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401
    from encodecmae_s3prl.evaluation import compare, hear_api, table1
    path, source = v2_files[("mel256", True)]
    # s3prl: the upstream expert at 16 kHz, hidden_states on the 213-sample grid the Featurizer checks
    upstream = hub.encodecmae_v2(ckpt=str(path)).eval()
    wavs = [torch.randn(16_000 * 5) * 0.1, torch.randn(12_345) * 0.1]
    with torch.no_grad():
        hidden = upstream(wavs)["hidden_states"]
    rate = upstream.get_downsample_rates("hidden_states")
    assert len(hidden) == 4 and abs(hidden[-1].shape[1] - len(wavs[0]) / rate) <= 1
    # the Python API as s3prl users write it: S3PRLUpstream and its Featurizer
    from s3prl.nn import Featurizer, S3PRLUpstream

    wrapped = S3PRLUpstream("encodecmae_v2", path_or_url=str(path)).eval()
    with torch.no_grad():
        all_hs, all_hs_len = wrapped(torch.randn(2, 16_000 * 3) * 0.1, torch.LongTensor([48_000, 32_000]))
        features, lengths = Featurizer(wrapped)(all_hs, all_hs_len)
    assert features.shape == (2, 226, 64) and lengths.tolist() == [226, 151]
    # hear_api: ENTRY:FILE with sample_rate and layer, 24 kHz as the model runs
    model = hear_api.load_model(f"encodecmae_v2:{path}", sample_rate=24_000, layer=2, device="cpu", precision="fp32")
    audio = torch.randn(2, 24_000) * 0.1
    scene = hear_api.get_scene_embeddings(audio, model)
    torch.testing.assert_close(scene, source.encode(audio).hidden_states[2].mean(dim=1))
    # extract
    assert _extract(["-u", "encodecmae_v2", "-k", str(path), str(_one_wav(tmp_path / "in")), "--out",
                     str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert np.load(tmp_path / "out" / "a.npy").shape[-1] == 64
    # compare / table1 row specs
    assert compare.parse_upstream(f"ECMAE2-B+ST=encodecmae_v2={path}") == ("ECMAE2-B+ST", "encodecmae_v2", str(path))
    (row,) = table1.parse_rows([f"ECMAE2-B+ST=encodecmae_v2={path}"])
    assert (row.entry, row.ckpt, row.paper) == ("encodecmae_v2", str(path), None)  # the 2023 paper has no v2 row


@pytest.mark.parametrize("extra, message", [
    ("encoder/TransformerEncoder.norm_type = 'prenorm'", "TransformerEncoder.norm_type = prenorm"),
    ("encoder/TransformerEncoder.drop_path = 0.1", "drop_path"),
    ("WavEncoder.encoder = @SEANetEncoder", "SEANetEncoder"),
    ("MelspectrogramProcessor.num_mel_bins = 128", "num_mel_bins"),
])
def test_a_binding_this_loader_does_not_build_is_named(tmp_path, extra, message):
    path, _ = write_v2_checkpoint(tmp_path / "odd.pt", "mel256", extra_gin=extra)
    with pytest.raises(V2CheckpointError, match=message) as caught:
        load_v2(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def _extract(argv) -> int:
    from encodecmae_s3prl.extract import main as extract_main

    try:
        return extract_main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def _one_wav(folder):
    from encodecmae_s3prl.demo_data import harmonic_tone, write_wav

    write_wav(folder / "a.wav", harmonic_tone(220, 1.0, 24000, np.random.default_rng(0)), 24000)
    return folder


def test_bad_v2_files_are_one_line_from_the_command(tmp_path, v2_files, capsys):
    path, _ = v2_files[("encodec", False)]
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["decoder.positional_encoder.scale"]
    torch.save(checkpoint, tmp_path / "missing.pt")
    (tmp_path / "truncated.pt").write_bytes(path.read_bytes()[:5000])
    checkpoint["config"] = checkpoint["config"].replace("NUM_ENCODER_HEADS = 2", "NUM_ENCODER_HEADS = 3")
    torch.save(checkpoint, tmp_path / "heads.pt")
    audio = _one_wav(tmp_path / "in")
    for name, expected in (("missing.pt", "missing ['decoder_positions.scale']"), ("truncated.pt", "truncated.pt"),
                           ("heads.pt", "3 heads")):
        code = _extract(["-u", "encodecmae_v2", "-k", str(tmp_path / name), str(audio), "--out", str(tmp_path / "out"),
                         "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:") and expected in err[0], err


def test_a_v2_name_offline_and_not_cached_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def not_cached(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_cached)
    monkeypatch.setattr("encodecmae_s3prl.upstream.published.hub_reachable", lambda: False)
    code = _extract(["-u", "encodecmae_v2", "-k", "mel256-ec-base_st", str(_one_wav(tmp_path / "in")), "--out",
                     str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "'mel256-ec-base_st'" in err[0] and "not in the Hugging Face cache" in err[0] and "-k" in err[0]
    assert json.dumps(err)  # one printable line


def test_pretraining_the_v2_way_mel256_from_the_codec_cache_then_kmeans_only_self_training(tmp_path):
    """-g mel256-ec-*: the loader computes each crop's log-mel from its audio beside the cached codes (the targets);
    the loss falls; the checkpoint loads as an upstream; self-training a v2-built model writes a stage-2 config
    that predicts the k-means stream alone at weight 1 (v2's st.gin), and stage 2 trains on it."""
    from encodecmae_s3prl.pretrain_task import self_training
    from encodecmae_s3prl.pretrain_task.corpus import load_corpus, read_crop_at
    from encodecmae_s3prl.pretrain_task.pretrain_expert import UpstreamPretrainExpert
    from encodecmae_s3prl.upstream.checkpoint import atomic_save

    from conftest import write_tone_corpus

    corpus = write_tone_corpus(tmp_path / "corpus", files=4, seconds=3.0)
    datarc = {"corpus": [str(corpus)], "train_batch_size": 4, "crop_seconds": 1.0, "num_workers": 0, "seed": 1,
              "precision": "fp32", "codec_cache": str(tmp_path / "cache"), "codec_init_clips": 4}
    model_yaml = {"model": "tiny", "recipe": "v1", "input": "mel256", "decoder_positions": "own"}
    expert = UpstreamPretrainExpert(datarc, model_yaml, device="cpu")
    files = {f.path: f for f in load_corpus([str(corpus)], progress=False)}
    crop = expert.sampler.example(0, 0)
    batch = expert.sampler.batch(0)
    assert batch.features.shape == (4, 75, 256) and batch.codes.shape == (4, 75, 8)
    mel, _ = MelFrontEnd().chunk(read_crop_at(files[crop.path], 1.0, crop.start_frame))
    torch.testing.assert_close(batch.features[0], mel)  # the crop's own audio, not EnCodec's output

    optimizer = torch.optim.Adam(expert.model.trainable_parameters(), lr=1e-3)
    losses = []
    for step, batch in zip(range(30), expert.get_train_dataloader(), strict=False):
        loss, _ = expert(batch, global_step=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    ckpt = tmp_path / "states-30.ckpt"
    atomic_save(expert.add_state_to_save({}), ckpt)
    upstream = load_checkpoint(ckpt)
    assert upstream.config.input == "mel256" and upstream.encode(torch.randn(1, 24_000) * 0.1).output.shape == \
        (1, 75, 64)

    store = self_training.run(str(ckpt), [str(corpus)], tmp_path / "st", num_clips=8, k=8, iterations=5,
                              batch_size=4, labels="file", crop_seconds=1.0)
    import yaml

    stage2 = yaml.safe_load((store / "config_model_st.yaml").read_text())
    assert (stage2["codec_targets"], stage2["extra_targets"], stage2["extra_target_weight"]) == (False, 8, 1.0)
    expert2 = UpstreamPretrainExpert({**datarc, "target_store": str(store), "init_from": str(ckpt)}, stage2,
                                     device="cpu")
    assert expert2.model.head is None and expert2.model.stream_weights.tolist() == [1.0]
    loss, _ = expert2(next(iter(expert2.get_train_dataloader())), global_step=0)
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_a_v2_file_in_s3prls_emotion_recipe_through_run_downstream(tmp_path):
    """``run_downstream.py -m train -u encodecmae_v2 -k FILE -d emotion``: s3prl's runner, its Featurizer over our
    hidden_states, the recipe's test accuracy; then ``-m evaluate -e`` in a fresh process rebuilds the upstream from
    the args s3prl stored and reports the same accuracy."""
    import re

    from conftest import run_script
    from synthetic_data import write_iemocap

    path, _ = write_v2_checkpoint(tmp_path / "mel256-ec-tiny.pt", "mel256")
    root, meta = write_iemocap(tmp_path / "IEMOCAP", per_emotion=2)
    overrides = (f"config.downstream_expert.datarc.root={root},,config.downstream_expert.datarc.meta_data={meta},,"
                 "config.downstream_expert.datarc.train_batch_size=8,,config.runner.gradient_accumulate_steps=1,,"
                 "config.downstream_expert.datarc.num_workers=0,,config.runner.total_steps=4,,"
                 "config.runner.log_step=2,,config.runner.eval_step=4,,config.runner.save_step=4")
    exp = tmp_path / "exp"
    trained = run_script("run_downstream.py", "-m", "train", "-u", "encodecmae_v2", "-k", str(path), "-d", "emotion",
                         "-p", str(exp), "-o", overrides, cwd=tmp_path, threads=1)
    evaluated = run_script("run_downstream.py", "-m", "evaluate", "-e", str(exp / "states-4.ckpt"), cwd=tmp_path,
                           threads=1)
    accuracies = [[float(v) for v in re.findall(r"^test acc: ([0-9.]+)", out, flags=re.M)]
                  for out in (trained, evaluated)]
    assert len(accuracies[0]) == len(accuracies[1]) == 1 and accuracies[0] == accuracies[1], evaluated[-2000:]
