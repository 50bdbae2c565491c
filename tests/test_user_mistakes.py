"""A new user's mistakes with an upstream or a checkpoint: one ``error:`` line that says what to do, exit 2."""
import numpy as np
import pytest

from encodecmae_s3prl import extract
from encodecmae_s3prl.demo_data import harmonic_tone, write_wav


@pytest.fixture()
def clip(tmp_path):
    return write_wav(tmp_path / "a.wav", harmonic_tone(220, 0.5, 16000, np.random.default_rng(0)), 16000)


def _error_line(capsys, argv) -> str:
    try:
        code = extract.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_local_entry_without_checkpoint(clip, tmp_path, capsys):
    line = _error_line(capsys, ["-u", "encodecmae_local", str(clip), "--out", str(tmp_path / "f")])
    assert "encodecmae_local loads a checkpoint and none was given" in line and "-k PATH" in line


def test_misspelt_upstream_gets_the_closest_names(clip, tmp_path, capsys):
    line = _error_line(capsys, ["-u", "encodecmae_locl", str(clip), "--out", str(tmp_path / "f")])
    assert "did you mean encodecmae_local" in line
    assert "FileLock" not in line and "Path" not in line  # the hub module's imports are not upstreams


@pytest.mark.parametrize("content", [b"just some notes\n", bytes(np.random.default_rng(0).integers(0, 256, 5000,
                                                                                                      np.uint8))])
def test_a_file_that_is_no_checkpoint_is_called_unreadable_not_untrusted(clip, tmp_path, capsys, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    line = _error_line(capsys, ["-u", "encodecmae_local", "-k", str(bad), str(clip), "--out", str(tmp_path / "f")])
    assert f"cannot read checkpoint {bad}: it is not a torch checkpoint" in line
    assert "TRUST" not in line and "allow-list" not in line


def test_extract_trust_flag_is_passed_to_the_loading(clip, tmp_path, capsys, monkeypatch):
    import datetime

    import torch

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"Args": datetime.timedelta(days=1)}, unsafe)
    monkeypatch.delenv("ENCODECMAE_TRUST_CHECKPOINT", raising=False)
    argv = ["-u", "encodecmae_local", "-k", str(unsafe), str(clip), "--out", str(tmp_path / "f")]
    assert "refused to load" in _error_line(capsys, argv)
    trusted = _error_line(capsys, argv + ["--trust-checkpoint"])  # loaded, then found not to be ours
    assert "is not an EnCodecMAE checkpoint" in trusted and "refused" not in trusted


@pytest.mark.parametrize("command, options", [
    ("self_training", ["--num-clips", "2", "--clusters", "2", "--iterations", "2", "--labels", "file"]),
    ("codec_cache", ["--device", "cpu"]),
])
def test_self_training_and_codec_cache_load_an_untrusted_checkpoint_only_with_the_flag(
        clip, tmp_path, tiny_ckpt, capsys, monkeypatch, command, options):
    import datetime
    import importlib

    import torch

    from encodecmae_s3prl.upstream.checkpoint import safe_load

    state = safe_load(tiny_ckpt)
    state["Args"] = datetime.timedelta(days=1)  # outside the safe allow-list: the weights load only trusted
    unsafe = tmp_path / "ckpt" / "unsafe.ckpt"
    unsafe.parent.mkdir()
    torch.save(state, unsafe)
    monkeypatch.delenv("ENCODECMAE_TRUST_CHECKPOINT", raising=False)
    main = importlib.import_module(f"encodecmae_s3prl.pretrain_task.{command}").main
    out = tmp_path / "out"
    argv = ["-k", str(unsafe), "--corpus", str(clip.parent), "--out", str(out), *options]
    with pytest.raises(SystemExit) as refused:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert refused.value.code == 2 and len(lines) == 1 and f"refused to load {unsafe}" in lines[0], lines
    assert lines[0].endswith("ENCODECMAE_TRUST_CHECKPOINT=1 (or pass --trust-checkpoint)")  # the command's flag
    assert not out.exists()
    assert not main(argv + ["--trust-checkpoint"])  # loaded: the stage runs to the end
    assert (out / "meta.json").is_file() and list(out.glob("shard-*"))


def _command_error_line(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    return lines[0]


def test_a_wrong_corpus_entry_is_named_and_the_command_adds_its_option(tmp_path, tiny_ckpt, capsys):
    from encodecmae_s3prl.pretrain_task import codec_cache

    missing = tmp_path / "no_such_corpus"
    line = _command_error_line(capsys, codec_cache.main, ["-k", str(tiny_ckpt), "--corpus", str(missing), "--out",
                                                          str(tmp_path / "cache"), "--device", "cpu"])
    assert line == f"error: the corpus: entry {missing} is neither a folder nor a manifest file; give audio folders " \
                   f"and/or manifest .tsv files (fix --corpus)"


def test_quantizer_weights_of_a_random_codec_is_one_line(clip, tmp_path, capsys):
    from encodecmae_s3prl.pretrain_task import quantizer_weights

    config = tmp_path / "random_codec.yaml"
    config.write_text("model: tiny\nencodec_source: random\n")
    line = _command_error_line(capsys, quantizer_weights.main, ["--corpus", str(clip.parent), "-g", str(config),
                                                                "--out", str(tmp_path / "out.yaml")])
    assert line.startswith(f"error: {config}: the model config uses a random-init EnCodec") and "pretrained" in line
    assert not (tmp_path / "out.yaml").exists()


def _script(name: str, cwd, *args, timeout: int = 300):
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, str(REPO / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return proc.returncode, errors


@pytest.mark.slow
@pytest.mark.parametrize("script, args, expected", [
    ("run_pretrain.py", ["-u", "encodecmae", "-n", "x", "-g", "tiny", "-o", "config.runner.total_step=4"],
     "-o config.runner.total_step: no such key in "),
    ("run_pretrain.py", ["-u", "encodecmaee", "-n", "x"], "-u encodecmaee: no such pretrain task; did you mean "
                                                         "encodecmae?"),
    ("run_downstream.py", ["-m", "train", "-u", "fbank_no_cmvn", "-d", "esc50", "-n", "x", "-o",
                           "config.downstream_expert.datarc.rooot=/tmp"],
     "did you mean config.downstream_expert.datarc.root?"),
    ("run_downstream.py", ["-m", "train", "-u", "encodecmae_locl", "-d", "esc50", "-n", "x", "-o",
                           "config.downstream_expert.datarc.root=/tmp"], "did you mean encodecmae_local"),
])
def test_runner_typos_are_one_line_and_leave_nothing(tmp_path, script, args, expected):
    code, errors = _script(script, tmp_path, *args)
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "result").exists() or not any((tmp_path / "result").rglob("*"))
    if "total_step" in expected:
        assert "did you mean config.runner.total_steps?" in errors[0]


def test_extract_interrupted_keeps_what_finished_and_resumes(tmp_path, tiny_ckpt, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for i in range(5):
        write_wav(tmp_path / "in" / f"c{i}.wav", harmonic_tone(220 * (i + 1), 0.5 + 0.1 * i, 16000, rng), 16000)
    argv = ["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "f"),
            "--batch-size", "2", "--device", "cpu"]
    real, calls = extract.features, []

    def interrupted_on_second_batch(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "features", interrupted_on_second_batch)
    assert extract.main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    kept = sorted(p.name for p in (tmp_path / "f").glob("*.npy"))
    assert len(kept) == 2 and not list((tmp_path / "f").rglob("*.tmp"))
    assert len((tmp_path / "f" / "manifest.tsv").read_text().splitlines()) == 1 + 2

    calls.clear()
    monkeypatch.setattr(extract, "features", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    assert extract.main(argv) == 0
    assert sum(calls) == 3  # only the three files the interrupted run did not finish
    out = capsys.readouterr().out
    assert "2 of 5 file(s) already extracted" in out
    assert "5 of 5 embedding file(s) and manifest.tsv in" in out and "3 written now, 2 kept from an earlier run" in out
    assert len((tmp_path / "f" / "manifest.tsv").read_text().splitlines()) == 1 + 5
    # other settings: everything again
    calls.clear()
    assert extract.main(argv + ["--layer", "0"]) == 0 and sum(calls) == 5


@pytest.mark.slow
def test_ctrl_c_in_pretraining_is_one_line_and_exit_130(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, pretrain_overrides, write_tone_corpus

    corpus = write_tone_corpus(tmp_path / "corpus")
    proc = subprocess.Popen([sys.executable, str(REPO / "run_pretrain.py"), "-u", "encodecmae", "-n", "intr", "-g",
                             "tiny", "-o", pretrain_overrides(corpus, steps=100000, save=2)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "result" / "pretrain" / "intr").glob("states-*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "run_pretrain.py: interrupted; checkpoints written so far are in result/pretrain/intr, resume with: " \
           "python run_pretrain.py -e result/pretrain/intr" in err
    assert "Traceback" not in err


# A loader worker hands a batch over a connection; the main process drops it midway, as a Ctrl-C there does.
_DROPPED_HAND_OVER = """
import os, sys, time
from multiprocessing import current_process, resource_sharer
from multiprocessing.connection import Client
import torch
from encodecmae_s3prl.errors import quiet_when_main_leaves

class HandOver(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):  # what torch does with a batch's shared memory: the fd waits in the worker
        return resource_sharer.DupFd(os.dup(0))._id

init = quiet_when_main_leaves if sys.argv[1] == "ours" else None
loader = torch.utils.data.DataLoader(HandOver(), batch_size=None, num_workers=1, worker_init_fn=init)
for address, _ in loader:
    Client(address, authkey=current_process().authkey).close()
    time.sleep(1.0)  # the worker's serving thread meets the dropped connection
print("done")
"""


@pytest.mark.parametrize("init", ["ours", "none"])
def test_a_hand_over_dropped_by_the_main_process_prints_no_worker_traceback(init):
    """The cause of a rare traceback under Ctrl-C's one line: the worker's resource-sharing thread reported the
    connection the interrupted main process dropped. Without our worker_init_fn it does (the check can fail)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _DROPPED_HAND_OVER, init], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]
    if init == "ours":
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    else:
        assert "Traceback" in proc.stderr and "EOFError" in proc.stderr, proc.stderr[-2000:]


def test_empty_file_is_called_empty_and_no_espnet_noise(tmp_path, clip):
    import subprocess
    import sys

    (tmp_path / "empty.wav").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "encodecmae_s3prl.extract", "-u", "fbank_no_cmvn", str(clip),
                           str(tmp_path / "empty.wav"), "--out", str(tmp_path / "f"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1  # one of two files failed
    assert f"{tmp_path / 'empty.wav'}: empty file (0 bytes)" in proc.stderr
    assert "ESPnet" not in proc.stderr and "Format not recognised" not in proc.stderr


def test_cpu_runner_preset_is_selected_not_edited():
    import yaml

    from encodecmae_s3prl import cli
    from encodecmae_s3prl.pretrain_task.pretrain_expert import PretrainDataConfig

    argv = cli.prepare_pretrain_argv(["-u", "encodecmae", "-n", "x", "-g", "tiny", "-c", "cpu"])
    config_path = argv[argv.index("-c") + 1]
    assert config_path.endswith("config_runner_cpu.yaml")
    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    datarc = PretrainDataConfig.from_dict(config["pretrain_expert"]["datarc"])  # strict: every key is real
    assert datarc.train_batch_size <= 16 and datarc.num_workers <= 2 and config["runner"]["total_steps"] <= 5000


def test_multi_gpu_is_refused_by_the_command_naming_its_flag():
    from encodecmae_s3prl import cli
    from encodecmae_s3prl.errors import UserError

    with pytest.raises(UserError, match="^--multi_gpu .* torchrun --nproc_per_node"):
        cli._check_pretrain_start(["-u", "encodecmae", "-n", "x", "--multi"])  # argparse's abbreviation too
    cli._check_pretrain_start(["-u", "encodecmae", "-n", "x"])


def test_a_misspelt_upstream_option_or_yaml_key_is_refused_with_the_closest_name(tiny_ckpt, tmp_path):
    """Nothing an upstream is given is dropped without a word: an unknown keyword (hub entries, s3prl's runner)
    and an unknown key of the -g YAML name the closest valid one."""
    from s3prl import hub

    from encodecmae_s3prl.errors import ConfigError
    from encodecmae_s3prl.upstream.expert import UpstreamOptionError

    with pytest.raises(UpstreamOptionError, match="'precison'.*did you mean 'precision'"):
        hub.encodecmae_local(ckpt=str(tiny_ckpt), precison="bf16")
    (tmp_path / "my.yaml").write_text("chunk_secondz: 2.0\n")
    with pytest.raises(ConfigError, match="chunk_secondz.*did you mean 'chunk_seconds'"):
        hub.encodecmae_local(ckpt=str(tiny_ckpt), model_config=str(tmp_path / "my.yaml"))
    assert hub.encodecmae_local(ckpt=str(tiny_ckpt), refresh=False) is not None  # s3prl passes refresh to all


@pytest.mark.slow
def test_a_misspelt_key_in_the_upstream_yaml_under_the_runner_is_one_line_and_leaves_nothing(tmp_path, tiny_ckpt):
    (tmp_path / "my.yaml").write_text("chunk_secondz: 2.0\n")
    code, errors = _script("run_downstream.py", tmp_path, "-m", "train", "-u", "encodecmae_local", "-k",
                           str(tiny_ckpt), "-g", str(tmp_path / "my.yaml"), "-d", "esc50", "-n", "x", "-o",
                           "config.downstream_expert.datarc.root=/tmp")
    assert code == 2 and len(errors) == 1 and "did you mean 'chunk_seconds'" in errors[0], errors
    assert not (tmp_path / "result").exists() or not any((tmp_path / "result").rglob("*"))
