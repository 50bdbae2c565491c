"""The README's CPU recipe for one's own audio, run block by block as written, from a folder outside the clone
(scaled only through the variables the README documents: AUDIO, STEPS, ESC50)."""
import os
import re
import subprocess

import numpy as np
import pytest

from encodecmae_s3prl.demo_data import harmonic_tone, write_esc50, write_wav

from conftest import REPO


def cpu_recipe_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("### On a CPU", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_the_recipe_is_there():
    blocks = cpu_recipe_blocks()
    assert len(blocks) == 3 and "source .venv/bin/activate" in blocks[0]
    assert "-c cpu" in blocks[1] and "extract" in blocks[1] and "compare" in blocks[2]


@pytest.mark.slow
def test_cpu_recipe_runs_as_written(tmp_path):
    audio = tmp_path / "my audio"
    rng = np.random.default_rng(0)
    for i in range(6):
        write_wav(audio / f"note{i}.wav", harmonic_tone(110 * (i + 2), 2.5, 22050, rng), 22050)
    esc50 = write_esc50(tmp_path / "ESC-50")
    work = tmp_path / "work"
    work.mkdir()
    first, *rest = cpu_recipe_blocks()
    script = "\n".join(["set -euo pipefail", f"cd {REPO}", first, f"cd {work}", *rest])
    env = {**os.environ, "AUDIO": str(audio), "STEPS": "4", "ESC50": str(esc50)}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)  # the block activates
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (work / "result/pretrain/mine/states-4.ckpt").is_file()
    assert len(list((work / "embeddings").rglob("*.npy"))) == 6 and (work / "embeddings/manifest.tsv").is_file()
    results = (work / "cmp/results.md").read_text()
    assert "| mine |" in results and "| fbank (no CMVN) |" in results
