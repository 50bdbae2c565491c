"""``encodecmae_s3prl.hear_api``: the name the HEAR kit loads (``hear-validator encodecmae_s3prl.hear_api``,
``heareval.embeddings.runner encodecmae_s3prl.hear_api``) for :mod:`encodecmae_s3prl.evaluation.hear_api`.

Imported, this name is that module itself (one module object).
"""
import sys

from encodecmae_s3prl.evaluation import hear_api as _hear_api

sys.modules[__name__] = _hear_api
