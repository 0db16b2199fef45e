# SPDX-License-Identifier: MIT
"""Power-loss testing: crash images rebuilt from a blklog record.

A SIGKILL keeps the page cache, so it never shows a metadata write that
reached the disk before the data it points to.  Here the images sit on
"blklog" nodes (block/filter/blklog.c), which record every write,
write-zeroes, discard, flush and truncate when it starts and when it is
done.  From the record and a copy of the files taken before it began, this
module rebuilds what a disk could hold had the power failed after any
record (docs/qcow2.md, "Power-loss model"):

  - a request is *durable* once a flush that started after it was done has
    completed itself: it is in every crash image;
  - every other request that had started may have reached the disk in any
    part: each of its 4 KiB pieces is in a crash image or not, at random
    (a discard's piece may also read as the old data); a truncate is
    all or nothing.

The workload side (class Guest) remembers, in log positions (the log's
size when it happened), when each guest write was issued and when a guest
flush acknowledged it.  Check() then asks of every crash image that
`qemu-img check` finds no corruption (leaks are fine) and that every guest
sector holds either its last durable version or something the guest wrote
there after it (never older data, never data from elsewhere).

Reusable: a new workload needs images on blklog nodes (Recorder), a Guest
that tracks its writes, and crash_points()/Check at the end; see
test_powerloss.py.
"""
import bisect
import hashlib
import os
import random
import shutil
import struct
import subprocess
import zlib

REC_HEADER = 40
OPEN, WRITE, ZERO, DISCARD, FLUSH, TRUNCATE, DONE = range(1, 8)
PIECE = 4096
SECTOR = 512


class Op:
    """One request of one disk, as the log tells it."""
    __slots__ = ("kind", "disk", "id", "offset", "bytes", "data", "start",
                 "done", "ret")

    def __init__(self, kind, disk, rid, offset, nbytes, data, start):
        self.kind = kind
        self.disk = disk
        self.id = rid
        self.offset = offset
        self.bytes = nbytes
        self.data = data
        self.start = start      # record index of the request
        self.done = None        # record index of its DONE
        self.ret = None


class Log:
    """A parsed blklog record: records[i] = (kind, op, byte position)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            raw = f.read()
        self.records = []
        self.positions = []
        self.opened = {}        # disk -> length at its first OPEN
        outstanding = {}
        pos = 0
        while pos + REC_HEADER <= len(raw):
            magic, kind, nlen, _flags, ret, _r, rid, off, nbytes = \
                struct.unpack_from("<4sBBHiIQQQ", raw, pos)
            if magic != b"LSBL":
                raise ValueError("bad record at %d" % pos)
            name = raw[pos + REC_HEADER:pos + REC_HEADER + nlen].decode()
            end = pos + REC_HEADER + nlen
            data = None
            if kind == WRITE:
                data = raw[end:end + nbytes]
                end += nbytes
            if end > len(raw):
                break           # a record cut short: the log ends here
            index = len(self.records)
            if kind == OPEN:
                self.opened.setdefault(name, off)
                op = None
            elif kind == DONE:
                op = outstanding.pop((name, rid))
                op.done = index
                op.ret = ret
            else:
                op = Op(kind, name, rid, off, nbytes, data, index)
                outstanding[(name, rid)] = op
            self.records.append((kind, op))
            self.positions.append(pos)
            pos = end
        self.end = pos

    def index_at(self, position):
        """The number of records that began before log position."""
        return bisect.bisect_left(self.positions, position)

    def position_of(self, index):
        """The log position where record index begins (or the end)."""
        return self.positions[index] if index < len(self.positions) \
            else self.end


class Disk:
    """A disk's content as a growable bytearray."""

    def __init__(self, content):
        self.b = bytearray(content)

    def copy(self):
        d = Disk(b"")
        d.b = bytearray(self.b)
        return d

    def _grow(self, end):
        if end > len(self.b):
            self.b.extend(bytes(end - len(self.b)))

    def apply(self, op, lo=None, hi=None, keep_discard=False):
        """Apply op, or its part [lo, hi)."""
        if op.kind == TRUNCATE:
            if op.offset < len(self.b):
                del self.b[op.offset:]
            else:
                self._grow(op.offset)
            return
        lo = op.offset if lo is None else lo
        hi = op.offset + op.bytes if hi is None else hi
        if op.kind == WRITE:
            self._grow(hi)
            self.b[lo:hi] = op.data[lo - op.offset:hi - op.offset]
        elif op.kind == ZERO or (op.kind == DISCARD and not keep_discard):
            if op.kind == DISCARD:
                hi = min(hi, len(self.b))   # discard never grows a file
                if lo >= hi:
                    return
            self._grow(hi)
            self.b[lo:hi] = bytes(hi - lo)

    def apply_random(self, op, rng, p):
        """Each 4 KiB piece of op reached the disk with probability p."""
        if op.kind == TRUNCATE:
            if rng.random() < p:
                self.apply(op)
            return
        lo = op.offset
        end = op.offset + op.bytes
        while lo < end:
            hi = min((lo // PIECE + 1) * PIECE, end)
            if rng.random() < p:
                self.apply(op, lo, hi, keep_discard=rng.random() < 0.5)
            lo = hi


def crash_states(log, bases, points, seed):
    """Yield (index, {disk: bytes}) for each record index in points: the
    disks had the power failed just before record index.  A request that
    failed counts as done: it may have written anything in its range."""
    rng = random.Random(seed)
    durable = {d: Disk(b) for d, b in bases.items()}
    done_order = []             # completed, not yet durable, in order
    inflight = {}               # started, not done
    flush_cover = {}            # flush op -> ops done when it started
    points = sorted(set(points))
    pi = 0
    for i, (kind, op) in enumerate(log.records + [(None, None)]):
        while pi < len(points) and points[pi] == i:
            # From nothing but the durable state to everything started.
            p = rng.choice((0.0, 0.25, 0.5, 0.75, 1.0))
            disks = {d: s.copy() for d, s in durable.items()}
            for o in done_order + sorted(inflight.values(),
                                         key=lambda o: o.start):
                if o.kind != FLUSH and o.disk in disks:
                    disks[o.disk].apply_random(o, rng, p)
            yield i, {d: bytes(s.b) for d, s in disks.items()}
            pi += 1
        if pi >= len(points) or kind is None:
            break
        if kind in (WRITE, ZERO, DISCARD, TRUNCATE, FLUSH):
            inflight[(op.disk, op.id)] = op
            if kind == FLUSH:
                flush_cover[op] = [o for o in done_order
                                   if o.disk == op.disk]
        elif kind == DONE:
            del inflight[(op.disk, op.id)]
            if op.kind != FLUSH:
                done_order.append(op)
                continue
            covered = flush_cover.pop(op)
            if op.ret != 0:
                continue
            # Still pending: an earlier flush may have covered some.
            pending = set(id(o) for o in done_order)
            for o in covered:
                if id(o) in pending and op.disk in durable:
                    durable[op.disk].apply(o,
                                           keep_discard=rng.random() < 0.5)
            covered = set(id(o) for o in covered)
            done_order = [o for o in done_order if id(o) not in covered]


def choose_points(log, n, seed, marks=()):
    """About n record indices: half where ordering bugs show (just before
    a flush starts: what was written since the last one is all in doubt;
    just before and after one ends), the rest at random; marks (indices)
    always."""
    rng = random.Random(seed)
    total = len(log.records) + 1
    chosen = set(m for m in marks if 0 <= m < total)
    near = []
    for i, (k, op) in enumerate(log.records):
        if k == FLUSH:
            near.append(i)
        elif k == DONE and op.kind == FLUSH:
            near += [i, i + 1]
    rng.shuffle(near)
    chosen.update(x for x in near[:n // 2] if x < total)
    while len(chosen) < min(n, total):
        chosen.add(rng.randrange(total))
    return sorted(chosen)


# ---- The guest's view --------------------------------------------------

MAGIC = 0x6c6f636b73746570    # "lockstep"


def sector_data(wid, sector):
    """The content guest write wid puts into sector: unique, so that a
    crash image tells which write (if any) a sector came from."""
    head = struct.pack("<QQQ", MAGIC, wid, sector)
    return head + bytes([(wid * 7 + sector) & 0xff]) * (SECTOR - len(head))


def write_data(wid, offset, nbytes):
    assert offset % SECTOR == 0 and nbytes % SECTOR == 0
    return b"".join(sector_data(wid, offset // SECTOR + i)
                    for i in range(nbytes // SECTOR))


class GuestOp:
    __slots__ = ("wid", "offset", "bytes", "zero", "issued", "acked",
                 "durable")

    def __init__(self, wid, offset, nbytes, zero, issued):
        self.wid = wid
        self.offset = offset
        self.bytes = nbytes
        self.zero = zero
        self.issued = issued        # log position before it was sent
        self.acked = None           # log position after its reply
        self.durable = None         # log position after a flush covered it


class Guest:
    """What a guest wrote and when, in log positions (see module doc).
    initial: the disk's content before the first guest write (durable)."""

    def __init__(self, log_path, size, initial=None):
        self.log_path = log_path
        self.size = size
        self.initial = bytes(initial) if initial is not None \
            else bytes(size)
        self.ops = []
        self.next_wid = 1

    def position(self):
        try:
            return os.stat(self.log_path).st_size
        except FileNotFoundError:
            return 0

    def issue(self, offset, nbytes, zero=False):
        """Before sending a write (zero=False: returns its data) or a
        write-zeroes/discard (zero=True)."""
        op = GuestOp(self.next_wid, offset, nbytes, zero, self.position())
        self.next_wid += 1
        self.ops.append(op)
        data = None if zero else write_data(op.wid, offset, nbytes)
        return op, data

    def ack(self, op):
        op.acked = self.position()

    def flush_start(self):
        """Before sending a flush: what it will make durable."""
        return [o for o in self.ops if o.acked is not None and
                o.durable is None]

    def flush_done(self, covered):
        pos = self.position()
        for o in covered:
            o.durable = pos

    def all_durable(self):
        """Everything acked so far is durable from here on (the writer
        closed its images, which flushes)."""
        self.flush_done(self.flush_start())

    def expected(self, pos):
        """(durable content, {sector: [other allowed contents]}) of a crash
        at log position pos."""
        img = bytearray(self.initial)
        maybe = {}
        for o in self.ops:
            if o.durable is not None and o.durable <= pos:
                img[o.offset:o.offset + o.bytes] = bytes(o.bytes) if o.zero \
                    else write_data(o.wid, o.offset, o.bytes)
                for s in range(o.offset // SECTOR,
                               (o.offset + o.bytes) // SECTOR):
                    maybe.pop(s, None)
            elif o.issued < pos:
                for s in range(o.offset // SECTOR,
                               (o.offset + o.bytes) // SECTOR):
                    maybe.setdefault(s, []).append(
                        bytes(SECTOR) if o.zero else sector_data(o.wid, s))
        return img, maybe

    def verify(self, actual, pos):
        """None, or a description of the first bad sector."""
        img, maybe = self.expected(pos)
        if len(actual) < self.size:
            return "the disk reads %d bytes, not %d" % (len(actual),
                                                        self.size)
        chunk = 64 * 1024
        for c in range(0, self.size, chunk):
            if actual[c:c + chunk] == img[c:c + chunk]:
                continue
            for s in range(c // SECTOR, min(c + chunk, self.size) // SECTOR):
                got = actual[s * SECTOR:(s + 1) * SECTOR]
                if got == img[s * SECTOR:(s + 1) * SECTOR] or \
                        got in maybe.get(s, ()):
                    continue
                return "sector %d: %s, expected %s%s" % (
                    s, describe(got), describe(img[s * SECTOR:
                                                   (s + 1) * SECTOR]),
                    "" if s not in maybe else
                    " or one of %s" % [describe(m) for m in maybe[s]])
        return None


def describe(sector):
    if not any(sector):
        return "zeroes"
    magic, wid, s = struct.unpack_from("<QQQ", sector)
    if magic == MAGIC:
        return "write %d's data for sector %d" % (wid, s)
    return "foreign bytes %s" % sector[:16].hex()


# ---- Checking crash images ---------------------------------------------

def qemu_img_check(path):
    """qemu-img check: 0 clean, 3 leaks only; anything else is a fail."""
    r = subprocess.run(["qemu-img", "check", "-q", path],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


L1E_OFFSET = 0x00fffffffffffe00
COMPRESSED = 1 << 62


def snapshot_l1(img, snap, size):
    """(L1 offset, L1 size, disk size) of internal snapshot number snap
    (0: the first in the snapshot table)."""
    nb, off = struct.unpack_from(">IQ", img, 60)
    assert snap < nb, "no snapshot %d of %d" % (snap, nb)
    for i in range(snap + 1):
        (l1_off, l1_size, id_len, name_len, _s, _ns, _vm, _vms,
         extra) = struct.unpack_from(">QIHHIIQII", img, off)
        if i == snap:
            if extra >= 16:
                size = struct.unpack_from(">Q", img, off + 40 + 8)[0]
            return l1_off, l1_size, size
        off += 40 + extra + id_len + name_len
        off = (off + 7) & ~7


def read_qcow2(path, backing=True, snap=None):
    """The guest's view of a qcow2 image (and, with backing, its backing
    chain, relative names from the image's directory), read here in Python
    from the qcow2 specification: standard and extended L2 entries, zero
    clusters, compressed clusters.  snap: the view of that internal
    snapshot (its index in the table) instead of the active one.  Much
    faster than a qemu-img process per crash image, and independent of the
    driver under test."""
    with open(path, "rb") as f:
        img = f.read()
    (magic, version, bf_off, bf_size, cbits, size, _crypt, l1_size,
     l1_off) = struct.unpack_from(">IIQIIQIIQ", img, 0)
    assert magic == 0x514649fb, path
    if snap is not None:
        l1_off, l1_size, size = snapshot_l1(img, snap, size)
    incompat = struct.unpack_from(">Q", img, 72)[0] if version >= 3 else 0
    ext = bool(incompat & 0x10)
    cs = 1 << cbits
    esz = 16 if ext else 8
    per_l2 = cs // esz
    if backing and bf_off:
        name = img[bf_off:bf_off + bf_size].decode()
        bpath = os.path.join(os.path.dirname(path), name)
        out = bytearray(read_qcow2(bpath)[:size])
        out.extend(bytes(size - len(out)))
    else:
        out = bytearray(size)

    def host(off, n):
        b = img[off:off + n]
        return b + bytes(n - len(b))

    for gc in range((size + cs - 1) // cs):
        idx = gc // per_l2
        if idx >= l1_size:
            break
        l2 = struct.unpack_from(">Q", img, l1_off + idx * 8)[0] & L1E_OFFSET
        if not l2:
            continue
        e = struct.unpack_from(">Q", host(l2 + (gc % per_l2) * esz, 8))[0]
        g = gc * cs
        n = min(cs, size - g)
        if e & COMPRESSED:
            x = 62 - (cbits - 8)
            off = e & ((1 << x) - 1)
            sectors = ((e >> x) & ((1 << (cbits - 8)) - 1)) + 1
            raw = host(off, sectors * 512 - (off & 511))
            out[g:g + n] = zlib.decompressobj(-15).decompress(raw)[:cs][:n]
            continue
        off = e & L1E_OFFSET
        if not ext:
            if e & 1:
                out[g:g + n] = bytes(n)
            elif off:
                out[g:g + n] = host(off, n)
            continue
        bitmap = struct.unpack_from(">Q", host(l2 + (gc % per_l2) * esz + 8,
                                               8))[0]
        sub = cs // 32
        for sc in range(32):
            a, b = g + sc * sub, min(g + (sc + 1) * sub, size)
            if a >= b:
                break
            if bitmap >> (32 + sc) & 1:
                out[a:b] = bytes(b - a)
            elif bitmap >> sc & 1:
                out[a:b] = host(off + sc * sub, b - a)
    return bytes(out)


class Check:
    """Run crash images through qemu-img and the guest model.

    files: {disk name: file name}; the crash images are written into
    work_dir under the same file names, so relative backing names work.
    view(pos) -> what to read and check at log position pos: (image, model)
    or a list of them, where image is a file name in work_dir (with
    ":alone", without its backing file; with ":snap", its first internal
    snapshot), and model has verify(data, pos) (a Guest); None: only
    qemu-img check."""

    def __init__(self, work_dir, files, view, unchanged=()):
        self.dir = work_dir
        self.files = files
        self.view = view
        self.checked = 0
        self.seen = set()
        os.makedirs(work_dir, exist_ok=True)
        # Files nothing writes (a read-only backing file): copied once.
        for path in unchanged:
            shutil.copyfile(path, os.path.join(work_dir,
                                               os.path.basename(path)))

    def run(self, log, bases, points, seed):
        failures = []
        for index, disks in crash_states(log, bases, points, seed):
            pos = log.position_of(index)
            for disk, content in disks.items():
                with open(os.path.join(self.dir, self.files[disk]),
                          "wb") as f:
                    f.write(content)
            for disk, name in sorted(self.files.items()):
                # A file as an earlier crash image had it (nothing new
                # reached that disk): qemu-img check has had its say.
                digest = hashlib.sha1(disks[disk]).digest()
                if digest in self.seen:
                    continue
                self.seen.add(digest)
                rc, out = qemu_img_check(os.path.join(self.dir, name))
                if rc not in (0, 3):
                    failures.append("record %d: qemu-img check %s exit %d:"
                                    " %s" % (index, name, rc, out[-2000:]))
            views = self.view(pos) or []
            if isinstance(views, tuple):
                views = [views]
            for name, guest in views:
                alone = name.endswith(":alone")
                snap = 0 if name.endswith(":snap") else None
                path = os.path.join(self.dir, name.split(":")[0])
                try:
                    data, bad = read_qcow2(path, not alone, snap), None
                except Exception as e:      # a broken image, checked above
                    data, bad = None, "unreadable: %r" % e
                bad = bad or guest.verify(data, pos)
                if bad:
                    failures.append("record %d (%s): %s" %
                                    (index, name, bad))
            self.checked += 1
            if len(failures) >= 5:
                break
        return failures


def snapshot(files, dest_dir):
    """Copy the files before recording starts: the replay's starting
    point.  Returns {disk: bytes}."""
    os.makedirs(dest_dir, exist_ok=True)
    out = {}
    for disk, path in files.items():
        shutil.copyfile(path, os.path.join(dest_dir, disk))
        with open(path, "rb") as f:
            out[disk] = f.read()
    return out


def run_ok(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r.stdout
