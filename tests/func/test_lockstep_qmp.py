# SPDX-License-Identifier: MIT
"""lockstep-qmp, the QMP command line client of the docs and the demo:
the two ways to write a command, commands on standard input, answers one
a line, the first error stops it with status 1, it waits for a socket
that is not there yet, --wait-event; against lockstepd and
qemu-storage-daemon."""
import json
import os
import subprocess
import time

import pytest

from conftest import built_program, host_tool, run
from qmp_client import Daemon


@pytest.fixture(scope="session")
def lockstep_qmp(build_dir):
    return built_program(build_dir, "lockstep-qmp")


def answers(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


def test_help_and_usage(lockstep_qmp):
    r = run([lockstep_qmp, "--help"])
    assert r.returncode == 0
    assert r.stdout.startswith("lockstep-qmp [OPTIONS] SOCKET [COMMAND...]")
    r = run([lockstep_qmp])
    assert r.returncode == 2
    assert "missing SOCKET" in r.stderr


def test_command_forms(lockstepd, lockstep_qmp, tmp_dir):
    with Daemon(lockstepd, tmp_dir, args=[
            "--blockdev", "driver=null-co,node-name=n0,size=1048576"]) as d:
        r = run([lockstep_qmp, d.qmp_path,
                 "query-block-exports",
                 "block-dirty-bitmap-add", '{"node": "n0", "name": "b0"}',
                 '{"execute": "query-named-block-nodes"}',
                 "block-dirty-bitmap-remove",
                 ' {"node": "n0", "name": "b0"}'])
        assert r.returncode == 0, r.stderr
        a = answers(r.stdout)
        assert len(a) == 4           # qmp_capabilities is not printed
        assert a[0] == {"return": []}
        assert a[1] == {"return": {}}
        assert [n["node-name"] for n in a[2]["return"]] == ["n0"]
        assert a[3] == {"return": {}}
        # A whole command right after a name is the next command, not the
        # name's arguments.
        r = run([lockstep_qmp, d.qmp_path, "query-version",
                 '{"execute": "query-block-exports"}'])
        assert r.returncode == 0, r.stderr
        a = answers(r.stdout)
        assert "qemu" in a[0]["return"] and a[1] == {"return": []}
        assert d.stop() == 0


def test_stdin_pretty_and_capabilities(lockstepd, lockstep_qmp, tmp_dir):
    with Daemon(lockstepd, tmp_dir) as d:
        # Commands spread over lines, several on one line, and an explicit
        # qmp_capabilities first (as a socat user would type).
        text = ('{"execute": "qmp_capabilities"}\n'
                '{"execute":\n  "query-version"} {"execute": '
                '"query-block-exports"}\n\n')
        r = run([lockstep_qmp, d.qmp_path], stdin=text)
        assert r.returncode == 0, r.stderr
        a = answers(r.stdout)
        assert a[0] == {"return": {}}
        assert "qemu" in a[1]["return"] and a[2] == {"return": []}
        r = run([lockstep_qmp, "-p", d.qmp_path, "query-block-exports"])
        assert r.returncode == 0 and r.stdout == '{\n  "return": []\n}\n'
        assert d.stop() == 0


def test_first_error_stops(lockstepd, lockstep_qmp, tmp_dir):
    with Daemon(lockstepd, tmp_dir, args=[
            "--blockdev", "driver=null-co,node-name=n0"]) as d:
        r = run([lockstep_qmp, d.qmp_path,
                 "block-dirty-bitmap-add", '{"node": "n0", "name": "b0"}',
                 "block-dirty-bitmap-add", '{"node": "nope", "name": "b1"}',
                 "block-dirty-bitmap-add", '{"node": "n0", "name": "b2"}'])
        assert r.returncode == 1
        assert answers(r.stdout) == [{"return": {}}]
        assert r.stderr.startswith("lockstep-qmp: block-dirty-bitmap-add: ")
        assert "nope" in r.stderr
        with d.client() as c:
            nodes = c.cmd("query-named-block-nodes")
        names = [b["name"] for b in nodes[0].get("dirty-bitmaps", [])]
        assert names == ["b0"]       # b2 was never sent
        assert d.stop() == 0


def test_bad_input(lockstepd, lockstep_qmp, tmp_dir):
    with Daemon(lockstepd, tmp_dir) as d:
        for argv, stdin in (([d.qmp_path, "query-version", "{oops"], None),
                            ([d.qmp_path], '{"execute": "query-version"} ]'),
                            ([d.qmp_path], '["not a command"]'),
                            ([d.qmp_path, '{"arguments": {}}'], None)):
            r = run([lockstep_qmp] + argv, stdin=stdin)
            assert r.returncode == 2, (argv, stdin, r.stdout, r.stderr)
            assert r.stdout == ""
            assert r.stderr.startswith("lockstep-qmp: ")
        assert d.stop() == 0


def test_waits_for_the_socket(lockstepd, lockstep_qmp, tmp_dir):
    path = os.path.join(tmp_dir, "late.sock")
    client = subprocess.Popen([lockstep_qmp, path, "query-block-exports"],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    daemon = subprocess.Popen(
        [lockstepd, "--chardev",
         "socket,id=m,path=%s,server=on,wait=off" % path,
         "--monitor", "chardev=m"], stderr=subprocess.PIPE, text=True)
    try:
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        assert answers(out) == [{"return": []}]
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=20) == 0
    # Nobody there: it gives up after --timeout, with status 2.
    start = time.monotonic()
    r = run([lockstep_qmp, "-t", "0.5", path, "query-version"])
    assert r.returncode == 2
    assert time.monotonic() - start < 10
    assert path in r.stderr


def test_wait_event(lockstepd, lockstep_qmp, tmp_dir):
    with Daemon(lockstepd, tmp_dir, args=[
            "--blockdev", "driver=null-co,node-name=src,size=4194304",
            "--blockdev", "driver=null-co,node-name=dst,size=4194304"]) as d:
        r = run([lockstep_qmp, "--wait-event", "BLOCK_JOB_COMPLETED",
                 d.qmp_path, "blockdev-backup",
                 '{"job-id": "j0", "device": "src", "target": "dst", '
                 '"sync": "full"}'])
        assert r.returncode == 0, r.stderr
        a = answers(r.stdout)
        assert a[0] == {"return": {}}
        assert a[1]["event"] == "BLOCK_JOB_COMPLETED"
        assert a[1]["data"]["device"] == "j0"
        # An event that does not come: status 1 after --event-timeout.
        r = run([lockstep_qmp, "-w", "NO_SUCH_EVENT", "--event-timeout",
                 "0.5", d.qmp_path, "query-version"])
        assert r.returncode == 1
        assert "no NO_SUCH_EVENT event" in r.stderr
        assert d.stop() == 0


def test_against_qemu_storage_daemon(lockstep_qmp, tmp_dir):
    qsd = host_tool("qemu-storage-daemon")
    with Daemon(qsd, tmp_dir, args=[
            "--blockdev", "driver=null-co,node-name=n0"]) as d:
        r = run([lockstep_qmp, d.qmp_path],
                stdin='{"execute": "block-dirty-bitmap-add", "arguments": '
                      '{"node": "n0", "name": "b0"}}\n'
                      '{"execute": "block-dirty-bitmap-add", "arguments": '
                      '{"node": "n0", "name": "b0"}}\n')
        assert r.returncode == 1
        assert answers(r.stdout) == [{"return": {}}]
        assert "already exists" in r.stderr
        r = run([lockstep_qmp, d.qmp_path, "quit"])
        assert r.returncode == 0 and answers(r.stdout) == [{"return": {}}]
        d.proc.wait(timeout=20)
