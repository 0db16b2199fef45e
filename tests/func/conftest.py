# SPDX-License-Identifier: MIT
"""Shared pytest fixtures for lockstep's functional tests.

The tests run the programs of a build tree: LOCKSTEP_BUILD names it (default: build/
at the top of the source tree).  Every test gets its own scratch directory.
Tests marked "direct" run again with O_DIRECT in make check (direct.py).
"""
import os
import random
import shutil
import socket
import subprocess
import tempfile

import pytest

import direct


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "direct: also run with cache.direct=on on a disk "
        "(LOCKSTEP_TEST_CACHE=none, see direct.py)")
    config.addinivalue_line(
        "markers", "script_only: tests a script or the docs rather than "
        "our C code (the sanitizer pass of make check skips it)")
    config.addinivalue_line(
        "markers", "serial: asserts wall-clock times or binds a fixed port "
        "(make check runs these alone, after the parallel run of the rest)")


def pytest_collection_modifyitems(config, items):
    """Mark the tests direct.TESTS lists (pytest -m direct selects them)."""
    for item in items:
        if direct.selected(item.nodeid):
            item.add_marker(pytest.mark.direct)


def build_dir_path():
    top = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    return os.environ.get("LOCKSTEP_BUILD", os.path.join(top, "build"))


def built_program(build_dir, name):
    """A program of the build tree; skips the test when it is not built."""
    path = os.path.join(build_dir, name)
    if not os.access(path, os.X_OK):
        pytest.skip("%s is not built" % path)
    return path


def host_tool(name):
    """A program from the machine (QEMU's tools, ...); skips when missing."""
    path = shutil.which(name)
    if not path:
        pytest.skip("%s is not installed" % name)
    return path


@pytest.fixture(scope="session")
def build_dir():
    path = build_dir_path()
    if not os.path.isdir(path):
        pytest.skip("build directory %s does not exist" % path)
    return path


@pytest.fixture(scope="session")
def lockstep_io(build_dir):
    return built_program(build_dir, "lockstep-io")


@pytest.fixture(scope="session")
def lockstepd(build_dir):
    return built_program(build_dir, "lockstepd")


@pytest.fixture(scope="session")
def qsd():
    """qemu-storage-daemon, to run the same scenario on QEMU."""
    return host_tool("qemu-storage-daemon")


@pytest.fixture(scope="session")
def qemu_io():
    """The real qemu-io, for differential checks; skips when missing."""
    return host_tool("qemu-io")


@pytest.fixture
def tmp_dir(tmp_path):
    return str(tmp_path)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture(autouse=True)
def _drop_scratch_of_passed_tests(request, tmp_path):
    """Remove a passed test's scratch directory when it ends: some tests
    write gigabytes, and a failed one's files are kept to look at."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        shutil.rmtree(str(tmp_path), ignore_errors=True)


def run(argv, stdin=None, timeout=120):
    """Run a program, capturing text output; never raises on exit status.
    In the O_DIRECT pass our tools get their cache options (direct.py)."""
    return subprocess.run(direct.argv(argv), input=stdin,
                          capture_output=True, text=True, timeout=timeout)


# make check runs the tests in several pytest-xdist workers at once
# (PYTEST_XDIST_WORKER=gw0, gw1, ...).  Each worker takes its ports from a
# range of its own below the kernel's ephemeral ports (32768 and up): a
# port one worker found free cannot be taken by another worker's
# free_port() nor by an outgoing connection before the test binds it.
PORT_BASE = 20000
PORTS_PER_WORKER = 500
_next_port = [None]


def _worker_index():
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() \
        else None


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    worker = _worker_index()
    if worker is not None and worker < 20:
        first = PORT_BASE + worker * PORTS_PER_WORKER
        if _next_port[0] is None:
            # Another make check on the machine likely starts elsewhere.
            _next_port[0] = random.randrange(PORTS_PER_WORKER)
        for _ in range(PORTS_PER_WORKER):
            port = first + _next_port[0] % PORTS_PER_WORKER
            _next_port[0] += 1
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
            finally:
                s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_image(path, size, fill=None):
    """A raw image file of size bytes: sparse, or filled with byte fill."""
    with open(path, "wb") as f:
        if fill is None:
            f.truncate(size)
        else:
            f.write(bytes([fill]) * size)
    return path


O_DIRECT = 0o40000      # x86_64 and aarch64


def open_flags(pid, path):
    """The open(2) flags of every descriptor process pid holds on path."""
    flags = []
    real = os.path.realpath(path)
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) != real:
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                for line in f:
                    if line.startswith("flags:"):
                        flags.append(int(line.split()[1], 8))
        except OSError:
            continue
    return flags


def supports_o_direct(directory):
    """Can files in directory be opened with O_DIRECT (tmpfs before Linux
    6.6 cannot)?"""
    path = os.path.join(directory, ".o_direct_probe")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | O_DIRECT, 0o600)
    except OSError:
        return False
    finally:
        if os.path.exists(path):
            os.unlink(path)
    os.close(fd)
    return True


def fs_type(path):
    r = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                       text=True)
    return r.stdout.strip()


@pytest.fixture
def disk_dir(tmp_path):
    """A scratch directory on a disk-backed file system (O_DIRECT reaches a
    device there: tmpfs does not count); skips when there is none."""
    for base in (str(tmp_path), "/var/tmp"):
        if fs_type(base) not in ("tmpfs", "ramfs") and \
                supports_o_direct(base):
            break
    else:
        pytest.skip("no disk-backed directory with O_DIRECT")
    if base == str(tmp_path):
        yield base
        return
    d = tempfile.mkdtemp(prefix="lockstep-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)
