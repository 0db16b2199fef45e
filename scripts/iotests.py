#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QEMU's own bash iotests, run against lockstep-img and lockstep-io.

`make iotests` calls this.  It fetches the source of Debian's qemu package
(the same version as the installed qemu-utils) into a cache folder outside
the repository, picks the bash tests that use only qemu-img and qemu-io,
runs them with tests/qemu-iotests/check (-qcow2 and -raw, file protocol)
once with QEMU's tools (the baseline, cached per QEMU version) and once with
ours, and writes docs/iotests.md.  Nothing of QEMU's tests is copied into
this repository.  Each test runs by its own check call (-j at a time),
killed with everything it started after --timeout seconds: a hang counts
as a failure and the run goes on.

Our tools run under the names qemu-img and qemu-io (copies in a temporary
folder): started by those names they print "qemu-img:"/"qemu-io:" in their
messages, as the tests' filters expect.

Runs (--runs, comma separated):
  qemu   QEMU's qemu-img and qemu-io (cached: --rerun-baseline to redo)
  ours   lockstep-img and lockstep-io
  img    lockstep-img with QEMU's qemu-io
  io     QEMU's qemu-img with lockstep-io
"""
import argparse
import concurrent.futures
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CACHE = os.environ.get("LOCKSTEP_IOTESTS_CACHE",
                               "/var/cache/lockstep-iotests")
KNOWN = os.path.join(TOP, "tests", "iotests", "known-failures.txt")
DEBSRC = "/etc/apt/sources.list.d/lockstep-deb-src.sources"
FORMATS = ("qcow2", "raw")
# The set: QEMU's "quick" group and these.
EXTRA_QUICK = {"015", "017", "018", "019", "020", "021", "022"}

# A test that matches one of these needs more than qemu-img and qemu-io.
NEEDS_MORE = [
    (re.compile(r"\$\{?QEMU\}?(?![_A-Z])|\$QEMU_PROG|_launch_qemu|"
                r"common\.qemu"), "runs a QEMU VM"),
    (re.compile(r"QEMU_NBD|qemu-nbd|common\.nbd|_launch_nbd"),
     "runs qemu-nbd"),
    (re.compile(r"\$QSD|QSD_PROG|qemu-storage-daemon|_launch_qsd"),
     "runs qemu-storage-daemon"),
]


def log(msg):
    print("iotests: " + msg, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ---- Fetching QEMU's source ------------------------------------------------

def qemu_source_version():
    out = subprocess.run(["dpkg-query", "-W", "-f=${source:Version}",
                          "qemu-utils"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout:
        sys.exit("iotests: qemu-utils is not installed (make deps)")
    return out.stdout.strip()


def ensure_deb_src():
    """A deb-src line for the suites the machine's deb lines use."""
    if os.path.exists(DEBSRC):
        return
    listing = subprocess.run(["apt-get", "indextargets",
                              "--format", "$(CREATED_BY)"],
                             capture_output=True, text=True).stdout
    if "Sources" in listing:
        return
    log("adding " + DEBSRC)
    with open(DEBSRC, "w") as f:
        f.write("# Added by lockstep's make iotests: QEMU's source for its "
                "iotests.\n"
                "Types: deb-src\n"
                "URIs: http://deb.debian.org/debian\n"
                "Suites: bookworm bookworm-updates\n"
                "Components: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
                "\n"
                "Types: deb-src\n"
                "URIs: http://deb.debian.org/debian-security\n"
                "Suites: bookworm-security\n"
                "Components: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    run(["apt-get", "update", "-qq"])


def fetch_source(cache, version):
    """The iotests folder of qemu's source at version, fetched if missing."""
    upstream = version.split(":")[-1].rsplit("-", 1)[0]
    srcdir = os.path.join(cache, "qemu-" + upstream)
    iotests = os.path.join(srcdir, "tests", "qemu-iotests")
    stamp = os.path.join(cache, "fetched-" + version)
    if os.path.exists(stamp) and os.path.exists(os.path.join(iotests,
                                                             "check")):
        return iotests
    os.makedirs(cache, exist_ok=True)
    if shutil.which("dpkg-source") is None:
        run(["apt-get", "install", "-y", "-qq", "dpkg-dev"])
    ensure_deb_src()
    if os.path.exists(srcdir):
        shutil.rmtree(srcdir)
    log("fetching qemu %s source into %s" % (version, cache))
    run(["apt-get", "source", "-qq", "qemu=" + version], cwd=cache,
        stdout=subprocess.DEVNULL)
    open(stamp, "w").close()
    return iotests


# ---- Selecting the tests ------------------------------------------------------

def test_files(iotests):
    names = sorted(n for n in os.listdir(iotests) if re.fullmatch(r"\d{3}", n))
    names += sorted("tests/" + n for n in
                    os.listdir(os.path.join(iotests, "tests"))
                    if "." not in n)
    return names


def classify(iotests, name):
    """(groups, reason it is left out or None) for one test file."""
    with open(os.path.join(iotests, name), errors="replace") as f:
        text = f.read()
    if not text.startswith("#!") or "bash" not in text.split("\n", 1)[0]:
        return set(), "a Python test"
    groups = set()
    m = re.search(r"^# group:(.*)$", text, re.M)
    if m:
        groups = set(m.group(1).split())
    # Comments do not count ("# don't use $QEMU here").
    code = "\n".join(line for line in text.split("\n")
                     if not line.lstrip().startswith("#"))
    for pattern, why in NEEDS_MORE:
        if pattern.search(code):
            return groups, why
    m = re.search(r"^\s*_supported_proto\s+(.*)$", code, re.M)
    if m and not {"file", "generic"} & set(m.group(1).split()):
        return groups, "not the file protocol"
    return groups, None


def select(iotests, which):
    chosen, left_out = [], {}
    for name in test_files(iotests):
        groups, why = classify(iotests, name)
        if why:
            left_out[name] = why
            continue
        quick = "quick" in groups or name in EXTRA_QUICK
        if which == "all" or (which == "quick") == quick:
            chosen.append(name)
    return chosen, left_out


# ---- Running check ---------------------------------------------------------------

def tool_dir(work, run_name, build):
    """A folder with qemu-img and qemu-io for this run."""
    d = os.path.join(work, "bin-" + run_name)
    os.makedirs(d, exist_ok=True)
    ours = {"qemu-img": os.path.join(build, "lockstep-img"),
            "qemu-io": os.path.join(build, "lockstep-io")}
    qemu = {"qemu-img": shutil.which("qemu-img"),
            "qemu-io": shutil.which("qemu-io")}
    pick = {"qemu": qemu, "ours": ours,
            "img": {"qemu-img": ours["qemu-img"], "qemu-io": qemu["qemu-io"]},
            "io": {"qemu-img": qemu["qemu-img"], "qemu-io": ours["qemu-io"]}
            }[run_name]
    for name, target in pick.items():
        if not target or not os.path.exists(target):
            sys.exit("iotests: %s not found (%s)" % (name, target))
        if target in ours.values():
            # A copy: a rebuild while the tests run does not disturb them.
            shutil.copy2(target, os.path.join(d, name))
        else:
            os.symlink(os.path.abspath(target), os.path.join(d, name))
    return d


def reference(iotests, name, fmt):
    base = os.path.join(iotests, name)
    for ref in (base + ".out." + fmt, base + ".out"):
        if os.path.exists(ref):
            return ref
    return base + ".out"


def first_difference(ref, bad, limit=3):
    """The first lines that differ, shortened, for the table."""
    try:
        with open(ref, errors="replace") as f:
            a = f.read().splitlines()
        with open(bad, errors="replace") as f:
            b = f.read().splitlines()
    except OSError:
        return ""
    lines = []
    for line in difflib.unified_diff(a, b, lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        lines.append(line[:140])
        if len(lines) >= limit:
            break
    return " / ".join(lines)


def parse_result(tap, name, tdir, iotests, fmt):
    """(status, detail) of one test from check's TAP output."""
    base = os.path.join(tdir, os.path.basename(name))
    for line in tap.splitlines():
        m = re.fullmatch(r"(not ok|ok) \S+ (\S+)( # SKIP)?", line)
        if not m or os.path.basename(name) != os.path.basename(m.group(2)):
            continue
        if m.group(3):
            try:
                with open(base + ".notrun") as f:
                    return "not run", f.read().strip()
            except OSError:
                return "not run", ""
        if m.group(1) == "ok":
            return "pass", ""
        diff = first_difference(reference(iotests, name, fmt),
                                base + ".out.bad")
        # The run's own folders, as the tests' filters write them.
        return "fail", diff.replace(tdir, "TEST_DIR")
    return "fail", "no result from check"


def last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    return lines[-1][:140] if lines else ""


def run_one(iotests, env, test_dir, name, fmt, timeout):
    """Run one test by check, in a folder of its own, killed (with all it
    started) after timeout seconds; (status, detail)."""
    tdir = os.path.join(test_dir, os.path.basename(name))
    sdir = os.path.join(test_dir, "sock", os.path.basename(name))
    os.makedirs(tdir)
    os.makedirs(sdir)
    p = subprocess.Popen(["./check", "-tap", "-" + fmt, name], cwd=iotests,
                         env=dict(env, TEST_DIR=tdir, SOCK_DIR=sdir),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # check, the test's shell and the tools share its process group.
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        tail = last_line(os.path.join(tdir, os.path.basename(name) +
                                      ".out.bad"))
        return "fail", "timed out after %d s%s" % (
            timeout, " (last output: %s)" % tail if tail else "")
    return parse_result(out, name, tdir, iotests, fmt)


def run_check(iotests, work, run_name, fmt, tests, build, jobs, timeout):
    """Run the tests for one format, jobs at a time; {test: (status,
    detail)} and the time it took."""
    bindir = os.path.join(work, "bin-" + run_name)
    if not os.path.isdir(bindir):
        tool_dir(work, run_name, build)
    test_dir = os.path.join(work, "%s-%s" % (run_name, fmt))
    shutil.rmtree(test_dir, ignore_errors=True)
    os.makedirs(test_dir)
    env = dict(os.environ)
    env.update({
        "QEMU_IMG_PROG": os.path.join(bindir, "qemu-img"),
        "QEMU_IO_PROG": os.path.join(bindir, "qemu-io"),
        # check wants them all to exist; the selected tests never run them.
        "QEMU_PROG": shutil.which("qemu-system-x86_64") or "/bin/false",
        "QEMU_NBD_PROG": shutil.which("qemu-nbd") or "/bin/false",
        "QSD_PROG": shutil.which("qemu-storage-daemon") or "/bin/false",
    })
    log("%s, %s: %d tests" % (run_name, fmt, len(tests)))
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {t: pool.submit(run_one, iotests, env, test_dir, t, fmt,
                                  timeout) for t in tests}
        results = {t: f.result() for t, f in futures.items()}
    n = sum(1 for s, _ in results.values() if s == "pass")
    log("%s, %s: %d passed in %.0f s" % (run_name, fmt, n, time.time() - t0))
    return results, time.time() - t0


# ---- Report ----------------------------------------------------------------------

def load_known():
    """Hand-written reasons: 'TEST FMT|* reason' lines."""
    known = {}
    try:
        with open(KNOWN) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                test, fmt, reason = line.split(None, 2)
                known[(test, fmt)] = reason
    except OSError:
        pass
    return known


def reason_for(known, test, fmt, status, detail):
    why = known.get((test, fmt)) or known.get((test, "*"))
    if why:
        return why
    if status == "fail":
        return "output differs: `%s`" % detail.replace("`", "'") \
            if detail else "fails"
    return detail


CELL = {"pass": "pass", "fail": "**fail**", "not run": "not run", None: "-"}


def write_report(path, which, tests, left_out, results, runs, times,
                 version):
    known = load_known()
    out = []
    out.append("# QEMU's iotests against lockstep-img and lockstep-io\n")
    out.append("Written by `make iotests` (scripts/iotests.py); do not edit "
               "by hand.  QEMU %s's bash iotests (Debian's qemu source "
               "package), run by its own `check -qcow2` and `check -raw` "
               "(file protocol) with `QEMU_IMG_PROG`/`QEMU_IO_PROG` set to "
               "the tools of each run.  Runs: **QEMU** = qemu-img and "
               "qemu-io 7.2 (the baseline), **ours** = lockstep-img and "
               "lockstep-io" % version)
    if "img" in runs:
        out[-1] += ", **img** = lockstep-img with QEMU's qemu-io"
    if "io" in runs:
        out[-1] += ", **io** = QEMU's qemu-img with lockstep-io"
    out[-1] += ".\n"
    out.append("Test set: %s.  The tests that need more than qemu-img and "
               "qemu-io (a QEMU VM, qemu-nbd, qemu-storage-daemon, another "
               "protocol) are left out; Python tests too.\n" %
               {"quick": "QEMU's `quick` group plus 015 and 017-022",
                "rest": "every bash test not in docs/iotests.md's set "
                        "(QEMU's `quick` group plus 015 and 017-022)",
                "all": "every bash test"}[which])
    if which == "quick":
        out[-1] += ("The other bash tests that need only qemu-img and "
                    "qemu-io: docs/iotests-rest.md (`make iotests "
                    "IOTESTS_ARGS='--set rest'`).\n")
    out.append("## Summary\n")
    out.append("| run | format | pass | fail | not run | of QEMU's passes "
               "| time |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        for fmt in FORMATS:
            res = results.get((r, fmt))
            if not res:
                continue
            base = results.get(("qemu", fmt), {})
            count = {s: sum(1 for t in tests if res[t][0] == s)
                     for s in ("pass", "fail", "not run")}
            qp = [t for t in tests if base.get(t, ("",))[0] == "pass"]
            both = sum(1 for t in qp if res[t][0] == "pass")
            out.append("| %s | %s | %d | %d | %d | %d of %d | %.0f s |" % (
                r, fmt, count["pass"], count["fail"], count["not run"], both,
                len(qp), times.get((r, fmt), 0)))
    total_q = total_o = 0
    for fmt in FORMATS:
        base = results.get(("qemu", fmt), {})
        ours = results.get(("ours", fmt), {})
        for t in tests:
            if base.get(t, ("",))[0] == "pass":
                total_q += 1
                total_o += ours.get(t, ("",))[0] == "pass"
    out.append("\nOf the %d test runs (test and format) that pass with "
               "QEMU's tools, **%d pass with ours**.\n" % (total_q, total_o))
    out.append("## Per test\n")
    out.append("Reasons are given for our failures (the first lines of the "
               "output diff, or a known cause from "
               "tests/iotests/known-failures.txt) and for tests QEMU "
               "does not run.\n")
    head = "| test |"
    for fmt in FORMATS:
        for r in runs:
            head += " %s %s |" % (fmt, "QEMU" if r == "qemu" else r)
    out.append(head + " reason |")
    out.append("|" + " --- |" * (1 + len(FORMATS) * len(runs) + 1))
    for t in tests:
        row = "| %s |" % t
        reasons = []
        for fmt in FORMATS:
            for r in runs:
                st, detail = results.get((r, fmt), {}).get(t, (None, ""))
                row += " %s |" % CELL[st]
                if r == "qemu" and st == "not run":
                    why = "%s: not run by QEMU either (%s)" % (fmt, detail)
                    if why not in reasons and not any(
                            x.startswith(fmt) for x in reasons):
                        reasons.append(why)
                elif r != "qemu" and st == "fail":
                    reasons.append("%s %s: %s" % (
                        fmt, r, reason_for(known, t, fmt, st, detail)))
        row += " %s |" % "<br>".join(x.replace("|", "\\|") for x in reasons)
        out.append(row)
    by_reason = {}
    for t in tests:
        for fmt in FORMATS:
            for r in runs:
                st, detail = results.get((r, fmt), {}).get(t, (None, ""))
                if r == "qemu" or st != "fail":
                    continue
                why = known.get((t, fmt)) or known.get((t, "*"))
                if not why:
                    why = ("timed out" if detail.startswith("timed out")
                           else "output differs (see the table)")
                by_reason.setdefault(why, []).append("%s %s%s" % (
                    t, fmt, "" if r == "ours" else " (%s)" % r))
    if by_reason:
        out.append("\n## Our failures by cause\n")
        for why, ts in sorted(by_reason.items(), key=lambda x: -len(x[1])):
            out.append("- %s: %s" % (why, ", ".join(ts)))
    if left_out:
        out.append("\n## Left out\n")
        out.append("Bash tests not in the set because they need more than "
                   "qemu-img and qemu-io:\n")
        by_why = {}
        for t, why in left_out.items():
            if why != "a Python test":
                by_why.setdefault(why, []).append(t)
        for why, ts in sorted(by_why.items()):
            out.append("- %s: %s" % (why, ", ".join(ts)))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--build", default=os.path.join(TOP, "build"))
    p.add_argument("--cache", default=DEFAULT_CACHE)
    p.add_argument("--set", dest="which", choices=("quick", "rest", "all"),
                   default="quick")
    p.add_argument("--runs", default="qemu,ours")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--rerun-baseline", action="store_true")
    p.add_argument("-j", "--jobs", type=int, default=2)
    p.add_argument("--timeout", type=int, default=300,
                   help="seconds a test may take (default 300): then it "
                   "is killed and counts as failed")
    p.add_argument("--report", default=None,
                   help="where the table goes (default docs/iotests.md, "
                   "docs/iotests-rest.md for --set rest, "
                   "docs/iotests-all.md for --set all)")
    p.add_argument("--no-report", action="store_true",
                   help="only print the results")
    p.add_argument("--list", action="store_true",
                   help="print the selected tests and exit")
    p.add_argument("tests", nargs="*", help="only these tests")
    args = p.parse_args()
    if args.report is None:
        args.report = os.path.join(TOP, "docs", {
            "quick": "iotests.md", "rest": "iotests-rest.md",
            "all": "iotests-all.md"}[args.which])

    version = qemu_source_version()
    iotests = fetch_source(args.cache, version)
    tests, left_out = select(iotests, args.which)
    if args.list:
        print("\n".join(tests))
        for t, why in left_out.items():
            print("# %s: %s" % (t, why))
        return 0
    if args.tests:
        tests = [t for t in tests if t in args.tests]
        if not tests:
            sys.exit("iotests: none of these tests is in the set")
    runs = args.runs.split(",")
    formats = args.formats.split(",")
    results, times = {}, {}
    work = tempfile.mkdtemp(prefix="lockstep-iotests-")
    try:
        for r in runs:
            for fmt in formats:
                cached = os.path.join(args.cache, "baseline-%s-%s-%s.json" %
                                      (version, args.which, fmt))
                if r == "qemu" and not args.rerun_baseline and \
                        os.path.exists(cached):
                    with open(cached) as f:
                        data = json.load(f)
                    if all(t in data["results"] for t in tests):
                        results[(r, fmt)] = {t: tuple(data["results"][t])
                                             for t in tests}
                        times[(r, fmt)] = data["time"]
                        log("qemu, %s: cached baseline" % fmt)
                        continue
                res, secs = run_check(iotests, work, r, fmt, tests,
                                      args.build, args.jobs, args.timeout)
                results[(r, fmt)], times[(r, fmt)] = res, secs
                if r == "qemu" and not args.tests:
                    with open(cached, "w") as f:
                        json.dump({"results": res, "time": secs}, f)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in runs:
        for fmt in formats:
            res = results[(r, fmt)]
            n = {s: sum(1 for v in res.values() if v[0] == s)
                 for s in ("pass", "fail", "not run")}
            print("%-5s %-6s pass %3d  fail %3d  not run %3d" % (
                r, fmt, n["pass"], n["fail"], n["not run"]))
            for t in tests:
                if r != "qemu" and res[t][0] == "fail":
                    print("    fail %s: %s" % (t, res[t][1]))
    if not args.no_report and not args.tests:
        write_report(args.report, args.which, tests, left_out, results,
                     runs, times, version)
        log("wrote " + os.path.relpath(args.report, TOP))
    return 0


if __name__ == "__main__":
    sys.exit(main())
