# SPDX-License-Identifier: MIT
"""The layering rules of docs/architecture.md, checked on the sources:
no weak symbols anywhere; nothing below the QMP monitor includes a qmp/
header; jobs, exports, the NBD server and the runtime see no JSON (their
inputs are typed; qmp/ turns JSON into them)."""
import os
import re

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SOURCE_DIRS = ["block", "daemon", "export", "include", "job", "nbd", "qmp",
               "runtime", "tests", "tools", "util"]
BELOW_QMP = ["block", "export", "include", "job", "nbd", "runtime", "util"]
NO_JSON = ["export", "job", "nbd", "runtime"]


def sources(dirs):
    for d in dirs:
        for root, _, files in os.walk(os.path.join(TOP, d)):
            for name in files:
                if name.endswith((".c", ".h")):
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


def test_the_checks_can_fail():
    # The patterns match what they are meant to catch.
    assert re.search(r"__attribute__\s*\(\(\s*(__)?weak",
                     "void f(void) __attribute__((weak));")
    assert re.search(r'^\s*#\s*include\s+"qmp/', '#include "qmp/qmp.h"',
                     re.M)
    assert re.search(r"<jansson\.h>|\bjson_[a-z_]+\s*\(",
                     "json_t *v = json_object_get(o, k);")
