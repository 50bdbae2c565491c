"""One precision setting for inference, as for training (upstream/precision.py): every path a user embeds with
(extract, compare, table1, the HEAR API, the hub entries under s3prl's runner) runs our transformer under bf16
autocast where the device runs it natively ('auto'), or as forced, records what ran, and keys its caches by it."""
import json

import numpy as np
import pytest
import torch

from encodecmae_s3prl.demo_data import harmonic_tone, write_wav
from encodecmae_s3prl.upstream import precision as precision_module


@pytest.fixture
def native_bf16(monkeypatch):
    """A CPU with AVX-512 BF16 / AMX, whatever this one is."""
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)


@pytest.fixture
def avx2_only(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: False)


def _audio(folder, count=3, seconds=1.5):
    rng = np.random.default_rng(0)
    for i in range(count):
        write_wav(folder / f"c{i}.wav", harmonic_tone(220.0 * (i + 1), seconds, 24000, rng), 24000)
    return folder


def test_auto_is_bf16_where_native_and_fp32_on_avx2_only(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
    assert precision_module.resolved_name("cpu", "auto") == "bf16"
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: False)
    assert precision_module.resolved_name("cpu", "auto") == "fp32"
    assert precision_module.resolved_name("cpu", "bf16") == "bf16"  # forced, emulated if need be
    assert precision_module.resolved_name("cpu", "fp32") == "fp32"


def test_the_hub_entry_runs_the_transformer_in_bf16_and_returns_float32(tiny_ckpt, tmp_path):
    """bf16 changes the numbers (the autocast really runs, from the projection on) within bf16's rounding; the
    hidden states come back float32; a ``precision:`` key of the -g YAML (s3prl's runner) sets it too."""
    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401

    wavs = [torch.from_numpy(harmonic_tone(330.0, 2.0, 16000, np.random.default_rng(1)))]
    fp32 = hub.encodecmae_local(ckpt=str(tiny_ckpt)).eval()
    bf16 = hub.encodecmae_local(ckpt=str(tiny_ckpt), precision="bf16").eval()
    (tmp_path / "up.yaml").write_text("precision: bf16\n")
    from_yaml = hub.encodecmae_local(ckpt=str(tiny_ckpt), model_config=str(tmp_path / "up.yaml")).eval()
    assert (fp32.precision, bf16.precision, from_yaml.precision) == ("fp32", "bf16", "bf16")
    assert bf16.ran_as() == "bf16" and fp32.ran_as() == "fp32"
    with torch.no_grad():
        a, b, c = (up(wavs)["hidden_states"] for up in (fp32, bf16, from_yaml))
    assert all(h.dtype == torch.float32 for h in b)
    for x, y in zip(a, b, strict=True):
        relative = float((x - y).norm() / x.norm())
        assert 1e-5 < relative < 5e-2, relative
    for x, y in zip(b, c, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="precision 'half' is not one of"):
        hub.encodecmae_local(ckpt=str(tiny_ckpt), precision="half")


def test_every_command_records_what_ran_and_keys_its_cache_by_it(tiny_ckpt, tmp_path, native_bf16, capsys):
    from encodecmae_s3prl.evaluation import compare, hear_api
    from encodecmae_s3prl.extract import main as extract_main

    from synthetic_data import write_hear_task

    audio = _audio(tmp_path / "in")
    # extract: auto on a native-bf16 CPU runs bf16; the manifest says so, and a rerun at fp32 redoes the files
    assert extract_main(["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(audio), "--out", str(tmp_path / "x"),
                         "--device", "cpu"]) == 0
    manifest = (tmp_path / "x" / "manifest.tsv").read_text().splitlines()
    assert manifest[0].split("\t") == ["input", "output", "shape", "precision"]
    assert {line.split("\t")[-1] for line in manifest[1:]} == {"bf16"}
    assert "runs in bf16 (precision auto)" in capsys.readouterr().out
    bf16 = np.load(tmp_path / "x" / "c0.npy")
    assert extract_main(["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(audio), "--out", str(tmp_path / "x"),
                         "--device", "cpu", "--precision", "fp32"]) == 0
    assert "already extracted" not in capsys.readouterr().out  # other settings: nothing kept
    assert {line.split("\t")[-1] for line in (tmp_path / "x" / "manifest.tsv").read_text().splitlines()[1:]} == \
        {"fp32"}
    assert not np.array_equal(np.load(tmp_path / "x" / "c0.npy"), bf16)

    # compare: results.json records it per cell; fp32 and bf16 runs keep two caches side by side
    task = write_hear_task(tmp_path / "task", classes=2, per_split=(6, 4, 4))
    argv = ["--upstreams", f"mine={tiny_ckpt},fbank_no_cmvn", "--probes", "hear", "--data", f"hear={task}",
            "--out", str(tmp_path / "cmp"), "--grid-size", "1", "--max-epochs", "3", "--hidden-dim", "8",
            "--device", "cpu"]
    compare.main(argv)
    compare.main([*argv, "--precision", "fp32"])
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert results["mine"]["hear"]["precision"] == "fp32" and results["fbank_no_cmvn"]["hear"]["precision"] == "fp32"
    caches = sorted(p.name for p in (tmp_path / "cmp" / "cache").glob("mine-*.npy"))
    assert len(caches) == 2, caches  # one per precision, never mixed
    assert compare.upstream_key("m", "encodecmae_local", str(tiny_ckpt), "bf16") != \
        compare.upstream_key("m", "encodecmae_local", str(tiny_ckpt), "fp32")

    # the HEAR API: auto by default, as compare; fp32 when asked
    assert hear_api.load_model(str(tiny_ckpt), device="cpu").precision == "bf16"
    assert hear_api.load_model(str(tiny_ckpt), device="cpu", precision="fp32").precision == "fp32"
    assert hear_api.load_model("fbank_no_cmvn", device="cpu").precision == "fp32"


def test_auto_stays_fp32_on_an_avx2_only_cpu(tiny_ckpt, tmp_path, avx2_only, capsys):
    from encodecmae_s3prl.evaluation import hear_api, table1
    from encodecmae_s3prl.extract import main as extract_main

    audio = _audio(tmp_path / "in", count=1)
    assert extract_main(["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(audio), "--out", str(tmp_path / "x"),
                         "--device", "cpu"]) == 0
    assert "runs in fp32 (precision auto)" in capsys.readouterr().out
    assert hear_api.load_model(str(tiny_ckpt), device="cpu").precision == "fp32"
    (row,) = table1.parse_rows([f"mine={tiny_ckpt}"], "cpu", "auto")
    assert row.key.endswith("|fp32")
