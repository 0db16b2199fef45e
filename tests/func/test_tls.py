# SPDX-License-Identifier: MIT
"""TLS and authorization on lockstepd's network paths, with real peers.

Credentials are made for the module with certtool and psktool
(tls_setup.py): one CA with server and client certificates, a second CA,
expired and not yet valid certificates, and PSK files.

- The NBD server in TLS-required mode: nbdinfo, nbdcopy (libnbd),
  qemu-io and qemu-img with x509 and PSK; a plain client learns nothing
  (every option but STARTTLS gets NBD_REP_ERR_TLS_REQD).
- Refusals with a reason on both sides: wrong CA, expired and not yet
  valid certificates, no client certificate, wrong PSK, authz denials,
  an authz-listfile changed at run time.
- Hostile TLS clients: garbage after STARTTLS, and clients that stall
  mid-handshake hold no thread and are dropped at the handshake deadline.
- The nbd driver over TLS against qemu-nbd, nbdkit and lockstepd itself;
  a replication pair whose link is TLS, with checkpoints and failover.
"""
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

from conftest import make_image, run
from qmp_client import Daemon
from test_nbd_server import (OPT_ABORT, OPT_EXPORT_NAME,
                             OPT_GO, OPT_INFO, OPT_LIST, OPT_STARTTLS,
                             OPT_STRUCTURED_REPLY, REP_ACK, RawClient,
                             free_port, timeout_guard)  # noqa: F401
from test_nbd_slow_clients import peer_closed, threads_in_peer_io
import tls_setup

KiB = 1024
MiB = 1024 * KiB
REP_ERR_TLS_REQD = 0x80000005


def need(prog):
    if not shutil.which(prog):
        pytest.skip("%s is not installed" % prog)


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    """Every credentials directory the tests use, made once."""
    need("certtool")
    need("psktool")
    top = str(tmp_path_factory.mktemp("tls"))
    ca = tls_setup.make_ca(os.path.join(top, "ca"))
    other = tls_setup.make_ca(os.path.join(top, "ca2"), cn="Another CA")
    c = {"top": top}
    mk = tls_setup.make_x509_dir
    c["server"] = mk(os.path.join(top, "server"), ca, "server")
    c["client"] = mk(os.path.join(top, "client"), ca, "client")
    c["bob"] = mk(os.path.join(top, "bob"), ca, "client", cn="bob")
    c["other-ca"] = mk(os.path.join(top, "other-ca"), other, "client",
                       trust=ca)
    c["distrust"] = mk(os.path.join(top, "distrust"), ca, "client",
                       trust=other)
    c["expired"] = mk(os.path.join(top, "expired"), ca, "client",
                      validity="expired")
    c["future"] = mk(os.path.join(top, "future"), ca, "client",
                     validity="future")
    c["server-expired"] = mk(os.path.join(top, "server-expired"), ca,
                             "server", validity="expired")
    nocert = os.path.join(top, "nocert")
    os.makedirs(nocert)
    shutil.copy(ca.cert, os.path.join(nocert, "ca-cert.pem"))
    c["nocert"] = nocert
    c["client-dn"] = tls_setup.client_dn(c["client"])
    c["psk"] = tls_setup.make_psk_dir(os.path.join(top, "psk"),
                                      ("alice", "bob"))
    alice = os.path.join(top, "psk-alice")
    os.makedirs(alice)
    with open(os.path.join(alice, "keys.psk"), "w") as f:
        f.write("alice:%s\n" % tls_setup.psk_key(c["psk"], "alice"))
    c["psk-alice"] = alice
    c["psk-wrong"] = tls_setup.make_psk_dir(os.path.join(top, "psk-wrong"),
                                            ("alice",))
    return c


def x509_uri(port, cdir, export="disk"):
    return "nbds://127.0.0.1:%d/%s?tls-certificates=%s" % (port, export,
                                                          cdir)


def psk_uri(port, pdir, user="alice", export="disk"):
    return "nbds://%s@127.0.0.1:%d/%s?tls-psk-file=%s/keys.psk" % (
        user, port, export, pdir)


def start(lockstepd, tmp_dir, objects, server_opts, img=None,
          writable=True, size=16 * MiB):
    """lockstepd with --object's, a TCP NBD server with server_opts and
    one export "disk"; returns (daemon, port)."""
    img = img or make_image(os.path.join(tmp_dir, "disk.raw"), size)
    port = free_port()
    args = []
    for o in objects:
        args += ["--object", o]
    args += ["--blockdev", "driver=file,node-name=disk,filename=" + img,
             "--nbd-server", "addr.type=inet,addr.host=127.0.0.1,"
             "addr.port=%d%s" % (port, server_opts),
             "--export", "type=nbd,id=e0,node-name=disk,writable=%s"
             % ("on" if writable else "off")]
    d = Daemon(lockstepd, tmp_dir, args)
    with d.client() as c:       # started once the monitor answers
        c.cmd("query-block-exports")
    return d, port


def x509_server(creds, extra=""):
    return "tls-creds-x509,id=tls0,dir=%s,endpoint=server%s" % (
        creds["server"], extra)


def stop_log(d):
    """Stop the daemon; its stderr."""
    assert d.stop() == 0, d.stderr
    return d.stderr


def refused(uri):
    r = run(["nbdinfo", "--size", uri], timeout=30)
    assert r.returncode != 0, r.stdout
    return r.stderr


# ---- Serving over TLS ------------------------------------------------------

def test_x509_real_clients(lockstepd, creds, tmp_dir):
    """nbdcopy writes and reads through TLS, qemu-io and qemu-img use
    QEMU's tls-creds-x509 objects, and the data lands on the disk."""
    need("nbdcopy")
    need("qemu-io")
    need("qemu-img")
    d, port = start(lockstepd, tmp_dir, [x509_server(creds)],
                    ",tls-creds=tls0")
    with d:
        src = os.path.join(tmp_dir, "src.raw")
        with open(src, "wb") as f:
            f.write(os.urandom(4 * MiB) + b"\x5a" * (12 * MiB))
        r = run(["nbdcopy", src, x509_uri(port, creds["client"])])
        assert r.returncode == 0, r.stderr
        out = os.path.join(tmp_dir, "out.raw")
        r = run(["nbdcopy", x509_uri(port, creds["client"]), out])
        assert r.returncode == 0, r.stderr
        with open(src, "rb") as a, open(out, "rb") as b:
            assert a.read() == b.read()
        obj = ("tls-creds-x509,id=c0,dir=%s,endpoint=client"
               % creds["client"])
        opts = ("driver=nbd,server.type=inet,server.host=127.0.0.1,"
                "server.port=%d,export=disk,tls-creds=c0" % port)
        r = run(["qemu-io", "--object", obj, "--image-opts", opts,
                 "-c", "write -P 0x61 1M 1M", "-c", "read -P 0x61 1M 1M"])
        assert r.returncode == 0 and "fail" not in r.stdout, r
        r = run(["qemu-img", "compare", "--object", obj, "--image-opts",
                 opts, "driver=raw,file.driver=file,file.filename=" + src])
        assert r.returncode == 1, r       # differs where qemu-io wrote
        r = run(["qemu-img", "info", "--object", obj, "--image-opts",
                 opts])
        assert r.returncode == 0 and "16 MiB" in r.stdout, r
        stop_log(d)
    with open(os.path.join(tmp_dir, "disk.raw"), "rb") as f:
        f.seek(MiB)
        assert f.read(MiB) == b"\x61" * MiB


def test_psk_real_clients(lockstepd, creds, tmp_dir):
    """PSK: nbdcopy round trip as alice; a wrong key or an unknown user
    is refused."""
    need("nbdcopy")
    need("qemu-io")
    d, port = start(lockstepd, tmp_dir, [
        "tls-creds-psk,id=tls0,dir=%s,endpoint=server" % creds["psk"]],
        ",tls-creds=tls0")
    with d:
        src = os.path.join(tmp_dir, "src.raw")
        with open(src, "wb") as f:
            f.write(os.urandom(16 * MiB))
        r = run(["nbdcopy", src, psk_uri(port, creds["psk-alice"])])
        assert r.returncode == 0, r.stderr
        out = os.path.join(tmp_dir, "out.raw")
        r = run(["nbdcopy", psk_uri(port, creds["psk-alice"]), out])
        assert r.returncode == 0, r.stderr
        with open(src, "rb") as a, open(out, "rb") as b:
            assert a.read() == b.read()
        # QEMU's PSK client object (username=alice) reads it too.
        r = run(["qemu-io", "--object",
                 "tls-creds-psk,id=c0,dir=%s,endpoint=client,username=alice"
                 % creds["psk-alice"], "--image-opts",
                 "driver=nbd,server.type=inet,server.host=127.0.0.1,"
                 "server.port=%d,export=disk,tls-creds=c0" % port,
                 "-c", "read -v 0 16"])
        assert r.returncode == 0 and "fail" not in r.stdout, r
        err = refused(psk_uri(port, creds["psk-wrong"]))
        assert "tls" in err.lower() or "gnutls" in err.lower(), err
        err = refused(psk_uri(port, creds["psk-alice"], user="carol"))
        log = stop_log(d)
    assert log.count("TLS handshake failed") >= 2, log


def test_plain_client_learns_nothing(lockstepd, creds, tmp_dir):
    """TLS required: LIST, INFO, GO, STRUCTURED_REPLY get
    NBD_REP_ERR_TLS_REQD, EXPORT_NAME closes, ABORT is honoured; no reply
    carries the export's name or size.  Plain libnbd and QEMU clients
    fail with a clear error."""
    d, port = start(lockstepd, tmp_dir, [x509_server(creds)],
                    ",tls-creds=tls0", size=13 * MiB)
    with d:
        c = RawClient(port=port)
        c.greet()
        seen = b""
        for opt, data in ((OPT_LIST, b""), (OPT_STRUCTURED_REPLY, b""),
                          (OPT_INFO, RawClient.info_data("disk")),
                          (OPT_GO, RawClient.info_data("disk"))):
            replies = c.opt_replies(opt, data)
            assert [t for t, _ in replies] == [REP_ERR_TLS_REQD], replies
            seen += b"".join(p for _, p in replies)
        assert b"disk" not in seen
        assert struct.pack(">Q", 13 * MiB) not in seen
        replies = c.opt_replies(OPT_ABORT)
        assert replies[0][0] == REP_ACK
        c.close()
        c = RawClient(port=port)
        c.greet()
        c.opt(OPT_EXPORT_NAME, b"disk")
        with pytest.raises((EOFError, ConnectionResetError)):
            c.recv(1)
        c.close()
        err = refused("nbd://127.0.0.1:%d/disk" % port)
        assert "TLS" in err, err
        if shutil.which("qemu-io"):
            r = run(["qemu-io", "-r", "-f", "raw", "-c", "read 0 512",
                     "nbd://127.0.0.1:%d/disk" % port])
            assert r.returncode != 0 or "fail" in r.stdout, r
            assert "TLS" in r.stdout + r.stderr, r
        log = stop_log(d)
    assert "TLS is required" in log, log


def tls_after_starttls(port, cdir):
    """A raw client that does STARTTLS, then TLS with Python's ssl using
    the x509 client directory cdir; returns the TLS socket."""
    c = RawClient(port=port)
    c.greet()
    replies = c.opt_replies(OPT_STARTTLS)
    assert replies == [(REP_ACK, b"")]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(cdir, "ca-cert.pem"))
    ctx.load_cert_chain(os.path.join(cdir, "client-cert.pem"),
                        os.path.join(cdir, "client-key.pem"))
    return ctx.wrap_socket(c.s, server_hostname="localhost")


def test_options_after_starttls(lockstepd, creds, tmp_dir):
    """After STARTTLS the options work through TLS, and a second
    STARTTLS is refused."""
    d, port = start(lockstepd, tmp_dir, [x509_server(creds)],
                    ",tls-creds=tls0")
    with d:
        t = tls_after_starttls(port, creds["client"])
        c = RawClient.__new__(RawClient)
        c.s = t
        replies = c.opt_replies(OPT_LIST)
        assert replies[-1][0] == REP_ACK
        assert any(b"disk" in p for _, p in replies)
        assert c.opt_replies(OPT_STARTTLS)[-1][0] & 0x80000000
        t.close()
        stop_log(d)


def libnbd_cipher(uri):
    """The cipher libnbd reports for a connection to uri (its debug log)."""
    r = subprocess.run(["nbdinfo", "--size", uri], capture_output=True,
                       text=True, timeout=60,
                       env=dict(os.environ, LIBNBD_DEBUG="1"))
    assert r.returncode == 0, r.stderr
    for line in r.stderr.splitlines():
        if "connection is using TLS: cipher " in line:
            return line.split("cipher ")[1].split()[0]
    raise AssertionError("no TLS cipher in libnbd's log: %s" % r.stderr)


def qemu_img_cipher(port, cdir):
    """The cipher suite qemu-img's GnuTLS selects (its debug log)."""
    obj = "tls-creds-x509,id=c0,dir=%s,endpoint=client" % cdir
    opts = ("driver=nbd,server.type=inet,server.host=127.0.0.1,"
            "server.port=%d,export=disk,tls-creds=c0" % port)
    r = subprocess.run(["qemu-img", "info", "--object", obj,
                        "--image-opts", opts], capture_output=True,
                       text=True, timeout=60,
                       env=dict(os.environ, GNUTLS_DEBUG_LEVEL="4"))
    assert r.returncode == 0, r.stderr
    for line in r.stderr.splitlines():
        if "Selected cipher suite: " in line:
            return line.split("suite: ")[1].strip()
    raise AssertionError("no cipher suite in GnuTLS' log: %s" % r.stderr)


@pytest.mark.parametrize("priority,cipher,suite", [
    (None, "AES-128-GCM", "TLS_AES_128_GCM_SHA256"),
    ("NORMAL", "AES-256-GCM", "TLS_AES_256_GCM_SHA384"),
])
def test_cipher_preference(lockstepd, creds, tmp_dir, priority, cipher,
                           suite):
    """Without priority= the server's order decides and puts AES-128-GCM
    first, although libnbd and qemu-img (GnuTLS) and Python (OpenSSL)
    clients list AES-256-GCM first; priority=NORMAL gives the choice back
    to the client (QEMU's default)."""
    need("nbdinfo")
    need("qemu-img")
    extra = ",priority=%s" % priority if priority else ""
    d, port = start(lockstepd, tmp_dir, [x509_server(creds, extra)],
                    ",tls-creds=tls0")
    with d:
        assert libnbd_cipher(x509_uri(port, creds["client"])) == cipher
        assert qemu_img_cipher(port, creds["client"]) == "GNUTLS_" + \
            suite[len("TLS_"):]
        t = tls_after_starttls(port, creds["client"])
        assert t.version() == "TLSv1.3"
        assert t.cipher()[0] == suite
        t.close()
        stop_log(d)


# ---- Refusals --------------------------------------------------------------

@pytest.mark.parametrize("who,why", [
    ("other-ca", "sent no certificate"),
    ("expired", "has expired"),
    ("future", "not yet activated"),
    ("nocert", "sent no certificate"),
])
def test_x509_client_refused(lockstepd, creds, tmp_dir, who, why):
    d, port = start(lockstepd, tmp_dir, [x509_server(creds)],
                    ",tls-creds=tls0")
    with d:
        err = refused(x509_uri(port, creds[who]))
        assert "tls" in err.lower() or "alert" in err.lower(), err
        log = stop_log(d)
    assert why in log, log


def test_client_distrusts_server(lockstepd, creds, tmp_dir):
    """A client whose CA did not sign the server's certificate stops."""
    d, port = start(lockstepd, tmp_dir, [x509_server(creds)],
                    ",tls-creds=tls0")
    with d:
        err = refused(x509_uri(port, creds["distrust"]))
        assert "certificate" in err.lower() or "verif" in err.lower(), err
        stop_log(d)


def test_server_credentials_checked(lockstepd, creds, tmp_dir):
    """Bad credentials fail object-add or nbd-server-start, not
    clients."""
    with Daemon(lockstepd, tmp_dir) as d:
        with d.client() as c:
            e = c.error("object-add", {
                "qom-type": "tls-creds-x509", "id": "x",
                "dir": creds["server-expired"], "endpoint": "server"})
            assert "has expired" in e["desc"], e
            e = c.error("object-add", {
                "qom-type": "tls-creds-x509", "id": "x",
                "dir": os.path.join(tmp_dir, "nowhere"),
                "endpoint": "server"})
            assert "nowhere" in e["desc"], e
            e = c.error("object-add", {
                "qom-type": "tls-creds-psk", "id": "x",
                "dir": creds["psk"], "endpoint": "server",
                "priority": "NOT-A-PRIORITY"})
            assert "priority" in e["desc"], e
            c.cmd("object-add", {"qom-type": "tls-creds-x509", "id": "cli",
                                 "dir": creds["client"]})
            addr = {"type": "inet", "data": {"host": "127.0.0.1",
                                             "port": str(free_port())}}
            e = c.error("nbd-server-start", {"addr": addr,
                                             "tls-creds": "cli"})
            assert "server endpoint" in e["desc"], e
            e = c.error("nbd-server-start", {"addr": addr,
                                             "tls-creds": "nope"})
            assert "nope" in e["desc"], e
            e = c.error("nbd-server-start", {"addr": addr,
                                             "tls-authz": "a0"})
            assert "tls-creds" in e["desc"], e
            c.cmd("object-add", {"qom-type": "tls-creds-x509", "id": "srv",
                                 "dir": creds["server"],
                                 "endpoint": "server", "verify-peer": False})
            e = c.error("nbd-server-start", {"addr": addr,
                                             "tls-creds": "srv",
                                             "tls-authz": "a0"})
            assert "verify-peer" in e["desc"], e
            assert c.cmd("qom-get", {"path": "/objects/srv",
                                     "property": "endpoint"}) == "server"
            assert c.cmd("qom-get", {"path": "/objects/srv",
                                     "property": "verify-peer"}) is False
        stop_log(d)


def test_object_del_keeps_running_server(lockstepd, creds, tmp_dir):
    """object-del of the credentials a running server uses is allowed (as
    in QEMU) and does not take them from it; the id is free again."""
    d, port = start(lockstepd, tmp_dir, [x509_server(creds)],
                    ",tls-creds=tls0")
    with d:
        with d.client() as c:
            e = c.error("object-add", {"qom-type": "tls-creds-psk",
                                       "id": "tls0", "dir": creds["psk"],
                                       "endpoint": "server"})
            assert "tls0" in e["desc"], e
            c.cmd("object-del", {"id": "tls0"})
            e = c.error("qom-get", {"path": "/objects/tls0",
                                    "property": "dir"})
            assert "not found" in e["desc"], e
            r = run(["nbdinfo", "--size", x509_uri(port, creds["client"])])
            assert r.returncode == 0, r.stderr
            c.cmd("object-add", {"qom-type": "tls-creds-psk", "id": "tls0",
                                 "dir": creds["psk"], "endpoint": "server"})
        stop_log(d)


# ---- Authorization ---------------------------------------------------------

def test_authz_simple_and_list(lockstepd, creds, tmp_dir):
    """authz-simple allows the client's DN only; swapping the authz
    object over QMP (object-del, object-add) changes who gets in; a
    missing authz object denies everyone."""
    need("nbdinfo")
    d, port = start(lockstepd, tmp_dir, [
        x509_server(creds),
        "authz-simple,id=auth0,identity=%s"
        % creds["client-dn"].replace(",", ",,")],
        ",tls-creds=tls0,tls-authz=auth0")
    with d:
        uri = x509_uri(port, creds["client"])
        r = run(["nbdinfo", "--size", uri])
        assert r.returncode == 0 and r.stdout.strip() == str(16 * MiB), r
        refused(x509_uri(port, creds["bob"]))
        with d.client() as c:
            c.cmd("object-del", {"id": "auth0"})
            refused(uri)
            c.cmd("object-add", {
                "qom-type": "authz-list", "id": "auth0", "policy": "deny",
                "rules": [{"match": "*,CN=bob", "policy": "deny",
                           "format": "glob"},
                          {"match": "*Lockstep Tests*", "policy": "allow",
                           "format": "glob"}]})
            assert c.cmd("qom-get", {"path": "/objects/auth0",
                                     "property": "policy"}) == "deny"
        r = run(["nbdinfo", "--size", uri])
        assert r.returncode == 0, r.stderr
        refused(x509_uri(port, creds["bob"]))
        log = stop_log(d)
    assert "authz check for" in log and "bob" in log, log
    assert "Cannot find QAuthZ object ID auth0" in log, log


def test_authz_psk_username(lockstepd, creds, tmp_dir):
    """With PSK the user name is the identity."""
    d, port = start(lockstepd, tmp_dir, [
        "tls-creds-psk,id=tls0,dir=%s,endpoint=server" % creds["psk"],
        "authz-simple,id=auth0,identity=bob"],
        ",tls-creds=tls0,tls-authz=auth0")
    with d:
        refused(psk_uri(port, creds["psk"], user="alice"))
        r = run(["nbdinfo", "--size", psk_uri(port, creds["psk"],
                                              user="bob")])
        assert r.returncode == 0, r.stderr
        log = stop_log(d)
    assert "TLS PSK authz check for alice is denied" in log, log


def test_authz_listfile_refresh(lockstepd, creds, tmp_dir):
    """authz-listfile with refresh=on: a rewritten file decides the next
    connections; a broken file denies everyone until it is fixed."""
    lf = os.path.join(tmp_dir, "authz.json")

    def write(policy):
        tmp = lf + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"policy": "deny", "rules": [
                {"match": creds["client-dn"], "policy": policy}]}, f)
        os.rename(tmp, lf)

    write("allow")
    d, port = start(lockstepd, tmp_dir, [
        x509_server(creds),
        "authz-listfile,id=auth0,filename=%s,refresh=on" % lf],
        ",tls-creds=tls0,tls-authz=auth0")
    with d:
        uri = x509_uri(port, creds["client"])
        assert run(["nbdinfo", "--size", uri]).returncode == 0
        write("deny")
        refused(uri)
        with open(lf, "w") as f:
            f.write("{ not json")
        refused(uri)
        write("allow")
        assert run(["nbdinfo", "--size", uri]).returncode == 0
        log = stop_log(d)
    assert "authz-listfile 'auth0'" in log, log


# ---- Hostile TLS clients ---------------------------------------------------

def starttls_raw(port):
    c = RawClient(port=port)
    c.greet()
    assert c.opt_replies(OPT_STARTTLS) == [(REP_ACK, b"")]
    return c


@pytest.mark.serial       # wall-clock limits
def test_tls_garbage_and_stalled_handshakes(lockstepd, creds, tmp_dir):
    """After STARTTLS: garbage is dropped at once; 20 clients that stop
    mid-handshake (half a ClientHello, or nothing) hold no thread, do
    not keep a good client out, and are dropped at the deadline (3 s
    after each connected; a loaded machine may take a while to connect
    them all, so each is judged by its own age)."""
    need("nbdinfo")
    limit = 3
    d, port = start(lockstepd, tmp_dir, [x509_server(creds)],
                    ",tls-creds=tls0,handshake-max-seconds=%d" % limit)
    with d:
        g = starttls_raw(port)
        g.s.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(200))
        with pytest.raises((EOFError, ConnectionResetError)):
            g.recv(4096)
        g.close()
        stalled = []
        for i in range(20):
            t = time.monotonic()
            c = starttls_raw(port)
            if i % 2:
                # The first bytes of a TLS record header that promises more.
                c.s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01")
            stalled.append((t, c))
        time.sleep(0.5)
        assert threads_in_peer_io(d.proc.pid) == 0
        young = [c for t, c in stalled if time.monotonic() - t < limit - 0.5]
        assert not any(peer_closed(c.s) for c in young)
        r = run(["nbdinfo", "--size", x509_uri(port, creds["client"])],
                timeout=20)
        assert r.returncode == 0, r.stderr
        time.sleep(max(0, stalled[-1][0] + limit + 1.5 - time.monotonic()))
        assert all(peer_closed(c.s) for _, c in stalled)
        for _, c in stalled:
            c.close()
        log = stop_log(d)
    assert "TLS handshake failed" in log, log


# ---- The nbd driver over TLS -----------------------------------------------

def nbd_node(port, creds_id, export, **extra):
    node = {"driver": "nbd", "node-name": "n0",
            "server": {"type": "inet", "host": "127.0.0.1",
                       "port": str(port)},
            "export": export, "tls-creds": creds_id}
    node.update(extra)
    return node


def read_through(c, tmp_dir, pattern_ok):
    """Export node n0 on a unix socket and check its first MiB with
    qemu-io."""
    sock = os.path.join(tmp_dir, "out.sock")
    c.cmd("nbd-server-start", {"addr": {"type": "unix",
                                        "data": {"path": sock}}})
    c.cmd("block-export-add", {"type": "nbd", "id": "out",
                               "node-name": "n0"})
    r = run(["qemu-io", "-r", "-f", "raw", "-c",
             "read -P 0x%x 0 1M" % pattern_ok,
             "nbd+unix:///n0?socket=" + sock])
    assert r.returncode == 0 and "fail" not in r.stdout, r
    c.cmd("nbd-server-stop")


def test_nbd_driver_against_qemu_nbd(lockstepd, creds, tmp_dir):
    need("qemu-nbd")
    need("qemu-io")
    img = make_image(os.path.join(tmp_dir, "q.raw"), 4 * MiB, fill=0x3c)
    port = free_port()
    qn = run_bg(["qemu-nbd", "--object",
                 "tls-creds-x509,id=t0,dir=%s,endpoint=server"
                 % creds["server"], "--tls-creds", "t0", "-f", "raw",
                 "-b", "127.0.0.1", "-p", str(port), "-x", "e", "-t", img])
    try:
        wait_port(port, qn)
        with Daemon(lockstepd, tmp_dir) as d:
            with d.client() as c:
                e = c.error("blockdev-add", nbd_node(port, None, "e"))
                assert "TLS" in e["desc"] or "tls" in e["desc"], e
                c.cmd("object-add", {"qom-type": "tls-creds-x509",
                                     "id": "c0", "dir": creds["client"],
                                     "endpoint": "client"})
                c.cmd("object-add", {"qom-type": "tls-creds-x509",
                                     "id": "s0", "dir": creds["server"],
                                     "endpoint": "server"})
                e = c.error("blockdev-add", nbd_node(port, "s0", "e"))
                assert "client endpoint" in e["desc"], e
                e = c.error("blockdev-add", nbd_node(port, "c0", "e",
                                                     **{"tls-hostname":
                                                        "elsewhere"}))
                assert "tls-hostname" in e["desc"], e
                e = c.error("blockdev-add", {
                    "driver": "nbd", "node-name": "u0", "export": "e",
                    "server": {"type": "unix",
                               "path": os.path.join(tmp_dir, "none.sock")},
                    "tls-creds": "c0", "tls-hostname": "localhost"})
                assert "unix socket" in e["desc"], e
                c.cmd("blockdev-add", nbd_node(port, "c0", "e",
                                               **{"tls-hostname":
                                                  "127.0.0.1"}))
                # Deleting the object keeps the node's credentials.
                c.cmd("object-del", {"id": "c0"})
                read_through(c, tmp_dir, 0x3c)
            stop_log(d)
    finally:
        qn.terminate()
        qn.wait(timeout=20)


def test_nbd_driver_against_nbdkit_psk(lockstepd, creds, tmp_dir):
    need("nbdkit")
    need("qemu-io")
    img = make_image(os.path.join(tmp_dir, "k.raw"), 4 * MiB, fill=0x4d)
    port = free_port()
    kit = run_bg(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                  "--tls=require",
                  "--tls-psk=" + os.path.join(creds["psk"], "keys.psk"),
                  "file", img])
    try:
        wait_port(port, kit)
        with Daemon(lockstepd, tmp_dir) as d:
            with d.client() as c:
                c.cmd("object-add", {"qom-type": "tls-creds-psk",
                                     "id": "c0", "dir": creds["psk-wrong"],
                                     "endpoint": "client",
                                     "username": "alice"})
                e = c.error("blockdev-add", nbd_node(port, "c0", ""))
                assert "Failed to connect" in e["desc"], e
                c.cmd("object-add", {"qom-type": "tls-creds-psk",
                                     "id": "c1", "dir": creds["psk-alice"],
                                     "endpoint": "client",
                                     "username": "alice"})
                c.cmd("blockdev-add", nbd_node(port, "c1", ""))
                read_through(c, tmp_dir, 0x4d)
            stop_log(d)
    finally:
        kit.terminate()
        kit.wait(timeout=20)


def run_bg(argv):
    import subprocess
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_port(port, proc, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("port %d never opened" % port)


# ---- Many large replies at once ---------------------------------------------

# Read sizes around the TLS record size (16 KiB), the send batch (128 KiB)
# and well past both.
READ_SIZES = [1, 4096, 16 * KiB - 28, 16 * KiB, 16 * KiB + 1, 100 * KiB,
              128 * KiB - 1, 128 * KiB + 16 * KiB, 256 * KiB, MiB + 3,
              8 * MiB, 32 * MiB]


def check_reads(uri, data, seed, structured=True, stall=0.0):
    """Requests of READ_SIZES at random offsets, 16 at a time on one
    connection, each compared with the image; with stall, the client
    stops reading for that long while they are queued, so that the
    server's sends wait for the socket in the middle of a reply."""
    import random
    import nbd
    rnd = random.Random(seed)
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    try:
        todo = [rnd.choice(READ_SIZES) for _ in range(30)] + READ_SIZES
        rnd.shuffle(todo)
        while todo:
            batch, todo = todo[:16], todo[16:]
            reqs = []
            for size in batch:
                off = rnd.randrange(0, len(data) - size + 1)
                buf = nbd.Buffer(size)
                reqs.append((h.aio_pread(buf, off), buf, off, size))
            if stall:
                time.sleep(stall)
            for cookie, buf, off, size in reqs:
                while not h.aio_command_completed(cookie):
                    h.poll(-1)
                assert buf.to_bytearray() == data[off:off + size], \
                    "read of %d at %d" % (size, off)
    finally:
        h.shutdown()


def test_large_reads_in_parallel_over_tls(lockstepd, creds, tmp_dir):
    """Replies of many sizes to requests in flight together, on several
    TLS connections at once, simple and structured, with clients that
    stop reading while replies are being sent: every read gives the
    image's bytes (replies neither interleave nor lose a record)."""
    import threading
    pytest.importorskip("nbd")
    img = os.path.join(tmp_dir, "rand.raw")
    data = os.urandom(48 * MiB)
    with open(img, "wb") as f:
        f.write(data)
    d, port = start(lockstepd, tmp_dir, [x509_server(creds)],
                    ",tls-creds=tls0", img=img, writable=False)
    with d:
        uri = x509_uri(port, creds["client"])
        errors = []

        def one(seed, **kw):
            try:
                check_reads(uri, data, seed, **kw)
            except Exception as e:      # reported by the main thread
                errors.append(e)
        threads = [threading.Thread(target=one, args=(1,)),
                   threading.Thread(target=one, args=(2,),
                                    kwargs={"structured": False}),
                   threading.Thread(target=one, args=(3,),
                                    kwargs={"stall": 0.3}),
                   threading.Thread(target=one, args=(4,),
                                    kwargs={"structured": False,
                                            "stall": 0.3})]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        stop_log(d)


# ---- Fleecing over TLS ------------------------------------------------------

def test_fleecing_snapshot_read_over_tls(lockstepd, creds, tmp_dir):
    """fleecing-start on a PSK TLS server with authz: the guest export
    is overwritten over TLS, then the snapshot is read with nbdcopy over
    TLS and still holds the old data; another user is refused."""
    need("nbdcopy")
    need("qemu-img")
    img = os.path.join(tmp_dir, "disk0.qcow2")
    tmp = os.path.join(tmp_dir, "fleece.qcow2")
    for path in (img, tmp):
        r = run(["qemu-img", "create", "-q", "-f", "qcow2", path, "8M"])
        assert r.returncode == 0, r.stderr
    r = run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5d 0 8M", img])
    assert r.returncode == 0, r.stderr
    port = free_port()
    d = Daemon(lockstepd, tmp_dir, [
        "--object", "tls-creds-psk,id=tls0,dir=%s,endpoint=server"
        % creds["psk"],
        "--object", "authz-simple,id=auth0,identity=alice",
        "--blockdev", "driver=file,node-name=f0,filename=" + img,
        "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
        "--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=%d,"
        "tls-creds=tls0,tls-authz=auth0" % port,
        "--export", "type=nbd,id=guest,node-name=disk0,name=guest,"
        "writable=on"])
    with d:
        with d.client() as c:
            c.cmd("fleecing-start", {
                "id": "bk", "node": "disk0", "export-name": "snap",
                "temp": {"filename": tmp, "format": "qcow2"}})
            guest = psk_uri(port, creds["psk-alice"], export="guest")
            src = make_image(os.path.join(tmp_dir, "w.raw"), 8 * MiB, 0x77)
            r = run(["nbdcopy", src, guest])       # the guest writes
            assert r.returncode == 0, r.stderr
            r = run(["nbdcopy", guest, os.path.join(tmp_dir, "now.raw")])
            assert r.returncode == 0, r.stderr
            out = os.path.join(tmp_dir, "backup.raw")
            r = run(["nbdcopy", psk_uri(port, creds["psk-alice"],
                                        export="snap"), out])
            assert r.returncode == 0, r.stderr
            refused(psk_uri(port, creds["psk"], user="bob", export="snap"))
            c.cmd("fleecing-stop", {"id": "bk"})
        stop_log(d)
    with open(out, "rb") as f:
        assert f.read() == b"\x5d" * (8 * MiB)
    with open(os.path.join(tmp_dir, "now.raw"), "rb") as f:
        assert f.read() == b"\x77" * (8 * MiB)


# ---- Replication over TLS --------------------------------------------------

@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_replication_pair_over_tls(creds, tmp_path, transport):
    """The primary's NBD child reaches the secondary with x509 TLS:
    random writes on both sides with checkpoints, then failover; the
    secondary's disk is the secondary's view."""
    import test_replication as tr
    if tr.nbd is None:
        pytest.skip("python3-libnbd is not installed")
    d = str(tmp_path)
    imgs = tr.create_images(d)
    sec = tr.Secondary(d, transport, imgs["sec"], imgs["active"],
                       imgs["hidden"], tls=(creds["server"],
                                            creds["client"]))
    pri = tr.Primary(d, sec.server, imgs["p-local"],
                     tls_dir=creds["client"])
    try:
        sec.start()
        pri.start()
        pri.qmp.cmd("xen-colo-do-checkpoint")
        _, view = tr.run_model(pri, sec, 7, 300, checkpoints=True,
                               check_every=100)
        sec.qmp.cmd("nbd-server-stop")
        sec.qmp.cmd("replication-stop", {"failover": True})
    finally:
        pri.stop()
        sec.stop()
    assert tr.image_bytes(imgs["sec"], d) == view
    tr.check_clean(imgs)


# ---- Warnings --------------------------------------------------------------

def test_warning_for_plain_tcp_beyond_loopback(lockstepd, tmp_dir):
    """A writable export on a non-loopback address without TLS warns; on
    loopback it does not."""
    img = make_image(os.path.join(tmp_dir, "w.raw"), MiB)
    for host, warns in (("0.0.0.0", True), ("127.0.0.1", False)):
        d = Daemon(lockstepd, tmp_dir, [
            "--blockdev", "driver=file,node-name=disk,filename=" + img,
            "--nbd-server", "addr.type=inet,addr.host=%s,addr.port=%d"
            % (host, free_port()),
            "--export", "type=nbd,id=e0,node-name=disk,writable=on"])
        with d.client() as c:
            c.cmd("query-block-exports")
        log = stop_log(d)
        assert ("without TLS" in log) == warns, log


def test_warning_for_tcp_monitor_beyond_loopback(lockstepd, tmp_dir):
    """QMP has no authentication: a TCP monitor off loopback warns."""
    import subprocess
    from qmp_client import QMPClient
    for host, warns in (("0.0.0.0", True), ("127.0.0.1", False)):
        port = free_port()
        p = subprocess.Popen([
            lockstepd, "--chardev", "socket,id=m0,host=%s,port=%d,"
            "server=on,wait=off" % (host, port), "--monitor", "chardev=m0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_port(port, p)
            with QMPClient(("127.0.0.1", port)) as c:
                c.cmd("query-block-exports")
        finally:
            p.terminate()
            _, err = p.communicate(timeout=20)
        assert ("monitor listens on" in err) == warns, err
