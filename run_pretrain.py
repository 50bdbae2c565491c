#!/usr/bin/env python3
"""s3prl's run_pretrain.py, with the EnCodecMAE pretraining task (-u encodecmae) registered.

Every option of s3prl's script works unchanged, from any working directory; see -h.
"""
from encodecmae_s3prl.cli import run_pretrain

if __name__ == "__main__":
    run_pretrain()
