"""Checkpoint folders: written atomically (a failed write leaves nothing), only complete ones count, the last K
kept, temp folders of a killed write cleaned up, `run.resume` choices."""

from __future__ import annotations

import pytest

from rlaif.checkpoint import (
    COMPLETE,
    checkpoint_root,
    find_resume_checkpoint,
    list_checkpoints,
    save_checkpoint,
)


def write_state(step: int):
    def write(folder):
        (folder / "state.txt").write_text(f"step {step}\n")
    return write


def test_a_failed_write_leaves_no_checkpoint_and_keeps_the_previous_ones(tmp_path):
    save_checkpoint(tmp_path, 1, write_state(1), keep=2)

    def dies_half_way(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, dies_half_way, keep=2)
    assert [p.name for p in checkpoint_root(tmp_path).iterdir()] == ["step-00000001"]  # no step 2, no temp folder
    assert find_resume_checkpoint(tmp_path, "auto") == checkpoint_root(tmp_path) / "step-00000001"


def test_only_complete_checkpoints_count_and_the_last_k_are_kept(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, write_state(step), keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert sorted(p.name for p in checkpoint_root(tmp_path).iterdir()) == ["step-00000004", "step-00000005"]
    # a folder without the COMPLETE marker (a write that never finished) is not a checkpoint
    torn = checkpoint_root(tmp_path) / "step-00000006"
    torn.mkdir()
    (torn / "state.txt").write_text("half")
    assert find_resume_checkpoint(tmp_path, "auto").name == "step-00000005"
    with pytest.raises(FileNotFoundError, match=r"run.resume: '.*step-00000006' is not a complete checkpoint"):
        find_resume_checkpoint(tmp_path, str(torn))
    assert find_resume_checkpoint(tmp_path, "never") is None
    assert find_resume_checkpoint(tmp_path / "fresh", "auto") is None


def test_temp_folders_left_by_a_killed_write_are_removed_by_the_next_save(tmp_path):
    save_checkpoint(tmp_path, 1, write_state(1), keep=3)
    stale = checkpoint_root(tmp_path) / ".tmp-step-00000002-killed"  # as a SIGKILL during the write leaves it
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    (stale / COMPLETE).write_text("ok\n")  # even a marker inside a temp folder does not make it a checkpoint
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    save_checkpoint(tmp_path, 2, write_state(2), keep=3)
    assert sorted(p.name for p in checkpoint_root(tmp_path).iterdir()) == ["step-00000001", "step-00000002"]
    assert (checkpoint_root(tmp_path) / "step-00000002" / "state.txt").read_text() == "step 2\n"
