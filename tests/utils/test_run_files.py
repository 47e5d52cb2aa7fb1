"""Run files: a benchmark's --update-docs replaces only its own marked block of a page."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimlab.utils.run_files import replace_doc_block

START, END = "<!-- b:start -->", "<!-- b:end -->"


def test_doc_block_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(f"# Page\n\nbefore\n{START}\nold table\n{END}\nafter\n")
    replace_doc_block(doc, START, END, "| new | table |")
    assert doc.read_text() == f"# Page\n\nbefore\n{START}\n| new | table |\n{END}\nafter\n"


def test_page_without_the_markers_is_left_alone_and_named(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text("# Page\n")
    with pytest.raises(SystemExit, match=r"page.md has no <!-- b:start --> \.\.\. <!-- b:end -->"):
        replace_doc_block(doc, START, END, "x")
    assert doc.read_text() == "# Page\n"
