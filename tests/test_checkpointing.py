"""smoothjax.checkpointing: a write that fails halfway leaves the previous file whole, and the best checkpoint by a
metric (orbax's best_fn, config.keep_best_by) is the maximum over the whole run, restarts included."""

import os

import numpy as np
import pytest

from smoothjax.checkpointing import Checkpointer, write_atomically


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


def test_best_checkpoint_keeps_the_maximum_and_survives_a_restart(tmp_path):
    state = {"w": np.arange(3.0)}
    best = Checkpointer(tmp_path / "best", max_to_keep=1, best_metric="clean_accuracy")
    for step, value, kept in ((10, 0.5, 10), (20, 0.4, 10), (30, 0.7, 30)):
        best.save(step, {"w": state["w"] + step // 10}, metrics={"clean_accuracy": value})
        best.wait()
        assert best.best_step() == kept
    best.close()
    again = Checkpointer(tmp_path / "best", max_to_keep=1, best_metric="clean_accuracy")
    assert again.best_step() == 30 and again.metrics(30) == {"clean_accuracy": 0.7}  # read back after a restart
    again.save(40, {"w": state["w"] + 4}, metrics={"clean_accuracy": 0.6})
    again.close()
    restored = Checkpointer(tmp_path / "best").restore({"w": state["w"]})  # the layout old runs have: best/checkpoints
    np.testing.assert_array_equal(restored["w"], state["w"] + 3)
    with pytest.raises(ValueError, match="keep_best_by='top5'"):
        Checkpointer(tmp_path / "other", best_metric="top5").save(1, state, metrics={"clean_accuracy": 1.0})
