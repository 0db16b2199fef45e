# SPDX-License-Identifier: MIT
"""The examples of README.md and docs/*.md run as pasted.

A writer marks a fenced shell block as runnable with an HTML comment on
the line just before its fence (GitHub does not show the comment):

    <!-- runnable -->
    ```sh
    cd "$(mktemp -d)"
    lockstep-img create -f qcow2 disk.qcow2 1G
    ```

`<!-- runnable: continued -->` appends the block to the previous runnable
block of the same file: they run as one shell session, as for a reader
pasting them one after the other (the directory, variables and daemons
started in the background carry over).  A shell block that cannot run on
one machine says why: `<!-- not runnable: needs two hosts -->`.  Every
sh/bash/shell/console block carries one of the two markers
(test_every_shell_example_is_marked), so a new document cannot leave its
examples untested by accident.

Each example runs under `bash -e -o pipefail` (the first failing command
fails the test, with the trace) in an empty scratch directory, TMPDIR
pointing into it (so `cd "$(mktemp -d)"` stays there), with the build's
programs first on PATH (as after `make install`), within a time limit
(LOCKSTEP_DOC_TIMEOUT seconds, default 120).  Afterwards whatever it
started is stopped: its process group, daemons that left it
(--daemonize; they carry an environment variable naming the scratch
directory), and FUSE mounts under the scratch directory.  Sanitizer
reports in its output fail the test.
"""
import glob
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import build_dir_path

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SHELL_LANGS = ("sh", "bash", "shell", "console")
MARKER = re.compile(r"^<!--\s*(not runnable|runnable)\s*(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
SANITIZER_REPORTS = ("runtime error:", "AddressSanitizer", "LeakSanitizer",
                     "ThreadSanitizer")


def doc_files():
    return [os.path.join(TOP, "README.md")] + \
        sorted(glob.glob(os.path.join(TOP, "docs", "*.md")))


class Block:
    def __init__(self, path, line, lang, text, marker, arg):
        self.path = path
        self.line = line            # of the opening fence, 1-based
        self.lang = lang
        self.text = text
        self.marker = marker        # "runnable", "not runnable" or None
        self.arg = arg

    def where(self):
        return "%s:%d" % (os.path.relpath(self.path, TOP), self.line)


def parse_blocks(path):
    """Every fenced block of a Markdown file, with the marker just before
    it; a marker followed by anything but a fence is an error."""
    with open(path) as f:
        lines = f.read().split("\n")
    blocks = []
    pending = None                  # (marker, arg, line) waiting for a fence
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if m:
            if pending:
                raise AssertionError("%s:%d: marker not followed by a "
                                     "fenced block" % (path, pending[2]))
            pending = (m.group(1), m.group(2) or "", i + 1)
            i += 1
            continue
        f = FENCE.match(lines[i])
        if f:
            indent, fence, lang = f.group(1), f.group(2), f.group(3)
            body = []
            j = i + 1
            while j < len(lines) and not (
                    lines[j].strip().startswith(fence[0] * len(fence)) and
                    lines[j].strip().strip(fence[0]) == ""):
                body.append(lines[j][len(indent):]
                            if lines[j].startswith(indent) else lines[j])
                j += 1
            marker, arg = (pending[0], pending[1]) if pending else (None, "")
            blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n",
                                marker, arg))
            pending = None
            i = j + 1
            continue
        if pending and lines[i].strip():
            raise AssertionError("%s:%d: marker not followed by a fenced "
                                 "block" % (path, pending[2]))
        i += 1
    if pending:
        raise AssertionError("%s:%d: marker at the end of the file"
                             % (path, pending[2]))
    return blocks


class Example:
    """One shell session: a runnable block and the blocks that continue
    it."""

    def __init__(self, block):
        self.first = block
        self.blocks = [block]

    def script(self):
        parts = []
        for b in self.blocks:
            parts.append("# ---- %s\n%s" % (b.where(), b.text))
        return "\n".join(parts)


def collect_examples():
    examples = []
    problems = []
    for path in doc_files():
        last = None
        for b in parse_blocks(path):
            if b.marker != "runnable":
                continue
            if b.lang not in ("sh", "bash"):
                problems.append("%s: only sh or bash blocks can be runnable"
                                % b.where())
                continue
            if b.arg == "continued":
                if last is None:
                    problems.append("%s: 'continued' without a runnable "
                                    "block before it" % b.where())
                    continue
                last.blocks.append(b)
            elif b.arg:
                problems.append("%s: unknown option '%s' (only "
                                "'continued')" % (b.where(), b.arg))
            else:
                last = Example(b)
                examples.append(last)
    return examples, problems


EXAMPLES, PROBLEMS = collect_examples()


def test_markers_are_valid():
    assert PROBLEMS == []


def test_every_shell_example_is_marked():
    unmarked = []
    for path in doc_files():
        for b in parse_blocks(path):
            if b.lang in SHELL_LANGS and b.marker is None:
                unmarked.append(b.where())
            if b.marker == "not runnable" and not b.arg:
                unmarked.append(b.where() + " (not runnable: say why)")
    assert unmarked == [], (
        "shell examples need <!-- runnable --> (the test suite runs them) "
        "or <!-- not runnable: why --> on the line before the fence: %s"
        % unmarked)


def test_the_docs_have_runnable_examples():
    """The runner finds what it must (a parser that found nothing would
    pass every example vacuously)."""
    files = {os.path.relpath(e.first.path, TOP) for e in EXAMPLES}
    for name in ("README.md", "docs/fleecing.md", "docs/replication.md"):
        assert name in files


# ---- Running one example ---------------------------------------------------

def processes_with_env(key, value):
    """PIDs of processes whose environment has key=value."""
    needle = ("%s=%s" % (key, value)).encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % d, "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(d))
        except OSError:
            pass
    return pids


def stop_everything(pgid, scratch):
    """Stop what the example left running, politely first."""
    def alive():
        pids = set(processes_with_env("LOCKSTEP_DOC_EXAMPLE", scratch))
        try:
            os.killpg(pgid, 0)
            group = True
        except ProcessLookupError:
            group = False
        return group, pids

    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        group, pids = alive()
        if not group and not pids:
            break
        if group:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive()):
            time.sleep(0.05)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for m in mounts:
        m = m.replace("\\040", " ")
        if m == scratch or m.startswith(scratch + "/"):
            subprocess.run(["umount", "-l", m], capture_output=True)


@pytest.mark.script_only
def fixed_port(example):
    """Does the example listen on a TCP port of its own choosing (as a
    reader would: "port=10809")?  Then make check runs it alone (serial),
    not beside tests that find a port free or one refused."""
    return re.search(r"port=\d|:\d{4,5}\b", example.script()) is not None


@pytest.mark.parametrize("example", [
    pytest.param(e, marks=pytest.mark.serial) if fixed_port(e) else e
    for e in EXAMPLES], ids=[e.first.where() for e in EXAMPLES])
def test_example_runs(example, tmp_path):
    build = build_dir_path()
    if not os.access(os.path.join(build, "lockstepd"), os.X_OK):
        pytest.skip("lockstepd is not built")
    scratch = str(tmp_path)
    script = os.path.join(scratch, "example.sh")
    with open(script, "w") as f:
        f.write(example.script())
    work = os.path.join(scratch, "work")
    os.mkdir(work)
    env = dict(os.environ)
    env["PATH"] = os.path.abspath(build) + os.pathsep + env["PATH"]
    env["TMPDIR"] = work
    env["LOCKSTEP_DOC_EXAMPLE"] = scratch
    timeout = float(os.environ.get("LOCKSTEP_DOC_TIMEOUT", "120"))
    out_path = os.path.join(scratch, "output")
    with open(out_path, "w") as out:
        # The output goes to a file: daemons left in the background keep
        # it open, and must not keep the test waiting.
        proc = subprocess.Popen(
            ["/bin/bash", "-e", "-o", "pipefail", "-x", script],
            cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        stop_everything(proc.pid, scratch)
        if rc is None:
            proc.wait()
    with open(out_path, errors="replace") as f:
        output = f.read()
    tail = output[-6000:]
    assert rc is not None, "%s: still running after %g s:\n%s" % (
        example.first.where(), timeout, tail)
    assert rc == 0, "%s: exit status %d:\n%s" % (
        example.first.where(), rc, tail)
    for bad in SANITIZER_REPORTS:
        assert bad not in output, output
