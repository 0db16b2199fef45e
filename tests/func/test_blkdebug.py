# SPDX-License-Identifier: MIT
"""blkdebug rules behave as in QEMU: formats fire the data events
(read_aio, write_aio) only before guest data I/O, so a rule on them does
not fail a qcow2 image's metadata reads at open; flushes fire
flush_to_disk.  Each case runs through lockstep-io and qemu-io and must
give the same results."""
import os
import shutil
import subprocess

import pytest

from conftest import run


@pytest.fixture
def qcow2(tmp_dir):
    if not shutil.which("qemu-img") or not shutil.which("qemu-io"):
        pytest.skip("qemu-img/qemu-io are not installed")
    path = os.path.join(tmp_dir, "d.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "1M"],
                   check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k",
                    path], check=True, capture_output=True)
    return path


def both(lockstep_io, opts, cmds):
    """Run the commands through both tools; return (ours, qemu's)."""
    argv = ["--image-opts"]
    for c in cmds:
        argv += ["-c", c]
    ours = run([lockstep_io] + argv + [opts])
    theirs = run(["qemu-io"] + argv + [opts])
    return ours, theirs


def failed(r):
    return "Input/output error" in r.stdout + r.stderr


def opts_for(path, rule):
    return ("driver=qcow2,file.driver=blkdebug,file.image.driver=file,"
            "file.image.filename=%s,%s" % (path, rule))


def test_read_aio_rule_spares_metadata(lockstep_io, qcow2):
    opts = opts_for(qcow2, "file.inject-error.0.event=read_aio,"
                    "file.inject-error.0.once=on")
    ours, theirs = both(lockstep_io, opts, ["read -P 0x5a 0 4k",
                                            "read -P 0x5a 0 4k"])
    # Open works (metadata reads fire nothing); the first data read fails,
    # the second succeeds (once).
    for r in (ours, theirs):
        assert failed(r), r.stdout + r.stderr
        assert "read 4096/4096 bytes at offset 0" in r.stdout
        assert "can't open" not in r.stderr


def test_write_aio_rule_fails_guest_write(lockstep_io, qcow2):
    opts = opts_for(qcow2, "file.inject-error.0.event=write_aio")
    ours, theirs = both(lockstep_io, opts, ["read -P 0x5a 0 4k",
                                            "write -P 1 0 4k"])
    for r in (ours, theirs):
        assert "read 4096/4096 bytes at offset 0" in r.stdout
        assert failed(r)


def test_flush_moves_state(lockstep_io, qcow2):
    """A flush with nothing written is skipped (no event); after a write
    it fires flush_to_disk, which moves the state and arms the rule."""
    opts = opts_for(qcow2, "file.set-state.0.event=flush_to_disk,"
                    "file.set-state.0.state=1,file.set-state.0.new_state=2,"
                    "file.inject-error.0.event=read_aio,"
                    "file.inject-error.0.state=2")
    ours, theirs = both(lockstep_io, opts, [
        "read -P 0x5a 0 4k", "flush", "read -P 0x5a 0 4k",
        "write -P 0x5a 64k 4k", "flush", "read -P 0x5a 0 4k"])
    for r in (ours, theirs):
        assert r.stdout.count("read 4096/4096 bytes at offset 0") == 2
        assert "wrote 4096/4096 bytes at offset 65536" in r.stdout
        assert failed(r)
