"""Uploaders left behind by a dead agent are found and killed by the next one, with /proc
(Linux) and without it (as on macOS and Windows: psutil), and a recycled pid is spared."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pio_remote.agent.jobs import proctree, workspace


def dead_pid() -> int:
    """The pid of a process that has exited: the agent that 'died'."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def orphan(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen, list[psutil.Process]]]:
    """A job dir of a dead agent and its uploader's group: a leader and a child of it."""
    job = tmp_path / "work" / "jobs" / f"{dead_pid()}-00ff"
    job.mkdir(parents=True)
    (job / proctree.RECORD).touch()  # reserved as flash.py does, before the uploader starts
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo started; wait"],
        cwd=job,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdout is not None and leader.stdout.readline() == b"started\n"
    group = [psutil.Process(leader.pid), *psutil.Process(leader.pid).children()]
    assert len(group) == 2
    try:
        yield job, leader, group
    finally:
        for proc in group:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        leader.wait(10)


@pytest.mark.parametrize("proc_fs", ["/proc", "none"])
def test_a_dead_agents_uploader_group_is_killed_on_restart(orphan, tmp_path, monkeypatch, proc_fs):
    job, leader, group = orphan
    if proc_fs == "none":
        monkeypatch.setattr(proctree, "PROC", tmp_path / "no-proc")  # psutil must answer
    proctree.record(job / proctree.RECORD, leader.pid)
    assert workspace.remove_stale_jobs(tmp_path / "work") == [job.name]
    gone, alive = psutil.wait_procs(group, timeout=10)
    assert alive == [], "the orphaned uploader group survived"
    assert not job.exists()


def test_start_times_from_proc_and_psutil_agree(orphan, tmp_path, monkeypatch):
    _job, leader, _group = orphan
    from_proc = proctree.start_time(leader.pid)
    monkeypatch.setattr(proctree, "PROC", tmp_path / "no-proc")
    from_psutil = proctree.start_time(leader.pid)
    assert from_proc is not None and from_psutil is not None
    assert abs(from_proc - from_psutil) < proctree.SAME_START


def test_a_pid_now_used_by_another_process_is_left_alone(orphan, tmp_path):
    job, leader, group = orphan
    real = proctree.start_time(leader.pid)
    assert real is not None
    (job / proctree.RECORD).write_text(f'{{"pid": {leader.pid}, "started": {real - 60}}}')
    workspace.remove_stale_jobs(tmp_path / "work")
    assert all(p.is_running() for p in group)


def test_when_nothing_can_tell_the_orphan_is_named_not_ignored(
    orphan, tmp_path, monkeypatch, caplog
):
    job, leader, group = orphan
    proctree.record(job / proctree.RECORD, leader.pid)
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, proctree.__name__):
        patch.setattr(proctree, "PROC", tmp_path / "no-proc")
        patch.setitem(sys.modules, "psutil", None)  # as in an archive without psutil
        workspace.remove_stale_jobs(tmp_path / "work")
    assert f"cannot tell whether uploader {leader.pid}" in caplog.text
    assert "psutil is not installed" in caplog.text
    assert all(p.is_running() for p in group)


def test_a_job_whose_uploader_never_started_is_just_removed(tmp_path, caplog):
    job = tmp_path / "work" / "jobs" / f"{dead_pid()}-00aa"
    job.mkdir(parents=True)
    (job / proctree.RECORD).touch()
    with caplog.at_level(logging.INFO, logger=proctree.__name__):
        assert workspace.remove_stale_jobs(tmp_path / "work") == [job.name]
    assert "uploader" not in caplog.text


def test_the_windows_tree_kill_takes_the_leader_and_its_children(monkeypatch):
    """Windows' path (no process groups: the tree from psutil), run here on Linux."""
    monkeypatch.setattr(proctree, "WINDOWS", True)
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo started; wait"], stdout=subprocess.PIPE
    )  # no session of its own: only the tree ties them together
    assert leader.stdout is not None and leader.stdout.readline() == b"started\n"
    tree = proctree.snapshot(leader.pid)
    try:
        assert len(tree) == 2 and proctree.alive(leader.pid)
        proctree.kill(leader.pid, tree)
        gone, alive = psutil.wait_procs(tree, timeout=10)
        assert alive == []
    finally:
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        leader.wait(10)
    assert not proctree.alive(leader.pid)
