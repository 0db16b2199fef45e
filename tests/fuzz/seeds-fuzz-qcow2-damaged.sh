#!/bin/sh
# SPDX-License-Identifier: MIT
# Seeds for fuzz-qcow2-damaged (scripts/run-fuzz.sh runs this): the clean
# images of seeds-fuzz-qcow2.sh, and copies of two of them with one kind
# of damage each that the overlap check must catch (binary images are never
# committed).  Usage: seeds-fuzz-qcow2-damaged.sh DIR
set -eu
dir=$1
here=$(cd "$(dirname "$0")" && pwd)
"$here/seeds-fuzz-qcow2.sh" "$dir"
# Damages, as in tests/func/test_qcow2.py (DAMAGES): tables named as other
# tables, refcounts of 0 on tables (the bitmap directory too), guest data
# mapped onto a table.
python3 - "$dir" <<'PY'
import os, struct, sys
d = sys.argv[1]
COPIED = 1 << 63
MASK = 0x00fffffffffffe00
def patch(src, name, fn):
    data = bytearray(open(os.path.join(d, src), "rb").read())
    rd = lambda off: struct.unpack(">Q", data[off:off + 8])[0]
    def wr(off, v):
        data[off:off + 8] = struct.pack(">Q", v)
    h = {"l1": rd(40), "rt": rd(48),
         "cs": 1 << struct.unpack(">I", data[20:24])[0]}
    h["rb"] = rd(h["rt"])
    h["l2"] = rd(h["l1"]) & MASK
    def refcount0(off):      # 16-bit refcounts
        pos = h["rb"] + 2 * (off // h["cs"])
        data[pos:pos + 2] = b"\0\0"
    fn(h, rd, wr, refcount0)
    open(os.path.join(d, "damaged-%s-%s" % (name, src)), "wb").write(data)
for src in ("seed-1.qcow2", "seed-2.qcow2"):   # 16-bit refcounts
    patch(src, "l1-reftable", lambda h, rd, wr, rc: wr(h["l1"], h["rt"] | COPIED))
    patch(src, "reftable-l2", lambda h, rd, wr, rc: wr(h["rt"] + 8, h["l2"]))
    patch(src, "l2-rc0", lambda h, rd, wr, rc: rc(h["l2"]))
    patch(src, "l1-rc0", lambda h, rd, wr, rc: rc(h["l1"]))
    patch(src, "rt-rc0", lambda h, rd, wr, rc: rc(h["rt"]))
    patch(src, "rb-rc0", lambda h, rd, wr, rc: rc(h["rb"]))
    patch(src, "data-rt", lambda h, rd, wr, rc: wr(h["l2"] + 8, h["rt"] | COPIED))
    patch(src, "data-l1", lambda h, rd, wr, rc: wr(h["l2"] + 8, h["l1"] | COPIED))
def bitmap_dir(h, rd):
    off = rd(100) >> 32                 # header_length
    while rd(off) >> 32:
        if rd(off) >> 32 == 0x23852875:
            return rd(off + 24)
        off += 8 + ((rd(off) & 0xffffffff) + 7) // 8 * 8
    return 0
patch("seed-bitmaps.qcow2", "bm-dir-rc0",
      lambda h, rd, wr, rc: rc(bitmap_dir(h, rd)))
PY
