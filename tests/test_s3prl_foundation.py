"""The plugin on s3prl 0.4.18 + torch/torchaudio 2.9: registration, shims, and the reused recipes end to end."""
import re

import numpy as np
import pytest
import soundfile
import torch

from encodecmae_s3prl import cli, compat, registry

from conftest import run_script, side_by_side
from synthetic_data import write_iemocap, write_speech_commands

OUR_ENTRIES = ["encodecmae", "encodecmae_local", "encodecmae_small", "encodecmae_base", "encodecmae_base_st",
               "encodecmae_large", "encodecmae_large_st", "encodec_features", "encodecmae_random", "encodecmae_v2"]


def _accuracies(output: str, split: str) -> list[float]:
    return [float(v) for v in re.findall(rf"^{split} acc: ([0-9.]+)", output, flags=re.M)]


def test_hub_lists_our_entries_next_to_s3prl_ones():
    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401  (registration)

    for name in OUR_ENTRIES + ["hubert", "wav2vec2", "fbank_no_cmvn", "hubert_local"]:
        assert callable(getattr(hub, name)), name


def test_upstream_package_is_namespaced():
    import encodecmae_s3prl.upstream.hubconf as hubconf

    assert hubconf.__name__ == "encodecmae_s3prl.upstream.hubconf"
    assert set(hubconf.ENTRIES) == set(OUR_ENTRIES)


def test_s3prl_names_alias_our_modules():
    import importlib

    import encodecmae_s3prl  # noqa: F401

    ours = importlib.import_module("encodecmae_s3prl.upstream")
    assert importlib.import_module("s3prl.upstream.encodecmae") is ours
    assert importlib.import_module("s3prl.pretrain.encodecmae") is importlib.import_module(
        "encodecmae_s3prl.pretrain_task")
    for probe in registry.probe_names():
        assert importlib.import_module(f"s3prl.downstream.{probe}.expert") is importlib.import_module(
            f"encodecmae_s3prl.downstream_probes.{probe}.expert")


def test_downstream_runner_imports():
    import s3prl.downstream.runner as runner

    assert hasattr(runner, "Runner")


def test_shim_set_audio_backend_is_a_no_op(tmp_path):
    """s3prl calls torchaudio.set_audio_backend('sox_io') at import; torchaudio 2.9 has no such function. The
    shim accepts any backend name and changes nothing: audio reads the same before and after."""
    import torchaudio

    compat.apply()
    assert torchaudio.set_audio_backend is compat._set_audio_backend
    soundfile.write(tmp_path / "a.wav", np.linspace(-0.5, 0.5, 800, dtype=np.float32), 8000, subtype="FLOAT")
    before, rate = torchaudio.load(str(tmp_path / "a.wav"))
    for backend in ("sox_io", "soundfile", "no_such_backend", None):
        assert torchaudio.set_audio_backend(backend) is None
    after, rate_after = torchaudio.load(str(tmp_path / "a.wav"))
    assert rate == rate_after == 8000 and torch.equal(before, after)


def test_shim_load_audio_reads_like_torchaudio(tmp_path):
    compat.apply()
    import torchaudio

    stereo = np.stack([np.linspace(-0.5, 0.5, 800), np.zeros(800)], axis=1).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", stereo, 8000, subtype="FLOAT")
    wav, rate = torchaudio.load(str(tmp_path / "a.wav"))
    assert rate == 8000 and wav.shape == (2, 800) and wav.dtype == torch.float32
    assert torch.allclose(wav[0], torch.from_numpy(stereo[:, 0]))


def test_shim_sox_effects_channels_rate_gain(tmp_path):
    compat.apply()
    from torchaudio.sox_effects import apply_effects_file

    stereo = (0.5 * np.ones((8000, 2))).astype(np.float32)
    soundfile.write(tmp_path / "b.wav", stereo, 8000, subtype="FLOAT")
    wav, rate = apply_effects_file(str(tmp_path / "b.wav"), [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]])
    assert rate == 16000 and wav.shape == (1, 16000)
    assert abs(wav[0, 4000:12000].mean().item() - 0.5 * 10 ** (-3 / 20)) < 1e-3


def test_device_defaults_to_what_exists():
    argv = cli.prepare_downstream_argv(["-m", "train", "-u", "fbank", "-d", "speech_commands"])
    assert argv[argv.index("--device") + 1] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert cli.prepare_downstream_argv(["-m", "train", "--device", "cuda:1"]).count("--device") == 1


def test_missing_recipe_configs_ship_with_us():
    for recipe in ("speech_commands", "emotion"):
        argv = cli.prepare_downstream_argv(["-m", "train", "-u", "fbank", "-d", recipe])
        assert argv[argv.index("-c") + 1].endswith(f"{recipe}/config.yaml")
    # resuming takes the config from the checkpoint, as s3prl does
    assert "-c" not in cli.prepare_downstream_argv(["-m", "evaluate", "-e", "x/states-1.ckpt"])


@pytest.mark.slow
def test_scripts_help_lists_s3prl_and_our_names(tmp_path):
    out = run_script("run_downstream.py", "-h", cwd=tmp_path)
    for name in ("encodecmae_local", "encodec_features", "hubert", "wav2vec2", "fbank_no_cmvn"):
        assert name in out
    out = run_script("run_pretrain.py", "-h", cwd=tmp_path)
    assert "encodecmae" in out and "mockingjay" in out


def _train_then_evaluate(folder, recipe: str) -> str:
    """``run_downstream.py -m train`` on fbank_no_cmvn for 40 steps of ``recipe`` on its synthetic data, then
    ``-m evaluate`` in a fresh process, resuming args from the checkpoint (weights_only load with the allow-list);
    returns what the evaluation printed."""
    if recipe == "speech_commands":
        train_root, test_root = write_speech_commands(folder / "data")
        data = (f"config.downstream_expert.datarc.speech_commands_root={train_root},,"
                f"config.downstream_expert.datarc.speech_commands_test_root={test_root}")
    else:
        root, meta = write_iemocap(folder / "IEMOCAP")
        data = (f"config.downstream_expert.datarc.root={root},,config.downstream_expert.datarc.meta_data={meta},,"
                "config.runner.gradient_accumulate_steps=1")
    exp = folder / "exp"
    overrides = (f"{data},,config.downstream_expert.datarc.num_workers=0,,config.runner.total_steps=40,,"
                 "config.runner.log_step=20,,config.runner.eval_step=40,,config.runner.save_step=20,,"
                 "config.optimizer.lr=1.0e-3")
    run_script("run_downstream.py", "-m", "train", "-u", "fbank_no_cmvn", "-d", recipe, "-p", str(exp),
               "-o", overrides, cwd=folder, threads=1)
    return run_script("run_downstream.py", "-m", "evaluate", "-e", str(exp / "states-40.ckpt"), cwd=folder,
                      threads=1)


@pytest.fixture(scope="module")
def recipe_evaluations(tmp_path_factory) -> dict[str, str]:
    """Both recipes trained and evaluated side by side, one core each."""
    return side_by_side(lambda recipe: _train_then_evaluate(tmp_path_factory.mktemp(recipe), recipe),
                        ("speech_commands", "emotion"))


@pytest.mark.slow
def test_speech_commands_recipe_trains_and_evaluates(recipe_evaluations):
    out = recipe_evaluations["speech_commands"]
    accuracy = _accuracies(out, "test")
    assert accuracy and accuracy[-1] > 3 / 12, out[-2000:]  # 12 classes: well above chance


@pytest.mark.slow
def test_emotion_recipe_trains_and_evaluates(recipe_evaluations):
    out = recipe_evaluations["emotion"]
    accuracy = _accuracies(out, "test")
    assert accuracy and accuracy[-1] > 0.5, out[-2000:]  # 4 classes
