#!/bin/sh
# SPDX-License-Identifier: MIT
# Seeds for fuzz-qmp (scripts/run-fuzz.sh runs this): QMP client streams,
# one file each.  The first byte picks the session: '1' negotiated, '0'
# not (see fuzz-qmp.c).  Usage: seeds-fuzz-qmp.sh DIR
set -eu
dir=$1
mkdir -p "$dir"
n=0
seed() {
    n=$((n + 1))
    printf '%s' "$1" > "$dir/seed-$n"
}
seed '0{"execute": "qmp_capabilities"}{"execute": "query-version"}'
seed '0{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}{"exec-oob": "query-jobs", "id": 1}'
seed '1{"execute": "block-export-del", "arguments": {"id": "exp0\u0000other"}}'
seed '1{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "ab\u0000cd", "filename": "/nonexistent"}}'
seed '1{"execute": "qu\u0000it"}{"execute": "quit\u0000"}'
seed '1{"execute": "block_resize", "arguments": {"node-name": "n\u0000", "size": -1}}'
seed '1{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "a", "name": "b\u0000c"}}]}}'
seed '1{"execute": "block-dirty-bitmap-merge", "arguments": {"node": "n", "target": "t", "bitmaps": ["a", {"node": "n", "name": "x"}]}}'
seed '1{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "/tmp/x\u0000y"}}}}'
seed '1{"execute": "query-named-block-nodes", "arguments": {"flat": true}, "id": "a\u0000b"}'
seed '1{"execute": "x-debug-query-block-graph"} [1, 2] "str" 42 } ] {"execute": "query-commands", "arguments": {"x\u0000": 1}}'
seed '1{"execute": "blockdev-backup", "arguments": {"job-id": "j", "device": "s", "target": "t", "sync": "full", "x-perf": {"max-workers": 2}}}'
seed '1{"execute": "fleecing-start", "arguments": {"id": "f", "node": "d", "temp": {"filename": "/t\u0000", "format": "raw"}}}'
seed '1{"execute": "query-block-jobs", "arguments": {}, "id": {"nested": [[[[["deep"]]]]]}}'
