#!/bin/bash
# make demo: the jobs lockstep is for, in about a minute.
#
#   1. Fleecing: a daemon serves a qcow2 disk that a guest (fio over NBD)
#      keeps writing; a backup copies a point-in-time snapshot of it, first
#      with lockstep's one-call fleecing-start, then with QEMU's own recipe.
#      The copy must equal the disk at the snapshot, and the disk must have
#      moved on meanwhile.
#   2. Replication: a primary and a secondary daemon; the guest writes on
#      the primary; two checkpoints; the primary is killed with SIGKILL;
#      the secondary fails over and must serve the disk as it was at the
#      last checkpoint.
#   3. Incremental backup: lockstep-backup takes a full backup while the
#      guest writes, the daemon restarts (the dirty bitmap persists in the
#      qcow2 image), then an incremental one that reads only what changed;
#      restoring each day must give the disk at that day's snapshot.
#
# Every command is printed before it runs, with the paths a user would
# type (the demo works in a scratch directory, with the build's programs
# on PATH), so the output can be followed and pasted.  Each step is one
# function; the demo ends with one line per step saying what was shown
# and whether it held, and exits 1 if any step did not hold.
#
# Usage: scripts/demo.sh [BUILD_DIR [STEP...]]
#   BUILD_DIR              default: build
#   STEP                   fleecing, replication, backup (default: all)
#   LOCKSTEP_DEMO_KEEP=1   keep the scratch directory
set -euo pipefail
build=${1:-build}
# A step is a function step_NAME below: it narrates (run, bg, note), proves
# (check) and ends with its summary line (result).  A new step is one more
# function and one more name here.
all_steps="fleecing replication backup"
steps=${*:2}
steps=${steps:-$all_steps}
for step in $steps; do
    case " $all_steps " in
        *" $step "*) ;;
        *) echo "demo: unknown step '$step' (steps: $all_steps)" >&2; exit 2 ;;
    esac
done
top=$(cd "$(dirname "$0")/.." && pwd)
case $build in /*) ;; *) build=$top/$build ;; esac
bin=$(cd "$build" && pwd)
for p in lockstepd lockstep-img lockstep-io lockstep-qmp lockstep-backup; do
    if [ ! -x "$bin/$p" ]; then
        echo "demo: $bin/$p is missing: run 'make' first" >&2
        exit 2
    fi
done
for p in fio nbdcopy qemu-io qemu-img; do
    command -v "$p" >/dev/null || {
        echo "demo: $p is missing: run 'make' (it installs it)" >&2
        exit 2
    }
done
PATH=$bin:$PATH
export PATH

dir=$(mktemp -d /tmp/lockstep-demo.XXXXXX)
results=$dir/.results
: >"$results"
cleanup() {
    if [ -z "${LOCKSTEP_DEMO_KEEP:-}" ]; then
        rm -rf "$dir"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- Narration ------------------------------------------------------------

if [ -t 1 ]; then
    bold=$(printf '\033[1m') dim=$(printf '\033[2m') off=$(printf '\033[0m')
else
    bold='' dim='' off=''
fi

# Quote one word for the shell, only when it needs it.
quote() {
    case $1 in
        '&' | '|') printf '%s' "$1" ;;   # shell syntax, from our callers
        '' | *[!A-Za-z0-9_./:=,+@%^-]*)
            printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
        *) printf '%s' "$1" ;;
    esac
}

# Print a command as a user would type it; long ones break before --options.
say() {
    local line='' width=0 w
    for a in "$@"; do
        w=$(quote "$a")
        if [ -n "$line" ] && [ "$width" -gt 40 ] && [ "${a#--}" != "$a" ]; then
            line="$line \\"$'\n'"    "
            width=4
        elif [ -n "$line" ]; then
            line="$line "
        fi
        line="$line$w"
        width=$((width + ${#w} + 1))
    done
    printf '%s$ %s%s\n' "$bold" "$line" "$off"
}

note() { printf '%s# %s%s\n' "$dim" "$*" "$off"; }
title() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
run() { say "$@"; "$@"; }

# Start a command in the background; $! is its pid.
bg() {
    say "$@" "&"
    "$@" &
}

# lockstep-qmp with the commands on standard input (a heredoc), printed
# the way it is typed.
qmp_in() {
    local input
    input=$(cat)
    printf '%s$ lockstep-qmp %s <<'"'"'EOF'"'"'\n%s\nEOF%s\n' \
        "$bold" "$1" "$input" "$off"
    printf '%s\n' "$input" | lockstep-qmp "$1"
}

# The sha256 of what an NBD export or a file holds, in $sum.
checksum() {
    case $1 in
        nbd*)
            say nbdcopy "$1" - "|" sha256sum
            sum=$(nbdcopy "$1" - | sha256sum) ;;
        *)
            say sha256sum "$1"
            sum=$(sha256sum <"$1") ;;
    esac
    sum=${sum%% *}
    echo "$sum"
}

# The guest: fio writing random 4 KiB blocks over NBD for a while (fio's
# units: 500ms, 2s...), over the first SIZE bytes if given.  Its report goes to guest.json; guest_writes reads
# the number of writes from it.
guest() {
    bg fio --name=guest --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k \
        --time_based --runtime="$2" ${3:+--size=$3} \
        --output-format=json --output=guest.json
    guest_pid=$!
}

guest_pause() {
    note "fio is pid $guest_pid; when it ends, the guest is paused:"
    say wait "$guest_pid"
    wait "$guest_pid"
}

guest_running() {
    if kill -0 "$guest_pid" 2>/dev/null; then
        note "(the guest was still writing when the copy ended)"
    fi
}

guest_writes() {
    awk '/"write" : \{/ { w = 1 }
         w && /"total_ios"/ { gsub(/[^0-9]/, ""); print; exit }' guest.json
}

# ---- Results --------------------------------------------------------------

# check WHAT TEST...: run TEST; a failure is recorded against the step.
failed=''
check() {
    local what=$1
    shift
    if "$@"; then
        printf '   ok: %s\n' "$what"
    else
        printf '   %sNOT OK%s: %s\n' "$bold" "$off" "$what"
        failed="$failed${failed:+; }$what"
    fi
}

# result STEP TEXT: the step's summary line (held unless a check failed).
result() {
    if [ -z "$failed" ]; then
        printf '%s|held|%s\n' "$1" "$2" >>"$results"
    else
        printf '%s|did NOT hold|%s\n' "$1" "$failed" >>"$results"
    fi
}

# ---- 1. Fleecing ----------------------------------------------------------

step_fleecing() {
    title "1. Fleecing: a consistent backup of a disk the guest keeps writing"
    run mkdir fleecing
    run cd fleecing
    run lockstep-img create -q -f qcow2 disk.qcow2 32M
    run lockstep-io -f qcow2 -c 'write -P 0x5d 0 32M' disk.qcow2
    note "The scratch image for the old data (copy-before-write), same size:"
    run lockstep-img create -q -f qcow2 fleece.qcow2 32M
    note "The daemon serves the disk to the guest over NBD (export 'guest')."
    note "'front' is a raw node over the disk, for QEMU's recipe below."
    bg lockstepd \
        --blockdev driver=file,node-name=disk-file,filename=disk.qcow2 \
        --blockdev driver=qcow2,node-name=disk,file=disk-file \
        --blockdev driver=raw,node-name=front,file=disk \
        --nbd-server addr.type=unix,addr.path=nbd.sock \
        --export type=nbd,id=guest,node-name=front,name=guest,writable=on \
        --chardev socket,id=qmp,path=qmp.sock,server=on,wait=off \
        --monitor chardev=qmp
    local daemon=$! live='nbd+unix:///guest?socket=nbd.sock'
    local snap='nbd+unix:///snap?socket=nbd.sock' at_snapshot writes
    run lockstep-qmp qmp.sock query-block-exports
    note "The guest writes for half a second; then it pauses (a backup agent"
    note "would fsfreeze it) while the snapshot is taken."
    guest "$live" 500ms
    guest_pause

    note "--- a) lockstep's one call: fleecing-start"
    note "The snapshot must hold exactly what the disk holds now:"
    checksum "$live"
    at_snapshot=$sum
    run lockstep-qmp qmp.sock fleecing-start '{"id": "snap", "node": "disk",
  "temp": {"filename": "fleece.qcow2", "format": "qcow2"}}'
    note "The guest goes on writing while the backup copies the snapshot:"
    guest "$live" 1500ms
    run nbdcopy "$snap" backup.raw
    guest_running
    guest_pause
    writes=$(guest_writes)
    run lockstep-qmp qmp.sock fleecing-stop '{"id": "snap"}'
    checksum backup.raw
    check "the backup equals the disk at fleecing-start" \
        [ "$sum" = "$at_snapshot" ]
    checksum "$live"
    check "the live disk moved on ($writes writes of the guest)" \
        [ "$sum" != "$at_snapshot" ]

    note "--- b) the same with QEMU's commands (qemu-storage-daemon 7.2 runs"
    note "them unchanged): add the filter and the snapshot-access node, and"
    note "slip the filter under 'front' with blockdev-reopen.  The guest is"
    note "paused again: the snapshot must hold the checksum just above."
    at_snapshot=$sum
    qmp_in qmp.sock <<'EOF'
{"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "fl-temp",
  "file": {"driver": "file", "filename": "fleece.qcow2"}}}
{"execute": "blockdev-add", "arguments": {"driver": "copy-before-write",
  "node-name": "fl-cbw", "file": "disk", "target": "fl-temp"}}
{"execute": "blockdev-reopen", "arguments": {"options": [
  {"driver": "raw", "node-name": "front", "file": "fl-cbw"}]}}
{"execute": "blockdev-add", "arguments": {"driver": "snapshot-access",
  "node-name": "fl-access", "file": "fl-cbw"}}
{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "snap",
  "node-name": "fl-access", "name": "snap"}}
EOF
    guest "$live" 1500ms
    run nbdcopy "$snap" backup-qemu.raw
    guest_running
    guest_pause
    writes=$(guest_writes)
    qmp_in qmp.sock <<'EOF'
{"execute": "block-export-del", "arguments": {"id": "snap"}}
{"execute": "blockdev-del", "arguments": {"node-name": "fl-access"}}
{"execute": "blockdev-reopen", "arguments": {"options": [
  {"driver": "raw", "node-name": "front", "file": "disk"}]}}
{"execute": "blockdev-del", "arguments": {"node-name": "fl-cbw"}}
{"execute": "blockdev-del", "arguments": {"node-name": "fl-temp"}}
EOF
    checksum backup-qemu.raw
    check "the backup equals the disk at the snapshot (QEMU's recipe)" \
        [ "$sum" = "$at_snapshot" ]
    checksum "$live"
    check "the live disk moved on ($writes writes of the guest)" \
        [ "$sum" != "$at_snapshot" ]
    run lockstep-qmp qmp.sock quit
    wait "$daemon"
    run qemu-img check -q disk.qcow2
    result fleecing "a backup copied while the guest wrote equals the disk at the snapshot (fleecing-start and QEMU's recipe); the disk moved on"
}

# ---- 2. Replication -------------------------------------------------------

step_replication() {
    title "2. Replication: the secondary takes over when the primary dies"
    run mkdir replication
    run cd replication
    run lockstep-img create -q -f qcow2 primary.qcow2 32M
    run lockstep-io -f qcow2 -c 'write -P 0x5d 0 32M' primary.qcow2
    note "The secondary starts from a copy of the primary's disk, with two"
    note "empty overlays: 'hidden' keeps what a checkpoint must bring back,"
    note "'active' takes the secondary guest's own writes."
    run cp primary.qcow2 secondary.qcow2
    run lockstep-img create -q -f qcow2 hidden.qcow2 32M
    run lockstep-img create -q -f qcow2 active.qcow2 32M

    note "The secondary daemon: it exports its disk ('sec-disk') for the"
    note "primary's writes, and its view of the disk ('guest') for its guest."
    bg lockstepd --chardev socket,id=qmp,path=sec-qmp.sock,server=on,wait=off \
        --monitor chardev=qmp
    local secondary=$!
    qmp_in sec-qmp.sock <<'EOF'
{"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "sec-disk",
  "file": {"driver": "file", "filename": "secondary.qcow2"}}}
{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix",
  "data": {"path": "sec-nbd.sock"}}}}
{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "sec-disk",
  "node-name": "sec-disk", "writable": true}}
{"execute": "blockdev-add", "arguments": {"driver": "replication", "node-name": "rep",
  "mode": "secondary", "top-id": "top",
  "file": {"driver": "qcow2", "node-name": "active",
    "file": {"driver": "file", "filename": "active.qcow2"},
    "backing": {"driver": "qcow2", "node-name": "hidden",
      "file": {"driver": "file", "filename": "hidden.qcow2"},
      "backing": "sec-disk"}}}}
{"execute": "blockdev-add", "arguments": {"driver": "quorum", "node-name": "top",
  "read-pattern": "fifo", "vote-threshold": 1, "children": ["rep"]}}
{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "guest",
  "node-name": "top", "name": "guest", "writable": true}}
{"execute": "replication-start", "arguments": {"primary": false}}
EOF
    note "The primary daemon: a quorum writes every guest write to its own"
    note "disk and, over NBD, to the secondary's."
    bg lockstepd --chardev socket,id=qmp,path=pri-qmp.sock,server=on,wait=off \
        --monitor chardev=qmp
    local primary=$!
    qmp_in pri-qmp.sock <<'EOF'
{"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "p-local",
  "file": {"driver": "file", "filename": "primary.qcow2"}}}
{"execute": "blockdev-add", "arguments": {"driver": "replication", "node-name": "p-rep",
  "mode": "primary", "file": {"driver": "nbd", "export": "sec-disk",
    "server": {"type": "unix", "path": "sec-nbd.sock"}}}}
{"execute": "blockdev-add", "arguments": {"driver": "quorum", "node-name": "p-top",
  "read-pattern": "fifo", "vote-threshold": 1, "children": ["p-local", "p-rep"]}}
{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix",
  "data": {"path": "pri-nbd.sock"}}}}
{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "guest",
  "node-name": "p-top", "name": "guest", "writable": true}}
{"execute": "replication-start", "arguments": {"primary": true}}
EOF
    note "(replication-start and replication-checkpoint are QEMU's"
    note "xen-set-replication and xen-colo-do-checkpoint; both names work.)"
    local pri='nbd+unix:///guest?socket=pri-nbd.sock'
    local sec='nbd+unix:///guest?socket=sec-nbd.sock'
    local n at_checkpoint='' writes
    for n in 1 2; do
        note "The guest writes on the primary; then checkpoint $n (COLO"
        note "pauses both guests for it):"
        guest "$pri" 500ms
        guest_pause
        checksum "$pri"
        at_checkpoint=$sum
        run lockstep-qmp sec-qmp.sock replication-checkpoint
        checksum "$sec"
        check "after checkpoint $n the secondary's view equals the primary's disk" \
            [ "$sum" = "$at_checkpoint" ]
    done
    note "The guest writes again, and the primary dies in the middle of it:"
    guest "$pri" 30
    run sleep 0.5
    note "The primary daemon is pid $primary:"
    run kill -KILL "$primary"
    { wait "$primary"; } 2>/dev/null || true
    wait "$guest_pid" || true
    note "Failover on the secondary: shut the door the primary wrote through,"
    note "then stop replication with failover (a job merges its overlays into"
    note "secondary.qcow2, which it then uses directly; wait for its end):"
    run lockstep-qmp -w BLOCK_JOB_COMPLETED sec-qmp.sock \
        block-export-del '{"id": "sec-disk", "mode": "hard"}' \
        replication-stop '{"failover": true}' \
        query-replication
    note "The secondary serves the disk as it was at the last checkpoint:"
    checksum "$sec"
    check "after the failover the secondary's disk is the one of checkpoint 2" \
        [ "$sum" = "$at_checkpoint" ]
    note "... and its guest writes and reads it:"
    run qemu-io -f raw -c 'write -P 0x7e 1M 64k' -c 'read -P 0x7e 1M 64k' "$sec"
    run lockstep-qmp sec-qmp.sock quit
    wait "$secondary"
    run qemu-img check -q secondary.qcow2
    result replication "after SIGKILL of the primary, the secondary served the disk as at the last checkpoint"
}

# ---- 3. Incremental backup ------------------------------------------------

# lockstep-backup KIND in the background while the guest writes: the guest
# pauses for the snapshot only (the tool says when it has passed), so the
# backup must hold the checksum taken just before.  The tool's JSON lines
# go to KIND.json.
backup_while_guest_writes() {
    local args=("$1" --socket qmp.sock --node disk --nbd-socket nbd.sock
                --to backups --progress=json)
    say lockstep-backup "${args[@]}" ">$1.json" "&"
    lockstep-backup "${args[@]}" >"$1.json" &
    local tool=$!
    while ! grep -q '"type":"snapshot"' "$1.json" 2>/dev/null; do
        kill -0 "$tool" 2>/dev/null || break
        sleep 0.05
    done
    note "The snapshot point has passed; the guest goes on writing:"
    guest "$live" 1500ms 4M
    say wait "$tool"
    wait "$tool"
    guest_running
    guest_pause
    tail -n 1 "$1.json"
}

# A member of the last JSON line of FILE (numbers and strings).
json_member() {
    tail -n 1 "$1" | sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p"
}

serve_disk() {
    bg lockstepd \
        --blockdev driver=qcow2,node-name=disk,file.driver=file,file.filename=disk.qcow2 \
        --nbd-server addr.type=unix,addr.path=nbd.sock \
        --export type=nbd,id=guest,node-name=disk,name=guest,writable=on \
        --chardev socket,id=qmp,path=qmp.sock,server=on,wait=off \
        --monitor chardev=qmp
    daemon=$!
    run lockstep-qmp qmp.sock query-block-exports >/dev/null
}

step_backup() {
    title "3. Incremental backup that survives a restart: lockstep-backup"
    run mkdir backup
    run cd backup
    run lockstep-img create -q -f qcow2 disk.qcow2 64M
    run lockstep-io -f qcow2 -c 'write -P 0x5d 0 32M' disk.qcow2
    local daemon live='nbd+unix:///guest?socket=nbd.sock'
    local day0 day1 t0 t1 full_read inc_read inc_dirty
    note "The daemon serves the disk; the backup tool talks to its monitor"
    note "(QMP) and reads over its NBD server."
    serve_disk
    guest "$live" 500ms 4M
    guest_pause
    note "--- Day 0: a full backup.  The disk now holds:"
    checksum "$live"
    day0=$sum
    backup_while_guest_writes full
    t0=$(json_member full.json file)
    t0=${t0%.qcow2}
    full_read=$(json_member full.json bytes-read)

    note "The guest writes to its first 4 MiB only (say, a database)."
    note "--- The daemon restarts.  The bitmap that records the guest's"
    note "writes since day 0 is stored in disk.qcow2 and loaded again:"
    run lockstep-qmp qmp.sock quit
    wait "$daemon"
    serve_disk
    guest "$live" 500ms 4M
    guest_pause
    note "--- Day 1: an incremental backup reads only what the bitmap marks."
    checksum "$live"
    day1=$sum
    backup_while_guest_writes incremental
    t1=$(json_member incremental.json file)
    t1=${t1%.qcow2}
    inc_read=$(json_member incremental.json bytes-read)
    inc_dirty=$(json_member incremental.json dirty-bytes)
    check "day 1 read only the dirty data ($inc_read bytes, dirty $inc_dirty; the full backup read $full_read)" \
        [ "$inc_read" -le "$inc_dirty" -a "$inc_read" -lt "$full_read" ]
    run lockstep-qmp qmp.sock quit
    wait "$daemon"

    note "--- Restore both days, check the chain:"
    run lockstep-backup verify backups
    run lockstep-backup restore backups --at "$t0" --format raw --to day0.raw
    checksum day0.raw
    check "the day-0 restore equals the disk at the day-0 snapshot" \
        [ "$sum" = "$day0" ]
    run lockstep-backup restore backups --format raw --to day1.raw
    checksum day1.raw
    check "the day-1 restore (full + incremental) equals the disk at the day-1 snapshot" \
        [ "$sum" = "$day1" ]
    check "the disk changed between the two days" [ "$day0" != "$day1" ]
    run qemu-img check -q disk.qcow2
    result backup "full and incremental backups taken while the guest wrote, across a daemon restart, restore the disk of each snapshot; the incremental one read only dirty data"
}

# ---- Run the steps ----------------------------------------------------------

printf '%s' "$bold"
echo "lockstep demo: the jobs lockstep is for, with the commands to paste."
echo "Programs from $bin (on PATH); scratch directory $dir."
printf '%s' "$off"
say cd "$dir"
cd "$dir"

for step in $steps; do
    # Each step runs in a subshell that stops at the first failing command
    # and kills what it started in the background.
    set +e
    (
        set -e
        trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT
        cd "$dir"
        "step_$step"
    )
    rc=$?
    set -e
    if ! grep -q "^$step|" "$results"; then
        printf '%s|did NOT hold|a command failed (exit status %d): see above\n' \
            "$step" "$rc" >>"$results"
    elif [ "$rc" != 0 ]; then
        sed -i "s/^$step|held|.*/$step|did NOT hold|a command failed after the checks (exit status $rc)/" \
            "$results"
    fi
done

title "What the demo showed"
status=0
n=0
while IFS='|' read -r step verdict text; do
    n=$((n + 1))
    printf '%d. %-12s %s: %s\n' "$n" "$step" "$verdict" "$text"
    [ "$verdict" = held ] || status=1
done <"$results"
echo "(${SECONDS} seconds)"
exit "$status"
