# SPDX-License-Identifier: MIT
"""Internal qcow2 snapshots: lockstep-img snapshot -c/-l/-a/-d, and the
qcow2 driver writing to images whose clusters snapshots share.

Both directions against QEMU 7.2: what lockstep-img writes must be clean
for qemu-img check and listed by qemu-img snapshot -l, with the data of
each snapshot back after -a (checked with qemu-io and qemu-img compare);
snapshots qemu-img made must be listed, applied and deleted by ours.
Writes by lockstep-io after a snapshot must copy the shared L2 tables and
data clusters, leaving the snapshot's data as it was.
"""
import os
import shutil
import struct

import pytest

from conftest import built_program, run

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")

pytestmark = pytest.mark.skipif(not QEMU_IMG or not QEMU_IO,
                                reason="qemu-img/qemu-io not installed")


@pytest.fixture(scope="module")
def limg(build_dir):
    return built_program(build_dir, "lockstep-img")


def ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def qio(img, cmd):
    return run([QEMU_IO, "-f", "qcow2", "-c", cmd, img])


def lio(lockstep_io, img, *cmds):
    argv = [lockstep_io, "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    return run(argv + [img])


def clean(img):
    """qemu-img check finds nothing, leaks included."""
    res = run([QEMU_IMG, "check", img])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No errors were found" in res.stdout, res.stdout + res.stderr


def tags(tool, img):
    """(id, tag) of each line of "snapshot -l"."""
    res = ok(run([tool, "snapshot", "-l", img]))
    lines = res.stdout.splitlines()
    if not lines:
        return []
    assert lines[0] == "Snapshot list:"
    return [tuple(ln.split()[:2]) for ln in lines[2:]]


def pattern_ok(img, pattern, off, length):
    res = qio(img, "read -P %d %d %d" % (pattern, off, length))
    return res.returncode == 0 and "Pattern verification failed" \
        not in res.stdout


@pytest.fixture
def img(tmp_dir):
    path = os.path.join(tmp_dir, "s.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=4k", path, "8M"]))
    return path


def test_create_apply_delete_checked_by_qemu(limg, img, tmp_dir):
    ok(qio(img, "write -P 1 0 8M"))
    ok(run([limg, "snapshot", "-c", "one", img]))
    clean(img)
    ok(qio(img, "write -P 2 1M 2M"))
    ok(qio(img, "write -z 5M 1M"))
    ok(run([limg, "snapshot", "-c", "two", img]))
    clean(img)
    assert tags(QEMU_IMG, img) == [("1", "one"), ("2", "two")]
    assert tags(limg, img) == tags(QEMU_IMG, img)
    # Our -l prints what qemu-img's prints, date and all.
    assert ok(run([limg, "snapshot", "-l", img])).stdout == \
        ok(run([QEMU_IMG, "snapshot", "-l", img])).stdout
    two = os.path.join(tmp_dir, "two.raw")
    ok(run([QEMU_IMG, "convert", "-O", "raw", img, two]))

    ok(run([limg, "snapshot", "-a", "one", img]))
    clean(img)
    assert pattern_ok(img, 1, 0, 8 * 1024 * 1024)
    ok(run([limg, "snapshot", "-a", "2", img]))     # by ID
    clean(img)
    ok(run([QEMU_IMG, "compare", "-f", "qcow2", "-F", "raw", img, two]))

    ok(run([limg, "snapshot", "-d", "two", img]))
    clean(img)
    assert tags(QEMU_IMG, img) == [("1", "one")]
    # The active image keeps snapshot two's data after two is gone.
    ok(run([QEMU_IMG, "compare", "-f", "qcow2", "-F", "raw", img, two]))
    ok(run([limg, "snapshot", "-d", "one", img]))
    clean(img)
    assert tags(QEMU_IMG, img) == []
    assert ok(run([limg, "snapshot", "-l", img])).stdout == ""
    # Everything the snapshots held is free again: qemu-img agrees that
    # the refcounts are exact (no leaks, checked above) and COPIED flags
    # are back (a QEMU write in place does not move the data).
    ok(run([QEMU_IMG, "compare", "-f", "qcow2", "-F", "raw", img, two]))


def test_our_writes_copy_shared_clusters(limg, lockstep_io, img):
    ok(qio(img, "write -P 7 0 8M"))
    ok(run([limg, "snapshot", "-c", "base", img]))
    # Partial clusters, whole clusters, zeroes and discards through
    # shared L2 tables: none may reach the snapshot's clusters.
    ok(lio(lockstep_io, img, "write -P 8 1000 3000", "write -P 9 64k 1M",
           "write -z 2M 64k", "discard 3M 128k", "write -P 10 7M 4k"))
    clean(img)
    assert pattern_ok(img, 9, 64 * 1024, 1024 * 1024)
    assert pattern_ok(img, 10, 7 * 1024 * 1024, 4096)
    assert pattern_ok(img, 0, 2 * 1024 * 1024, 64 * 1024)
    ok(run([limg, "snapshot", "-a", "base", img]))
    clean(img)
    assert pattern_ok(img, 7, 0, 8 * 1024 * 1024)


def test_multi_cluster_writes_over_shared_clusters(limg, lockstep_io, img,
                                                   tmp_dir):
    """Writes over many clusters a snapshot shares (copied, never written
    in place), then over the copies (in place, one batch of host requests)
    and over both at once: the same disk as qemu-io's after the same
    writes, and the snapshot as it was."""
    ok(qio(img, "write -P 7 0 8M"))
    ok(run([limg, "snapshot", "-c", "base", img]))
    ref = os.path.join(tmp_dir, "ref.qcow2")
    shutil.copyfile(img, ref)
    cmds = ["write -P 8 1000 300k", "write -P 9 64k 1M",
            "write -P 10 100k 2M", "write -z 2200k 100k",
            "write -P 11 6M 256k", "write -P 12 6M 256k",
            "write -P 13 5M 1032k", "aio_write -P 14 3M 64k",
            "aio_write -P 15 3200k 512k", "aio_flush"]
    ok(lio(lockstep_io, img, *cmds))
    ok(run([QEMU_IO, "-f", "qcow2"] +
           [a for c in cmds for a in ("-c", c)] + [ref]))
    clean(img)
    ok(run([QEMU_IMG, "compare", "-f", "qcow2", "-F", "qcow2", img, ref]))
    raw = os.path.join(tmp_dir, "snap.raw")
    ok(run([QEMU_IMG, "convert", "-l", "snapshot.name=base", "-O", "raw",
            img, raw]))
    res = run([QEMU_IO, "-f", "raw", "-c", "read -P 7 0 8M", raw])
    assert "Pattern verification failed" not in res.stdout, res.stdout
    ok(run([limg, "snapshot", "-a", "base", img]))
    clean(img)
    assert pattern_ok(img, 7, 0, 8 * 1024 * 1024)


def test_qemu_snapshots_read_applied_deleted_by_us(limg, lockstep_io, img):
    ok(qio(img, "write -P 3 0 4M"))
    ok(run([QEMU_IMG, "snapshot", "-c", "q1", img]))
    ok(qio(img, "write -P 4 0 4M"))
    ok(run([QEMU_IMG, "snapshot", "-c", "q2", img]))
    ok(qio(img, "write -P 5 0 1M"))
    assert tags(limg, img) == [("1", "q1"), ("2", "q2")]
    res = lio(lockstep_io, img, "read -P 5 0 1M", "read -P 4 1M 3M")
    ok(res)
    assert "Pattern verification failed" not in res.stdout
    ok(run([limg, "snapshot", "-a", "q1", img]))
    clean(img)
    assert pattern_ok(img, 3, 0, 4 * 1024 * 1024)
    ok(run([limg, "snapshot", "-d", "q1", img]))
    clean(img)
    ok(run([QEMU_IMG, "snapshot", "-a", "q2", img]))
    clean(img)
    assert pattern_ok(img, 4, 0, 4 * 1024 * 1024)
    ok(run([limg, "snapshot", "-d", "q2", img]))
    clean(img)
    assert tags(QEMU_IMG, img) == []


def test_apply_of_other_size_refused(limg, tmp_dir):
    """A snapshot taken before the image grew: applying it (which QEMU
    does by resizing) is refused, and nothing changes."""
    path = os.path.join(tmp_dir, "g.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=512", path, "1M"]))
    ok(qio(path, "write -P 1 0 1M"))
    ok(run([limg, "snapshot", "-c", "small", path]))
    ok(run([QEMU_IMG, "resize", path, "4M"]))
    ok(qio(path, "write -P 2 3M 1M"))
    # A snapshot of another virtual size is refused, not half applied.
    res = run([limg, "snapshot", "-a", "small", path])
    assert res.returncode == 1
    assert "Could not apply snapshot 'small'" in res.stderr
    clean(path)
    assert pattern_ok(path, 2, 3 * 1024 * 1024, 1024 * 1024)


def test_errors_as_qemu_img(limg, img, tmp_dir):
    ok(run([limg, "snapshot", "-c", "x", img]))
    for argv in (["-a", "nope"], ["-d", "nope"], ["-c", "x", "-d", "x"]):
        ours = run([limg, "snapshot"] + argv + [img])
        theirs = run([QEMU_IMG, "snapshot"] + argv + [img])
        assert ours.returncode == theirs.returncode == 1
        assert ours.stderr.splitlines()[0].split(":", 1)[1] == \
            theirs.stderr.splitlines()[0].split(":", 1)[1]
    # Duplicate names are allowed (qemu-img numbers them apart).
    ok(run([limg, "snapshot", "-c", "x", img]))
    assert tags(QEMU_IMG, img) == [("1", "x"), ("2", "x")]
    clean(img)
    raw = os.path.join(tmp_dir, "r.raw")
    ok(run([QEMU_IMG, "create", "-q", "-f", "raw", raw, "1M"]))
    assert run([limg, "snapshot", "-f", "raw", "-l", raw]).stdout == ""
    res = run([limg, "snapshot", "-f", "raw", "-c", "s", raw])
    assert res.returncode == 1
    assert "Could not create snapshot 's': -95 (Operation not supported)" \
        in res.stderr


def test_shrink_and_empty_refused_with_snapshots(limg, img, tmp_dir):
    ok(run([limg, "snapshot", "-c", "keep", img]))
    res = run([limg, "resize", "--shrink", "-f", "qcow2", img, "4M"])
    assert res.returncode != 0
    assert "snapshots" in res.stderr
    ok(run([limg, "resize", "-f", "qcow2", img, "16M"]))     # growing is fine
    clean(img)
    top = os.path.join(tmp_dir, "top.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", img, "-F",
            "qcow2", top]))
    ok(qio(top, "write -P 6 0 64k"))
    # commit empties the overlay (make_empty): refused for an overlay
    # with snapshots, which would lose them.
    ok(run([limg, "snapshot", "-c", "t", top]))
    res = run([limg, "commit", top])
    assert res.returncode == 1
    assert "Failed to empty" in res.stderr
    clean(top)
    clean(img)
    assert tags(QEMU_IMG, top) == [("1", "t")]
    assert pattern_ok(img, 6, 0, 64 * 1024)     # the data did reach img


def test_crash_between_steps_only_leaks(limg, img):
    """An apply cut short (blkdebug fails every write after the first
    refcount update) leaves an image that check calls consistent: at
    most leaks, never a cluster in use with a refcount too low."""
    ok(qio(img, "write -P 1 0 2M"))
    ok(run([limg, "snapshot", "-c", "a", img]))
    ok(qio(img, "write -P 2 0 2M"))
    conf = img + ".blkdebug"
    with open(conf, "w") as f:
        f.write('[inject-error]\nevent = "cluster_free"\nerrno = "5"\n')
    res = run([limg, "snapshot", "-d", "a", "blkdebug:%s:%s" % (conf, img)])
    assert res.returncode == 1
    assert "Could not delete snapshot 'a'" in res.stderr
    res = run([QEMU_IMG, "check", img])
    assert "leaked clusters were found" in res.stdout, res.stdout
    assert "ERROR" not in res.stdout and "corruption" not in res.stdout
    ok(run([QEMU_IMG, "check", "-r", "leaks", img]))
    clean(img)
    assert pattern_ok(img, 2, 0, 2 * 1024 * 1024)


def test_convert_from_snapshot(limg, img, tmp_dir):
    ok(qio(img, "write -P 1 0 1M"))
    ok(run([limg, "snapshot", "-c", "s", img]))
    ok(qio(img, "write -P 2 0 1M"))
    out = os.path.join(tmp_dir, "o.raw")
    for param in ("s", "1", "snapshot.id=1", "snapshot.name=s",
                  "snapshot.id=1,snapshot.name=s"):
        ok(run([limg, "convert", "-l", param, "-O", "raw", img, out]))
        res = run([QEMU_IO, "-f", "raw", "-c", "read -P 1 0 1M", out])
        assert "Pattern verification failed" not in res.stdout, param
        os.unlink(out)
    for param in ("nope", "snapshot.id=1,snapshot.name=other"):
        ours = run([limg, "convert", "-l", param, "-O", "raw", img, out])
        theirs = run([QEMU_IMG, "convert", "-l", param, "-O", "raw", img,
                      out])
        assert ours.returncode == theirs.returncode == 1
        assert ours.stderr.split(":", 1)[1] == theirs.stderr.split(":", 1)[1]
    # The active image is untouched (the source is opened read-only).
    assert pattern_ok(img, 2, 0, 1024 * 1024)
    clean(img)


def test_vmstate_written_and_snapshotted(lockstep_io, limg, img):
    """lockstep-io write -b/read -b: the VM state area past the disk, as
    qemu-io places it (each tool reads what the other wrote), kept by a
    snapshot and dropped by applying one taken before it."""
    ok(run([limg, "snapshot", "-c", "empty", img]))
    ok(lio(lockstep_io, img, "write -b -P 0x11 0 64k",
           "write -b -P 0x12 1G 4k"))
    clean(img)
    res = run([QEMU_IO, "-f", "qcow2", "-c", "read -b -P 0x11 0 64k",
               "-c", "read -b -P 0x12 1G 4k", img])
    ok(res)
    assert "Pattern verification failed" not in res.stdout
    ok(run([QEMU_IO, "-f", "qcow2", "-c", "write -b -P 0x13 8k 4k", img]))
    res = ok(lio(lockstep_io, img, "read -b -P 0x13 8k 4k",
                 "read -b -P 0x11 12k 4k"))
    assert "Pattern verification failed" not in res.stdout
    # The guest disk does not see it.
    assert pattern_ok(img, 0, 0, 8 * 1024 * 1024)
    ok(run([limg, "snapshot", "-c", "with", img]))
    ok(run([limg, "snapshot", "-a", "empty", img]))
    clean(img)
    res = ok(lio(lockstep_io, img, "read -b -P 0 0 64k"))
    assert "Pattern verification failed" not in res.stdout
    ok(run([limg, "snapshot", "-a", "with", img]))
    clean(img)
    res = ok(lio(lockstep_io, img, "read -b -P 0x12 1G 4k"))
    assert "Pattern verification failed" not in res.stdout


def test_narrow_refcounts_refuse_not_corrupt(limg, tmp_dir):
    """refcount_bits=2 counts 3 references at most: the third snapshot
    is refused with a message, and the image stays clean (not marked
    corrupt, nothing leaked)."""
    path = os.path.join(tmp_dir, "n.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
            "refcount_bits=2", path, "1M"]))
    ok(qio(path, "write -P 5 0 64k"))
    ok(run([limg, "snapshot", "-c", "a", path]))
    ok(run([limg, "snapshot", "-c", "b", path]))
    res = run([limg, "snapshot", "-c", "c", path])
    assert res.returncode == 1
    assert "refcount_bits" in res.stderr
    clean(path)
    assert tags(QEMU_IMG, path) == [("1", "a"), ("2", "b")]
    assert "corrupt: false" in ok(run([QEMU_IMG, "info", path])).stdout
    ok(run([limg, "snapshot", "-d", "a", path]))
    ok(run([limg, "snapshot", "-c", "c", path]))
    clean(path)
