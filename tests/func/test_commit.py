# SPDX-License-Identifier: MIT
"""block-commit on lockstepd: intermediate commit (completes by itself) and
active commit (BLOCK_JOB_READY, mirrors the guest's writes, job-complete
pivots the export onto the base).  Data is checked with qemu-io over NBD
and, after the daemon stopped, on the images; qemu-img check after every
test."""
import os
import subprocess
import time

import pytest

from conftest import build_dir_path
from qmp_client import Daemon, QMPClient

MiB = 1024 * 1024
SIZE = 8 * MiB


def lockstepd():
    path = os.path.join(build_dir_path(), "lockstepd")
    if not os.access(path, os.X_OK):
        pytest.skip("lockstepd is not built")
    return path


def sh(*argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r.stdout


def qemu_io(target, *cmds, fmt="raw"):
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    out = sh(*(argv + [target]))
    assert "fail" not in out.lower() and "error" not in out.lower(), out
    return out


def nbd_url(sock, name):
    return "nbd+unix:///%s?socket=%s" % (name, sock)


def export_top(qmp, d):
    """Serve node "top" writable as export "guest"; returns its URL."""
    sock = os.path.join(d, "nbd.sock")
    qmp.cmd("nbd-server-start", {"addr": {"type": "unix",
                                          "data": {"path": sock}}})
    qmp.cmd("block-export-add", {"type": "nbd", "id": "guest",
                                 "name": "guest", "node-name": "top",
                                 "writable": True})
    return nbd_url(sock, "guest")


def check_clean(*images):
    for img in images:
        sh("qemu-img", "check", "-q", img)


@pytest.fixture
def chain(tmp_path):
    d = str(tmp_path)
    base, mid, top = (os.path.join(d, n + ".qcow2")
                      for n in ("base", "mid", "top"))
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
       mid)
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2",
       top)
    qemu_io(base, "write -P 0x11 0 2M", fmt="qcow2")
    qemu_io(mid, "write -P 0x22 1M 2M", fmt="qcow2")
    qemu_io(top, "write -P 0x33 2M 2M", fmt="qcow2")
    return d, base, mid, top


def add_chain(qmp, base, mid, top):
    qmp.cmd("blockdev-add", {
        "driver": "qcow2", "node-name": "top",
        "file": {"driver": "file", "filename": top},
        "backing": {"driver": "qcow2", "node-name": "mid",
                    "file": {"driver": "file", "filename": mid},
                    "backing": {"driver": "qcow2", "node-name": "base",
                                "file": {"driver": "file",
                                         "filename": base}}}})


def backing_of(qmp, name):
    for n in qmp.cmd("query-named-block-nodes", {"flat": True}):
        if n["node-name"] == name:
            return n.get("backing_file_depth"), n
    return None


def test_intermediate_commit(chain):
    d, base, mid, top = chain
    with Daemon(lockstepd(), d) as dmn:
        qmp = dmn.client()
        add_chain(qmp, base, mid, top)
        url = export_top(qmp, d)
        qmp.cmd("block-commit", {"job-id": "c0", "device": "top",
                                 "top-node": "mid", "base-node": "base"})
        ev = qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="c0")
        assert "error" not in ev["data"], ev
        assert ev["data"]["type"] == "commit"
        # The guest's view is unchanged, and top now reads base directly.
        qemu_io(url, "read -P 0x11 0 1M", "read -P 0x22 1M 1M",
                "read -P 0x33 2M 2M", "read -P 0 4M 4M")
        graph = qmp.cmd("x-debug-query-block-graph")
        names = {n["id"]: n["name"] for n in graph["nodes"]}
        edges = [(names[e["parent"]], e["name"], names[e["child"]])
                 for e in graph["edges"]]
        assert ("top", "backing", "base") in edges, edges
        assert qmp.cmd("query-block-jobs") == []
        qmp.close()
    qemu_io(base, "read -P 0x11 0 1M", "read -P 0x22 1M 2M",
            "read -P 0 3M 5M", fmt="qcow2")
    check_clean(base, mid, top)


def test_commit_errors(chain):
    d, base, mid, top = chain
    with Daemon(lockstepd(), d) as dmn:
        qmp = dmn.client()
        add_chain(qmp, base, mid, top)
        assert qmp.error("block-commit", {"device": "nope"})["desc"] == \
            "Cannot find device='nope' nor node-name='nope'"
        assert qmp.error("block-commit", {"device": "top"})["desc"] == \
            "Invalid job ID ''"
        assert qmp.error("block-commit", {"job-id": "j", "device": "top",
                                          "top-node": "xx"})["desc"] == \
            "Top image file xx not found"
        assert qmp.error("block-commit", {"job-id": "j", "device": "top",
                                          "top-node": "base"})["desc"] == \
            "Top image has no backing file"
        assert "not below" in qmp.error(
            "block-commit", {"job-id": "j", "device": "top", "top-node": "mid",
                             "base-node": "top"})["desc"]
        qmp.close()
    check_clean(base, mid, top)


def test_active_commit_with_writes(chain):
    d, base, mid, top = chain
    with Daemon(lockstepd(), d) as dmn:
        qmp = dmn.client()
        add_chain(qmp, base, mid, top)
        url = export_top(qmp, d)
        qmp.cmd("block-commit", {"job-id": "ac", "device": "top"})
        # Guest writes while the job copies and after it is ready.
        qemu_io(url, "write -P 0x44 5M 512k", "write -P 0x45 0 64k")
        qmp.wait_event_match("BLOCK_JOB_READY", device="ac")
        qemu_io(url, "write -P 0x46 6M 1M", "write -P 0x47 3M 4k")
        jobs = qmp.cmd("query-block-jobs")
        assert jobs[0]["ready"] and jobs[0]["type"] == "commit"
        qmp.cmd("job-complete", {"id": "ac"})
        ev = qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="ac")
        assert "error" not in ev["data"], ev
        # The export writes the base now.
        qemu_io(url, "write -P 0x48 7M 4k")
        graph = qmp.cmd("x-debug-query-block-graph")
        names = {n["id"]: n["name"] for n in graph["nodes"]}
        exp_edges = [names[e["child"]] for e in graph["edges"]
                     if names.get(e["parent"]) in ("guest", None) or
                     e["name"] == "root"]
        assert "base" in exp_edges, graph
        qmp.close()
    qemu_io(base, "read -P 0x45 0 64k", "read -P 0x11 64k 960k",
            "read -P 0x22 1M 1M", "read -P 0x33 2M 1M",
            "read -P 0x47 3M 4k", "read -P 0x33 3076k 1020k",
            "read -P 0 4M 1M", "read -P 0x44 5M 512k",
            "read -P 0 5632k 512k", "read -P 0x46 6M 1M",
            "read -P 0x48 7M 4k", "read -P 0 7172k 1020k", fmt="qcow2")
    check_clean(base, mid, top)


def test_active_commit_cancel_keeps_graph(chain):
    d, base, mid, top = chain
    with Daemon(lockstepd(), d) as dmn:
        qmp = dmn.client()
        add_chain(qmp, base, mid, top)
        qmp.cmd("block-commit", {"job-id": "ac", "device": "top",
                                 "top-node": "top", "base-node": "mid"})
        qmp.wait_event_match("BLOCK_JOB_READY", device="ac")
        qmp.cmd("block-job-cancel", {"device": "ac"})
        # QEMU sends BLOCK_JOB_COMPLETED for a cancel in ready; here the
        # job ends as cancelled (documented in job/commit.c).
        qmp.wait_event_match("BLOCK_JOB_CANCELLED", device="ac")
        graph = qmp.cmd("x-debug-query-block-graph")
        names = {n["id"]: n["name"] for n in graph["nodes"]}
        edges = [(names[e["parent"]], e["name"], names[e["child"]])
                 for e in graph["edges"]]
        assert ("top", "backing", "mid") in edges
        qmp.close()
    qemu_io(mid, "read -P 0x22 1M 1M", "read -P 0x33 2M 2M", fmt="qcow2")
    check_clean(base, mid, top)


def test_active_commit_under_fio(chain):
    """fio writes the export through the whole job and the pivot; the base
    ends up equal to what the export reads afterwards."""
    nbd = pytest.importorskip("nbd")
    d, base, mid, top = chain
    with Daemon(lockstepd(), d) as dmn:
        qmp = dmn.client()
        add_chain(qmp, base, mid, top)
        url = export_top(qmp, d)
        fio = subprocess.Popen(
            ["fio", "--name=w", "--ioengine=nbd", "--uri=" + url,
             "--rw=randwrite", "--bs=4k", "--iodepth=8",
             "--size=%d" % SIZE, "--time_based", "--runtime=3"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)
        qmp.cmd("block-commit", {"job-id": "ac", "device": "top",
                                 "auto-finalize": False})
        qmp.wait_event_match("BLOCK_JOB_READY", device="ac")
        time.sleep(0.5)
        qmp.cmd("job-complete", {"id": "ac"})
        qmp.wait_event_match("BLOCK_JOB_PENDING", id="ac")
        qmp.cmd("job-finalize", {"id": "ac"})
        ev = qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="ac")
        assert "error" not in ev["data"], ev
        out, _ = fio.communicate(timeout=60)
        assert fio.returncode == 0, out
        h = nbd.NBD()
        h.connect_uri(url)
        view = h.pread(SIZE, 0)
        h.shutdown()
        qmp.close()
    raw = os.path.join(d, "base.raw")
    sh("qemu-img", "convert", "-O", "raw", base, raw)
    with open(raw, "rb") as f:
        assert f.read() == view
    check_clean(base, mid, top)


def test_commit_speed_and_pause(chain):
    d, base, mid, top = chain
    with Daemon(lockstepd(), d) as dmn:
        qmp = dmn.client()
        add_chain(qmp, base, mid, top)
        qmp.cmd("block-commit", {"job-id": "c1", "device": "top",
                                 "top-node": "mid", "speed": 1024 * 1024})
        qmp.cmd("job-pause", {"id": "c1"})
        qmp.wait_event_match("JOB_STATUS_CHANGE", id="c1", status="paused")
        qmp.cmd("block-job-set-speed", {"device": "c1", "speed": 0})
        qmp.cmd("job-resume", {"id": "c1"})
        ev = qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="c1")
        assert "error" not in ev["data"] and ev["data"]["len"] == 2 * MiB
        qmp.close()
    qemu_io(base, "read -P 0x11 0 1M", "read -P 0x22 1M 2M", fmt="qcow2")
    check_clean(base, mid, top)


def test_commit_by_file_names(chain):
    """top and base may name the layers by file name, as in QEMU."""
    d, base, mid, top = chain
    with Daemon(lockstepd(), d) as dmn:
        qmp = dmn.client()
        add_chain(qmp, base, mid, top)
        assert "mutually exclusive" in qmp.error(
            "block-commit", {"job-id": "c2", "device": "top", "top": mid,
                             "top-node": "mid"})["desc"]
        qmp.cmd("block-commit", {"job-id": "c2", "device": "top", "top": mid,
                                 "base": base})
        ev = qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="c2")
        assert "error" not in ev["data"], ev
        qmp.close()
    qemu_io(base, "read -P 0x11 0 1M", "read -P 0x22 1M 2M", fmt="qcow2")
    check_clean(base, mid, top)
