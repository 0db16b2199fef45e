# SPDX-License-Identifier: MIT
"""Shared pytest fixtures for lockstep's functional tests.

The tests run the programs of a build tree: LOCKSTEP_BUILD names it (default: build/
at the top of the source tree).  Every test gets its own scratch directory.
"""
import os
import shutil
import subprocess

import pytest


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
    """Run a program, capturing text output; never raises on exit status."""
    return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                          timeout=timeout)


def make_image(path, size, fill=None):
    """A raw image file of size bytes: sparse, or filled with byte fill."""
    with open(path, "wb") as f:
        if fill is None:
            f.truncate(size)
        else:
            f.write(bytes([fill]) * size)
    return path
