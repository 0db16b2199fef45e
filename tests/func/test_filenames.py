# SPDX-License-Identifier: MIT
"""File names as QEMU's tools take them, through the drivers' own
parse_filename hooks (file:, null-co://, blkdebug:, nbd:// and QEMU's
older nbd:HOST:PORT / nbd:unix:PATH), the core's json: and
plain paths, and format probing through the drivers' probe hooks (one
block_probe_format() for the block layer and the tools)."""
import json
import os
import shutil

import pytest

from conftest import built_program, free_port, make_image, run

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def lockstep_img(build_dir):
    return built_program(build_dir, "lockstep-img")


def lio(lockstep_io, name, *cmds):
    argv = [lockstep_io]
    for c in cmds:
        argv += ["-c", c]
    return run(argv + [name])


@pytest.fixture
def raw_img(tmp_dir):
    return make_image(os.path.join(tmp_dir, "a.raw"), MiB, fill=0x5a)


@pytest.fixture
def qcow2_img(tmp_dir, lockstep_img):
    path = os.path.join(tmp_dir, "a.qcow2")
    r = run([lockstep_img, "create", "-f", "qcow2", path, "1M"])
    assert r.returncode == 0, r.stderr
    return path


def test_file_prefix_opens_the_path(lockstep_io, raw_img):
    r = lio(lockstep_io, "file:" + raw_img, "read -P 0x5a 0 4k")
    assert r.returncode == 0, r.stderr
    assert "read 4096/4096 bytes at offset 0" in r.stdout


def test_file_prefix_probes_qcow2(lockstep_io, qcow2_img):
    # Written through qcow2, read back through a probed "file:" name: the
    # pattern is there only if the name was probed as qcow2, not raw.
    r = lio(lockstep_io, qcow2_img, "write -P 0x17 64k 4k")
    assert r.returncode == 0, r.stderr
    r = lio(lockstep_io, "file:" + qcow2_img, "read -P 0x17 64k 4k",
            "read -P 0 0 4k")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Pattern verification failed" not in r.stdout
    assert "read 4096/4096 bytes at offset 65536" in r.stdout


def test_null_co_url(lockstep_io):
    r = lio(lockstep_io, "null-co://", "read 0 4k")
    assert r.returncode == 0, r.stderr
    assert "read 4096/4096 bytes at offset 0" in r.stdout


def test_blkdebug_prefix_wraps_the_name(lockstep_io, raw_img):
    r = lio(lockstep_io, "blkdebug::" + raw_img, "read -P 0x5a 0 4k")
    assert r.returncode == 0, r.stderr
    r = lio(lockstep_io, "blkdebug:" + raw_img, "read 0 4k")
    assert r.returncode != 0
    assert "Invalid filename format" in r.stderr


def test_unknown_protocol_is_refused(lockstep_io, tmp_dir):
    r = lio(lockstep_io, "frob:" + os.path.join(tmp_dir, "x"), "read 0 1")
    assert r.returncode != 0
    assert "Unknown protocol 'frob'" in r.stderr
    qemu_io = shutil.which("qemu-io")
    if qemu_io:
        q = lio(qemu_io, "frob:" + os.path.join(tmp_dir, "x"), "read 0 1")
        assert "Unknown protocol 'frob'" in q.stderr


def test_json_names_the_options(lockstep_io, raw_img):
    name = 'json:{"driver": "raw", "file.driver": "file", ' \
           '"file.filename": "%s"}' % raw_img
    r = lio(lockstep_io, name, "read -P 0x5a 0 4k")
    assert r.returncode == 0, r.stderr


def test_img_info_probes_the_format(lockstep_img, raw_img, qcow2_img):
    for path, fmt in ((raw_img, "raw"), (qcow2_img, "qcow2")):
        r = run([lockstep_img, "info", "--output=json", path])
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["format"] == fmt


def test_backing_file_without_format_is_probed(lockstep_img, lockstep_io,
                                               tmp_dir, qcow2_img):
    # The overlay names its backing file without a format: qcow2's open
    # probes it (a raw guess would read the base's metadata as data).
    r = lio(lockstep_io, qcow2_img, "write -P 0x33 0 64k")
    assert r.returncode == 0, r.stderr
    top = os.path.join(tmp_dir, "top.qcow2")
    r = run([lockstep_img, "create", "-f", "qcow2", "-b", qcow2_img,
             "-F", "qcow2", top])
    assert r.returncode == 0, r.stderr
    with open(top, "r+b") as f:
        # Turn the backing format header extension (0xe2792aca) into an
        # unknown one, which readers skip: the backing file has no format.
        head = f.read(4096)
        at = head.index(b"\xe2\x79\x2a\xca", 104)
        f.seek(at)
        f.write(b"\x7a\x7a\x7a\x7a")
    info = json.loads(run([lockstep_img, "info", "--output=json",
                           top]).stdout)
    assert "backing-filename-format" not in info
    r = lio(lockstep_io, top, "read -P 0x33 0 64k")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Pattern verification failed" not in r.stdout
    assert "read 65536/65536 bytes at offset 0" in r.stdout


# ---- QEMU's older NBD names: nbd:HOST:PORT, nbd:unix:PATH -----------------


@pytest.fixture
def nbd_exports(tmp_dir):
    """One raw image served by qemu-nbd as export "exp" on a Unix socket
    and on a TCP port of 127.0.0.1."""
    qemu_nbd = shutil.which("qemu-nbd")
    if not qemu_nbd:
        pytest.skip("qemu-nbd is not installed")
    img = make_image(os.path.join(tmp_dir, "nbd.raw"), MiB, fill=0x6b)
    sock = os.path.join(tmp_dir, "nbd.sock")
    port = free_port()
    pids = []
    for where in (["-k", sock], ["-b", "127.0.0.1", "-p", str(port)]):
        pidfile = os.path.join(tmp_dir, "nbd%d.pid" % len(pids))
        r = run([qemu_nbd, "-f", "raw", "-x", "exp", "-t", "--fork",
                 "--pid-file", pidfile] + where + [img])
        assert r.returncode == 0, r.stderr
        with open(pidfile) as f:
            pids.append(int(f.read()))
    yield sock, port
    for pid in pids:
        os.kill(pid, 15)


def legacy_names(sock, port):
    return ["nbd:unix:%s:exportname=exp" % sock,
            "nbd:127.0.0.1:%d:exportname=exp" % port]


def test_nbd_legacy_names_read(lockstep_io, nbd_exports):
    for name in legacy_names(*nbd_exports):
        r = lio(lockstep_io, name, "read -P 0x6b 0 64k")
        assert r.returncode == 0, (name, r.stderr)
        assert "read 65536/65536 bytes at offset 0" in r.stdout, name


def test_nbd_legacy_names_info_as_qemu_img(lockstep_img, nbd_exports):
    # qemu-img shows the export under its URL name (QEMU's
    # refresh_filename); so do we, from the nbd driver's hook.
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        pytest.skip("qemu-img is not installed")
    for name in legacy_names(*nbd_exports):
        argv = ["info", "--output=json", "-f", "raw", name]
        ours, theirs = run([lockstep_img] + argv), run([qemu_img] + argv)
        assert ours.returncode == theirs.returncode == 0, ours.stderr
        assert json.loads(ours.stdout) == json.loads(theirs.stdout)


def test_nbd_legacy_default_export(lockstep_io, nbd_exports):
    # Without ":exportname=" the name asks for the default export "",
    # which this server does not have: refused by the server, not by us.
    sock, _ = nbd_exports
    r = lio(lockstep_io, "nbd:unix:" + sock, "read 0 4k")
    assert r.returncode != 0
    assert "error parsing" not in r.stderr
    assert "address missing" not in r.stderr


@pytest.mark.parametrize("name", ["nbd:", "nbd:localhost",
                                  "nbd:127.0.0.1:1:exportname="])
def test_nbd_legacy_bad_names_as_qemu_img(lockstep_img, name):
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        pytest.skip("qemu-img is not installed")
    argv = ["info", "-f", "raw", name]
    ours, theirs = run([lockstep_img] + argv), run([qemu_img] + argv)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.replace("lockstep-img", "qemu-img") == theirs.stderr
