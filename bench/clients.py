# SPDX-License-Identifier: MIT
"""The clients, the same for every daemon: fio (ioengine=nbd), nbdcopy, and
our vhost-user-blk front-end (tests/vhost/vhost-client)."""
import json
import subprocess
import time


def nbd_uri(sock, export):
    return "nbd+unix:///%s?socket=%s" % (export, sock)


def fio_argv(uri, rw, bs, iodepth, runtime=None, size=None, offset=None):
    argv = ["fio", "--name=bench", "--ioengine=nbd", "--uri=" + uri,
            "--rw=" + rw, "--bs=" + bs, "--iodepth=%d" % iodepth,
            "--numjobs=1", "--output-format=json", "--randrepeat=0",
            "--norandommap"]
    if runtime is not None:
        argv += ["--time_based", "--runtime=%g" % runtime]
    if size is not None:
        argv.append("--size=" + size)
    if offset is not None:
        argv.append("--offset=" + offset)
    return argv


def fio(uri, rw, bs, iodepth, runtime=None, size=None, offset=None):
    """Run one fio job; returns {'iops', 'mibs', 'bytes', 'seconds'}."""
    r = subprocess.run(fio_argv(uri, rw, bs, iodepth, runtime, size, offset),
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("fio failed: %s %s" % (r.stdout[-2000:],
                                                  r.stderr[-2000:]))
    out = r.stdout[r.stdout.index("{"):]
    job = json.loads(out)["jobs"][0]
    iops = job["read"]["iops"] + job["write"]["iops"]
    nbytes = job["read"]["io_bytes"] + job["write"]["io_bytes"]
    secs = max(job["job_runtime"], 1) / 1000.0
    return {"iops": iops, "mibs": nbytes / secs / 2**20, "bytes": nbytes,
            "seconds": secs}


def fio_background(uri, rw, bs, iodepth, runtime):
    return subprocess.Popen(fio_argv(uri, rw, bs, iodepth, runtime),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def nbdcopy(uri, size):
    """Copy the export to null:; returns {'mibs', 'bytes', 'seconds'}."""
    t0 = time.monotonic()
    r = subprocess.run(["nbdcopy", uri, "null:"], capture_output=True,
                       text=True, timeout=600)
    secs = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("nbdcopy failed: %s" % r.stderr)
    return {"mibs": size / secs / 2**20, "bytes": size, "seconds": secs}


def vhost_bench(client, sock, rw, bs, iodepth, runtime, queues=1,
                size=None):
    """tests/vhost/vhost-client's bench mode (our vhost-user-blk
    front-end): {"iops", "mibs", "lat_us", "errors", "bytes"}."""
    argv = [client, "-d", str(iodepth), "-q", str(queues), "-i"]
    if size:
        argv += ["-s", str(size)]
    argv += [sock, "bench", rw, str(parse_size(bs)), str(runtime)]
    p = subprocess.run(argv, capture_output=True, text=True,
                       timeout=runtime + 120)
    if p.returncode != 0:
        raise RuntimeError("vhost-client: %s %s" % (p.stdout, p.stderr))
    out = json.loads(p.stdout)
    out["bytes"] = int(out["mibs"] * (1 << 20) * runtime)
    return out


def parse_size(s):
    s = str(s)
    mult = {"k": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1])
    return int(s[:-1]) * mult if mult else int(s)
