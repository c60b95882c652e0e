"""RunLock: one writer per run directory; a live owner refuses a second run, a dead or damaged lock is taken over."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys

import pytest

from genrenet.errors import UserError
from genrenet.runlock import RunLock, _one_starter_at_a_time, read_owner


@pytest.fixture
def sleeping_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def finished_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: no process has this pid any more
    return proc.pid


def plant_lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-05-01T10:00:00+00:00"}
    (run_dir / ".lock").write_text(json.dumps(owner))
    return (run_dir / ".lock").read_bytes()


def assert_ours(run_dir):
    assert read_owner(run_dir / ".lock")["pid"] == os.getpid()


def test_lock_holds_owner_and_release_removes_it(tmp_path):
    run_dir = tmp_path / "run"  # created if missing
    with RunLock(run_dir):
        owner = read_owner(run_dir / ".lock")
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["started"]
    assert not run_dir.exists()  # made for the run, left empty: removed again
    kept = tmp_path / "kept"
    kept.mkdir()
    with RunLock(kept):
        (kept / "config.yaml").write_text("")
    assert [p.name for p in kept.iterdir()] == ["config.yaml"]


def test_live_owner_is_refused_in_one_line(tmp_path, sleeping_pid, capsys):
    before = plant_lock(tmp_path, sleeping_pid)
    with pytest.raises(UserError) as refused:
        RunLock(tmp_path).acquire()
    message = str(refused.value)
    assert "\n" not in message
    for part in (str(tmp_path), f"pid {sleeping_pid}", socket.gethostname(), "delete"):
        assert part in message
    assert (tmp_path / ".lock").read_bytes() == before
    assert capsys.readouterr().err == ""


def test_owner_on_another_host_counts_as_alive(tmp_path):
    before = plant_lock(tmp_path, finished_pid(), host="elsewhere.example")
    with pytest.raises(UserError, match="elsewhere.example"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_bytes() == before


def test_second_lock_in_the_same_process_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
        assert_ours(tmp_path)


def test_dead_owner_is_taken_over(tmp_path, capsys):
    dead = finished_pid()
    plant_lock(tmp_path, dead)
    with RunLock(tmp_path):
        assert_ours(tmp_path)
    assert capsys.readouterr().err.splitlines() == [
        f"taking over {tmp_path}: its previous run (pid {dead} on {socket.gethostname()}) is gone"
    ]
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("damaged", [b"", b'{"pid": 12', b"[1, 2]", b'{"pid": "x", "host": "h"}', b"\xff\xfe"])
def test_damaged_lock_is_taken_over(tmp_path, capsys, damaged):
    (tmp_path / ".lock").write_bytes(damaged)
    with RunLock(tmp_path):
        assert_ours(tmp_path)
    assert capsys.readouterr().err.splitlines() == [f"taking over {tmp_path}: its lock file was damaged"]


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path, sleeping_pid):
    lock = RunLock(tmp_path)
    lock.acquire()
    replaced = plant_lock(tmp_path, sleeping_pid)  # e.g. someone deleted ours and another run started
    lock.release()
    assert (tmp_path / ".lock").read_bytes() == replaced


def test_context_manager_releases_on_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with RunLock(tmp_path):
            raise RuntimeError("boom")
    assert not (tmp_path / ".lock").exists()
    with RunLock(tmp_path):  # and the folder can be locked again
        assert_ours(tmp_path)


def fork_context():
    # fork starts a process in milliseconds; spawn (where fork is missing) only starts it slower
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def _lock_and_leave(run_dir, go, ready):
    go.wait(30)
    ready.set()
    RunLock(run_dir).acquire()


def test_a_starter_waits_for_its_turn(tmp_path):
    context = fork_context()
    go, ready = context.Event(), context.Event()
    # started before we take the turn: a process forked inside it would share our hold and keep it
    starter = context.Process(target=_lock_and_leave, args=(tmp_path, go, ready))
    starter.start()
    with _one_starter_at_a_time(tmp_path):
        go.set()
        assert ready.wait(30)
        starter.join(timeout=0.5)
        assert starter.is_alive() and not (tmp_path / ".lock").exists()  # waiting for the turn we hold
    starter.join(timeout=30)
    assert starter.exitcode == 0 and read_owner(tmp_path / ".lock")["pid"] == starter.pid


def _try_lock(run_dir, start, results, hold):
    start.wait()
    try:
        with RunLock(run_dir):
            results.put("locked")
            hold.wait(30)
    except UserError:
        results.put("refused")


def test_starters_racing_for_a_stale_lock_one_wins(tmp_path):
    """Without turns, two starters could both remove the stale lock and both believe they hold it."""
    context = fork_context()
    plant_lock(tmp_path, finished_pid())
    start, hold, results = context.Event(), context.Event(), context.Queue()
    starters = [context.Process(target=_try_lock, args=(tmp_path, start, results, hold)) for _ in range(4)]
    for starter in starters:
        starter.start()
    start.set()
    outcomes = sorted(results.get(timeout=60) for _ in starters)
    hold.set()
    for starter in starters:
        starter.join(timeout=60)
    assert outcomes == ["locked", "refused", "refused", "refused"]
    assert not (tmp_path / ".lock").exists()
