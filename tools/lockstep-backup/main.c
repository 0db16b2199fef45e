/* SPDX-License-Identifier: MIT */
/*
 * lockstep-backup's command line: the subcommands, their options, the
 * help text (a manual page), signals, and the messages every file uses.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"
#include "util.h"

#ifndef LOCKSTEP_VERSION
#define LOCKSTEP_VERSION "0.1.0"
#endif

#define DEFAULT_CONNECTIONS 4
#define DEFAULT_TIMEOUT_S 60

volatile sig_atomic_t bk_interrupted;
static bool in_teardown;

static const char manual[] =
"NAME\n"
"    lockstep-backup - full and incremental backups of a running disk\n"
"\n"
"SYNOPSIS\n"
"    lockstep-backup full --socket QMP_SOCKET --node NODE --to DIR [OPTIONS]\n"
"    lockstep-backup incremental --socket QMP_SOCKET --node NODE --to DIR\n"
"                    [--since-bitmap NAME] [OPTIONS]\n"
"    lockstep-backup restore DIR [--at TIME] --to FILE [--format FMT]\n"
"                    [--progress=MODE]\n"
"    lockstep-backup verify DIR\n"
"    lockstep-backup --help | --version\n"
"\n"
"DESCRIPTION\n"
"    Backs up a disk that lockstepd or qemu-storage-daemon serves, while\n"
"    the guest keeps writing.  The tool talks QMP to the daemon to take a\n"
"    point-in-time snapshot (fleecing: a scratch image receives the old\n"
"    data of what the guest overwrites), reads the snapshot over NBD and\n"
"    writes DIR/TIME.qcow2.  At the snapshot it creates a persistent dirty\n"
"    bitmap on the disk, in the same transaction, so the next incremental\n"
"    backup reads only what changed since.  An incremental backup is a\n"
"    qcow2 overlay backed by the previous backup; DIR/manifest.json lists\n"
"    the chain.  Any failure (daemon, network, disk) undoes the run: the\n"
"    snapshot is removed, the bitmaps are put back as they were, the\n"
"    unfinished image is deleted and the manifest is left as it was.\n"
"\n"
"COMMANDS\n"
"    full         Back up every allocated byte of the disk into a new\n"
"                 chain; zero areas stay sparse.\n"
"    incremental  Back up what the bitmap of the last backup marks, into\n"
"                 an overlay of the last backup.  Refused when there is\n"
"                 no backup yet, when the disk changed size, or when the\n"
"                 bitmap is missing, inconsistent (the daemon was killed)\n"
"                 or disabled: take a full backup then.\n"
"    restore      Rebuild a disk image from the chain ending at one\n"
"                 backup (default: the last) into FILE, which must not\n"
"                 exist.\n"
"    verify       Check every backup of DIR: the image exists, its size\n"
"                 and backing file match the chain, and the qcow2\n"
"                 consistency check (as qemu-img check) finds nothing.\n"
"\n"
"OPTIONS\n"
"    --socket PATH        The daemon's QMP unix socket.\n"
"    --node NODE          The node-name of the disk: the format node\n"
"                         (qcow2) that holds the bitmaps.\n"
"    --to DIR             The backup directory (created if missing).\n"
"    --since-bitmap NAME  Incremental: read this bitmap instead of the\n"
"                         one the last backup created.  It must record\n"
"                         every write since the last backup.\n"
"    --bitmap NAME        The name of the bitmap this backup creates\n"
"                         (default: backup-TIME).\n"
"    --nbd-socket PATH    The daemon's NBD server (unix socket) when it\n"
"                         already runs one; otherwise the tool starts a\n"
"                         server for the backup and stops it afterwards.\n"
"    --scratch DIR        Where the scratch image goes (default: the\n"
"                         backup directory).  It grows with what the\n"
"                         guest overwrites during the backup.\n"
"    --connections N      NBD connections reading in parallel (default\n"
"                         4), each with several requests in flight.\n"
"    --timeout SECONDS    The longest wait for an answer of the daemon\n"
"                         or the NBD server (default 60).\n"
"    --progress=MODE      auto (default: a bar when stderr is a\n"
"                         terminal), bar, json (one JSON object a line\n"
"                         on stdout every second, and a last one with\n"
"                         \"type\": \"done\" or \"error\"), none.\n"
"    --at TIME            Restore: the backup's time (or file name), as\n"
"                         verify lists them.\n"
"    --format FMT         Restore: qcow2 (default) or raw.\n"
"\n"
"BITMAPS\n"
"    A backup creates bitmap NEW on the disk at its snapshot; an\n"
"    incremental one also disables the bitmap it reads (OLD) at that\n"
"    instant.  After a backup is recorded, OLD is removed (for a full\n"
"    backup: the last chain's bitmap).  After a failure NEW is merged\n"
"    back into OLD, OLD records again and NEW is removed.  If the daemon\n"
"    dies during a backup, the next run in DIR finishes that cleanup; a\n"
"    daemon that was killed leaves OLD inconsistent, and the next\n"
"    backup has to be a full one.\n"
"\n"
"FILES\n"
"    DIR/TIME.qcow2         one backup (TIME is UTC, 20250131T235900Z)\n"
"    DIR/manifest.json      the chain, oldest first\n"
"    DIR/TIME.qcow2.part    a backup being written (never in the chain)\n"
"    DIR/.in-progress.json  the journal of a run that has not finished\n"
"    DIR/.lock              held while a run works in DIR\n"
"\n"
"EXIT STATUS\n"
"    0 success; 1 failure (the message says why); 2 usage error; 3 an\n"
"    incremental backup is not possible (no backup yet, the disk changed\n"
"    size, the bitmap is missing, inconsistent or disabled): take a full\n"
"    one.\n"
"\n"
"EXAMPLES\n"
"    lockstep-backup full --socket /run/qmp.sock --node disk0 --to /backup\n"
"    lockstep-backup incremental --socket /run/qmp.sock --node disk0 \\\n"
"        --to /backup --progress=json\n"
"    lockstep-backup verify /backup\n"
"    lockstep-backup restore /backup --at 20250131T235900Z --to disk.qcow2\n"
"\n"
"SEE ALSO\n"
"    docs/backup.md, docs/fleecing.md, lockstepd, qemu-storage-daemon(1),\n"
"    lockstep-img, qemu-img(1)\n";

/* ---- Messages -------------------------------------------------------- */

void
bk_error(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "%s: ", BK_PROG);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void
bk_report(struct err *e)
{
    if (e) {
        bk_error("%s", e->msg);
        err_free(e);
    }
}

bool
bk_check_interrupted(struct err **errp)
{
    if (!bk_interrupted || in_teardown) {
        return false;
    }
    err_setf(errp, "Interrupted");
    return true;
}

void
bk_teardown_begin(void)
{
    in_teardown = true;
}

static void
on_signal(int sig)
{
    (void)sig;
    bk_interrupted = 1;
}

static void
setup_signals(void)
{
    struct sigaction sa = { .sa_handler = on_signal };

    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* ---- Options --------------------------------------------------------- */

enum {
    OPT_SOCKET = 256, OPT_NODE, OPT_TO, OPT_SINCE, OPT_BITMAP, OPT_NBD,
    OPT_SCRATCH, OPT_CONNECTIONS, OPT_TIMEOUT, OPT_PROGRESS, OPT_AT,
    OPT_FORMAT, OPT_HELP,
};

static const struct option longopts[] = {
    { "socket", required_argument, NULL, OPT_SOCKET },
    { "node", required_argument, NULL, OPT_NODE },
    { "to", required_argument, NULL, OPT_TO },
    { "since-bitmap", required_argument, NULL, OPT_SINCE },
    { "bitmap", required_argument, NULL, OPT_BITMAP },
    { "nbd-socket", required_argument, NULL, OPT_NBD },
    { "scratch", required_argument, NULL, OPT_SCRATCH },
    { "connections", required_argument, NULL, OPT_CONNECTIONS },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { "progress", required_argument, NULL, OPT_PROGRESS },
    { "at", required_argument, NULL, OPT_AT },
    { "format", required_argument, NULL, OPT_FORMAT },
    { "help", no_argument, NULL, OPT_HELP },
    { NULL, 0, NULL, 0 },
};

/* Everything any subcommand takes; each checks what applies to it. */
struct cli {
    const char *cmd;
    const char *socket, *node, *to, *since, *bitmap, *nbd, *scratch, *at;
    const char *format;
    unsigned connections;
    int timeout_s;
    enum progress_mode progress;
    bool given[OPT_HELP + 1];
};

static int
usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", BK_PROG);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information.\n", BK_PROG);
    return 2;
}

static bool
parse_progress(const char *s, enum progress_mode *m)
{
    static const char *const names[] = { "auto", "bar", "json", "none" };

    for (unsigned i = 0; i < ARRAY_SIZE(names); i++) {
        if (!strcmp(s, names[i])) {
            *m = (enum progress_mode)i;
            return true;
        }
    }
    return false;
}

static bool
parse_count(const char *s, long min, long max, long *out)
{
    char *end;

    errno = 0;
    *out = strtol(s, &end, 10);
    return !errno && end != s && !*end && *out >= min && *out <= max;
}

/* 0 ok, 1 help printed, 2 usage error (reported). */
static int
parse(int argc, char **argv, struct cli *c)
{
    int opt;
    long v;

    c->connections = DEFAULT_CONNECTIONS;
    c->timeout_s = DEFAULT_TIMEOUT_S;
    c->format = "qcow2";
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (opt == 'h' || opt == OPT_HELP) {
            fputs(manual, stdout);
            return 1;
        }
        if (opt == '?') {
            fprintf(stderr, "Try '%s --help' for more information.\n",
                    BK_PROG);
            return 2;
        }
        c->given[opt] = true;
        switch (opt) {
        case OPT_SOCKET: c->socket = optarg; break;
        case OPT_NODE: c->node = optarg; break;
        case OPT_TO: c->to = optarg; break;
        case OPT_SINCE: c->since = optarg; break;
        case OPT_BITMAP: c->bitmap = optarg; break;
        case OPT_NBD: c->nbd = optarg; break;
        case OPT_SCRATCH: c->scratch = optarg; break;
        case OPT_AT: c->at = optarg; break;
        case OPT_FORMAT: c->format = optarg; break;
        case OPT_CONNECTIONS:
            if (!parse_count(optarg, 1, 64, &v)) {
                return usage_error("--connections: a number from 1 to 64, "
                                   "not '%s'", optarg);
            }
            c->connections = (unsigned)v;
            break;
        case OPT_TIMEOUT:
            if (!parse_count(optarg, 1, 3600, &v)) {
                return usage_error("--timeout: seconds from 1 to 3600, not "
                                   "'%s'", optarg);
            }
            c->timeout_s = (int)v;
            break;
        case OPT_PROGRESS:
            if (!parse_progress(optarg, &c->progress)) {
                return usage_error("--progress: auto, bar, json or none, "
                                   "not '%s'", optarg);
            }
            break;
        }
    }
    return 0;
}

/* Options the subcommand does not take are refused, never ignored. */
static int
only(const struct cli *c, const int *allowed)
{
    for (int opt = OPT_SOCKET; opt < OPT_HELP; opt++) {
        bool ok = false;

        for (const int *a = allowed; *a; a++) {
            ok |= *a == opt;
        }
        if (c->given[opt] && !ok) {
            for (const struct option *o = longopts; o->name; o++) {
                if (o->val == opt) {
                    return usage_error("%s: option --%s does not apply",
                                       c->cmd, o->name);
                }
            }
        }
    }
    return 0;
}

static int
cmd_backup(struct cli *c, int argc, char **argv, bool incremental)
{
    static const int full_opts[] = {
        OPT_SOCKET, OPT_NODE, OPT_TO, OPT_BITMAP, OPT_NBD, OPT_SCRATCH,
        OPT_CONNECTIONS, OPT_TIMEOUT, OPT_PROGRESS, 0 };
    static const int incr_opts[] = {
        OPT_SOCKET, OPT_NODE, OPT_TO, OPT_BITMAP, OPT_NBD, OPT_SCRATCH,
        OPT_CONNECTIONS, OPT_TIMEOUT, OPT_PROGRESS, OPT_SINCE, 0 };
    struct backup_opts o = { .incremental = incremental };

    if (only(c, incremental ? incr_opts : full_opts)) {
        return 2;
    }
    if (optind != argc) {
        return usage_error("%s: unexpected argument '%s'", c->cmd,
                           argv[optind]);
    }
    if (!c->socket || !c->node || !c->to) {
        return usage_error("%s needs --socket, --node and --to", c->cmd);
    }
    o.socket = c->socket;
    o.node = c->node;
    o.dir = c->to;
    o.bitmap = c->bitmap;
    o.since = c->since;
    o.nbd_socket = c->nbd;
    o.scratch_dir = c->scratch;
    o.connections = c->connections;
    o.timeout_ms = c->timeout_s * 1000;
    o.progress = c->progress;
    return backup_run(&o);
}

static int
cmd_restore(struct cli *c, int argc, char **argv)
{
    static const int allowed[] = { OPT_TO, OPT_AT, OPT_FORMAT, OPT_PROGRESS,
                                   0 };
    struct restore_opts o;

    if (only(c, allowed)) {
        return 2;
    }
    if (optind != argc - 1 || !c->to) {
        return usage_error("restore needs DIR and --to FILE");
    }
    o.dir = argv[optind];
    o.at = c->at;
    o.to = c->to;
    o.format = c->format;
    o.progress = c->progress;
    return restore_run(&o);
}

static int
cmd_verify(struct cli *c, int argc, char **argv)
{
    static const int allowed[] = { 0 };

    if (only(c, allowed)) {
        return 2;
    }
    if (optind != argc - 1) {
        return usage_error("verify needs DIR");
    }
    return verify_run(argv[optind]);
}

int
main(int argc, char **argv)
{
    struct cli c = { 0 };
    int r;

    if (argc < 2) {
        return usage_error("a command is needed: full, incremental, "
                           "restore or verify");
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(manual, stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("%s version %s\n", BK_PROG, LOCKSTEP_VERSION);
        return 0;
    }
    c.cmd = argv[1];
    if (strcmp(c.cmd, "full") && strcmp(c.cmd, "incremental") &&
        strcmp(c.cmd, "restore") && strcmp(c.cmd, "verify")) {
        return usage_error("unknown command '%s'", c.cmd);
    }
    r = parse(argc - 1, argv + 1, &c);
    if (r) {
        return r == 1 ? 0 : 2;
    }
    argc--;
    argv++;
    setup_signals();
    if (!strcmp(c.cmd, "full") || !strcmp(c.cmd, "incremental")) {
        return cmd_backup(&c, argc, argv, !strcmp(c.cmd, "incremental"));
    }
    if (!strcmp(c.cmd, "restore")) {
        return cmd_restore(&c, argc, argv);
    }
    return cmd_verify(&c, argc, argv);
}
