"""Typed configs that refuse what they do not know: one rule for unknown keys and for value checks.

Used by ``EncodecMAEConfig`` (model) and ``PretrainDataConfig`` (pretraining data); errors (``ConfigError``, a
user error and a ValueError) name the key, the value and the rule, as fairseq2's configs do.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Iterable, Tuple, Type, TypeVar

from encodecmae_s3prl.errors import ConfigError

T = TypeVar("T")
Rule = Tuple[bool, str, Any, str]  # (holds, key, value, what the value must be)


def from_dict_strict(cls: Type[T], values: dict, where: str, error: Type[Exception] = ConfigError) -> T:
    """``cls(**values)``; keys that are not fields of ``cls`` are an error listing the valid ones."""
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
    return cls(**values)


def check_rules(rules: Iterable[Rule], where: str, error: Type[Exception] = ConfigError) -> None:
    """The first rule that does not hold, as ``{where}.{key} = {value!r}: must be {rule}``."""
    for holds, key, value, rule in rules:
        if not holds:
            raise error(f"{where}.{key} = {value!r}: must be {rule}")
