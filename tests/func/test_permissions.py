# SPDX-License-Identifier: MIT
"""Permissions under jobs and filters, differentially.

Every scenario runs on lockstepd and on qemu-storage-daemon 7.2 (when
installed) with the same QMP commands, and checks that both accept and
refuse the same things with QEMU's messages: resizing, writing and
deleting nodes that a backup, a commit or a copy-before-write filter
uses.  Node names are fixed (filter-node-name) so that the messages,
which name nodes, are the same on both.
"""
import os
import shutil
import subprocess

import pytest

from conftest import build_dir_path, make_image
from qmp_client import Daemon, QMPClient

MiB = 1024 * 1024
SIZE = 4 * MiB


def daemon_path(kind):
    if kind == "qemu":
        return shutil.which("qemu-storage-daemon")
    path = os.path.join(build_dir_path(), "lockstepd")
    return path if os.access(path, os.X_OK) else None


class Qmp(QMPClient):
    def ok(self, _cmd, **args):
        resp = self.execute(_cmd, args or None)
        assert "return" in resp, (_cmd, args, resp)
        return resp["return"]

    def error(self, _cmd, **args):
        """The message of the error the command must fail with."""
        resp = self.execute(_cmd, args or None)
        assert "error" in resp, (_cmd, args, resp)
        return resp["error"]["desc"]


@pytest.fixture(params=["lockstep", "qemu"])
def daemon(request, tmp_path):
    """Start a daemon; returns a negotiated client with an NBD server."""
    path = daemon_path(request.param)
    if not path:
        pytest.skip("%s daemon is not available" % request.param)
    d = Daemon(path, str(tmp_path))
    qmp = Qmp(d.qmp_path)
    qmp.kind = request.param
    qmp.dir = str(tmp_path)
    qmp.nbd_sock = os.path.join(str(tmp_path), "nbd.sock")
    qmp.ok("nbd-server-start", addr={"type": "unix",
                                     "data": {"path": qmp.nbd_sock}})
    yield qmp
    qmp.close()
    d.stop()


def raw_node(qmp, name, fill=None):
    """A raw node NAME over a file node NAME-file."""
    path = make_image(os.path.join(qmp.dir, name + ".img"), SIZE, fill)
    qmp.ok("blockdev-add", driver="file", filename=path,
           **{"node-name": name + "-file"})
    qmp.ok("blockdev-add", driver="raw", file=name + "-file",
           **{"node-name": name})
    return path


def conflict(node, perm, user, role, other, other_role):
    """QEMU's permission conflict message on node."""
    return ("Permission conflict on node '%s': permissions '%s' are both "
            "required by %s (uses node '%s' as '%s' child) and unshared by "
            "%s (uses node '%s' as '%s' child)."
            % (node, perm, user, node, role, other, node, other_role))


BB = "an unnamed block device"


def resize(qmp, node, size=SIZE // 2, **extra):
    return qmp.error("block_resize", **dict({"node-name": node, "size": size},
                                            **extra))


def export(qmp, eid, node, writable):
    return qmp.execute("block-export-add", {"type": "nbd", "id": eid,
                                            "node-name": node,
                                            "writable": writable})


def nbd_write(qmp, name):
    """Write through the NBD export called name (a node-name here)."""
    url = "nbd+unix:///%s?socket=%s" % (name, qmp.nbd_sock)
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k",
                        url], capture_output=True, text=True, timeout=60)
    return r.returncode == 0 and "wrote 65536/65536" in r.stdout


def test_backup_source_and_target(daemon):
    """A running backup: its filter keeps writers and resizes off the
    source, its target keeps its size, and the job's nodes cannot be
    resized or deleted."""
    qmp = daemon
    raw_node(qmp, "src", 0x11)
    raw_node(qmp, "tgt")
    qmp.ok("blockdev-backup", **{"job-id": "j", "device": "src",
                                 "target": "tgt", "sync": "none",
                                 "filter-node-name": "cbw"})
    # The source: shrink and grow, and the file below it.
    for size in (SIZE // 2, SIZE * 2):
        assert resize(qmp, "src", size) == conflict(
            "src", "resize", BB, "root", "node 'cbw'", "file")
    assert resize(qmp, "src-file") == conflict(
        "src-file", "resize", BB, "root", "node 'src'", "file")
    # The job's own nodes: QEMU names the (absent) device.
    assert resize(qmp, "tgt") == "Device '(null)' is in use"
    assert resize(qmp, "tgt", device="") == "Device '' is in use"
    assert resize(qmp, "cbw", SIZE * 2) == "Device '(null)' is in use"
    assert resize(qmp, "tgt-file") == conflict(
        "tgt-file", "resize", BB, "root", "node 'tgt'", "file")
    # Deleting.
    assert qmp.error("blockdev-del", **{"node-name": "src"}) == \
        "Block device src is in use"
    assert qmp.error("blockdev-del", **{"node-name": "tgt"}) == \
        "Node 'tgt' is busy: block device is in use by block job: backup"
    assert qmp.error("blockdev-del", **{"node-name": "cbw"}) == \
        "Node 'cbw' is busy: block device is in use by block job: backup"
    assert qmp.error("blockdev-del", **{"node-name": "tgt-file"}) == \
        "Block device tgt-file is in use"
    # Writing the source behind the filter's back.
    for node, below in (("src", "node 'cbw'"), ("src-file", "node 'src'")):
        resp = export(qmp, "w-" + node, node, True)
        assert resp["error"]["desc"] == conflict(
            node, "write", BB, "root", below, "file"), resp
    # Reading it is fine, and so is writing the target from an export.
    assert "return" in export(qmp, "r-src", "src-file", False)
    assert "return" in export(qmp, "tgt", "tgt", True)
    assert nbd_write(qmp, "tgt")
    # Another job on the same nodes.
    raw_node(qmp, "other")
    assert qmp.error("blockdev-backup", **{
        "job-id": "k", "device": "cbw", "target": "other",
        "sync": "none"}) == \
        "Node 'cbw' is busy: block device is in use by block job: backup"
    assert qmp.error("blockdev-backup", **{
        "job-id": "k", "device": "other", "target": "tgt",
        "sync": "none"}) == \
        "Node 'tgt' is busy: block device is in use by block job: backup"

    # hard: qemu-io's connection may not be gone yet.
    qmp.ok("block-export-del", id="tgt", mode="hard")
    qmp.wait_event_match("BLOCK_EXPORT_DELETED", id="tgt")
    qmp.ok("job-cancel", id="j")
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="j", status="null")
    # The job is gone: its restrictions too.
    qmp.ok("block_resize", **{"node-name": "tgt", "size": SIZE * 2})
    qmp.ok("blockdev-del", **{"node-name": "tgt"})


@pytest.fixture
def chain(daemon):
    """base <- mid <- top, qcow2, each with data of its own."""
    qmp = daemon
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed")
    prev = None
    backing = {"base": None, "mid": "base", "top": "mid"}
    for i, name in enumerate(("base", "mid", "top")):
        path = os.path.join(qmp.dir, name + ".qcow2")
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", path, str(SIZE)]
        if prev:
            argv[5:5] = ["-F", "qcow2", "-b", prev]
        subprocess.run(argv, check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                        "write -P %d %d 1M" % (i + 1, i * MiB), path],
                       check=True, capture_output=True)
        prev = path
    for name in ("base", "mid", "top"):
        qmp.ok("blockdev-add", driver="qcow2", **{
            "node-name": name, "backing": backing[name],
            "file": {"driver": "file", "node-name": name + "-file",
                     "filename": os.path.join(qmp.dir, name + ".qcow2")}})
    return qmp


def test_intermediate_commit(chain):
    qmp = chain
    qmp.ok("block-commit", **{"job-id": "c", "device": "top",
                              "top-node": "mid", "base-node": "base",
                              "speed": 1})
    for node in ("base", "mid", "top"):
        assert resize(qmp, node, SIZE * 2) == "Device '(null)' is in use"
    assert resize(qmp, "mid-file", SIZE * 2) == conflict(
        "mid-file", "resize", BB, "root", "node 'mid'", "file")
    assert qmp.error("blockdev-del", **{"node-name": "base"}) == \
        "Node base is in use"
    assert qmp.error("blockdev-del", **{"node-name": "mid"}) == \
        "Node mid is in use"
    assert qmp.error("blockdev-del", **{"node-name": "top"}) == \
        "Node 'top' is busy: block device is in use by block job: commit"
    # base is written by the job only; mid's content changes under it.
    resp = export(qmp, "b", "base", True)
    assert resp["error"]["desc"] == conflict("base", "write", BB, "root",
                                             BB, "root"), resp
    resp = export(qmp, "m", "mid", False)
    assert resp["error"]["desc"] == conflict(
        "mid", "consistent read", BB, "root", "commit job 'c'",
        "intermediate node"), resp
    assert "return" in export(qmp, "t", "top", True)
    assert "return" in export(qmp, "b2", "base", False)
    assert qmp.error("block-commit", **{
        "job-id": "c2", "device": "top", "top-node": "mid"}) == \
        "Need a root block node"
    # The chain the job relies on cannot be rewired under it.  (QEMU's
    # message for top names its implicit commit filter, which lockstep
    # does not insert.)
    assert qmp.error("blockdev-reopen", options=[{
        "driver": "qcow2", "node-name": "top", "file": "top-file",
        "backing": "base"}]) == (
        "Cannot replace implicit backing child of top" if qmp.kind == "qemu"
        else "Cannot change frozen 'backing' link from 'top' to 'mid'")
    qmp.ok("job-cancel", id="c")
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="c", status="null")
    for eid in ("t", "b2"):
        qmp.ok("block-export-del", id=eid)
        qmp.wait_event_match("BLOCK_EXPORT_DELETED", id=eid)
    if qmp.kind == "qemu":
        # QEMU 7.2 leaves base and mid blocked after a cancelled commit
        # (its op blockers outlive the job); here they are free again.
        assert resize(qmp, "base", SIZE * 2) == "Device '(null)' is in use"
    else:
        qmp.ok("block_resize", **{"node-name": "base", "size": SIZE * 2})


def test_active_commit(chain):
    qmp = chain
    assert "return" in export(qmp, "t", "top", True)
    qmp.ok("block-commit", **{"job-id": "a", "device": "top", "speed": 1})
    for node in ("base", "mid", "top"):
        assert resize(qmp, node, SIZE * 2) == "Device '(null)' is in use"
    assert qmp.error("blockdev-del", **{"node-name": "base"}) == \
        "Node base is in use"
    assert qmp.error("blockdev-del", **{"node-name": "mid"}) == \
        "Node 'mid' is busy: block device is in use by block job: commit"
    # QEMU moves the export onto its mirror filter above top; lockstep
    # inserts no filter, so the export still names top.
    assert qmp.error("blockdev-del", **{"node-name": "top"}) == (
        "Node 'top' is busy: block device is in use by block job: commit"
        if qmp.kind == "qemu" else "Node top is in use")
    resp = export(qmp, "m", "mid", False)
    assert resp["error"]["desc"] == conflict(
        "mid", "consistent read", BB, "root", "commit job 'a'",
        "intermediate node"), resp
    # The guest keeps writing the top.
    assert nbd_write(qmp, "top")
    assert qmp.error("blockdev-reopen", options=[{
        "driver": "qcow2", "node-name": "top", "file": "top-file",
        "backing": "base"}]) == \
        "Cannot change frozen 'backing' link from 'top' to 'mid'"
    qmp.ok("job-cancel", id="a")
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="a", status="null")
    resp = export(qmp, "m", "mid", False)
    assert "return" in resp, resp
    # The job is gone: the chain is free again.
    qmp.ok("blockdev-reopen", options=[{
        "driver": "qcow2", "node-name": "top", "file": "top-file",
        "backing": "base"}])


def test_copy_before_write_and_exports(daemon):
    """QEMU's fleecing pieces: a filter added next to a guest's export
    restricts nothing until it gets a parent; then the guest's direct
    writes would bypass it, so the parent is refused.  Exported nodes
    keep their size."""
    qmp = daemon
    disk = make_image(os.path.join(qmp.dir, "disk.img"), SIZE, 0x22)
    temp = make_image(os.path.join(qmp.dir, "temp.img"), SIZE)
    qmp.ok("blockdev-add", driver="file", filename=disk,
           **{"node-name": "disk"})
    assert "return" in export(qmp, "guest", "disk", True)
    assert resize(qmp, "disk") == conflict("disk", "resize", BB, "root",
                                           BB, "root")
    qmp.ok("blockdev-add", driver="file", filename=temp,
           **{"node-name": "temp"})
    qmp.ok("blockdev-add", driver="copy-before-write", file="disk",
           target="temp", **{"node-name": "cbw"})
    assert resize(qmp, "temp") == conflict("temp", "resize", BB, "root",
                                           "node 'cbw'", "target")
    guest_write = conflict("disk", "write", BB, "root", "node 'cbw'", "file")
    assert resize(qmp, "cbw") == guest_write
    assert qmp.error("blockdev-add", driver="snapshot-access", file="cbw",
                     **{"node-name": "acc"}) == guest_write
    assert nbd_write(qmp, "disk")
    qmp.ok("blockdev-del", **{"node-name": "cbw"})
    qmp.ok("blockdev-del", **{"node-name": "temp"})
    qmp.ok("block-export-del", id="guest", mode="hard")
    qmp.wait_event_match("BLOCK_EXPORT_DELETED", id="guest")
    qmp.ok("block_resize", **{"node-name": "disk", "size": SIZE // 2})


def test_read_only(daemon):
    qmp = daemon
    ro = make_image(os.path.join(qmp.dir, "ro.img"), SIZE)
    qmp.ok("blockdev-add", driver="file", filename=ro, **{
        "node-name": "ro", "read-only": True})
    assert resize(qmp, "ro") == "Image is read-only"
    qmp.ok("blockdev-add", driver="raw", file="ro", **{"node-name": "r"})
    resp = export(qmp, "e", "r", True)
    assert resp["error"]["desc"] == "Block node is read-only", resp
    raw_node(qmp, "w")
    assert "return" in export(qmp, "w", "w", True)
    assert qmp.error("blockdev-reopen", options=[{
        "driver": "raw", "node-name": "w", "file": "w-file",
        "read-only": True}]) == \
        "Read-only block node 'w' cannot support read-write users"
