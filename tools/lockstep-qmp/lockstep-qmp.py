#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""lockstep-qmp: run QMP commands on a daemon's monitor socket.

For shell scripts and for pasting the examples of docs/*.md: it waits for
the socket (so it can follow "lockstepd ... &" at once), negotiates
capabilities, runs each command in turn, prints each answer on one line,
and stops with exit status 1 at the first error.  Works against lockstepd
and qemu-storage-daemon alike.  Only the Python standard library is used.
"""
import argparse
import json
import socket
import sys
import time

USAGE = """\
lockstep-qmp [OPTIONS] SOCKET [COMMAND...]

Each COMMAND is either a whole QMP command as JSON
  '{"execute": "query-block-exports"}'
or a command name, optionally followed by its arguments as a JSON object
  block-export-del '{"id": "exp0"}'
Without COMMAND, JSON commands are read from standard input (one or more,
spread over any number of lines), so a block of QMP lines pastes as is:
  lockstep-qmp qmp.sock <<'EOF'
  {"execute": "query-version"}
  EOF
qmp_capabilities is sent first unless the first command is that.
Exit status: 0 when every command succeeded, 1 at the first error (the
commands after it are not run), 2 when the socket could not be reached
or the input is not valid."""


class Usage(Exception):
    pass


def parse_commands(args, stdin):
    """The commands to run, as (name, request) pairs."""
    cmds = []
    if not args:
        text = stdin.read()
        dec = json.JSONDecoder()
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            try:
                obj, pos = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise Usage("standard input: %s" % e)
            cmds.append(command(obj, "standard input"))
        return cmds
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg.lstrip().startswith("{"):
            cmds.append(command(load(arg), arg))
            continue
        req = {"execute": arg}
        if i < len(args) and args[i].lstrip().startswith("{"):
            params = load(args[i])
            if "execute" not in params:
                req["arguments"] = params
                i += 1
        cmds.append(command(req, arg))
    return cmds


def load(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise Usage("%s: %s" % (text, e))


def command(obj, where):
    if not isinstance(obj, dict) or not isinstance(obj.get("execute"), str):
        raise Usage("%s: not a QMP command (an object with \"execute\")"
                    % where)
    return obj["execute"], obj


class Monitor:
    """One QMP connection: requests go out as lines, answers and events
    come back as lines."""

    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError as e:
                self.sock.close()
                if time.monotonic() >= deadline:
                    raise OSError("%s: %s" % (path, e.strerror))
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self.events = []
        self.sock.settimeout(timeout)
        if self.read() is None:
            raise OSError("%s: closed before the greeting" % path)
        self.sock.settimeout(None)

    def read(self):
        line = self.file.readline()
        return json.loads(line) if line else None

    def run(self, req):
        self.file.write(json.dumps(req).encode() + b"\n")
        self.file.flush()
        while True:
            msg = self.read()
            if msg is None:
                raise EOFError("the daemon closed the connection")
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def wait_event(self, name, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name:
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                msg = self.read()
            except (socket.timeout, TimeoutError):
                return None
            if msg is None:
                raise EOFError("the daemon closed the connection")
            if "event" in msg:
                self.events.append(msg)


def main(argv):
    p = argparse.ArgumentParser(prog="lockstep-qmp", usage=USAGE,
                                add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-t", "--timeout", type=float, default=10.0,
                   help="seconds to wait for the socket (default 10)")
    p.add_argument("-w", "--wait-event", metavar="NAME",
                   help="after the commands, wait for event NAME and "
                   "print it")
    p.add_argument("--event-timeout", type=float, default=60.0,
                   help="seconds to wait for --wait-event (default 60)")
    p.add_argument("-p", "--pretty", action="store_true",
                   help="indent the answers")
    p.add_argument("socket", nargs="?")
    p.add_argument("commands", nargs=argparse.REMAINDER)
    opts = p.parse_args(argv)
    if opts.help:
        print(USAGE + "\n\nOptions:\n"
              "  -t, --timeout SECS      wait this long for the socket "
              "(default 10)\n"
              "  -w, --wait-event NAME   after the commands, wait for event "
              "NAME and print it\n"
              "  --event-timeout SECS    give up waiting for it after SECS "
              "(default 60)\n"
              "  -p, --pretty            indent the answers\n"
              "  -h, --help              this text")
        return 0
    if not opts.socket:
        print("lockstep-qmp: missing SOCKET (see --help)", file=sys.stderr)
        return 2
    try:
        cmds = parse_commands(opts.commands, sys.stdin)
    except Usage as e:
        print("lockstep-qmp: %s" % e, file=sys.stderr)
        return 2
    indent = 2 if opts.pretty else None
    try:
        mon = Monitor(opts.socket, opts.timeout)
        if not cmds or cmds[0][0] != "qmp_capabilities":
            cmds.insert(0, ("qmp_capabilities",
                            {"execute": "qmp_capabilities"}))
            quiet_first = True
        else:
            quiet_first = False
        for n, (name, req) in enumerate(cmds):
            answer = mon.run(req)
            if "error" in answer:
                print("lockstep-qmp: %s: %s" % (name,
                      answer["error"].get("desc", answer["error"])),
                      file=sys.stderr)
                return 1
            if n > 0 or not quiet_first:
                answer.pop("id", None)
                print(json.dumps(answer, indent=indent), flush=True)
        if opts.wait_event:
            ev = mon.wait_event(opts.wait_event, opts.event_timeout)
            if ev is None:
                print("lockstep-qmp: no %s event within %g seconds"
                      % (opts.wait_event, opts.event_timeout),
                      file=sys.stderr)
                return 1
            print(json.dumps(ev, indent=indent), flush=True)
    except (OSError, EOFError, ValueError) as e:
        print("lockstep-qmp: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
