"""``python -m encodecmae_s3prl.compare``: the documented name of :mod:`encodecmae_s3prl.evaluation.compare`.

Imported, this name is that module itself (one module object); run with ``-m``, it runs its ``main``.
"""
import sys

from encodecmae_s3prl.evaluation import compare as _compare

if __name__ == "__main__":
    sys.exit(_compare.run())
else:
    sys.modules[__name__] = _compare
