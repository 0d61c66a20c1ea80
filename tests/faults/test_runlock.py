"""The run-folder lock (#15 defect 6): a second trainer on a folder stops; a dead holder frees it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from voxmix.trainer.pretrain.runlock import RunFolderBusy, RunFolderLock, holders

HOLD = (
    "import sys, time; from voxmix.trainer.pretrain.runlock import RunFolderLock; "
    "RunFolderLock(sys.argv[1], 0).acquire(); print('held', flush=True); time.sleep(60)"
)


def test_lock_held_by_another_process_is_named_and_freed_when_it_dies(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert list(holders(tmp_path)) == ["rank0"] and holders(tmp_path)["rank0"]["pid"] == p.pid
        with pytest.raises(RunFolderBusy, match=rf"pid {p.pid} .*rank0"):
            RunFolderLock(tmp_path, 0).acquire()
        with RunFolderLock(tmp_path, 1):  # another rank's lock is independent
            assert sorted(holders(tmp_path)) == ["rank0", "rank1"]
    finally:
        p.kill()  # SIGKILL: the kernel drops the flock, no stale lock is left
        p.wait()
    deadline = time.monotonic() + 10
    while holders(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holders(tmp_path) == {}
    with RunFolderLock(tmp_path, 0):
        pass
