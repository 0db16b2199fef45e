# SPDX-License-Identifier: MIT
"""The O_DIRECT pass of the functional tests.

make check runs the tests marked "direct" a second time with
LOCKSTEP_TEST_CACHE=none and their files on a disk-backed directory
(scripts/run-tests.sh).  Then every image our programs open is opened with
cache.direct=on, without the tests saying so: conftest.run() gives
lockstep-io and lockstep-img their -t/-T options, and the QMP client and
Daemon add cache.direct to every "file" node of blockdev-add,
blockdev-reopen and --blockdev (QEMU's storage daemon gets the same, so
side-by-side tests still compare like with like).
"""
import json
import os

CACHE = os.environ.get("LOCKSTEP_TEST_CACHE") or None

# lockstep-img: which options set the cache mode of each command.
IMG_CACHE_OPTS = {
    "check": ["-T"], "commit": ["-t"], "compare": ["-T"],
    "convert": ["-t", "-T"], "create": ["-t"], "map": ["-T"],
    "resize": ["-t"],
}


def argv(args):
    """args with the cache options of the pass (unchanged without one)."""
    if not CACHE or not args:
        return args
    prog = os.path.basename(args[0])
    rest = list(args[1:])
    if prog == "lockstep-io":
        if any(a in ("-t", "-n", "--nocache") or a.startswith("--cache")
               for a in rest):
            return args
        return [args[0], "-t", CACHE] + rest
    if prog == "lockstep-img" and rest and rest[0] in IMG_CACHE_OPTS:
        if "-t" in rest or "-T" in rest:
            return args
        extra = []
        for opt in IMG_CACHE_OPTS[rest[0]]:
            extra += [opt, CACHE]
        return [args[0], rest[0]] + extra + rest[1:]
    return args


def blockdev(obj):
    """Give every "file" node of a blockdev-add object cache.direct."""
    if not CACHE or CACHE != "none":
        return obj
    if isinstance(obj, list):
        return [blockdev(o) for o in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: blockdev(v) for k, v in obj.items()}
    if out.get("driver") == "file" and "cache" not in out:
        out["cache"] = {"direct": True}
    return out


def keyval(text):
    """The same for a --blockdev argument: JSON or key=value,..."""
    if not CACHE or CACHE != "none":
        return text
    if text.lstrip().startswith("{"):
        return json.dumps(blockdev(json.loads(text)))
    parts = text.split(",")
    keys = [p.split("=", 1)[0] for p in parts if "=" in p]
    extra = []
    for p in parts:
        if "=" not in p:
            continue
        key, value = p.split("=", 1)
        if value != "file" or not (key == "driver" or
                                   key.endswith(".driver")):
            continue
        prefix = key[:-len("driver")]
        if not any(k.startswith(prefix + "cache.") for k in keys):
            extra.append(prefix + "cache.direct=on")
    return ",".join(parts + extra)


def daemon_argv(args):
    """A daemon's command line with its --blockdev arguments converted."""
    out = list(args)
    for i in range(len(out) - 1):
        if out[i] == "--blockdev":
            out[i + 1] = keyval(out[i + 1])
    return out


# The tests of the O_DIRECT pass: one of each path that does I/O (create,
# each cluster size's allocation, compressed reads, backing chains, COW,
# discard, zero, resize, make_empty through commit, check/repair, map,
# compare, convert, NBD exports of images, fleecing and replication,
# internal snapshots, lazy refcounts, zstd, copy-on-read, power loss of
# multi-cluster writes),
# not every parameter (make check's time).  fnmatch patterns of node ids.
TESTS = [
    "test_qcow2.py::test_lockstep_written_checks_clean[[]512]",
    "test_qcow2.py::test_lockstep_written_checks_clean[[]4096]",
    "test_qcow2.py::test_lockstep_written_checks_clean[[]65536]",
    "test_qcow2.py::test_lockstep_written_checks_clean[[]2097152]",
    "test_qcow2.py::test_lockstep_create_options[[]extended_l2=on]",
    "test_qcow2.py::test_lockstep_create_options[[]preallocation=metadata]",
    "test_qcow2.py::test_lockstep_create_options[[]compat=0.10]",
    "test_qcow2.py::test_qemu_written_read_by_lockstep[[]cluster_size=512]",
    "test_qcow2.py::test_qemu_written_read_by_lockstep[[]extended_l2=on]",
    "test_qcow2.py::test_compressed_read[[]512]",
    "test_qcow2.py::test_compressed_read[[]65536]",
    "test_qcow2.py::test_backing_chain_relative*",
    "test_qcow2.py::test_commit_empties_overlay",
    "test_qcow2.py::test_random_ops_compare[[]cluster_size=512-None]",
    "test_qcow2.py::test_random_ops_compare[[]extended_l2=on,*",
    "test_qcow2.py::test_blkdebug_event_errors_leave_no_corruption[[]l2_update]",
    "test_qcow2.py::test_discard_passthrough*",
    "test_qcow2.py::test_resize_*",
    "test_qcow2.py::test_v2_discard_and_zero",
    "test_qcow2.py::test_overlap_write_marks_corrupt",
    "test_qcow2.py::test_open_cache_direct*",
    "test_qcow2_requests.py::*",
    "test_qcow2_snapshot.py::test_create_apply_delete_checked_by_qemu",
    "test_qcow2_snapshot.py::test_our_writes_copy_shared_clusters",
    "test_qcow2_snapshot.py::test_multi_cluster_writes_over_shared_clusters",
    "test_qcow2_snapshot.py::test_qemu_snapshots_read_applied_deleted_by_us",
    "test_qcow2_snapshot.py::test_convert_from_snapshot",
    "test_qcow2_snapshot.py::test_vmstate_written_and_snapshotted",
    "test_qemu_iotests_bugs.py::test_lazy_refcounts_dirty_until_close",
    "test_qemu_iotests_bugs.py::test_lazy_refcounts_off_stays_clean",
    "test_lockstep_img.py::test_repair_lazy_refcounts_crash",
    "test_qemu_iotests_bugs.py::test_zstd_clusters_both_ways",
    "test_qemu_iotests_bugs.py::test_convert_compressed_zstd",
    "test_qemu_iotests_bugs.py::test_copy_on_read_allocates_as_qemu*",
    "test_qemu_iotests_bugs.py::test_copy_on_read_partial_last_cluster*",
    "test_qemu_iotests_bugs.py::test_copy_on_read_bottom",
    "test_qemu_iotests_bugs.py::test_copy_on_read_filter_from_blockdev_add",
    "test_powerloss.py::test_multi_cluster_writes[[]False]",
    "test_powerloss.py::test_writes_over_snapshot",
    "test_lockstep_img.py::test_create_matrix_passes_qemu_check[[]off-16-*",
    "test_lockstep_img.py::test_create_matrix_passes_qemu_check[[]on-64-65536]",
    "test_lockstep_img.py::test_create_backing_relative",
    "test_lockstep_img.py::test_convert_odd_size_to_qcow2",
    "test_lockstep_img.py::test_check_clean_same_output",
    "test_lockstep_img.py::test_check_leaks",
    "test_lockstep_img.py::test_repair_leaks",
    "test_lockstep_img.py::test_repair_all_corruption",
    "test_lockstep_img.py::test_repair_all_rebuilds[[]reftable_unaligned]",
    "test_lockstep_img.py::test_check_compressed",
    "test_lockstep_img.py::test_map_raw_same_as_qemu*",
    "test_lockstep_img.py::test_map_qcow2_chain*",
    "test_lockstep_img.py::test_compare_raw",
    "test_lockstep_img.py::test_compare_qcow2",
    "test_lockstep_img.py::test_convert_raw",
    "test_lockstep_img.py::test_convert_qcow2_roundtrip",
    "test_lockstep_img.py::test_convert_n_overwrites_with_zeroes",
    "test_lockstep_img.py::test_commit_qcow2",
    "test_lockstep_img.py::test_commit_qcow2_keep_top",
    "test_lockstep_img.py::test_commit_deep_base_with_zeroes",
    "test_lockstep_img.py::test_resize_raw",
    "test_lockstep_img.py::test_resize_qcow2",
    "test_lockstep_img.py::test_driver_writes_pass_both_checkers*",
    "test_lockstep_io.py::test_write_then_read_pattern",
    "test_lockstep_io.py::test_write_zeroes",
    "test_lockstep_io.py::test_write_fua",
    "test_lockstep_io.py::test_discard_output",
    "test_lockstep_io.py::test_map_qcow2",
    "test_lockstep_io.py::test_same_output_as_qemu_io",
    "test_fleecing.py::test_image_fleecing[[]qcow2-start]",
    "test_fleecing.py::test_image_fleecing[[]raw-insert]",
    "test_fleecing.py::test_image_fleecing_bitmap[[]start]",
    "test_fleecing.py::test_snapshot_discard[[]start]",
    "test_fleecing.py::test_push_backup_with_fleecing",
    "test_replication.py::test_secondary_write[[]unix]",
    "test_replication.py::test_secondary_do_checkpoint[[]unix]",
    "test_replication.py::test_primary_do_checkpoint[[]unix]",
    "test_replication.py::test_failover_after_many_small_writes[[]unix]",
]


def selected(nodeid):
    """Is the test (a pytest node id) in the O_DIRECT pass?"""
    import fnmatch
    name = nodeid.split("/")[-1]
    return any(fnmatch.fnmatchcase(name, p) for p in TESTS)
