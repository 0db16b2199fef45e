#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""lockstepd side by side with QEMU: the same QMP script, the same NBD clients.

For each workload, rounds of A (lockstepd) then B (qemu-storage-daemon, or
qemu-system-x86_64 -machine none where only it has the commands), fresh
images on tmpfs each run; prints medians, ratios and spreads and writes
docs/performance.md and docs/performance.png.  See bench/README.md.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clients  # noqa: E402
import daemons  # noqa: E402
import report  # noqa: E402

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1 << 30


class Ctx:
    """Settings shared by every workload run."""

    def __init__(self, args, work):
        self.runtime = args.runtime
        self.work = work
        self.size = args.size_mib << 20
        self.bins = {"lockstep": os.path.join(args.build, "lockstepd"),
                     "backup": os.path.join(args.build, "lockstep-backup"),
                     "qsd": shutil.which("qemu-storage-daemon"),
                     "qemu": shutil.which("qemu-system-x86_64"),
                     "vhost-client": os.path.join(args.build, "tests",
                                                  "vhost", "vhost-client")}
        self.seq = 0
        self._filled = None
        self._half = None
        self._tls = None
        self.ceilings = []      # nbdkit memory plugin MiB/s, per round
        self.disk = args.disk   # disk-backed directory for disk-* workloads
        self.disk_size = args.disk_size_mib << 20
        self.qemu_aio = args.qemu_aio
        self._disk_filled = None
        self.device = {}        # device job -> fio figures, one per round

    def path(self, name):
        self.seq += 1
        return os.path.join(self.work, "%d-%s" % (self.seq, name))

    def qcow2(self, name, size=None):
        p = self.path(name + ".qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", p,
                        str(size or self.size)], check=True)
        return p

    def filled_qcow2(self, name):
        """A copy of a qcow2 image whose every cluster holds data."""
        if self._filled is None:
            self._filled = os.path.join(self.work, "filled.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                            self._filled, str(self.size)], check=True)
            subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                            "write -P 0x5a 0 %d" % self.size, self._filled],
                           check=True, capture_output=True)
        p = self.path(name + ".qcow2")
        shutil.copyfile(self._filled, p)
        return p

    def half_allocated_qcow2(self, name):
        """A copy of a qcow2 image with data in every other MiB (50 %)."""
        if self._half is None:
            self._half = os.path.join(self.work, "half.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                            self._half, str(self.size)], check=True)
            cmds = []
            for mib in range(0, self.size >> 20, 2):
                cmds += ["-c", "write -P 0x%x %dM 1M" % (mib % 255 + 1, mib)]
            subprocess.run(["qemu-io", "-f", "qcow2"] + cmds + [self._half],
                           check=True, capture_output=True)
        p = self.path(name + ".qcow2")
        shutil.copyfile(self._half, p)
        return p

    def tls_dirs(self):
        """x509 server and client directories (certtool, made once):
        both daemons use the same certificates."""
        if self._tls is None:
            import tls_setup
            top = os.path.join(self.work, "tls")
            ca = tls_setup.make_ca(os.path.join(top, "ca"))
            self._tls = (
                tls_setup.make_x509_dir(os.path.join(top, "server"), ca,
                                        "server"),
                tls_setup.make_x509_dir(os.path.join(top, "client"), ca,
                                        "client"))
        return self._tls

    def disk_path(self, name):
        self.seq += 1
        return os.path.join(self.disk, "%d-%s" % (self.seq, name))

    def disk_qcow2(self, name, cluster=None):
        """A fresh qcow2 image of disk_size on the disk."""
        p = self.disk_path(name + ".qcow2")
        opts = ["-o", "cluster_size=%d" % cluster] if cluster else []
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2"] + opts +
                       [p, str(self.disk_size)], check=True)
        return p

    def disk_filled_qcow2(self):
        """A qcow2 image of disk_size on the disk whose every cluster
        holds data, written once per bench run with O_DIRECT (4 GiB: the
        device, not the page cache, serves it) and shared by every run
        that needs one: the reads leave it as it is, guest writes change
        bytes in clusters that stay allocated where they are."""
        if self._disk_filled is None:
            p = os.path.join(self.disk, "filled.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", p,
                            str(self.disk_size)], check=True)
            # qemu-io takes at most 2 GiB - 512 per write: 1 GiB steps.
            cmds = []
            for off in range(0, self.disk_size, GiB):
                cmds += ["-c", "write -P 0x5a %d %d" % (
                    off, min(GiB, self.disk_size - off))]
            subprocess.run(["qemu-io", "-t", "none", "-f", "qcow2"] + cmds +
                           [p], check=True, capture_output=True)
            self._disk_filled = p
        return self._disk_filled

    def cleanup(self):
        if self.disk != self.work:
            for f in os.listdir(self.disk):
                if f[0].isdigit():
                    os.unlink(os.path.join(self.disk, f))
        for f in os.listdir(self.work):
            p = os.path.join(self.work, f)
            if f[0].isdigit() and os.path.isdir(p):
                shutil.rmtree(p)
            elif f[0].isdigit():
                os.unlink(p)


# ---- One daemon (or a pair) for one run ---------------------------------

class Run:
    """The daemons of one run, their CPU time while measured, peak RSS."""

    def __init__(self, ctx, kind):
        self.ctx, self.kind = ctx, kind
        self.daemons = []
        self.cpu = 0.0
        self.bytes = 0
        self.rss_by_role = {}
        self.metrics = {}

    @property
    def rss(self):
        """Peak RSS in KiB: the sum over roles (primary + secondary) of
        each role's highest VmHWM."""
        return sum(self.rss_by_role.values())

    def start(self, role):
        d = daemons.start(self.kind, self.ctx.bins, self.ctx.work,
                          "%s-%s" % (self.kind, role))
        d.role = role
        self.daemons.append(d)
        return d, d.client()

    def measure(self, fn):
        """Run fn() and add the daemons' CPU seconds to the run's total."""
        before = sum(daemons.cpu_seconds(d) for d in self.daemons
                     if d.proc.poll() is None)
        out = fn()
        self.cpu += sum(daemons.cpu_seconds(d) for d in self.daemons
                        if d.proc.poll() is None) - before
        self.bytes += out.get("bytes", 0)
        return out

    def stop(self, d):
        if d.proc.poll() is None:
            self.rss_by_role[d.role] = max(self.rss_by_role.get(d.role, 0),
                                           daemons.peak_rss_kib(d))
        d.stop()

    def close(self):
        for d in reversed(self.daemons):
            self.stop(d)


def nbd_start(c, sock, tls_dir=None):
    """The NBD server on a unix socket; with tls_dir (x509, server) in
    TLS-required mode."""
    args = {"addr": {"type": "unix", "data": {"path": sock}}}
    if tls_dir:
        c.cmd("object-add", {"qom-type": "tls-creds-x509", "id": "tls-srv",
                             "dir": tls_dir, "endpoint": "server"})
        args["tls-creds"] = "tls-srv"
    c.cmd("nbd-server-start", args)


def tls_uri(sock, export, client_dir):
    return "nbds+unix:///%s?socket=%s&tls-certificates=%s" % (
        export, sock, client_dir)


def export(c, node, name, writable=True):
    c.cmd("block-export-add", {"type": "nbd", "id": name, "node-name": node,
                               "name": name, "writable": writable})


def qcow2_node(c, node, img, file_opts=None):
    f = {"driver": "file", "filename": img}
    f.update(file_opts or {})
    c.cmd("blockdev-add", {"driver": "qcow2", "node-name": node, "file": f})


def one_export(run, node_args):
    """A daemon with one node exported as 'disk'; returns its NBD URI."""
    d, c = run.start("a")
    c.cmd("blockdev-add", node_args)
    sock = run.ctx.path("nbd.sock")
    nbd_start(c, sock)
    export(c, node_args["node-name"], "disk")
    c.close()
    return clients.nbd_uri(sock, "disk")


def qcow2_args(img):
    return {"driver": "qcow2", "node-name": "disk",
            "file": {"driver": "file", "filename": img}}


# ---- Workloads ----------------------------------------------------------
# Each takes a Run, fills run.metrics and may add to run.cpu / run.bytes.

def fio_metric(run, uri, key, rw, bs, qd, unit="iops", **kw):
    out = run.measure(lambda: clients.fio(uri, rw, bs, qd,
                                          runtime=run.ctx.runtime, **kw))
    run.metrics[key] = out[unit]


def wl_qcow2_randread(run):
    uri = one_export(run, qcow2_args(run.ctx.filled_qcow2("read")))
    fio_metric(run, uri, "qcow2 randread 4k qd1", "randread", "4k", 1)
    fio_metric(run, uri, "qcow2 randread 4k qd16", "randread", "4k", 16)


def wl_qcow2_randwrite(run):
    for qd in (1, 16):
        uri = one_export(run, qcow2_args(run.ctx.qcow2("rw")))
        fio_metric(run, uri, "qcow2 randwrite 4k qd%d (allocating)" % qd,
                   "randwrite", "4k", qd)
        run.close()
        run.daemons = []


def wl_qcow2_seqwrite(run):
    uri = one_export(run, qcow2_args(run.ctx.qcow2("seq")))
    fio_metric(run, uri, "qcow2 seqwrite 1M qd4", "write", "1M", 4,
               unit="mibs")


def fleecing_setup(run, tls=False, on_disk=False):
    """docs/fleecing.md's pull mode on QMP, full snapshot (no bitmap): the
    guest writes 'guest', the backup reads 'snap'.  tls: the server
    requires x509 TLS and the URIs use it.  on_disk: both images on the
    disk, opened with cache.direct=on (disk_qcow2_args())."""
    ctx = run.ctx
    if on_disk:
        disk = ctx.disk_filled_qcow2()
        fleece = ctx.disk_qcow2("fleece")
    else:
        disk = ctx.filled_qcow2("disk0")
        fleece = ctx.qcow2("fleece")

    def file_node(img):
        if on_disk:
            f = disk_qcow2_args(run, img)["file"]
        else:
            f = {"driver": "file", "filename": img}
        f["discard"] = "unmap"
        return f
    d, c = run.start("a")
    c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "disk0",
                           "discard": "unmap", "file": file_node(disk)})
    c.cmd("blockdev-add", {"driver": "raw", "node-name": "disk0-front",
                           "file": "disk0", "discard": "unmap"})
    sock = ctx.path("nbd.sock")
    nbd_start(c, sock, ctx.tls_dirs()[0] if tls else None)
    export(c, "disk0-front", "guest")
    c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "fleece0",
                           "discard": "unmap", "file": file_node(fleece)})
    c.cmd("blockdev-add", {"driver": "copy-before-write",
                           "node-name": "fl-cbw", "file": "disk0",
                           "target": "fleece0",
                           "on-cbw-error": "break-snapshot",
                           "cbw-timeout": 45})
    c.cmd("blockdev-reopen", {"options": [
        {"driver": "raw", "node-name": "disk0-front", "file": "fl-cbw",
         "discard": "unmap"}]})
    c.cmd("blockdev-add", {"driver": "snapshot-access",
                           "node-name": "fl-access", "file": "fl-cbw",
                           "discard": "unmap"})
    export(c, "fl-access", "snap", writable=False)
    c.close()
    if tls:
        cdir = ctx.tls_dirs()[1]
        return tls_uri(sock, "guest", cdir), tls_uri(sock, "snap", cdir)
    return clients.nbd_uri(sock, "guest"), clients.nbd_uri(sock, "snap")


def wl_fleece_read(run):
    _, snap = fleecing_setup(run)
    out = run.measure(lambda: clients.nbdcopy(snap, run.ctx.size))
    run.metrics["snapshot read (nbdcopy), idle guest"] = out["mibs"]


def wl_fleece_read_busy(run):
    guest, snap = fleecing_setup(run)

    def busy():
        g = clients.fio_background(guest, "randwrite", "4k", 16, 600)
        try:
            time.sleep(0.5)
            return clients.nbdcopy(snap, run.ctx.size)
        finally:
            g.terminate()
            g.wait()
    out = run.measure(busy)
    run.metrics["snapshot read (nbdcopy), guest writing"] = out["mibs"]


def wl_fleece_read_tls(run):
    _, snap = fleecing_setup(run, tls=True)
    out = run.measure(lambda: clients.nbdcopy(snap, run.ctx.size))
    run.metrics["snapshot read (nbdcopy), idle guest, TLS"] = out["mibs"]


def wl_fleece_guest_write(run):
    guest, _ = fleecing_setup(run)
    fio_metric(run, guest, "guest randwrite 4k qd16, fresh snapshot",
               "randwrite", "4k", 16)


def replication_setup(run, tls=False, on_disk=False):
    """docs/replication.md's setup, as QMP: secondary, then primary.
    Returns (primary guest URI, secondary guest URI, secondary QMP).
    tls: the replication link (and the secondary's server) uses x509
    TLS; the primary's guest export stays plain.  on_disk: every image
    on the disk, opened with cache.direct=on (disk_file_opts())."""
    ctx = run.ctx
    fo = disk_file_opts(run) if on_disk else {}
    image = ctx.disk_qcow2 if on_disk else ctx.qcow2
    sd, sc = run.start("secondary")
    qcow2_node(sc, "sec-disk", image("sec"), fo)
    ssock = ctx.path("sec-nbd.sock")
    nbd_start(sc, ssock, ctx.tls_dirs()[0] if tls else None)
    export(sc, "sec-disk", "sec-disk")
    sc.cmd("blockdev-add", {
        "driver": "replication", "node-name": "rep", "mode": "secondary",
        "top-id": "top",
        "file": {"driver": "qcow2", "node-name": "active",
                 "file": dict({"driver": "file",
                               "filename": image("active")}, **fo),
                 "backing": {"driver": "qcow2", "node-name": "hidden",
                             "file": dict({"driver": "file",
                                           "filename": image("hidden")},
                                          **fo),
                             "backing": "sec-disk"}}})
    sc.cmd("blockdev-add", {"driver": "quorum", "node-name": "top",
                            "read-pattern": "fifo", "vote-threshold": 1,
                            "children": ["rep"]})
    export(sc, "top", "sguest")
    sc.cmd("xen-set-replication", {"enable": True, "primary": False})
    pd, pc = run.start("primary")
    qcow2_node(pc, "p-local", image("primary"), fo)
    child = {"driver": "nbd", "export": "sec-disk",
             "server": {"type": "unix", "path": ssock}}
    if tls:
        pc.cmd("object-add", {"qom-type": "tls-creds-x509", "id": "tls-cli",
                              "dir": ctx.tls_dirs()[1],
                              "endpoint": "client"})
        child["tls-creds"] = "tls-cli"
        if run.kind == "qemu":
            # QEMU wants a name to check on a unix socket; lockstepd's
            # libnbd checks none there and refuses a tls-hostname it
            # cannot check (docs/security.md).
            child["tls-hostname"] = "localhost"
    pc.cmd("blockdev-add", {"driver": "replication", "node-name": "p-rep",
                            "mode": "primary", "file": child})
    pc.cmd("blockdev-add", {"driver": "quorum", "node-name": "p-top",
                            "read-pattern": "fifo", "vote-threshold": 1,
                            "children": ["p-local", "p-rep"]})
    psock = ctx.path("pri-nbd.sock")
    nbd_start(pc, psock)
    export(pc, "p-top", "guest")
    pc.cmd("xen-set-replication", {"enable": True, "primary": True})
    pc.close()
    sguest = (tls_uri(ssock, "sguest", ctx.tls_dirs()[1]) if tls else
              clients.nbd_uri(ssock, "sguest"))
    return clients.nbd_uri(psock, "guest"), sguest, sc


def wl_rep_randwrite(run):
    guest, _, sc = replication_setup(run)
    sc.close()
    fio_metric(run, guest, "replicated randwrite 4k qd16", "randwrite",
               "4k", 16)


def wl_rep_seqwrite(run):
    guest, _, sc = replication_setup(run)
    sc.close()
    fio_metric(run, guest, "replicated seqwrite 1M qd4", "write", "1M", 4,
               unit="mibs")


def wl_rep_seqwrite_tls(run):
    guest, _, sc = replication_setup(run, tls=True)
    sc.close()
    fio_metric(run, guest, "replicated seqwrite 1M qd4, TLS link", "write",
               "1M", 4, unit="mibs")


def both_write_256m(run, guest, sguest):
    run.measure(lambda: clients.fio(guest, "write", "1M", 4, size="256M"))
    run.measure(lambda: clients.fio(sguest, "write", "1M", 4, size="256M",
                                    offset="512M"))


def wl_rep_checkpoint(run):
    guest, sguest, sc = replication_setup(run)
    both_write_256m(run, guest, sguest)
    t0 = time.monotonic()
    sc.cmd("xen-colo-do-checkpoint")
    run.metrics["checkpoint latency after 256M+256M"] = \
        (time.monotonic() - t0) * 1000
    both_write_256m(run, guest, sguest)
    run.stop(run.daemons[1])             # the primary is lost
    t0 = time.monotonic()
    sc.cmd("xen-set-replication", {"enable": False, "primary": False,
                                   "failover": True})
    deadline = t0 + 300
    while sc.cmd("query-xen-replication-status").get("error"):
        if time.monotonic() > deadline:
            raise TimeoutError("failover did not finish")
        time.sleep(0.002)
    run.metrics["failover time after 256M+256M"] = \
        (time.monotonic() - t0) * 1000
    sc.close()


# ---- vhost-user-blk: our front-end against lockstepd and QSD --------------

def vhost_export(c, node, sock, queues=1):
    c.cmd("block-export-add", {"type": "vhost-user-blk", "id": "vu",
                               "node-name": node, "writable": True,
                               "num-queues": queues,
                               "addr": {"type": "unix", "path": sock}})


def vhost_one(run, img, queues=2):
    """A daemon with the qcow2 img as a vhost-user-blk export; returns the
    socket."""
    d, c = run.start("a")
    qcow2_node(c, "disk", img)
    sock = run.ctx.path("vu.sock")
    vhost_export(c, "disk", sock, queues)
    c.close()
    return sock


def vhost_metric(run, sock, key, rw, bs, qd, queues=1, unit="iops"):
    out = run.measure(lambda: clients.vhost_bench(
        run.ctx.bins["vhost-client"], sock, rw, bs, qd, run.ctx.runtime,
        queues=queues))
    run.metrics[key] = out[unit]


def wl_vhost_randread(run):
    sock = vhost_one(run, run.ctx.filled_qcow2("read"))
    for qd, q in ((1, 1), (16, 1), (16, 2)):
        vhost_metric(run, sock, "vhost-user-blk randread 4k qd%d, %d "
                     "queue%s" % (qd, q, "s" if q > 1 else ""),
                     "randread", "4k", qd, q)


def wl_vhost_randwrite(run):
    for qd, q in ((1, 1), (16, 1), (16, 2)):
        sock = vhost_one(run, run.ctx.qcow2("rw"))
        vhost_metric(run, sock, "vhost-user-blk randwrite 4k qd%d, %d "
                     "queue%s (allocating)" % (qd, q, "s" if q > 1 else ""),
                     "randwrite", "4k", qd, q)
        run.close()
        run.daemons = []


def wl_vhost_seqwrite(run):
    sock = vhost_one(run, run.ctx.qcow2("seq"))
    vhost_metric(run, sock, "vhost-user-blk seqwrite 1M qd4", "write", "1M",
                 4, unit="mibs")


def wl_vhost_fleece_guest_write(run):
    """The guest on vhost-user-blk over a fresh fleecing snapshot (the
    same QMP recipe as fleecing_setup, the guest export is vhost)."""
    ctx = run.ctx
    d, c = run.start("a")
    qcow2_node(c, "disk0", ctx.filled_qcow2("disk0"))
    c.cmd("blockdev-add", {"driver": "raw", "node-name": "disk0-front",
                           "file": "disk0"})
    sock = ctx.path("vu.sock")
    vhost_export(c, "disk0-front", sock)
    qcow2_node(c, "fleece0", ctx.qcow2("fleece"))
    c.cmd("blockdev-add", {"driver": "copy-before-write",
                           "node-name": "fl-cbw", "file": "disk0",
                           "target": "fleece0",
                           "on-cbw-error": "break-snapshot",
                           "cbw-timeout": 45})
    c.cmd("blockdev-reopen", {"options": [
        {"driver": "raw", "node-name": "disk0-front", "file": "fl-cbw"}]})
    c.close()
    vhost_metric(run, sock, "vhost-user-blk guest randwrite 4k qd16, fresh "
                 "snapshot", "randwrite", "4k", 16)


def wl_vhost_vs_nbd(run):
    """lockstepd's vhost-user-blk export against its own NBD export, same
    image, same workload (the reference side is lockstepd over NBD)."""
    img = run.ctx.filled_qcow2("vn")
    if run.kind == "lockstep":
        sock = vhost_one(run, img)
        vhost_metric(run, sock, "randread 4k qd16: vhost-user-blk vs NBD",
                     "randread", "4k", 16)
        vhost_metric(run, sock, "randwrite 4k qd16: vhost-user-blk vs NBD",
                     "randwrite", "4k", 16)
    else:
        uri = one_export(run, qcow2_args(img))
        fio_metric(run, uri, "randread 4k qd16: vhost-user-blk vs NBD",
                   "randread", "4k", 16)
        fio_metric(run, uri, "randwrite 4k qd16: vhost-user-blk vs NBD",
                   "randwrite", "4k", 16)


# ---- Backups: lockstep-backup vs the same QMP + NBD steps with qemu-img --

def backup_setup(run):
    """A disk of ctx.size, every other MiB holding data, served as node
    disk0 and exported as 'guest'; the QMP client is closed (the tool
    needs the monitor: qemu-storage-daemon's takes one client)."""
    ctx = run.ctx
    d, c = run.start("a")
    qcow2_node(c, "disk0", ctx.half_allocated_qcow2("disk0"))
    sock = ctx.path("nbd.sock")
    nbd_start(c, sock)
    export(c, "disk0", "guest")
    c.close()
    bk = ctx.path("backups")
    os.mkdir(bk)
    return d, sock, bk


def lockstep_backup(run, d, sock, bk, kind):
    """lockstep-backup KIND; returns (seconds, its summary)."""
    t0 = time.monotonic()
    p = subprocess.run([run.ctx.bins["backup"], kind, "--socket",
                        d.qmp_path, "--node", "disk0", "--to", bk,
                        "--nbd-socket", sock, "--progress=json"],
                       capture_output=True, text=True, timeout=600)
    secs = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError("lockstep-backup failed: %s" % p.stderr)
    return secs, json.loads(p.stdout.splitlines()[-1])


def qemu_backup(run, d, sock, bk, kind, day):
    """The same steps as a user scripts them for QEMU: the fleecing
    recipe of docs/backup.md on QMP, the snapshot read with qemu-img
    convert into a qcow2 (an overlay of the last backup with -B for an
    incremental one: qemu-img cannot limit its reads to the dirty
    extents), then the teardown.  Returns seconds."""
    ctx = run.ctx
    t0 = time.monotonic()
    c = d.client()
    scratch = ctx.path("scratch.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", scratch,
                    str(ctx.size)], check=True)
    c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "snap",
                           "file": {"driver": "file", "filename": scratch},
                           "backing": "disk0"})
    actions = [{"type": "block-dirty-bitmap-add",
                "data": {"node": "disk0", "name": "b%d" % day,
                         "persistent": True}}]
    if kind == "incremental":
        actions.append({"type": "block-dirty-bitmap-disable",
                        "data": {"node": "disk0", "name": "b%d" % (day - 1)}})
    actions.append({"type": "blockdev-backup",
                    "data": {"job-id": "fleece", "device": "disk0",
                             "target": "snap", "sync": "none"}})
    c.cmd("transaction", {"actions": actions})
    exp = {"type": "nbd", "id": "snap", "node-name": "snap", "name": "snap",
           "writable": False}
    if kind == "incremental":
        exp["bitmaps"] = ["b%d" % (day - 1)]
    c.cmd("block-export-add", exp)
    out = os.path.join(bk, "day%d.qcow2" % day)
    argv = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
    if kind == "incremental":
        argv += ["-B", "day%d.qcow2" % (day - 1), "-F", "qcow2"]
    subprocess.run(argv + [clients.nbd_uri(sock, "snap"), out], check=True,
                   timeout=600)
    c.cmd("block-export-del", {"id": "snap", "mode": "hard"})
    c.wait_event_match("BLOCK_EXPORT_DELETED", id="snap")
    c.cmd("job-cancel", {"id": "fleece"})
    c.wait_event_match("JOB_STATUS_CHANGE", id="fleece", status="null")
    c.cmd("blockdev-del", {"node-name": "snap"})
    if kind == "incremental":
        c.cmd("block-dirty-bitmap-remove", {"node": "disk0",
                                            "name": "b%d" % (day - 1)})
    c.close()
    os.unlink(scratch)
    return time.monotonic() - t0


def one_backup(run, d, sock, bk, kind, day):
    """Seconds of one backup by the side under test (and its summary)."""
    if run.kind == "lockstep":
        return lockstep_backup(run, d, sock, bk, kind)
    return qemu_backup(run, d, sock, bk, kind, day), None


def wl_backup_full(run):
    d, sock, bk = backup_setup(run)
    out = run.measure(lambda: dict(zip(("secs", "summary"),
                                       one_backup(run, d, sock, bk, "full",
                                                  0)), bytes=run.ctx.size))
    run.metrics["full backup, 50 % allocated"] = out["secs"]


def random_writes(run, sock, fraction, seed):
    """fraction of the disk in 64 KiB writes at distinct random places,
    through the guest export; returns the bytes written."""
    rng = random.Random(seed)
    clusters = run.ctx.size >> 16
    picks = rng.sample(range(clusters), int(clusters * fraction))
    cmds = []
    for i, k in enumerate(picks):
        cmds += ["-c", "write -P 0x%x %d 64k" % (i % 255 + 1, k << 16)]
    subprocess.run(["qemu-io", "-f", "raw"] + cmds +
                   [clients.nbd_uri(sock, "guest")], check=True,
                   capture_output=True, timeout=600)
    return len(picks) << 16


READ_PER_DIRTY = "incremental: bytes read / dirty bytes (target <= 1.1)"


def wl_backup_incremental(run):
    d, sock, bk = backup_setup(run)
    one_backup(run, d, sock, bk, "full", 0)
    dirty = random_writes(run, sock, 0.05, 1)
    out = run.measure(lambda: dict(zip(("secs", "summary"),
                                       one_backup(run, d, sock, bk,
                                                  "incremental", 1)),
                                   bytes=dirty))
    run.metrics["incremental backup, 5 % random 64k writes"] = out["secs"]
    if out["summary"]:
        s = out["summary"]
        assert s["dirty-bytes"] == dirty, (s, dirty)
        run.metrics[READ_PER_DIRTY] = s["bytes-read"] / s["dirty-bytes"]


# ---- On a disk: cache.direct=on, QEMU with aio=io_uring (or --qemu-aio) --

def disk_file_opts(run):
    """A file node's options on the disk: O_DIRECT; lockstepd with
    aio=io_uring, QEMU with ctx.qemu_aio (io_uring or native)."""
    aio = "io_uring" if run.kind == "lockstep" else run.ctx.qemu_aio
    return {"aio": aio, "cache": {"direct": True}}


def disk_qcow2_args(run, img, read_only=False):
    f = {"driver": "file", "filename": img}
    f.update(disk_file_opts(run))
    return {"driver": "qcow2", "node-name": "disk", "read-only": read_only,
            "file": f}


def wl_disk_qcow2_randread(run):
    # The shared filled image: read-only, so that nothing changes it.
    d, c = run.start("a")
    c.cmd("blockdev-add", disk_qcow2_args(run, run.ctx.disk_filled_qcow2(),
                                          read_only=True))
    sock = run.ctx.path("nbd.sock")
    nbd_start(c, sock)
    export(c, "disk", "disk", writable=False)
    c.close()
    uri = clients.nbd_uri(sock, "disk")
    fio_metric(run, uri, "disk qcow2 randread 4k qd1", "randread", "4k", 1)
    fio_metric(run, uri, "disk qcow2 randread 4k qd16", "randread", "4k", 16)


def wl_disk_qcow2_randwrite(run):
    for qd in (1, 16):
        uri = one_export(run, disk_qcow2_args(run, run.ctx.disk_qcow2("rw")))
        fio_metric(run, uri, "disk qcow2 randwrite 4k qd%d (allocating)" % qd,
                   "randwrite", "4k", qd)
        run.close()
        run.daemons = []


def wl_disk_qcow2_seqwrite(run):
    uri = one_export(run, disk_qcow2_args(run, run.ctx.disk_qcow2("seq")))
    fio_metric(run, uri, "disk qcow2 seqwrite 1M qd4", "write", "1M", 4,
               unit="mibs")


DISK_WRITE_CALLS = ("pwrite64", "pwritev", "pwritev2", "fallocate")


def count_disk_requests(run, uri, cluster_label):
    """The issue's workload: random guest writes of 512 B to 256 KiB, 64
    MiB in all (32), qd1, one flush per 3 writes, the same offsets and
    sizes for both daemons (a fixed seed: with a new seed per run each
    daemon got a workload of its own); the daemon under strace
    with aio=threads so that every request is a system call.  Metrics:
    write requests (pwrite* and fallocate) and flushes per guest write."""
    d = run.daemons[-1]
    out = run.ctx.path("strace")
    st = subprocess.Popen(["strace", "-f", "-qq", "-o", out, "-p",
                           str(d.proc.pid), "-e", "trace=" +
                           ",".join(DISK_WRITE_CALLS + ("fdatasync",))])
    time.sleep(1.0)             # attached to every thread
    r = subprocess.run(["fio", "--name=req", "--ioengine=nbd",
                        "--uri=" + uri, "--rw=randwrite",
                        "--bsrange=512-256k", "--iodepth=1",
                        "--io_size=32M", "--fsync=3", "--randseed=42",
                        "--norandommap", "--output-format=json"],
                       capture_output=True, text=True, timeout=600)
    time.sleep(0.5)
    st.send_signal(2)
    st.wait()
    if r.returncode != 0:
        raise RuntimeError("fio failed: %s" % r.stderr[-2000:])
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    ios = job["write"]["total_ios"]
    writes = flushes = 0
    with open(out) as f:
        for line in f:
            name = line.split(None, 1)[-1].split("(", 1)[0].strip()
            if name in DISK_WRITE_CALLS:
                writes += 1
            elif name == "fdatasync":
                flushes += 1
    run.metrics["disk requests per guest write, %s" % cluster_label] = \
        writes / max(ios, 1)
    run.metrics["disk flushes per guest write, %s" % cluster_label] = \
        flushes / max(ios, 1)


def wl_disk_fleece_guest_write(run):
    guest, _ = fleecing_setup(run, on_disk=True)
    fio_metric(run, guest, "disk guest randwrite 4k qd16, fresh snapshot",
               "randwrite", "4k", 16)


def wl_disk_rep_randwrite(run):
    guest, _, sc = replication_setup(run, on_disk=True)
    sc.close()
    fio_metric(run, guest, "disk replicated randwrite 4k qd16", "randwrite",
               "4k", 16)


# The device's own figure for each disk row (the ceiling): fio with
# ioengine=io_uring and O_DIRECT on the same file system, the same pattern
# and depth; reads from the filled image, writes into a fresh file of the
# images' size (fio fallocates it, as the daemons do new clusters).
DEVICE_JOBS = {
    "disk qcow2 randread 4k qd1": ("randread", "4k", 1),
    "disk qcow2 randread 4k qd16": ("randread", "4k", 16),
    "disk qcow2 randwrite 4k qd1 (allocating)": ("randwrite", "4k", 1),
    "disk qcow2 randwrite 4k qd16 (allocating)": ("randwrite", "4k", 16),
    "disk qcow2 seqwrite 1M qd4": ("write", "1M", 4),
    "disk guest randwrite 4k qd16, fresh snapshot": ("randwrite", "4k", 16),
    "disk replicated randwrite 4k qd16": ("randwrite", "4k", 16),
}


def device_fio(ctx, rw, bs, qd):
    """One fio run on the disk itself: IOPS, or MiB/s for 1M blocks."""
    if rw.endswith("read"):
        target, extra = ctx.disk_filled_qcow2(), ["--readonly"]
    else:
        target, extra = ctx.disk_path("device.raw"), []
    r = subprocess.run(["fio", "--name=device", "--ioengine=io_uring",
                        "--direct=1", "--filename=" + target,
                        "--size=%d" % ctx.disk_size, "--rw=" + rw,
                        "--bs=" + bs, "--iodepth=%d" % qd, "--time_based",
                        "--runtime=%g" % max(ctx.runtime / 2, 2),
                        "--randrepeat=0", "--norandommap",
                        "--output-format=json"] + extra,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("fio failed: %s" % r.stderr[-2000:])
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    side = job["read"] if rw.endswith("read") else job["write"]
    return side["bw_bytes"] / 2**20 if bs == "1M" else side["iops"]


def device_round(ctx, name, rnd, log):
    """The device figures a disk workload's rows need, once per round
    (the first workload of the round that needs a job measures it)."""
    for key, _, _, _ in WORKLOADS[name][2]:
        job = DEVICE_JOBS.get(key)
        if job is None or len(ctx.device.get(job, [])) > rnd:
            continue
        v = device_fio(ctx, *job)
        ctx.device.setdefault(job, []).append(v)
        log("  %s round %d device   fio io_uring %s %s qd%d=%.0f" % (
            name, rnd + 1, job[0], job[1], job[2], v))
        ctx.cleanup()


def wl_disk_requests(run):
    for cluster, label in ((4096, "4k clusters"), (None, "64k clusters")):
        img = run.ctx.disk_qcow2("req", cluster)
        args = disk_qcow2_args(run, img)
        args["file"]["aio"] = "threads"
        uri = one_export(run, args)
        count_disk_requests(run, uri, label)
        run.close()
        run.daemons = []


def null_args():
    return {"driver": "null-co", "node-name": "disk", "size": GiB,
            "read-zeroes": True}


def wl_null(run):
    uri = one_export(run, null_args())
    fio_metric(run, uri, "null-co randread 4k qd1", "randread", "4k", 1)
    fio_metric(run, uri, "null-co randread 4k qd16", "randread", "4k", 16)
    fio_metric(run, uri, "null-co randwrite 4k qd16", "randwrite", "4k", 16)
    fio_metric(run, uri, "null-co seqwrite 1M qd4", "write", "1M", 4,
               unit="mibs")


def nbdkit_memory_ceiling(ctx):
    """nbdcopy from nbdkit's memory plugin, filled first so that nothing is
    skipped as sparse: the ceiling for snapshot reads."""
    sock = ctx.path("nbdkit.sock")
    pidfile = ctx.path("nbdkit.pid")
    p = subprocess.Popen(["nbdkit", "-f", "-U", sock, "-P", pidfile,
                          "memory", str(ctx.size)])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(pidfile) and time.monotonic() < deadline:
            time.sleep(0.02)
        src = ctx.path("fill.raw")
        with open(src, "wb") as f:
            f.write(b"\x5a" * ctx.size)
        subprocess.run(["nbdcopy", src, clients.nbd_uri(sock, "")],
                       check=True)
        os.unlink(src)
        return clients.nbdcopy(clients.nbd_uri(sock, ""), ctx.size)["mibs"]
    finally:
        p.terminate()
        p.wait()


# name -> (function, the two daemon kinds, metrics: (key, unit, better,
#          target ratio or None))
WORKLOADS = {
    "qcow2-randread": (wl_qcow2_randread, ("lockstep", "qsd"), [
        ("qcow2 randread 4k qd1", "IOPS", "high", 1.5),
        ("qcow2 randread 4k qd16", "IOPS", "high", 1.5)]),
    "qcow2-randwrite": (wl_qcow2_randwrite, ("lockstep", "qsd"), [
        ("qcow2 randwrite 4k qd1 (allocating)", "IOPS", "high", 1.5),
        ("qcow2 randwrite 4k qd16 (allocating)", "IOPS", "high", 1.5)]),
    "qcow2-seqwrite": (wl_qcow2_seqwrite, ("lockstep", "qsd"), [
        ("qcow2 seqwrite 1M qd4", "MiB/s", "high", 1.2)]),
    "fleece-read": (wl_fleece_read, ("lockstep", "qsd"), [
        ("snapshot read (nbdcopy), idle guest", "MiB/s", "high", 1.15)]),
    "fleece-read-busy": (wl_fleece_read_busy, ("lockstep", "qsd"), [
        ("snapshot read (nbdcopy), guest writing", "MiB/s", "high", 1.15)]),
    "fleece-read-tls": (wl_fleece_read_tls, ("lockstep", "qsd"), [
        ("snapshot read (nbdcopy), idle guest, TLS", "MiB/s", "high",
         1.2)]),
    "fleece-guest-write": (wl_fleece_guest_write, ("lockstep", "qsd"), [
        ("guest randwrite 4k qd16, fresh snapshot", "IOPS", "high", 1.5)]),
    "rep-randwrite": (wl_rep_randwrite, ("lockstep", "qemu"), [
        ("replicated randwrite 4k qd16", "IOPS", "high", 2.0)]),
    "rep-seqwrite": (wl_rep_seqwrite, ("lockstep", "qemu"), [
        ("replicated seqwrite 1M qd4", "MiB/s", "high", 2.0)]),
    "rep-seqwrite-tls": (wl_rep_seqwrite_tls, ("lockstep", "qemu"), [
        ("replicated seqwrite 1M qd4, TLS link", "MiB/s", "high", 1.2)]),
    "rep-checkpoint": (wl_rep_checkpoint, ("lockstep", "qemu"), [
        ("checkpoint latency after 256M+256M", "ms", "low", 0.5),
        ("failover time after 256M+256M", "ms", "low", None)]),
    "vhost-randread": (wl_vhost_randread, ("lockstep", "qsd"), [
        ("vhost-user-blk randread 4k qd1, 1 queue", "IOPS", "high", 1.3),
        ("vhost-user-blk randread 4k qd16, 1 queue", "IOPS", "high", 1.5),
        ("vhost-user-blk randread 4k qd16, 2 queues", "IOPS", "high", 1.5)]),
    "vhost-randwrite": (wl_vhost_randwrite, ("lockstep", "qsd"), [
        ("vhost-user-blk randwrite 4k qd1, 1 queue (allocating)", "IOPS",
         "high", 1.3),
        ("vhost-user-blk randwrite 4k qd16, 1 queue (allocating)", "IOPS",
         "high", 1.5),
        ("vhost-user-blk randwrite 4k qd16, 2 queues (allocating)", "IOPS",
         "high", 1.5)]),
    "vhost-seqwrite": (wl_vhost_seqwrite, ("lockstep", "qsd"), [
        ("vhost-user-blk seqwrite 1M qd4", "MiB/s", "high", None)]),
    "vhost-fleece-guest-write": (wl_vhost_fleece_guest_write,
                                 ("lockstep", "qsd"), [
        ("vhost-user-blk guest randwrite 4k qd16, fresh snapshot", "IOPS",
         "high", 1.5)]),
    "vhost-vs-nbd": (wl_vhost_vs_nbd, ("lockstep", "lockstep-nbd"), [
        ("randread 4k qd16: vhost-user-blk vs NBD", "IOPS", "high", 2.0),
        ("randwrite 4k qd16: vhost-user-blk vs NBD", "IOPS", "high", 2.0)]),
    "backup-full": (wl_backup_full, ("lockstep", "qsd"), [
        ("full backup, 50 % allocated", "s", "low", 0.67)]),
    "backup-incremental": (wl_backup_incremental, ("lockstep", "qsd"), [
        ("incremental backup, 5 % random 64k writes", "s", "low", 0.67),
        (READ_PER_DIRTY, "×", "low", None)]),
    "disk-qcow2-randread": (wl_disk_qcow2_randread, ("lockstep", "qsd"), [
        ("disk qcow2 randread 4k qd1", "IOPS", "high", 1.3),
        ("disk qcow2 randread 4k qd16", "IOPS", "high", 1.3)]),
    "disk-qcow2-randwrite": (wl_disk_qcow2_randwrite, ("lockstep", "qsd"), [
        ("disk qcow2 randwrite 4k qd1 (allocating)", "IOPS", "high", 1.3),
        ("disk qcow2 randwrite 4k qd16 (allocating)", "IOPS", "high", 1.3)]),
    "disk-qcow2-seqwrite": (wl_disk_qcow2_seqwrite, ("lockstep", "qsd"), [
        ("disk qcow2 seqwrite 1M qd4", "MiB/s", "high", 1.3)]),
    "disk-fleece-guest-write": (wl_disk_fleece_guest_write,
                                ("lockstep", "qsd"), [
        ("disk guest randwrite 4k qd16, fresh snapshot", "IOPS", "high",
         1.3)]),
    "disk-rep-randwrite": (wl_disk_rep_randwrite, ("lockstep", "qemu"), [
        ("disk replicated randwrite 4k qd16", "IOPS", "high", 1.3)]),
    "disk-requests": (wl_disk_requests, ("lockstep", "qsd"), [
        ("disk requests per guest write, 4k clusters", "×", "low", 1.0),
        ("disk flushes per guest write, 4k clusters", "×", "low", None),
        ("disk requests per guest write, 64k clusters", "×", "low", 1.0),
        ("disk flushes per guest write, 64k clusters", "×", "low", None)]),
    "null": (wl_null, ("lockstep", "qsd"), [
        ("null-co randread 4k qd1", "IOPS", "high", None),
        ("null-co randread 4k qd16", "IOPS", "high", None),
        ("null-co randwrite 4k qd16", "IOPS", "high", None),
        ("null-co seqwrite 1M qd4", "MiB/s", "high", None)]),
}


# Workloads whose figures do not move between rounds (counts): one round.
ONE_ROUND = ("disk-requests",)


def run_workload(ctx, name, rounds, results, log):
    fn, kinds, _ = WORKLOADS[name]
    t0 = time.time()
    if name in ONE_ROUND:
        rounds = 1
    for r in range(rounds):
        for kind in kinds:
            run = Run(ctx, kind)
            try:
                fn(run)
            except Exception as e:  # noqa: BLE001 - report, go on
                log("  %s round %d %s: FAILED: %s" % (name, r + 1, kind, e))
                run.metrics = {}
            finally:
                try:
                    run.close()
                except Exception as e:  # noqa: BLE001
                    log("  %s: stop: %s" % (kind, e))
                ctx.cleanup()
            side = "lockstep" if kind == "lockstep" else "qemu"
            res = results.setdefault(name, {"lockstep": [], "qemu": [],
                                            "qemu_kind": kinds[1]})
            res[side].append(run)
            log("  %s round %d %-8s %s  cpu %.2fs rss %d MiB" % (
                name, r + 1, kind,
                ", ".join("%s=%.0f" % (k, v) for k, v in run.metrics.items()),
                run.cpu, run.rss >> 10))
        if name.startswith("disk-"):
            try:
                device_round(ctx, name, r, log)
            except Exception as e:  # noqa: BLE001 - report, go on
                log("  %s round %d device: FAILED: %s" % (name, r + 1, e))
        if name in ("fleece-read", "fleece-read-busy"):
            # The ceiling in the same round, so that it sees the same load.
            ctx.ceilings.append(nbdkit_memory_ceiling(ctx))
            log("  %s round %d nbdkit   memory plugin=%.0f" % (
                name, r + 1, ctx.ceilings[-1]))
            ctx.cleanup()
    log("  %s: %.0f s" % (name, time.time() - t0))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", action="append", default=[],
                    help="workload name (repeatable): " +
                    ", ".join(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of each workload (default 3; the disk-* "
                    "workloads: see --disk-rounds)")
    ap.add_argument("--runtime", type=float, default=6.0,
                    help="seconds per fio run")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--build", default=os.path.join(TOP, "build-bench"))
    ap.add_argument("--tmp", default="/dev/shm")
    ap.add_argument("--disk", default="/var/tmp",
                    help="disk-backed directory for the disk-* workloads")
    ap.add_argument("--disk-size-mib", type=int, default=4096,
                    help="image size in the disk-* workloads")
    ap.add_argument("--disk-rounds", type=int, default=None,
                    help="rounds of the disk-* workloads (default: "
                    "--rounds if given, else 2: a round of them takes "
                    "about 5 minutes, more than half of it deleting the "
                    "written images, which a file system mounted with "
                    "discard trims extent by extent)")
    ap.add_argument("--qemu-aio", default="io_uring",
                    choices=("io_uring", "native"),
                    help="QEMU's aio mode in the disk-* workloads")
    ap.add_argument("--no-docs", action="store_true",
                    help="print the table only (always so with --only)")
    args = ap.parse_args()
    if args.disk_rounds is None:
        args.disk_rounds = args.rounds or 2
    if args.rounds is None:
        args.rounds = 3
    for w in args.only:
        if w not in WORKLOADS:
            ap.error("unknown workload %s" % w)
    names = args.only or list(WORKLOADS)
    st = os.statvfs(args.tmp)
    need = 6 * (args.size_mib << 20)
    if st.f_bavail * st.f_frsize < need:
        sys.exit("bench: %s has less than %d MiB free" % (args.tmp,
                                                         need >> 20))
    work = tempfile.mkdtemp(prefix="lockstep-bench-", dir=args.tmp)
    disk = None
    if any(n.startswith("disk-") for n in names):
        if subprocess.run(["stat", "-f", "-c", "%T", args.disk],
                          capture_output=True, text=True).stdout.strip() \
                in ("", "tmpfs", "ramfs"):
            if args.only:
                sys.exit("bench: --disk %s is not on a disk" % args.disk)
            print("bench: %s is not on a disk: no disk-* workloads"
                  % args.disk)
            names = [n for n in names if not n.startswith("disk-")]
        else:
            disk = tempfile.mkdtemp(prefix="lockstep-bench-", dir=args.disk)
    args.disk = disk or work
    ctx = Ctx(args, work)
    results = {}
    t_start = time.time()
    load0 = os.getloadavg()

    def log(s):
        print(s, flush=True)
    try:
        for name in names:
            log("%s:" % name)
            rounds = args.disk_rounds if name.startswith("disk-") \
                else args.rounds
            run_workload(ctx, name, rounds, results, log)
        ceiling = None
        ceil = ctx.ceilings
        if not ceil and "null" in names:
            ceil = [nbdkit_memory_ceiling(ctx) for _ in range(args.rounds)]
        if ceil:
            ceiling = (statistics.median(ceil), min(ceil), max(ceil))
            log("nbdkit memory nbdcopy: %.0f MiB/s" % ceiling[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if disk:
            shutil.rmtree(disk, ignore_errors=True)
    info = {"rounds": args.rounds, "disk_rounds": args.disk_rounds,
            "runtime": args.runtime,
            "size_mib": args.size_mib, "disk_size_mib": args.disk_size_mib,
            "load": (load0, os.getloadavg()),
            "minutes": (time.time() - t_start) / 60, "ncpu": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rev": os.environ.get("LOCKSTEP_BENCH_REV") or subprocess.run(
                ["git", "-C", TOP, "describe", "--always", "--dirty"],
                capture_output=True, text=True).stdout.strip()}
    rows = report.rows(results, WORKLOADS, names)
    device = {k: ctx.device[j] for k, j in DEVICE_JOBS.items()
              if ctx.device.get(j)}
    print(report.text_table(rows, ceiling))
    if device:
        print(report.device_text(rows, device))
    if not args.only and not args.no_docs:
        report.write_docs(rows, ceiling, info, results, names, device,
                          os.path.join(TOP, "docs", "performance.md"),
                          os.path.join(TOP, "docs", "performance.png"))
        print("wrote docs/performance.md and docs/performance.png")


if __name__ == "__main__":
    main()
