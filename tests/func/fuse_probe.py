# SPDX-License-Identifier: MIT
"""What a program sees through two FUSE exports, as JSON on stdout.

Usage: fuse_probe.py RW RO
  RW: a writable, not growable export of a 1 MiB raw file node
  RO: a read-only export of an empty 64 MiB qcow2 node

test_fuse_export.py runs it against lockstepd and qemu-storage-daemon
and compares the answers.  It runs in a process of its own so that a
hung export cannot hang the test runner (the caller has a timeout).
"""
import ctypes
import json
import mmap
import os
import sys

MiB = 1 << 20
FALLOC_KEEP_SIZE = 0x01
FALLOC_PUNCH_HOLE = 0x02
FALLOC_COLLAPSE_RANGE = 0x08
FALLOC_ZERO_RANGE = 0x10

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long,
                           ctypes.c_long]


def outcome(fn, *args):
    """"ok", a value, or the errno name of the failure."""
    try:
        r = fn(*args)
    except OSError as e:
        return "E" + (os.strerror(e.errno) if e.errno else str(e))
    if r is None:
        return "ok"
    if isinstance(r, bytes):
        return "bytes %d" % len(r)
    return r


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) == 0:
        return "ok"
    return "E" + os.strerror(ctypes.get_errno())


def probe(rw, ro):
    r = {}
    st = os.stat(rw)
    r["rw.size"], r["rw.mode"] = st.st_size, oct(st.st_mode)
    st = os.stat(ro)
    r["ro.size"], r["ro.mode"] = st.st_size, oct(st.st_mode)

    r["truncate.grow"] = outcome(os.truncate, rw, 2 * MiB)
    r["truncate.grow.size"] = os.stat(rw).st_size
    r["truncate.shrink"] = outcome(os.truncate, rw, MiB // 2)
    r["truncate.shrink.size"] = os.stat(rw).st_size
    r["truncate.back"] = outcome(os.truncate, rw, MiB)

    fd = os.open(rw, os.O_RDWR)
    r["ftruncate"] = outcome(os.ftruncate, fd, MiB)
    r["pwrite.inside"] = outcome(os.pwrite, fd, b"\xab" * 8192, 64 << 10)
    r["pwrite.straddle"] = outcome(os.pwrite, fd, b"\xcd" * 8192,
                                   MiB - 4096)
    r["pwrite.at_end"] = outcome(os.pwrite, fd, b"x" * 8192, MiB)
    r["pread.past_end"] = outcome(os.pread, fd, 100, 2 * MiB)
    r["pread.straddle"] = outcome(os.pread, fd, 8192, MiB - 4096)
    r["pread.data"] = os.pread(fd, 8192, 64 << 10) == b"\xab" * 8192
    r["seek.data"] = outcome(os.lseek, fd, 0, os.SEEK_DATA)
    r["seek.hole"] = outcome(os.lseek, fd, 64 << 10, os.SEEK_HOLE)
    for name, mode in [("none", 0), ("keep_size", FALLOC_KEEP_SIZE),
                       ("punch_keep", FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE),
                       ("zero", FALLOC_ZERO_RANGE),
                       ("zero_keep", FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE),
                       ("collapse", FALLOC_COLLAPSE_RANGE),
                       ("punch", FALLOC_PUNCH_HOLE)]:
        r["fallocate." + name] = fallocate(fd, mode, 4096, 8192)
    r["fallocate.none_at_end"] = fallocate(fd, 0, MiB, 8192)
    r["fallocate.none_at_end.size"] = os.fstat(fd).st_size
    r["fallocate.zero_past_end"] = fallocate(fd, FALLOC_ZERO_RANGE,
                                             MiB, 16384)
    r["fallocate.zero_past_end.size"] = os.fstat(fd).st_size
    r["fsync"] = outcome(os.fsync, fd)
    r["fdatasync"] = outcome(os.fdatasync, fd)
    os.close(fd)
    fd = os.open(rw, os.O_RDWR | os.O_TRUNC)
    r["open.o_trunc.size"] = os.fstat(fd).st_size
    os.close(fd)

    r["utime"] = outcome(os.utime, rw, None)
    r["chmod.0644"] = outcome(os.chmod, rw, 0o644)
    r["chmod.0700"] = outcome(os.chmod, rw, 0o700)
    r["chmod.mode"] = oct(os.stat(rw).st_mode)
    r["chown"] = outcome(os.chown, rw, 1, 1)
    r["chown.uid"] = os.stat(rw).st_uid
    r["chown.back"] = outcome(os.chown, rw, os.getuid(), os.getgid())

    fd = outcome(os.open, ro, os.O_RDWR)
    r["ro.open_rw"] = "ok" if isinstance(fd, int) else fd
    if isinstance(fd, int):
        r["ro.pwrite"] = outcome(os.pwrite, fd, b"x", 0)
        r["ro.fallocate"] = fallocate(fd, FALLOC_ZERO_RANGE, 0, 4096)
        os.close(fd)
    r["ro.chmod_w"] = outcome(os.chmod, ro, 0o600)
    r["ro.chmod_r"] = outcome(os.chmod, ro, 0o400)
    r["ro.truncate"] = outcome(os.truncate, ro, MiB)
    fd = os.open(ro, os.O_RDONLY)
    size = os.fstat(fd).st_size
    r["ro.seek.data"] = outcome(os.lseek, fd, 0, os.SEEK_DATA)
    r["ro.seek.hole"] = outcome(os.lseek, fd, 0, os.SEEK_HOLE)
    r["ro.seek.data_past"] = outcome(os.lseek, fd, size + 4096,
                                     os.SEEK_DATA)
    r["ro.seek.hole_end"] = outcome(os.lseek, fd, size, os.SEEK_HOLE)
    r["ro.seek.data_end"] = outcome(os.lseek, fd, size, os.SEEK_DATA)
    r["ro.seek.hole_past"] = outcome(os.lseek, fd, size + 1, os.SEEK_HOLE)
    r["ro.read"] = os.pread(fd, 4096, 0) == bytes(4096)
    m = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
    r["ro.mmap"] = m[:16] == bytes(16)
    m.close()
    os.close(fd)

    r["rename"] = outcome(os.rename, ro, ro + ".x")
    r["unlink"] = outcome(os.unlink, ro)
    r["link"] = outcome(os.link, ro, ro + ".l")
    r["getxattr"] = outcome(os.getxattr, ro, "user.x")
    r["setxattr"] = outcome(os.setxattr, ro, "user.x", b"1")
    r["statvfs"] = outcome(lambda: os.statvfs(ro).f_bsize)
    r["listdir"] = outcome(os.listdir, ro)
    r["mkdir_below"] = outcome(os.mkdir, os.path.join(ro, "d"))
    return r


if __name__ == "__main__":
    json.dump(probe(sys.argv[1], sys.argv[2]), sys.stdout, indent=1,
              sort_keys=True)
