# SPDX-License-Identifier: MIT
"""Image locking interoperates with QEMU's: lockstep and QEMU refuse to
write the same image at once, in both directions, and read-only users with
force-share still get in."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import run


PROMPT = "lockstep-io> "


def answer(p):
    """The next line lockstep-io prints, without its prompts (it prints
    one before each command it reads, also from a pipe, as qemu-io)."""
    line = p.stdout.readline()
    while line.startswith(PROMPT):
        line = line[len(PROMPT):]
    return line


def wait_for(pred, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def image(tmp_dir, lockstep_io):
    """A qcow2 image: qcow2 refuses to share writing of its file (raw
    shares it, in QEMU as here, so raw images show no conflict)."""
    path = os.path.join(tmp_dir, "disk.qcow2")
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "1M"],
                   check=True)
    r = run([lockstep_io, "-f", "qcow2", "-c", "read 0 512", path])
    if r.returncode != 0 and "driver" in r.stderr:
        pytest.skip("lockstep has no qcow2 driver yet")
    return path


def test_qemu_refused_while_lockstep_writes(lockstep_io, qemu_io, image):
    # lockstep-io reading commands from a pipe keeps the image open.
    p = subprocess.Popen([lockstep_io, "-f", "qcow2", image],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        # Flush, so that qcow2's cached metadata is on disk for the reader.
        p.stdin.write("write -P 0x11 0 4k\nflush\nlength\n")
        p.stdin.flush()
        assert answer(p).startswith("wrote 4096/4096")
        # "length" answers after the flush is done.
        line = answer(p)
        while line.strip() != "1 MiB":
            assert line, "lockstep-io ended"
            line = answer(p)
        r = run([qemu_io, "-f", "qcow2", "-c", "read 0 512", image])
        assert r.returncode != 0
        assert 'Failed to get "write" lock' in r.stderr
        # Read-only with force-share (-U) is allowed, as in QEMU.
        r = run([qemu_io, "-r", "-U", "-f", "qcow2", "-c",
                 "read -P 0x11 0 4k", image])
        assert r.returncode == 0, r.stderr
    finally:
        p.stdin.close()
        p.wait(timeout=10)
    # Once lockstep is gone, QEMU may write.
    r = run([qemu_io, "-f", "qcow2", "-c", "write 0 512", image])
    assert r.returncode == 0, r.stderr


def test_lockstep_refused_while_qemu_writes(lockstep_io, image, tmp_dir):
    qsd = shutil.which("qemu-storage-daemon")
    if not qsd:
        pytest.skip("qemu-storage-daemon is not installed")
    sock = os.path.join(tmp_dir, "nbd.sock")
    d = subprocess.Popen([
        qsd, "--blockdev",
        "driver=file,node-name=f,filename=%s" % image,
        "--blockdev", "driver=qcow2,node-name=r,file=f",
        "--nbd-server", "addr.type=unix,addr.path=%s" % sock,
        "--export", "type=nbd,id=e,node-name=r,writable=on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: os.path.exists(sock))
        r = run([lockstep_io, "-f", "qcow2", "-c", "write 0 512", image])
        assert r.returncode != 0
        assert 'Failed to get "write" lock' in r.stderr
        r = run([lockstep_io, "--image-opts", "-c", "read 0 512",
                 "driver=qcow2,read-only=on,force-share=on,file.driver=file,"
                 "file.filename=%s" % image])
        assert r.returncode == 0, r.stderr
    finally:
        d.terminate()
        d.wait(timeout=10)


def test_raw_images_are_shared_as_in_qemu(lockstep_io, qemu_io, tmp_dir):
    """raw has no metadata: QEMU lets two writers at a raw image (the
    users decide), and so do we."""
    image = os.path.join(tmp_dir, "disk.raw")
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    p = subprocess.Popen([lockstep_io, "-f", "raw", image],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        p.stdin.write("write -P 0x22 0 4k\n")
        p.stdin.flush()
        assert answer(p).startswith("wrote 4096/4096")
        r = run([qemu_io, "-f", "raw", "-c", "read -P 0x22 0 4k", image])
        assert r.returncode == 0, r.stderr
    finally:
        p.stdin.close()
        p.wait(timeout=10)
