# SPDX-License-Identifier: MIT
"""Backup jobs with the rest of the daemon, differentially against
qemu-storage-daemon when it is installed: the job's copy-before-write
filter under a writable NBD export (image-fleecing's "backup sync=none"
variant), blockdev-backup inside a transaction, and push backup with
fleecing (docs/fleecing.md).
"""
import os
import shutil
import subprocess
import time

import pytest

from test_backup import (SIZE, daemon, file_node, images,  # noqa: F401
                         read)

CLUSTER = 64 * 1024


def qemu_io_nbd(sock, export, *cmds, read_only=False):
    qemu_io = shutil.which("qemu-io")
    if not qemu_io:
        pytest.skip("qemu-io is not installed")
    argv = [qemu_io, "-f", "raw"] + (["-r"] if read_only else []) + \
        ["nbd+unix:///%s?socket=%s" % (export, sock)]
    for c in cmds:
        argv += ["-c", c]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout.lower()
    assert "error" not in out and "fail" not in out, res.stdout
    return res.stdout


def export_del(qmp, export_id):
    """block-export-del, once the last client's connection is gone (the
    server may still be closing the one qemu-io just dropped)."""
    deadline = time.time() + 10
    while True:
        resp = qmp.raw("block-export-del", id=export_id)
        if "return" in resp or time.time() > deadline:
            break
        assert resp["error"]["desc"] == \
            "export '%s' still in use" % export_id
        time.sleep(0.05)
    assert resp["return"] == {}, resp
    qmp.wait_event_match("BLOCK_EXPORT_DELETED", id=export_id)


def test_sync_none_under_nbd_export(daemon, images, tmp_path):
    """Writes through an NBD export go through the job's filter: the old
    data of exactly the written clusters lands in the target."""
    src, tgt = images
    before = read(src)
    qmp = daemon(file_node("src", src), file_node("tgt", tgt))
    nbd_sock = str(tmp_path / "nbd.sock")
    qmp.ok("nbd-server-start",
           addr={"type": "unix", "data": {"path": nbd_sock}})
    qmp.ok("block-export-add", type="nbd", id="exp0", **{
        "node-name": "src", "name": "src", "writable": True})
    qmp.ok("blockdev-backup", **{
        "job-id": "fleecing", "device": "src", "target": "tgt",
        "sync": "none"})
    # Six clusters, as image-fleecing: 1 + 2 + 2 + 1.
    qemu_io_nbd(nbd_sock, "src",
                "write -P 0xab 0 64k",
                "write -P 0xad 0xf8000 64k",
                "write -P 0x1d 0x208000 64k",
                "write -P 0xea 0x3e0000 64k")
    info = qmp.ok("query-jobs")[0]
    assert info["current-progress"] == 6 * CLUSTER
    assert info["total-progress"] == SIZE
    qmp.ok("block-job-cancel", device="fleecing")
    ev = qmp.wait_event_match("BLOCK_JOB_CANCELLED", device="fleecing")
    assert ev["data"]["len"] == SIZE
    assert ev["data"]["offset"] == 6 * CLUSTER
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="fleecing", status="null")
    export_del(qmp, "exp0")

    got = read(tgt)
    for c in range(SIZE // CLUSTER):
        chunk = got[c * CLUSTER:(c + 1) * CLUSTER]
        if c in (0, 15, 16, 32, 33, 62):
            assert chunk == before[c * CLUSTER:(c + 1) * CLUSTER], c
        else:
            assert chunk == bytes(CLUSTER), c
    after = read(src)
    assert after[0:CLUSTER] == b"\xab" * CLUSTER
    assert after[0x3e0000:0x3f0000] == b"\xea" * CLUSTER


def test_transaction_backup(daemon, images):
    src, tgt = images
    qmp = daemon(file_node("src", src), file_node("tgt", tgt))
    # A failing transaction leaves neither job nor bitmap behind.
    err = qmp.error("transaction", actions=[
        {"type": "block-dirty-bitmap-add",
         "data": {"node": "src", "name": "b1"}},
        {"type": "blockdev-backup",
         "data": {"job-id": "t0", "device": "src", "target": "tgt",
                  "sync": "none"}},
        {"type": "abort", "data": {}}])
    assert err == "Transaction aborted using Abort action"
    assert qmp.ok("query-jobs") == []
    assert qmp.error("block-dirty-bitmap-remove", node="src", name="b1") \
        == "Dirty bitmap 'b1' not found"
    # The successful one: bitmap and job start together.
    assert qmp.ok("transaction", actions=[
        {"type": "block-dirty-bitmap-add",
         "data": {"node": "src", "name": "b1"}},
        {"type": "blockdev-backup",
         "data": {"job-id": "t1", "device": "src", "target": "tgt",
                  "sync": "full"}}]) == {}
    qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="t1")
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="t1", status="null")
    assert read(tgt) == read(src)
    # Validation of the action's data is the command's.
    err = qmp.error("transaction", actions=[
        {"type": "blockdev-backup",
         "data": {"job-id": "t2", "device": "src", "target": "tgt",
                  "sync": "fast"}}])
    assert err == "Parameter 'sync' does not accept value 'fast'"


def test_push_backup_with_fleecing(daemon, images, tmp_path):
    src, tgt = images
    temp = str(tmp_path / "temp.raw")
    with open(temp, "wb") as f:
        f.truncate(SIZE)
    qmp = daemon(file_node("src", src), file_node("tgt", tgt),
                 file_node("temp", temp, discard="unmap"))
    qmp.ok("blockdev-add", **{
        "driver": "copy-before-write", "node-name": "fl-cbw",
        "file": "src", "target": "temp"})
    qmp.ok("blockdev-add", **{
        "driver": "snapshot-access", "node-name": "fl-access",
        "file": "fl-cbw", "discard": "unmap"})
    args = {"job-id": "push0", "device": "fl-access", "target": "tgt",
            "sync": "full"}
    if qmp.kind == "lockstep":
        args["discard-source"] = True     # QEMU 9.1; 7.2 lacks it
    qmp.ok("blockdev-backup", **args)
    ev = qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="push0")
    assert "error" not in ev["data"]
    assert ev["data"]["offset"] == SIZE
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="push0", status="null")
    assert read(tgt) == read(src)
    qmp.ok("blockdev-del", **{"node-name": "fl-access"})
    qmp.ok("blockdev-del", **{"node-name": "fl-cbw"})
    if qmp.kind == "lockstep":
        # Every copied chunk was discarded in the snapshot's temp image.
        assert os.stat(temp).st_blocks * 512 <= 256 * 1024


# iotest 257 over QMP: the writes go through a writable NBD export of the
# drive (so through the job's filter while it runs), the counts come from
# query-named-block-nodes.
G0 = [(0x49, 0, 0x10000), (0x6c, 0x100000, 0x10000),
      (0x6f, 0x2000000, 0x10000), (0x76, 0x3ff0000, 0x10000)]
G1 = [(0x65, 0, 0x10000), (0x77, 0x00f8000, 0x10000),
      (0x72, 0x2008000, 0x10000), (0x69, 0x3fe0000, 0x10000)]
G2 = [(0x74, 0x0010000, 0x10000), (0x69, 0x00e8000, 0x10000),
      (0x6e, 0x2018000, 0x10000), (0x67, 0x3fe0000, 0x20000)]


def write_group(sock, group):
    qemu_io_nbd(sock, "drive0", *["write -P 0x%02x 0x%x 0x%x" % w
                                  for w in group])


def bitmap_count(qmp, node, name):
    for info in qmp.ok("query-named-block-nodes", flat=True):
        if info["node-name"] != node:
            continue
        for bm in info.get("dirty-bitmaps", []):
            if bm.get("name") == name:
                return bm["count"] // CLUSTER
    raise KeyError(name)


@pytest.mark.parametrize("msync,mode,failure,after", [
    ("bitmap", "on-success", "none", 7),
    ("bitmap", "never", "none", 10),
    ("bitmap", "always", "simulated", 7),
    ("bitmap", "on-success", "simulated", 10),
    ("full", "on-success", "none", 7),
])
def test_257_over_qmp(daemon, tmp_path, msync, mode, failure, after):
    size = 64 * 1024 * 1024
    drive = str(tmp_path / "drive0.raw")
    bsync = str(tmp_path / "bsync1.raw")
    for p in (drive, bsync):
        with open(p, "wb") as f:
            f.truncate(size)
    qmp = daemon(file_node("drive0", drive), file_node("bsync1", bsync))
    sock = str(tmp_path / "nbd.sock")
    qmp.ok("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    qmp.ok("block-export-add", type="nbd", id="exp0", **{
        "node-name": "drive0", "name": "drive0", "writable": True})
    write_group(sock, G0)
    qmp.ok("block-dirty-bitmap-add", node="drive0", name="bitmap0",
           granularity=CLUSTER)
    write_group(sock, G1)
    assert bitmap_count(qmp, "drive0", "bitmap0") == 6
    qmp.ok("blockdev-backup", **{
        "job-id": "backup_1", "device": "drive0", "target": "bsync1",
        "sync": msync, "bitmap": "bitmap0", "bitmap-mode": mode,
        "auto-finalize": False, "filter-node-name": "backup-top",
        "x-perf": {"max-workers": 1}})
    qmp.wait_event_match("BLOCK_JOB_PENDING")
    write_group(sock, G2)
    assert bitmap_count(qmp, "drive0", "bitmap0") == 6
    if failure == "simulated":
        qmp.ok("job-cancel", id="backup_1")
        qmp.wait_event_match("BLOCK_JOB_CANCELLED", device="backup_1")
    else:
        qmp.ok("job-finalize", id="backup_1")
        qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="backup_1")
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="backup_1", status="null")
    assert bitmap_count(qmp, "drive0", "bitmap0") == after
    export_del(qmp, "exp0")


def test_old_fleecing_scheme(daemon, tmp_path):
    """image-fleecing variant 1: backup sync=none into a qcow2 whose
    backing is the source; the temp image, exported, stays the snapshot
    while the source is written."""
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        pytest.skip("qemu-img is not installed")
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as f:
        f.truncate(SIZE)
    pattern = [(0x5d, 0), (0xd5, 0x100000), (0xdc, 0x200000),
               (0xcd, SIZE - CLUSTER)]
    with open(src, "r+b") as f:
        for byte, off in pattern:
            f.seek(off)
            f.write(bytes([byte]) * CLUSTER)
    temp = str(tmp_path / "temp.qcow2")
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", temp,
                    str(SIZE)], check=True)
    qmp = daemon(file_node("src", src))
    qmp.ok("blockdev-add", **{
        "driver": "qcow2", "node-name": "temp", "backing": "src",
        "file": {"driver": "file", "filename": temp}})
    sock = str(tmp_path / "nbd.sock")
    qmp.ok("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    # The guest's export exists first: the job moves it onto its filter.
    qmp.ok("block-export-add", type="nbd", id="guest", **{
        "node-name": "src", "name": "guest", "writable": True})
    qmp.ok("blockdev-backup", **{
        "job-id": "fleecing", "device": "src", "target": "temp",
        "sync": "none"})
    qmp.ok("block-export-add", type="nbd", id="snap", **{
        "node-name": "temp", "name": "snap"})
    qemu_io_nbd(sock, "guest",
                "write -P 0xab 0 64k",
                "write -P 0xad 0xf8000 64k",
                "write -P 0x1d 0x208000 64k",
                "write -P 0xea 0x3e0000 64k")
    # The snapshot still reads the patterns and zeroes of job start.
    qemu_io_nbd(sock, "snap", *["read -P 0x%02x 0x%x 64k" % (b, off)
                                for b, off in pattern],
                "read -P 0 0xf8000 32k", "read -P 0 0x3e0000 64k",
                read_only=True)
    qemu_io_nbd(sock, "guest", "read -P 0xab 0 64k",
                "read -P 0xea 0x3e0000 64k")
    export_del(qmp, "snap")
    export_del(qmp, "guest")
    qmp.ok("block-job-cancel", device="fleecing")
    ev = qmp.wait_event_match("BLOCK_JOB_CANCELLED", device="fleecing")
    assert ev["data"]["offset"] == 6 * CLUSTER
    qmp.wait_event_match("JOB_STATUS_CHANGE", id="fleecing", status="null")
    qmp.ok("blockdev-del", **{"node-name": "temp"})
