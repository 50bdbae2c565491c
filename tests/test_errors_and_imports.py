"""User errors as one ``error:`` line (exit 2, no traceback) in our commands; any import order of s3prl and
us; the Python API block of docs/runners-and-upstreams.md; IEMOCAP's meta_data without librosa; the last
checkpoint's name; the import graph and the documented commands.

Every command runs in a fresh interpreter, as a user runs it. Those that load s3prl's downstream runner or train
(5-9 s each on 2 cores) are marked slow; the checks that fail before that (~2 s) stay in `make test-fast`."""
import datetime
import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from encodecmae_s3prl import errors
from encodecmae_s3prl.demo_data import write_wav

from conftest import REPO, pretrain_overrides, side_by_side, write_tone_corpus
from synthetic_data import write_iemocap

PY = sys.executable


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ENCODECMAE_DEBUG", None)
    env.pop("ENCODECMAE_TRUST_CHECKPOINT", None)
    env.update(extra)
    return env


def _run(args, cwd, timeout=300, **env):
    return subprocess.run([PY, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_env(**env))


def _user_error(proc, *names) -> str:
    """Exit 2, exactly one stderr line starting with 'error:' (naming each of ``names``), no traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_ckpt):
    """Our tiny checkpoint, a truncated copy, a foreign torch file, one that needs a class outside the
    allow-list, a small corpus and a manifest with the wrong columns."""
    root = tmp_path_factory.mktemp("files")
    data = tiny_ckpt.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    torch.save({"model": {"w": torch.zeros(2)}}, root / "foreign.ckpt")
    torch.save({"Args": datetime.timedelta(days=1), "Step": 3}, root / "unsafe.ckpt")
    write_tone_corpus(root / "corpus")
    (root / "bad.tsv").write_text(f"{root / 'corpus'}\nn0.wav\n")
    return {"tiny.ckpt": tiny_ckpt, **{name: root / name for name in ("truncated.ckpt", "foreign.ckpt",
                                                                      "unsafe.ckpt", "corpus", "bad.tsv")}}


# --- run_downstream.py --------------------------------------------------------------------------------------
ESC50_ROOT = "config.downstream_expert.datarc.root"
BAD_UPSTREAM_CHECKPOINTS = {"missing": ["not found"],
                            "truncated.ckpt": ["cannot read checkpoint", "truncated"],
                            "foreign.ckpt": ["is not an EnCodecMAE checkpoint"],
                            "unsafe.ckpt": ["refused to load", "--trust-checkpoint"]}
MISSING_DATASET_KEYS = {"esc50": ESC50_ROOT,
                        "speech_commands": "config.downstream_expert.datarc.speech_commands_root",
                        "emotion": "config.downstream_expert.datarc.meta_data"}
BAD_RESUME_CHECKPOINTS = {"missing": ["no such checkpoint"],
                          "truncated.ckpt": ["cannot read checkpoint"],
                          "unsafe.ckpt": ["refused to load", "--trust-checkpoint"]}


@dataclass
class Start:
    """One run_downstream.py start, in a folder of its own, and what it printed."""

    cwd: Path
    path: Path  # the checkpoint or dataset it names
    proc: subprocess.CompletedProcess | None = None


@pytest.fixture(scope="module")
def downstream_starts(tmp_path_factory, files) -> dict[tuple[str, str], Start]:
    """Every run_downstream.py start the tests below check, each in a fresh interpreter, run two at a time: each
    spends most of its ~7 s importing s3prl's hub on one core, and the machine has two."""
    starts, commands = {}, {}

    def add(kind, name, path_of, args_of, **env):
        cwd = tmp_path_factory.mktemp(f"{kind}_{name}")
        start = starts[(kind, name)] = Start(cwd, path_of(cwd))
        commands[(kind, name)] = lambda: _run([REPO / "run_downstream.py", *args_of(start)], start.cwd, **env)

    for which in BAD_UPSTREAM_CHECKPOINTS:
        add("upstream", which, lambda cwd, w=which: cwd / "nowhere" / "model.ckpt" if w == "missing" else files[w],
            lambda s: ["-m", "train", "-u", "encodecmae_local", "-k", s.path, "-d", "esc50", "-n", "x",
                       "-o", f"{ESC50_ROOT}={s.cwd / 'esc50'}"])
    add("debug", "missing", lambda cwd: cwd / "model.ckpt",
        lambda s: ["-m", "train", "-u", "encodecmae_local", "-k", s.path, "-d", "esc50", "-n", "x"],
        ENCODECMAE_DEBUG="1")
    for recipe, key in MISSING_DATASET_KEYS.items():
        overrides = {"esc50": "{ESC50_ROOT}={missing}",
                     "speech_commands": "{key}={missing},,config.downstream_expert.datarc.speech_commands_test_root="
                                        "{missing}_test",
                     "emotion": "{ESC50_ROOT}={missing},,{key}={missing}/meta_data"}[recipe]
        add("dataset", recipe, lambda cwd: cwd / "no_such_dataset",
            lambda s, o=overrides, r=recipe, k=key: ["-m", "train", "-u", "fbank_no_cmvn", "-d", r, "-n", "x", "-o",
                                                     o.format(ESC50_ROOT=ESC50_ROOT, key=k, missing=s.path)])
    for which in BAD_RESUME_CHECKPOINTS:
        add("resume", which, lambda cwd, w=which: cwd / "states-4.ckpt" if w == "missing" else files[w],
            lambda s: ["-e", s.path, "-m", "evaluate"])
    add("help", "-h", lambda cwd: cwd, lambda s: ["-h"])
    for case, proc in side_by_side(lambda case: commands[case](), commands).items():
        starts[case].proc = proc
    return starts


@pytest.mark.slow
@pytest.mark.parametrize("which", BAD_UPSTREAM_CHECKPOINTS)
def test_downstream_bad_upstream_checkpoint_is_one_line(downstream_starts, which):
    start = downstream_starts[("upstream", which)]
    _user_error(start.proc, start.path, *BAD_UPSTREAM_CHECKPOINTS[which])
    assert not (start.cwd / "result").exists()  # the failed start left no experiment folder


@pytest.mark.slow
def test_debug_env_shows_the_traceback(downstream_starts):
    proc = downstream_starts[("debug", "missing")].proc
    assert proc.returncode not in (0, 2) and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("recipe", MISSING_DATASET_KEYS)
def test_downstream_missing_dataset_root_names_the_key(downstream_starts, recipe):
    start = downstream_starts[("dataset", recipe)]
    line = _user_error(start.proc, start.path, MISSING_DATASET_KEYS[recipe].replace("config.", "", 1))
    if recipe == "esc50":  # the probe names the key, the command adds its option
        assert line.endswith(f"(or with -o {ESC50_ROOT}=/path/to/dataset)"), line
    if recipe == "emotion":
        assert "encodecmae_s3prl.iemocap_preprocess" in line
    assert not (start.cwd / "result").exists()


# run_pretrain.py refuses a bad checkpoint before it imports s3prl's runner (~2 s); run_downstream.py after (~7 s)
@pytest.mark.parametrize("which", BAD_RESUME_CHECKPOINTS)
def test_resume_from_a_bad_checkpoint_is_one_line(tmp_path, files, which):
    ckpt = tmp_path / "states-4.ckpt" if which == "missing" else files[which]
    _user_error(_run([REPO / "run_pretrain.py", "-e", ckpt], tmp_path), ckpt, *BAD_RESUME_CHECKPOINTS[which])


@pytest.mark.slow
@pytest.mark.parametrize("which", BAD_RESUME_CHECKPOINTS)
def test_downstream_resume_from_a_bad_checkpoint_is_one_line(downstream_starts, which):
    start = downstream_starts[("resume", which)]
    _user_error(start.proc, start.path, *BAD_RESUME_CHECKPOINTS[which])


@pytest.mark.slow
def test_trust_checkpoint_flag_loads_what_the_allow_list_refuses(tmp_path, files, downstream_starts):
    # trusted, the file loads, and is then reported for what it is: not a checkpoint of s3prl's runner
    proc = _run([REPO / "run_pretrain.py", "-e", files["unsafe.ckpt"], "--trust-checkpoint"], tmp_path)
    line = _user_error(proc, files["unsafe.ckpt"], "not a checkpoint of s3prl's runner")
    assert "refused" not in line
    assert "--trust-checkpoint" in downstream_starts[("help", "-h")].proc.stdout


@pytest.mark.slow
def test_published_checkpoint_offline_fails_fast(tmp_path):
    """Hub unreachable (a closed local port, whatever this machine's network) and nothing cached: one request,
    then the published-checkpoint message, not huggingface_hub's five retries (~25 s)."""
    start = time.time()
    proc = _run([REPO / "run_downstream.py", "-m", "train", "-u", "encodecmae_base", "-d", "esc50", "-n", "x",
                 "-o", f"{ESC50_ROOT}={tmp_path}"], tmp_path, HF_ENDPOINT="http://127.0.0.1:9",
                HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="")
    _user_error(proc, "lpepino/encodecmae-base", "-k /path/to/model.pt")
    assert "Retrying" not in proc.stderr
    assert time.time() - start < 20  # start-up and imports take ~5 s here; the retries alone took 23 s


# --- run_pretrain.py -------------------------------------------------------------------------------------------
def _pretrain_args(corpus, steps=4, save=2, extra=""):
    return [REPO / "run_pretrain.py", "-u", "encodecmae", "-g", "tiny", "-n", "run", "-o",
            pretrain_overrides(corpus, steps=steps, save=save, extra=extra)]


@pytest.mark.parametrize("case", ["missing_corpus", "manifest_columns", "steps_equal", "epochs_too_few",
                                  "missing_model_config", "no_expname", "resume_folder_without_states"])
def test_pretrain_start_errors_are_one_line_and_leave_no_folder(tmp_path, files, case):
    missing = tmp_path / "no_such_corpus"
    (tmp_path / "empty_run").mkdir()
    args, names = {
        "missing_corpus": (_pretrain_args(missing), [missing, "pretrain_expert.datarc.corpus", "neither a folder",
                                                     "-o \"config.pretrain_expert.datarc.corpus="]),
        "manifest_columns": (_pretrain_args(files["bad.tsv"]), [f"{files['bad.tsv']}:2", "num_frames"]),
        "steps_equal": (_pretrain_args(files["corpus"], steps=4, save=4),
                        ["config.runner.total_steps = 4", "config.runner.save_step = 4"]),
        # 4 files, batch 4: one epoch is 4 steps, which s3prl's runner asserts only after building the data
        "epochs_too_few": (_pretrain_args(files["corpus"], save=10, extra="config.runner.n_epochs=1"),
                           ["config.runner.n_epochs = 1", "config.runner.save_step = 10"]),
        "missing_model_config": ([REPO / "run_pretrain.py", "-u", "encodecmae", "-g", tmp_path / "nope.yaml",
                                  "-n", "run"], [tmp_path / "nope.yaml"]),
        # s3prl's script asserts these (a bare AssertionError); we check them first
        "no_expname": ([REPO / "run_pretrain.py", "-u", "encodecmae", "-g", "tiny", "-p", tmp_path / "run"],
                       ["run_pretrain.py needs -n NAME (the experiment name) to start a new experiment, also with -p "
                        "DIR"]),
        "resume_folder_without_states": ([REPO / "run_pretrain.py", "-e", tmp_path / "empty_run"],
                                         [f"-e {tmp_path / 'empty_run'}: the folder holds no states-*.ckpt to resume "
                                          f"from"]),
    }[case]
    _user_error(_run(args, tmp_path), *names)
    assert not (tmp_path / "result").exists()


@pytest.mark.slow
def test_last_pretraining_checkpoint_is_named_by_its_step(tmp_path, files):
    """4 files, 4 steps of batch 4: s3prl's runner counts one epoch and would name the last checkpoint
    states-epoch-1.ckpt; it is states-4.ckpt, as the README says."""
    proc = _run(_pretrain_args(files["corpus"], steps=4, save=2), tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "approximately 1 epochs" in proc.stdout + proc.stderr
    names = sorted(p.name for p in (tmp_path / "result/pretrain/run").glob("states-*.ckpt"))
    assert names == ["states-2.ckpt", "states-4.ckpt"], names
    output = proc.stdout + proc.stderr
    assert "states-epoch" not in output  # the log names the files it writes
    assert output.count("Save the checkpoint to:") == 2 and "Save the checkpoint to: " in output
    assert output.rstrip().count("states-4.ckpt") >= 1


# --- the shared helper ------------------------------------------------------------------------------------------
def test_user_error_message_keeps_bugs_as_bugs():
    import yaml

    from encodecmae_s3prl.upstream.config import EncodecMAEConfig

    with pytest.raises(errors.ConfigError) as config_error:  # a user error by its type, and still a ValueError
        EncodecMAEConfig.from_dict({"no_such_key": 1})
    assert isinstance(config_error.value, ValueError)
    assert "no_such_key" in errors.user_error_message(config_error.value)
    with pytest.raises(yaml.YAMLError) as bad_yaml:
        yaml.safe_load("a: [1, 2")
    assert errors.user_error_message(bad_yaml.value) is not None
    with pytest.raises(ValueError) as other:
        int("x")
    assert errors.user_error_message(other.value) is None
    with pytest.raises(AssertionError) as bare:
        assert 1 == 2
    assert errors.user_error_message(bare.value) is None
    assert errors.user_error_message(RuntimeError("boom")) is None
    missing = FileNotFoundError(2, "No such file or directory", "/data/x/meta/a.json")
    message = errors.user_error_message(missing,
                                        path_keys={"config.a.root": "/data/x", "config.a.meta": "/data/x/meta"})
    assert message.startswith("/data/x/meta/a.json: no such file") and "config.a.meta" in message


def test_user_errors_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        with errors.user_errors():
            raise errors.UserError("bad thing\nin /some/file: fix it")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: bad thing in /some/file: fix it\n"
    with pytest.raises(KeyError):
        with errors.user_errors():
            raise KeyError("a bug")


def _library_errors():
    """Each library error whose fix is a value a command sets with an option: (the error, the command's fixes,
    the option the command's line must name)."""
    from encodecmae_s3prl import fixes
    from encodecmae_s3prl.downstream_probes.expert import DownstreamExpert
    from encodecmae_s3prl.downstream_probes.task import fold_splits
    from encodecmae_s3prl.pretrain_task.corpus import load_corpus
    from encodecmae_s3prl.upstream.loading import load_model_for_inference
    from encodecmae_s3prl.upstream.published import published_checkpoint

    def raised(call, *args, **kwargs) -> errors.UserError:
        with pytest.raises(errors.UserError) as caught:
            call(*args, **kwargs)
        return caught.value

    no_checkpoint = raised(load_model_for_inference, None, None, "local")
    no_root = raised(DownstreamExpert, 8, {"datarc": {"root": "/no/such/dataset"}}, "/tmp", "esc50")
    return [
        (no_checkpoint, fixes.upstream_fixes(), "-k /path/to/checkpoint"),
        (no_checkpoint, fixes.downstream_fixes(), "-k /path/to/checkpoint"),
        (raised(published_checkpoint, "base", ckpt="/no/such/model.pt"), fixes.upstream_fixes(),
         "-k /path/to/model.pt"),
        (no_root, fixes.downstream_fixes(), "-o config.downstream_expert.datarc.root=/path/to/dataset"),
        (raised(fold_splits, {"fold1": [1], "fold2": [2]}, "fold9"), fixes.downstream_fixes(),
         "-o config.downstream_expert.datarc.test_fold=NAME"),
        (raised(load_corpus, [], source="pretrain_expert.datarc.corpus"), fixes.pretrain_fixes(),
         "-o \"config.pretrain_expert.datarc.corpus=['/path/to/audio']\""),
        (raised(load_corpus, ["/no/such/corpus"], progress=False), fixes.corpus_option_fixes(), "fix --corpus"),
    ]


def test_library_errors_name_the_value_and_commands_add_their_option():
    for error, fixes, option in _library_errors():
        library = str(error)
        assert not re.search(r"(^|[ (\"'])--?[a-z]", library), library  # the library names no command-line option
        line = errors.user_error_message(error, fixes=fixes)
        assert line.startswith(library) and line.endswith(f"{option})"), line


@pytest.mark.parametrize("value, traceback", [("off", False), ("No", False), ("", False), ("1", True), ("yes", True)])
def test_encodecmae_debug_is_read_as_every_other_switch(monkeypatch, value, traceback):
    """ENCODECMAE_DEBUG takes the same words as ENCODECMAE_TRUST_CHECKPOINT (one reader in settings)."""
    from encodecmae_s3prl import settings

    monkeypatch.setenv("ENCODECMAE_DEBUG", value)
    monkeypatch.setenv(settings.TRUST_ENV, value)
    assert settings.debug_enabled() == settings.trust_checkpoint() == traceback
    with pytest.raises(errors.UserError if traceback else SystemExit):
        with errors.user_errors():
            raise errors.UserError("bad thing")


# --- import order -----------------------------------------------------------------------------------------------
IMPORT_ORDERS = {
    "s3prl_first": "from s3prl.nn import S3PRLUpstream\nimport encodecmae_s3prl\n",
    "ours_first": "import encodecmae_s3prl\nfrom s3prl.nn import S3PRLUpstream\n",
    "hub_without_ours": "import s3prl.hub\nfrom s3prl.nn import S3PRLUpstream\n",
}


def test_the_autoload_pth_is_installed():
    folders = site.getsitepackages()
    assert any((Path(f) / "encodecmae_s3prl-autoload.pth").is_file() for f in folders), (
        f"encodecmae_s3prl-autoload.pth is not in {folders}: run `make setup` (setup.py installs it)")


@pytest.mark.slow
@pytest.mark.parametrize("order", list(IMPORT_ORDERS))
def test_any_import_order_works(tmp_path, files, order):
    code = IMPORT_ORDERS[order] + (
        "import sys, torch, torchaudio\n"
        "from s3prl import hub\n"
        "assert hasattr(torchaudio, 'set_audio_backend') and callable(hub.encodecmae_local)\n"
        f"model = S3PRLUpstream('encodecmae_local', path_or_url={str(files['tiny.ckpt'])!r}).eval()\n"
        "with torch.no_grad():\n"
        "    hs, lens = model(torch.randn(1, 16000), torch.LongTensor([16000]))\n"
        "print(len(hs), tuple(hs[-1].shape), 'encodecmae_s3prl' in sys.modules)\n")
    proc = _run(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[:4] == ["4", "(1,", "76,", "64)"], proc.stdout


@pytest.mark.slow
def test_readme_python_api_runs_as_written(tmp_path, tiny_ckpt):
    readme = (REPO / "docs" / "runners-and-upstreams.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    ckpt = tmp_path / re.search(r'ckpt = "([^"]+)"', code).group(1)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_ckpt, ckpt)
    (tmp_path / "api.py").write_text(code)
    proc = _run(["api.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, first, second = proc.stdout.strip().splitlines()[-3:]
    assert model == "torch.Size([2, 225, 64]) tensor([225, 150]) torch.Size([])", model
    assert first == "4 torch.Size([2, 225, 64])", first
    assert second == "torch.Size([2, 226, 64]) tensor([226, 151])", second


# --- IEMOCAP meta_data ------------------------------------------------------------------------------------------
FIND_FILES = '''
import glob, os

def find_files(directory, *, ext=None, recurse=True, case_sensitive=False, limit=None, offset=0):
    """librosa.util.find_files (librosa 0.10), the only librosa function s3prl's script uses."""
    if ext is None:
        ext = ["aac", "au", "flac", "m4a", "mp3", "ogg", "wav"]
    elif isinstance(ext, str):
        ext = [ext]
    ext = set(ext)
    if not case_sensitive:
        ext = {e.lower() for e in ext} | {e.upper() for e in ext}
    files = set()
    for walk in (os.walk(directory) if recurse else [(directory,)]):
        folder = os.path.abspath(os.path.expanduser(walk[0]))
        for sub in ext:
            files |= set(glob.glob(os.path.join(folder, "*" + os.path.extsep + sub)))
    files = sorted(files)[offset:]
    return files[:limit] if limit is not None else files
'''


def test_iemocap_preprocess_writes_what_s3prls_script_writes(tmp_path):
    root, _ = write_iemocap(tmp_path / "IEMOCAP_full_release", per_emotion=2)
    for path in sorted((root / "meta_data").rglob("*.json")):
        path.unlink()
    # what real label files also hold: exc (merged into hap), fru (dropped), a missing utterance, other lines
    label = root / "Session2/dialog/EmoEvaluation/Ses02F_impro01.txt"
    wav_dir = root / "Session2/sentences/wav/Ses02F_impro01"
    write_wav(wav_dir / "Ses02F_impro01_M900.wav", np.zeros(8000, np.float32), 16000)
    write_wav(wav_dir / "Ses02F_impro01_M901.wav", np.zeros(8000, np.float32), 16000)
    (wav_dir / "._Ses02F_impro01_M900.wav").write_bytes(b"\0" * 10)  # macOS metadata, not audio
    label.write_text(label.read_text() + "% header line\n[1.0 - 2.0]\tSes02F_impro01_M900\texc\t[2.5, 2.5, 2.5]\n"
                     "[2.0 - 3.0]\tSes02F_impro01_M901\tfru\t[2.5, 2.5, 2.5]\n"
                     "[3.0 - 4.0]\tSes02F_impro01_M999\tneu\t[2.5, 2.5, 2.5]\nC-E1:\tNeutral;\t()\n")

    ours = tmp_path / "ours"
    proc = _run(["-m", "encodecmae_s3prl.iemocap_preprocess", root, "--out", ours], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    stub = tmp_path / "stub" / "librosa"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "util.py").write_text(FIND_FILES)
    from encodecmae_s3prl.compat import s3prl_package_dir

    script = s3prl_package_dir() / "downstream" / "emotion" / "IEMOCAP_preprocess.py"
    proc = _run([script, root], tmp_path, PYTHONPATH=str(stub.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]

    sessions = [f"Session{s}" for s in range(1, 6)]
    for session in sessions:
        for name in ("train_meta_data.json", "test_meta_data.json"):
            mine = json.loads((ours / session / name).read_text())
            theirs = json.loads((root / "meta_data" / session / name).read_text())
            assert mine["labels"] == theirs["labels"] == {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
            key = lambda e: e["path"]  # noqa: E731
            assert sorted(mine["meta_data"], key=key) == sorted(theirs["meta_data"], key=key), (session, name)
    test2 = json.loads((ours / "Session2" / "test_meta_data.json").read_text())["meta_data"]
    extra = {e["path"].rsplit("/", 1)[1]: e["label"] for e in test2 if "_M9" in e["path"]}
    assert extra == {"Ses02F_impro01_M900.wav": "hap"}
    assert all(e["speaker"] == "Ses02F" for e in test2)


def test_iemocap_preprocess_missing_root_is_one_line(tmp_path):
    _user_error(_run(["-m", "encodecmae_s3prl.iemocap_preprocess", tmp_path / "nope"], tmp_path), tmp_path / "nope")


def test_demo_with_a_missing_encodec_file_is_one_line(tmp_path):
    missing = tmp_path / "encodec_24khz-d7cc33bc.th"
    proc = _run(["-m", "encodecmae_s3prl.demo", "--out", tmp_path / "demo"], tmp_path, ENCODEC_CKPT=str(missing))
    _user_error(proc, missing, "ENCODEC_CKPT")


# s3prl's bare assertions that users run into, each checked by us before s3prl runs (the test of its sentence)
PRECHECKED_ASSERTIONS = {
    ("pretrain/runner.py", "assert total_steps > self.config['runner']['log_step']"): "test_runner_steps_checked_first",
    ("pretrain/runner.py", "assert total_steps > self.config['runner']['save_step']"): "steps_equal, epochs_too_few",
    ("run_pretrain.py", "assert len(ckpt_pths) > 0"): "resume_folder_without_states",
    ("run_downstream.py", "assert len(ckpt_pths) > 0"): "cli.check_past_exp, as resume_folder_without_states",
    ("run_pretrain.py", "assert args.expname is not None"): "no_expname",
    ("run_downstream.py", "assert now_use_ddp == original_use_ddp, f'{now_use_ddp} != {original_use_ddp}'"):
        "test_resume_runs_as_its_checkpoint_did",
    ("run_downstream.py", "assert now_world == original_world, f'{now_world} != {original_world}'"):
        "test_resume_runs_as_its_checkpoint_did",
    ("downstream/runner.py", "assert filepath.is_file(), filepath"): "test_inference_audio_checked_first",
    ("downstream/runner.py", "assert sr == SAMPLE_RATE, sr"): "test_inference_audio_checked_first",
}


def test_the_s3prl_assertions_we_check_first_are_in_the_installed_s3prl():
    """If s3prl changes one of these assertions, our check of the same condition may need to change with it."""
    from encodecmae_s3prl.compat import s3prl_package_dir

    for suffix, source in PRECHECKED_ASSERTIONS:
        lines = [line.strip() for line in (s3prl_package_dir() / suffix).read_text().splitlines()]
        assert source in lines, (suffix, source)


def test_runner_steps_checked_first():
    from encodecmae_s3prl.compat import check_runner_steps

    with pytest.raises(errors.UserError, match=r"config.runner.total_steps = 10 must be greater than "
                                               r"config.runner.log_step = 10 .*-o \"config.runner.log_step=5\""):
        check_runner_steps({"runner": {"total_steps": 10, "log_step": 10, "save_step": 5, "n_epochs": -1}})
    epochs = {"runner": {"n_epochs": 2, "log_step": 1, "save_step": 8, "gradient_accumulate_steps": 2}}
    check_runner_steps(epochs)  # the step count is not known before the corpus is
    with pytest.raises(errors.UserError, match=r"^4 steps \(from config.runner.n_epochs = 2\) must be greater than "
                                               r"config.runner.save_step = 8 .*raise n_epochs or lower save_step"):
        check_runner_steps(epochs, files=4)  # 2 epochs x 4 files / accumulation 2
    check_runner_steps(epochs, files=9)


def _runner_checkpoint(path, local_rank, world_size):
    import argparse

    torch.save({"Args": argparse.Namespace(local_rank=local_rank), "Config": {}, "Step": 4, "WorldSize": world_size},
               path)
    return path


def test_resume_runs_as_its_checkpoint_did(tmp_path, monkeypatch):
    from encodecmae_s3prl import cli

    (tmp_path / "single").mkdir()
    single = _runner_checkpoint(tmp_path / "single" / "states-4.ckpt", None, 1)
    ddp = _runner_checkpoint(tmp_path / "ddp.ckpt", 0, 2)
    cli.check_resume_distribution(["-m", "train", "-e", str(single)])
    cli.check_resume_distribution(["-m", "evaluate", "-e", str(ddp)])  # s3prl asserts it only to train
    with pytest.raises(errors.UserError, match=f"-e {ddp}: that run was trained with torchrun / torch.distributed; "
                                               f"resume it the same way \\(now: single process\\)"):
        cli.check_resume_distribution(["-m", "train", "-e", str(ddp)])
    with pytest.raises(errors.UserError, match="trained as a single process; resume it the same way"):
        cli.check_resume_distribution(["-m", "train", "-e", str(tmp_path / "single"), "--local_rank", "0"])
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(errors.UserError, match=f"-e {ddp}: that run used 2 processes, this one 4; resume with the "
                                               f"same --nproc_per_node"):
        cli.check_resume_distribution(["-m", "train", "-e", str(ddp), "--local_rank=0"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    cli.check_resume_distribution(["-m", "train", "-e", str(ddp), "--local_rank=0"])


def test_inference_audio_checked_first(tmp_path):
    from encodecmae_s3prl.compat import check_inference_audio

    missing = tmp_path / "nope.wav"
    with pytest.raises(errors.UserError, match=f"-m inference: {missing} is not a file; give the audio file to run "
                                               f"with -t/--evaluate_split"):
        check_inference_audio(missing)
    clip = write_wav(tmp_path / "a.wav", np.zeros(2205, np.float32), 22050)
    with pytest.raises(errors.UserError, match=f"-m inference: {clip} is 22050 Hz; s3prl's inference mode reads "
                                               f"16 kHz audio, resample the file first"):
        check_inference_audio(clip)
    check_inference_audio(clip, reads_any_rate=True)  # a downstream with its own load_audio
    check_inference_audio(write_wav(tmp_path / "b.wav", np.zeros(1600, np.float32), 16000))

    # run_downstream.py -m inference: s3prl's Runner.inference checks first (the runner class as cli.py patches it)
    import types

    from encodecmae_s3prl import compat

    class Runner:
        def inference(self):
            return "ran"

    runner_module = types.SimpleNamespace(Runner=Runner)
    compat.inference_input_checked(runner_module)
    runner = Runner()
    runner.downstream = types.SimpleNamespace(model=object())
    runner.args = types.SimpleNamespace(evaluate_split=str(clip))
    with pytest.raises(errors.UserError, match="is 22050 Hz"):
        runner.inference()
    runner.args.evaluate_split = str(tmp_path / "b.wav")
    assert runner.inference() == "ran"


# --- settings are parameters ------------------------------------------------------------------------------------
def test_encodec_ckpt_random_means_the_same_in_the_demo_and_the_library(tmp_path, monkeypatch):
    from encodecmae_s3prl import demo, settings
    from encodecmae_s3prl.upstream.codec import build_encodec, locate_encodec_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty torch hub cache
    monkeypatch.setenv("ENCODEC_CKPT", "random")
    weights = settings.encodec_weights()
    assert weights == "random" and locate_encodec_weights(weights) is None
    assert not demo.choose_encodec(weights, download=False).real
    codec = build_encodec("pretrained", weights=weights)  # the random-init codec in place of the pretrained one
    random = build_encodec("random")
    assert bool(codec.random_weights) and codec.needs_corpus_init()
    for name, value in random.state_dict().items():
        torch.testing.assert_close(codec.state_dict()[name], value)


def test_the_library_reads_no_environment_and_inspects_no_frames():
    """Settings come in as arguments (read by encodecmae_s3prl/settings.py at a command's edge); errors are told
    apart by type. Comments and docstrings may name the variables."""
    import ast

    for folder in ("upstream", "pretrain_task", "downstream_probes", "encodecmae_s3prl"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
            assert not names & {"f_locals", "f_back", "tb_next", "currentframe", "_getframe"}, path
            if folder != "encodecmae_s3prl":
                assert not names & {"environ", "getenv"}, f"{path} reads the environment: take a parameter"


def _our_import_graph(function_level: bool) -> dict:
    """Our modules as installed (the overlay folders under encodecmae_s3prl.*) -> the ones they import, read from
    the source: the imports at module level (what runs at import time), or every import, functions' included."""
    import ast

    from conftest import REPO

    roots = {"encodecmae_s3prl": "encodecmae_s3prl", "upstream": "encodecmae_s3prl.upstream",
             "pretrain_task": "encodecmae_s3prl.pretrain_task",
             "downstream_probes": "encodecmae_s3prl.downstream_probes"}
    modules = {}
    for folder, package in roots.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if function_level else tree.body
        imported = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if not node.level else f"{name.rsplit('.', node.level)[0]}.{node.module}"
                imported |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        graph[name] = sorted(m for m in imported if m in modules and m != name)
    return graph


def _cycle(graph: dict) -> list:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return []


@pytest.mark.parametrize("function_level", [False, True], ids=["at import time", "every import"])
def test_our_modules_import_each_other_without_a_cycle(function_level):
    """Dependencies point one way: no cycle among our modules, neither in what runs at import time nor counting the
    imports inside functions; and no library module imports the command-line module (its hint tables live in
    ``fixes``, beside the errors they annotate)."""
    graph = _our_import_graph(function_level)
    assert len(graph) > 40
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))
    assert [name for name, deps in graph.items() if "encodecmae_s3prl.cli" in deps] == []  # only the entry scripts


def _documented_commands():
    """Every `python -m MODULE` of ours, `make TARGET` and scripts/ or benchmarks/ file the README and docs/ name."""
    from conftest import REPO

    text = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    modules = sorted(set(re.findall(r"python -m (encodecmae_s3prl(?:\.\w+)*)", text)))
    targets = sorted(set(re.findall(r"`make ([a-z][a-z-]*)", text) + re.findall(r"^make ([a-z][a-z-]*)", text, re.M)))
    files = sorted(set(re.findall(r"(?<![\w/.])((?:scripts|benchmarks)/\w+\.(?:py|sh))", text)))
    return modules, targets, files


def test_every_documented_command_exists():
    """What the README and docs/ tell a user to run is there: our modules import, make has the targets, the scripts
    are files (their --help is run by the slow test below)."""
    import importlib.util

    from conftest import REPO

    modules, targets, files = _documented_commands()
    assert len(modules) >= 8 and "test" in targets and len(files) >= 5
    assert [m for m in modules if importlib.util.find_spec(m) is None] == []
    makefile = (REPO / "Makefile").read_text()
    assert [t for t in targets if not re.search(rf"^{re.escape(t)}:", makefile, re.M)] == []
    assert [f for f in files if not (REPO / f).is_file()] == []


def test_every_command_module_is_in_the_readmes_commands_table():
    """One set of entry points: every module of ours that runs as a command (``__main__``) is a row of the README's
    Commands table as `python -m <its package path>`, and the table names nothing else."""
    from encodecmae_s3prl.package_layout import package_dir

    from conftest import REPO

    commands = set()
    for package, folder in package_dir(REPO).items():
        for path in Path(folder).glob("*.py"):
            if 'if __name__ == "__main__":' in path.read_text() and path.stem != "package_layout":  # setup's helper
                commands.add(f"{package}.{path.stem}")
    table = (REPO / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    assert len(commands) >= 10
    assert set(re.findall(r"^\| `python -m ([\w.]+)`", table, re.M)) == commands


@pytest.mark.slow
def test_every_documented_command_answers_help():
    from conftest import REPO, side_by_side

    modules, _, files = _documented_commands()
    commands = [("-m", m) for m in modules] + [(f,) for f in files if f.endswith(".py")]

    def run(args):
        return subprocess.run([sys.executable, *args, "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=300).returncode

    codes = side_by_side(run, commands)
    assert {" ".join(c): code for c, code in codes.items() if code != 0} == {}
