"""Run files: a benchmark's results file, and its --update-docs replacing only its own marked
block of a page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimlab.utils.run_files import replace_doc_block, save_bench_results

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


def test_bench_results_go_to_json_and_with_a_block_into_the_page(tmp_path: Path) -> None:
    doc, out = tmp_path / "page.md", tmp_path / "bench" / "b.json"
    doc.write_text(f"# Page\n{START}\nold\n{END}\n")
    results = {"table": "| t |", "ms": {"fp32": 1.5}}
    assert save_bench_results(out, results) == [out]
    assert json.loads(out.read_text()) == results
    assert doc.read_text() == f"# Page\n{START}\nold\n{END}\n", "no block given: page untouched"
    assert save_bench_results(out, results, (doc, START, END)) == [out, doc]
    assert doc.read_text() == f"# Page\n{START}\n| t |\n{END}\n"
