# SPDX-License-Identifier: MIT
"""The FUSE export (export/fuse.c, docs/exports.md) with real programs.

A node exported with type=fuse appears as a regular file at an existing
regular file's path.  The tests use it with plain system calls (read,
write, fallocate, lseek, truncate, fsync), compare what they see with
qemu-io and qemu-img over NBD on the same node, compare the whole
behaviour with qemu-storage-daemon 7.2's FUSE export (fuse_probe.py),
copy a mounted fleecing snapshot with cp --sparse=always and tar -S
while the guest writes and compare with nbdcopy of the same snapshot,
and check that the daemon unmounts on block-export-del, quit, SIGTERM
and a failed start.
"""
import ctypes
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import run
from qmp_client import Daemon, QMPError

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))

FALLOC_KEEP_SIZE = 0x01
FALLOC_PUNCH_HOLE = 0x02
FALLOC_ZERO_RANGE = 0x10

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long,
                           ctypes.c_long]


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def need(*tools):
    for t in tools:
        if not shutil.which(t):
            pytest.skip("%s is not installed" % t)


@pytest.fixture(autouse=True)
def fuse_available():
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing")


def mounts():
    """Mount points of FUSE file systems, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype.startswith("fuse"):
                out.append(fields[4].replace("\\040", " "))
    return out


def is_mounted(path):
    return os.path.abspath(path) in mounts()


@pytest.fixture
def fuse_dir(tmp_dir):
    """tmp_dir; whatever is still mounted below it at the end (a failed
    test) is detached so that the directory can be removed."""
    yield tmp_dir
    for m in mounts():
        if m.startswith(tmp_dir + "/"):
            subprocess.run(["umount", "-l", m], capture_output=True)


def started(daemon):
    """Wait until daemon has processed its command line (its monitor
    answers only from the main loop), so that --export mounts exist."""
    with daemon.client():
        pass
    return daemon


def mountpoint(d, name="disk"):
    path = os.path.join(d, name)
    open(path, "w").close()
    return path


def qemu_img_create(path, fmt, size):
    p = run(["qemu-img", "create", "-q", "-f", fmt, path, str(size)])
    assert p.returncode == 0, p.stderr


def qemu_io(url, cmds, read_only=False):
    argv = ["qemu-io", "-f", "raw"] + (["-r"] if read_only else [])
    for c in cmds:
        argv += ["-c", c]
    p = run(argv + [url])
    return p.stdout + p.stderr


def assert_clean(out):
    assert "failed" not in out and "error" not in out.lower(), out


class Disk:
    """lockstepd with a qcow2 disk (node "disk0"), an NBD server, an NBD
    export "nbd0" of disk0 (unless nbd=False), and QMP; FUSE exports are
    added by the test.  As in qemu-storage-daemon, an NBD export refuses to
    share resizing and a writable FUSE export takes it, so the two never
    serve one node at the same time."""

    def __init__(self, binary, d, size=64 * MiB, fmt="qcow2", extra=(),
                 nbd=True):
        self.dir = d
        self.image = os.path.join(d, "disk." + fmt)
        if fmt == "raw":
            with open(self.image, "wb") as f:
                f.truncate(size)
        else:
            qemu_img_create(self.image, fmt, size)
        self.nbd = os.path.join(d, "nbd.sock")
        self.d = Daemon(binary, d, args=[
            "--blockdev", json.dumps({
                "driver": "file", "node-name": "disk0-file",
                "filename": self.image, "discard": "unmap"}),
            "--blockdev", json.dumps({
                "driver": fmt, "node-name": "disk0", "file": "disk0-file",
                "discard": "unmap"}),
            "--nbd-server", "addr.type=unix,addr.path=%s" % self.nbd,
        ] + (["--export", "type=nbd,id=nbd0,node-name=disk0,writable=on"]
             if nbd else []) + list(extra))
        self.c = self.d.client()

    def add_nbd(self):
        self.c.cmd("block-export-add", {"type": "nbd", "id": "nbd0",
                                        "node-name": "disk0",
                                        "writable": True})

    def del_export(self, id):
        self.c.cmd("block-export-del", {"id": id})
        self.c.wait_event_match("BLOCK_EXPORT_DELETED", id=id)

    def url(self, name="disk0"):
        return "nbd+unix:///%s?socket=%s" % (name, self.nbd)

    def add_fuse(self, mnt, id="fuse0", node="disk0", **kw):
        args = {"type": "fuse", "id": id, "node-name": node,
                "mountpoint": mnt}
        args.update({k.replace("_", "-"): v for k, v in kw.items()})
        self.c.cmd("block-export-add", args)
        assert is_mounted(mnt)

    def close(self):
        self.c.close()
        rc = self.d.stop()
        assert rc == 0, self.d.stderr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.c.close()
            self.d.stop()


def data_ranges_lseek(path):
    """[(start, end)] of data by SEEK_DATA / SEEK_HOLE."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                assert e.errno == 6, e   # ENXIO: no data after off
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            assert end > start
            out.append((start, end))
            off = end
    finally:
        os.close(fd)
    return out


def data_ranges_map(url):
    """[(start, end)] of data per qemu-img map over NBD (block status)."""
    p = run(["qemu-img", "map", "-f", "raw", "--output=json", url])
    assert p.returncode == 0, p.stderr
    out = []
    for e in json.loads(p.stdout):
        if e["data"]:
            if out and out[-1][1] == e["start"]:
                out[-1] = (out[-1][0], e["start"] + e["length"])
            else:
                out.append((e["start"], e["start"] + e["length"]))
    return out


# ---- Reads and writes, against qemu-io over NBD -------------------------

PATTERNS = [(0x11, 0, 64 << 10), (0x22, 1 * MiB + 512, 3000),
            (0x33, 7 * MiB - 4096, 12288), (0x44, 64 * MiB - 4096, 4096)]


def test_read_write_parity_with_nbd(lockstepd, fuse_dir):
    """Bytes written through the file read back over NBD on the same node
    (qemu-io), and the other way round; fsync reaches the image."""
    need("qemu-io", "qemu-img")
    mnt = mountpoint(fuse_dir)
    with Disk(lockstepd, fuse_dir, nbd=False) as s:
        s.add_fuse(mnt, writable=True)
        st = os.stat(mnt)
        assert st.st_size == 64 * MiB and (st.st_mode & 0o777) == 0o600
        fd = os.open(mnt, os.O_RDWR)
        for pat, off, ln in PATTERNS:
            assert os.pwrite(fd, bytes([pat]) * ln, off) == ln
        os.fsync(fd)
        # After fsync the image itself has the data (qcow2 metadata too).
        for pat, off, ln in PATTERNS:
            p = run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c",
                     "read -P 0x%x %d %d" % (pat, off, ln), s.image])
            assert "read %d/%d" % (ln, ln) in p.stdout, p.stdout + p.stderr
        os.close(fd)
        # The writable file holds "resize": NBD comes once it is gone.
        s.del_export("fuse0")
        s.add_nbd()
        for pat, off, ln in PATTERNS:
            out = qemu_io(s.url(), ["read -P 0x%x %d %d" % (pat, off, ln)],
                          read_only=True)
            assert_clean(out)
            assert "read %d/%d" % (ln, ln) in out, out
        # Written over NBD, read through a new (read-only) file.
        assert_clean(qemu_io(s.url(), ["write -P 0x5a 2M 1M",
                                       "write -z 0 4k"]))
        s.add_fuse(mnt)
        with open(mnt, "rb") as f:
            f.seek(2 * MiB)
            assert f.read(MiB) == b"\x5a" * MiB
            f.seek(0)
            assert f.read(8192) == bytes(4096) + b"\x11" * 4096
        # Reads at and past the end are short.
        with open(mnt, "rb") as f:
            f.seek(64 * MiB - 100)
            assert f.read(4096) == b"\x44" * 100
            assert f.read(4096) == b""
    p = run(["qemu-img", "check", s.image])
    assert p.returncode == 0, p.stdout + p.stderr


def test_writable_file_and_nbd_exclude_each_other(lockstepd, fuse_dir):
    """An NBD export refuses to share resizing and a writable FUSE export
    takes it: one node is never served by both (qemu-storage-daemon 7.2
    refuses with the same message); a read-only file is fine."""
    mnt = mountpoint(fuse_dir)
    with Disk(lockstepd, fuse_dir) as s:
        e = s.c.error("block-export-add", {
            "type": "fuse", "id": "w", "node-name": "disk0",
            "mountpoint": mnt, "writable": True})
        assert e["desc"] == (
            "Permission conflict on node 'disk0': permissions 'resize' are "
            "both required by an unnamed block device (uses node 'disk0' as "
            "'root' child) and unshared by an unnamed block device (uses "
            "node 'disk0' as 'root' child).")
        assert not is_mounted(mnt)
        s.add_fuse(mnt)
        assert is_mounted(mnt)


def test_cached_file_sees_other_writers(lockstepd, fuse_dir):
    """A file kept open sees writes made over NBD once its attributes time
    out: mtime follows the node's content, the kernel drops stale
    pages."""
    need("qemu-io")
    mnt = mountpoint(fuse_dir)
    with Disk(lockstepd, fuse_dir) as s:
        s.add_fuse(mnt)
        with open(mnt, "rb", buffering=0) as f:
            assert f.read(4096) == bytes(4096)
            t0 = os.fstat(f.fileno()).st_mtime_ns
            time.sleep(1.2)
            assert os.fstat(f.fileno()).st_mtime_ns == t0
            assert_clean(qemu_io(s.url(), ["write -P 0x77 0 4k"]))
            time.sleep(1.2)          # FUSE_ATTR_TIMEOUT
            assert os.fstat(f.fileno()).st_mtime_ns > t0
            f.seek(0)
            assert f.read(4096) == b"\x77" * 4096


# ---- fallocate, SEEK_DATA / SEEK_HOLE, truncate --------------------------

def test_fallocate_and_seek(lockstepd, fuse_dir):
    """Punch hole and zero range read back as zeroes and free space;
    SEEK_DATA / SEEK_HOLE give the same data ranges as block status over
    NBD."""
    need("qemu-img", "qemu-io")
    mnt = mountpoint(fuse_dir)
    with Disk(lockstepd, fuse_dir, nbd=False) as s:
        s.add_fuse(mnt, writable=True)
        assert data_ranges_lseek(mnt) == []
        fd = os.open(mnt, os.O_RDWR)
        try:
            os.pwrite(fd, b"\xaa" * (4 * MiB), 0)
            os.pwrite(fd, b"\xbb" * MiB, 32 * MiB)
            os.fsync(fd)
            assert data_ranges_lseek(mnt) == [(0, 4 * MiB),
                                              (32 * MiB, 33 * MiB)]
            used = os.stat(s.image).st_blocks
            fallocate(fd, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE, MiB, MiB)
            fallocate(fd, FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE, 3 * MiB,
                      MiB)
            fallocate(fd, FALLOC_ZERO_RANGE, 32 * MiB + 4096, 4096)
            assert os.pread(fd, MiB, MiB) == bytes(MiB)
            assert os.pread(fd, MiB, 3 * MiB) == bytes(MiB)
            assert os.pread(fd, 12288, 32 * MiB) == \
                b"\xbb" * 4096 + bytes(4096) + b"\xbb" * 4096
            assert os.pread(fd, MiB, 2 * MiB) == b"\xaa" * MiB
            os.fsync(fd)
            lseek = data_ranges_lseek(mnt)
            assert (MiB, 2 * MiB) not in lseek and lseek[0] == (0, MiB)
            # discard=unmap: the punched megabyte left the image.
            assert os.stat(s.image).st_blocks < used
            # Mode 0 inside the file cannot allocate (QEMU's answer) ...
            with pytest.raises(OSError) as e:
                fallocate(fd, 0, 0, 4096)
            assert e.value.errno == 95      # EOPNOTSUPP
            # ... at the end it grows the file.
            fallocate(fd, 0, 64 * MiB, MiB)
            assert os.fstat(fd).st_size == 65 * MiB
            assert os.pread(fd, MiB, 64 * MiB) == bytes(MiB)
        finally:
            os.close(fd)
        # Block status over NBD (once the writable file is gone) agrees.
        lseek = data_ranges_lseek(mnt)
        s.del_export("fuse0")
        s.add_nbd()
        assert lseek == data_ranges_map(s.url())
        assert "65 MiB" in run(["qemu-img", "info", "-f", "raw",
                                s.url()]).stdout


def test_punch_hole_without_discard(lockstepd, fuse_dir):
    """With discard=ignore (the default) a punched hole still reads back
    as zeroes (qemu-storage-daemon 7.2 keeps the old bytes)."""
    mnt = mountpoint(fuse_dir)
    img = os.path.join(fuse_dir, "r.img")
    with open(img, "wb") as f:
        f.write(b"\xaa" * MiB)
    d = started(Daemon(lockstepd, fuse_dir, args=[
        "--blockdev", "driver=file,node-name=r,filename=%s" % img,
        "--export", "type=fuse,id=f,node-name=r,mountpoint=%s,writable=on"
        % mnt]))
    try:
        fd = os.open(mnt, os.O_RDWR)
        fallocate(fd, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE, 4096, 8192)
        os.close(fd)
        with open(mnt, "rb") as f:
            data = f.read()
        assert data == b"\xaa" * 4096 + bytes(8192) + \
            b"\xaa" * (MiB - 12288)
    finally:
        assert d.stop() == 0, d.stderr
    with open(img, "rb") as f:
        assert f.read(16384) == b"\xaa" * 4096 + bytes(8192) + b"\xaa" * 4096


def test_truncate_and_growable(lockstepd, fuse_dir):
    """growable: writes past the end grow the node; writable: truncate
    resizes; read-only: EACCES.  The size is the node's everywhere."""
    need("qemu-img")
    m1, m2, m3 = (mountpoint(fuse_dir, n) for n in ("g", "w", "r"))
    raw = os.path.join(fuse_dir, "g.img")
    with open(raw, "wb") as f:
        f.truncate(MiB)
    with Disk(lockstepd, fuse_dir, nbd=False, extra=[
            "--blockdev", "driver=file,node-name=g,filename=%s" % raw]) as s:
        s.add_fuse(m1, id="g", node="g", writable=True, growable=True)
        s.add_fuse(m2, id="w", writable=True)
        fd = os.open(m1, os.O_RDWR)
        assert os.pwrite(fd, b"\x42" * 8192, 2 * MiB) == 8192
        assert os.fstat(fd).st_size == 2 * MiB + 8192
        assert os.path.getsize(raw) == 2 * MiB + 8192
        assert os.pread(fd, MiB, MiB) == bytes(MiB)
        os.ftruncate(fd, 4096)
        assert os.path.getsize(raw) == 4096
        os.close(fd)
        # Parallel growing writes never lose each other's data.
        def grow(i):
            f = os.open(m1, os.O_RDWR)
            for k in range(16):
                off = MiB + (k * 8 + i) * 65536
                os.pwrite(f, bytes([i + 1]) * 65536, off)
            os.close(f)
        ts = [threading.Thread(target=grow, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        with open(m1, "rb") as f:
            for k in range(16):
                for i in range(8):
                    f.seek(MiB + (k * 8 + i) * 65536)
                    assert f.read(65536) == bytes([i + 1]) * 65536
        # Not growable: short at the end, EIO past it; truncate resizes
        # (QEMU: writable exports may resize).
        fd = os.open(m2, os.O_RDWR)
        assert os.pwrite(fd, b"x" * 8192, 64 * MiB - 4096) == 4096
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x" * 8192, 64 * MiB)
        assert e.value.errno == 5
        os.ftruncate(fd, 80 * MiB)
        os.close(fd)
        s.del_export("w")
        s.add_nbd()
        info = json.loads(run(["qemu-img", "info", "--output=json", "-f",
                               "raw", s.url()]).stdout)
        assert info["virtual-size"] == 80 * MiB
        s.add_fuse(m3, id="r")
        with pytest.raises(OSError) as e:
            os.truncate(m3, MiB)
        assert e.value.errno == 13
        with pytest.raises(OSError) as e:
            os.chmod(m3, 0o600)
        assert e.value.errno == 30          # EROFS
        fd = os.open(m3, os.O_RDWR)         # root may open it ...
        with pytest.raises(OSError) as e:   # ... but not write
            os.pwrite(fd, b"x", 0)
        assert e.value.errno == 13
        os.close(fd)


# ---- Behaviour and messages as qemu-storage-daemon's ---------------------

def probe_daemon(binary, d):
    """fuse_probe.py against binary with a writable raw export and a
    read-only qcow2 export; returns its answers."""
    os.makedirs(d)
    qemu_img_create(os.path.join(d, "d.qcow2"), "qcow2", 64 * MiB)
    with open(os.path.join(d, "r.img"), "wb") as f:
        f.truncate(MiB)
    rw, ro = mountpoint(d, "rw"), mountpoint(d, "ro")
    daemon = Daemon(binary, d, args=[
        "--blockdev", "driver=file,node-name=f,filename=%s/d.qcow2" % d,
        "--blockdev", "driver=qcow2,node-name=d,file=f",
        "--blockdev", "driver=file,node-name=r,filename=%s/r.img" % d,
        "--export", "type=fuse,id=e1,node-name=r,mountpoint=%s,"
        "writable=on" % rw,
        "--export", "type=fuse,id=e2,node-name=d,mountpoint=%s" % ro])
    try:
        for _ in range(100):    # QSD mounts after its monitor is up
            if is_mounted(rw) and is_mounted(ro):
                break
            time.sleep(0.05)
        p = run([sys.executable, os.path.join(HERE, "fuse_probe.py"), rw,
                 ro], timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    finally:
        daemon.stop()
        assert not is_mounted(rw) and not is_mounted(ro)


def test_behaviour_like_qsd(lockstepd, qsd, fuse_dir):
    """Every system call of fuse_probe.py gets the same answer from
    lockstepd's FUSE export as from qemu-storage-daemon's."""
    theirs = probe_daemon(qsd, os.path.join(fuse_dir, "qsd"))
    ours = probe_daemon(lockstepd, os.path.join(fuse_dir, "ours"))
    assert ours == theirs


def export_errors(binary, d):
    os.makedirs(d)
    os.mkdir(os.path.join(d, "dir"))
    mnt = mountpoint(d, "m")
    img = os.path.join(d, "r.img")
    with open(img, "wb") as f:
        f.truncate(MiB)
    daemon = Daemon(binary, d, args=[
        "--blockdev", "driver=file,node-name=r,filename=%s" % img,
        "--blockdev", "driver=file,node-name=ro,filename=%s,read-only=on"
        % img])
    base = {"type": "fuse", "id": "e", "node-name": "r", "mountpoint": mnt}
    cases = [
        {"mountpoint": os.path.join(d, "nonexistent")},
        {"mountpoint": os.path.join(d, "dir")},
        {"mountpoint": None},
        {"name": "x"},
        {"allow-other": "maybe"},
        {"growable": "on"},
        {"node-name": "nonode"},
        {"node-name": "ro", "writable": True},
        {"id": None},
        {},                      # succeeds
        {"id": "e2"},            # the same mount point again
        {},                      # the same id again
    ]
    descs = []
    try:
        with daemon.client() as c:
            for case in cases:
                args = dict(base)
                args.update(case)
                args = {k: v for k, v in args.items() if v is not None}
                r = c.execute("block-export-add", args)
                descs.append(r["error"]["desc"].replace(d, "D")
                             if "error" in r else "ok")
            descs.append(c.cmd("query-block-exports"))
            c.cmd("block-export-del", {"id": "e"})
            descs.append(c.wait_event("BLOCK_EXPORT_DELETED")["data"])
            r = c.execute("block-export-del", {"id": "e"})
            descs.append(r["error"]["desc"])
    finally:
        daemon.stop()
    return descs


def test_errors_like_qsd(lockstepd, qsd, fuse_dir):
    theirs = export_errors(qsd, os.path.join(fuse_dir, "qsd"))
    ours = export_errors(lockstepd, os.path.join(fuse_dir, "ours"))
    assert ours == theirs
    assert ours[1] == "'D/dir' is not a regular file"
    assert ours[10] == "There already is a FUSE export on 'D/m'"


def test_same_file_by_another_path(lockstepd, fuse_dir):
    """A second export on a mounted file under another spelling of its path
    is refused (qemu-storage-daemon 7.2 deadlocks on it: its main thread
    stats its own mount)."""
    mnt = mountpoint(fuse_dir)
    link = os.path.join(fuse_dir, "link")
    os.symlink(mnt, link)
    with Disk(lockstepd, fuse_dir) as s:
        s.add_fuse(mnt)
        for other in (os.path.join(fuse_dir, ".", "disk"), link):
            e = s.c.error("block-export-add", {
                "type": "fuse", "id": "e2", "node-name": "disk0",
                "mountpoint": other})
            assert e["desc"] == "There already is a FUSE export on '%s'" \
                % other
        assert [x["id"] for x in s.c.cmd("query-block-exports")] == \
            ["nbd0", "fuse0"]


# ---- A fleecing snapshot copied with file tools --------------------------

def guest_writer(url, stop, seed=1):
    """Write 64 KiB pieces at random places of the guest disk until stop
    is set; returns the thread."""
    import random

    import nbd

    def loop():
        h = nbd.NBD()
        h.connect_uri(url)
        rnd = random.Random(seed)
        size = h.get_size()
        n = 0
        while not stop.is_set():
            off = rnd.randrange(0, size // 65536) * 65536
            h.pwrite(bytes([0x80 | (n & 0x7f)]) * 65536, off)
            n += 1
        h.flush()
        h.shutdown()
        loop.count = n
    loop.count = 0
    t = threading.Thread(target=loop)
    t.loop = loop
    t.start()
    return t


def test_fleecing_snapshot_cp_and_tar(lockstepd, fuse_dir):
    """A fleecing snapshot mounted read-only through FUSE is copied with
    cp --sparse=always and tar -S while the guest writes the live disk;
    both equal nbdcopy of the same snapshot over NBD, and the snapshot as
    it was."""
    need("nbdcopy", "tar")
    pytest.importorskip("nbd")
    size = 64 * MiB
    base = [(0x5d, 0, 64 << 10), (0xd5, 1 * MiB, 64 << 10),
            (0xdc, 32 * MiB, 1 * MiB), (0xcd, size - (64 << 10), 64 << 10)]
    mnt = mountpoint(fuse_dir, "snap.raw")
    with Disk(lockstepd, fuse_dir, size=size) as s:
        for pat, off, ln in base:
            assert_clean(qemu_io(s.url(), ["write -P 0x%x %d %d"
                                           % (pat, off, ln)]))
        temp = os.path.join(fuse_dir, "temp.qcow2")
        qemu_img_create(temp, "qcow2", size)
        info = s.c.cmd("fleecing-start", {
            "id": "fl", "node": "disk0",
            "temp": {"driver": "qcow2", "node-name": "fl-temp",
                     "file": {"driver": "file", "filename": temp}}})
        s.add_fuse(mnt, id="fl-fuse", node=info["snapshot-access"])
        st = os.stat(mnt)
        assert st.st_size == size and (st.st_mode & 0o777) == 0o400
        stop = threading.Event()
        writer = guest_writer(s.url(), stop)
        try:
            time.sleep(0.3)
            cp_out = os.path.join(fuse_dir, "cp.raw")
            p = run(["cp", "--sparse=always", mnt, cp_out])
            assert p.returncode == 0, p.stderr
            tar = os.path.join(fuse_dir, "snap.tar")
            # tar fails with "file changed as we read it" when the times
            # or size move: a snapshot's do not.
            p = run(["tar", "-S", "-cf", tar, "-C", fuse_dir, "snap.raw"])
            assert p.returncode == 0, p.stdout + p.stderr
            nbd_out = os.path.join(fuse_dir, "nbd.raw")
            p = run(["nbdcopy", s.url(info["export-name"]), nbd_out])
            assert p.returncode == 0, p.stderr
        finally:
            stop.set()
            writer.join()
        assert writer.loop.count > 0
        # The snapshot's users go first: after fleecing-stop they would
        # read the live disk where nothing was copied.
        e = s.c.error("fleecing-stop", {"id": "fl"})
        assert e["desc"] == "Node 'fl-access' is in use by export " \
            "'fl-fuse'; remove that first"
        assert [f["id"] for f in s.c.cmd("query-fleecing")] == ["fl"]
        s.c.cmd("block-export-del", {"id": "fl-fuse"})
        assert not is_mounted(mnt)
        s.c.cmd("fleecing-stop", {"id": "fl"})
    expect = bytearray(size)
    for pat, off, ln in base:
        expect[off:off + ln] = bytes([pat]) * ln
    untar = os.path.join(fuse_dir, "untar")
    os.mkdir(untar)
    p = run(["tar", "-xf", tar, "-C", untar])
    assert p.returncode == 0, p.stderr
    for path in (cp_out, nbd_out, os.path.join(untar, "snap.raw")):
        with open(path, "rb") as f:
            assert f.read() == expect, path
    # cp made holes where the snapshot is zero.
    assert os.stat(cp_out).st_blocks * 512 < 8 * MiB


# ---- Threads ------------------------------------------------------------

@pytest.mark.serial       # wall-clock limits
def test_slow_requests_run_in_parallel(lockstepd, fuse_dir):
    """Reads that sleep (null-co latency) run on several threads: eight of
    200 ms finish in well under 8 x 200 ms."""
    mnt = mountpoint(fuse_dir)
    d = started(Daemon(lockstepd, fuse_dir, args=[
        "--blockdev", "driver=null-co,node-name=slow,size=64M,"
        "latency-ns=200000000,read-zeroes=on",
        "--export", "type=fuse,id=f,node-name=slow,mountpoint=%s" % mnt]))
    # Opened first: an open waits for pages being read (the kernel
    # invalidates the file's cache at open).
    fds = [os.open(mnt, os.O_RDONLY) for _ in range(8)]
    try:
        def read(i):
            assert os.pread(fds[i], 4096, i * 4 * MiB) == bytes(4096)
        ts = [threading.Thread(target=read, args=(i,)) for i in range(8)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.monotonic() - t0
        assert elapsed < 0.8, elapsed
    finally:
        for fd in fds:
            os.close(fd)
        assert d.stop() == 0, d.stderr


# ---- Unmounting ---------------------------------------------------------

def test_unmount_on_del_quit_and_signals(lockstepd, fuse_dir):
    """block-export-del unmounts (files still open get ENOTCONN), and so do
    quit, SIGTERM, SIGINT and a start that fails on a later option."""
    m = [mountpoint(fuse_dir, "m%d" % i) for i in range(3)]
    with Disk(lockstepd, fuse_dir, nbd=False) as s:
        s.add_fuse(m[0], id="a")
        s.add_fuse(m[1], id="b", writable=True)
        fd = os.open(m[0], os.O_RDONLY)
        s.c.cmd("block-export-del", {"id": "a"})    # safe: still deletes
        assert s.c.wait_event("BLOCK_EXPORT_DELETED")["data"] == {"id": "a"}
        assert not is_mounted(m[0]) and is_mounted(m[1])
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 0)
        assert e.value.errno == 107                 # ENOTCONN
        with pytest.raises(OSError) as e:           # the flush at close
            os.close(fd)
        assert e.value.errno == 107
        assert os.path.getsize(m[0]) == 0           # the file again
        s.c.cmd("quit")
        assert s.d.proc.wait(timeout=20) == 0
        assert not is_mounted(m[1])
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = started(Daemon(lockstepd, fuse_dir, args=[
            "--blockdev", "driver=null-co,node-name=n,size=1M",
            "--export", "type=fuse,id=f,node-name=n,mountpoint=%s"
            % m[2]]))
        assert is_mounted(m[2])
        fd = os.open(m[2], os.O_RDONLY)      # an open file does not hold
        d.proc.send_signal(sig)             # the daemon up
        assert d.proc.wait(timeout=20) == 0
        assert not is_mounted(m[2]), sig
        with pytest.raises(OSError):
            os.close(fd)
        d.stop()
    p = run([lockstepd,
             "--blockdev", "driver=null-co,node-name=n,size=1M",
             "--export", "type=fuse,id=f,node-name=n,mountpoint=%s" % m[2],
             "--blockdev", "driver=nope"])
    assert p.returncode == 1 and "driver" in p.stderr
    assert not is_mounted(m[2])


def test_sigkill_leaves_a_dead_mount(lockstepd, fuse_dir):
    """What docs/exports.md says about SIGKILL: the mount stays, dead
    (ENOTCONN), until fusermount3 -u."""
    need("fusermount3")
    mnt = mountpoint(fuse_dir)
    d = started(Daemon(lockstepd, fuse_dir, args=[
        "--blockdev", "driver=null-co,node-name=n,size=1M",
        "--export", "type=fuse,id=f,node-name=n,mountpoint=%s" % mnt]))
    d.proc.kill()
    d.stop()
    assert is_mounted(mnt)
    with pytest.raises(OSError) as e:
        os.open(mnt, os.O_RDONLY)
    assert e.value.errno == 107
    p = run(["fusermount3", "-u", mnt])
    assert p.returncode == 0, p.stderr
    assert not is_mounted(mnt) and os.path.getsize(mnt) == 0


# ---- allow-other ----------------------------------------------------------

def as_nobody(argv):
    return run(["runuser", "-u", "nobody", "--"] + argv)


@pytest.fixture
def open_dir():
    """A directory every user may enter (tmp_dir's parents are 0700)."""
    d = tempfile.mkdtemp(prefix="lockstep-fuse-")
    os.chmod(d, 0o755)
    yield d
    for m in mounts():
        if m.startswith(d + "/"):
            subprocess.run(["umount", "-l", m], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def test_allow_other(lockstepd, open_dir):
    """Without allow_other no other user reaches the file and its mode
    cannot open it to them; with it (and chmod) they can read."""
    need("runuser")
    pwd.getpwnam("nobody")
    m_on, m_off = mountpoint(open_dir, "on"), mountpoint(open_dir, "off")
    read = [sys.executable, "-c", "import sys; open(sys.argv[1], 'rb')"
            ".read(1)"]
    d = started(Daemon(lockstepd, open_dir, args=[
        "--blockdev", "driver=null-co,node-name=n,size=1M,read-zeroes=on",
        "--export", "type=fuse,id=a,node-name=n,mountpoint=%s,"
        "allow-other=on" % m_on,
        "--export", "type=fuse,id=b,node-name=n,mountpoint=%s,"
        "allow-other=off" % m_off]))
    try:
        with pytest.raises(OSError) as e:
            os.chmod(m_off, 0o644)
        assert e.value.errno == 1                   # EPERM
        assert as_nobody(read + [m_off]).returncode != 0
        assert as_nobody(read + [m_on]).returncode != 0    # mode 0400
        os.chmod(m_on, 0o444)
        p = as_nobody(read + [m_on])
        assert p.returncode == 0, p.stderr
    finally:
        assert d.stop() == 0, d.stderr


def test_allow_other_as_user(lockstepd, open_dir):
    """As a user without user_allow_other in /etc/fuse.conf: on fails with
    a message saying so, auto falls back to off."""
    need("runuser", "fusermount3")
    st = os.stat("/dev/fuse")
    if not st.st_mode & 0o006:
        pytest.skip("/dev/fuse is not open to other users here")
    with open("/etc/fuse.conf") as f:
        if any(ln.strip() == "user_allow_other" for ln in f):
            pytest.skip("user_allow_other is set in /etc/fuse.conf")
    mnt = mountpoint(open_dir)
    os.chown(mnt, pwd.getpwnam("nobody").pw_uid, -1)
    base = [lockstepd, "--blockdev", "driver=null-co,node-name=n,size=1M",
            "--export", "type=fuse,id=f,node-name=n,mountpoint=%s" % mnt]
    p = as_nobody(base[:-1] + [base[-1] + ",allow-other=on", "--help"])
    assert p.returncode == 1
    assert "Failed to mount FUSE session to export: allow-other=on needs " \
        "'user_allow_other' in /etc/fuse.conf" in p.stderr
    p = as_nobody(base[:-1] + [base[-1] + ",allow-other=auto", "--help"])
    assert p.returncode == 0, p.stderr
    assert not is_mounted(mnt)
