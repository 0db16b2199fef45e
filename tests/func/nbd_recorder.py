# SPDX-License-Identifier: MIT
"""A recording NBD disk for power-loss tests.

Recorder serves one in-memory disk over NBD (fixed newstyle, simple
replies, no structured replies) on a unix socket and records every
request that changes it, and every flush, in arrival order.  crash_image()
then rebuilds what a disk could hold had the power failed after request
number n: everything up to the last flush before n, and of the changes
after it a random subset, in 4 KiB pieces, as a disk with volatile cache
may persist them (the qcow2 tests' power-loss model).

The recorder keeps the data of every write: fine for the small images
these tests use.
"""
import os
import random
import socket
import struct
import threading

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454f5054
REPLY_MAGIC = 0x3e889045565a9
REQ_MAGIC = 0x25609513
SIMPLE_REPLY = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_SEND_TRIM = 1 << 5
TFLAG_SEND_WRITE_ZEROES = 1 << 6

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_GO = 7
OPT_INFO = 6
REP_ACK = 1
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_WRITE_ZEROES = 6
CMD_FLAG_FUA = 1

PIECE = 4096


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


class Recorder:
    """An NBD disk on unix socket path, initialised with data (bytes).
    ops: the log, a list of ("w", offset, bytes, fua) and ("f",)."""

    def __init__(self, path, data):
        self.path = path
        self.base = bytes(data)
        self.disk = bytearray(data)
        self.ops = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self):
        self.stopping = True
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # ---- Serving -------------------------------------------------------
    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _export_info(self):
        flags = (TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA |
                 TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES)
        return struct.pack(">QH", len(self.disk), flags)

    def _reply_opt(self, conn, opt, rep, data=b""):
        conn.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, rep, len(data)) +
                     data)

    def _handshake(self, conn):
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT,
                                 FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        cflags = struct.unpack(">I", _recv_exact(conn, 4))[0]
        while True:
            magic, opt, ln = struct.unpack(">QII", _recv_exact(conn, 16))
            assert magic == IHAVEOPT
            _recv_exact(conn, ln)
            if opt == OPT_EXPORT_NAME:
                conn.sendall(self._export_info() +
                             (b"" if cflags & FLAG_NO_ZEROES else
                              b"\0" * 124))
                return True
            if opt == OPT_ABORT:
                self._reply_opt(conn, opt, REP_ACK)
                return False
            if opt in (OPT_GO, OPT_INFO):
                self._reply_opt(conn, opt, REP_INFO,
                                struct.pack(">H", 0) + self._export_info())
                self._reply_opt(conn, opt, REP_ACK)
                if opt == OPT_GO:
                    return True
                continue
            self._reply_opt(conn, opt, REP_ERR_UNSUP)

    def _serve(self, conn):
        try:
            if not self._handshake(conn):
                return
            while True:
                magic, flags, cmd, handle, off, ln = struct.unpack(
                    ">IHHQQI", _recv_exact(conn, 28))
                assert magic == REQ_MAGIC
                data = b""
                if cmd == CMD_WRITE:
                    data = _recv_exact(conn, ln)
                if cmd == CMD_DISC:
                    return
                reply = self._do(cmd, flags, off, ln, data)
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY, 0, handle) +
                             reply)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def _do(self, cmd, flags, off, ln, data):
        with self.lock:
            if cmd == CMD_READ:
                return bytes(self.disk[off:off + ln])
            if cmd in (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES):
                if cmd != CMD_WRITE:
                    data = bytes(ln)     # trim reads back as zeroes here
                self.disk[off:off + ln] = data
                self.ops.append(("w", off, bytes(data),
                                 bool(flags & CMD_FLAG_FUA)))
            elif cmd == CMD_FLUSH:
                self.ops.append(("f",))
            return b""

    # ---- Crash images ----------------------------------------------------
    def flush_points(self):
        return [i for i, op in enumerate(self.ops) if op[0] == "f"]

    def crash_images(self, points, seed):
        """Yield (n, image bytes) for each n in points (sorted): the disk
        after a power loss right before request n."""
        rnd = random.Random(seed)
        # Images end where the last byte ever written or held ends.
        end = max([len(self.base.rstrip(b"\0"))] +
                  [op[1] + len(op[2]) for op in self.ops if op[0] == "w"])
        durable = bytearray(self.base[:end])
        done = 0            # ops applied to durable
        last_flush = 0      # ops before this index are durable
        for n in sorted(points):
            for i in range(done, n):
                if self.ops[i][0] == "f":
                    last_flush = i + 1
            for i in range(done, last_flush):
                _apply(durable, self.ops[i], None)
            done = max(done, last_flush)
            img = bytearray(durable)
            for i in range(last_flush, n):
                _apply(img, self.ops[i], rnd)
            yield n, bytes(img)


def _apply(img, op, rnd):
    """Apply op to img: whole (rnd None or FUA), else each 4 KiB piece of
    it with probability 1/2."""
    if op[0] != "w":
        return
    _, off, data, fua = op
    end = off + len(data)
    if len(img) < end:
        img.extend(bytes(end - len(img)))
    if rnd is None or fua:
        img[off:end] = data
        return
    pos = off
    while pos < end:
        nxt = min(end, (pos // PIECE + 1) * PIECE)
        if rnd.random() < 0.5:
            img[pos:nxt] = data[pos - off:nxt - off]
        pos = nxt
