# SPDX-License-Identifier: MIT
"""Functional tests of lockstep-io, the qemu-io compatible exerciser.

They check each command's output against qemu-io's format (and, where
qemu-io is installed, against qemu-io itself on a copy of the same image),
the exit status, error messages for bad input, and, with many random
unaligned writes, zero writes and discards, that the image ends up exactly
like an in-memory model of it.
"""
import os
import random
import re
import shutil
import subprocess
import time

import pytest

from conftest import O_DIRECT, make_image, open_flags, run, supports_o_direct

MiB = 1024 * 1024
IMG_SIZE = MiB

UNITS = r"(?:bytes|KiB|MiB|GiB|TiB|PiB|EiB)"
NUM = r"\d+(?:\.\d{3})?"
# qemu-io prints a slow rate in bytes with six decimals.
RATE = r"\d+(?:\.\d{3}|\.\d{6})?"
STATS_RE = re.compile(
    r"^(%s %s), 1 ops; (?:\d\d\.\d\d sec|\d+:\d\d:\d\d\.\d\d) "
    r"\(%s %s/sec and \d+\.\d{4} ops/sec\)$" % (NUM, UNITS, RATE, UNITS))


def normalise(text):
    """Drop the timing parts of statistics lines, keep the size."""
    out = []
    for line in text.splitlines():
        m = STATS_RE.match(line)
        out.append(m.group(1) + ", 1 ops; <time>" if m else line)
    return out


def lio(lockstep_io, img, cmds, opts=("-f", "raw"), stdin=None):
    argv = [lockstep_io] + list(opts)
    for c in cmds:
        argv += ["-c", c]
    return run(argv + [img], stdin=stdin)


def image_opts(img, extra=""):
    """(options, target) to open img as raw over file with --image-opts."""
    return (("--image-opts",),
            "driver=raw,file.driver=file,file.filename=%s%s" % (img, extra))


@pytest.fixture
def img(tmp_dir):
    return make_image(os.path.join(tmp_dir, "test.raw"), IMG_SIZE)


# ---- Commands -------------------------------------------------------------


def test_write_then_read_pattern(lockstep_io, img):
    r = lio(lockstep_io, img, ["write -P 0xab 512 4k", "read -P 0xab 512 4k"])
    assert r.returncode == 0, r.stderr
    assert normalise(r.stdout) == [
        "wrote 4096/4096 bytes at offset 512",
        "4 KiB, 1 ops; <time>",
        "read 4096/4096 bytes at offset 512",
        "4 KiB, 1 ops; <time>",
    ]
    with open(img, "rb") as f:
        data = f.read()
    assert data[512:512 + 4096] == b"\xab" * 4096
    assert data[:512] == bytes(512)
    assert data[4608:] == bytes(IMG_SIZE - 4608)


def test_stats_line_format(lockstep_io, img):
    r = lio(lockstep_io, img, ["read 0 1536", "read 0 40", "read 0 0"])
    assert r.returncode == 0
    sizes = [STATS_RE.match(l).group(1) for l in r.stdout.splitlines()
             if STATS_RE.match(l)]
    assert sizes == ["1.500 KiB", "40 bytes", "0 bytes"]


def test_write_default_pattern(lockstep_io, img):
    r = lio(lockstep_io, img, ["write 100 10", "read -P 0xcd 100 10"])
    assert r.returncode == 0
    assert "Pattern verification failed" not in r.stdout


def test_read_pattern_mismatch(lockstep_io, img):
    r = lio(lockstep_io, img, ["write -P 1 0 100", "read -P 1 0 101"])
    assert r.returncode == 1
    lines = normalise(r.stdout)
    assert "Pattern verification failed at offset 0, 101 bytes" in lines
    # Like qemu-io, the read line is printed after the failure.
    assert lines[-2] == "read 101/101 bytes at offset 0"


def test_read_pattern_subrange(lockstep_io, img):
    r = lio(lockstep_io, img, ["write -P 7 10 5",
                               "read -P 7 -s 2 -l 3 8 10",
                               "read -P 7 -s 1 -l 3 8 10"])
    assert r.returncode == 1
    assert normalise(r.stdout).count(
        "Pattern verification failed at offset 9, 3 bytes") == 1


def test_read_quiet(lockstep_io, img):
    r = lio(lockstep_io, img, ["read -q 0 10", "write -q 0 1",
                               "discard -q 0 1"])
    assert r.returncode == 0
    assert r.stdout == ""


def test_read_verbose_hexdump(lockstep_io, img):
    r = lio(lockstep_io, img, ["write -P 0x41 4090 3", "read -v 4088 20"])
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[2] == ("00000ff8:  00 00 41 41 41 00 00 00 00 00 00 00 00 "
                        "00 00 00  ..AAA...........")
    assert lines[3] == "00001008:  00 00 00 00  ...."
    assert lines[4] == "read 20/20 bytes at offset 4088"


def test_write_zeroes(lockstep_io, img):
    r = lio(lockstep_io, img, ["write -P 0xff 0 64k", "write -z 1 100",
                               "write -z -u 4096 8192", "write -z -f 20k 3",
                               "read -P 0 1 100", "read -P 0 4096 8192",
                               "read -P 0 20k 3", "read -P 0xff 0 1",
                               "read -P 0xff 101 3995"])
    assert r.returncode == 0, r.stdout
    assert "wrote 100/100 bytes at offset 1" in r.stdout
    assert "wrote 8192/8192 bytes at offset 4096" in r.stdout


def test_write_fua(lockstep_io, img):
    r = lio(lockstep_io, img, ["write -f -P 3 5 7", "read -P 3 5 7"])
    assert r.returncode == 0
    assert "wrote 7/7 bytes at offset 5" in r.stdout


def test_discard_output(lockstep_io, img):
    r = lio(lockstep_io, img, ["discard 64k 4k"])
    assert r.returncode == 0
    assert normalise(r.stdout) == ["discard 4096/4096 bytes at offset 65536",
                                   "4 KiB, 1 ops; <time>"]


def test_flush(lockstep_io, img):
    r = lio(lockstep_io, img, ["write 0 1", "flush"])
    assert r.returncode == 0
    assert normalise(r.stdout)[-1] == "1 bytes, 1 ops; <time>"


def test_length(lockstep_io, tmp_dir):
    # Whole sectors, as qemu-io: a 1000-byte file is a 1 KiB image.
    for size, text in [(MiB, "1 MiB"), (1536, "1.500 KiB"), (1000, "1 KiB"),
                       (0, "0 bytes"), (3 * MiB + 512, "3 MiB")]:
        path = make_image(os.path.join(tmp_dir, "l%d.raw" % size), size)
        r = lio(lockstep_io, path, ["length"])
        assert r.returncode == 0
        assert r.stdout == text + "\n"


def test_map_raw(lockstep_io, img):
    # A raw node defines all of its content, holes in the file included.
    r = lio(lockstep_io, img, ["write 64k 4k", "map"])
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == (
        "1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)")


def test_map_qcow2(lockstep_io, tmp_dir):
    """map shows holes of a qcow2 image (needs the qcow2 driver)."""
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed")
    path = os.path.join(tmp_dir, "t.qcow2")
    assert run(["qemu-img", "create", "-q", "-f", "qcow2", path,
                "10M"]).returncode == 0
    assert run(["qemu-io", "-c", "write 64k 4k", "-c", "write 1M 128k",
                path]).returncode == 0
    r = run([lockstep_io, "-c", "map", path])
    if "Unknown driver 'qcow2'" in r.stderr:
        pytest.skip("qcow2 driver not built")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "64 KiB (0x10000) bytes not allocated at offset 0 bytes (0x0)",
        "64 KiB (0x10000) bytes     allocated at offset 64 KiB (0x10000)",
        "896 KiB (0xe0000) bytes not allocated at offset 128 KiB (0x20000)",
        "128 KiB (0x20000) bytes     allocated at offset 1 MiB (0x100000)",
        "8.875 MiB (0x8e0000) bytes not allocated at offset 1.125 MiB "
        "(0x120000)",
    ]


def test_info(lockstep_io, img):
    r = lio(lockstep_io, img, ["info"])
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["format name: raw", "cluster size: 0 bytes",
                                     "vm state offset: 0 bytes"]


@pytest.mark.parametrize("size,cluster", [("10M", "64k"), ("3G", "4k"),
                                          ("2M", "512")])
def test_info_qcow2_and_null_as_qemu_io(lockstep_io, qemu_io, tmp_dir, size,
                                        cluster):
    """The VM state offset comes from the driver's vmstate_start hook,
    null-co's missing image info from its no_image_info flag: both as
    qemu-io prints them."""
    path = os.path.join(tmp_dir, "a.qcow2")
    r = run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
             "cluster_size=" + cluster, path, size])
    assert r.returncode == 0, r.stderr
    null = 'json:{"driver": "null-co", "size": 1048576}'
    for target in (path, null):
        ours = run([lockstep_io, "-c", "info", target])
        theirs = run([qemu_io, "-c", "info", target])
        assert (ours.returncode, ours.stdout) == \
            (theirs.returncode, theirs.stdout)
    assert "vm state offset:" in run([lockstep_io, "-c", "info",
                                      path]).stdout


def test_help(lockstep_io, img):
    r = lio(lockstep_io, img, ["help"])
    assert r.returncode == 0
    names = [l.split()[0] for l in r.stdout.splitlines() if " -- " in l]
    for cmd in ["read", "write", "discard", "flush", "map", "length", "info",
                "help"]:
        assert cmd in names
    assert "Use 'help commandname' for extended help." in r.stdout
    r = lio(lockstep_io, img, ["help write"])
    assert r.returncode == 0
    assert r.stdout.startswith("write [-bcCfnquz] [-P pattern | -s "
                               "source_file] off len -- ")
    assert "-z" in r.stdout


def test_sizes_and_suffixes(lockstep_io, img):
    r = lio(lockstep_io, img, ["read -q 1k 1", "read 1.5k 1", "read 0x10 1",
                               "read 0x1k 1", "read 0.5k 1", "read 1K 1",
                               "read 0 1M"])
    assert r.returncode == 0
    offsets = re.findall(r"^read \d+/\d+ bytes at offset (\d+)$", r.stdout,
                         re.M)
    assert offsets == ["1536", "16", "1024", "512", "1024", "0"]


def test_stdin_commands(lockstep_io, img):
    r = run([lockstep_io, "-f", "raw", img],
            stdin="write -P 5 0 512\n\nread -P 5 0 512\nlength\n")
    assert r.returncode == 0, r.stderr
    # A prompt before each command, as qemu-io prints it.
    lines = [l.replace("lockstep-io> ", "") for l in normalise(r.stdout)]
    assert "read 512/512 bytes at offset 0" in lines
    assert lines[-2:] == ["1 MiB", ""]


def test_stdin_quit_and_failure(lockstep_io, img):
    r = run([lockstep_io, "-f", "raw", img], stdin="read -P 1 0 1\nquit\n"
            "bogus\n")
    assert r.returncode == 1
    assert "bogus" not in r.stderr
    r = run([lockstep_io, "-f", "raw", img], stdin="read 0 1\nquit\n")
    assert r.returncode == 0


def test_probe_defaults_to_raw(lockstep_io, img):
    r = run([lockstep_io, "-c", "info", img])
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "format name: raw"


def test_image_opts_keyval_and_json(lockstep_io, img):
    opts, target = image_opts(img)
    r = lio(lockstep_io, target, ["write -P 9 3 3", "read -P 9 3 3", "info"],
            opts=opts)
    assert r.returncode == 0, r.stderr
    assert "format name: raw" in r.stdout
    js = ('{"driver": "raw", "file": {"driver": "file", "filename": "%s"}}'
          % img)
    r = run([lockstep_io, "--image-opts", "-c", "read -P 9 3 3", js])
    assert r.returncode == 0, r.stderr
    # Implied key, as qemu-io --image-opts accepts "raw,file.filename=...".
    r = run([lockstep_io, "--image-opts", "-c", "read -P 9 3 3",
             "raw,file.driver=file,file.filename=%s" % img])
    assert r.returncode == 0, r.stderr


def test_read_only(lockstep_io, img):
    r = lio(lockstep_io, img, ["read 0 1", "write 0 1"], opts=("-r", "-f",
                                                               "raw"))
    assert r.returncode == 1
    assert r.stderr == "lockstep-io: Block node is read-only\n"
    assert "read 1/1 bytes at offset 0" in r.stdout
    opts, target = image_opts(img, ",read-only=on")
    r = lio(lockstep_io, target, ["read 0 1", "discard 0 1", "write -z 0 1"],
            opts=opts)
    assert r.returncode == 1
    assert r.stderr == "lockstep-io: Block node is read-only\n" * 2
    with open(img, "rb") as f:
        assert f.read() == bytes(IMG_SIZE)


def test_read_only_child_refuses_writes(lockstep_io, img):
    """A writable raw node over a read-only file child cannot be opened."""
    opts, target = image_opts(img, ",file.read-only=on")
    r = lio(lockstep_io, target, ["write 0 1"], opts=opts)
    assert r.returncode == 1
    assert "is read-only" in r.stderr
    with open(img, "rb") as f:
        assert f.read() == bytes(IMG_SIZE)


# ---- Exit status and messages for bad input --------------------------------


def test_version_and_help_options(lockstep_io):
    r = run([lockstep_io, "--version"])
    assert r.returncode == 0
    assert r.stdout.startswith("lockstep-io version ")
    r = run([lockstep_io, "-V"])
    assert r.returncode == 0
    r = run([lockstep_io, "--help"])
    assert r.returncode == 0
    assert r.stdout.startswith("Usage: lockstep-io")
    for opt in ["--image-opts", "-c", "-f", "-r", "--help", "--version"]:
        assert opt in r.stdout


@pytest.mark.parametrize("argv,msg", [
    (["--bogus", "x"], "unrecognized option"),
    (["-d", "sometimes", "x"], "Invalid discard option: sometimes"),
])
def test_bad_command_line(lockstep_io, argv, msg):
    r = run([lockstep_io] + argv)
    assert r.returncode == 1
    assert msg in r.stderr


def direct_while_open(lockstep_io, argv, path):
    """Is path open with O_DIRECT while lockstep-io (reading its commands
    from a pipe) has it open?"""
    p = subprocess.Popen([lockstep_io] + argv, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 10
        while not open_flags(p.pid, path):
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        flags = open_flags(p.pid, path)
        out, err = p.communicate("write -P 7 1 1000\nread -P 7 1 1000\n",
                                 timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "read 1000/1000 bytes at offset 1" in out
    return all(f & O_DIRECT for f in flags)


@pytest.mark.parametrize("argv,direct", [
    (["-t", "none", "-f", "raw"], True),
    (["--nocache", "-f", "raw"], True),
    (["--cache=writeback", "-f", "raw"], False),
    (["-t", "unsafe", "-f", "raw"], False),
    (["-t", "writethrough", "-f", "raw"], False),
    (["-t", "directsync", "-f", "raw"], True),
    (["-n", "--image-opts"], True),
])
def test_cache_mode(lockstep_io, img, argv, direct):
    """-t none / directsync / -n open the image with O_DIRECT (qemu-io's
    options), also under --image-opts; unaligned I/O still works through
    it.  writethrough (qemu-io's default) and directsync are accepted: the
    iotests' harness passes them."""
    if direct and not supports_o_direct(os.path.dirname(img)):
        pytest.skip("no O_DIRECT in %s" % os.path.dirname(img))
    target = img
    if "--image-opts" in argv:
        target = "driver=raw,file.driver=file,file.filename=%s" % img
    assert direct_while_open(lockstep_io, argv + [target], img) == direct


@pytest.mark.parametrize("mode,msg", [
    ("bogus", "lockstep-io: Invalid cache option: bogus"),
    ("", "lockstep-io: Invalid cache option: "),
])
def test_cache_mode_refused(lockstep_io, img, mode, msg):
    r = run([lockstep_io, "-t", mode, "-c", "read 0 1", img])
    assert r.returncode == 1
    assert msg in r.stderr


def test_open_missing_file(lockstep_io, tmp_dir):
    path = os.path.join(tmp_dir, "nonexistent.raw")
    r = run([lockstep_io, "-f", "raw", "-c", "read 0 1", path])
    assert r.returncode == 1
    assert r.stderr.startswith("lockstep-io: can't open device %s: " % path)
    assert "No such file or directory" in r.stderr
    assert r.stdout == ""


def test_open_missing_file_image_opts(lockstep_io, tmp_dir):
    path = os.path.join(tmp_dir, "nonexistent.raw")
    opts, target = image_opts(path)
    r = lio(lockstep_io, target, ["read 0 1"], opts=opts)
    assert r.returncode == 1
    assert r.stderr.startswith("lockstep-io: can't open: ")
    assert "No such file or directory" in r.stderr


def test_open_unknown_format(lockstep_io, img):
    r = run([lockstep_io, "-f", "nosuchfmt", "-c", "read 0 1", img])
    assert r.returncode == 1
    assert "nosuchfmt" in r.stderr


@pytest.mark.parametrize("opts,msg", [
    ("driver=raw,file", "Expected '=' after parameter 'file'"),
    ("driver=raw,file.a..b=1", "Invalid parameter 'file.a..b'"),
    ("driver=raw,file=x,file.driver=file", "used inconsistently"),
    ('{"driver": "raw"', "JSON parse error"),
])
def test_bad_image_opts(lockstep_io, opts, msg):
    r = run([lockstep_io, "--image-opts", "-c", "read 0 1", opts])
    assert r.returncode == 1
    assert msg in r.stderr


@pytest.mark.parametrize("cmd,out,err", [
    ("bogus", "", 'command "bogus" not found\n'),
    ("read 0", "",
     "bad argument count 1 to read, expected at least 2 arguments\n"),
    ("flush x", "", "bad argument count 1 to flush, expected 0 arguments\n"),
    ("help a b", "",
     "bad argument count 2 to help, expected between 0 and 1 arguments\n"),
    ("help bogus", "command bogus not found\n", ""),
    ("read x 1", "Parsing error: non-numeric argument, or extraneous/"
     "unrecognized suffix -- x\n", ""),
    ("read 1.5 1", "Parsing error: non-numeric argument, or extraneous/"
     "unrecognized suffix -- 1.5\n", ""),
    ("read 16E 1", "Parsing error: argument too large -- 16E\n", ""),
    ("read 0 3G", "length cannot exceed 2147483136, given 3G\n", ""),
    ("write -P abc 0 1", "abc is not a valid pattern byte\n", ""),
    ("write -P 0x100 0 1", "0x100 is not a valid pattern byte\n", ""),
    ("write -u 0 1", "-u requires -z to be specified\n", ""),
    ("write -z -P 1 0 1", "Only one of -z, -P, and -s can be specified at "
     "the same time\n", ""),
    ("read 1M 1", "read failed: Input/output error\n", ""),
    ("read 1023k 2k", "read failed: Input/output error\n", ""),
    ("write 1023k 2k", "write failed: Input/output error\n", ""),
    ("discard 2M 1", "discard failed: Input/output error\n", ""),
])
def test_command_errors(lockstep_io, img, cmd, out, err):
    r = lio(lockstep_io, img, [cmd])
    assert r.returncode == 1
    assert r.stdout == out
    assert r.stderr == err


def test_option_error_prints_usage(lockstep_io, img):
    r = lio(lockstep_io, img, ["read -x 0 1"])
    assert r.returncode == 1
    assert r.stderr == "read: invalid option -- 'x'\n"
    assert r.stdout.startswith("read [-abCqv] [-P pattern [-s off] [-l len]] "
                               "off len -- ")


def test_one_failure_fails_the_run(lockstep_io, img):
    r = lio(lockstep_io, img, ["read 0 1", "bogus", "read 0 1"])
    assert r.returncode == 1
    # The commands after the failed one still run.
    assert r.stdout.count("read 1/1 bytes at offset 0") == 2


# ---- Differential: same commands, same output as qemu-io -------------------


DIFF_CMDS = [
    "write -P 0xab 0 4k", "read -P 0xab 0 4k", "read -P 0 0 4k",
    "read -v 4090 40", "write -z 8k 4k", "write -z -u 64k 64k",
    "discard 128k 4k", "flush", "map", "length", "info", "read -q 0 1",
    "write -f 1 2", "read 1.5k 1", "read 0x1k 1", "read x 1",
    "write -P abc 0 1", "read 16E 1", "read 0 3G", "read -P 0xab -s 1 -l 2 0 4",
    "read -v 0 17", "read 1M 1", "write 1023k 2k", "help bogus",
    "write -u 0 1", "write -z -P 1 0 1", "read -P 0xcd 1 2", "read 2M 0",
    "read 1M 0", "write 2M 0", "discard 2M 0", "write -z 2M 0",
    "write -z 1023k 2k", "discard 1023k 2k",
]


def test_same_output_as_qemu_io(lockstep_io, qemu_io, tmp_dir):
    a = make_image(os.path.join(tmp_dir, "a.raw"), IMG_SIZE)
    b = make_image(os.path.join(tmp_dir, "b.raw"), IMG_SIZE)
    ours = lio(lockstep_io, a, DIFF_CMDS)
    theirs = lio(qemu_io, b, DIFF_CMDS)
    assert normalise(ours.stdout) == normalise(theirs.stdout)
    assert ours.returncode == theirs.returncode == 1
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


# ---- Random writes against a model ------------------------------------------


class Model:
    """What the image must contain, and the commands that got it there."""

    def __init__(self, size, discard_honoured):
        self.data = bytearray(size)
        self.discard_honoured = discard_honoured

    def random_cmd(self, rnd):
        size = len(self.data)
        kind = rnd.random()
        # Mostly small unaligned requests, sometimes large ones.
        length = rnd.choice([rnd.randint(1, 700), rnd.randint(1, 70000)])
        off = rnd.randint(0, size - 1)
        length = min(length, size - off)
        if kind < 0.6:
            pat = rnd.randint(1, 255)
            self.data[off:off + length] = bytes([pat]) * length
            return "write -q -P %d %d %d" % (pat, off, length)
        if kind < 0.8:
            self.data[off:off + length] = bytes(length)
            return "write -q -z %s%d %d" % (rnd.choice(["", "-u "]), off,
                                            length)
        if self.discard_honoured:
            self.data[off:off + length] = bytes(length)
        return "discard -q %d %d" % (off, length)

    def uniform_run(self, rnd):
        """A random range over which the model holds one byte value."""
        pos = rnd.randint(0, len(self.data) - 1)
        val = self.data[pos]
        start = pos
        while start > 0 and self.data[start - 1] == val and pos - start < 9000:
            start -= 1
        end = pos + 1
        while end < len(self.data) and self.data[end] == val and \
                end - pos < 9000:
            end += 1
        return val, start, end - start


RANDOM_MODES = {
    # name: (open options, discard honoured)
    "f-raw": (("-f", "raw"), True),
    "f-raw-d-ignore": (("-f", "raw", "-d", "ignore"), False),
    "image-opts": (None, True),
    "image-opts-discard-ignore": (",discard=ignore", False),
    "image-opts-file-discard-ignore": (",file.discard=ignore", False),
    "image-opts-discard-unmap": (",discard=unmap", True),
}


def open_opts(mode, img):
    """(options, target, discard honoured) for a RANDOM_MODES entry."""
    opts, honoured = RANDOM_MODES[mode]
    if opts is None:
        opts = ""
    if isinstance(opts, str):
        return image_opts(img, opts) + (honoured,)
    return opts, img, honoured


def check_image(img, model):
    with open(img, "rb") as f:
        data = f.read()
    assert len(data) == len(model.data)
    if data != model.data:
        first = next(i for i in range(len(data)) if data[i] != model.data[i])
        pytest.fail("image differs from the model at offset %d: %d != %d"
                    % (first, data[first], model.data[first]))


@pytest.mark.parametrize("mode", sorted(RANDOM_MODES))
@pytest.mark.parametrize("seed", range(6))
def test_random_ops_match_model(lockstep_io, tmp_dir, mode, seed):
    rnd = random.Random("%s-%d" % (mode, seed))
    size = IMG_SIZE + rnd.choice([0, 1, 511, 4097])
    img = make_image(os.path.join(tmp_dir, "rand.raw"), size)
    opts, target, honoured = open_opts(mode, img)
    model = Model(size, honoured)
    for _ in range(3):
        cmds = [model.random_cmd(rnd) for _ in range(150)]
        # Reads through the block layer of ranges the model knows.
        for _ in range(20):
            val, off, length = model.uniform_run(rnd)
            cmds.append("read -q -P %d %d %d" % (val, off, length))
        r = lio(lockstep_io, target, cmds, opts=opts)
        assert r.returncode == 0, (r.stdout + r.stderr)[:2000]
        assert r.stdout == ""
        check_image(img, model)


@pytest.mark.parametrize("seed", range(3))
def test_random_reads_cross_checked_with_qemu_io(lockstep_io, qemu_io, tmp_dir,
                                                 seed):
    """The image lockstep-io wrote reads back the same through qemu-io."""
    rnd = random.Random(seed)
    img = make_image(os.path.join(tmp_dir, "x.raw"), IMG_SIZE)
    model = Model(IMG_SIZE, True)
    cmds = [model.random_cmd(rnd) for _ in range(300)]
    r = lio(lockstep_io, img, cmds)
    assert r.returncode == 0, r.stdout + r.stderr
    reads = []
    for _ in range(60):
        val, off, length = model.uniform_run(rnd)
        reads.append("read -q -P %d %d %d" % (val, off, length))
    for tool in (lockstep_io, qemu_io):
        r = lio(tool, img, reads + ["read -v 1000 64"])
        assert r.returncode == 0, (tool, r.stdout[:2000])
    dumps = [normalise(lio(t, img, ["read -v 1000 64"]).stdout)
             for t in (lockstep_io, qemu_io)]
    assert dumps[0] == dumps[1]
    check_image(img, model)


def test_qemu_io_and_lockstep_io_agree_on_random_ops(lockstep_io, qemu_io,
                                                     tmp_dir):
    """The same random command list gives identical files with both tools."""
    rnd = random.Random(1234)
    a = make_image(os.path.join(tmp_dir, "a.raw"), IMG_SIZE)
    b = make_image(os.path.join(tmp_dir, "b.raw"), IMG_SIZE)
    model = Model(IMG_SIZE, True)
    cmds = [model.random_cmd(rnd) for _ in range(400)]
    assert lio(lockstep_io, a, cmds).returncode == 0
    assert lio(qemu_io, b, cmds).returncode == 0
    check_image(a, model)
    check_image(b, model)


def test_no_file_and_too_many_arguments(lockstep_io):
    """As qemu-io: no FILE starts with none open; two print the usage."""
    r = run([lockstep_io], stdin="quit\n")
    assert r.returncode == 0
    assert r.stdout.startswith("lockstep-io> ")
    r = run([lockstep_io, "a", "b"])
    assert r.returncode == 1
    assert r.stdout.startswith("Usage: lockstep-io ")
