"""bench/_report.update_section: a regenerated section replaces the old table but keeps the
notes written by hand under it, and leaves the other sections alone."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _report import NOTES_END, NOTES_START, update_section  # noqa: E402


def test_regenerating_replaces_the_body_and_keeps_hand_written_notes(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    update_section(doc, "A", "| x |\n| 1 |")
    update_section(doc, "B", "table B")
    text = doc.read_text()
    note = f"{NOTES_START}\nWhy x is 1: measured.\n{NOTES_END}"
    doc.write_text(text.replace("| 1 |\n", f"| 1 |\n\n{note}\n"))

    update_section(doc, "A", "| x |\n| 2 |")
    text = doc.read_text()
    assert "| 2 |" in text and "| 1 |" not in text
    assert text.count("Why x is 1: measured.") == 1
    assert text.index("| 2 |") < text.index(NOTES_START) < text.index("## B")
    assert "table B" in text

    update_section(doc, "A", "| x |\n| 3 |")  # and again: the notes are not doubled
    assert doc.read_text().count(NOTES_START) == 1


def test_a_section_without_notes_is_replaced_whole(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    update_section(doc, "A", "old text")
    update_section(doc, "A", "new text")
    text = doc.read_text()
    assert "old text" not in text and "new text" in text
    assert NOTES_START not in text and text.count("## A") == 1
