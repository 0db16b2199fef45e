# SPDX-License-Identifier: MIT
"""make demo (scripts/demo.sh) runs in the test suite, so it cannot rot:
every job must hold, and a demo whose proof fails, or whose command fails,
must say so and exit 1 (checked with a corrupting nbdcopy, a failing fio
and a lockstep-backup whose restores are damaged), leaving no daemon
behind."""
import os
import re
import shutil
import signal
import stat
import subprocess

import pytest

from conftest import build_dir_path

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DEMO = os.path.join(TOP, "scripts", "demo.sh")
SANITIZER_REPORTS = ("runtime error:", "AddressSanitizer", "LeakSanitizer",
                     "ThreadSanitizer")


def run_demo(steps=(), path_first=None, timeout=600, build=None):
    build = build or build_dir_path()
    if not os.access(os.path.join(build, "lockstepd"), os.X_OK):
        pytest.skip("lockstepd is not built")
    for tool in ("fio", "nbdcopy", "qemu-io", "qemu-img"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed" % tool)
    env = dict(os.environ)
    env["LOCKSTEP_DEMO_KEEP"] = "1"
    if path_first:
        env["PATH"] = path_first + os.pathsep + env["PATH"]
    proc = subprocess.Popen(["/bin/bash", DEMO, build] + list(steps),
                            env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError("demo still running after %d s:\n%s"
                             % (timeout, out[-5000:]))
    m = re.search(r"scratch directory (/tmp/lockstep-demo\.\w+)\.", out)
    assert m, out[-5000:]
    scratch = m.group(1)
    left = processes_in(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "the demo left processes running: %s" % left
    for bad in SANITIZER_REPORTS:
        assert bad not in out, out
    return proc.returncode, out


def processes_in(directory):
    """PIDs of processes whose working directory is inside directory."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cwd = os.readlink("/proc/%s/cwd" % d)
        except OSError:
            continue
        if cwd == directory or cwd.startswith(directory + "/"):
            pids.append(int(d))
    return pids


def summary(out):
    """The lines after the summary heading: {step: (verdict, text)}."""
    tail = out.split("== What the demo showed", 1)
    assert len(tail) == 2, out[-5000:]
    steps = {}
    for line in tail[1].strip().splitlines():
        if line.startswith("("):            # "(N seconds)"
            continue
        m = re.match(r"(\d+)\. (\S+)\s+(held|did NOT hold): (.*)$", line)
        assert m, line
        steps[m.group(2)] = (m.group(3), m.group(4))
    return steps


def fake_tool(directory, name, body):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def test_demo_shows_the_three_jobs():
    rc, out = run_demo()
    steps = summary(out)
    assert list(steps) == ["fleecing", "replication", "backup"], out[-5000:]
    assert rc == 0, out[-8000:]
    for verdict, _ in steps.values():
        assert verdict == "held"
    # The narration shows the commands it runs, to paste.
    for cmd in ("$ lockstep-qmp qmp.sock fleecing-start",
                "$ lockstep-qmp qmp.sock <<'EOF'",
                '{"execute": "blockdev-reopen"',
                "$ kill -KILL ",
                "$ lockstep-qmp sec-qmp.sock replication-checkpoint",
                "$ lockstep-backup full --socket qmp.sock",
                "$ lockstep-backup incremental --socket qmp.sock",
                "$ lockstep-backup restore backups --at "):
        assert cmd in out
    assert "NOT OK" not in out


@pytest.mark.script_only
def test_demo_fails_when_the_copy_is_wrong(tmp_path):
    """An nbdcopy that damages what it copies from the snapshot: the
    fleecing step must not hold, and the demo exits 1."""
    real = shutil.which("nbdcopy")
    fake_tool(str(tmp_path), "nbdcopy",
              '%s "$@" || exit\n'
              'case $1 in\n'
              '  *snap*) printf X | dd of="$2" bs=1 seek=4096 '
              'conv=notrunc status=none ;;\n'
              'esac\n' % real)
    rc, out = run_demo(["fleecing"], path_first=str(tmp_path))
    assert rc == 1, out[-5000:]
    verdict, text = summary(out)["fleecing"]
    assert verdict == "did NOT hold"
    assert "the backup equals the disk at fleecing-start" in text
    assert "NOT OK: the backup equals the disk at fleecing-start" in out


@pytest.mark.script_only
def test_demo_fails_when_a_command_fails(tmp_path):
    """A guest (fio) that fails: the replication step stops there, says
    so, and stops its daemons."""
    fake_tool(str(tmp_path), "fio", "echo 'fio: simulated failure' >&2\n"
              "exit 1\n")
    rc, out = run_demo(["replication"], path_first=str(tmp_path))
    assert rc == 1, out[-5000:]
    verdict, text = summary(out)["replication"]
    assert verdict == "did NOT hold"
    assert text.startswith("a command failed"), text
    assert "simulated failure" in out


@pytest.mark.script_only
def test_demo_fails_when_a_restore_is_wrong(tmp_path):
    """A lockstep-backup whose raw restores come out damaged (the demo
    runs the build's programs first on PATH, so the wrapper goes into a
    build directory of its own): the backup step must not hold, and the
    demo exits 1."""
    real = build_dir_path()
    fake = tmp_path / "build"
    fake.mkdir()
    for prog in ("lockstepd", "lockstep-img", "lockstep-io", "lockstep-qmp"):
        os.symlink(os.path.join(real, prog), str(fake / prog))
    fake_tool(str(fake), "lockstep-backup",
              '%s "$@" || exit\n'
              'if [ "$1" = restore ]; then\n'
              '  for a; do last=$a; done\n'
              '  printf X | dd of="$last" bs=1 seek=4096 conv=notrunc '
              'status=none\n'
              'fi\n' % os.path.join(real, "lockstep-backup"))
    rc, out = run_demo(["backup"], build=str(fake))
    assert rc == 1, out[-5000:]
    verdict, text = summary(out)["backup"]
    assert verdict == "did NOT hold"
    assert "the day-0 restore equals the disk" in text, text
    assert "NOT OK: the day-1 restore" in out
