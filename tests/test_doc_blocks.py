"""Figures on a page are written by the command that measured them, between marker lines (``doc_blocks``): the demo's
table in README.md, the HEAR kit agreement in docs/evaluation.md, the v2 side-by-side in docs/fidelity.md."""
import importlib.util
import os
import stat

import pytest

from encodecmae_s3prl import demo, doc_blocks
from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.evaluation import hear_kit_check

from conftest import REPO


def _v2_side_by_side():
    spec = importlib.util.spec_from_file_location("v2_side_by_side", REPO / "scripts" / "v2_side_by_side.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAGES = [("README.md", demo.TABLE_NAME, demo.TABLE_COMMAND),
         ("docs/evaluation.md", hear_kit_check.DOC_BLOCK, hear_kit_check.DOC_COMMAND)]


@pytest.mark.parametrize("page, name, command", PAGES)
def test_each_page_holds_its_commands_block_once(page, name, command):
    doc_blocks.check(REPO / page, name, command)  # raises unless exactly one block, begin before end


def test_the_v2_table_is_a_block_of_the_fidelity_page():
    module = _v2_side_by_side()
    doc_blocks.check(REPO / "docs" / "fidelity.md", module.DOC_BLOCK, module.DOC_COMMAND)


def test_write_replaces_the_block_only_whole_and_keeps_the_mode(tmp_path):
    page = tmp_path / "page.md"
    begin, end = doc_blocks.markers("t", "cmd --x")
    page.write_text(f"# Title\n\nbefore\n\n{begin}\nold figure\n{end}\n\nafter\n")
    page.chmod(0o640)
    doc_blocks.write(page, "t", "cmd --x", "new figure\n\n| a |\n|---|")
    assert page.read_text() == f"# Title\n\nbefore\n\n{begin}\nnew figure\n\n| a |\n|---|\n{end}\n\nafter\n"
    assert stat.S_IMODE(os.stat(page).st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["page.md"]  # no temporary file left beside it


@pytest.mark.parametrize("text", ["no block", "<!-- end of t -->\n<!-- t: written by `c`; not edited by hand -->\n",
                                  "<!-- t: written by `c`; not edited by hand -->\nx\n<!-- end of t -->\n" * 2])
def test_a_page_without_exactly_one_block_is_refused_naming_the_markers(tmp_path, text):
    page = tmp_path / "page.md"
    page.write_text(text)
    with pytest.raises(UserError, match="exactly one t block: a line <!-- t: written by `c`"):
        doc_blocks.write(page, "t", "c", "figure")
    assert page.read_text() == text
    with pytest.raises(UserError, match="no such file"):
        doc_blocks.check(tmp_path / "missing.md", "t", "c")


def test_the_checks_refuse_a_page_without_the_block_before_running(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("nothing here\n")
    with pytest.raises(SystemExit) as exit_kit:
        hear_kit_check.main(["--work", str(tmp_path / "w"), "--kit", str(tmp_path / "k"), "--doc", str(page)])
    with pytest.raises(SystemExit) as exit_v2:
        _v2_side_by_side().main(["--ref", str(tmp_path), "--doc", str(page)])
    assert exit_kit.value.code == 2 and exit_v2.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and all("exactly one" in line and str(page) in line for line in lines)
    assert not (tmp_path / "w").exists()  # nothing was run


def test_the_kit_check_agrees_only_when_every_part_does():
    grid = [{"params": {"lr": 1e-3}, "valid": 0.5, "epoch": 2}]
    row = {"kit": {"grid": grid}, "ours": {"grid": [dict(grid[0])]}, "same_folds": True,
           "same_folds_on_kit_embeddings": True, "same_targets": True}
    assert hear_kit_check.agrees(row)
    assert not hear_kit_check.agrees({**row, "same_folds": False})
    assert not hear_kit_check.agrees({**row, "same_targets": False})
    assert not hear_kit_check.agrees({**row, "ours": {"grid": [{**grid[0], "epoch": 5}]}})
