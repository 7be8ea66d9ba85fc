"""What ``spool extract`` takes as input: links, FIFOs, list files; nothing hangs or is skipped."""

from __future__ import annotations

from pathlib import Path

from spool.extract import collect_inputs


def test_list_file_comments_hashes_and_byte_order_mark(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    lines = ["first.mp4", "# a comment", "   # an indented comment", "#leading.mp4",
             "./#leading.mp4", "hash#1.mp4", "  spaced.mp4  ", ""]
    listing.write_text("\n".join(lines), encoding="utf-8-sig")
    found = collect_inputs([listing])
    assert [name.as_posix() for _, name in found] == ["first", "#leading", "hash#1", "spaced"]
    assert [src for src, _ in found] == [tmp_path / n for n in
                                         ("first.mp4", "#leading.mp4", "hash#1.mp4",
                                          "spaced.mp4")]
