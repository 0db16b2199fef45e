# SPDX-License-Identifier: MIT
"""blockdev-backup and the job commands over QMP, differentially.

Every test runs against lockstepd (build/lockstepd) and, when it is
installed, against qemu-storage-daemon with the same command line and the
same QMP script; the answers and events are checked against what QEMU sends
(docs/fleecing.md).  A daemon that is not there is skipped.
"""
import json
import os
import shutil
import time

import pytest

from conftest import build_dir_path, make_image
from qmp_client import Daemon, QMPClient

SIZE = 4 * 1024 * 1024


class Qmp(QMPClient):
    """QMPClient with the shorthands these tests use."""

    def raw(self, _cmd, **args):
        """The whole response."""
        return self.execute(_cmd, args or None)

    def ok(self, _cmd, **args):
        resp = self.raw(_cmd, **args)
        assert "return" in resp, resp
        return resp["return"]

    def error(self, _cmd, **args):
        """The message of the error the command must fail with."""
        resp = self.raw(_cmd, **args)
        assert "error" in resp, resp
        return resp["error"]["desc"]

    def statuses(self, job_id):
        """The JOB_STATUS_CHANGE statuses read so far for job_id."""
        return [ev["data"]["status"] for ev in self.events
                if ev["event"] == "JOB_STATUS_CHANGE" and
                ev["data"]["id"] == job_id]


def daemon_path(kind):
    if kind == "qemu":
        return shutil.which("qemu-storage-daemon")
    path = os.path.join(build_dir_path(), "lockstepd")
    return path if os.access(path, os.X_OK) else None


@pytest.fixture(params=["lockstep", "qemu"])
def daemon(request, tmp_path):
    """Start a daemon (lockstepd or qemu-storage-daemon) with blockdevs;
    returns a negotiated client."""
    path = daemon_path(request.param)
    if not path:
        pytest.skip("%s daemon is not available" % request.param)
    daemons = []

    def start(*blockdevs):
        args = []
        for bd in blockdevs:
            args += ["--blockdev", json.dumps(bd)]
        d = Daemon(path, str(tmp_path), args)
        daemons.append(d)
        qmp = Qmp(d.qmp_path)
        qmp.kind = request.param
        return qmp

    yield start
    for d in daemons:
        d.stop()


def file_node(name, path, **extra):
    node = {"driver": "file", "node-name": name, "filename": path}
    node.update(extra)
    return node


@pytest.fixture
def images(tmp_path):
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as f:
        f.write(os.urandom(SIZE // 2))
        f.truncate(SIZE)
    tgt = make_image(str(tmp_path / "tgt.raw"), SIZE)
    return src, tgt


def real_statuses(statuses):
    """QEMU pauses a new job once while it drains the source (created,
    running, paused, running); that blip is not part of the model."""
    if statuses[:4] == ["created", "running", "paused", "running"]:
        return statuses[:2] + statuses[4:]
    return statuses


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_full_backup(daemon, images):
    src, tgt = images
    qmp = daemon(file_node("src", src), file_node("tgt", tgt))
    assert qmp.ok("blockdev-backup", **{
        "job-id": "b0", "device": "src", "target": "tgt",
        "sync": "full"}) == {}
    ev = qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="b0")
    assert ev["data"] == {"device": "b0", "type": "backup", "len": SIZE,
                          "offset": SIZE, "speed": 0}
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="b0", status="null")
    assert qmp.ok("query-jobs") == []
    assert qmp.ok("query-block-jobs") == []
    assert read(tgt) == read(src)


def test_manual_finalize_dismiss(daemon, images):
    src, tgt = images
    qmp = daemon(file_node("src", src), file_node("tgt", tgt))
    qmp.ok("blockdev-backup", **{
        "job-id": "b1", "device": "src", "target": "tgt", "sync": "full",
        "auto-finalize": False, "auto-dismiss": False})
    ev = qmp.wait_event_match("BLOCK_JOB_PENDING")
    assert ev["data"] == {"type": "backup", "id": "b1"}
    jobs = qmp.ok("query-jobs")
    assert jobs == [{"id": "b1", "type": "backup", "status": "pending",
                     "current-progress": SIZE, "total-progress": SIZE}]
    info = qmp.ok("query-block-jobs")
    assert info == [{"type": "backup", "device": "b1", "len": SIZE,
                     "offset": SIZE, "busy": False, "paused": False,
                     "speed": 0, "io-status": "ok", "ready": False,
                     "status": "pending", "auto-finalize": False,
                     "auto-dismiss": False}]
    assert qmp.error("job-pause", id="b1") == \
        "Job 'b1' in state 'pending' cannot accept command verb 'pause'"
    assert qmp.error("job-dismiss", id="b1") == \
        "Job 'b1' in state 'pending' cannot accept command verb 'dismiss'"
    assert qmp.ok("job-finalize", id="b1") == {}
    qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="b1")
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="b1", status="concluded")
    assert qmp.ok("query-jobs")[0]["status"] == "concluded"
    assert qmp.error("job-finalize", id="b1") == \
        "Job 'b1' in state 'concluded' cannot accept command verb 'finalize'"
    assert qmp.ok("job-dismiss", id="b1") == {}
    assert qmp.ok("query-jobs") == []
    assert read(tgt) == read(src)


def test_sync_none_pause_cancel(daemon, images):
    src, tgt = images
    qmp = daemon(file_node("src", src), file_node("tgt", tgt))
    qmp.ok("blockdev-backup", **{
        "job-id": "j0", "device": "src", "target": "tgt", "sync": "none",
        "auto-dismiss": False})
    info = qmp.ok("query-block-jobs")[0]
    assert info["status"] == "running" and info["len"] == SIZE
    assert info["offset"] == 0 and info["busy"] is False
    assert qmp.error("job-complete", id="j0") == \
        "Job 'j0' in state 'running' cannot accept command verb 'complete'"
    assert qmp.error("job-resume", id="j0") == \
        "Can't resume a job that was not paused"
    assert qmp.ok("job-pause", id="j0") == {}
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="j0", status="paused")
    info = qmp.ok("query-block-jobs")[0]
    assert info["paused"] is True and info["status"] == "paused"
    assert qmp.error("job-pause", id="j0") == "Job is already paused"
    assert qmp.error("block-job-cancel", device="j0") == \
        "The block job for device 'j0' is currently paused"
    assert qmp.error("block-job-set-speed", device="j0", speed=-1) == \
        "Parameter 'speed' expects a non-negative value"
    assert qmp.ok("block-job-set-speed", device="j0", speed=1000) == {}
    assert qmp.ok("job-resume", id="j0") == {}
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="j0", status="running")
    assert qmp.ok("block-job-cancel", device="j0") == {}
    ev = qmp.wait_event_match("BLOCK_JOB_CANCELLED", device="j0")
    assert ev["data"] == {"device": "j0", "type": "backup", "len": SIZE,
                          "offset": 0, "speed": 1000}
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="j0", status="concluded")
    jobs = qmp.ok("query-jobs")
    assert jobs[0]["error"] == "Operation canceled"
    assert qmp.ok("query-block-jobs")[0]["error"] == "Operation canceled"
    qmp.ok("job-dismiss", id="j0")


def test_event_sequence(daemon, images):
    src, tgt = images
    qmp = daemon(file_node("src", src), file_node("tgt", tgt))
    qmp.ok("blockdev-backup", **{
        "job-id": "s0", "device": "src", "target": "tgt", "sync": "full"})
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="s0", status="null")
    # wait_event consumed them; replay the whole list from a fresh run.
    qmp.events.clear()
    qmp.ok("blockdev-backup", **{
        "job-id": "s1", "device": "src", "target": "tgt", "sync": "full"})
    deadline = time.time() + 30
    while "null" not in qmp.statuses("s1") and time.time() < deadline:
        qmp.raw("query-jobs")
        time.sleep(0.01)
    assert real_statuses(qmp.statuses("s1")) == [
        "created", "running", "waiting", "pending", "concluded", "null"]
    names = [ev["event"] for ev in qmp.events
             if ev["event"] != "JOB_STATUS_CHANGE"]
    assert names == ["BLOCK_JOB_COMPLETED"]


def test_lookup_errors(daemon, images):
    src, tgt = images
    qmp = daemon(file_node("src", src), file_node("tgt", tgt))
    resp = qmp.raw("job-pause", id="nope")
    assert resp["error"] == {"class": "GenericError",
                             "desc": "Job not found"}
    for cmd in ("block-job-pause", "block-job-resume", "block-job-complete",
                "block-job-cancel"):
        resp = qmp.raw(cmd, device="nope")
        assert resp["error"] == {"class": "DeviceNotActive",
                                 "desc": "Block job 'nope' not found"}
    resp = qmp.raw("block-job-set-speed", device="nope", speed=1)
    assert resp["error"]["class"] == "DeviceNotActive"
    for cmd in ("block-job-dismiss", "block-job-finalize"):
        resp = qmp.raw(cmd, id="nope")
        assert resp["error"] == {"class": "DeviceNotActive",
                                 "desc": "Block job 'nope' not found"}


BITMAP_ERRORS = [
    ({"sync": "incremental"},
     "must provide a valid bitmap name for 'incremental' sync mode"),
    ({"sync": "bitmap"},
     "must provide a valid bitmap name for 'bitmap' sync mode"),
    ({"sync": "incremental", "bitmap": "b0", "bitmap-mode": "always"},
     "Bitmap sync mode must be 'on-success' when using sync mode "
     "'incremental'"),
    ({"sync": "bitmap", "bitmap": "b404", "bitmap-mode": "always"},
     "Bitmap 'b404' could not be found"),
    ({"sync": "bitmap", "bitmap": "b0"},
     "Bitmap sync mode must be given when providing a bitmap"),
    ({"sync": "none", "bitmap": "b0", "bitmap-mode": "always"},
     "sync mode 'none' does not produce meaningful bitmap outputs"),
    ({"sync": "full", "bitmap": "b0", "bitmap-mode": "never"},
     "Bitmap sync mode 'never' has no meaningful effect when combined with "
     "sync mode 'full'"),
    ({"sync": "top", "bitmap": "b0", "bitmap-mode": "never"},
     "Bitmap sync mode 'never' has no meaningful effect when combined with "
     "sync mode 'top'"),
    ({"sync": "full", "bitmap-mode": "never"},
     "Cannot specify bitmap sync mode without a bitmap"),
    ({"sync": "full", "x-perf": {"max-workers": 0}},
     "max-workers must be between 1 and 2147483647"),
    ({"sync": "full", "x-perf": {"max-chunk": -1}},
     "max-chunk must be zero (which means no limit) or positive"),
    ({"sync": "full", "x-perf": {"max-chunk": 4096}},
     "Required max-chunk (4096) is less than backup cluster size (65536)"),
    ({"sync": "full", "speed": -1},
     "Parameter 'speed' expects a non-negative value"),
    ({"sync": "full", "on-source-error": "bogus"},
     "Parameter 'on-source-error' does not accept value 'bogus'"),
    ({"sync": "none", "compress": True},
     "Compression is not supported for this drive "),
    ({"sync": "none", "target": "src"},
     "Source and target cannot be the same"),
    ({"sync": "none", "target": "nosuch"},
     "Cannot find device='nosuch' nor node-name='nosuch'"),
    ({"sync": "none", "job-id": "1x"}, "Invalid job ID '1x'"),
    ({"sync": "none", "job-id": None}, "Invalid job ID ''"),
]


def test_argument_errors(daemon, images):
    src, tgt = images
    qmp = daemon(file_node("src", src), file_node("tgt", tgt))
    qmp.ok("block-dirty-bitmap-add", node="src", name="b0")
    for extra, msg in BITMAP_ERRORS:
        args = {"job-id": "j1", "device": "src", "target": "tgt"}
        args.update(extra)
        args = {k: v for k, v in args.items() if v is not None}
        assert qmp.error("blockdev-backup", **args) == msg, extra
    assert qmp.ok("query-jobs") == []


def test_busy_target_and_bitmap(daemon, images, tmp_path):
    src, tgt = images
    tgt2 = make_image(str(tmp_path / "tgt2.raw"), SIZE)
    qmp = daemon(file_node("src", src), file_node("tgt", tgt),
                 file_node("tgt2", tgt2))
    qmp.ok("block-dirty-bitmap-add", node="src", name="b0")
    qmp.ok("blockdev-backup", **{
        "job-id": "j1", "device": "src", "target": "tgt", "sync": "bitmap",
        "bitmap": "b0", "bitmap-mode": "never", "auto-finalize": False})
    qmp.wait_event_match("BLOCK_JOB_PENDING")
    assert qmp.error("blockdev-backup", **{
        "job-id": "j2", "device": "src", "target": "tgt",
        "sync": "none"}) == \
        "Node 'tgt' is busy: block device is in use by block job: backup"
    assert qmp.error("blockdev-backup", **{
        "job-id": "j1", "device": "src", "target": "tgt2",
        "sync": "none"}) == "Job ID 'j1' already in use"
    assert qmp.error("blockdev-backup", **{
        "job-id": "j2", "device": "src", "target": "tgt2", "sync": "bitmap",
        "bitmap": "b0", "bitmap-mode": "never"}) == \
        "Bitmap 'b0' is currently in use by another operation and cannot " \
        "be used"
    qmp.ok("job-finalize", id="j1")
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="j1", status="null")


def test_read_only_source_and_filter_name(daemon, images):
    src, tgt = images
    qmp = daemon(file_node("src", src, **{"read-only": True}),
                 file_node("tgt", tgt))
    qmp.ok("blockdev-backup", **{
        "job-id": "ro", "device": "src", "target": "tgt", "sync": "full"})
    ev = qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="ro")
    assert "error" not in ev["data"]
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="ro", status="null")
    assert read(tgt) == read(src)
    assert qmp.error("blockdev-backup", **{
        "job-id": "f1", "device": "tgt", "target": "src", "sync": "full"}) \
        .startswith("Could not create node: Block node ")
    assert qmp.error("blockdev-backup", **{
        "job-id": "f1", "device": "src", "target": "tgt", "sync": "full",
        "filter-node-name": "tgt"}) == \
        "Could not create node: Duplicate nodes with node-name='tgt'"
    assert qmp.error("blockdev-backup", **{
        "job-id": "f1", "device": "src", "target": "tgt", "sync": "full",
        "filter-node-name": "1bad"}) == \
        "Could not create node: Invalid node-name: '1bad'"
    assert qmp.ok("query-jobs") == []


def test_jobs_listed_newest_first(daemon, tmp_path):
    nodes = []
    for n in "abcd":
        nodes.append(file_node(n, make_image(str(tmp_path / n), SIZE)))
    qmp = daemon(*nodes)
    qmp.ok("blockdev-backup", **{"job-id": "first", "device": "a",
                                 "target": "b", "sync": "none"})
    qmp.ok("blockdev-backup", **{"job-id": "second", "device": "c",
                                 "target": "d", "sync": "none"})
    assert [j["id"] for j in qmp.ok("query-jobs")] == ["second", "first"]
    assert [j["device"] for j in qmp.ok("query-block-jobs")] == \
        ["second", "first"]
    for job_id in ("first", "second"):
        qmp.ok("job-cancel", id=job_id)
        qmp.wait_event_match("JOB_STATUS_CHANGE", id=job_id, status="null")
