"""Typed configs that refuse what they do not know: one rule for unknown keys and for value checks.

Used by ``EncodecMAEConfig`` (model) and ``PretrainDataConfig`` (pretraining data); errors (``ConfigError``, a
user error and a ValueError) name the key, the value and the rule, as fairseq2's configs do.
"""
from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any, Iterable, Tuple, Type, TypeVar

from encodecmae_s3prl.errors import ConfigError

T = TypeVar("T")
Rule = Tuple[bool, str, Any, str]  # (holds, key, value, what the value must be)


def check_keys(cls: Type[Any], keys: Iterable[str], where: str, error: Type[Exception] = ConfigError,
               extra: Iterable[str] = ()) -> None:
    """Keys that are neither fields of ``cls`` nor in ``extra`` are an error naming the closest valid one."""
    valid = [f.name for f in fields(cls)] + list(extra)
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise error(f"{where}: unknown key(s) {unknown}{hint}; valid keys: {valid}")


def from_dict_strict(cls: Type[T], values: dict, where: str, error: Type[Exception] = ConfigError) -> T:
    """``cls(**values)``; keys that are not fields of ``cls`` are an error naming the closest valid one."""
    check_keys(cls, values, where, error)
    return cls(**values)


def check_rules(rules: Iterable[Rule], where: str, error: Type[Exception] = ConfigError) -> None:
    """The first rule that does not hold, as ``{where}.{key} = {value!r}: must be {rule}``."""
    for holds, key, value, rule in rules:
        if not holds:
            raise error(f"{where}.{key} = {value!r}: must be {rule}")
