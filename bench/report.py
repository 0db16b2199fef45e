# SPDX-License-Identifier: MIT
"""Tables (terminal and Markdown) and the gnuplot bar chart of the ratios."""
import os
import statistics
import subprocess
import tempfile

NAMES = {"qsd": "qemu-storage-daemon", "qemu": "qemu-system-x86_64 -M none",
         "lockstep-nbd": "lockstepd's own NBD export (fio)"}


def rows(results, workloads, names):
    """One row per metric: medians, spreads, ratio, target."""
    out = []
    for name in names:
        if name not in results:
            continue
        _, _, metrics = workloads[name]
        res = results[name]
        for key, unit, better, target in metrics:
            a = [r.metrics[key] for r in res["lockstep"] if key in r.metrics]
            b = [r.metrics[key] for r in res["qemu"] if key in r.metrics]
            row = {"workload": name, "metric": key, "unit": unit,
                   "better": better, "target": target, "a": a, "b": b,
                   "qemu_kind": res["qemu_kind"]}
            row["ma"] = statistics.median(a) if a else None
            row["mb"] = statistics.median(b) if b else None
            row["ratio"] = row["ma"] / row["mb"] if a and b and row["mb"] \
                else None
            if row["ratio"] is None or target is None:
                row["met"] = None
            elif better == "high":
                row["met"] = row["ratio"] >= target
            else:
                row["met"] = row["ratio"] <= target
            out.append(row)
    return out


def fmt(v):
    if v is None:
        return "n/a"
    return "%.0f" % v if v >= 100 else "%.1f" % v if v >= 1 else "%.3f" % v


def spread(vals):
    return "%s–%s" % (fmt(min(vals)), fmt(max(vals))) if vals else "n/a"


def target_text(row):
    t = row["target"]
    if t is None:
        return "—"
    return ("≥ %g×" if row["better"] == "high" else "≤ %g×") % t


def met_text(row):
    return {None: "", True: "yes", False: "**no**"}[row["met"]]


def cells(row):
    ratio = "%.2f×" % row["ratio"] if row["ratio"] is not None else "n/a"
    return [row["metric"] + " (%s)" % row["unit"], fmt(row["ma"]),
            spread(row["a"]), fmt(row["mb"]), spread(row["b"]), ratio,
            target_text(row), met_text(row).replace("*", "")]


HEAD = ["metric", "lockstep", "min–max", "QEMU", "min–max",
        "lockstep/QEMU", "target", "met"]


def text_table(rws, ceiling):
    table = [HEAD] + [cells(r) for r in rws]
    w = [max(len(t[i]) for t in table) for i in range(len(HEAD))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(t))
             for t in table]
    if ceiling:
        lines.append("nbdkit memory plugin, nbdcopy: %s MiB/s (%s)" % (
            fmt(ceiling[0]), spread(ceiling[1:])))
    return "\n".join(lines)


def md_table(rws):
    lines = ["| " + " | ".join(HEAD) + " |",
             "|" + "---|" * len(HEAD)]
    for r in rws:
        c = cells(r)
        c[-1] = met_text(r)
        lines.append("| " + " | ".join(c) + " |")
    return "\n".join(lines)


DEVICE_HEAD = ["metric", "lockstep", "QEMU", "device (fio io_uring)",
               "min–max", "lockstep/device", "QEMU/device"]


def device_cells(rws, device):
    """Rows of the disk metrics that have a device figure."""
    out = []
    for r in rws:
        vals = device.get(r["metric"])
        if not vals:
            continue
        dev = statistics.median(vals)
        share = [("%.0f %%" % (100 * m / dev)) if m is not None and dev
                 else "n/a" for m in (r["ma"], r["mb"])]
        out.append([r["metric"] + " (%s)" % r["unit"], fmt(r["ma"]),
                    fmt(r["mb"]), fmt(dev), spread(vals)] + share)
    return out


def device_text(rws, device):
    table = [DEVICE_HEAD] + device_cells(rws, device)
    w = [max(len(t[i]) for t in table) for i in range(len(DEVICE_HEAD))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(t))
                     for t in table)


def device_md(rws, device):
    cells = device_cells(rws, device)
    if not cells:
        return ""
    lines = ["The disk rows against the device: fio with `ioengine=io_uring`,"
             " `direct=1` on the same file system, the same pattern and "
             "depth (reads from the filled image, writes into a fresh "
             "fallocated file), measured in each round after the two "
             "daemons.", "",
             "| " + " | ".join(DEVICE_HEAD) + " |",
             "|" + "---|" * len(DEVICE_HEAD)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def resource_table(results, names):
    lines = ["| workload | peak RSS lockstep (MiB) | peak RSS QEMU (MiB) | "
             "CPU s/GiB lockstep | CPU s/GiB QEMU |", "|---|---|---|---|---|"]
    for name in names:
        if name not in results:
            continue
        res = results[name]
        row = [name]
        for side in ("lockstep", "qemu"):
            rss = [r.rss for r in res[side] if r.rss]
            row.append("%.1f" % (max(rss) / 1024) if rss else "n/a")
        for side in ("lockstep", "qemu"):
            per = [r.cpu / (r.bytes / 2**30) for r in res[side]
                   if r.bytes and r.metrics]
            row.append("%.2f" % statistics.median(per) if per else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def chart(rws, png):
    """Bars of lockstep/QEMU per metric (latencies inverted so that higher
    is better everywhere), with each target as a point."""
    with tempfile.NamedTemporaryFile("w", suffix=".dat",
                                     delete=False) as f:
        for r in rws:
            if r["ratio"] is None:
                continue
            v = r["ratio"] if r["better"] == "high" else 1 / r["ratio"]
            t = r["target"]
            t = "NaN" if t is None else t if r["better"] == "high" else 1 / t
            f.write('"%s" %g %s\n' % (r["metric"].replace('"', ""), v, t))
        dat = f.name
    script = """
set terminal pngcairo size 1200,700 font ",9"
set output "%s"
set title "lockstep / QEMU (higher is better; latencies inverted)"
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.7
set xtics rotate by 35 right
set grid ytics
set yrange [0:*]
set bmargin 12
set lmargin 12
set key top left
plot "%s" using 2:xtic(1) title "lockstep/QEMU" lc rgb "#3070b0", \\
     "" using 0:3 with points pt 7 ps 1.5 lc rgb "#c03020" title "target", \\
     1 with lines lc rgb "black" dt 2 title "parity"
""" % (png, dat)
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
    finally:
        os.unlink(dat)


def write_docs(rws, ceiling, info, results, names, device, md, png):
    chart(rws, png)
    snap = [r for r in rws if r["metric"].startswith("snapshot read")]
    ceil_lines = ""
    if ceiling:
        ceil_lines = ("\nnbdcopy from nbdkit's memory plugin (the ceiling for "
                      "snapshot reads): **%s MiB/s** (%s).  lockstep's "
                      "snapshot read reaches %s of it.\n" % (
                          fmt(ceiling[0]), spread(ceiling[1:]),
                          ", ".join("%.0f %% (%s)" % (
                              100 * r["ma"] / ceiling[0], r["metric"])
                              for r in snap if r["ma"])))
    text = TEMPLATE.format(
        date=info["date"], rev=info["rev"], rounds=info["rounds"],
        disk_rounds=info.get("disk_rounds", info["rounds"]),
        runtime=info["runtime"],
        size=info["size_mib"], disk_size=info["disk_size_mib"],
        minutes=info["minutes"], ncpu=info["ncpu"],
        load0="%.1f" % info["load"][0][0], load1="%.1f" % info["load"][1][0],
        table=md_table(rws), ceiling=ceil_lines,
        device=device_md(rws, device),
        resources=resource_table(results, names),
        analysis=open(ANALYSIS_FILE).read() if os.path.exists(ANALYSIS_FILE)
        else "")
    with open(md, "w") as f:
        f.write(text)


TEMPLATE = """# Performance: lockstepd side by side with QEMU

Measured by `make bench` (bench/bench.py) on {date}: {rounds} rounds of
each workload, lockstepd then QEMU in turn (A, B, A, B, …), {runtime:g} s
per fio run, {size} MiB images on tmpfs (/dev/shm), fresh images for every
run; the `disk-*` workloads ({disk_rounds} rounds) on a disk-backed
file system with `cache.direct=on`, {disk_size} MiB images (the filled
one for reads and fleecing written once and shared by the runs).  Both daemons are set up by the same QMP commands and driven by the
same clients (fio 3.33 `ioengine=nbd`, nbdcopy 1.14); QEMU is 7.2
(Debian 12): qemu-storage-daemon, or `qemu-system-x86_64 -machine none`
for replication, whose commands only it has.  lockstepd is a release build
(`-O3`, assertions on) of {rev}.  The whole run took {minutes:.0f}
minutes.

**Noise.** The machine has {ncpu} cores, shared by the client, the
daemon(s) and anything else running (load average {load0} at the start,
{load1} at the end).  Absolute figures move between rounds; the ratios
compare medians of runs interleaved in the same session, and the min–max
columns show how far to trust them.

## Results

Figures are medians; ratio = lockstep / QEMU (for latencies lower is
better).  Targets are those of issue 7.

{table}
{ceiling}
{device}
![lockstep/QEMU ratios](performance.png)

## Memory and CPU

Peak resident memory is VmHWM of each daemon just before it was stopped
(replication: primary + secondary); CPU is utime + stime of the daemon(s)
over the measured phases, divided by the GiB the clients moved.

{resources}

{analysis}
"""

# The hand-written part (what bounds each figure, the plans) lives in
# bench/analysis.md so that a new run keeps it.
ANALYSIS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "analysis.md")
