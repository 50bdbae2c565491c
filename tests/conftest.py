import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# keep the 2-core machine responsive and results repeatable
os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_script(script: str, *args: str, cwd: Path, timeout: int = 600) -> str:
    """Run one of the repository's root scripts as a user would, from ``cwd``; return its output."""
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed with {proc.returncode}:\n{output[-4000:]}")
    return output


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
