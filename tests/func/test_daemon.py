# SPDX-License-Identifier: MIT
"""lockstepd's command line (qemu-storage-daemon's syntax), signals,
--daemonize and --pidfile."""
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import make_image, run
from qmp_client import Daemon, QMPClient, wait_for_socket


def test_help_and_version(lockstepd):
    r = run([lockstepd, "--help"])
    assert r.returncode == 0
    for opt in ["--blockdev", "--chardev", "--monitor", "--nbd-server",
                "--export", "--daemonize", "--pidfile", "--version"]:
        assert opt in r.stdout
    r = run([lockstepd, "-h"])
    assert r.returncode == 0 and r.stdout.startswith("Usage:")
    for opt in ["--version", "-V"]:
        r = run([lockstepd, opt])
        assert r.returncode == 0
        assert r.stdout.startswith("lockstepd version ")


def test_bad_options(lockstepd, tmp_dir):
    r = run([lockstepd, "--bogus"])
    assert r.returncode == 1
    assert "unrecognized option '--bogus'" in r.stderr
    r = run([lockstepd, "foo"])
    assert r.returncode == 1
    assert r.stderr == "lockstepd: foo: Unexpected argument\n"
    r = run([lockstepd, "--monitor", "chardev=zz"])
    assert r.returncode == 1
    assert r.stderr == ('lockstepd: --monitor chardev=zz: chardev "zz" not '
                        'found\n')
    r = run([lockstepd, "--blockdev", "driver=null-co,node-name=x,zzz=1"])
    assert r.returncode == 1
    assert r.stderr.startswith("lockstepd: --blockdev "
                               "driver=null-co,node-name=x,zzz=1: ")
    assert "zzz" in r.stderr
    r = run([lockstepd, "--nbd-server", "addr.type=unix"])
    assert r.returncode == 1
    assert "Parameter 'addr.path' is missing" in r.stderr
    r = run([lockstepd, "--export", "type=nbd,id=e,node-name=x"])
    assert r.returncode == 1
    p = os.path.join(tmp_dir, "m.sock")
    r = run([lockstepd, "--chardev",
             "socket,id=m0,path=%s,server=on,wait=off,foo=bar" % p])
    assert r.returncode == 1
    assert "Invalid parameter 'foo'" in r.stderr


def test_nul_in_json_options(lockstepd, tmp_dir):
    """JSON options with \\u0000 in a name or path are refused with a
    message naming them (qemu-storage-daemon refuses them too)."""
    cases = [
        ("--blockdev", '{"driver": "null-co", "node-name": "a\\u0000b"}',
         "Parameter 'node-name' must not contain a NUL character"),
        ("--blockdev", '{"driver": "file", "filename": "/tmp/x\\u0000"}',
         "Parameter 'filename' must not contain a NUL character"),
        ("--blockdev", '{"driver": "null-co", "x\\u0000y": 1}',
         "JSON parse error, NUL byte in object key not supported near "
         "'\"x\\u0000y\"'"),
        ("--export", '{"type": "nbd", "id": "e\\u0000", "node-name": "n"}',
         "Parameter 'id' must not contain a NUL character"),
    ]
    for opt, arg, msg in cases:
        r = run([lockstepd, opt, arg])
        assert r.returncode == 1, arg
        assert r.stderr == "lockstepd: %s %s: %s\n" % (opt, arg, msg)


def test_options_in_order(lockstepd, tmp_dir):
    """A --monitor before its --chardev fails, as in QSD."""
    p = os.path.join(tmp_dir, "m.sock")
    r = run([lockstepd, "--monitor", "chardev=m0", "--chardev",
             "socket,id=m0,path=%s,server=on,wait=off" % p])
    assert r.returncode == 1
    assert 'chardev "m0" not found' in r.stderr


def test_trace_ignored(lockstepd, tmp_dir):
    with Daemon(lockstepd, tmp_dir, ["-T", "nbd_*", "--trace",
                                     "enable=foo"]) as d:
        with d.client() as c:
            c.cmd("query-version")
        assert d.stop() == 0
        assert "ignored" in d.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero(lockstepd, tmp_dir, sig):
    img = make_image(os.path.join(tmp_dir, "a.img"), 1 << 20)
    d = Daemon(lockstepd, tmp_dir,
               ["--blockdev", "driver=file,node-name=f0,filename=%s" % img,
                "--blockdev", "raw,node-name=r0,file=f0"])
    with d.client() as c:
        assert [n["node-name"] for n in
                c.cmd("query-named-block-nodes")] == ["r0", "f0"]
        d.proc.send_signal(sig)
        assert c.recv() is None
    assert d.proc.wait(10) == 0
    assert d.stop() == 0
    assert not os.path.exists(d.qmp_path)


def test_command_line_export(lockstepd, tmp_dir):
    img = make_image(os.path.join(tmp_dir, "a.img"), 1 << 20, fill=0x5a)
    nbd = os.path.join(tmp_dir, "nbd.sock")
    with Daemon(lockstepd, tmp_dir, [
            "--blockdev", '{"driver": "file", "node-name": "f0", '
                          '"filename": "%s"}' % img,
            "--blockdev", "driver=raw,node-name=r0,file=f0",
            "--blockdev", "null-co,node-name=n0",
            "--nbd-server", "addr.type=unix,addr.path=%s,max-connections=4"
                            % nbd,
            "--export", "type=nbd,id=e0,node-name=r0,name=disk,"
                        "writable=on",
            "--export", "nbd,id=e1,node-name=n0,writable=off"]) as d:
        with d.client() as c:
            exports = sorted(c.cmd("query-block-exports"),
                             key=lambda e: e["id"])
            assert [(e["id"], e["node-name"]) for e in exports] == \
                [("e0", "r0"), ("e1", "n0")]
        qemu_io = shutil.which("qemu-io")
        if qemu_io:
            r = run([qemu_io, "-f", "raw", "-c", "read -P 0x5a 0 64k",
                     "nbd+unix:///disk?socket=%s" % nbd])
            assert r.returncode == 0, r.stderr
        assert d.stop() == 0


def test_export_bitmap_option(lockstepd, tmp_dir):
    nbd = os.path.join(tmp_dir, "nbd.sock")
    # The bitmap must exist before the export: QSD users add it with
    # QMP, so here only the error path of a missing one is checked.
    r = run([lockstepd, "--blockdev", "null-co,node-name=n0",
             "--nbd-server", "addr.type=unix,addr.path=%s" % nbd,
             "--export", "type=nbd,id=e0,node-name=n0,bitmap=b0"])
    assert r.returncode == 1
    assert r.stderr.startswith("lockstepd: --export "
                               "type=nbd,id=e0,node-name=n0,bitmap=b0: ")
    assert "b0" in r.stderr


def test_daemonize_pidfile(lockstepd, tmp_dir):
    sock = os.path.join(tmp_dir, "qmp.sock")
    pidfile = os.path.join(tmp_dir, "d.pid")
    r = run([lockstepd, "--daemonize", "--pidfile", pidfile,
             "--chardev", "socket,id=m0,path=%s,server=on,wait=off" % sock,
             "--monitor", "chardev=m0"])
    assert r.returncode == 0, r.stderr
    # The parent returns only after startup: both exist already.
    assert os.path.exists(sock)
    pid = int(open(pidfile).read())
    assert pid != os.getpid()
    os.kill(pid, 0)
    with QMPClient(sock) as c:
        c.cmd("query-version")
        c.execute("quit")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("daemon did not exit")
    assert not os.path.exists(pidfile)


def test_daemonize_startup_error(lockstepd):
    r = run([lockstepd, "--daemonize", "--monitor", "chardev=zz"])
    assert r.returncode == 1
    assert 'chardev "zz" not found' in r.stderr


def test_chardev_short_booleans(lockstepd, tmp_dir):
    """QSD still takes "server,nowait" (with a deprecation warning)."""
    sock = os.path.join(tmp_dir, "qmp.sock")
    proc = subprocess.Popen([lockstepd, "--chardev",
                             "socket,id=m0,path=%s,server,nowait" % sock,
                             "--monitor", "m0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(sock, proc)
        with QMPClient(sock) as c:
            c.cmd("query-version")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "short-form boolean option 'server' deprecated" in err
    assert "Please use wait=off instead" in err


def test_tcp_monitor(lockstepd, tmp_dir):
    import socket as so
    s = so.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([lockstepd, "--chardev",
                             "socket,id=m0,host=127.0.0.1,port=%d,server=on,"
                             "wait=off" % port, "--monitor", "m0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                c = QMPClient(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
        with c:
            assert c.cmd("query-version")["package"].startswith("lockstep")
            c.execute("quit")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_pretty_monitor(lockstepd, tmp_dir):
    """pretty=on: indented JSON with CR LF line ends, as QEMU's chardev."""
    import json
    import socket as so
    sock = os.path.join(tmp_dir, "qmp.sock")
    proc = subprocess.Popen([lockstepd, "--chardev",
                             "socket,id=m0,path=%s,server=on,wait=off" % sock,
                             "--monitor", "chardev=m0,pretty=on"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(sock, proc)
        s = so.socket(so.AF_UNIX)
        s.connect(sock)
        s.sendall(b'{"execute": "qmp_capabilities", "id": 1}')
        buf = raw = b""
        msgs = []
        dec = json.JSONDecoder()
        deadline = time.monotonic() + 10
        while len(msgs) < 2 and time.monotonic() < deadline:
            chunk = s.recv(4096)
            raw += chunk
            buf += chunk
            text = buf.decode().lstrip()
            while text:
                try:
                    obj, end = dec.raw_decode(text)
                except ValueError:
                    break
                msgs.append(obj)
                text = text[end:].lstrip()
                buf = text.encode()
        s.close()
        assert raw.startswith(b'{\r\n    "QMP": {\r\n        "version"')
        assert raw.endswith(b'}\r\n')
        assert "QMP" in msgs[0]
        assert msgs[1] == {"return": {}, "id": 1}
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_object_iothread(lockstepd, tmp_dir):
    r = run([lockstepd, "--object", "iothread"])
    assert r.returncode == 1
    assert r.stderr == ("lockstepd: --object iothread: Parameter 'id' is "
                        "missing\n")
    r = run([lockstepd, "--object", "iothread,id=a", "--object",
             "iothread,id=a"])
    assert r.returncode == 1
    assert "attempt to add duplicate property 'a' to object (type " \
        "'container')" in r.stderr
    r = run([lockstepd, "--object", "foo,id=a"])
    assert r.returncode == 1
    assert "Parameter 'qom-type' does not accept value 'foo'" in r.stderr
    nbd = os.path.join(tmp_dir, "nbd.sock")
    with Daemon(lockstepd, tmp_dir, [
            "--object", "iothread,id=iot0,poll-max-ns=0",
            "--blockdev", "null-co,node-name=n0",
            "--nbd-server", "addr.type=unix,addr.path=%s" % nbd,
            "--export", "type=nbd,id=e0,node-name=n0,iothread=iot0,"
                        "fixed-iothread=on"]) as d:
        with d.client() as c:
            assert [e["id"] for e in c.cmd("query-block-exports")] == ["e0"]
        assert d.stop() == 0
