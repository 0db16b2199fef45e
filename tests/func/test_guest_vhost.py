# SPDX-License-Identifier: MIT
"""A real guest on lockstepd's vhost-user-blk export (tests/func/guest.py).

QEMU 7.2 boots Debian's cloud kernel under TCG with its disk on a
vhost-user-blk-pci device served by lockstepd; the guest mounts an ext4
file system, writes files with known sha256 and syncs, and keeps writing
while the host:

- takes a fleecing snapshot: the copy is fsck-clean after journal
  replay and every file synced before the snapshot is intact;
- replicates to a secondary, checkpoints, then SIGKILLs the primary and
  fails over: the secondary disk is fsck-clean and every file synced
  before the last checkpoint is intact;
- kills the VMM and starts it again against the same export: the guest
  mounts its file system (journal replay) and finds its files;
- kills lockstepd and starts it again while the VMM waits to reconnect
  (reconnect=1): the requests in flight are resubmitted from the inflight
  buffer and the guest carries on.
"""
import os
import signal
import subprocess
import time

import pytest

from conftest import run
from guest import Guest, file_sums, fs_check, make_ext4_qcow2, to_raw
from qmp_client import Daemon, wait_for_socket

BG_WRITER = ("(i=0; while :; do dd if=/dev/urandom of=/mnt/bg$((i % 16)) "
             "bs=64k count=4 2>/dev/null; i=$((i+1)); done) "
             "</dev/null >/dev/null 2>&1 &")


def blockdev(image):
    return ["--blockdev", "driver=file,node-name=disk-file,filename=%s"
            % image,
            "--blockdev", "driver=qcow2,node-name=disk,file=disk-file"]


def vhost_export(sock, node="disk", queues=1):
    return ["--export", "type=vhost-user-blk,id=vu,node-name=%s,"
            "addr.type=unix,addr.path=%s,writable=on,num-queues=%d"
            % (node, sock, queues)]


def check_files(image_raw, want, tmp_dir):
    fs_check(image_raw)
    got = file_sums(image_raw, sorted(want), tmp_dir)
    bad = {n: (want[n], got[n]) for n in want if got[n] != want[n]}
    assert not bad, bad


def test_guest_fleecing(lockstepd, tmp_dir):
    image = make_ext4_qcow2(os.path.join(tmp_dir, "disk.qcow2"))
    vsock = os.path.join(tmp_dir, "vu.sock")
    nbd = os.path.join(tmp_dir, "nbd.sock")
    d = Daemon(lockstepd, tmp_dir, blockdev(image) +
               vhost_export(vsock, queues=2) +
               ["--nbd-server", "addr.type=unix,addr.path=%s" % nbd])
    g = Guest(tmp_dir, vsock, num_queues=2)
    try:
        c = d.client()
        g.boot()
        g.cmd("mount /dev/vda /mnt")
        synced = g.write_files("f", 12)
        assert len(synced) == 12
        g.cmd(BG_WRITER)
        time.sleep(2)
        temp = os.path.join(tmp_dir, "temp.qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", temp, "256M"])
        c.cmd("fleecing-start", {"id": "fl", "node": "disk",
                                 "export-name": "snap",
                                 "temp": {"filename": temp,
                                          "format": "qcow2"}})
        # The guest goes on writing while the snapshot is copied.
        time.sleep(1)
        snap = to_raw("nbd+unix:///snap?socket=%s" % nbd,
                      os.path.join(tmp_dir, "snap.raw"), fmt="raw")
        c.cmd("fleecing-stop", {"id": "fl"})
        # The guest's disk is still fine afterwards.
        more = g.write_files("g", 4)
        g.cmd("kill %1 2>/dev/null; wait; sync", check=False)
        g.poweroff()
        check_files(snap, synced, tmp_dir)
    finally:
        g.kill()
        d.stop()
    final = to_raw(image, os.path.join(tmp_dir, "final.raw"))
    check_files(final, dict(synced, **more), tmp_dir)


def test_guest_vmm_killed_and_restarted(lockstepd, tmp_dir):
    image = make_ext4_qcow2(os.path.join(tmp_dir, "disk.qcow2"))
    vsock = os.path.join(tmp_dir, "vu.sock")
    d = Daemon(lockstepd, tmp_dir, blockdev(image) + vhost_export(vsock))
    g = Guest(tmp_dir, vsock, reconnect=True)
    try:
        g.boot()
        g.cmd("mount /dev/vda /mnt")
        synced = g.write_files("f", 8)
        g.cmd(BG_WRITER)
        time.sleep(3)
        g.kill()          # SIGKILL, requests in flight
        # The same export takes the new VMM.
        g = Guest(tmp_dir, vsock, name="vm2", reconnect=True)
        g.boot()
        g.cmd("mount /dev/vda /mnt")
        out, _ = g.cmd("sha256sum /mnt/f*")
        from guest import parse_sums
        assert parse_sums(out) == synced
        more = g.write_files("h", 4)
        g.poweroff()
    finally:
        g.kill()
        d.stop()
    final = to_raw(image, os.path.join(tmp_dir, "final.raw"))
    check_files(final, dict(synced, **more), tmp_dir)


def test_guest_daemon_killed_and_restarted(lockstepd, tmp_dir):
    """The back-end crashes; QEMU reconnects (reconnect=1) and hands the
    inflight buffer back: nothing is lost, nothing done twice."""
    image = make_ext4_qcow2(os.path.join(tmp_dir, "disk.qcow2"))
    vsock = os.path.join(tmp_dir, "vu.sock")
    args = blockdev(image) + vhost_export(vsock, queues=2)
    d = Daemon(lockstepd, tmp_dir, args)
    g = Guest(tmp_dir, vsock, num_queues=2, reconnect=True)
    try:
        g.boot()
        g.cmd("mount /dev/vda /mnt")
        synced = g.write_files("f", 8)
        g.cmd(BG_WRITER)
        time.sleep(2)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        time.sleep(0.5)
        d = Daemon(lockstepd, tmp_dir, args, name="qmp2")
        # The guest's writes resume once QEMU has reconnected.
        more = g.write_files("h", 4, kib=64)
        out, _ = g.cmd("sha256sum /mnt/f*")
        from guest import parse_sums
        assert parse_sums(out) == synced
        g.cmd("kill %1 2>/dev/null; wait; sync", check=False)
        g.poweroff()
    finally:
        g.kill()
        d.stop()
    final = to_raw(image, os.path.join(tmp_dir, "final.raw"))
    check_files(final, dict(synced, **more), tmp_dir)


def test_guest_replication_failover(tmp_dir):
    from test_replication import Primary, Secondary, wait_failover
    import shutil
    base = make_ext4_qcow2(os.path.join(tmp_dir, "base.qcow2"))
    imgs = {}
    for n in ("sec", "p-local"):
        imgs[n] = os.path.join(tmp_dir, n + ".qcow2")
        shutil.copy(base, imgs[n])
    for n in ("active", "hidden"):
        imgs[n] = os.path.join(tmp_dir, n + ".qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", imgs[n], "256M"])
    sec = Secondary(tmp_dir, "unix", imgs["sec"], imgs["active"],
                    imgs["hidden"])
    pri = Primary(tmp_dir, sec.server, imgs["p-local"])
    vsock = os.path.join(tmp_dir, "vu.sock")
    g = Guest(tmp_dir, vsock)
    try:
        sec.start()
        pri.start()
        pri.qmp.cmd("block-export-add", {
            "type": "vhost-user-blk", "id": "vu", "node-name": "p-top",
            "writable": True, "addr": {"type": "unix", "path": vsock}})
        g.boot()
        g.cmd("mount /dev/vda /mnt")
        synced = g.write_files("f", 10)
        sec.qmp.cmd("xen-colo-do-checkpoint")
        pri.qmp.cmd("xen-colo-do-checkpoint")
        g.cmd(BG_WRITER)
        time.sleep(2)
        # A checkpoint while the guest writes, then more writes after it.
        sec.qmp.cmd("xen-colo-do-checkpoint")
        after = g.write_files("late", 3)
        time.sleep(1)
        pri.daemon.proc.send_signal(signal.SIGKILL)
        pri.daemon.proc.wait()
        g.kill()
        sec.qmp.cmd("nbd-server-stop")
        sec.qmp.cmd("replication-stop", {"failover": True})
        wait_failover(sec.qmp)
        assert sec.qmp.cmd("query-xen-replication-status") == \
            {"error": False}
        sec.stop()
    finally:
        g.kill()
        for x in (pri, sec):
            try:
                x.stop()
            except Exception:
                pass
    final = to_raw(imgs["sec"], os.path.join(tmp_dir, "sec.raw"))
    # Synced before the last checkpoint: intact.  The files written after
    # it were rolled back with everything else after the checkpoint.
    check_files(final, synced, tmp_dir)
    del after
