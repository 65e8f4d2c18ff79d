"""smoothjax.atomic_files: a write that fails halfway leaves the previous file whole."""

import os

import pytest

from smoothjax.atomic_files import write_atomically


def test_a_write_that_fails_leaves_the_old_file_and_a_complete_one_replaces_it(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def torn(tmp):
        tmp.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, torn)
    assert path.read_text() == "old"
    write_atomically(path, "new text")
    assert path.read_text() == "new text"
    write_atomically(path, lambda tmp: tmp.write_bytes(b"\x89PNG"))
    assert path.read_bytes() == b"\x89PNG"
    # The failed write may leave its temporary sibling behind (documented); the successful ones leave nothing.
    assert {p.name for p in tmp_path.iterdir()} <= {"results.json", f".results.json.tmp{os.getpid()}"}
