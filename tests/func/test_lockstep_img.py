# SPDX-License-Identifier: MIT
"""Functional tests of lockstep-img, the qemu-img compatible image tool.

Each subcommand is run side by side with the real qemu-img (7.2) on the
same images: exit codes, the human output and the key JSON fields must
agree.  The qcow2 checker is fed clean images, images with leaks and with
corruptions made by patching bytes by hand, and images with snapshots,
bitmaps, compressed clusters and extended L2 entries; images whose header
open refuses, or whose backing or data file is missing, must be "could
not open" for both tools, and truncated files must give qemu-img's
problem lines.  Images made by
lockstep-img create must pass qemu-img check for every cluster size and
refcount width.  Commands that need the qcow2 driver to read data (map,
compare, convert, commit, resize of qcow2 images) skip while the driver is
not built.
"""
import json
import os
import random
import shutil
import struct
import subprocess

import pytest

from conftest import (built_program, host_tool, make_image, run,
                      supports_o_direct)
from qcow2_layout import Qcow2

KiB = 1024
MiB = 1024 * KiB

# ---- Fixtures and helpers ---------------------------------------------------


@pytest.fixture(scope="session")
def limg(build_dir):
    return built_program(build_dir, "lockstep-img")


@pytest.fixture(scope="session")
def qemu_img():
    return host_tool("qemu-img")


@pytest.fixture(scope="session")
def qemu_io_bin():
    return host_tool("qemu-io")


@pytest.fixture(scope="session")
def qcow2_driver(limg, qemu_img, tmp_path_factory):
    """Skip unless lockstep's block layer can open qcow2 images."""
    img = str(tmp_path_factory.mktemp("probe") / "p.qcow2")
    run([qemu_img, "create", "-f", "qcow2", img, "1M"])
    r = run([limg, "map", "-f", "qcow2", img])
    if r.returncode != 0:
        pytest.skip("the qcow2 driver is not available: " + r.stderr.strip())
    return True


def qio(qemu_io_bin, img, *cmds, fmt="qcow2"):
    argv = [qemu_io_bin, "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    r = run(argv + [img])
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def qcreate(qemu_img, path, size="64M", opts=None, backing=None):
    argv = [qemu_img, "create", "-q", "-f", "qcow2"]
    if opts:
        argv += ["-o", opts]
    if backing:
        argv += ["-b", backing, "-F", "qcow2"]
    r = run(argv + [path] + ([size] if size else []))
    assert r.returncode == 0, r.stderr
    return path


def info_json(tool, img, *extra):
    r = run([tool, "info", "--output=json"] + list(extra) + [img])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def check(tool, img, *extra):
    """(exit code, parsed JSON or None, stderr) of a JSON check."""
    r = run([tool, "check", "--output=json"] + list(extra) + [img])
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = None
    return r.returncode, out, r.stderr


# JSON fields of ImageCheck whose values must equal qemu-img's.
CHECK_FIELDS = ("check-errors", "corruptions", "leaks", "image-end-offset",
                "total-clusters", "allocated-clusters", "fragmented-clusters",
                "compressed-clusters", "corruptions-fixed", "leaks-fixed",
                "format")


def assert_check_agrees(limg, qemu_img, img, *extra):
    """Both tools must agree on exit code, counters and problem lines."""
    ours = check(limg, img, *extra)
    theirs = check(qemu_img, img, *extra)
    assert ours[0] == theirs[0], (ours, theirs)
    for k in CHECK_FIELDS:
        assert (ours[1] or {}).get(k) == (theirs[1] or {}).get(k), \
            (k, ours, theirs)
    return ours


@pytest.fixture
def data_image(tmp_dir, qemu_img, qemu_io_bin):
    """A qcow2 image with a few data clusters (16-bit refcounts)."""
    img = qcreate(qemu_img, os.path.join(tmp_dir, "d.qcow2"))
    qio(qemu_io_bin, img, "write -P 1 0 192k", "write -z 1M 64k",
        "write -P 2 3M 64k")
    return img


# ---- General -------------------------------------------------------------


def test_help(limg):
    r = run([limg, "--help"])
    assert r.returncode == 0
    for cmd in ("create", "info", "check", "map", "compare", "commit",
                "convert", "resize"):
        assert "\n  %s " % cmd in r.stdout
        r2 = run([limg, cmd, "--help"])
        assert r2.returncode == 0 and r2.stdout.startswith("usage: ")


def test_unknown_command(limg):
    r = run([limg, "frobnicate"])
    assert r.returncode == 1
    assert r.stderr.startswith("lockstep-img: Command not found: frobnicate")


def test_open_error_names_file(limg, qemu_img, tmp_dir):
    missing = os.path.join(tmp_dir, "missing.qcow2")
    for cmd in ("info", "check", "map"):
        ours = run([limg, cmd, missing])
        theirs = run([qemu_img, cmd, missing])
        assert ours.returncode == theirs.returncode == 1
        assert ours.stderr.replace("lockstep-img", "qemu-img") == \
            theirs.stderr


def test_image_locks(limg, qemu_img, qemu_io_bin, tmp_dir):
    """An image qemu-io writes: refused without -U, readable with it."""
    img = qcreate(qemu_img, os.path.join(tmp_dir, "l.qcow2"))
    with open(img, "rb") as f:
        before = f.read()
    # qemu-io reading commands from a pipe holds the image (and its locks)
    # once it answered a first command; probing with qemu-img meanwhile
    # would race with qemu-io taking its locks.
    holder = subprocess.Popen([qemu_io_bin, "-f", "qcow2", img],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        holder.stdin.write("read 0 512\n")
        holder.stdin.flush()
        while True:
            line = holder.stdout.readline()
            assert line, "qemu-io exited"
            if "read 512/512 bytes" in line:
                break
        for cmd in (["info"], ["check"], ["map"]):
            r = run([limg] + cmd + [img])
            assert r.returncode == 1
            assert "Could not open '%s': Failed to get shared \"write\" " \
                "lock" % img in r.stderr
            assert run([limg] + cmd + ["-U", img]).returncode == 0
        r = run([limg, "create", "-f", "qcow2", img, "1M"])
        assert r.returncode == 1 and "lock" in r.stderr
    finally:
        holder.kill()
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    with open(img, "rb") as f:
        assert f.read() == before


# ---- create ------------------------------------------------------------


def test_create_default_identical_to_qemu(limg, qemu_img, tmp_dir):
    ours = os.path.join(tmp_dir, "a.qcow2")
    theirs = qcreate(qemu_img, os.path.join(tmp_dir, "b.qcow2"))
    r = run([limg, "create", "-f", "qcow2", ours, "64M"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("Formatting '%s', fmt=qcow2 cluster_size=65536 "
                        "extended_l2=off compression_type=zlib "
                        "size=67108864 lazy_refcounts=off refcount_bits=16\n"
                        % ours)
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()


def test_create_formatting_line_like_qemu(limg, qemu_img, tmp_dir):
    base = qcreate(qemu_img, os.path.join(tmp_dir, "base.qcow2"))
    for args in (["-o", "cluster_size=4k,refcount_bits=8", "X", "1G"],
                 ["-o", "preallocation=metadata", "X", "8M"],
                 ["-o", "extended_l2=on,compat=1.1", "X", "1M"],
                 ["-b", "base.qcow2", "-F", "qcow2", "X"]):
        outs = []
        for tool, name in ((limg, "ours.qcow2"), (qemu_img, "qemu.qcow2")):
            argv = [tool, "create", "-f", "qcow2"] + \
                [os.path.join(tmp_dir, name) if a == "X" else a for a in args]
            r = run(argv)
            assert r.returncode == 0, r.stderr
            outs.append(r.stdout.replace(name, "X"))
        assert outs[0] == outs[1]
    assert base


def test_create_rounds_to_sectors(limg, qemu_img, tmp_dir):
    ours = os.path.join(tmp_dir, "a.qcow2")
    r = run([limg, "create", "-f", "qcow2", ours, "1000000"])
    assert r.returncode == 0, r.stderr
    assert "size=1000000 " in r.stdout
    assert info_json(qemu_img, ours)["virtual-size"] == 1000448


def test_convert_odd_size_to_qcow2(limg, qemu_img, tmp_dir):
    src = os.path.join(tmp_dir, "odd.raw")
    with open(src, "wb") as f:
        f.write(bytes(range(256)) * 3906 + b"tail")
    out = os.path.join(tmp_dir, "odd.qcow2")
    r = run([limg, "convert", "-f", "raw", "-O", "qcow2", src, out])
    assert r.returncode == 0, r.stderr
    ref = os.path.join(tmp_dir, "ref.qcow2")
    assert run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", src,
                ref]).returncode == 0
    assert run([qemu_img, "compare", "-s", ref, out]).returncode == 0


def test_create_raw(limg, qemu_img, tmp_dir):
    img = os.path.join(tmp_dir, "r.raw")
    r = run([limg, "create", "-f", "raw", img, "1M"])
    assert r.returncode == 0
    assert r.stdout == "Formatting '%s', fmt=raw size=1048576\n" % img
    assert os.path.getsize(img) == MiB
    r = run([limg, "create", "-f", "raw", "-o", "preallocation=falloc", img,
             "2M"])
    assert r.returncode == 0
    assert r.stdout.endswith("size=2097152 preallocation=falloc\n")
    assert os.stat(img).st_blocks * 512 >= 2 * MiB
    assert info_json(qemu_img, img)["virtual-size"] == 2 * MiB


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * MiB])
@pytest.mark.parametrize("refcount_bits", [1, 2, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("extended_l2", ["off", "on"])
def test_create_matrix_passes_qemu_check(limg, qemu_img, tmp_dir,
                                         cluster_size, refcount_bits,
                                         extended_l2):
    opts = "cluster_size=%d,refcount_bits=%d,extended_l2=%s" % (
        cluster_size, refcount_bits, extended_l2)
    ours = os.path.join(tmp_dir, "ours.qcow2")
    theirs = os.path.join(tmp_dir, "theirs.qcow2")
    r1 = run([limg, "create", "-q", "-f", "qcow2", "-o", opts, ours, "3G"])
    r2 = run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, theirs,
              "3G"])
    assert r1.returncode == r2.returncode
    if r2.returncode != 0:
        assert r1.stderr.replace("lockstep-img", "qemu-img").replace(
            ours, theirs) == r2.stderr
        return
    r = run([qemu_img, "check", ours])
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = info_json(qemu_img, ours), info_json(qemu_img, theirs)
    for k in ("virtual-size", "cluster-size", "format-specific",
              "dirty-flag"):
        assert a[k] == b[k], k
    assert check(limg, ours)[0] == 0
    # An overlay with the same geometry, its backing named relatively
    # (with 512-byte clusters the feature table must make room for it).
    tops = []
    for tool, base, name in ((limg, "ours.qcow2", "top1.qcow2"),
                             (qemu_img, "theirs.qcow2", "top2.qcow2")):
        top = os.path.join(tmp_dir, name)
        r = run([tool, "create", "-q", "-f", "qcow2", "-o", opts, "-b", base,
                 "-F", "qcow2", top])
        assert r.returncode == 0, r.stderr
        tops.append(top)
    r = run([qemu_img, "check", tops[0]])
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = info_json(qemu_img, tops[0]), info_json(qemu_img, tops[1])
    for k in ("virtual-size", "cluster-size", "format-specific",
              "backing-filename-format"):
        assert a[k] == b[k], k
    assert a["backing-filename"] == "ours.qcow2"
    assert a["full-backing-filename"] == ours


def test_create_backing_relative(limg, qemu_img, tmp_dir):
    sub = os.path.join(tmp_dir, "sub")
    os.mkdir(sub)
    qcreate(qemu_img, os.path.join(sub, "base.qcow2"), size="100M")
    top = os.path.join(sub, "top.qcow2")
    r = run([limg, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             top])
    assert r.returncode == 0, r.stderr
    assert "size=104857600 backing_file=base.qcow2 backing_fmt=qcow2" in \
        r.stdout
    assert run([qemu_img, "check", top]).returncode == 0
    q = info_json(qemu_img, top)
    assert q["virtual-size"] == 100 * MiB
    assert q["backing-filename"] == "base.qcow2"
    assert q["full-backing-filename"] == os.path.join(sub, "base.qcow2")
    assert q["backing-filename-format"] == "qcow2"
    assert info_json(limg, top, "--backing-chain") == \
        info_json(qemu_img, top, "--backing-chain")


def test_create_backing_with_options(limg, qemu_img, tmp_dir):
    qcreate(qemu_img, os.path.join(tmp_dir, "base.qcow2"), size="10M")
    top = os.path.join(tmp_dir, "top.qcow2")
    r = run([limg, "create", "-f", "qcow2", "-o",
             "backing_file=base.qcow2,backing_fmt=qcow2,cluster_size=16k,"
             "extended_l2=on", top, "20M"])
    assert r.returncode == 0, r.stderr
    q = info_json(qemu_img, top)
    assert q["virtual-size"] == 20 * MiB and q["cluster-size"] == 16384
    assert q["format-specific"]["data"]["extended-l2"] is True
    assert run([qemu_img, "check", top]).returncode == 0


@pytest.mark.parametrize("args,msg", [
    (["-f", "qcow2", "X"], "X: Image creation needs a size parameter"),
    (["-f", "qcow2", "-b", "nob.qcow2", "X", "1M"],
     "X: Could not open 'DIR/nob.qcow2': No such file or directory"),
    (["-f", "qcow2", "-b", "X", "X.2", "1M"],
     "X.2: Backing file specified without backing format"),
    (["-f", "vmdkx", "X", "1M"], "X: Unknown file format 'vmdkx'"),
    (["-f", "raw", "-b", "b", "-F", "raw", "X", "1M"],
     "X: Backing file not supported for file format 'raw'"),
    (["-f", "qcow2", "-o", "foo=1", "X", "1M"], "X: Invalid parameter 'foo'"),
])
def test_create_errors(limg, tmp_dir, args, msg):
    img = os.path.join(tmp_dir, "x.qcow2")
    if "X.2" in args:
        open(img, "wb").close()
    r = run([limg, "create"] + [a.replace("X", img) for a in args])
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "lockstep-img: " + msg.replace(
        "X", img).replace("DIR", tmp_dir)


def test_create_bad_size(limg, tmp_dir):
    r = run([limg, "create", "-f", "qcow2", os.path.join(tmp_dir, "x"), "1Q"])
    assert r.returncode == 1
    assert r.stderr.startswith("lockstep-img: Invalid image size specified.")


def test_create_missing_backing(limg, tmp_dir):
    img = os.path.join(tmp_dir, "x.qcow2")
    r = run([limg, "create", "-f", "qcow2", "-b", "nob.qcow2", "-F", "qcow2",
             img])
    assert r.returncode == 1
    assert img + ": " in r.stderr and "nob.qcow2" in r.stderr


# ---- info ----------------------------------------------------------------


def info_images(tmp_dir, qemu_img):
    base = qcreate(qemu_img, os.path.join(tmp_dir, "base.qcow2"))
    imgs = [base,
            qcreate(qemu_img, os.path.join(tmp_dir, "top.qcow2"), size=None,
                    backing="base.qcow2"),
            qcreate(qemu_img, os.path.join(tmp_dir, "v2.qcow2"),
                    opts="compat=0.10"),
            qcreate(qemu_img, os.path.join(tmp_dir, "e.qcow2"),
                    opts="extended_l2=on,cluster_size=32k,refcount_bits=2"),
            make_image(os.path.join(tmp_dir, "r.raw"), 3 * MiB)]
    return imgs


@pytest.mark.parametrize("output", ["human", "json"])
def test_info_same_as_qemu(limg, qemu_img, tmp_dir, output):
    for img in info_images(tmp_dir, qemu_img):
        for extra in ([], ["--backing-chain"]):
            argv = ["info", "--output=" + output] + extra + [img]
            ours, theirs = run([limg] + argv), run([qemu_img] + argv)
            assert ours.returncode == theirs.returncode == 0
            assert ours.stdout == theirs.stdout, img


def test_info_snapshots_and_bitmaps(limg, qemu_img, qemu_io_bin, tmp_dir):
    img = qcreate(qemu_img, os.path.join(tmp_dir, "s.qcow2"))
    qio(qemu_io_bin, img, "write -P 1 0 128k")
    for argv in (["snapshot", "-c", "first", img],
                 ["snapshot", "-c", "second", img],
                 ["bitmap", "--add", img, "b0"],
                 ["bitmap", "--add", "-g", "512", "--disable", img, "b1"]):
        assert run([qemu_img] + argv).returncode == 0
    for output in ("human", "json"):
        argv = ["info", "--output=" + output, img]
        ours, theirs = run([limg] + argv), run([qemu_img] + argv)
        assert ours.returncode == theirs.returncode == 0
        assert ours.stdout == theirs.stdout
    data = info_json(limg, img)["format-specific"]["data"]
    assert [b["name"] for b in data["bitmaps"]] == ["b0", "b1"]
    assert data["bitmaps"][1]["granularity"] == 512


def test_info_relative_name_in_other_dir(limg, qemu_img, tmp_dir):
    info_images(tmp_dir, qemu_img)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_dir)
        ours = run([limg, "info", "--backing-chain", "top.qcow2"])
        theirs = run([qemu_img, "info", "--backing-chain", "top.qcow2"])
    finally:
        os.chdir(cwd)
    assert ours.stdout == theirs.stdout


@pytest.mark.parametrize("bits,field", [(1, "dirty-flag"), (2, "corrupt")])
def test_info_dirty_and_corrupt(limg, qemu_img, tmp_dir, bits, field):
    img = qcreate(qemu_img, os.path.join(tmp_dir, "d.qcow2"))
    Qcow2(img).write64(72, bits)
    ours = run([limg, "info", "-U", img])
    theirs = run([qemu_img, "info", "-U", img])
    assert ours.stdout == theirs.stdout
    j = info_json(limg, img)
    value = j[field] if field in j else \
        j["format-specific"]["data"][field]
    assert value is True


# ---- check -----------------------------------------------------------------


def test_check_clean_same_output(limg, qemu_img, data_image):
    for output in ("human", "json"):
        argv = ["check", "--output=" + output, data_image]
        ours, theirs = run([limg] + argv), run([qemu_img] + argv)
        assert ours.returncode == theirs.returncode == 0
        assert ours.stdout.replace(data_image, "I") == \
            theirs.stdout.replace(data_image, "I")
        assert ours.stderr == theirs.stderr == ""


def test_check_raw_not_supported(limg, qemu_img, tmp_dir):
    img = make_image(os.path.join(tmp_dir, "r.raw"), MiB)
    ours = run([limg, "check", "-f", "raw", img])
    theirs = run([qemu_img, "check", "-f", "raw", img])
    assert ours.returncode == theirs.returncode == 63
    assert ours.stderr == \
        "lockstep-img: This image format does not support checks\n"


def test_check_bad_repair_mode(limg, data_image):
    r = run([limg, "check", "-r", "foo", data_image])
    assert r.returncode == 1
    assert "Unknown option value for -r (expecting 'leaks' or 'all'): foo" \
        in r.stderr


def test_check_leaks(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    q.grow(2)
    end = os.path.getsize(data_image) // q.cs
    q.set_refcount(end - 1, 1)
    q.set_refcount(end - 2, 3)
    rc, out, err = assert_check_agrees(limg, qemu_img, data_image)
    assert rc == 3 and out["leaks"] == 2
    assert "Leaked cluster %d refcount=1 reference=0" % (end - 1) in err
    human = run([limg, "check", data_image])
    assert "\n2 leaked clusters were found on the image.\nThis means waste " \
        "of disk space, but no harm to data.\n" in human.stdout


def test_check_corruption_refcount_zero(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    data = q.read64(q.l2_entry_pos(0, 1)) & 0x00fffffffffffe00
    q.set_refcount(data // q.cs, 0)
    rc, out, err = assert_check_agrees(limg, qemu_img, data_image)
    assert rc == 2 and out["corruptions"] == 2
    assert "ERROR cluster %d refcount=0 reference=1" % (data // q.cs) in err
    assert "ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=0" % (
        data | 1 << 63) in err
    ours = run([limg, "check", data_image])
    theirs = run([qemu_img, "check", data_image])
    assert ours.stdout == theirs.stdout and ours.stderr == theirs.stderr


def test_check_shared_cluster(limg, qemu_img, data_image):
    """Two L2 entries point to one cluster whose refcount is 1."""
    q = Qcow2(data_image)
    q.write64(q.l2_entry_pos(0, 2), q.read64(q.l2_entry_pos(0, 1)))
    rc, out, err = assert_check_agrees(limg, qemu_img, data_image)
    assert rc == 2 and out["corruptions"] >= 1


def test_check_copied_flag_missing(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    pos = q.l2_entry_pos(0, 0)
    q.write64(pos, q.read64(pos) & ~(1 << 63))
    rc, out, _ = assert_check_agrees(limg, qemu_img, data_image)
    assert rc == 2 and out["corruptions"] == 1


def test_check_l2_beyond_eof(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    q.write64(q.l2_entry_pos(0, 5), (1 << 40) | 1 << 63)
    rc, out, err = assert_check_agrees(limg, qemu_img, data_image)
    assert rc == 2
    assert "exceeding the end of the file" in err


def test_check_unaligned_l2_entry(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    pos = q.l2_entry_pos(0, 1)
    q.write64(pos, q.read64(pos) + 512)
    rc, out, err = assert_check_agrees(limg, qemu_img, data_image)
    assert rc == 2
    assert "Data cluster is not properly aligned; L2 entry corrupted." in err


def test_check_refblock_refcount(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    q.set_refcount(q.read64(q.rt_offset) // q.cs, 2)
    assert_check_agrees(limg, qemu_img, data_image)


def test_check_dirty_image_with_stale_refcount(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    data = q.read64(q.l2_entry_pos(0, 0)) & 0x00fffffffffffe00
    q.set_refcount(data // q.cs, 0)
    q.write64(72, 1)
    rc, _, _ = assert_check_agrees(limg, qemu_img, data_image)
    assert rc == 2


def test_repair_leaks(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    q.grow(1)
    q.set_refcount(os.path.getsize(data_image) // q.cs - 1, 1)
    ours = run([limg, "check", "-r", "leaks", data_image])
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.startswith(
        "The following inconsistencies were found and repaired:\n\n"
        "    1 leaked clusters\n    0 corruptions\n\n"
        "Double checking the fixed image now...\n"
        "No errors were found on the image.\n")
    assert "Repairing cluster" in ours.stderr
    assert run([qemu_img, "check", data_image]).returncode == 0


def test_repair_leaks_json(limg, qemu_img, data_image, tmp_dir):
    q = Qcow2(data_image)
    q.grow(2)
    end = os.path.getsize(data_image) // q.cs
    q.set_refcount(end - 1, 1)
    q.set_refcount(end - 2, 1)
    copy = os.path.join(tmp_dir, "copy.qcow2")
    shutil.copy(data_image, copy)
    ours = check(limg, data_image, "-r", "leaks")
    theirs = check(qemu_img, copy, "-r", "leaks")
    assert ours[0] == theirs[0] == 0
    for k in CHECK_FIELDS:
        assert ours[1].get(k) == theirs[1].get(k), k
    assert ours[1]["leaks-fixed"] == 2
    assert check(qemu_img, data_image)[0] == 0


def test_repair_leaks_leaves_corruption(limg, qemu_img, data_image,
                                        tmp_dir):
    """A lost refcount needs a rebuild, which -r leaks refuses to do."""
    q = Qcow2(data_image)
    data = q.read64(q.l2_entry_pos(0, 1)) & 0x00fffffffffffe00
    q.set_refcount(data // q.cs, 0)
    copy = os.path.join(tmp_dir, "copy.qcow2")
    shutil.copy(data_image, copy)
    ours = run([limg, "check", "-r", "leaks", data_image])
    theirs = run([qemu_img, "check", "-r", "leaks", copy])
    assert ours.returncode == theirs.returncode == 1
    assert "ERROR need to rebuild refcount structures" in ours.stderr
    assert run([qemu_img, "check", data_image]).returncode == 2


def test_repair_lazy_refcounts_crash(limg, qemu_img, qemu_io_bin, tmp_dir):
    """An image left dirty by a crash with lazy refcounts."""
    img = qcreate(qemu_img, os.path.join(tmp_dir, "l.qcow2"),
                  opts="lazy_refcounts=on")
    run([qemu_io_bin, "-f", "qcow2", "-c", "write -P 1 0 1M", "-c",
         "write -P 2 10M 100k", "-c", "abort", img])
    assert info_json(qemu_img, img)["dirty-flag"] is True
    rc, _, _ = assert_check_agrees(limg, qemu_img, img)
    assert rc == 2
    rc, out, err = check(limg, img, "-r", "all")
    assert rc == 0, err
    assert info_json(qemu_img, img)["dirty-flag"] is False
    assert run([qemu_img, "check", img]).returncode == 0
    r = run([qemu_io_bin, "-f", "qcow2", "-c", "read -P 1 0 1M", "-c",
             "read -P 2 10M 100k", img])
    assert "verification failed" not in r.stdout


def test_repair_all_corruption(limg, qemu_img, data_image):
    q = Qcow2(data_image)
    data = q.read64(q.l2_entry_pos(0, 1)) & 0x00fffffffffffe00
    q.set_refcount(data // q.cs, 0)
    pos = q.l2_entry_pos(0, 0)
    q.write64(pos, q.read64(pos) & ~(1 << 63))
    q.write64(72, 2)          # corrupt bit
    rc, out, err = check(limg, data_image, "-r", "all")
    assert rc == 0, err
    assert out["corruptions-fixed"] >= 2
    r = run([qemu_img, "check", data_image])
    assert r.returncode == 0, r.stdout + r.stderr
    assert info_json(qemu_img, data_image)["format-specific"]["data"][
        "corrupt"] is False


def test_check_snapshots_bitmaps(limg, qemu_img, qemu_io_bin, tmp_dir):
    img = qcreate(qemu_img, os.path.join(tmp_dir, "s.qcow2"))
    qio(qemu_io_bin, img, "write -P 1 0 256k")
    assert run([qemu_img, "snapshot", "-c", "s1", img]).returncode == 0
    qio(qemu_io_bin, img, "write -P 2 64k 64k")
    assert run([qemu_img, "snapshot", "-c", "s2", img]).returncode == 0
    qio(qemu_io_bin, img, "write -P 3 1M 64k")
    assert run([qemu_img, "bitmap", "--add", img, "b0"]).returncode == 0
    rc, out, err = assert_check_agrees(limg, qemu_img, img)
    assert rc == 0 and err == ""
    # A leaked snapshot cluster: drop the snapshot count in the header.
    with open(img, "r+b") as f:
        f.seek(60)
        f.write(struct.pack(">I", 0))
    rc, out, _ = assert_check_agrees(limg, qemu_img, img)
    assert rc != 0


@pytest.mark.parametrize("opts", [
    "cluster_size=512", "cluster_size=512,refcount_bits=1",
    "cluster_size=2M,refcount_bits=64", "refcount_bits=4",
    "extended_l2=on,cluster_size=128k,refcount_bits=32",
    "extended_l2=on,cluster_size=16k",
])
def test_check_geometries(limg, qemu_img, qemu_io_bin, tmp_dir, opts):
    img = qcreate(qemu_img, os.path.join(tmp_dir, "g.qcow2"), size="16M",
                  opts=opts)
    qio(qemu_io_bin, img, "write -P 1 0 4k", "write -P 2 1M 300k",
        "write -z 5M 64k", "write -P 3 8M 1k", "discard 1M 64k")
    rc, out, err = assert_check_agrees(limg, qemu_img, img)
    assert rc == 0 and err == ""
    ours = run([limg, "check", img])
    theirs = run([qemu_img, "check", img])
    assert ours.stdout.replace(img, "I") == theirs.stdout.replace(img, "I")


def test_check_compressed(limg, qemu_img, qemu_io_bin, tmp_dir):
    src = qcreate(qemu_img, os.path.join(tmp_dir, "s.qcow2"), size="8M")
    qio(qemu_io_bin, src, "write -P 1 0 1M", "write -P 7 3M 200k")
    for cs in ("4k", "64k", "1M"):
        dst = os.path.join(tmp_dir, "c%s.qcow2" % cs)
        r = run([qemu_img, "convert", "-c", "-O", "qcow2", "-o",
                 "cluster_size=" + cs, src, dst])
        assert r.returncode == 0, r.stderr
        rc, out, _ = assert_check_agrees(limg, qemu_img, dst)
        assert rc == 0 and out["compressed-clusters"] > 0


def test_check_fragmented(limg, qemu_img, qemu_io_bin, tmp_dir):
    img = qcreate(qemu_img, os.path.join(tmp_dir, "f.qcow2"), size="1M",
                  opts="cluster_size=512")
    qio(qemu_io_bin, img, "write 0 512", "write 64k 512", "write 1k 512",
        "write 2k 512")
    rc, out, _ = assert_check_agrees(limg, qemu_img, img)
    assert out["fragmented-clusters"] == 1


# Hand-made corruptions: (name, patch(image), creation options).  Each
# patch gets a Qcow2 helper for an image with data at 0..300k and 8M.
L2_MASK = 0x00fffffffffffe00


def _l2(q, i, esz=8):
    return (q.read64(q.l1_offset) & L2_MASK) + esz * i


def _set(q, pos, fn):
    q.write64(pos, fn(q.read64(pos)))


CORRUPTIONS = {
    "reftable_unaligned": lambda q: q.write64(q.rt_offset + 8, 0x12345),
    "reftable_beyond_eof": lambda q: q.write64(q.rt_offset + 8, 1 << 30),
    "reftable_reserved": lambda q: _set(q, q.rt_offset, lambda v: v | 1),
    "l1_reserved": lambda q: _set(q, q.l1_offset, lambda v: v | 1 << 60),
    "l1_unaligned": lambda q: _set(q, q.l1_offset, lambda v: v + 512),
    "l1_copied_missing": lambda q: _set(q, q.l1_offset,
                                        lambda v: v & ~(1 << 63)),
    "l2_reserved": lambda q: _set(q, _l2(q, 0), lambda v: v | 2),
    "l2_compressed_copied": lambda q: q.write64(
        _l2(q, 3), 1 << 62 | 1 << 63 | (q.read64(_l2(q, 0)) & 0xffffffffff)),
    "l2_compressed_shared": lambda q: q.write64(
        _l2(q, 3), 1 << 62 | ((q.read64(_l2(q, 0)) & 0xffffffffff) + 100)),
    "l2_zero_alloc": lambda q: _set(q, _l2(q, 4), lambda v: v | 1),
    "l2_duplicate": lambda q: q.write64(_l2(q, 60), q.read64(_l2(q, 4))),
    "l2_points_to_header": lambda q: q.write64(_l2(q, 5), 1 << 63),
    "l2_points_to_l1": lambda q: q.write64(
        _l2(q, 5), 1 << 63 | (q.l1_offset & ~(q.cs - 1))),
    "dirty_and_dropped_entry": lambda q: (q.write64(72, 1),
                                          q.write64(_l2(q, 4), 0)),
}

EXTL2_CORRUPTIONS = {
    "alloc_and_zero": lambda q: _set(q, _l2(q, 0, 16) + 8,
                                     lambda v: v | 1 << 32),
    "alloc_without_offset": lambda q: q.write64(_l2(q, 30, 16) + 8, 1),
    "compressed_with_bitmap": lambda q: (
        q.write64(_l2(q, 31, 16),
                  1 << 62 | (q.read64(_l2(q, 0, 16)) & 0xffffffffff)),
        q.write64(_l2(q, 31, 16) + 8, 5)),
    "compressed_overflows_1bit": lambda q: q.write64(
        _l2(q, 31, 16), 1 << 62 | (q.read64(_l2(q, 0, 16)) & 0xffffffffff)),
    "unallocated_zero_bits": lambda q: q.write64(_l2(q, 30, 16) + 8,
                                                 0xffffffff00000000),
}


def corrupt_image(tmp_dir, qemu_img, qemu_io_bin, opts, patch):
    img = qcreate(qemu_img, os.path.join(tmp_dir, "x.qcow2"), size="16M",
                  opts=opts)
    qio(qemu_io_bin, img, "write -P 1 0 300k", "write -P 2 8M 64k")
    patch(Qcow2(img))
    return img


def assert_same_problem_lines(limg, qemu_img, img):
    ours, theirs = run([limg, "check", img]), run([qemu_img, "check", img])
    assert ours.stdout.replace(img, "I") == theirs.stdout.replace(img, "I")
    # The advice after an overflow names other tools; compare the error.
    strip = [l for l in ours.stderr.splitlines() if not l.startswith("Use ")]
    qstrip = [l for l in theirs.stderr.splitlines()
              if not l.startswith("Use ")]
    assert strip == qstrip


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("opts", ["cluster_size=4096,refcount_bits=64",
                                  "cluster_size=65536"])
def test_check_corruptions(limg, qemu_img, qemu_io_bin, tmp_dir, name, opts):
    img = corrupt_image(tmp_dir, qemu_img, qemu_io_bin, opts,
                        CORRUPTIONS[name])
    assert_check_agrees(limg, qemu_img, img)
    assert_same_problem_lines(limg, qemu_img, img)


@pytest.mark.parametrize("name", sorted(EXTL2_CORRUPTIONS))
@pytest.mark.parametrize("opts", ["extended_l2=on,cluster_size=64k",
                                  "extended_l2=on,cluster_size=16k,"
                                  "refcount_bits=1"])
def test_check_extl2_corruptions(limg, qemu_img, qemu_io_bin, tmp_dir, name,
                                 opts):
    img = corrupt_image(tmp_dir, qemu_img, qemu_io_bin, opts,
                        EXTL2_CORRUPTIONS[name])
    assert_check_agrees(limg, qemu_img, img)
    assert_same_problem_lines(limg, qemu_img, img)


@pytest.mark.parametrize("name", ["reftable_unaligned", "reftable_beyond_eof",
                                  "reftable_reserved", "l2_duplicate",
                                  "l1_copied_missing", "l2_points_to_l1"])
def test_repair_all_rebuilds(limg, qemu_img, qemu_io_bin, tmp_dir, name):
    """-r all leaves an image qemu-img finds clean, with the same data."""
    img = corrupt_image(tmp_dir, qemu_img, qemu_io_bin,
                        "cluster_size=4096,refcount_bits=64",
                        CORRUPTIONS[name])
    rc, out, err = check(limg, img, "-r", "all")
    assert rc == 0, err
    assert out.get("corruptions-fixed", 0) >= 1
    r = run([qemu_img, "check", img])
    assert r.returncode == 0, r.stdout + r.stderr
    # Entry 5 (20k) is the patched one in some cases: read around it.
    r = run([qemu_io_bin, "-f", "qcow2", "-c", "read -P 1 0 16k", "-c",
             "read -P 2 8M 64k", img])
    assert r.returncode == 0 and "Pattern verification failed" not in \
        r.stdout, r.stdout


def test_repair_leaks_refuses_broken_reftable(limg, qemu_img, qemu_io_bin,
                                              tmp_dir):
    img = corrupt_image(tmp_dir, qemu_img, qemu_io_bin, "cluster_size=65536",
                        CORRUPTIONS["reftable_reserved"])
    rc, _, err = check(limg, img, "-r", "leaks")
    assert rc == 1
    assert "ERROR need to rebuild refcount structures" in err


def test_check_extl2_zero_flag_is_reported(limg, qemu_img, qemu_io_bin,
                                           tmp_dir):
    """Stricter than qemu-img: bit 0 is reserved with extended L2."""
    img = corrupt_image(tmp_dir, qemu_img, qemu_io_bin,
                        "extended_l2=on", lambda q: _set(
                            q, _l2(q, 0, 16), lambda v: v | 1))
    rc, out, err = check(limg, img)
    assert rc == 2 and out["corruptions"] == 1
    assert "zero flag set in an extended L2 entry" in err
    assert run([qemu_img, "check", img]).returncode == 0


def fuzz_seeds(tmp_dir, qemu_img, qemu_io_bin):
    """Small images that use most of the format."""
    seeds = []
    for i, opts in enumerate(["cluster_size=512,refcount_bits=1",
                              "extended_l2=on,cluster_size=16k",
                              "compat=0.10", "refcount_bits=64"]):
        img = qcreate(qemu_img, os.path.join(tmp_dir, "seed%d.qcow2" % i),
                      size="2M", opts=opts)
        qio(qemu_io_bin, img, "write -P 1 0 40k", "write -z 1M 16k",
            "write -P 2 1536k 8k")
        seeds.append(img)
    run([qemu_img, "snapshot", "-c", "s", seeds[0]])
    run([qemu_img, "bitmap", "--add", seeds[1], "b"])
    comp = os.path.join(tmp_dir, "seedc.qcow2")
    run([qemu_img, "convert", "-c", "-O", "qcow2", seeds[3], comp])
    return seeds + [comp]


def test_random_corruption_never_crashes(limg, qemu_img, qemu_io_bin,
                                         tmp_dir):
    """Corrupt images are errors, never crashes or hangs (style E7)."""
    rnd = random.Random(20261123)
    seeds = fuzz_seeds(tmp_dir, qemu_img, qemu_io_bin)
    img = os.path.join(tmp_dir, "fuzz.qcow2")
    for _ in range(60):
        with open(rnd.choice(seeds), "rb") as f:
            data = bytearray(f.read())
        for _ in range(rnd.randint(1, 8)):
            limit = rnd.choice([112, 512, 4096, len(data)])
            data[rnd.randrange(min(limit, len(data)))] = rnd.randrange(256)
        for argv in (["check", "-f", "qcow2", "--output=json"],
                     ["check", "-f", "qcow2", "-r", "all"],
                     ["info", "-f", "qcow2", "--output=json"],
                     ["info", "-f", "qcow2"]):
            with open(img, "wb") as f:
                f.write(data)
            r = run([limg] + argv + [img], timeout=60)
            assert r.returncode in (0, 1, 2, 3), (argv, r.stderr)
            assert "Sanitizer" not in r.stderr, r.stderr
            assert "runtime error" not in r.stderr, r.stderr


def test_check_not_qcow2(limg, tmp_dir):
    img = make_image(os.path.join(tmp_dir, "r.raw"), MiB)
    r = run([limg, "check", "-f", "qcow2", img])
    assert r.returncode == 1
    assert r.stderr == ("lockstep-img: Could not open '%s': Image is not in "
                        "qcow2 format\n" % img)


# ---- check refuses what open refuses ----------------------------------------
#
# Images that lockstep's (and QEMU's) open refuses must never be called
# clean: like qemu-img check, lockstep-img check says it could not open the
# image (exit 1), with a message about the same thing.  Each case patches
# a fresh image: (patch(path, Qcow2), overlay?, words both messages have).


def _be32(path, off, v):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(">I", v))


def _first_ext(path):
    """Offset of the first header extension (v3)."""
    with open(path, "rb") as f:
        f.seek(100)
        return struct.unpack(">I", f.read(4))[0]


def _rename_backing(path, name):
    with open(path, "r+b") as f:
        f.seek(8)
        off, size = struct.unpack(">QI", f.read(12))
        f.seek(off)
        f.write(name.ljust(size, b"x")[:size])


def _compression(path, q):
    q.write64(72, q.read64(72) | 8)
    with open(path, "r+b") as f:
        f.seek(104)
        f.write(b"\x05")


OPEN_REFUSED = {
    "huge_virtual_size": (lambda p, q: q.write64(24, 1 << 62), False,
                          ["Image is too big"]),
    "backing_name_too_long": (lambda p, q: _be32(p, 16, 2000), True,
                              ["Backing file name too long"]),
    "backing_name_offset": (lambda p, q: q.write64(8, 0x20000), True,
                            ["backing file"]),
    "backing_missing": (lambda p, q: _rename_backing(p, b"nope.qcow2"), True,
                        ["Could not open backing file: Could not open",
                         "nope.qcow2': No such file or directory"]),
    "extension_oversized": (lambda p, q: _be32(p, _first_ext(p) + 4, 40),
                            True, ["ERROR: ext_backing_format: len=40 too "
                                   "large (>=16)"]),
    "extension_truncated": (lambda p, q: _be32(p, _first_ext(p) + 4,
                                               0x100000), True,
                            ["xtension"]),
    "encrypted_aes": (lambda p, q: _be32(p, 32, 1), False, ["crypt"]),
    "encrypted_luks": (lambda p, q: _be32(p, 32, 2), False, ["crypt"]),
    "header_length_unaligned": (lambda p, q: _be32(p, 100, 108), False,
                                ["eader"]),
    "compression_type_unknown": (_compression, False,
                                 ["compression type", "5"]),
    "data_file_missing": (lambda p, q: q.write64(72, 4), False,
                          ["'data-file' is required for this image"]),
    "data_file_raw_alone": (lambda p, q: q.write64(88, 2), False,
                            ["data-file-raw requires a data file"]),
    "snapshot_offset_unaligned": (lambda p, q: q.write64(64, 0x123), False,
                                  ["napshot table offset invalid"]),
}


@pytest.mark.parametrize("name", sorted(OPEN_REFUSED))
def test_check_refuses_what_open_refuses(limg, qemu_img, qemu_io_bin,
                                         tmp_dir, name, build_dir):
    patch, overlay, words = OPEN_REFUSED[name]
    img = os.path.join(tmp_dir, "x.qcow2")
    if overlay:
        qcreate(qemu_img, os.path.join(tmp_dir, "base.qcow2"), size="4M")
        qcreate(qemu_img, img, size="4M", backing="base.qcow2")
    else:
        qcreate(qemu_img, img, size="4M")
    qio(qemu_io_bin, img, "write -P 1 0 64k")
    patch(img, Qcow2(img))
    lio = os.path.join(build_dir, "lockstep-io")
    opened = run([lio, "-r", "-c", "read 0 512", img])
    assert opened.returncode != 0       # our open refuses it
    ours = run([limg, "check", img])
    theirs = run([qemu_img, "check", img])
    assert ours.returncode == theirs.returncode == 1, (ours, theirs)
    assert ours.stdout == theirs.stdout == ""
    prefix = "Could not open '%s': " % img
    assert ours.stderr.startswith("lockstep-img: " + prefix), ours.stderr
    # QEMU opens this one for its check, then fails the check.
    assert theirs.stderr.startswith("qemu-img: " + prefix) or \
        name == "snapshot_offset_unaligned", theirs.stderr
    for w in words:
        assert w.lower() in ours.stderr.lower(), (w, ours.stderr)
        assert w.lower() in theirs.stderr.lower(), (w, theirs.stderr)
    # JSON output and repair modes say the same.
    for extra in (["--output=json"], ["-r", "leaks"], ["-r", "all"]):
        assert run([limg, "check"] + extra + [img]).returncode == 1, extra


def test_check_missing_data_file(limg, qemu_img, tmp_dir):
    img = os.path.join(tmp_dir, "d.qcow2")
    data = os.path.join(tmp_dir, "d.raw")
    qcreate(qemu_img, img, size="4M", opts="data_file=" + data)
    assert_check_agrees(limg, qemu_img, img)
    os.rename(data, data + ".moved")
    ours = run([limg, "check", img])
    theirs = run([qemu_img, "check", img])
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.replace("lockstep-img", "qemu-img") == theirs.stderr


@pytest.mark.parametrize("data_clusters", [1, 2])
def test_check_file_truncated_in_l2_table(limg, qemu_img, qemu_io_bin,
                                          tmp_dir, data_clusters):
    """The file ends in the middle of the L2 table: the part still there
    is walked (the rest reads as zeroes), its data is past the end."""
    img = qcreate(qemu_img, os.path.join(tmp_dir, "t.qcow2"), size="4M")
    qio(qemu_io_bin, img, "write -P 1 0 %dk" % (64 * data_clusters))
    q = Qcow2(img)
    l2 = q.read64(q.l1_offset) & 0x00fffffffffffe00
    with open(img, "r+b") as f:
        f.truncate(l2 + q.cs // 2)
    rc, out, err = assert_check_agrees(limg, qemu_img, img)
    assert rc == 2 and out["corruptions"] == data_clusters
    assert_same_problem_lines(limg, qemu_img, img)
    for fix in ("leaks", "all"):
        copy = os.path.join(tmp_dir, "c.qcow2")
        shutil.copy(img, copy)
        assert_check_agrees(limg, qemu_img, copy, "-r", fix)


def test_check_refblock_past_end(limg, qemu_img, data_image):
    """A refcount block past the end of the file reads as zeroes."""
    q = Qcow2(data_image)
    q.write64(q.rt_offset, 1 << 30)
    rc, _, _ = assert_check_agrees(limg, qemu_img, data_image)
    assert rc == 2
    assert_same_problem_lines(limg, qemu_img, data_image)


def test_check_never_clean_when_open_refuses(limg, qemu_img, qemu_io_bin,
                                             tmp_dir, build_dir):
    """Random damage to the header cluster: whenever lockstep's read-only
    open refuses the image as malformed, check does not call it clean."""
    lio = os.path.join(build_dir, "lockstep-io")
    rnd = random.Random(20260214)
    seeds = fuzz_seeds(tmp_dir, qemu_img, qemu_io_bin)
    qcreate(qemu_img, os.path.join(tmp_dir, "b.qcow2"), size="2M")
    seeds.append(qcreate(qemu_img, os.path.join(tmp_dir, "o.qcow2"),
                         size="2M", backing="b.qcow2"))
    img = os.path.join(tmp_dir, "h.qcow2")
    refused = 0
    for _ in range(150):
        with open(rnd.choice(seeds), "rb") as f:
            data = bytearray(f.read())
        for _ in range(rnd.randint(1, 3)):
            data[rnd.randrange(rnd.choice([112, 512]))] = rnd.randrange(256)
        with open(img, "wb") as f:
            f.write(data)
        opened = run([lio, "-f", "qcow2", "-r", "-c", "read 0 512", img])
        if opened.returncode == 0 or "not supported" in opened.stderr:
            continue        # valid, or valid but a feature we lack
        refused += 1
        r = run([limg, "check", "-f", "qcow2", img])
        assert r.returncode != 0, (opened.stderr, r.stdout, r.stderr)
    assert refused > 20


# ---- map, compare, convert, resize (raw) --------------------------------


@pytest.fixture
def raw_pair(tmp_dir):
    a = make_image(os.path.join(tmp_dir, "a.raw"), MiB)
    b = make_image(os.path.join(tmp_dir, "b.raw"), MiB)
    with open(a, "r+b") as f:
        f.seek(100 * KiB)
        f.write(b"\x11" * 8 * KiB)
    shutil.copy(a, b)
    return a, b


@pytest.mark.parametrize("output", ["human", "json"])
def test_map_raw_same_as_qemu(limg, qemu_img, raw_pair, output):
    a, _ = raw_pair
    argv = ["map", "-f", "raw", "--output=" + output, a]
    ours, theirs = run([limg] + argv), run([qemu_img] + argv)
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout


@pytest.mark.parametrize("args", [["-s", "4096", "-l", "100000"],
                                  ["--start-offset=1k", "--max-length=8k"],
                                  ["-s", "2M"], ["-l", "0"]])
def test_map_range(limg, qemu_img, raw_pair, args):
    a, _ = raw_pair
    for output in ("human", "json"):
        argv = ["map", "-f", "raw", "--output=" + output] + args + [a]
        ours, theirs = run([limg] + argv), run([qemu_img] + argv)
        assert ours.returncode == theirs.returncode == 0
        assert ours.stdout == theirs.stdout


def test_compare_raw(limg, qemu_img, raw_pair, tmp_dir):
    a, b = raw_pair
    argv = ["compare", "-f", "raw", "-F", "raw", a, b]
    ours, theirs = run([limg] + argv), run([qemu_img] + argv)
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout == "Images are identical.\n"
    with open(b, "r+b") as f:
        f.seek(100 * KiB + 1000)
        f.write(b"\x22")
    ours, theirs = run([limg] + argv), run([qemu_img] + argv)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stdout == theirs.stdout == \
        "Content mismatch at offset %d!\n" % (100 * KiB + 512)


def test_compare_size_mismatch(limg, qemu_img, raw_pair):
    a, b = raw_pair
    with open(b, "r+b") as f:
        f.truncate(2 * MiB)
    for strict in ([], ["-s"]):
        argv = ["compare"] + strict + ["-f", "raw", "-F", "raw", a, b]
        ours, theirs = run([limg] + argv), run([qemu_img] + argv)
        assert ours.returncode == theirs.returncode
        assert ours.stdout == theirs.stdout
    with open(b, "r+b") as f:
        f.seek(MiB + 4096)
        f.write(b"x")
    argv = ["compare", "-f", "raw", "-F", "raw", a, b]
    ours, theirs = run([limg] + argv), run([qemu_img] + argv)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stdout == theirs.stdout


def test_compare_open_error(limg, raw_pair, tmp_dir):
    a, _ = raw_pair
    r = run([limg, "compare", a, os.path.join(tmp_dir, "nope")])
    assert r.returncode == 2
    assert "nope" in r.stderr


def test_convert_raw(limg, raw_pair, tmp_dir):
    a, _ = raw_pair
    out = os.path.join(tmp_dir, "out.raw")
    r = run([limg, "convert", "-p", "-f", "raw", "-O", "raw", a, out])
    assert r.returncode == 0, r.stderr
    # run() reads text, which turns the "\r" of progress lines into "\n".
    lines = r.stdout.splitlines()
    assert lines[0] == "    (0.00/100%)" and lines[-1] == "    (100.00/100%)"
    with open(a, "rb") as f1, open(out, "rb") as f2:
        assert f1.read() == f2.read()
    # Zero ranges stay sparse.
    assert os.stat(out).st_blocks * 512 < 256 * KiB


def test_resize_raw(limg, qemu_img, tmp_dir):
    img = make_image(os.path.join(tmp_dir, "r.raw"), MiB)
    r = run([limg, "resize", "-f", "raw", img, "+1M"])
    assert r.returncode == 0 and r.stdout == "Image resized.\n"
    assert os.path.getsize(img) == 2 * MiB
    r = run([limg, "resize", "-f", "raw", img, "-1M"])
    assert r.returncode == 1
    assert r.stderr.startswith("lockstep-img: Use the --shrink option to "
                               "perform a shrink operation.\n"
                               "lockstep-img: warning: Shrinking")
    r = run([limg, "resize", "-f", "raw", "--shrink", img, "-1M"])
    assert r.returncode == 0
    assert os.path.getsize(img) == MiB
    r = run([limg, "resize", "-f", "raw", img, "3M"])
    assert r.returncode == 0 and os.path.getsize(img) == 3 * MiB


def direct_opens(argv, tmp_dir):
    """Run argv under strace in tmp_dir: {file name: opened with O_DIRECT}
    of the .qcow2 files it opened read-write or with O_DIRECT."""
    trace = os.path.join(tmp_dir, "strace.out")
    # LeakSanitizer cannot run under ptrace (the sanitizer pass).
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    r = subprocess.run([host_tool("strace"), "-f", "-e", "trace=openat",
                        "-o", trace] + argv, capture_output=True, text=True,
                       timeout=120, env=env)
    # compare: 1 means "different", which these images are.
    assert r.returncode == 0 or (argv[1] == "compare" and
                                 r.returncode == 1), r.stdout + r.stderr
    opens = {}
    with open(trace) as f:
        for line in f:
            if ".qcow2\"" not in line or "= -1" in line:
                continue
            name = os.path.basename(line.split('"')[1])
            direct = "O_DIRECT" in line
            if direct or "O_RDWR" in line or "O_WRONLY" in line:
                opens[name] = opens.get(name, False) or direct
    return opens


@pytest.mark.parametrize("cmd,opened", [
    (["create", "-t", "none", "-f", "qcow2", "new.qcow2", "16M"],
     ["new.qcow2"]),
    (["convert", "-t", "none", "-T", "none", "-O", "qcow2", "top.qcow2",
      "out.qcow2"], ["top.qcow2", "base.qcow2", "out.qcow2"]),
    (["check", "-T", "none", "top.qcow2"], ["top.qcow2"]),
    (["map", "-T", "none", "top.qcow2"], ["top.qcow2", "base.qcow2"]),
    (["compare", "-T", "none", "top.qcow2", "base.qcow2"],
     ["top.qcow2", "base.qcow2"]),
    (["commit", "-t", "none", "top.qcow2"], ["top.qcow2", "base.qcow2"]),
    (["resize", "-t", "none", "top.qcow2", "+1M"], ["top.qcow2"]),
])
def test_cache_none(limg, qemu_img, qemu_io_bin, qcow2_driver, tmp_dir, cmd,
                    opened):
    """-t none / -T none open every image of the command with O_DIRECT
    (qemu-img's options; create, map and resize take them too), and the
    result is what qemu-img reads."""
    if not supports_o_direct(tmp_dir):
        pytest.skip("no O_DIRECT in %s" % tmp_dir)
    base = os.path.join(tmp_dir, "base.qcow2")
    top = os.path.join(tmp_dir, "top.qcow2")
    assert run([qemu_img, "create", "-q", "-f", "qcow2", base,
                "16M"]).returncode == 0
    qio(qemu_io_bin, base, "write -P 0x11 0 1M", "write -P 0x12 3M 5000")
    assert run([qemu_img, "create", "-q", "-f", "qcow2", "-b", "base.qcow2",
                "-F", "qcow2", top]).returncode == 0
    qio(qemu_io_bin, top, "write -P 0x22 512k 1M", "write -P 0x23 5M 1000")
    cwd = os.getcwd()
    os.chdir(tmp_dir)
    try:
        opens = direct_opens([limg] + cmd, tmp_dir)
    finally:
        os.chdir(cwd)
    for name in opened:
        assert opens.get(name), (name, opens)
    if cmd[0] in ("convert", "commit"):
        img = os.path.join(tmp_dir, "out.qcow2" if cmd[0] == "convert"
                           else "base.qcow2")
        qio(qemu_io_bin, img, "read -P 0x11 0 512k", "read -P 0x22 512k 1M",
            "read -P 0x12 3M 5000", "read -P 0x23 5M 1000")
        assert run([qemu_img, "check", "-q", img]).returncode == 0


@pytest.mark.parametrize("cmd", [["check", "-T", "bogus"],
                                 ["convert", "-t", "bogus"],
                                 ["commit", "-t", "writethrough"]])
def test_cache_mode_refused(limg, tmp_dir, cmd):
    img = make_image(os.path.join(tmp_dir, "r.raw"), MiB)
    r = run([limg] + cmd + [img, img + ".out"][:2 if cmd[0] == "convert"
                                                 else 1])
    assert r.returncode == 1
    assert ("Invalid cache option: bogus" in r.stderr or
            "Cache mode 'writethrough' is not supported" in r.stderr)


def test_commit_needs_backing(limg, qemu_img, tmp_dir):
    img = make_image(os.path.join(tmp_dir, "r.raw"), MiB)
    ours = run([limg, "commit", "-f", "raw", img])
    theirs = run([qemu_img, "commit", "-f", "raw", img])
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.replace("lockstep-img", "qemu-img") == theirs.stderr


@pytest.fixture
def nbd_export(tmp_dir):
    """A 4 MiB raw image served by qemu-nbd on a Unix socket."""
    qemu_nbd = shutil.which("qemu-nbd")
    if not qemu_nbd:
        pytest.skip("qemu-nbd is not installed")
    img = make_image(os.path.join(tmp_dir, "nbd.raw"), 4 * MiB)
    sock = os.path.join(tmp_dir, "nbd.sock")
    pidfile = os.path.join(tmp_dir, "nbd.pid")
    r = run([qemu_nbd, "-f", "raw", "-k", sock, "-x", "exp", "-t", "--fork",
             "--pid-file", pidfile, img])
    assert r.returncode == 0, r.stderr
    yield "nbd+unix:///exp?socket=" + sock, img
    with open(pidfile) as f:
        os.kill(int(f.read()), 15)


def test_nbd_url_convert_compare_map(limg, qemu_img, raw_pair, nbd_export):
    url, backing_file = nbd_export
    src, _ = raw_pair
    r = run([limg, "convert", "-n", "-f", "raw", "-O", "raw", src, url])
    assert r.returncode == 0, r.stderr
    with open(src, "rb") as a, open(backing_file, "rb") as b:
        assert b.read(MiB) == a.read()
    for argv in (["compare", "-f", "raw", "-F", "raw", src, url],
                 ["map", "--output=json", "-f", "raw", url],
                 ["info", "--output=json", "-f", "raw", url]):
        ours, theirs = run([limg] + argv), run([qemu_img] + argv)
        assert ours.returncode == theirs.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout


def test_convert_target_is_zero_needs_n(limg, raw_pair, tmp_dir):
    src, _ = raw_pair
    r = run([limg, "convert", "--target-is-zero", src,
             os.path.join(tmp_dir, "o.raw")])
    assert r.returncode == 1
    assert "--target-is-zero requires use of -n flag" in r.stderr


def test_convert_n_overwrites_with_zeroes(limg, raw_pair, tmp_dir):
    """-n without --target-is-zero: zero ranges of the source are written."""
    src, _ = raw_pair
    dst = make_image(os.path.join(tmp_dir, "dst.raw"), MiB, fill=0x55)
    r = run([limg, "convert", "-n", "-f", "raw", "-O", "raw", src, dst])
    assert r.returncode == 0, r.stderr
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read() == b.read()


# ---- qcow2 data commands (need the qcow2 driver) ----------------------------


@pytest.fixture
def chain(tmp_dir, qemu_img, qemu_io_bin):
    base = qcreate(qemu_img, os.path.join(tmp_dir, "base.qcow2"), size="4M")
    qio(qemu_io_bin, base, "write -P 1 0 128k", "write -z 1M 64k",
        "write -P 5 3M 64k")
    top = qcreate(qemu_img, os.path.join(tmp_dir, "top.qcow2"), size=None,
                  backing="base.qcow2")
    qio(qemu_io_bin, top, "write -P 2 64k 128k", "write -z 3M 4k")
    return base, top


@pytest.mark.parametrize("output", ["human", "json"])
def test_map_qcow2_chain(limg, qemu_img, qcow2_driver, chain, output):
    _, top = chain
    argv = ["map", "--output=" + output, top]
    ours, theirs = run([limg] + argv), run([qemu_img] + argv)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    if output == "json":
        assert json.loads(ours.stdout) == json.loads(theirs.stdout)
    assert ours.stdout == theirs.stdout


def test_map_compressed(limg, qemu_img, qemu_io_bin, qcow2_driver, tmp_dir):
    src = qcreate(qemu_img, os.path.join(tmp_dir, "s.qcow2"), size="4M")
    qio(qemu_io_bin, src, "write -P 1 0 200k")
    img = os.path.join(tmp_dir, "c.qcow2")
    assert run([qemu_img, "convert", "-c", "-O", "qcow2", src,
                img]).returncode == 0
    ours = run([limg, "map", "--output=json", img])
    theirs = run([qemu_img, "map", "--output=json", img])
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout
    ours, theirs = run([limg, "map", img]), run([qemu_img, "map", img])
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == ("lockstep-img: File contains external, encrypted "
                           "or compressed clusters.\n")


def test_compare_qcow2(limg, qemu_img, qcow2_driver, chain):
    base, top = chain
    for argv in (["compare", base, top], ["compare", top, top],
                 ["compare", "-s", top, top]):
        ours, theirs = run([limg] + argv), run([qemu_img] + argv)
        assert ours.returncode == theirs.returncode, ours.stderr
        assert ours.stdout == theirs.stdout


def test_convert_qcow2_roundtrip(limg, qemu_img, qcow2_driver, chain,
                                 tmp_dir):
    _, top = chain
    out = os.path.join(tmp_dir, "out.qcow2")
    r = run([limg, "convert", "-O", "qcow2", "-o", "cluster_size=4k", top,
             out])
    assert r.returncode == 0, r.stderr
    assert run([qemu_img, "check", out]).returncode == 0
    assert run([qemu_img, "compare", top, out]).returncode == 0
    assert info_json(qemu_img, out)["cluster-size"] == 4096
    raw = os.path.join(tmp_dir, "out.raw")
    r = run([limg, "convert", "-f", "qcow2", "-O", "raw", out, raw])
    assert r.returncode == 0, r.stderr
    assert run([qemu_img, "compare", "-F", "raw", top, raw]).returncode == 0


def test_commit_qcow2(limg, qemu_img, qcow2_driver, chain, tmp_dir):
    base, top = chain
    ref = os.path.join(tmp_dir, "ref.raw")
    assert run([qemu_img, "convert", "-O", "raw", top, ref]).returncode == 0
    r = run([limg, "commit", "-p", top])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("Image committed.\n")
    assert run([qemu_img, "compare", "-F", "raw", base, ref]).returncode == 0
    assert run([qemu_img, "compare", "-F", "raw", top, ref]).returncode == 0
    for img in (base, top):
        assert run([qemu_img, "check", img]).returncode == 0
    m = json.loads(run([qemu_img, "map", "--output=json", top]).stdout)
    assert all(e["depth"] == 1 or not e["present"] for e in m)


def test_commit_qcow2_keep_top(limg, qemu_img, qcow2_driver, chain, tmp_dir):
    base, top = chain
    r = run([limg, "commit", "-d", top])
    assert r.returncode == 0, r.stderr
    m = json.loads(run([qemu_img, "map", "--output=json", top]).stdout)
    assert any(e["depth"] == 0 and e["present"] for e in m)
    assert run([qemu_img, "compare", base, top]).returncode == 0


@pytest.mark.parametrize("form", ["keyval", "json", "backing-inline"])
def test_commit_image_opts(limg, qemu_img, qcow2_driver, chain, tmp_dir,
                           form):
    """commit --image-opts (qemu-img's option): the top image from its
    options; the backing chain from them too when given, else from the
    headers.  The result is the same as committing by file name."""
    base, top = chain
    ref = os.path.join(tmp_dir, "ref.raw")
    assert run([qemu_img, "convert", "-O", "raw", top, ref]).returncode == 0
    if form == "keyval":
        opts = "driver=qcow2,file.driver=file,file.filename=%s" % top
    else:
        o = {"driver": "qcow2", "file": {"driver": "file", "filename": top}}
        if form == "backing-inline":
            o["backing"] = {"driver": "qcow2", "file": {"driver": "file",
                                                        "filename": base}}
        opts = json.dumps(o)
    r = run([limg, "commit", "--image-opts", opts])
    assert r.returncode == 0, r.stderr
    assert run([qemu_img, "compare", "-F", "raw", base, ref]).returncode == 0
    m = json.loads(run([qemu_img, "map", "--output=json", top]).stdout)
    assert all(e["depth"] == 1 or not e["present"] for e in m)
    for img in (base, top):
        assert run([qemu_img, "check", img]).returncode == 0


@pytest.mark.parametrize("args,msg", [
    (["--image-opts", "driver=qcow2"], "needs a driver and a file"),
    (["--image-opts", "-f", "qcow2", "driver=qcow2,file.filename=x"],
     "--image-opts and --format are mutually exclusive"),
])
def test_commit_image_opts_errors(limg, args, msg):
    r = run([limg, "commit"] + args)
    assert r.returncode == 1
    assert msg in r.stderr


def test_commit_deep_base_with_zeroes(limg, qemu_img, qemu_io_bin,
                                      qcow2_driver, tmp_dir):
    """-b BASE two levels down; a zero cluster in the top must reach base."""
    b = qcreate(qemu_img, os.path.join(tmp_dir, "b.qcow2"), size="4M")
    qio(qemu_io_bin, b, "write -P 1 0 1M")
    m = qcreate(qemu_img, os.path.join(tmp_dir, "m.qcow2"), size=None,
                backing="b.qcow2")
    qio(qemu_io_bin, m, "write -P 2 512k 1M")
    t = qcreate(qemu_img, os.path.join(tmp_dir, "t.qcow2"), size=None,
                backing="m.qcow2")
    qio(qemu_io_bin, t, "write -P 3 1M 1M", "write -z 0 64k")
    ref = os.path.join(tmp_dir, "ref.raw")
    assert run([qemu_img, "convert", "-O", "raw", t, ref]).returncode == 0
    r = run([limg, "commit", "-b", b, t])
    assert r.returncode == 0, r.stderr
    assert run([qemu_img, "compare", "-F", "raw", b, ref]).returncode == 0
    for img in (b, m, t):
        assert run([qemu_img, "check", img]).returncode == 0
    r = run([limg, "commit", "-b", os.path.join(tmp_dir, "x.qcow2"), t])
    assert r.returncode == 1 and "backing chain" in r.stderr


@pytest.mark.parametrize("opts", [
    "cluster_size=512", "cluster_size=4k,refcount_bits=1",
    "extended_l2=on", "cluster_size=2M,refcount_bits=64", "refcount_bits=8",
])
def test_driver_writes_pass_both_checkers(limg, qemu_img, lockstep_io,
                                          qcow2_driver, tmp_dir, opts):
    """Images made by lockstep-img and written by our driver stay clean."""
    img = os.path.join(tmp_dir, "d.qcow2")
    r = run([limg, "create", "-q", "-f", "qcow2", "-o", opts, img, "32M"])
    assert r.returncode == 0, r.stderr
    argv = [lockstep_io, "-f", "qcow2"]
    for c in ("write -P 1 0 1M", "write -P 2 5000 70000", "write -z 8M 1M",
              "discard 0 64k", "write -P 3 31M 1M"):
        argv += ["-c", c]
    r = run(argv + [img])
    assert r.returncode == 0, r.stdout + r.stderr
    rc, out, err = assert_check_agrees(limg, qemu_img, img)
    assert rc == 0 and err == ""


def test_resize_qcow2(limg, qemu_img, qcow2_driver, chain):
    _, top = chain
    r = run([limg, "resize", top, "+4M"])
    assert r.returncode == 0, r.stderr
    assert info_json(qemu_img, top)["virtual-size"] == 8 * MiB
    assert run([qemu_img, "check", top]).returncode == 0
