# SPDX-License-Identifier: MIT
"""Functional tests of the NBD server with real clients.

The server runs in build/tests/unit/nbd-serve (the NBD server of liblockstep
with a small JSON command loop on stdin standing in for QMP).  Clients:
qemu-io, qemu-img, nbdinfo, nbdcopy, fio (ioengine=nbd) and a raw Python
client (RawClient) for what real clients never send: garbage, truncated
requests, floods, out-of-range requests and odd options.

Every test runs under a SIGALRM guard and kills its servers.
"""
import json
import os
import queue
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import build_dir_path, free_port, make_image, run

MiB = 1024 * 1024
TEST_TIMEOUT = 90

# NBD wire constants (NBD spec).
NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003e889045565a9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668e33ef
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META, OPT_SET_META, OPT_EXTENDED_HEADERS = 9, 10, 11
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
REP_ERR_POLICY = 0x80000002
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = (
    0x80000001, 0x80000003, 0x80000006)
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 4, 5, 6, 7
FLAG_FUA, FLAG_NO_HOLE, FLAG_DF, FLAG_REQ_ONE = 1, 2, 4, 8
EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW = 1, 5, 22, 28, 75
TYPE_NONE, TYPE_DATA, TYPE_HOLE, TYPE_BS, TYPE_ERROR = 0, 1, 2, 5, 0x8001


@pytest.fixture(autouse=True)
def timeout_guard():
    """Fail (rather than hang) any test that runs too long."""
    def on_alarm(signum, frame):
        raise TimeoutError("test exceeded %d s" % TEST_TIMEOUT)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def nbd_serve_path():
    path = os.path.join(build_dir_path(), "tests", "unit", "nbd-serve")
    if not os.access(path, os.X_OK):
        pytest.skip("%s is not built" % path)
    return path


class NbdServe:
    """nbd-serve as a subprocess; commands go to stdin as JSON lines."""

    def __init__(self, args):
        self.proc = subprocess.Popen([nbd_serve_path()] + args,
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events = []
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()
        line = self._readline(20)
        if line != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None \
                else ""
            self.kill()
            raise RuntimeError("nbd-serve did not start: %r %s" % (line, err))

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")

    def _readline(self, timeout):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("nbd-serve did not answer") from None

    def cmd(self, _cmd, _timeout=30, **args):
        self.proc.stdin.write(json.dumps({"execute": _cmd,
                                          "arguments": args}) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self._readline(_timeout)
            if not line:
                raise RuntimeError("nbd-serve died")
            msg = json.loads(line)
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        """Clean shutdown (EOF on stdin); returns the exit status."""
        try:
            self.proc.stdin.close()
            return self.proc.wait(timeout=20)
        finally:
            self.kill()


@pytest.fixture
def servers():
    started = []

    def start(args):
        s = NbdServe(args)
        started.append(s)
        return s

    yield start
    reports = []
    for s in started:
        # A clean shutdown, so that sanitizer builds check for leaks too.
        if s.alive():
            try:
                s.stop()
            except subprocess.TimeoutExpired:
                reports.append("nbd-serve did not shut down")
        s.kill()
        err = s.proc.stderr.read()
        if "Sanitizer" in err or "runtime error" in err:
            reports.append(err)
    assert not reports, "\n".join(reports)[-4000:]


def file_server(servers, tmp_dir, size=64 * MiB, writable=True, extra=(),
                export_extra="", tcp=False, fill=None):
    img = make_image(os.path.join(tmp_dir, "disk.raw"), size, fill)
    sock = os.path.join(tmp_dir, "nbd.sock")
    port = free_port()
    addr = "inet:127.0.0.1:%d" % port if tcp else "unix:" + sock
    srv = servers(["-b", "driver=file,node-name=disk0,filename=" + img,
                   "-n", addr,
                   "-e", "type=nbd,id=e0,node-name=disk0,writable=%s%s"
                   % ("on" if writable else "off", export_extra)]
                  + list(extra))
    srv.img = img
    srv.sock = sock
    srv.port = port
    srv.uri = ("nbd://127.0.0.1:%d/disk0" % port if tcp else
               "nbd+unix:///disk0?socket=" + sock)
    return srv


def need(prog):
    if not shutil.which(prog):
        pytest.skip("%s is not installed" % prog)


# ---- A raw client ---------------------------------------------------------


class RawClient:
    def __init__(self, sock_path=None, port=None):
        if sock_path:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.connect(sock_path)
        else:
            self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(20)
        self.cookie = 0

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError("server closed the connection")
            buf += chunk
        return buf

    def greet(self, cflags=3):
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        assert magic == NBDMAGIC and opt == IHAVEOPT
        assert hflags == 3
        self.s.sendall(struct.pack(">I", cflags))

    def opt(self, num, data=b""):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, num, len(data)) + data)

    def opt_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == REPLY_MAGIC
        return opt, rtype, self.recv(length)

    def opt_replies(self, num, data=b""):
        """Send an option, gather replies up to the final ACK or error."""
        self.opt(num, data)
        out = []
        while True:
            opt, rtype, payload = self.opt_reply()
            assert opt == num
            out.append((rtype, payload))
            if rtype == REP_ACK or rtype & 0x80000000:
                return out

    @staticmethod
    def info_data(name, infos=(3,)):
        n = name.encode()
        return (struct.pack(">I", len(n)) + n + struct.pack(">H", len(infos))
                + b"".join(struct.pack(">H", i) for i in infos))

    @staticmethod
    def meta_data(name, queries):
        n = name.encode()
        d = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
        for q in queries:
            d += struct.pack(">I", len(q)) + q.encode()
        return d

    def connect(self, name="disk0", structured=True, meta=()):
        """Full handshake with GO; returns (size, flags)."""
        self.greet()
        self.structured = structured
        if structured:
            r = self.opt_replies(OPT_STRUCTURED_REPLY)
            assert r[-1][0] == REP_ACK
        if meta:
            r = self.opt_replies(OPT_SET_META, self.meta_data(name, meta))
            assert r[-1][0] == REP_ACK
            self.ctx = {p[4:].decode(): struct.unpack(">I", p[:4])[0]
                        for t, p in r if t == REP_META}
        r = self.opt_replies(OPT_GO, self.info_data(name))
        assert r[-1][0] == REP_ACK, r
        for rtype, payload in r:
            if rtype == REP_INFO and struct.unpack(">H", payload[:2])[0] == 0:
                size, flags = struct.unpack(">QH", payload[2:])
        self.size, self.flags = size, flags
        return size, flags

    def request(self, cmd, offset=0, length=0, flags=0, data=b""):
        self.cookie += 1
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd,
                                   self.cookie, offset, length) + data)
        return self.cookie

    def reply(self):
        """One whole reply: (cookie, error, data-or-chunks)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            return cookie, err, None
        assert magic == STRUCT_MAGIC, hex(magic)
        chunks = []
        while True:
            flags, ctype, cookie, length = struct.unpack(">HHQI",
                                                         self.recv(16))
            chunks.append((ctype, self.recv(length)))
            if flags & 1:
                break
            magic = struct.unpack(">I", self.recv(4))[0]
            assert magic == STRUCT_MAGIC
        err = 0
        for ctype, payload in chunks:
            if ctype & 0x8000:
                err = struct.unpack(">I", payload[:4])[0]
        return cookie, err, chunks

    def read(self, offset, length, flags=0):
        """READ; returns (error, bytes) with holes expanded."""
        self.request(CMD_READ, offset, length, flags)
        if not self.structured:
            _, err, cookie = struct.unpack(">IIQ", self.recv(16))
            return err, (self.recv(length) if err == 0 else None)
        cookie, err, chunks = self.reply()
        if err:
            return err, None
        buf = bytearray(length)
        for ctype, payload in chunks:
            if ctype == TYPE_DATA:
                off = struct.unpack(">Q", payload[:8])[0] - offset
                buf[off:off + len(payload) - 8] = payload[8:]
            elif ctype == TYPE_HOLE:
                off, n = struct.unpack(">QI", payload)
                buf[off - offset:off - offset + n] = bytes(n)
        return 0, bytes(buf)

    def simple(self, cmd, offset=0, length=0, flags=0, data=b""):
        self.request(cmd, offset, length, flags, data)
        return self.reply()[1]

    def close(self):
        try:
            self.request(CMD_DISC)
        except OSError:
            pass
        self.s.close()


# ---- Real clients -----------------------------------------------------------


def test_nbdinfo_list_and_flags(servers, tmp_dir):
    need("nbdinfo")
    srv = file_server(servers, tmp_dir,
                      export_extra=",description=my disk")
    r = run(["nbdinfo", "--list", "--json", srv.uri])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    exports = info["exports"]
    assert len(exports) == 1
    e = exports[0]
    assert e["export-name"] == "disk0"
    assert e["description"] == "my disk"
    assert e["export-size"] == 64 * MiB
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero",
                 "can_fast_zero", "can_cache", "can_df", "can_multi_conn"):
        assert e[flag] is True, flag
    assert e["is_read_only"] is False
    assert e["block_size_minimum"] == 1
    assert e["block_size_preferred"] == 4096
    assert e["block_size_maximum"] == 32 * MiB
    assert "base:allocation" in e["contexts"]


def test_read_only_export_flags(servers, tmp_dir):
    need("nbdinfo")
    srv = file_server(servers, tmp_dir, writable=False)
    r = run(["nbdinfo", "--json", srv.uri])
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)["exports"][0]
    assert e["is_read_only"] is True
    assert e["can_trim"] is False and e["can_zero"] is False
    assert e["can_multi_conn"] is True
    # Writes are refused with EPERM.
    c = RawClient(srv.sock)
    c.connect()
    assert c.simple(CMD_WRITE, 0, 512, data=bytes(512)) == EPERM
    assert c.simple(CMD_TRIM, 0, 512) == EPERM
    assert c.simple(CMD_WRITE_ZEROES, 0, 512) == EPERM
    assert c.simple(CMD_FLUSH) == 0
    c.close()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_qemu_io_roundtrip(servers, tmp_dir, tcp):
    need("qemu-io")
    srv = file_server(servers, tmp_dir, tcp=tcp)
    r = run(["qemu-io", "-f", "raw",
             "-c", "write -P 0x5a 1M 1M",
             "-c", "write -P 0x33 3000 5000",
             "-c", "write -z 8M 64k",
             "-c", "aio_write -P 0x44 16M 64k",
             "-c", "aio_write -P 0x45 17M 64k",
             "-c", "aio_flush",
             "-c", "write -f -P 0x46 20M 4k",
             "-c", "read -P 0x5a 1M 1M",
             "-c", "read -P 0x33 3000 5000",
             "-c", "read -P 0 8M 64k",
             "-c", "read -P 0x44 16M 64k",
             "-c", "read -P 0x45 17M 64k",
             "-c", "read -P 0x46 20M 4k",
             srv.uri])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Pattern verification failed" not in r.stdout
    assert "failed" not in r.stdout + r.stderr
    with open(srv.img, "rb") as f:
        f.seek(1 * MiB)
        assert f.read(MiB) == b"\x5a" * MiB
        f.seek(3000)
        assert f.read(5000) == b"\x33" * 5000


def test_qemu_img_map_and_nbdinfo_map(servers, tmp_dir):
    need("qemu-img")
    need("nbdinfo")
    srv = file_server(servers, tmp_dir)
    r = run(["qemu-io", "-f", "raw", "-c", "write -P 1 1M 1M",
             "-c", "write -P 2 10M 64k", srv.uri])
    assert r.returncode == 0, r.stderr
    r = run(["qemu-img", "map", "-f", "raw", "--output=json", srv.uri])
    assert r.returncode == 0, r.stderr
    data = [(m["start"], m["length"]) for m in json.loads(r.stdout)
            if m["data"]]
    assert data == [(1 * MiB, MiB), (10 * MiB, 64 * 1024)]
    r = run(["nbdinfo", "--map", "--json", srv.uri])
    assert r.returncode == 0, r.stderr
    ext = json.loads(r.stdout)
    assert ext[0] == {"offset": 0, "length": MiB, "type": 3,
                      "description": "hole,zero"}
    assert {"offset": MiB, "length": MiB, "type": 0,
            "description": "data"} in ext
    assert sum(e["length"] for e in ext) == 64 * MiB


def test_allocation_depth(servers, tmp_dir):
    need("nbdinfo")
    srv = file_server(servers, tmp_dir, export_extra=",allocation-depth=on")
    r = run(["nbdinfo", "--map=qemu:allocation-depth", "--json", srv.uri])
    assert r.returncode == 0, r.stderr
    ext = json.loads(r.stdout)
    assert sum(e["length"] for e in ext) == 64 * MiB
    assert all(e["type"] in (0, 1) for e in ext)
    # Without allocation-depth=on the context is not offered.
    c = RawClient(srv.sock)
    c.greet()
    c.opt_replies(OPT_STRUCTURED_REPLY)
    r = c.opt_replies(OPT_LIST_META, c.meta_data("disk0", []))
    names = [p[4:].decode() for t, p in r if t == REP_META]
    assert names == ["base:allocation", "qemu:allocation-depth"]


def test_dirty_bitmap_context(servers, tmp_dir):
    need("nbdinfo")
    need("qemu-io")
    srv = file_server(servers, tmp_dir, extra=["-m", "disk0,b0"],
                      export_extra=",bitmaps.0=b0")
    r = run(["qemu-io", "-f", "raw", "-c", "write 1M 4k",
             "-c", "write 5M 200k", srv.uri])
    assert r.returncode == 0, r.stderr
    r = run(["nbdinfo", "--map=qemu:dirty-bitmap:b0", "--json", srv.uri])
    assert r.returncode == 0, r.stderr
    dirty = [(e["offset"], e["length"]) for e in json.loads(r.stdout)
             if e["type"] == 1]
    # 64 KiB granularity.
    assert dirty == [(MiB, 64 * 1024), (5 * MiB, 256 * 1024)]
    # LIST: "qemu:dirty-bitmap:" lists exported bitmaps.
    c = RawClient(srv.sock)
    c.greet()
    c.opt_replies(OPT_STRUCTURED_REPLY)
    r = c.opt_replies(OPT_LIST_META,
                      c.meta_data("disk0", ["qemu:dirty-bitmap:"]))
    assert [p[4:] for t, p in r if t == REP_META] == \
        [b"qemu:dirty-bitmap:b0"]
    # SET with several contexts: one chunk each, REQ_ONE respected.
    c2 = RawClient(srv.sock)
    c2.connect(meta=["base:allocation", "qemu:dirty-bitmap:b0",
                     "qemu:dirty-bitmap:nope", "other:thing"])
    assert set(c2.ctx) == {"base:allocation", "qemu:dirty-bitmap:b0"}
    c2.request(CMD_BLOCK_STATUS, MiB, 4 * MiB, FLAG_REQ_ONE)
    cookie, err, chunks = c2.reply()
    assert err == 0 and len(chunks) == 2
    for ctype, payload in chunks:
        assert ctype == TYPE_BS
        ctx_id, length, flags = struct.unpack(">III", payload)
        assert length <= 4 * MiB
        if ctx_id == c2.ctx["qemu:dirty-bitmap:b0"]:
            assert (length, flags) == (64 * 1024, 1)
        else:
            assert flags == 0  # data
    c2.close()


def test_bitmap_export_errors(servers, tmp_dir):
    srv = file_server(servers, tmp_dir, extra=["-m", "disk0,b0"])
    r = srv.cmd("block-export-add", type="nbd", id="e1", node_name="x")
    assert "error" in r
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e1",
                                       "node-name": "disk0", "name": "z",
                                       "bitmaps": ["nope"]})
    assert r["error"]["desc"] == "Bitmap 'nope' is not found"
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e1",
                                       "node-name": "disk0", "name": "x",
                                       "bitmaps": [{"node": "disk0",
                                                    "name": "b0"}]})
    assert r == {"return": {}}
    # The bitmap is busy while exported.
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e2",
                                       "node-name": "disk0", "name": "y",
                                       "bitmaps": ["b0"]})
    assert "currently in use" in r["error"]["desc"]


def test_nbdcopy_both_ways(servers, tmp_dir):
    need("nbdcopy")
    srv = file_server(servers, tmp_dir, size=16 * MiB)
    src = os.path.join(tmp_dir, "src.raw")
    with open(src, "wb") as f:
        rnd = random.Random(1)
        f.write(rnd.randbytes(4 * MiB))
        f.seek(12 * MiB)
        f.write(rnd.randbytes(MiB))
        f.truncate(16 * MiB)
    r = run(["nbdcopy", src, srv.uri], timeout=60)
    assert r.returncode == 0, r.stderr
    with open(src, "rb") as a, open(srv.img, "rb") as b:
        assert a.read() == b.read()
    dst = os.path.join(tmp_dir, "dst.raw")
    r = run(["nbdcopy", srv.uri, dst], timeout=60)
    assert r.returncode == 0, r.stderr
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read() == b.read()


def test_fio_verify(servers, tmp_dir):
    need("fio")
    if "uri" not in run(["fio", "--enghelp=nbd"]).stdout:
        pytest.skip("fio has no nbd engine")
    srv = file_server(servers, tmp_dir, size=32 * MiB)
    # fio writes its verify state file into the working directory.
    r = subprocess.run(["fio", "--name=nbdtest", "--ioengine=nbd",
                        "--uri=" + srv.uri, "--rw=randwrite", "--bs=4k",
                        "--size=32M", "--iodepth=32", "--io_size=8M",
                        "--verify=crc32c", "--do_verify=1", "--randrepeat=1",
                        "--output-format=json"], capture_output=True,
                       text=True, timeout=80, cwd=tmp_dir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    res = json.loads(r.stdout[r.stdout.index("{"):])
    job = res["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 8 * MiB


# ---- Protocol details with the raw client --------------------------------


def test_structured_read_holes_and_df(servers, tmp_dir):
    srv = file_server(servers, tmp_dir)
    c = RawClient(srv.sock)
    c.connect()
    pattern = bytes(range(256)) * 256          # 64 KiB
    assert c.simple(CMD_WRITE, MiB, len(pattern), data=pattern) == 0
    # A read over hole + data + hole: holes come as OFFSET_HOLE.
    c.request(CMD_READ, MiB - 64 * 1024, 192 * 1024)
    cookie, err, chunks = c.reply()
    assert err == 0
    types = [t for t, p in chunks]
    assert TYPE_HOLE in types and TYPE_DATA in types
    err, data = c.read(MiB - 64 * 1024, 192 * 1024)
    assert data == bytes(64 * 1024) + pattern + bytes(64 * 1024)
    # DF: one data chunk.
    c.request(CMD_READ, MiB - 64 * 1024, 192 * 1024, FLAG_DF)
    cookie, err, chunks = c.reply()
    assert err == 0 and len(chunks) == 1 and chunks[0][0] == TYPE_DATA
    assert chunks[0][1][8:] == bytes(64 * 1024) + pattern + bytes(64 * 1024)
    c.close()


def test_simple_replies_without_structured(servers, tmp_dir):
    srv = file_server(servers, tmp_dir)
    c = RawClient(srv.sock)
    size, flags = c.connect(structured=False)
    assert not flags & 0x80          # no SEND_DF without structured replies
    assert c.simple(CMD_WRITE, 0, 4, data=b"abcd") == 0
    err, data = c.read(0, 4)
    assert (err, data) == (0, b"abcd")
    # BLOCK_STATUS needs structured replies and a context.
    assert c.simple(CMD_BLOCK_STATUS, 0, 4096) == EINVAL
    c.close()


def test_bounds_and_bad_requests(servers, tmp_dir):
    srv = file_server(servers, tmp_dir, size=MiB)
    c = RawClient(srv.sock)
    c.connect(meta=["base:allocation"])
    assert c.read(MiB - 512, 1024)[0] == EINVAL
    assert c.read(2 ** 64 - 512, 1024)[0] == EINVAL
    assert c.simple(CMD_WRITE, MiB - 512, 1024, data=bytes(1024)) == ENOSPC
    assert c.simple(CMD_WRITE_ZEROES, MiB, 512) == ENOSPC
    assert c.simple(CMD_TRIM, MiB - 1, 2) == EINVAL
    assert c.simple(CMD_CACHE, MiB, 1) == EINVAL
    assert c.simple(CMD_CACHE, 0, 4096) == 0
    assert c.simple(CMD_BLOCK_STATUS, MiB, 512) == EINVAL
    assert c.simple(CMD_BLOCK_STATUS, 0, 0) == EINVAL
    assert c.simple(42, 0, 0) == EINVAL                 # unknown command
    assert c.simple(CMD_FLUSH, flags=0x40) == EINVAL     # unknown flag
    assert c.simple(CMD_WRITE, 0, 1, flags=FLAG_REQ_ONE,
                    data=b"x") == EINVAL                 # inapplicable flag
    assert c.read(0, 64 * MiB)[0] == EINVAL              # past the end
    # Zero-length requests do not disconnect.
    assert c.read(0, 0)[0] == 0
    assert c.simple(CMD_WRITE, 0, 0) == 0
    # FUA on every command is accepted.
    assert c.simple(CMD_WRITE, 0, 3, FLAG_FUA, b"xyz") == 0
    assert c.simple(CMD_FLUSH, flags=FLAG_FUA) == 0
    assert c.read(0, 3) == (0, b"xyz")
    # The connection survived all of that.
    c.close()


def test_options(servers, tmp_dir):
    srv = file_server(servers, tmp_dir)
    c = RawClient(srv.sock)
    c.greet()
    for opt in (OPT_EXTENDED_HEADERS, 4, 12345):
        r = c.opt_replies(opt)
        assert r[-1][0] == REP_ERR_UNSUP, opt
    # STARTTLS without tls-creds: refused by policy, as QEMU does; the
    # connection goes on in plain text.
    assert c.opt_replies(OPT_STARTTLS)[-1][0] == REP_ERR_POLICY
    assert c.opt_replies(OPT_LIST, b"x")[-1][0] == REP_ERR_INVALID
    r = c.opt_replies(OPT_LIST)
    assert [p[4:4 + struct.unpack(">I", p[:4])[0]] for t, p in r
            if t == REP_SERVER] == [b"disk0"]
    # SET before STRUCTURED_REPLY is invalid.
    assert c.opt_replies(OPT_SET_META, c.meta_data(
        "disk0", ["base:allocation"]))[-1][0] == REP_ERR_INVALID
    assert c.opt_replies(OPT_STRUCTURED_REPLY)[-1][0] == REP_ACK
    assert c.opt_replies(OPT_STRUCTURED_REPLY)[-1][0] == REP_ERR_INVALID
    # Broken framing inside an option: ERR_INVALID, and we go on.
    assert c.opt_replies(OPT_INFO, b"\x00\x00\x10\x00abc")[-1][0] == \
        REP_ERR_INVALID
    assert c.opt_replies(OPT_SET_META, struct.pack(">I", 5) + b"disk0" +
                         struct.pack(">II", 1, 999))[-1][0] == \
        REP_ERR_INVALID
    # Unknown export (the default export "" does not exist: exact names,
    # as QEMU).
    assert c.opt_replies(OPT_INFO, c.info_data("nope"))[-1][0] == \
        REP_ERR_UNKNOWN
    assert c.opt_replies(OPT_GO, c.info_data(""))[-1][0] == REP_ERR_UNKNOWN
    # INFO with NAME and BLOCK_SIZE.
    r = c.opt_replies(OPT_INFO, c.info_data("disk0", (1, 3, 2, 77)))
    infos = {struct.unpack(">H", p[:2])[0]: p[2:] for t, p in r
             if t == REP_INFO}
    assert infos[1] == b"disk0"
    assert struct.unpack(">III", infos[3]) == (1, 4096, 32 * MiB)
    assert struct.unpack(">QH", infos[0])[0] == 64 * MiB
    # ABORT gets an ACK and the server closes.
    assert c.opt_replies(OPT_ABORT)[-1][0] == REP_ACK
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(1)


def test_export_name_option(servers, tmp_dir):
    srv = file_server(servers, tmp_dir)
    c = RawClient(srv.sock)
    c.greet(cflags=1)                 # no NO_ZEROES: 124 zero bytes follow
    c.opt(OPT_EXPORT_NAME, b"disk0")
    size, flags = struct.unpack(">QH", c.recv(10))
    assert size == 64 * MiB and flags & 1
    assert c.recv(124) == bytes(124)
    c.structured = False
    assert c.simple(CMD_FLUSH) == 0
    c.close()
    # Unknown export: the server can only close.
    c = RawClient(srv.sock)
    c.greet()
    c.opt(OPT_EXPORT_NAME, b"nope")
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(1)


def test_bad_client_flags_and_garbage(servers, tmp_dir):
    srv = file_server(servers, tmp_dir)
    good = RawClient(srv.sock)
    good.connect()
    # Unknown client flag: dropped.
    c = RawClient(srv.sock)
    c.greet(cflags=0x80)
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(1)
    # Garbage instead of an option.
    c = RawClient(srv.sock)
    c.greet()
    c.s.sendall(os.urandom(64))
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(1)
    # Bad request magic in transmission.
    c = RawClient(srv.sock)
    c.connect()
    c.s.sendall(b"\xde\xad\xbe\xef" + bytes(24))
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(1)
    # Oversized option: disconnect.
    c = RawClient(srv.sock)
    c.greet()
    c.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_INFO, 1 << 30))
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(1)
    # Oversized WRITE: disconnect.
    c = RawClient(srv.sock)
    c.connect()
    c.request(CMD_WRITE, 0, 64 * MiB)
    with pytest.raises((EOFError, ConnectionResetError, BrokenPipeError)):
        c.recv(1)
    # The first client was never disturbed.
    assert good.simple(CMD_WRITE, 0, 5, data=b"hello") == 0
    assert good.read(0, 5) == (0, b"hello")
    good.close()
    assert srv.alive()


def test_disconnect_mid_request_and_random_streams(servers, tmp_dir):
    srv = file_server(servers, tmp_dir, size=4 * MiB)
    rnd = random.Random(7)
    for i in range(40):
        c = RawClient(srv.sock)
        c.connect(structured=bool(i % 2), meta=() if i % 2 == 0 else
                  ["base:allocation"])
        kind = i % 4
        if kind == 0:
            # Half a WRITE payload, then gone.
            c.request(CMD_WRITE, 0, 65536)
            c.s.sendall(bytes(1000))
        elif kind == 1:
            # Half a header.
            c.s.sendall(struct.pack(">IHH", REQ_MAGIC, 0, CMD_READ))
        elif kind == 2:
            # Many reads, never reading the replies.
            for _ in range(50):
                c.request(CMD_READ, rnd.randrange(0, 4 * MiB - 65536),
                          65536)
        else:
            # Valid header, then random bytes.
            c.request(rnd.choice([0, 1, 3, 4, 5, 6, 7, 9]),
                      rnd.randrange(0, 2 ** 64), rnd.randrange(0, 2 ** 20))
            c.s.sendall(rnd.randbytes(rnd.randrange(0, 300)))
        c.s.close()
    assert srv.alive()
    c = RawClient(srv.sock)
    c.connect()
    assert c.simple(CMD_FLUSH) == 0
    c.close()


def test_flood_while_other_client_writes(servers, tmp_dir):
    """A client flooding requests cannot disturb another client's data."""
    srv = file_server(servers, tmp_dir, size=16 * MiB)
    stop = threading.Event()
    errors = []
    flood_socks = []

    def flood():
        try:
            c = RawClient(srv.sock)
            c.connect()
            c.s.settimeout(60)
            flood_socks.append(c.s)
            sent = 0
            while not stop.is_set() and sent < 20000:
                # Replies left unread for a long time: the server's flow
                # control must push back on this client only.
                c.request(CMD_READ, 8 * MiB, 65536)
                c.request(CMD_WRITE, 12 * MiB, 4096, 0, b"\xee" * 4096)
                sent += 2
                if sent % 2000 == 0:
                    for _ in range(2000):
                        c.reply()
            c.s.close()
        except (OSError, EOFError) as e:
            if not stop.is_set():
                errors.append(e)

    floods = [threading.Thread(target=flood) for _ in range(3)]
    for t in floods:
        t.start()
    c = RawClient(srv.sock)
    c.connect()
    rnd = random.Random(3)
    model = bytearray(8 * MiB)
    try:
        for i in range(300):
            off = rnd.randrange(0, 8 * MiB - 8192)
            n = rnd.randrange(1, 8192)
            data = rnd.randbytes(n)
            assert c.simple(CMD_WRITE, off, n, data=data) == 0
            model[off:off + n] = data
            if i % 10 == 0:
                roff = rnd.randrange(0, 8 * MiB - 65536)
                err, got = c.read(roff, 65536)
                assert err == 0 and got == bytes(model[roff:roff + 65536])
        err, got = c.read(0, 8 * MiB)
        assert err == 0 and got == bytes(model)
    finally:
        stop.set()
        for fs in flood_socks:
            try:
                fs.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in floods:
            t.join(timeout=40)
    c.close()
    assert not errors, errors
    assert srv.alive()


def test_many_in_flight_out_of_order(servers, tmp_dir):
    srv = file_server(servers, tmp_dir, size=8 * MiB)
    c = RawClient(srv.sock)
    c.connect()
    cookies = {}
    for i in range(64):
        data = bytes([i]) * 4096
        cookies[c.request(CMD_WRITE, i * 65536, 4096, 0, data)] = i
    seen = set()
    for _ in range(64):
        cookie, err, _ = c.reply()
        assert err == 0
        seen.add(cookie)
    assert seen == set(cookies)
    rc = {}
    for i in range(64):
        rc[c.request(CMD_READ, i * 65536, 4096)] = i
    for _ in range(64):
        cookie, err, chunks = c.reply()
        assert err == 0
        i = rc.pop(cookie)
        assert chunks[0][1][8:] == bytes([i]) * 4096
    c.close()


# ---- Export lifetime ---------------------------------------------------------


def test_export_del_safe_and_hard(servers, tmp_dir):
    srv = file_server(servers, tmp_dir)
    q = srv.cmd("query-block-exports")
    assert q == {"return": [{"type": "nbd", "id": "e0", "node-name": "disk0",
                             "shutting-down": False}]}
    c = RawClient(srv.sock)
    c.connect()
    r = srv.cmd("block-export-del", id="e0")
    assert r["error"]["desc"] == "export 'e0' still in use"
    assert c.simple(CMD_FLUSH) == 0
    r = srv.cmd("block-export-del", id="e0", mode="hard")
    assert r == {"return": {}}
    assert {"event": "BLOCK_EXPORT_DELETED", "data": {"id": "e0"}} in \
        srv.events
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(1)
    assert srv.cmd("query-block-exports") == {"return": []}
    r = srv.cmd("block-export-del", id="e0")
    assert r["error"]["desc"] == "Export 'e0' is not found"
    # Re-add, delete without clients (safe).
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e0",
                                       "node-name": "disk0"})
    assert r == {"return": {}}
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e0",
                                       "node-name": "disk0", "name": "x"})
    assert r["error"]["desc"] == "Block export id 'e0' is already in use"
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e1",
                                       "node-name": "disk0"})
    assert r["error"]["desc"] == \
        "NBD server already has export named 'disk0'"
    assert srv.cmd("block-export-del", id="e0") == {"return": {}}


def test_hard_delete_under_load(servers, tmp_dir):
    """Deleting an export while clients hammer it: no crash, no hang."""
    need("qemu-io")
    srv = file_server(servers, tmp_dir, size=16 * MiB)
    procs = [subprocess.Popen(
        ["qemu-io", "-f", "raw", "-c",
         "aio_write -P 1 0 1M", "-c", "aio_write -P 2 1M 1M",
         "-c", "aio_flush"] * 30 + [srv.uri],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(4)]
    time.sleep(0.3)
    r = srv.cmd("block-export-del", id="e0", mode="hard")
    assert r == {"return": {}}
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert srv.alive()
    assert srv.cmd("query-block-exports") == {"return": []}


def test_server_stop_and_restart(servers, tmp_dir):
    srv = file_server(servers, tmp_dir)
    c = RawClient(srv.sock)
    c.connect()
    assert srv.cmd("nbd-server-stop") == {"return": {}}
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv(1)
    # As QEMU, stopping the server removes its exports.
    assert srv.cmd("query-block-exports") == {"return": []}
    r = srv.cmd("nbd-server-stop")
    assert r["error"]["desc"] == "NBD server not running"
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e0",
                                       "node-name": "disk0"})
    assert r["error"]["desc"] == "NBD server not running"
    port = free_port()
    r = srv.cmd("nbd-server-start", addr={"type": "inet",
                                          "host": "127.0.0.1",
                                          "port": str(port)})
    assert r == {"return": {}}
    r = srv.cmd("nbd-server-start", addr={"type": "inet",
                                          "host": "127.0.0.1",
                                          "port": port + 1})
    assert r["error"]["desc"] == "NBD server already running"
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e0",
                                       "node-name": "disk0",
                                       "writable": True})
    assert r == {"return": {}}
    c = RawClient(port=port)
    c.connect()
    assert c.simple(CMD_WRITE, 0, 2, data=b"ok") == 0
    c.close()
    assert srv.stop() == 0


def test_max_connections(servers, tmp_dir):
    """At the limit the server stops accepting, as QEMU does: the next
    client waits in the listen backlog and is served when a slot frees."""
    srv = file_server(servers, tmp_dir, extra=["-c", "1"])
    c = RawClient(srv.sock)
    size, flags = c.connect()
    assert not flags & 0x100        # no CAN_MULTI_CONN with one connection
    c2 = RawClient(srv.sock)
    c2.s.settimeout(0.5)
    with pytest.raises(TimeoutError):
        c2.recv(1)
    c.close()
    c2.s.settimeout(10)
    c2.connect()
    assert c2.simple(CMD_READ, 0, 512) == 0
    c2.close()


def test_export_add_errors(servers, tmp_dir):
    srv = file_server(servers, tmp_dir)
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e1",
                                       "node-name": "nope", "name": "q"})
    assert r["error"]["desc"] == "Cannot find device='' nor node-name='nope'"
    r = srv.cmd("block-export-add", **{"type": "fuse", "id": "e1",
                                       "node-name": "disk0", "name": "q"})
    assert "type" in r["error"]["desc"]
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e1",
                                       "node-name": "disk0", "name": "q",
                                       "bogus": 1})
    assert r["error"]["desc"] == "Parameter 'bogus' is unexpected"
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e1",
                                       "node-name": "disk0",
                                       "name": "n" * 5000})
    assert "too long" in r["error"]["desc"]


# ---- Differential: the same qcow2 chain served by qemu-nbd --------------------


def test_maps_match_qemu_nbd(servers, tmp_dir):
    """base:allocation and qemu:allocation-depth of a qcow2 backing chain
    (data, zero clusters, unallocated areas in both layers) are the same
    from our server as from qemu-nbd -A."""
    for prog in ("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"):
        need(prog)
    base = os.path.join(tmp_dir, "base.qcow2")
    top = os.path.join(tmp_dir, "top.qcow2")
    assert run(["qemu-img", "create", "-q", "-f", "qcow2", base,
                "4M"]).returncode == 0
    assert run(["qemu-io", "-c", "write -P 1 0 1M", "-c",
                "write -z 2M 512k", base]).returncode == 0
    assert run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base,
                "-F", "qcow2", top]).returncode == 0
    assert run(["qemu-io", "-c", "write -P 2 512k 1M", "-c",
                "write -z 3M 64k", "-c", "discard 3584k 64k",
                top]).returncode == 0

    def maps(uri):
        out = []
        for ctx in ("base:allocation", "qemu:allocation-depth"):
            r = run(["nbdinfo", "--map=" + ctx, "--json", uri])
            assert r.returncode == 0, r.stderr
            out.append(json.loads(r.stdout))
        return out

    sock = os.path.join(tmp_dir, "ours.sock")
    srv = servers(["-b", "driver=qcow2,node-name=top,file.driver=file,"
                   "file.filename=" + top,
                   "-n", "unix:" + sock,
                   "-e", "type=nbd,id=e0,node-name=top,allocation-depth=on"])
    ours = maps("nbd+unix:///top?socket=" + sock)
    srv.stop()

    qsock = os.path.join(tmp_dir, "qemu.sock")
    q = subprocess.Popen(["qemu-nbd", "-r", "-t", "-A", "-f", "qcow2",
                          "-k", qsock, "-x", "top", top],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.time() + 10
        while not os.path.exists(qsock) and time.time() < end:
            time.sleep(0.05)
        theirs = maps("nbd+unix:///top?socket=" + qsock)
    finally:
        q.kill()
        q.wait(timeout=10)
    assert ours == theirs


def test_qemu_img_convert_and_compare(servers, tmp_dir):
    """qemu-img converts a sparse image into the export and back out, and
    compares the results with the source."""
    need("qemu-img")
    need("qemu-io")
    src = os.path.join(tmp_dir, "src.qcow2")
    assert run(["qemu-img", "create", "-q", "-f", "qcow2", src,
                "16M"]).returncode == 0
    assert run(["qemu-io", "-c", "write -P 3 0 1M", "-c",
                "write -P 4 7M 3M", "-c", "write -z 12M 1M",
                src]).returncode == 0
    srv = file_server(servers, tmp_dir, size=16 * MiB)
    r = run(["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", src,
             srv.uri])
    assert r.returncode == 0, r.stderr
    r = run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", src,
             srv.uri])
    assert r.returncode == 0, r.stdout + r.stderr
    out = os.path.join(tmp_dir, "out.qcow2")
    r = run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", srv.uri,
             out])
    assert r.returncode == 0, r.stderr
    r = run(["qemu-img", "compare", src, out])
    assert r.returncode == 0, r.stdout + r.stderr


def test_read_only_node_not_writable(servers, tmp_dir):
    img = make_image(os.path.join(tmp_dir, "ro.raw"), MiB)
    sock = os.path.join(tmp_dir, "ro.sock")
    srv = servers(["-b", "driver=file,node-name=ro,read-only=on,filename="
                   + img, "-n", "unix:" + sock])
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e0",
                                       "node-name": "ro", "writable": True})
    assert r["error"]["desc"] == "Cannot export read-only node as writable"
    r = srv.cmd("block-export-add", **{"type": "nbd", "id": "e0",
                                       "node-name": "ro"})
    assert r == {"return": {}}
