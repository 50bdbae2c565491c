"""Our loading of the authors' v2 models against their own code, layer by layer.

Step 1 runs in a side environment with the authors' main-branch code and its dependencies (gin, ginpipe,
Lightning, librosa), never in .venv: ``scripts/v2_reference.py`` builds their models from their own gin files as
``run_pretraining.sh`` composes them (random-init, seeded, on a seeded random EnCodec), saves each in their hub
format (``{'imports', 'config', 'state_dict'}``) and records what their ``extract_features_from_array`` returns on
fixed clips (1 s, 4.01 s, 30 s, and 6.133 s, whose last chunk shows their batch-length slip) fed at 24 kHz.

Step 2 (this script, in .venv, no authors' code): each saved file is loaded by ours through the HEAR API
(``encodecmae_v2:FILE`` with ``sample_rate=24000``, every hidden state from the same model), and every layer the
authors return is compared with ours, chunk by chunk on the frames both have:

- their layer j < L-1 is the ``a`` stream after encoder layer j+1 (our ``hidden_states[j + 1]``), their last is
  the output a + LN(b) (ours ``hidden_states[-1]``, the HEAR API's default layer);
- their chunks are 4 s and restart the positions, as ours; a chunk of <= 2048 samples is skipped by theirs (the
  4.01 s clip's 240-sample tail: ours embeds it as one more frame); a mel chunk of n samples has
  ``1 + (n - 637) // 318`` frames in theirs, ``ceil(n / 320)`` in ours (the extra one at the end of a chunk is read
  as a query only, so the frames both have agree).

    PYTHONPATH=/tmp/v2deps:/tmp/ecmae_v2 .venv/bin/python scripts/v2_reference.py --out /tmp/v2ref --install
    .venv/bin/python scripts/v2_side_by_side.py --ref /tmp/v2ref --out /tmp/v2ref/side_by_side.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from encodecmae_s3prl import doc_blocks
from encodecmae_s3prl.errors import user_errors
from encodecmae_s3prl.machine import describe

BOUND = 1e-5  # relative error (max |ours - theirs| / max |theirs|) allowed per layer: float32, other kernels


def compare_model(path: Path, meta: dict, ref: np.lib.npyio.NpzFile, threads: int) -> list[dict]:
    from encodecmae_s3prl.evaluation import hear_api

    torch.set_num_threads(threads)
    model = hear_api.load_model(f"encodecmae_v2:{path}", sample_rate=24_000, device="cpu", precision="fp32")
    mae = model.upstream.model
    rows = []
    for clip, samples in meta["clips"].items():
        audio = torch.from_numpy(ref[f"{clip}_audio"])[None]
        assert audio.shape[1] == samples
        with torch.no_grad():
            start = time.perf_counter()
            ours = [h[0].numpy() for h in mae.encode(audio).hidden_states]  # (frames, D) each
            last_via_hear = model.frames(audio)[0].numpy()  # the HEAR API's layer -1
            seconds = time.perf_counter() - start
        theirs = ref[f"{clip}_all"]  # (L, their frames, D)
        # the frames both have, chunk by chunk: (our frame, their frame) index pairs
        ours_index, theirs_index, offset = [], [], 0
        for chunk in meta["chunks"][clip]:
            if not chunk.get("used"):
                continue
            n = int(chunk["frames"])
            ours_index.extend(range(chunk["chunk"] * 300, chunk["chunk"] * 300 + n))
            theirs_index.extend(range(offset, offset + n))
            offset += n
        assert offset == theirs.shape[1], (clip, offset, theirs.shape)
        layers = theirs.shape[0]
        for j in range(layers):
            mine = ours[-1] if j == layers - 1 else ours[j + 1]
            a, b = mine[ours_index], theirs[j][theirs_index]
            rows.append({"clip": clip, "layer": j if j < layers - 1 else "output", "frames": len(ours_index),
                         "their_frames": int(theirs.shape[1]), "our_frames": int(mine.shape[0]),
                         "rel_max": float(np.abs(a - b).max() / np.abs(b).max()),
                         "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b))})
        rows.append({"clip": clip, "layer": "output via hear_api", "frames": len(ours_index),
                     "their_frames": int(theirs.shape[1]), "our_frames": int(last_via_hear.shape[0]),
                     "rel_max": float(np.abs(last_via_hear[ours_index] - theirs[-1][theirs_index]).max()
                                      / np.abs(theirs[-1][theirs_index]).max()),
                     "rel_l2": float(np.linalg.norm(last_via_hear[ours_index] - theirs[-1][theirs_index])
                                     / np.linalg.norm(theirs[-1][theirs_index])),
                     "seconds": seconds})
    return rows


def summary(name: str, rows: list[dict]) -> list[str]:
    lines = []
    for clip in dict.fromkeys(r["clip"] for r in rows):
        mine = [r for r in rows if r["clip"] == clip]
        layers = [r for r in mine if isinstance(r["layer"], int)]
        out = next(r for r in mine if r["layer"] == "output")
        hear = next(r for r in mine if r["layer"] == "output via hear_api")
        worst = max(mine, key=lambda r: r["rel_max"])
        lines.append(f"| {name} | {clip[4:]} | {out['their_frames']} / {out['our_frames']} ({out['frames']} compared) "
                     f"| {max(r['rel_max'] for r in layers):.1e} | {out['rel_max']:.1e} | {hear['rel_max']:.1e} | "
                     f"{worst['layer']} | {'yes' if worst['rel_max'] <= BOUND else 'NO'} |")
    return lines


DOC_BLOCK = "v2 side-by-side table"
DOC_COMMAND = "scripts/v2_side_by_side.py --ref REF --doc docs/fidelity.md"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="the folder scripts/v2_reference.py wrote")
    parser.add_argument("--out", type=Path, help="markdown table to write (default: REF/side_by_side.md)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", type=Path, help=f"also put the table, with the machine and date, into this page "
                                                 f"between its {DOC_BLOCK} markers (docs/fidelity.md)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    files = sorted(p for p in args.ref.glob("*.pt"))
    if args.doc is not None:
        with user_errors():  # a page that cannot take the table is said before the run
            doc_blocks.check(args.doc, DOC_BLOCK, DOC_COMMAND)
    if not files:
        print(f"error: no .pt file in {args.ref}: run scripts/v2_reference.py --out {args.ref} first", file=sys.stderr)
        return 2
    table = ["| model | clip | frames theirs / ours (compared) | encoder layers: worst rel. error | output | "
             "output via hear_api | worst layer | within the bound |", "|---|---|---|---|---|---|---|---|"]
    everything = {}
    ok = True
    for path in files:
        meta = json.loads(path.with_suffix(".meta.json").read_text())
        with np.load(path.with_suffix(".reference.npz")) as ref:
            rows = compare_model(path, meta, ref, args.threads)
        everything[path.stem] = rows
        table += summary(path.stem, rows)
        ok &= all(r["rel_max"] <= BOUND for r in rows)
        print("\n".join(table[-len(meta["clips"]):]), flush=True)
    text = "\n".join(table) + f"\n\nBound: {BOUND:g} (max |ours - theirs| / max |theirs|, every layer, every clip).\n"
    out = args.out or args.ref / "side_by_side.md"
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(everything, indent=1))
    print(text)
    if args.doc is not None:
        header = (f"Measured {time.strftime('%Y-%m-%d')} on {describe()}; float32; "
                  f"{time.perf_counter() - start:.0f} s. Error: max |ours − theirs| / max |theirs| per layer.")
        doc_blocks.write(args.doc, DOC_BLOCK, DOC_COMMAND, f"{header}\n\n{text}")
        print(f"table written into {args.doc}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
