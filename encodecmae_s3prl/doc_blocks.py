"""Blocks of a Markdown page (README.md, docs/*.md) that a command writes, between two marker lines: a figure on a
page is then the one the command printed, with the settings it ran with, and is never edited by hand.

    <!-- NAME: written by `COMMAND`; not edited by hand -->
    ...
    <!-- end of NAME -->
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.upstream.atomic import atomic_write_text


def markers(name: str, command: str) -> Tuple[str, str]:
    """The first and last line of the block ``name``, which ``command`` writes."""
    return f"<!-- {name}: written by `{command}`; not edited by hand -->", f"<!-- end of {name} -->"


def block(name: str, command: str, body: str) -> str:
    """The whole block: the markers around ``body``."""
    begin, end = markers(name, command)
    return f"{begin}\n{body.strip()}\n{end}\n"


def replaced(text: str, name: str, command: str, new_block: str, where: str = "the page") -> str:
    """``text`` with its block ``name`` (markers included) replaced by ``new_block``; a UserError naming the
    markers when ``text`` does not hold exactly one such block."""
    begin, end = markers(name, command)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UserError(f"{where} needs exactly one {name} block: a line {begin} and, below it, a line {end}")
    head, rest = text.split(begin, 1)
    return head + new_block.rstrip("\n") + rest.split(end, 1)[1]


def check(path: Path, name: str, command: str) -> None:
    """Before a long run: ``path`` exists and holds the block, so that the run's end cannot fail on it."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file (the page to write the {name} into)")
    replaced(Path(path).read_text(), name, command, "", where=str(path))


def write(path: Path, name: str, command: str, body: str) -> None:
    """Replace the block ``name`` of the page ``path`` by ``body`` (written whole or not at all, mode kept)."""
    path = Path(path)
    mode = path.stat().st_mode
    atomic_write_text(path, replaced(path.read_text(), name, command, block(name, command, body),
                                     where=str(path))).chmod(mode)
