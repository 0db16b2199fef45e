# SPDX-License-Identifier: MIT
"""Bugs that QEMU's own iotests found in lockstep-img and lockstep-io.

Each test is the smallest case of one difference `make iotests` showed,
run with our tools and, where it helps, with qemu-img/qemu-io 7.2 on the
same files to show what QEMU does.
"""
import ctypes
import json
import os
import struct
import subprocess

import pytest

from conftest import built_program, host_tool, run, supports_o_direct
from qcow2_layout import Qcow2
from qmp_client import Daemon

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="session")
def limg(build_dir):
    return built_program(build_dir, "lockstep-img")


@pytest.fixture(scope="session")
def lio(build_dir):
    return built_program(build_dir, "lockstep-io")


def ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def io(tool, img, *cmds, fmt="qcow2"):
    argv = [tool, "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    return ok(run(argv + [img]))


# ---- raw images whose size is no multiple of 512 ---------------------------


@pytest.mark.parametrize("size,length", [(320, "512 bytes"),
                                         (1000, "1 KiB")])
def test_raw_length_rounds_up_to_sectors(lio, tmp_dir, size, length):
    """A 320-byte raw file is a 512-byte image whose end reads zeroes."""
    img = os.path.join(tmp_dir, "r.raw")
    with open(img, "wb") as f:
        f.write(b"\x5a" * size)
    whole = (size + 511) // 512 * 512
    r = io(lio, img, "length", fmt="raw")
    assert r.stdout.splitlines()[0] == length
    r = io(lio, img, "read -P 0x5a 0 %d" % size,
           "read -P 0 %d %d" % (size, whole - size), fmt="raw")
    assert "Pattern verification failed" not in r.stdout
    # Reading did not grow the file.
    assert os.path.getsize(img) == size


def test_raw_write_past_file_end_inside_last_sector(lio, tmp_dir):
    img = os.path.join(tmp_dir, "r.raw")
    with open(img, "wb") as f:
        f.write(b"\0" * 320)
    io(lio, img, "write -P 7 400 100", fmt="raw")
    assert os.path.getsize(img) == 500
    io(lio, img, "read -P 0 0 400", "read -P 7 400 100", "read -P 0 500 12",
       fmt="raw")


@pytest.mark.parametrize("prealloc", ["off", "falloc", "full"])
def test_raw_create_rounds_size_up(limg, tmp_dir, prealloc):
    img = os.path.join(tmp_dir, "c.raw")
    ok(run([limg, "create", "-q", "-f", "raw", "-o",
            "preallocation=" + prealloc, img, "65537"]))
    assert os.path.getsize(img) == 66048


# ---- check on an image too big to open -------------------------------------


def set_qcow2_size(path, size):
    with open(path, "r+b") as f:
        f.seek(24)
        f.write(struct.pack(">Q", size))


def test_check_refuses_1_eib_header(limg, tmp_dir):
    """The L1 index of 1 EiB passes INT_MAX: QEMU cannot open it either."""
    img = os.path.join(tmp_dir, "big.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "4G"]))
    set_qcow2_size(img, 1 << 60)
    r = run([limg, "check", img])
    assert r.returncode == 1
    assert "Could not open '%s': Image is too big" % img in r.stderr
    assert "No errors" not in r.stdout
    r = run([limg, "info", img])
    assert r.returncode == 1 and "Image is too big" in r.stderr


def test_check_refuses_l1_smaller_than_size(limg, tmp_dir):
    img = os.path.join(tmp_dir, "small-l1.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "1G"]))
    set_qcow2_size(img, 1 << 40)    # 1 TiB needs 2048 entries, L1 has 2
    r = run([limg, "check", img])
    assert r.returncode == 1
    assert "L1 table is too small" in r.stderr


# ---- commit through a blkdebug: filename --------------------------------------


def make_chain(limg, lio, tmp_dir):
    base = os.path.join(tmp_dir, "t.qcow2.base")
    top = os.path.join(tmp_dir, "t.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", base, "64M"]))
    ok(run([limg, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
            top, "64M"]))
    io(lio, top, "write -P 3 0 64k")
    return base, top


def test_commit_through_blkdebug_filename(limg, lio, tmp_dir):
    base, top = make_chain(limg, lio, tmp_dir)
    conf = os.path.join(tmp_dir, "empty.conf")
    open(conf, "w").close()
    r = ok(run([limg, "commit", "blkdebug:%s:%s" % (conf, top)]))
    assert "Image committed." in r.stdout
    io(lio, base, "read -P 3 0 64k")
    r = io(lio, top, "map")
    assert r.stdout.startswith("64 MiB (0x4000000) bytes not allocated")


def test_commit_blkdebug_error_while_emptying(limg, lio, tmp_dir):
    """An error injected on the top says "Failed to empty", as qemu-img."""
    base, top = make_chain(limg, lio, tmp_dir)
    conf = os.path.join(tmp_dir, "bd.conf")
    with open(conf, "w") as f:
        f.write('[inject-error]\nevent = "l1_update"\n')
    name = "blkdebug:%s:%s" % (conf, top)
    r = run([limg, "commit", name])
    assert r.returncode == 1
    assert r.stderr.strip().endswith(
        "Failed to empty %s: Input/output error" % name), r.stderr
    assert "does not have a backing file" not in r.stderr
    assert "bitmaps" not in r.stderr
    # The data reached the base; the top still reads the same.
    io(lio, base, "read -P 3 0 64k")
    io(lio, top, "read -P 3 0 64k")
    ok(run([limg, "check", "-r", "all", top]))


# ---- Allocation: the metadata QEMU writes -----------------------------------


@pytest.fixture(scope="session")
def qimg():
    return host_tool("qemu-img")


@pytest.fixture(scope="session")
def qio():
    return host_tool("qemu-io")


def qmap(qimg, img):
    """The image's map as qemu-img reads it."""
    return ok(run([qimg, "map", "--output=json", img])).stdout


ZERO_CASES = [
    # (backing file?, extended L2?, commands)
    (True, False, ["write -z 0 4k"]),           # sub-cluster over zeroes
    (True, False, ["write -z 1k 130k"]),
    (True, True, ["write -z 1k 3k"]),
    (False, False, ["write -z 0 4k"]),          # unallocated, no backing
    (False, False, ["write -z 0 64k"]),
    (False, True, ["write -z 0 100k"]),
    (False, False, ["write -P 1 0 64k", "write -z 4k 4k"]),
]


@pytest.mark.parametrize("backing,ext,cmds", ZERO_CASES)
def test_write_zeroes_metadata_as_qemu(lio, qio, qimg, tmp_dir, backing, ext,
                                       cmds):
    maps = []
    for tool in (lio, qio):
        img = os.path.join(tmp_dir, "a-%d.qcow2" % len(maps))
        opts = "extended_l2=on" if ext else "extended_l2=off"
        if backing:
            base = img + ".base"
            ok(run([qimg, "create", "-q", "-f", "qcow2", "-o", opts, base,
                    "1M"]))
            ok(run([qimg, "create", "-q", "-f", "qcow2", "-o", opts, "-b",
                    base, "-F", "qcow2", img, "1M"]))
        else:
            ok(run([qimg, "create", "-q", "-f", "qcow2", "-o", opts, img,
                    "1M"]))
        io(tool, img, *cmds)
        maps.append(qmap(qimg, img))
    assert maps[0] == maps[1]
    # A zero cluster, not data, at the start.
    assert '"zero": true, "data": false' in maps[0].splitlines()[0] or \
        "write -P" in cmds[0]


def test_write_zeroes_over_backing_data_keeps_data(lio, qimg, tmp_dir):
    """Only where the backing file reads zeroes may a piece grow whole."""
    base = os.path.join(tmp_dir, "b.qcow2")
    img = os.path.join(tmp_dir, "a.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", base, "1M"]))
    io(lio, base, "write -P 1 0 4k")
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
            img, "1M"]))
    io(lio, img, "write -z 8k 4k")
    io(lio, img, "read -P 1 0 4k", "read -P 0 4k 60k")


def test_commit_of_zeroed_overlay_frees_base_clusters(limg, lio, qimg,
                                                      tmp_dir):
    base = os.path.join(tmp_dir, "b.qcow2")
    top = os.path.join(tmp_dir, "t.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", base, "1M"]))
    io(lio, base, "write -P 1 0 128k")
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
            top, "1M"]))
    io(lio, top, "write -z 0 64k")
    ok(run([limg, "commit", top]))
    first = qmap(qimg, base).splitlines()[0]
    assert '"zero": true, "data": false}' in first and "offset" not in first
    r = ok(run([qimg, "check", base]))
    assert "1/16 = 6.25% allocated" in r.stdout
    io(lio, base, "read -P 0 0 64k", "read -P 1 64k 64k")


def test_map_preallocated_sparse_clusters_read_zero(limg, qimg, tmp_dir):
    img = os.path.join(tmp_dir, "p.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-o",
            "preallocation=metadata", img, "1M"]))
    ours = ok(run([limg, "map", "--output=json", img])).stdout
    assert ours == qmap(qimg, img)
    assert '"zero": true, "data": true' in ours
    # The human map lists data only: nothing here.
    r = ok(run([limg, "map", img]))
    assert r.stdout.splitlines()[1:] == []


def test_map_data_over_file_hole_without_preallocation(limg, lio, qimg,
                                                       tmp_dir):
    """Only a metadata-preallocated image asks its file under data
    clusters (as QEMU): elsewhere that lseek(2) pair per answer cost a
    scan to the end of the data on tmpfs, every READ of an NBD export.
    A data cluster whose file range was punched out stays data."""
    img = os.path.join(tmp_dir, "h.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "4M"]))
    io(lio, img, "write -P 0x11 0 4M")
    first = [e for e in json.loads(qmap(qimg, img)) if e["data"]][0]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                               ctypes.c_int64]
    punch_hole, keep_size = 0x02, 0x01
    with open(img, "r+b") as f:
        assert libc.fallocate(f.fileno(), punch_hole | keep_size,
                              first["offset"] + MiB, 64 * KiB) == 0
    ours = ok(run([limg, "map", "--output=json", img])).stdout
    assert ours == qmap(qimg, img)
    assert '"zero": true' not in ours


def test_block_status_on_huge_sparse_file_is_prompt(limg, lio, tmp_dir):
    """The metadata-preallocation guess counts clusters in use up to the
    end of the file.  It used to ask one refcount per cluster: a 4 TiB
    sparse file with 512-byte clusters (8 Gi clusters) took 43 s on the
    first block status, under the image lock (the fuzzer found a worse
    one).  Refblocks the table does not point to are skipped whole."""
    img = os.path.join(tmp_dir, "huge.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
            img, "64M"]))
    io(lio, img, "write -P 0x5a 0 64k")
    os.truncate(img, 4 << 40)
    r = ok(run([limg, "map", "--output=json", img], timeout=20))
    first = json.loads(r.stdout)[0]
    assert first["data"] and first["start"] == 0
    io(lio, img, "read -P 0x5a 0 64k")


def test_shrink_gives_space_back(limg, lio, tmp_dir):
    img = os.path.join(tmp_dir, "s.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "64M"]))
    io(lio, img, "write -P 1 0 32M")
    r = ok(run([limg, "resize", "--shrink", img, "1M"]))
    assert r.stderr == ""     # no warning with --shrink, as qemu-img
    assert os.path.getsize(img) < 2 * MiB
    r = ok(run([limg, "check", img]))
    assert "No errors" in r.stdout
    io(lio, img, "read -P 1 0 1M")
    r = run([limg, "resize", img, "512k"])
    assert r.returncode == 1 and "--shrink" in r.stderr and \
        "warning: Shrinking" in r.stderr


# ---- Started as qemu-img / qemu-io ------------------------------------------


@pytest.mark.parametrize("ours,name", [("lockstep-img", "qemu-img"),
                                       ("lockstep-io", "qemu-io")])
def test_messages_name_qemu_when_started_so(build_dir, tmp_dir, ours, name):
    """QEMU's iotests filter "qemu-img:"; our own name stays otherwise."""
    prog = built_program(build_dir, ours)
    link = os.path.join(tmp_dir, name)
    os.symlink(prog, link)
    missing = os.path.join(tmp_dir, "missing")
    argv = ["info", missing] if ours == "lockstep-img" else [missing]
    r = run([link] + argv)
    assert r.returncode == 1
    assert (r.stderr + r.stdout).startswith(name + ": "), r.stderr
    r = run([prog] + argv)
    assert (r.stderr + r.stdout).startswith(ours + ": "), r.stderr


# ---- rebase ------------------------------------------------------------------


def qcow2_exts(path):
    """The header extensions (magic, data) and the backing name, parsed."""
    with open(path, "rb") as f:
        head = f.read(65536)
    version = struct.unpack(">I", head[4:8])[0]
    off = struct.unpack(">I", head[100:104])[0] if version >= 3 else 72
    exts = []
    while True:
        magic, length = struct.unpack(">II", head[off:off + 8])
        if magic == 0:
            break
        exts.append((magic, head[off + 8:off + 8 + length]))
        off += 8 + (length + 7) // 8 * 8
    boff, blen = struct.unpack(">QI", head[8:20])
    return exts, head[boff:boff + blen] if boff else None


def make_rebase_set(tool_img, tool_io, d, tag):
    base = os.path.join(d, "base-%s.qcow2" % tag)
    new = os.path.join(d, "new-%s.qcow2" % tag)
    top = os.path.join(d, "top-%s.qcow2" % tag)
    ok(run([tool_img, "create", "-q", "-f", "qcow2", base, "1M"]))
    io(tool_io, base, "write -P 1 0 256k")
    ok(run([tool_img, "create", "-q", "-f", "qcow2", new, "512k"]))
    io(tool_io, new, "write -P 2 64k 64k", "write -P 1 128k 64k")
    ok(run([tool_img, "create", "-q", "-f", "qcow2", "-b", base, "-F",
            "qcow2", top, "1M"]))
    io(tool_io, top, "write -P 3 0 32k")
    return base, new, top


def test_rebase_safe_keeps_content_as_qemu(limg, lio, qimg, qio, tmp_dir):
    _, new_o, top_o = make_rebase_set(limg, lio, tmp_dir, "o")
    _, new_q, top_q = make_rebase_set(qimg, qio, tmp_dir, "q")
    ok(run([limg, "rebase", "-b", new_o, "-F", "qcow2", top_o]))
    ok(run([qimg, "rebase", "-b", new_q, "-F", "qcow2", top_q]))
    assert qmap(qimg, top_o).replace(new_o, "NEW") == \
        qmap(qimg, top_q).replace(new_q, "NEW")
    io(lio, top_o, "read -P 3 0 32k", "read -P 1 32k 224k",
       "read -P 0 256k 768k")
    exts_o, name_o = qcow2_exts(top_o)
    exts_q, name_q = qcow2_exts(top_q)
    assert name_o == new_o.encode() and name_q == new_q.encode()
    assert exts_o == exts_q     # backing format first, then the others
    r = ok(run([qimg, "check", top_o]))
    assert "No errors" in r.stdout


def test_rebase_remove_and_unsafe(limg, lio, qimg, tmp_dir):
    base, new, top = make_rebase_set(limg, lio, tmp_dir, "o")
    ok(run([limg, "rebase", "-b", "", top]))
    assert qcow2_exts(top)[1] is None
    io(lio, top, "read -P 3 0 32k", "read -P 1 32k 224k")
    r = run([limg, "rebase", "-b", "missing", "-F", "qcow2", top])
    assert r.returncode == 1 and "Could not open new backing file " \
        "'missing': Could not open" in r.stderr
    # -u stores the name as given, without looking at it.
    ok(run([limg, "rebase", "-u", "-b", "/some/path", "-F", "host_device",
            top]))
    exts, name = qcow2_exts(top)
    assert name == b"/some/path" and (0xe2792aca, b"host_device") in exts
    r = run([limg, "rebase", "-u", "-b", base, top])
    assert r.returncode == 1 and "backing format must be specified" in \
        r.stderr
    r = run([limg, "rebase", top])
    assert r.returncode == 1 and "Must specify backing file (-b)" in r.stderr


# ---- Options as QEMU's tools take them ----------------------------------------


def test_blkdebug_limits_take_size_suffixes(lio, tmp_dir):
    """-o file.align=4k: blkdebug's limits are sizes, as in QEMU."""
    img = os.path.join(tmp_dir, "a.qcow2")
    ok(run([built_program(os.path.dirname(lio), "lockstep-img"), "create",
            "-q", "-f", "qcow2", img, "1M"]))
    r = ok(run([lio, "-c", "open -o driver=qcow2,file.align=4k,"
                "file.max-transfer=64k blkdebug::" + img,
                "-c", "write -P 1 1000 100k", "-c", "read -P 1 1000 100k"]))
    assert "Pattern verification failed" not in r.stdout


def test_filter_driver_with_its_own_filename(lio, limg, tmp_dir):
    """driver=blkdebug,image.driver=qcow2 blkdebug::IMG: one blkdebug."""
    img = os.path.join(tmp_dir, "a.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "1M"]))
    r = ok(run([lio, "-c", "open -o driver=blkdebug,image.driver=qcow2,"
                "align=4k blkdebug::" + img, "-c", "write -P 2 0 8k",
                "-c", "info"]))
    assert "format name: blkdebug" in r.stdout
    io(lio, img, "read -P 2 0 8k")


def test_map_image_opts(limg, lio, tmp_dir):
    img = os.path.join(tmp_dir, "a.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "1M"]))
    io(lio, img, "write -P 1 64k 64k")
    r = ok(run([limg, "map", "--image-opts",
                "driver=qcow2,file.driver=file,file.filename=" + img]))
    assert r.stdout.splitlines()[1].split()[:2] == ["0x10000", "0x10000"]
    r = ok(run([limg, "map", "--output=json", "--image-opts",
                "driver=blkdebug,align=4k,image.driver=qcow2,"
                "image.file.filename=" + img]))
    assert '"start": 65536, "length": 65536' in r.stdout


# ---- Messages and header bits as qemu-img --------------------------------------


def add_feature(path, word_off, bit):
    with open(path, "r+b") as f:
        f.seek(word_off)
        v = struct.unpack(">Q", f.read(8))[0] | (1 << bit)
        f.seek(word_off)
        f.write(struct.pack(">Q", v))


def replace_feature_table(path, entries):
    """Put a feature name table of (type, bit, name) as the only extension."""
    data = b"".join(struct.pack(">BB46s", t, b, n.encode())
                    for t, b, n in entries)
    with open(path, "r+b") as f:
        f.seek(100)
        f.seek(struct.unpack(">I", f.read(4))[0])     # header_length
        f.write(struct.pack(">II", 0x6803f857, len(data)) + data +
                b"\0" * (-len(data) % 8) + b"\0" * 8)


def test_unknown_incompatible_features_named_as_qemu(limg, tmp_dir):
    img = os.path.join(tmp_dir, "f.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "64M"]))
    for bit in (61, 62, 63):
        add_feature(img, 72, bit)
    replace_feature_table(img, [(0, 63, "Test feature")])
    r = run([limg, "info", img])
    assert r.returncode == 1
    assert r.stderr.rstrip().endswith(
        "Unsupported qcow2 feature(s): Test feature, Unknown incompatible "
        "feature: 6000000000000000"), r.stderr


def test_check_repair_clears_unknown_autoclear_bits(limg, tmp_dir):
    img = os.path.join(tmp_dir, "a.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "64M"]))
    add_feature(img, 88, 63)
    ok(run([limg, "check", "-r", "all", img]))
    with open(img, "rb") as f:
        f.seek(88)
        assert struct.unpack(">Q", f.read(8))[0] == 0


def test_create_messages_as_qemu_img(limg, tmp_dir):
    img = os.path.join(tmp_dir, "c.qcow2")
    r = run([limg, "create", "-f", "qcow2", "-b", img + ".missing", img])
    assert r.returncode == 1
    assert r.stderr == ("lockstep-img: %s: Could not open '%s.missing': No "
                        "such file or directory\nCould not open backing "
                        "image.\n" % (img, img))
    r = run([limg, "create", "-f", "qcow2", img, "1E"])
    assert r.returncode == 1
    assert "The image size is too large for file format 'qcow2' (try " \
        "using a larger cluster size)" in r.stderr


# ---- convert -B, -S, -c ---------------------------------------------------------


def test_convert_backing_copies_only_the_top(limg, lio, qimg, tmp_dir):
    base = os.path.join(tmp_dir, "b.qcow2")
    top = os.path.join(tmp_dir, "t.qcow2")
    out = os.path.join(tmp_dir, "o.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", base, "4M"]))
    io(lio, base, "write -P 9 0 4M")
    ok(run([limg, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
            top]))
    io(lio, top, "write -P 1 1M 64k", "write -z 2M 64k")
    r = run([limg, "convert", "-O", "qcow2", "-B", base, top, out])
    assert r.returncode == 1 and \
        "Use of backing file requires explicit backing format" in r.stderr
    ok(run([limg, "convert", "-O", "qcow2", "-B", base, "-F", "qcow2", top,
            out]))
    assert "Images are identical." in ok(run([qimg, "compare", top,
                                              out])).stdout
    top_layer = [l for l in qmap(qimg, out).splitlines()
                 if '"depth": 0' in l]
    assert len(top_layer) == 2     # the 64k of data and the zeroed 64k
    assert '"zero": true' in top_layer[1]


def test_convert_sparse_size_zero_allocates_everything(limg, tmp_dir):
    src = os.path.join(tmp_dir, "s.raw")
    out = os.path.join(tmp_dir, "o.raw")
    with open(src, "wb") as f:
        f.truncate(4 * MiB)
    ok(run([limg, "convert", "-S", "0", "-O", "raw", src, out]))
    assert os.stat(out).st_blocks * 512 >= 4 * MiB
    ok(run([limg, "convert", "-O", "raw", src, out + "2"]))
    assert os.stat(out + "2").st_blocks * 512 < 64 * KiB
    r = run([limg, "convert", "-S", "1000", "-O", "raw", src, out + "3"])
    assert r.returncode == 1 and "Invalid buffer size for sparse output" \
        in r.stderr


def test_convert_compressed(limg, lio, qimg, tmp_dir):
    src = os.path.join(tmp_dir, "s.qcow2")
    out = os.path.join(tmp_dir, "o.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", src, "4M"]))
    io(lio, src, "write -P 1 0 1M")
    ok(run([limg, "convert", "-c", "-O", "qcow2", src, out]))
    r = ok(run([qimg, "check", out]))
    assert "100.00% compressed clusters" in r.stdout
    assert "Images are identical." in ok(run([qimg, "compare", src,
                                              out])).stdout
    assert os.path.getsize(out) < 1 * MiB
    r = run([limg, "convert", "-c", "-O", "raw", src, out + ".raw"])
    assert r.returncode == 1 and "Compression not supported" in r.stderr


# ---- dd --------------------------------------------------------------------------


@pytest.mark.parametrize("ops", [[], ["bs=4k"], ["skip=3"], ["bs=1k", "count=5"],
                                 ["bs=64k", "skip=100"]])
def test_dd_as_dd(limg, tmp_dir, ops):
    src = os.path.join(tmp_dir, "in.raw")
    out = os.path.join(tmp_dir, "out.raw")
    data = os.urandom(300 * KiB)
    with open(src, "wb") as f:
        f.write(data)
    r = ok(run([limg, "dd", "if=" + src, "of=" + out, "-O", "raw"] + ops))
    kv = dict(o.split("=") for o in ops)
    bs = int(kv.get("bs", "512").replace("k", "")) * \
        (1024 if "k" in kv.get("bs", "") else 1)
    start = min(int(kv.get("skip", 0)) * bs, len(data))
    end = len(data)
    if "count" in kv:
        end = min(end, int(kv["count"]) * bs)
    with open(out, "rb") as f:
        assert f.read() == data[start:max(start, end)]
    if int(kv.get("skip", 0)) * bs > len(data):
        assert "cannot skip to specified offset" in r.stderr


def test_dd_errors(limg, tmp_dir):
    r = run([limg, "dd", "if=x"])
    assert r.returncode == 1 and "Must specify both input and output" in \
        r.stderr
    r = run([limg, "dd", "if=x", "of=y", "conv=notrunc"])
    assert r.returncode == 1 and "unrecognized operand conv=notrunc" in \
        r.stderr


# ---- compare and convert -p output -------------------------------------------


def test_compare_content_mismatch_before_size(limg, tmp_dir):
    a = os.path.join(tmp_dir, "a.raw")
    b = os.path.join(tmp_dir, "b.raw")
    with open(a, "wb") as f:
        f.write(b"\1" * 4096)
    with open(b, "wb") as f:
        f.write(b"\2" * 4096 + b"\0" * 4096)
    r = run([limg, "compare", "-f", "raw", "-F", "raw", a, b])
    assert r.returncode == 1
    assert r.stdout == "Content mismatch at offset 0!\n"
    with open(b, "r+b") as f:
        f.write(b"\1" * 4096)
    r = run([limg, "compare", "-f", "raw", "-F", "raw", a, b])
    assert r.returncode == 0
    assert r.stdout == "Warning: Image size mismatch!\nImages are identical.\n"


def test_convert_progress_counts_data(limg, lio, tmp_dir):
    """qemu-img's steps: 4 MiB of data in 128 MiB go 25%, 50%, 75%."""
    src = os.path.join(tmp_dir, "s.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", src, "128M"]))
    for off in ("0", "2M", "4M", "32M"):
        io(lio, src, "write %s 1M" % off)
    r = ok(run([limg, "convert", "-p", "-O", "qcow2", src, src + ".o"]))
    steps = [x.strip() for x in r.stdout.replace("\r", "\n").splitlines()
             if x.strip()]
    assert steps == ["(0.00/100%)", "(25.00/100%)", "(50.00/100%)",
                     "(75.00/100%)", "(100.00/100%)", "(100.00/100%)"]


def test_formats_without_creation_and_amend(limg, tmp_dir):
    raw = os.path.join(tmp_dir, "r.raw")
    ok(run([limg, "create", "-q", "-f", "raw", raw, "1M"]))
    for argv in (["create", "-f", "bochs", raw + ".b", "1M"],
                 ["convert", "-O", "bochs", raw, raw + ".b"]):
        r = run([limg] + argv)
        assert r.returncode == 1
        assert r.stderr.endswith("Format driver 'bochs' does not support "
                                 "image creation\n"), r.stderr
    r = run([limg, "amend", "-f", "raw", "-o", "size=2M", raw])
    assert r.returncode == 1 and r.stderr == (
        "lockstep-img: Format driver 'raw' does not support option "
        "amendment\n")
    q = os.path.join(tmp_dir, "q.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", q, "1M"]))
    r = run([limg, "amend", "-o", "compat=0.10", q])
    assert r.returncode == 1 and "not supported" in r.stderr


def test_info_json_name_and_image_opts(limg, tmp_dir):
    img = os.path.join(tmp_dir, "i.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "64M"]))
    plain = ok(run([limg, "info", img])).stdout
    for argv in (['json:{"driver": "qcow2", "file": {"driver": "file", '
                  '"filename": "%s"}}' % img],
                 ['json:{"driver":"qcow2","file.filename":"%s"}' % img],
                 ["--image-opts", "driver=qcow2,file.driver=file,"
                  "file.filename=" + img]):
        r = ok(run([limg, "info"] + argv))
        assert r.stdout == plain


# ---- blkdebug breakpoints on the write path (iotest 077) --------------------

# Requests stopped in their read-modify-write on a 4k-aligned blkdebug
# node while others queue behind them; each request ends with its data.
RMW_SCRIPT = """\
open -o driver=raw,file.align=4k blkdebug::{img}
break pwritev_rmw_after_tail A
aio_write -P 10 0x5000 0x200
wait_break A
aio_write -P 11 0x5200 0x200
aio_write -P 12 0x5400 0x200
sleep 100
resume A
aio_flush
break pwritev_rmw_after_head B
aio_write -P 13 0x7e00 0x200
wait_break B
aio_write -P 14 0x7800 0x600
resume B
aio_flush
break pwritev A
aio_write -P 15 0x10000 0x800
wait_break A
break pwritev_done C
resume A
wait_break C
resume C
aio_flush
break pwritev_zero Z
aio_write -z 0x20000 0x2000
wait_break Z
resume Z
aio_flush
"""

RMW_EXPECT = [(0, 0x5000), (10, 0x200), (11, 0x200), (12, 0x200),
              (0, 0x7800 - 0x5600), (14, 0x600), (13, 0x200),
              (0, 0x10000 - 0x8000), (15, 0x800), (0, 0x10000 - 0x800)]


@pytest.mark.parametrize("tool", ["ours", "qemu"])
def test_write_path_breakpoints(lio, qio, tmp_dir, tool):
    """break on pwritev_rmw_after_tail/after_head, pwritev, pwritev_done
    and pwritev_zero stops the request there: before, lockstep-io never
    fired these events and wait_break waited forever."""
    img = os.path.join(tmp_dir, "b.raw")
    with open(img, "wb") as f:
        f.truncate(MiB)
    with open(img, "r+b") as f:
        f.seek(0x20000)
        f.write(b"\x55" * 0x2000)
    r = run([lio if tool == "ours" else qio],
            stdin=RMW_SCRIPT.format(img=img), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "failed" not in r.stdout and "wait_break" not in r.stdout, \
        r.stdout
    off, cmds = 0, []
    for pattern, n in RMW_EXPECT:
        cmds.append("read -P %d %d %d" % (pattern, off, n))
        off += n
    cmds.append("read -P 0 %d %d" % (0x20000, 0x2000))
    r = io(lio, img, *cmds, fmt="raw")
    assert "Pattern verification failed" not in r.stdout, r.stdout


def test_wait_break_with_nothing_in_flight_ends(lio, tmp_dir):
    """wait_break with no request that could reach the breakpoint reports
    it and goes on (it used to wait forever)."""
    img = os.path.join(tmp_dir, "w.raw")
    with open(img, "wb") as f:
        f.truncate(MiB)
    r = run([lio], stdin="open -o driver=raw blkdebug::%s\n"
            "break pwritev A\nwait_break A\nread -P 0 0 512\n" % img,
            timeout=30)
    assert "wait_break: no request in flight to stop at A" in r.stdout
    assert "read 512/512 bytes at offset 0" in r.stdout
    assert r.returncode == 1


def test_backing_options_merge_with_header(limg, lio, tmp_dir):
    """backing.driver=... alone overrides the header's backing format and
    keeps its file name (iotest 114), as QEMU merges them; it used to ask
    for backing.file."""
    base = os.path.join(tmp_dir, "base.qcow2")
    top = os.path.join(tmp_dir, "top.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", base, "1M"]))
    io(lio, base, "write -P 0x11 0 64k")
    ok(run([limg, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
            top]))
    opts = "driver=qcow2,file.driver=file,file.filename=%s" % top
    r = ok(run([lio, "--image-opts", "-c", "read -P 0x11 0 64k",
                opts + ",backing.driver=qcow2"]))
    assert "Pattern verification failed" not in r.stdout
    # raw over the qcow2 base: its header bytes show through.
    r = ok(run([lio, "--image-opts", "-c", "read -P 0x51 0 1",
                opts + ",backing.driver=raw"]))
    assert "Pattern verification failed" not in r.stdout
    r = ok(run([lio, "-c", "open -o backing.driver=qcow2 %s" % top,
                "-c", "read -P 0x11 0 64k"]))
    assert "Pattern verification failed" not in r.stdout


# ---- Names and maps as qemu-img (iotests 110, 150, 221, 253) ---------------


def test_img_opens_prefixed_names(limg, lio, tmp_dir):
    """json: (QEMU's JSON, single quotes too) and null-co names open as in
    qemu-img; they were taken for plain file names."""
    img = os.path.join(tmp_dir, "p.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "1M"]))
    plain = ok(run([limg, "info", img])).stdout
    r = ok(run([limg, "info", "json:{'driver':'qcow2','file':{'driver':"
                "'file','filename':'%s'}}" % img]))
    assert r.stdout == plain
    out = os.path.join(tmp_dir, "n.qcow2")
    ok(run([limg, "convert", "-O", "qcow2", "-S", "512",
            "json:{'driver': 'null-co', 'size': 1048576, "
            "'read-zeroes': true}", out]))
    r = ok(run([limg, "info", "--output=json", out]))
    assert '"virtual-size": 1048576' in r.stdout


def test_raw_create_writes_first_block(limg, qimg, tmp_dir):
    ours = os.path.join(tmp_dir, "o.raw")
    theirs = os.path.join(tmp_dir, "q.raw")
    ok(run([limg, "create", "-q", "-f", "raw", ours, "1M"]))
    ok(run([qimg, "create", "-q", "-f", "raw", theirs, "1M"]))
    assert qmap(qimg, ours) == qmap(qimg, theirs)


@pytest.mark.parametrize("size,direct", [(3, False), (65537, False),
                                         (MiB - 1, False), (MiB - 1, True)])
def test_raw_map_of_last_partial_sector(limg, qimg, tmp_dir, size, direct):
    """The end of a raw file's last sector maps as QEMU maps it: zeroes,
    or data to the block's end when the file is read in aligned blocks
    (O_DIRECT) and the block starts with data."""
    if direct and not supports_o_direct(tmp_dir):
        pytest.skip("no O_DIRECT in %s" % tmp_dir)
    img = os.path.join(tmp_dir, "u.raw")
    with open(img, "wb") as f:
        f.truncate(size)
    with open(img, "r+b") as f:
        f.seek(max(0, size - 3))
        f.write(b"abc")
    opts = "driver=raw,file.driver=file,file.filename=%s" % img
    if direct:
        opts += ",cache.direct=on"
    argv = ["map", "--output=json", "--image-opts", opts]
    ours = ok(run([limg] + argv)).stdout
    theirs = ok(run([qimg] + argv)).stdout
    assert ours == theirs


# ---- lazy refcounts (iotest 039) --------------------------------------------


def incompat_bits(path):
    with open(path, "rb") as f:
        f.seek(72)
        return struct.unpack(">QQ", f.read(16))


def test_create_lazy_refcounts(limg, qimg, tmp_dir):
    img = os.path.join(tmp_dir, "l.qcow2")
    r = ok(run([limg, "create", "-f", "qcow2", "-o", "lazy_refcounts=on",
                img, "1M"]))
    assert "lazy_refcounts=on refcount_bits=16" in r.stdout
    assert incompat_bits(img) == (0, 1)
    assert '"lazy-refcounts": true' in ok(run([qimg, "info",
                                                "--output=json", img])).stdout
    ok(run([qimg, "check", img]))
    r = run([limg, "create", "-f", "qcow2", "-o",
             "compat=0.10,lazy_refcounts=on", img, "1M"])
    assert r.returncode == 1
    assert "Lazy refcounts only supported with compatibility level 1.1" \
        in r.stderr


def crash_after_write(lio, img, *first):
    """Write a sector (writethrough: the L2 table reaches the disk), then
    die without closing."""
    argv = [lio, "-t", "writethrough", "-f", "qcow2"]
    for c in list(first) + ["write -P 0x5a 0 512", "sigraise 9"]:
        argv += ["-c", c]
    r = run(argv + [img])
    assert r.returncode == -9, r.stdout + r.stderr


def test_lazy_refcounts_dirty_until_close(limg, lio, qimg, tmp_dir):
    img = os.path.join(tmp_dir, "l.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
            img, "128M"]))
    io(lio, img, "write -P 0x5a 0 512")
    assert incompat_bits(img)[0] == 0
    ok(run([qimg, "check", img]))
    # A crash leaves the dirty bit and the data cluster's refcount unwritten
    # (QEMU's image looks the same).
    ok(run([limg, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
            img, "128M"]))
    crash_after_write(lio, img)
    assert incompat_bits(img)[0] == 1
    r = run([qimg, "check", img])
    assert r.returncode == 2
    assert "ERROR cluster 5 refcount=0 reference=1" in r.stderr
    # Read-only works as it is; read-write repairs first.
    r = io(lio, img, "read -P 0x5a 0 512")
    assert incompat_bits(img)[0] == 0
    assert r.stderr.splitlines() == [
        "ERROR cluster 5 refcount=0 reference=1",
        "Rebuilding refcount structure",
        "Repairing cluster 1 refcount=1 reference=0",
        "Repairing cluster 2 refcount=1 reference=0"]
    ok(run([qimg, "check", img]))


def test_lazy_refcounts_off_stays_clean(limg, lio, qimg, tmp_dir):
    img = os.path.join(tmp_dir, "l.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
            img, "128M"]))
    crash_after_write(lio, img, "reopen -o lazy-refcounts=off")
    assert incompat_bits(img)[0] == 0
    ok(run([qimg, "check", img]))
    ok(run([limg, "create", "-q", "-f", "qcow2", img, "128M"]))
    crash_after_write(lio, img, "reopen -o lazy-refcounts=on")
    assert incompat_bits(img)[0] == 1


def test_check_repair_dirty_image_as_qemu(limg, qio, qimg, tmp_dir):
    """-r all on a dirty image names the old refcount structure's clusters
    as QEMU does after rebuilding it."""
    ours = os.path.join(tmp_dir, "o.qcow2")
    theirs = os.path.join(tmp_dir, "q.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
            ours, "128M"]))
    r = run([qio, "-t", "writethrough", "-c", "write -P 0x5a 0 512", "-c",
             "sigraise 9", ours])
    assert r.returncode == -9
    with open(ours, "rb") as f, open(theirs, "wb") as g:
        g.write(f.read())
    a = run([limg, "check", "-r", "all", ours])
    b = run([qimg, "check", "-r", "all", theirs])
    assert a.returncode == b.returncode == 0
    assert (a.stdout, a.stderr) == (b.stdout, b.stderr)
    assert incompat_bits(ours) == incompat_bits(theirs) == (0, 1)


# ---- extent_size_hint and resize --preallocation (iotests 106, 243) ---------


def test_create_extent_size_hint(limg, qimg, tmp_dir):
    img = os.path.join(tmp_dir, "h.raw")
    r = ok(run([limg, "create", "-f", "raw", "-o",
                "preallocation=off,extent_size_hint=0", img, "1M"]))
    assert r.stdout == ("Formatting '%s', fmt=raw size=1048576 "
                        "preallocation=off extent_size_hint=0\n" % img)
    r = ok(run([limg, "create", "-f", "qcow2", "-o", "extent_size_hint=2M",
                img, "1M"]))
    assert r.stdout.endswith(" refcount_bits=16 extent_size_hint=2097152\n")
    ok(run([qimg, "check", img]))
    r = run([limg, "create", "-f", "raw", "-o", "extent_size_hint=8G", img,
             "1M"])
    assert r.returncode == 1
    assert r.stderr.endswith(": Extent size hint is too large\n")


def test_extent_size_hint_on_a_file_system_without_it(limg, qimg):
    """tmpfs has no extent size hint: qemu-img warns only when asked."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    img = "/dev/shm/lockstep-esh-%d.raw" % os.getpid()
    try:
        for opts in ([], ["-o", "extent_size_hint=1M"]):
            ours = run([limg, "create", "-q", "-f", "raw"] + opts +
                       [img, "1M"])
            theirs = run([qimg, "create", "-q", "-f", "raw"] + opts +
                         [img, "1M"])
            assert ours.returncode == theirs.returncode == 0
            assert ours.stderr.replace("lockstep-img", "qemu-img") == \
                theirs.stderr
        assert "Failed to set extent size hint" in ours.stderr
    finally:
        if os.path.exists(img):
            os.unlink(img)


def test_create_sets_extent_size_hint(limg, tmp_dir):
    """The ioctl qemu-img makes: 1 MiB unless told otherwise."""
    strace = host_tool("strace")
    img = os.path.join(tmp_dir, "h.qcow2")
    # LeakSanitizer cannot run under ptrace (the sanitizer pass).
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    for opts, want in (([], "fsx_extsize=1048576"),
                       (["-o", "extent_size_hint=64k"], "fsx_extsize=65536"),
                       (["-o", "extent_size_hint=0"], None)):
        r = ok(subprocess.run(
            [strace, "-f", "-e", "trace=ioctl", limg, "create", "-q", "-f",
             "qcow2"] + opts + [img, "1M"], capture_output=True, text=True,
            env=env, timeout=120))
        sets = [ln for ln in r.stderr.splitlines()
                if "FS_IOC_FSSETXATTR" in ln]
        if want:
            assert len(sets) == 1 and want in sets[0], r.stderr
        else:
            assert sets == []


@pytest.mark.parametrize("mode", ["falloc", "full"])
def test_resize_preallocation_raw(limg, tmp_dir, mode):
    img = os.path.join(tmp_dir, "p.raw")
    ok(run([limg, "create", "-q", "-f", "raw", "-o", "extent_size_hint=0",
            img, "128K"]))
    r = ok(run([limg, "resize", "-f", "raw", "--preallocation=" + mode, img,
                "+256K"]))
    assert r.stdout == "Image resized.\n"
    st = os.stat(img)
    assert st.st_size == 384 * KiB
    assert st.st_blocks * 512 >= 256 * KiB
    r = run([limg, "resize", "-f", "raw", "--shrink", "--preallocation=" +
             mode, img, "-256K"])
    assert r.returncode == 1
    assert "Preallocation can only be used for growing images" in r.stderr
    assert os.stat(img).st_size == 384 * KiB


def test_resize_preallocation_refused(limg, tmp_dir):
    img = os.path.join(tmp_dir, "p.raw")
    ok(run([limg, "create", "-q", "-f", "raw", img, "128K"]))
    r = run([limg, "resize", "-f", "raw", "--preallocation=metadata", img,
             "+64K"])
    assert r.returncode == 1
    assert "Unsupported preallocation mode: metadata" in r.stderr
    r = run([limg, "resize", "-f", "raw", "--preallocation=bogus", img,
             "+64K"])
    assert "Invalid preallocation mode 'bogus'" in r.stderr
    q = os.path.join(tmp_dir, "p.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", q, "128K"]))
    r = run([limg, "resize", "--preallocation=falloc", q, "+64K"])
    assert r.returncode == 1
    assert "only supported for raw images" in r.stderr
    assert os.stat(img).st_size == 128 * KiB


# ---- compression_type=zstd (iotest 287) -------------------------------------


def test_create_zstd(limg, qimg, tmp_dir):
    img = os.path.join(tmp_dir, "z.qcow2")
    r = ok(run([limg, "create", "-f", "qcow2", "-o", "compression_type=zstd",
                img, "64M"]))
    assert "compression_type=zstd size=67108864" in r.stdout
    with open(img, "rb") as f:
        head = f.read(105)
    assert struct.unpack(">Q", head[72:80])[0] == 1 << 3
    assert head[104] == 1
    assert '"compression-type": "zstd"' in ok(run(
        [qimg, "info", "--output=json", img])).stdout
    ok(run([qimg, "check", img]))
    r = run([limg, "create", "-f", "qcow2", "-o",
             "compat=0.10,compression_type=zstd", img, "1M"])
    assert r.returncode == 1
    assert "Non-zlib compression type is only supported with compatibility" \
        in r.stderr


def test_zstd_clusters_both_ways(limg, lio, qimg, qio, tmp_dir):
    """Compressed clusters we write QEMU reads, and the other way round."""
    img = os.path.join(tmp_dir, "z.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", "-o",
            "compression_type=zstd", img, "64M"]))
    io(lio, img, "write -c -P 0xab 0 64k", "write -c -P 0xac 64k 64k")
    io(qio, img, "write -c -P 0xad 128k 64k")
    r = ok(run([qimg, "check", "--output=json", img]))
    assert '"compressed-clusters": 3' in r.stdout
    for tool in (lio, qio):
        r = io(tool, img, "read -P 0xab 0 64k", "read -P 0xac 64k 64k",
               "read -P 0xad 128k 64k", "read -P 0 192k 64k")
        assert "verification failed" not in r.stdout


def test_convert_compressed_zstd(limg, qimg, tmp_dir):
    src = os.path.join(tmp_dir, "src.raw")
    dst = os.path.join(tmp_dir, "dst.qcow2")
    with open(src, "wb") as f:
        f.write(os.urandom(256 * KiB))          # does not compress
        f.write(b"lockstep" * (512 * KiB // 8))  # does
        f.truncate(2 * MiB)
    ok(run([limg, "convert", "-f", "raw", "-O", "qcow2", "-c", "-o",
            "compression_type=zstd", src, dst]))
    assert ok(run([qimg, "compare", "-f", "raw", "-F", "qcow2", src,
                   dst])).stdout == "Images are identical.\n"
    ok(run([qimg, "check", dst]))
    # Less on disk than the data: the text compressed.
    assert os.path.getsize(dst) < 768 * KiB


# ---- -o given more than once (iotests 019, 082) -----------------------------


def test_options_given_twice_add_up(limg, qimg, tmp_dir):
    img = os.path.join(tmp_dir, "o.qcow2")
    r = ok(run([limg, "create", "-f", "qcow2", "-o", "cluster_size=4k", "-o",
                "lazy_refcounts=on", "-o", "cluster_size=8k", img, "1M"]))
    assert "cluster_size=8192 " in r.stdout
    assert "lazy_refcounts=on " in r.stdout
    base = os.path.join(tmp_dir, "b.qcow2")
    dst = os.path.join(tmp_dir, "d.qcow2")
    ok(run([limg, "create", "-q", "-f", "qcow2", base, "1M"]))
    ok(run([limg, "convert", "-O", "qcow2", "-o", "backing_file=" + base,
            "-o", "backing_fmt=qcow2", img, dst]))
    info = ok(run([qimg, "info", "--output=json", dst])).stdout
    assert '"backing-filename": "%s"' % base in info
    assert '"backing-filename-format": "qcow2"' in info


# ---- Copy-on-read (qemu-io -C, the copy-on-read filter) ---------------------


def cor_chain(qimg, qio, d, tag, base_fmt="qcow2"):
    """iotest 197's images, smaller: data at 40M in the base, an explicit
    zero cluster at 1M in the overlay."""
    base = os.path.join(d, "base-%s.%s" % (tag, base_fmt))
    top = os.path.join(d, "top-%s.qcow2" % tag)
    ok(run([qimg, "create", "-q", "-f", base_fmt, base, "64M"]))
    ok(run([qio, "-f", base_fmt, "-c", "write -P 55 40M 1k", base]))
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-F", base_fmt, "-b", base,
            top]))
    ok(run([qio, "-f", "qcow2", "-c", "write -z -u 1M 64k", top]))
    return base, top


def qio_map(qio, img):
    return ok(run([qio, "-f", "qcow2", "-c", "map", img])).stdout


@pytest.mark.parametrize("base_fmt", ["qcow2", "raw"])
@pytest.mark.parametrize("how", ["-C", "filter"])
def test_copy_on_read_allocates_as_qemu(lio, qio, qimg, tmp_dir, base_fmt,
                                        how):
    """Reads copy whole clusters the overlay lacks (zeroes as zero
    clusters, data as data), never past the end, and leave what the overlay
    holds alone: the overlay's map afterwards is QEMU's, and its content
    is the base's."""
    maps = []
    for tool in (lio, qio):
        base, top = cor_chain(qimg, qio, tmp_dir, len(maps), base_fmt)
        reads = ["read -P 0 1M 128k", "read 0 0",
                 "read -P 0 1k %d" % (20 * MiB - 512),
                 "read -P 55 %d 1k" % (40 * MiB), "read -P 0 %d 512"
                 % (40 * MiB + 1024)]
        for cmd in reads:
            if how == "-C":
                argv = [tool, "-f", "qcow2", "-C", "-c", cmd, top]
            else:
                argv = [tool, "-c", "open -o driver=copy-on-read,"
                        "file.driver=qcow2 %s" % top, "-c", cmd]
            r = ok(run(argv))
            assert "Pattern" not in r.stdout and "error" not in r.stdout, \
                r.stdout
        ok(run([qimg, "rebase", "-u", "-b", "", "-f", "qcow2", top]))
        maps.append(qio_map(qio, top))
        ok(run([qimg, "check", top]))
        r = ok(run([qimg, "compare", "-f", base_fmt, "-F", "qcow2", base,
                    top]))
        assert "Images are identical." in r.stdout
    assert maps[0] == maps[1]
    assert "20.062 MiB (0x1410000) bytes     allocated at offset 0 bytes" \
        in maps[0], maps[0]


@pytest.mark.parametrize("tool", ["ours", "qemu-io"])
def test_copy_on_read_partial_last_cluster(lio, qio, qimg, tmp_dir, tool):
    img = os.path.join(tmp_dir, "w.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-o", "compat=1.1", img,
            "1024"]))
    ok(run([lio if tool == "ours" else qio, "-f", "qcow2", "-C", "-c",
            "read 0 1024", img]))
    assert qio_map(qio, img) == \
        "1 KiB (0x400) bytes     allocated at offset 0 bytes (0x0)\n"
    ok(run([qimg, "check", img]))


@pytest.mark.parametrize("tool", ["ours", "qemu-io"])
def test_copy_on_read_refused_read_only(lio, qio, qimg, tmp_dir, tool):
    base, top = cor_chain(qimg, qio, tmp_dir, "ro")
    prog = lio if tool == "ours" else qio
    if tool == "ours":
        prog = os.path.join(tmp_dir, "qemu-io")
        os.symlink(lio, prog)
    r = run([prog, "-f", "qcow2", "-C", "-r", top])
    assert r.returncode == 1
    assert r.stderr == ("qemu-io: can't open device %s: Can't use "
                        "copy-on-read on read-only device\n" % top), r.stderr
    r = run([prog, "-c", "open -r -o driver=copy-on-read,file.driver=qcow2 "
             "%s" % top])
    assert r.stderr == ("qemu-io: can't open device %s: Block node is "
                        "read-only\n" % top), r.stderr


@pytest.mark.parametrize("how", ["-C", "filter"])
def test_copy_on_read_skips_allocated_cluster_blkdebug(lio, qio, qimg,
                                                       tmp_dir, how):
    """iotest 197: blkdebug fails a write to sector 2048 (1M) once a copy
    began; the read over the overlay's zero cluster there and the
    unallocated one after it copies only the second."""
    base, top = cor_chain(qimg, qio, tmp_dir, "bd")
    conf = os.path.join(tmp_dir, "blkdebug.conf")
    with open(conf, "w") as f:
        f.write('[inject-error]\nevent = "cor_write"\nsector = "2048"\n')
    if how == "-C":
        cmd = ("open -C -o driver=blkdebug,config=%s,image.driver=qcow2 %s"
               % (conf, top))
    else:
        cmd = ("open -o driver=copy-on-read,file.driver=blkdebug,"
               "file.config=%s,file.image.driver=qcow2 %s" % (conf, top))
    r = ok(run([lio, "-c", cmd, "-c", "read -P 0 1M 128k"]))
    assert r.stdout.startswith("read 131072/131072 bytes at offset 1048576"),\
        r.stdout + r.stderr
    assert "allocated at offset 1 MiB (0x100000)" in qio_map(qio, top)


def test_copy_on_read_bottom(lio, qio, qimg, tmp_dir):
    """bottom=NODE copies only what NODE and the layers above it hold:
    the base's data below it stays where it is; ours as QEMU's."""
    maps = []
    for tool in (lio, qio):
        d = os.path.join(tmp_dir, str(len(maps)))
        os.mkdir(d)
        base, mid = cor_chain(qimg, qio, d, "m")
        ok(run([qio, "-f", "qcow2", "-c", "write -P 7 8M 64k", mid]))
        top = os.path.join(d, "top.qcow2")
        ok(run([qimg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                mid, top]))
        opts = ("driver=copy-on-read,bottom=mid,file.driver=qcow2,"
                "file.file.filename=%s,file.backing.driver=qcow2,"
                "file.backing.node-name=mid,file.backing.file.filename=%s"
                % (top, mid))
        r = ok(run([tool, "--image-opts", "-c", "read -P 7 8M 64k",
                    "-c", "read -P 55 40M 1k", "-c", "read -P 0 4M 64k",
                    opts]))
        assert "Pattern" not in r.stdout, r.stdout
        maps.append(qio_map(qio, top))
    assert maps[0] == maps[1]
    assert "64 KiB (0x10000) bytes     allocated at offset 8 MiB" in maps[0]
    assert "offset 40 MiB" not in maps[0].split("not allocated")[0]


def test_copy_on_read_bottom_must_be_below(lio, qimg, qio, tmp_dir):
    base, top = cor_chain(qimg, qio, tmp_dir, "nb")
    r = run([lio, "--image-opts", "-c", "read 0 4k",
             "driver=copy-on-read,bottom=nosuch,file.driver=qcow2,"
             "file.file.filename=%s" % top])
    assert r.returncode == 1 and "Bottom node 'nosuch' not found" in r.stderr


def test_copy_on_read_filter_from_blockdev_add(lockstepd, qio, qimg, tmp_dir):
    """lockstepd's --blockdev (blockdev-add's schema) takes the filter;
    a client's reads over NBD copy into the overlay."""
    base, top = cor_chain(qimg, qio, tmp_dir, "d")
    sock = os.path.join(tmp_dir, "nbd.sock")
    d = Daemon(lockstepd, tmp_dir, [
        "--blockdev", "driver=qcow2,node-name=disk,file.driver=file,"
        "file.filename=%s" % top,
        "--blockdev", "driver=copy-on-read,node-name=cor,file=disk",
        "--nbd-server", "addr.type=unix,addr.path=%s" % sock,
        "--export", "type=nbd,id=e,node-name=cor,name=cor"])
    try:
        r = ok(run([qio, "-r", "-f", "raw", "-c", "read -P 55 40M 1k",
                    "nbd+unix:///cor?socket=%s" % sock]))
        assert "Pattern" not in r.stdout, r.stdout
    finally:
        assert d.stop() == 0, d.stderr
    m = qio_map(qio, top)
    assert "64 KiB (0x10000) bytes     allocated at offset 40 MiB" in m, m


# ---- reopen -o checks, info of protocol drivers (iotest 133) ---------------


REOPEN_CASES = [
    ["reopen -o file.node-name=foo"], ["reopen -o backing.node-name=foo"],
    ["reopen -o file.driver=qcow2"], ["reopen -o backing.driver=file"],
    ["reopen -o file.driver=file"], ["reopen -o backing.driver=qcow2"],
    ["open -o file.node-name=foo IMG", "reopen -o file.node-name=foo"],
    ["open -o backing.node-name=foo IMG", "reopen -o backing.node-name=foo"],
    ["reopen -o read-only=foo"], ["reopen -o cache.no-flush=bar"],
    ["reopen -o cache.direct=baz"], ["reopen -o auto-read-only=qux"],
]


@pytest.mark.parametrize("cmds", REOPEN_CASES)
def test_reopen_checks_as_qemu(lio, qio, qimg, tmp_dir, cmds):
    """Children's node-name and driver cannot change either; bad booleans
    get QEMU's keyval message: the same output as qemu-io's."""
    base = os.path.join(tmp_dir, "t.base")
    img = os.path.join(tmp_dir, "t.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", base, "64M"]))
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
            img]))
    ours = os.path.join(tmp_dir, "qemu-io")
    os.symlink(lio, ours)
    outs = []
    for prog in (ours, qio):
        argv = [prog]
        for c in cmds:
            argv += ["-c", c.replace("IMG", img)]
        if not cmds[0].startswith("open"):
            argv.append(img)
        r = run(argv)
        outs.append((r.returncode, r.stdout, r.stderr))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("name", [
    "json:{'driver': 'null-co', 'size': 65536}",
    "json:{'driver': 'file', 'filename': 'IMG'}",
    "json:{'driver': 'blkdebug', 'image': {'driver': 'file', "
    "'filename': 'IMG'}}",
    "json:{'driver': 'raw', 'file': {'driver': 'file', 'filename': 'IMG'}}",
])
def test_info_of_protocol_drivers_as_qemu(lio, qio, tmp_dir, name):
    """qemu-io names a protocol driver twice (format and protocol name);
    null-co has no more to say."""
    img = os.path.join(tmp_dir, "x.raw")
    with open(img, "wb") as f:
        f.truncate(MiB)
    name = name.replace("IMG", img)
    a = run([lio, "-c", "info", name])
    b = run([qio, "-c", "info", name])
    assert (a.returncode, a.stdout) == (b.returncode, b.stdout)


# ---- bitmap --add: the file ends where QEMU's does (iotest 190) -----------


def test_bitmap_add_ends_file_after_directory(limg, qimg, tmp_dir):
    """The bitmap directory and tables are written by their own length, not
    padded to whole clusters: the file ends inside the last cluster as
    QEMU's does, so measure -f raw of it gives QEMU's numbers."""
    sizes = {}
    for name, tool in (("ours", limg), ("qemu", qimg)):
        img = os.path.join(tmp_dir, name + ".qcow2")
        ok(run([tool, "create", "-q", "-f", "qcow2", "-o",
                "cluster_size=2M", img, "2T"]))
        ok(run([tool, "bitmap", "--add", "-g", "512", "-f", "qcow2", img,
                "b1"]))
        ok(run([tool, "bitmap", "--add", "-g", "2M", "-f", "qcow2", img,
                "b2"]))
        sizes[name] = os.path.getsize(img)
        r = ok(run([qimg, "check", img]))
        assert "No errors were found" in r.stdout
        r = ok(run([qimg, "info", "--output=json", img]))
        assert '"name": "b1"' in r.stdout and '"name": "b2"' in r.stdout
    # Two 32-byte directory entries at the start of the 9th cluster.
    assert sizes["ours"] == sizes["qemu"] == 8 * 2 * MiB + 64


# ---- info on json:{...} names with nodes below the format (iotest 110) ----


@pytest.mark.parametrize("below,actual", [
    ("{'driver': 'blkdebug', 'image': {'driver': 'file', 'filename': 'IMG'},"
     " 'set-state': [{'event': 'read_aio', 'new_state': 42}]}",
     " (actual path: DIR/b.qcow2)"),
    ("{'driver': 'quorum', 'vote-threshold': 1, 'children': ["
     "{'driver': 'file', 'filename': 'IMG'},"
     " {'driver': 'file', 'filename': 'IMG.copy'}]}",
     " (cannot determine actual path)"),
])
def test_info_json_name_with_nodes_below(limg, qimg, tmp_dir, below, actual):
    """A qcow2 image named by json: over blkdebug or quorum is described
    as qcow2 (not probed as raw); its relative backing name resolves in
    the directory of the file below, where one file is below."""
    base = os.path.join(tmp_dir, "b.qcow2")
    img = os.path.join(tmp_dir, "t.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", base, "64M"]))
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F",
            "qcow2", img, "64M"]))
    with open(img, "rb") as f, open(img + ".copy", "wb") as g:
        g.write(f.read())
    name = "json:{'driver': 'qcow2', 'file': %s}" % below.replace("IMG", img)
    lines = ok(run([limg, "info", name])).stdout.splitlines()
    assert lines[1:3] == ["file format: qcow2",
                          "virtual size: 64 MiB (67108864 bytes)"]
    assert "backing file: b.qcow2" + actual.replace("DIR", tmp_dir) in lines
    # The JSON form has the backing name, and the full one only if known.
    ours = json.loads(ok(run([limg, "info", "--output=json", name])).stdout)
    qemu = json.loads(ok(run([qimg, "info", "--output=json", name])).stdout)
    for key in ("format", "virtual-size", "backing-filename",
                "full-backing-filename"):
        assert ours.get(key) == qemu.get(key), key


def test_info_json_name_of_raw_over_blkdebug(limg, qimg, tmp_dir):
    """Another format named by json: over a filter is opened as the name
    says (the driver's name outlives the parsed options)."""
    img = os.path.join(tmp_dir, "r.raw")
    with open(img, "wb") as f:
        f.truncate(3 * MiB)
    name = ("json:{'driver': 'raw', 'file': {'driver': 'blkdebug', "
            "'image': {'driver': 'file', 'filename': '%s'}}}" % img)
    ours = json.loads(ok(run([limg, "info", "--output=json", name])).stdout)
    qemu = json.loads(ok(run([qimg, "info", "--output=json", name])).stdout)
    assert (ours["format"], ours["virtual-size"]) == \
        (qemu["format"], qemu["virtual-size"]) == ("raw", 3 * MiB)


# ---- qcow2 cache options: fractions and QEMU's checks (iotest 103) --------


@pytest.mark.parametrize("opts", [
    "cache-size=1.25M,l2-cache-size=1M,refcount-cache-size=0.25M",
    "cache-size=0,l2-cache-size=0,refcount-cache-size=0",
    "cache-size=1M,l2-cache-size=2M",
    "cache-size=1M,refcount-cache-size=2M",
    "l2-cache-entry-size=256",
    "l2-cache-entry-size=4242",
    "l2-cache-entry-size=128k",
    "cache-size=0.5",               # a fraction of a byte (other text)
    # Valid: they open and read.
    "l2-cache-size=1M,refcount-cache-size=0.25M",
    "cache-size=1.5M,l2-cache-size=0.5M",
    "cache-size=0",
    "l2-cache-entry-size=64k",
])
def test_qcow2_cache_options_as_qemu(lio, qio, qimg, tmp_dir, opts):
    img = os.path.join(tmp_dir, "c.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", img, "64k"]))
    io(lio, img, "write -P 42 0 64k")
    outs = []
    for tool in (lio, qio):
        r = run([tool, "-c", "open -o %s %s" % (opts, img),
                 "-c", "read -P 42 0 64k"])
        err = r.stderr.replace(tool, "qemu-io").replace("lockstep-io",
                                                         "qemu-io")
        outs.append((r.returncode, "read 65536/65536" in r.stdout,
                     "Pattern verification failed" in r.stdout, err))
    if opts == "cache-size=0.5":
        # QEMU's QemuOpts text for a bad size differs from ours.
        outs = [o[:3] for o in outs]
    assert outs[0] == outs[1]


@pytest.mark.parametrize("opt,value,msg", [
    ("l2-cache-entry-size", 512, "l2-cache-entry-size=512 is not supported: "
     "the L2 cache holds whole tables, so only the cluster size (65536) is"),
    ("l2-cache-entry-size", 32768, "l2-cache-entry-size=32768 is not "
     "supported"),
    ("cache-clean-interval", 600, "cache-clean-interval=600 is not "
     "supported: cached tables are never dropped on a timer, so only 0 is"),
])
def test_qcow2_options_we_cannot_honour_are_refused(lio, lockstepd, qimg,
                                                    tmp_dir, opt, value, msg):
    """L2 cache entries smaller than a table (QEMU's slices) and dropping
    cached tables on a timer are not implemented: the options were taken
    and ignored; now they are refused by name, from lockstep-io and from
    blockdev-add, and the values we do honour still open."""
    img = os.path.join(tmp_dir, "c.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", img, "1M"]))
    opts = "driver=qcow2,file.driver=file,file.filename=%s," % img
    r = run([lio, "--image-opts", "-c", "read 0 4k",
             opts + "%s=%d" % (opt, value)])
    assert r.returncode == 1 and msg in r.stderr, r.stderr
    honoured = 65536 if opt == "l2-cache-entry-size" else 0
    ok(run([lio, "--image-opts", "-c", "read 0 4k",
            opts + "%s=%d" % (opt, honoured)]))
    with Daemon(lockstepd, tmp_dir) as d:
        c = d.client()
        node = {"driver": "qcow2", "node-name": "q",
                "file": {"driver": "file", "filename": img}}
        e = c.error("blockdev-add", dict(node, **{opt: value}))
        assert msg in e["desc"], e
        c.cmd("blockdev-add", dict(node, **{opt: honoured}))
        c.close()


# ---- an unaligned refcount block: opened, flagged when used (iotest 305) --


def test_unaligned_refblock_opens_and_is_flagged_on_use(lio, qio, qimg,
                                                        tmp_dir):
    """QEMU opens an image whose refcount table points at an unaligned
    refcount block; the first allocation that needs that block marks the
    image corrupt and fails with EIO.  The image is laid out by QEMU's
    tools, so the freed clusters are where QEMU's test has them."""
    img = os.path.join(tmp_dir, "r.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-o",
            "refcount_bits=64,cluster_size=1k", img, "1M"]))
    io(qio, img, "write 0 124k")
    io(qio, img, "discard 121k 1k", "discard 123k 1k")
    with open(img, "r+b") as f:
        reftable = struct.unpack(">Q", f.read(56)[48:56])[0]
        f.seek(reftable + 8)
        entry = struct.unpack(">Q", f.read(8))[0]
        assert entry == 0x20400
        f.seek(reftable + 14)
        f.write(b"\x06")
    # Reading needs no refcount: it works.
    io(lio, img, "read 0 4k")
    r = run([lio, "-f", "qcow2", "-c", "write 121k 3k", img])
    assert "write failed: Input/output error" in r.stdout + r.stderr
    assert ("qcow2: Marking image as corrupt: Refblock offset 0x20600 "
            "unaligned (reftable index: 0x1)") in r.stderr
    r = ok(run([qimg, "info", img]))
    assert "corrupt: true" in r.stdout


# ---- the file driver's file types; host_device and host_cdrom (iotest 226) -


@pytest.mark.parametrize("driver", ["file", "host_device", "host_cdrom"])
@pytest.mark.parametrize("ro", [True, False])
def test_protocol_drivers_check_file_type_as_qemu(lio, qio, tmp_dir, driver,
                                                  ro):
    """file wants a regular file, host_device and host_cdrom a character
    or block device: a directory and /dev/null get QEMU's errors, or open
    as QEMU opens them."""
    d = os.path.join(tmp_dir, "dir")
    os.mkdir(d)
    for name, extra in ((d, ""), ("/dev/null", ",locking=off")):
        outs = []
        for tool in (lio, qio):
            cmd = "open %s-o driver=%s,filename=%s%s" % (
                "-r " if ro else "", driver, name, extra)
            r = run([tool, "-c", cmd])
            outs.append((r.returncode, r.stdout,
                         r.stderr.replace(tool, "qemu-io")
                                 .replace("lockstep-io", "qemu-io")))
        assert outs[0] == outs[1], name



# ---- blkdebug: the format probe's read fires no event (iotest 074) --------


@pytest.mark.parametrize("size2", ["1G", "0"])
def test_compare_blkdebug_event_rule_after_probe(limg, qimg, tmp_dir, size2):
    """An inject-error rule on read_aio is armed when qcow2 fires the event
    before a data read, not by the probe's read of the header: the image
    opens and compare fails on the data read.  stdout and stderr merged
    into one pipe come in qemu-img's order (stdout is not flushed before a
    message)."""
    conf = os.path.join(tmp_dir, "blkdebug.conf")
    with open(conf, "w") as f:
        f.write('[inject-error]\nevent = "read_aio"\nerrno = "5"\n'
                'once ="off"\n')
    img = os.path.join(tmp_dir, "a.qcow2")
    img2 = os.path.join(tmp_dir, "b.qcow2")
    outs = []
    for tool in (limg, qimg):
        ok(run([qimg, "create", "-q", "-f", "qcow2", img, "1G"]))
        ok(run([qimg, "create", "-q", "-f", "qcow2", img2, size2]))
        ok(run(["qemu-io", "-c", "write -P 102 512 512", img]))
        r = subprocess.run([tool, "compare", "blkdebug:%s:%s" % (conf, img),
                            img2], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        outs.append((r.returncode,
                     r.stdout.replace(tool, "qemu-img")
                             .replace("lockstep-img", "qemu-img")))
    assert outs[0] == outs[1]
    assert outs[0][0] == 4 and "Error while reading offset 0" in outs[0][1]


# ---- shrink punches the clusters it frees inside the file (iotest 250) ----


def test_shrink_frees_clusters_inside_the_file(limg, lio, qimg, tmp_dir):
    """Clusters freed by a shrink that lie inside the file (not at its
    end, which is cut) go back to the file system, as QEMU's shrink does
    whatever the discard options say: the file node below a format passes
    discards on by default, as in QEMU."""
    img = os.path.join(tmp_dir, "p.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=1M,preallocation=metadata", img, "2100M"]))
    # QEMU's test: the data at the disk's end lands at the file's start.
    io(lio, img, "discard 0 10M", "discard 2090M 10M", "write 2090M 10M",
       "write 0 10M")
    r = ok(run([qimg, "map", "--output=json", img])).stdout
    assert '"start": 2191523840, "length": 10485760' in r and \
        '"offset": 5242880' in r
    before = os.stat(img).st_blocks * 512
    ok(run([limg, "resize", "--shrink", img, "5M"]))
    after = os.stat(img).st_blocks * 512
    # 15 MiB of clusters go back (10 inside the file, 5 cut at its end);
    # without the discard of the inner clusters only 5 MiB would go.  On
    # ext4 ours is now and then one 4 KiB block short where QEMU frees
    # exactly 15 MiB (iotest 250 fails so; cause not found yet, listed in
    # docs/iotests.md): the tolerance keeps this test about the 10 MiB.
    assert abs((before - after) - 15 * MiB) <= 256 * 1024, (before, after)
    r = ok(run([qimg, "check", img]))
    assert "No errors were found" in r.stdout


# ---- compressed clusters at odd host offsets ---------------------------------


def test_partial_write_keeps_compressed_data_at_odd_offset(lio, qio, qimg,
                                                           tmp_dir):
    """A write into part of a compressed cluster copies the rest of its
    old data.  In a compressed L2 entry bit 0 belongs to the host offset,
    not the zero flag: taken for the flag, the copy was zeroes (iotest 023
    lost data so).  qemu-io packs three compressed clusters of one
    pattern each at host offsets 0x...00, 0x...5d and 0x...ba."""
    img = os.path.join(tmp_dir, "c.qcow2")
    ok(run([qimg, "create", "-q", "-f", "qcow2", img, "1M"]))
    io(qio, img, *("write -c -P %d %dk 64k" % (i + 1, 64 * i)
                   for i in range(3)))
    q = Qcow2(img)
    entries = [q.read64(q.l2_entry_pos(0, gc)) for gc in range(3)]
    assert all(e >> 62 & 1 for e in entries), entries   # compressed
    assert any(e & 1 for e in entries), entries         # odd offset
    io(lio, img, *("write -P 9 %dk 4k" % (64 * i + 4) for i in range(3)))
    for i in range(3):
        base = 64 * i
        io(qio, img, "read -P %d %dk 4k" % (i + 1, base),
           "read -P 9 %dk 4k" % (base + 4),
           "read -P %d %dk 56k" % (i + 1, base + 8))
    assert "No errors were found" in ok(run([qimg, "check", img])).stdout


def test_numbers_after_a_tab(lio, qio, tmp_dir):
    """Commands split at spaces only; a number with a tab before it (a
    shell line continued inside quotes, iotest 003) still parses, as
    qemu-io's number parser skips leading white space."""
    img = os.path.join(tmp_dir, "t.raw")
    with open(img, "wb") as f:
        f.truncate(64 * KiB)
    for tool in (lio, qio):
        r = io(tool, img, "writev -P 0xb 8k 4k \t4k", fmt="raw")
        assert "wrote 8192/8192 bytes at offset 8192" in r.stdout, \
            (tool, r.stdout)
        r = io(tool, img, "readv -P 0xb 8k \t8k", fmt="raw")
        assert "Pattern verification failed" not in r.stdout, (tool, r.stdout)
