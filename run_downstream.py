#!/usr/bin/env python3
"""s3prl's run_downstream.py, with EnCodecMAE's upstreams and probes registered.

Every option of s3prl's script works unchanged, from any working directory; see -h.
"""
from encodecmae_s3prl.cli import run_downstream

if __name__ == "__main__":
    run_downstream()
