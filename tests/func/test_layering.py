# SPDX-License-Identifier: MIT
"""The layering rules of docs/architecture.md, checked on the sources:
no weak symbols anywhere; nothing below the QMP monitor includes a qmp/
header; jobs, exports, the NBD server and the runtime see no JSON (their
inputs are typed; qmp/ turns JSON into them); filters and the copy engine
touch JSON only to read their own blockdev-add options, through
the getters of lockstep/driver.h, and in their query hook; formats are
probed in one place, from the drivers' probe hooks; the tools and the
monitor reach formats and protocols through the driver hooks of
lockstep/driver.h (block_create, block_check, block_snapshot_*, ...),
never through a driver's own header."""
import os
import re

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SOURCE_DIRS = ["block", "daemon", "export", "include", "job", "nbd", "qmp",
               "runtime", "tests", "tools", "util"]
BELOW_QMP = ["block", "export", "include", "job", "nbd", "runtime", "util"]
NO_JSON = ["export", "job", "nbd", "runtime"]


def sources(dirs, suffixes=(".c", ".h")):
    for d in dirs:
        for root, _, files in os.walk(os.path.join(TOP, d)):
            for name in files:
                if name.endswith(suffixes):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        yield os.path.relpath(path, TOP), f.read()


def offenders(dirs, pattern):
    rx = re.compile(pattern, re.M)
    return sorted(path for path, text in sources(dirs) if rx.search(text))


def test_no_weak_symbols():
    # A weak reference to a missing function is silently NULL: a call
    # that should have failed to link is skipped instead.
    assert offenders(SOURCE_DIRS,
                     r"__attribute__\s*\(\(\s*(__)?weak|#\s*pragma\s+weak") \
        == []


def test_nothing_below_qmp_includes_qmp():
    assert offenders(BELOW_QMP, r'^\s*#\s*include\s+"qmp/') == []


def test_no_json_in_jobs_exports_runtime():
    assert offenders(NO_JSON, r"<jansson\.h>|\bjson_[a-z_]+\s*\(") == []


JSON_CALL = re.compile(r"\bjson_[a-z_]+\s*\(")
# Filters that read nested option lists of their own with jansson (the
# option layer, like QEMU's QDict): blkdebug's rule lists.
NESTED_OPTION_PARSERS = ["block/filter/blkdebug.c"]


def without_function(text, name):
    """text without the definition of function name (its name at the
    start of a line, its body up to the first closing brace there)."""
    m = re.search(r"^%s\(.*?^}\n" % re.escape(name), text, re.M | re.S)
    assert m, name
    return text[:m.start()] + text[m.end():]


def json_outside_options(text):
    """The jansson calls of a filter outside its query hook (which fills
    the info object query-named-block-nodes hands it)."""
    hook = re.search(r"\.query\s*=\s*(\w+)", text)
    if hook:
        text = without_function(text, hook.group(1))
    return sorted(set(JSON_CALL.findall(text)))


def test_filters_read_options_through_the_option_layer():
    # A filter reads its options with lockstep/driver.h's getters and
    # makes the nodes it needs (copy-before-write for replication and
    # backup) with typed settings (block_node_new_typed()): no JSON.
    bad = {}
    for path, text in sources(["block/filter", "block/copy"]):
        if path in NESTED_OPTION_PARSERS:
            continue
        calls = json_outside_options(text)
        if calls:
            bad[path] = calls
    assert bad == {}


# The core's option layer: blockdev-add options checked (opts.c), turned
# into nodes and children (node.c), prepared (prepare.c) and reopened
# (reopen.c).
# filename.c turns the tools' file names (json:, blkdebug:, nbd://) into
# the same options dictionary; image.c hands a format's create options
# (the same kind of dictionary) to its create hook, and frees the
# "format-specific" object its image_info hook builds (as a query hook
# does).
OPTION_LAYER = ["block/core/filename.c", "block/core/image.c",
                "block/core/node.c",
                "block/core/opts.c",
                "block/core/opts.h", "block/core/prepare.c",
                "block/core/reopen.c"]


def test_core_json_only_in_the_option_layer():
    # The request layer, the dirty bitmaps and the copy engine are typed;
    # query-named-block-nodes' bitmap list is built in qmp/.
    bad = sorted(path for path, text in sources(["block/core", "block/copy"])
                 if path not in OPTION_LAYER and
                 re.search(r"<jansson\.h>|\bjson_[a-z_]+\s*\(", text))
    assert bad == []


# A format's magic number, outside its driver.
FORMAT_MAGIC = r"QFI\\xfb|QCOW2_MAGIC|0x514649fb"
PROBE_CALL = r"->probe\s*\("
# A hand-made probe answer.
PROBE_ANSWER = r'"qcow2"\s*:\s*"raw"|"raw"\s*:\s*"qcow2"'
NOT_TESTS = [d for d in SOURCE_DIRS if d != "tests"]


def test_one_format_probe():
    # Drivers say what is theirs (their probe hook); block_probe_format()
    # is the one function that asks them, for the core and the tools.
    magic = [p for p in offenders(NOT_TESTS, FORMAT_MAGIC)
             if not p.startswith("block/format/qcow2/")]
    assert magic == []
    assert offenders(NOT_TESTS, PROBE_CALL) == ["block/core/drivers.c"]
    assert offenders(NOT_TESTS, PROBE_ANSWER) == []


# Reading a node's file name from its options by hand.
NODE_FILENAME = r'->options,\s*"filename"'


def test_one_filename_helper():
    # block_node_filename() is the one place that reads a node's file
    # name (walking down "file" children); the rest ask it.
    assert offenders(NOT_TESTS, NODE_FILENAME) == ["block/core/node.c"]


# Including a driver's own header: formats and protocols anywhere outside
# block/, and filters from the tools too (a filter's header may be an API
# of its own for jobs and QMP: copy-before-write's snapshot for backup,
# replication's for its commands).
FORMAT_HEADER = r'^\s*#\s*include\s+"block/(format|protocol)/'
DRIVER_HEADER = r'^\s*#\s*include\s+"block/(format|protocol|filter)/'
def test_no_driver_header_outside_block():
    # A new driver needs only lockstep/driver.h; the code that uses it
    # needs only lockstep/block.h and the hooks behind it.
    assert offenders(["daemon", "export", "job", "nbd", "qmp", "runtime",
                      "tools", "util"], FORMAT_HEADER) == []
    assert offenders(["tools"], DRIVER_HEADER) == []


# Recognising a driver by its name where a driver flag or hook says it:
# reads_frozen_view (snapshot-access), no_image_info (null-co),
# vmstate_start, bitmap_can_store (qcow2's VM state and bitmaps), and
# compressed_writes, which convert -c asks of the output format's driver.
DRIVER_NAME_TEST = r'drv->name,\s*"(snapshot-access|null|qcow2)'
COMPRESS_BY_NAME = r'compress[^;\n]*cmp\s*\([^)]*"qcow2"'
# Drivers may tell their own variants apart (file.c: host_cdrom).
DRIVER_DIRS = ("block/format/", "block/protocol/", "block/filter/")


def test_drivers_recognised_by_their_flags():
    generic = [p for p in offenders(NOT_TESTS, DRIVER_NAME_TEST)
               if not p.startswith(DRIVER_DIRS)]
    assert generic == []
    assert offenders(NOT_TESTS, COMPRESS_BY_NAME) == []


def test_the_checks_can_fail():
    # The patterns match what they are meant to catch.
    assert re.search(r"__attribute__\s*\(\(\s*(__)?weak",
                     "void f(void) __attribute__((weak));")
    assert re.search(r'^\s*#\s*include\s+"qmp/', '#include "qmp/qmp.h"',
                     re.M)
    assert re.search(r"<jansson\.h>|\bjson_[a-z_]+\s*\(",
                     "json_t *v = json_object_get(o, k);")
    # A filter building options is caught; its query hook is not.
    driver = ("static void\nf_query(struct block_node *n, json_t *info)\n"
              "{\n    json_object_set_new(info, \"a\", json_true());\n}\n"
              "\nstatic int\nf_open(struct block_node *n, json_t *o)\n"
              "{\n    json_t *x = json_pack(\"{s:s}\", \"driver\", \"raw\");\n"
              "}\n\nconst struct block_driver d = {\n    .open = f_open,\n"
              "    .query = f_query,\n};\n")
    assert json_outside_options(driver) == ["json_pack("]
    assert json_outside_options(driver.replace("json_pack", "f")) == []
    assert re.search(FORMAT_MAGIC, 'memcmp(m, "QFI\\xfb", 4)')
    assert re.search(PROBE_CALL, "score = drv->probe(head, len, fn);")
    assert re.search(PROBE_ANSWER, 'return ok ? "qcow2" : "raw";')
    assert re.search(NODE_FILENAME,
                     'json_object_get(node->options, "filename")')
    assert re.search(FORMAT_HEADER, '#include "block/format/qcow2/qcow2.h"',
                     re.M)
    assert re.search(DRIVER_HEADER, '#include "block/filter/blkdebug.h"',
                     re.M)
    assert not re.search(DRIVER_HEADER, '#include "lockstep/driver.h"', re.M)
    assert re.search(DRIVER_NAME_TEST,
                     'strcmp(c->parent_node->drv->name, "snapshot-access")')
    assert re.search(DRIVER_NAME_TEST,
                     'return !strncmp(node->drv->name, "null", 4);')
    assert re.search(DRIVER_NAME_TEST,
                     'if (cluster && !strcmp(node->drv->name, "qcow2")) {')
    assert re.search(DRIVER_NAME_TEST,
                     'has_bitmaps = fmt && !strcmp(fmt->drv->name, "qcow2");')
    assert not re.search(DRIVER_NAME_TEST,
                         'json_pack("{s:s}", "driver", node->drv->name);')
    assert re.search(COMPRESS_BY_NAME,
                     'if (a->compress && strcmp(a->out.fmt, "qcow2")) {')
    assert not re.search(COMPRESS_BY_NAME,
                         'if (strcmp(format, "raw") && strcmp(format, '
                         '"qcow2")) {')


LOCK_DIRS = ["block", "crypto", "daemon", "export", "include", "job", "nbd",
             "qmp", "runtime", "tools", "util"]
LOCK_DECL = re.compile(
    r"^(?!\s*extern)[^\n]*\b(?:pthread_(?:mutex|rwlock)_t|struct lock)"
    r"\s+(\w+)\s*[;=]", re.M)
LOCK_ROW = re.compile(
    r"^\| *([1-5]) *\| *`(\w+)`[^|]*\| *([\w./-]+) *\|$", re.M)
# util/lock.h: X(id, level, nesting, "name", "file")
RANK_ROW = re.compile(
    r"^\s*X\((\w+), *([1-5]), *(\w+), *\"(\w+)\", *\"([\w./-]+)\"\)", re.M)
# The ranked lock's own mutex is not a lock of the order.
WRAPPER = ("m", "util/lock.h")


def read(path):
    with open(os.path.join(TOP, path), encoding="utf-8") as f:
        return f.read()


def locks_in_code():
    found = []
    for path, text in sources(LOCK_DIRS):
        found += [(m.group(1), path) for m in LOCK_DECL.finditer(text)
                  if (m.group(1), path) != WRAPPER]
    return sorted(found)


def doc_rows():
    doc = read("docs/architecture.md")
    section = doc[doc.index("## Lock order"):]
    section = section[:section.index("\n## ", 1)]
    return [(int(m.group(1)), m.group(2), m.group(3))
            for m in LOCK_ROW.finditer(section)]


def locks_in_doc():
    return sorted((name, path) for _, name, path in doc_rows())


def rank_rows():
    return [(int(m.group(2)), m.group(4), m.group(5))
            for m in RANK_ROW.finditer(read("util/lock.h"))]


def test_rank_table_is_the_documented_order():
    # util/lock.h's LOCK_ORDER (the ranks the lock_debug build checks)
    # and the doc's table: the same rows in the same order.
    ranks, doc = rank_rows(), doc_rows()
    assert len(ranks) > 20
    assert ranks == doc
    assert [level for level, _, _ in ranks] == \
        sorted(level for level, _, _ in ranks)


def test_every_mutex_is_ranked():
    # Every mutex is a struct lock (so its order is checked); only
    # rwlocks stay plain: the graph's and copy-on-read's copy_lock, which
    # note their rank by hand (lock_order_enter).
    plain = re.compile(r"^(?!\s*extern)[^\n]*\bpthread_mutex_t\s+(\w+)\s*[;=]",
                       re.M)
    found = sorted((m.group(1), path) for path, text in sources(LOCK_DIRS)
                   for m in plain.finditer(text)
                   if (m.group(1), path) != WRAPPER)
    assert found == []


def test_lock_order_lists_every_lock():
    # docs/architecture.md's lock table and the code's declarations of
    # mutexes and rwlocks: the same locks, file by file.
    code, doc = locks_in_code(), locks_in_doc()
    assert len(code) > 20
    assert code == doc, {"in the code only": sorted(set(code) - set(doc)),
                         "in the doc only": sorted(set(doc) - set(code))}


def test_the_lock_check_can_fail():
    assert LOCK_DECL.search("static pthread_mutex_t g_x_lock = X;")
    assert LOCK_DECL.search("    pthread_mutex_t lock;   /* c */")
    assert not LOCK_DECL.search("extern pthread_mutex_t g_nbdsrv_lock;")
    assert not LOCK_DECL.search("void f(pthread_mutex_t *m);")
    assert LOCK_DECL.search("static struct lock g_job_lock = X;")
    assert LOCK_DECL.search("    struct lock lock;")
    assert not LOCK_DECL.search("void f(struct lock *l);")
    assert LOCK_ROW.search("| 5 | `rl_lock` (struct backup_job) | "
                           "job/backup.c |")
    assert RANK_ROW.search('    X(JOB,            2, NO,   "g_job_lock",    '
                           '"job/job.c")                 \\')


OUTSIDE_NOTES = r"shared/reference|/work/|reference notes"


def test_cited_documents_are_in_the_repository():
    # Comments and docs cite the repository's own documents (and QEMU's
    # public ones), never notes that live outside it.
    rx = re.compile(OUTSIDE_NOTES)
    bad = sorted(path for path, text in
                 sources(SOURCE_DIRS + ["bench", "scripts"],
                         (".c", ".h", ".py", ".sh"))
                 if rx.search(text) and path != "tests/func/test_layering.py")
    docs = os.path.join(TOP, "docs")
    for name in sorted(os.listdir(docs)):
        if name.endswith(".md"):
            with open(os.path.join(docs, name), encoding="utf-8") as f:
                if re.search(OUTSIDE_NOTES, f.read()):
                    bad.append("docs/" + name)
    assert bad == []
    assert re.search(OUTSIDE_NOTES, "notes: /work/shared/reference/x.md")
