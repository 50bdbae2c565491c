"""Peak memory (RSS) of long audio through EnCodecMAE: `extract` of one file, and one upstream forward.

    .venv/bin/python benchmarks/long_audio_memory.py [--size base] [--extract-minutes 10,60] [--forward-minutes 10]
        [--tree DIR]   # run another checkout's code (e.g. a `git worktree` of an older commit), for before/after

Each measurement runs in a fresh subprocess; its peak RSS is the `ru_maxrss` that `os.wait4` reports for
that child (the same figure as `resource.getrusage`, per process). Audio: a 16 kHz mono WAV of harmonic tones;
model: a random `--size` EnCodecMAE whose random-init codec is fitted to synthetic audio (weights do not
change memory or cost). Prints one markdown row per measurement for benchmarks/README.md, with the CPU flags.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from encodecmae_s3prl.machine import cpu_flags

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# installs a finder that maps encodecmae_s3prl.* to the folders of another checkout (package_layout's mapping)
TREE_SHIM = """
import importlib.machinery, sys
ROOT = {root!r}
MAP = {roots!r}
class _Tree:
    def find_spec(self, name, path=None, target=None):
        parts = name.split(".")
        for depth in (2, 1):
            head = ".".join(parts[:depth])
            if head in MAP and len(parts) >= depth:
                rest = parts[depth:]
                folder = ROOT + "/" + MAP[head] + "".join("/" + p for p in rest[:-1])
                base = folder + ("/" + rest[-1] if rest else "")
                import os
                if os.path.isfile(base + "/__init__.py"):
                    return importlib.util.spec_from_file_location(name, base + "/__init__.py",
                                                                  submodule_search_locations=[base])
                if rest and os.path.isfile(base + ".py"):
                    return importlib.util.spec_from_file_location(name, base + ".py")
                return None
        return None
import importlib.util
sys.meta_path.insert(0, _Tree())
"""

FORWARD = """
import resource, sys, time, torch, soundfile, numpy as np
import encodecmae_s3prl
from s3prl import hub
wav, rate = soundfile.read(sys.argv[1], dtype="float32")
upstream = hub.encodecmae_local(ckpt=sys.argv[2]).eval()
ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes: torch, s3prl, the model, the audio
start = time.perf_counter()
with torch.no_grad():
    states = upstream([torch.from_numpy(wav)])["hidden_states"]
seconds = time.perf_counter() - start
size = sum(s.numel() * s.element_size() for s in states)
print("RESULT", size, seconds, ready)
"""


def child(code_or_args: list[str], tree: str | None) -> tuple[float, str, float]:
    """Run a fresh interpreter; (its peak RSS in GiB, its stdout, wall seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if tree:
        from encodecmae_s3prl.package_layout import SUBPACKAGE_ROOTS

        prelude = TREE_SHIM.format(root=str(Path(tree).resolve()), roots=SUBPACKAGE_ROOTS)
        if code_or_args[0] == "-c":
            code_or_args = ["-c", prelude + code_or_args[1], *code_or_args[2:]]
        else:  # -m module args
            code_or_args = ["-c", prelude + f"import runpy, sys; sys.argv = {code_or_args[1:]!r}; "
                                            f"runpy.run_module({code_or_args[1]!r}, run_name='__main__')"]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *code_or_args], stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the max over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024 / 1024, stdout, wall


def write_audio(path: Path, minutes: float, rate: int = 16000, channels: int = 1) -> None:
    import numpy as np
    import soundfile

    with soundfile.SoundFile(str(path), "w", rate, channels, "PCM_16") as handle:
        rng = np.random.default_rng(0)
        for _ in range(int(minutes * 60)):
            t = np.arange(rate) / rate
            freq = 110 * 2 ** (rng.integers(0, 36) / 12)
            mono = (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(rate)).astype(np.float32)
            handle.write(np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1))


class _Rows(list):
    """Each measurement printed as soon as it is known (a long run stopped halfway keeps what it measured)."""

    def append(self, row: str) -> None:
        super().append(row)
        print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="base")
    parser.add_argument("--extract-minutes", default="10,60")
    parser.add_argument("--forward-minutes", default="10")
    parser.add_argument("--extract-stereo-44k-minutes", default="",
                        help="also extract from 44.1 kHz stereo files this long (read and mixed down by extract)")
    parser.add_argument("--tree", help="another checkout whose code to measure (default: this one)")
    parser.add_argument("--work", type=Path, help="folder for the audio, checkpoint and outputs (default: temp)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="long_audio_"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{args.size}.ckpt"
    if not ckpt.exists():  # written by this checkout: an older --tree must read the same file
        child(["-c", "import sys; sys.path.insert(0, sys.argv[3]); "
               "from synthetic_data import write_tiny_encodecmae_checkpoint as w; w(sys.argv[1], size=sys.argv[2])",
               str(ckpt), args.size, str(REPO / "tests")], None)
    label = f"{args.tree or 'this checkout'}"
    print(f"machine: {platform.node()} {os.cpu_count()} cores, cpu flags {cpu_flags()}, torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', '2')}, {time.strftime('%Y-%m-%d')}")
    print("| what | audio | peak RSS | kept | wall | code |")
    print("|---|---|---|---|---|---|", flush=True)
    rows = _Rows()
    for minutes in [float(m) for m in args.forward_minutes.split(",") if m]:
        audio = work / f"{minutes:g}min.wav"
        if not audio.exists():
            write_audio(audio, minutes)
        peak, out, wall = child(["-c", FORWARD, str(audio), str(ckpt)], args.tree)
        size, seconds, ready = (float(v) for v in out.split("RESULT", 1)[1].split())
        grown = peak * 1024 ** 3 - ready
        gib = 1024 ** 3
        rows.append(f"| upstream forward, all {args.size} hidden states | {minutes:g} min | {peak:.2f} GiB "
                    f"({ready / gib:.2f} GiB before the forward) | returns {size / gib:.2f} GiB; the forward "
                    f"added {grown / gib:.2f} GiB = {grown / size:.2f}x of it; peak = {peak * gib / size:.2f}x "
                    f"of it | {wall:.0f} s | {label} |")
    extracts = [(float(m), 16000, 1) for m in args.extract_minutes.split(",") if m]
    extracts += [(float(m), 44100, 2) for m in args.extract_stereo_44k_minutes.split(",") if m]
    for minutes, rate, channels in extracts:
        audio = work / (f"{minutes:g}min.wav" if rate == 16000 else f"{minutes:g}min_{rate}hz_{channels}ch.wav")
        if not audio.exists():
            write_audio(audio, minutes, rate, channels)
        out_dir = work / f"out-{audio.stem}"
        peak, _, wall = child(["-m", "encodecmae_s3prl.extract", "-u", "encodecmae_local", "-k", str(ckpt),
                               str(audio), "--out", str(out_dir), "--device", "cpu"], args.tree)
        import numpy as np

        kept = np.load(out_dir / f"{audio.stem}.npy", mmap_mode="r")
        what = "" if rate == 16000 else f", {rate} Hz {channels} channels"
        rows.append(f"| `extract`, last layer of {args.size} | {minutes:g} min{what} | {peak:.2f} GiB | output "
                    f"{kept.nbytes / 1024 ** 3:.2f} GiB {tuple(kept.shape)} | {wall:.0f} s | {label} |")


if __name__ == "__main__":
    main()
