#!/bin/sh
# Seed inputs for fuzz-nbd's TLS modes: a real TLS ClientHello (made with
# Python's ssl module, no network) after STARTTLS (mode 4), and plain
# options sent to a TLS-required server (mode 3).
# Usage: seeds-fuzz-nbd.sh CORPUS_DIR
set -eu
mkdir -p "$1"
python3 - "$1" <<'PY'
import os, ssl, struct, sys

out = sys.argv[1]
IHAVEOPT = 0x49484156454F5054

def opt(num, data=b""):
    return struct.pack(">QII", IHAVEOPT, num, len(data)) + data

def client_hello(**kw):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = ctx.wrap_bio(inc, outg, server_hostname="localhost")
    try:
        s.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outg.read()

seeds = {
    "tls13-hello": b"\x04" + client_hello(),
    "tls12-hello": b"\x04" + client_hello(
        maximum_version=ssl.TLSVersion.TLSv1_2),
    "before-tls": b"\x03" + struct.pack(">I", 3) + opt(3) + opt(8) +
                  opt(7, struct.pack(">I", 4) + b"disk\x00\x00") + opt(5) +
                  client_hello(),
    "abort": b"\x03" + struct.pack(">I", 3) + opt(2),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
PY
