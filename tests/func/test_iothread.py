"""The iothread object's properties: poll-max-ns, poll-grow and
poll-shrink tune how an export's threads busy-poll (tests/unit/
test-poll-adapt.c has the arithmetic); aio-max-batch, thread-pool-min
and thread-pool-max have nothing to act on in lockstep, so only QEMU's
defaults are taken, named in the error otherwise.  Range errors are
qemu-storage-daemon's, compared on the command line."""
import os

import pytest

from conftest import run
from qmp_client import Daemon

DEFAULTS = {"poll-max-ns": 32768, "poll-grow": 0, "poll-shrink": 0,
            "aio-max-batch": 0, "thread-pool-min": 0,
            "thread-pool-max": 64}

# Refused by both daemons, with the same message.
BAD_RANGES = [
    ("poll-max-ns=-1",
     "poll-max-ns value must be in range [0, 9223372036854775807]"),
    ("poll-grow=-1",
     "poll-grow value must be in range [0, 9223372036854775807]"),
    ("poll-shrink=-2",
     "poll-shrink value must be in range [0, 9223372036854775807]"),
    ("aio-max-batch=-1",
     "aio-max-batch value must be in range [0, 9223372036854775807]"),
    ("thread-pool-min=-1",
     "thread-pool-min value must be in range [0, 9223372036854775807]"),
    ("thread-pool-max=0", "bad thread-pool-min/thread-pool-max values"),
    ("thread-pool-min=65", "bad thread-pool-min/thread-pool-max values"),
]

# QEMU takes these; lockstep has nothing to apply them to.
UNSUPPORTED = [
    ("aio-max-batch=8", "aio-max-batch is not supported (only 0, the "
     "default)"),
    ("thread-pool-min=2", "thread-pool-min is not supported (only the "
     "default, 0)"),
    ("thread-pool-max=16", "thread-pool-max is not supported (only the "
     "default, 64)"),
    ("thread-pool-min=0,thread-pool-max=128", "thread-pool-max is not "
     "supported (only the default, 64)"),
]


def keyval_to_json(kv):
    return {k: int(v) for k, v in (p.split("=") for p in kv.split(","))}


@pytest.mark.parametrize("daemon", ["lockstepd", "qsd"])
@pytest.mark.parametrize("props,msg", BAD_RANGES)
def test_command_line_ranges_as_qemu(request, daemon, props, msg):
    binary = request.getfixturevalue(daemon)
    r = run([binary, "--object", "iothread,id=io0," + props], timeout=20)
    assert r.returncode == 1
    assert r.stderr.endswith("--object iothread,id=io0,%s: %s\n"
                             % (props, msg)), r.stderr


@pytest.mark.parametrize("props,msg", UNSUPPORTED)
def test_command_line_refuses_what_it_cannot_do(lockstepd, props, msg):
    r = run([lockstepd, "--object", "iothread,id=io0," + props], timeout=20)
    assert r.returncode == 1
    assert ("lockstepd: --object iothread,id=io0,%s: %s" % (props, msg)) \
        in r.stderr, r.stderr


@pytest.mark.parametrize("daemon", ["lockstepd", "qsd"])
def test_defaults_spelled_out(request, daemon, tmp_dir):
    """Scripts that pass QEMU's defaults keep working, on the command line
    and over QMP, and qom-get reports the values (defaults included) as
    qemu-storage-daemon does."""
    binary = request.getfixturevalue(daemon)
    spelled = ",".join("%s=%d" % kv for kv in DEFAULTS.items())
    with Daemon(binary, tmp_dir, [
            "--object", "iothread,id=io0," + spelled,
            "--object", "iothread,id=io1,poll-max-ns=0,poll-grow=4,"
                        "poll-shrink=2"]) as d:
        with d.client() as c:
            c.cmd("object-add", {"qom-type": "iothread", "id": "io2",
                                 **DEFAULTS})
            c.cmd("object-add", {"qom-type": "iothread", "id": "io3"})
            for name, value in DEFAULTS.items():
                for obj in ("io0", "io2", "io3"):
                    assert c.cmd("qom-get", {"path": "/objects/" + obj,
                                             "property": name}) == value
            got = [c.cmd("qom-get", {"path": "/objects/io1", "property": p})
                   for p in ("poll-max-ns", "poll-grow", "poll-shrink")]
            assert got == [0, 4, 2]
        assert d.stop() == 0


def test_object_add_errors(lockstepd, tmp_dir):
    with Daemon(lockstepd, tmp_dir) as d:
        with d.client() as c:
            for props, msg in BAD_RANGES + UNSUPPORTED:
                e = c.error("object-add", {"qom-type": "iothread",
                                           "id": "io0",
                                           **keyval_to_json(props)})
                assert e["class"] == "GenericError"
                assert e["desc"].startswith(msg), (props, e)
            # Nothing was made by the failures.
            c.cmd("object-add", {"qom-type": "iothread", "id": "io0"})
        assert d.stop() == 0


def test_export_takes_the_iothread_polling(lockstepd, tmp_dir):
    """An export on an iothread that does not poll serves as before."""
    nbd = os.path.join(tmp_dir, "nbd.sock")
    with Daemon(lockstepd, tmp_dir, [
            "--object", "iothread,id=io0,poll-max-ns=0",
            "--object", "iothread,id=io1,poll-max-ns=1000000,poll-grow=3,"
                        "poll-shrink=2",
            "--blockdev", "null-co,node-name=n0,size=1M",
            "--nbd-server", "addr.type=unix,addr.path=%s" % nbd,
            "--export", "type=nbd,id=e0,node-name=n0,name=a,iothread=io0",
            "--export", "type=nbd,id=e1,node-name=n0,name=b,"
                        "iothread=io1"]) as d:
        for name in ("a", "b"):
            r = run(["qemu-io", "-r", "-f", "raw"] +
                    sum([["-c", "read -P 0 %d 4k" % (i * 4096)]
                         for i in range(50)], []) +
                    ["nbd+unix:///%s?socket=%s" % (name, nbd)])
            assert r.returncode == 0, r.stderr
            assert "Pattern verification failed" not in r.stdout
        assert d.stop() == 0
