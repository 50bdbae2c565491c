"""Our upstreams in the evaluation suites researchers run now, checked by each suite's own code.

X-ARES (xares 0.1.3) runs in the suites' environment (.suites/, scripts/setup_suites.sh: its transformers 5 and
huggingface_hub 2 stay out of .venv), started as a separate process by these tests (tests/suite_driver.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encodecmae_s3prl.evaluation import xares as our_xares

REPO = Path(__file__).resolve().parent.parent
SUITES = REPO / ".suites"


def test_each_spec_and_layer_gets_a_class_name_of_its_own(tmp_path):
    """X-ARES keys embeddings, checkpoints and scores by the encoder's class name: two specs or two layers under
    one name would silently share results. The file defines exactly one name ending in Encoder."""
    names = {our_xares.class_name(spec, layer) for spec in ("/a/states-1.ckpt", "/b/states-1.ckpt", "fbank_no_cmvn")
             for layer in (-1, 2)}
    assert len(names) == 6 and all(n.endswith("Encoder") and n.isidentifier() for n in names)
    text = our_xares.encoder_file("/a/states-1.ckpt", 2, "fp32")
    namespace: dict = {}
    exec(compile(text, "encoder.py", "exec"), namespace)
    assert [n for n in namespace if n.endswith("Encoder")] == [our_xares.class_name("/a/states-1.ckpt", 2)]


def test_the_writer_says_a_bad_spec_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        our_xares.main(["--upstream", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "enc.py")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and "missing.ckpt" in err[0]
    assert not (tmp_path / "enc.py").exists()


def _suite_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SUITES), str(REPO)])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def xares_run(tmp_path_factory, tiny_ckpt):
    if not (SUITES / "xares").is_dir():
        pytest.fail(f"{SUITES} has no X-ARES: run 'bash scripts/setup_suites.sh' (make setup does)")
    work = tmp_path_factory.mktemp("xares")
    encoder_py = work / "encoders" / "mine_encoder.py"
    subprocess.run([sys.executable, "-m", "encodecmae_s3prl.evaluation.xares", "--upstream", str(tiny_ckpt),
                    "--out", str(encoder_py), "--precision", "fp32"], check=True, cwd=work, capture_output=True)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "suite_driver.py"), "xares", str(encoder_py),
                           str(work)], env=_suite_env(), cwd=work, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    return result, proc.stdout + proc.stderr, tiny_ckpt


@pytest.mark.slow
def test_xares_own_checker_passes_for_a_checkpoint_and_for_fbank(xares_run):
    result, _, _ = xares_run
    assert result["checks"] == {"ours": True, "fbank_no_cmvn": True}
    assert (result["rate"], result["dim"]) == (24000, 64) and result["hop_ms"] == pytest.approx(1000 * 320 / 24000)


@pytest.mark.slow
def test_xares_runs_a_five_fold_task_end_to_end_above_chance(xares_run):
    """X-ARES's own pipeline (its WebDataset tars, its decoding, encoding, 5-fold MLP and kNN): no clip skipped
    (torchaudio.load works without TorchCodec), and 4 learnable classes scored above chance (0.25)."""
    result, log, _ = xares_run
    assert len(result["encoded"]) == result["clips"] == 80, log[-2000:]
    # 80 test decisions over the 5 folds: chance is 0.25 +- 0.05, a tiny random-init model on 64 training clips
    assert result["mlp"] > 0.4, log[-2000:]
    assert 0.0 <= result["knn"] <= 1.0


@pytest.mark.slow
def test_xares_sees_the_embeddings_extract_writes(xares_run, tmp_path):
    """The same clips through ``extract`` (s3prl's 16 kHz input, resampled to 24 kHz inside) and through X-ARES
    (which resamples its 16 kHz tars to the encoder's 24 kHz): the same time-mean embeddings."""
    from encodecmae_s3prl.extract import main as extract_main

    result, _, ckpt = xares_run
    assert extract_main(["-u", "encodecmae_local", "-k", str(ckpt), result["clip_folder"], "--out", str(tmp_path / "x"),
                         "--device", "cpu", "--precision", "fp32"]) == 0
    for key, mean in result["encoded"].items():
        ours = np.load(tmp_path / "x" / f"{key[:8]}.npy").mean(axis=0)  # X-ARES appends its batch index to the key
        np.testing.assert_allclose(np.array(mean), ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


@pytest.fixture(scope="module")
def mteb_run(tmp_path_factory, tiny_ckpt):
    if not (SUITES / "mteb").is_dir():
        pytest.fail(f"{SUITES} has no MTEB: run 'bash scripts/setup_suites.sh' (make setup does)")
    work = tmp_path_factory.mktemp("mteb")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "suite_driver.py"), "mteb", str(tiny_ckpt),
                           str(work)], env=_suite_env(), cwd=work, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])


@pytest.mark.slow
def test_mteb_evaluates_a_local_audio_classification_task_above_chance(mteb_run):
    """``mteb.evaluate`` (MTEB's own logistic-regression protocol, 3 experiments of 8 clips per label) on our
    encoder and its ModelMeta: 4 learnable classes, well above chance (0.25)."""
    assert mteb_run["accuracy"] > 0.6
    assert mteb_run["embed_dim"] == 64 and mteb_run["n_parameters"] > 0
    assert mteb_run["meta_name"].startswith("encodecmae-s3prl/states-1-layer-1")
