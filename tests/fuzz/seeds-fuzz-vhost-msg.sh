#!/bin/sh
# Seed inputs for fuzz-vhost-msg: a front-end's whole session (features,
# memory table, one queue with two requests in guest memory, kick, stop)
# and a few variations.  Usage: seeds-fuzz-vhost-msg.sh CORPUS_DIR
set -eu
mkdir -p "$1"
python3 - "$1" <<'PY'
import os, struct, sys

out = sys.argv[1]
UVA = 0x7f0000000000

def msg(req, payload=b"", flags=1):
    return struct.pack("<III", req, flags, len(payload)) + payload

def state(i, n):
    return struct.pack("<II", i, n)

def memory(num):
    """Desc table at 0, avail at 0x1000, used at 0x2000, buffers after."""
    m = bytearray(0x4000)
    descs = [(0x3000, 16, 1, 1), (0x3100, 512, 3, 2), (0x3400, 1, 2, 0),
             (0x3500, 16, 1, 4), (0x3600, 1, 2, 0)]
    for i, (a, l, f, nx) in enumerate(descs):
        struct.pack_into("<QIHH", m, 16 * i, a, l, f, nx)
    struct.pack_into("<HH", m, 0x1000, 0, 2)
    struct.pack_into("<HH", m, 0x1004, 0, 3)
    return bytes(m)

def session(num=8, features=(1 << 32) | (1 << 28) | (1 << 29) | (1 << 30),
            extra=b""):
    s = msg(1) + msg(2, struct.pack("<Q", features)) + msg(15) + \
        msg(16, struct.pack("<Q", 0x1b209)) + msg(3)
    s += msg(5, struct.pack("<II", 1, 0) +
             struct.pack("<QQQQ", 0, 1 << 20, UVA, 0))
    s += msg(31, struct.pack("<QQHH", 0, 0, 2, num) + b"\0" * 4)
    s += msg(8, state(0, num)) + msg(10, state(0, 0))
    s += msg(9, struct.pack("<IIQQQQ", 0, 0, UVA, UVA + 0x2000,
                            UVA + 0x1000, 0))
    s += msg(13, struct.pack("<Q", 0)) + msg(12, struct.pack("<Q", 0))
    s += msg(18, state(0, 1)) + extra
    s += msg(24, struct.pack("<III", 0, 16, 0) + b"\0" * 16)
    s += msg(40) + msg(11, state(0, 0))
    return s

def write(name, mem, stream):
    with open(os.path.join(out, name), "wb") as f:
        f.write(struct.pack("<H", len(mem)) + mem + stream)

write("session", memory(8), session())
write("session-noevidx", memory(8), session(features=(1 << 32) | (1 << 30)))
write("session-reset", memory(8), session(extra=msg(34) + msg(1)))
write("messages-only", b"", msg(1) + msg(15) + msg(17) + msg(36) +
      msg(24, struct.pack("<III", 0, 8, 0) + b"\0" * 8) + msg(40))
PY
