# SPDX-License-Identifier: MIT
"""docs/qmp.md is generated from the schema (lockstepd --print-qmp-doc);
this fails when the committed file is stale.  Regenerate with:
    build/lockstepd --print-qmp-doc > docs/qmp.md
"""
import os

import pytest

from conftest import run

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "qmp.md")


@pytest.fixture(scope="session")
def lockstepd(build_dir):
    path = os.path.join(build_dir, "lockstepd")
    if not os.access(path, os.X_OK):
        pytest.skip("%s is not built" % path)
    return path


def test_qmp_doc_up_to_date(lockstepd):
    r = run([lockstepd, "--print-qmp-doc"])
    assert r.returncode == 0
    with open(DOC) as f:
        committed = f.read()
    assert committed == r.stdout, (
        "docs/qmp.md is stale: run 'build/lockstepd --print-qmp-doc > "
        "docs/qmp.md'")


def test_qmp_doc_lists_every_command(lockstepd, tmp_dir):
    from qmp_client import Daemon
    with Daemon(lockstepd, tmp_dir) as d:
        with d.client() as c:
            names = [x["name"] for x in c.cmd("query-commands")]
        assert d.stop() == 0
    with open(DOC) as f:
        doc = f.read()
    for n in names:
        assert "\n### %s\n" % n in doc
