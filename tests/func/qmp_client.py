# SPDX-License-Identifier: MIT
"""A small QMP client for the functional tests.

Works against lockstepd and qemu-storage-daemon alike: connects to a unix
socket, reads the greeting, negotiates capabilities, runs commands with an
"id" and collects the events that arrive in between.
"""
import itertools
import json
import os
import signal
import socket
import subprocess
import time

import direct


class QMPError(Exception):
    def __init__(self, error):
        super().__init__("%s: %s" % (error.get("class"), error.get("desc")))
        self.error = error
        self.cls = error.get("class")
        self.desc = error.get("desc")


class QMPClient:
    def __init__(self, path, timeout=30.0, negotiate=True):
        """path: a unix socket path, or (host, port) for TCP."""
        family = socket.AF_INET if isinstance(path, tuple) else \
            socket.AF_UNIX
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.ids = itertools.count(1)
        self.greeting = self.recv()
        if negotiate:
            self.cmd("qmp_capabilities")

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- Wire level --------------------------------------------------
    def send_raw(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send(self, obj):
        self.send_raw(json.dumps(obj) + "\n")

    def recv(self):
        """The next message (one line), or None at end of stream."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def recv_response(self):
        """The next response, collecting events that come first."""
        while True:
            msg = self.recv()
            if msg is None:
                raise EOFError("connection closed")
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    # ---- Commands ----------------------------------------------------
    def execute(self, name, args=None, id=None):
        """Run a command; returns the whole response."""
        req = {"execute": name}
        if args is not None:
            # The O_DIRECT pass: file nodes get cache.direct (direct.py).
            if name in ("blockdev-add", "blockdev-reopen"):
                args = direct.blockdev(args)
            req["arguments"] = args
        req["id"] = next(self.ids) if id is None else id
        self.send(req)
        resp = self.recv_response()
        assert resp.get("id") == req["id"], (req, resp)
        return resp

    def cmd(self, name, args=None, **kwargs):
        """Run a command; returns its "return" value or raises QMPError."""
        if kwargs:
            args = dict(args or {})
            args.update({k.replace("_", "-"): v for k, v in kwargs.items()})
        resp = self.execute(name, args)
        if "error" in resp:
            raise QMPError(resp["error"])
        return resp["return"]

    def error(self, name, args=None):
        """Run a command that must fail; returns the error object."""
        resp = self.execute(name, args)
        assert "error" in resp, resp
        return resp["error"]

    def _read_event(self, deadline, what):
        """Read one more message before deadline, keeping it if it is an
        event; TimeoutError(what()) when the deadline has passed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(what())
        self.sock.settimeout(left)
        try:
            msg = self.recv()
        finally:
            self.sock.settimeout(30.0)
        if msg is None:
            raise EOFError("connection closed")
        if "event" in msg:
            self.events.append(msg)

    def wait_event(self, name, timeout=10.0):
        """Wait for (and remove) the first event called name."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name:
                    return self.events.pop(i)
            self._read_event(deadline, lambda: "no %s event" % name)

    def wait_event_match(self, name, timeout=30, **match):
        """Wait for the first event called name whose data has match
        (keyword names as in QMP, e.g. device="j0"); drop it and the events
        before it."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name and all(
                        ev.get("data", {}).get(k) == v
                        for k, v in match.items()):
                    del self.events[:i + 1]
                    return ev
            self._read_event(deadline, lambda: "no event %s %s in %s" %
                             (name, match, self.events))


def wait_for_socket(path, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                s.close()
                return
            except OSError:
                pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("daemon exited with %d: %s"
                               % (proc.returncode, proc.stderr.read()))
        time.sleep(0.02)
    raise TimeoutError("socket %s did not appear" % path)


def wait_for_pidfile(path, proc, timeout=30.0):
    """Both daemons write their PID file once every command-line option
    is done (sockets listening, exports added): the sign they are ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if f.read().endswith("\n"):
                    return
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("daemon exited with %d: %s"
                               % (proc.returncode, proc.stderr.read()))
        time.sleep(0.02)
    raise TimeoutError("PID file %s did not appear" % path)


class Daemon:
    """A lockstepd or qemu-storage-daemon process with one QMP socket.
    The constructor returns once the daemon is ready: all its options
    done, so every socket and export they name is there (the QMP socket
    listens first, before the NBD server and the exports)."""

    def __init__(self, binary, tmp_dir, args=(), name="qmp"):
        self.qmp_path = os.path.join(tmp_dir, name + ".sock")
        args = direct.daemon_argv(args)
        ready = None
        if "--pidfile" not in args and "--daemonize" not in args:
            ready = os.path.join(tmp_dir, name + ".pid")
            if os.path.exists(ready):   # an earlier daemon's
                os.unlink(ready)
            args = args + ["--pidfile", ready]
        self.argv = [binary,
                     "--chardev", "socket,id=mon0,path=%s,server=on,wait=off"
                     % self.qmp_path,
                     "--monitor", "chardev=mon0"] + args
        self.stderr = None
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        if ready:
            wait_for_pidfile(ready, self.proc)
        else:
            wait_for_socket(self.qmp_path, self.proc)

    def client(self, negotiate=True):
        return QMPClient(self.qmp_path, negotiate=negotiate)

    def stop(self, timeout=20):
        if self.stderr is not None:
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
        # Sanitizer builds report here without always failing the exit.
        for bad in ("runtime error:", "AddressSanitizer", "LeakSanitizer",
                    "ThreadSanitizer"):
            assert bad not in (self.stderr or ""), self.stderr
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class DiskDaemon:
    """A daemon (lockstepd or qemu-storage-daemon) with one QMP client: the
    common part of the tests' "disk" wrappers.  Subclasses build the
    daemon's arguments and call start(); nbd is the NBD socket, if any."""

    nbd = None
    export = "disk"

    def start(self, binary, tmp_dir, name, args):
        self.d = Daemon(binary, tmp_dir, name=name, args=args)
        self.c = self.d.client()

    def url(self, export=None):
        return "nbd+unix:///%s?socket=%s" % (export or self.export, self.nbd)

    def write(self, *cmds):
        """qemu-io commands on the NBD export; each must succeed."""
        argv = ["qemu-io", "-f", "raw"]
        for c in cmds:
            argv += ["-c", c]
        p = subprocess.run(direct.argv(argv + [self.url()]), capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0 and "failed" not in p.stdout, \
            (p.stdout, p.stderr)

    def bitmaps(self, node="disk"):
        """{name: entry} of the node's dirty-bitmaps in
        query-named-block-nodes."""
        for n in self.c.cmd("query-named-block-nodes"):
            if n["node-name"] == node:
                return {b["name"]: b for b in n.get("dirty-bitmaps", [])}
        raise AssertionError("no node " + node)

    def quit(self):
        self.c.cmd("quit")
        self.c.close()
        assert self.d.stop() == 0, self.d.stderr

    def kill(self):
        self.c.close()
        self.d.proc.send_signal(signal.SIGKILL)
        self.d.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.d.proc.poll() is None:
            self.c.close()
            self.d.stop()
