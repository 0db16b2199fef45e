/* SPDX-License-Identifier: MIT */
/*
 * lockstepd: the storage daemon.  Its command line is qemu-storage-
 * daemon's (--blockdev, --chardev, --monitor, --nbd-server, --export,
 * --daemonize, --pidfile), processed in order as QSD does, so scripts
 * written for qemu-storage-daemon run unchanged; then the main loop runs
 * the QMP monitors until quit, SIGTERM or SIGINT.
 *
 * Shutdown (quit or a signal): stop the NBD server, close every export
 * (disconnecting clients, unmounting FUSE exports), cancel jobs, flush
 * and close every node the monitor owns, answer pending QMP output, remove
 * the sockets and the pid file, exit 0.  Leaving early (a bad option)
 * closes the exports too.
 *
 * Threads: main() is the main thread and owns the graph.  The signals the
 * daemon handles are blocked before any thread exists (loop_add_signal),
 * so only the main loop's signalfd sees them.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export/export.h"
#include "job/job.h"
#include "keyval.h"
#include "lockstep/block.h"
#include "nbd/server.h"
#include "runtime/loop.h"
#include "qmp/monitor.h"
#include "qmp/qmp-internal.h"
#include "util.h"

#define PROG "lockstepd"

enum {
    OPT_BLOCKDEV = 256,
    OPT_CHARDEV,
    OPT_DAEMONIZE,
    OPT_EXPORT,
    OPT_MONITOR,
    OPT_NBD_SERVER,
    OPT_OBJECT,
    OPT_PIDFILE,
    OPT_PRINT_QMP_DOC,
};

static const struct option long_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { "trace", required_argument, NULL, 'T' },
    { "blockdev", required_argument, NULL, OPT_BLOCKDEV },
    { "chardev", required_argument, NULL, OPT_CHARDEV },
    { "daemonize", no_argument, NULL, OPT_DAEMONIZE },
    { "export", required_argument, NULL, OPT_EXPORT },
    { "monitor", required_argument, NULL, OPT_MONITOR },
    { "nbd-server", required_argument, NULL, OPT_NBD_SERVER },
    { "object", required_argument, NULL, OPT_OBJECT },
    { "pidfile", required_argument, NULL, OPT_PIDFILE },
    { "print-qmp-doc", no_argument, NULL, OPT_PRINT_QMP_DOC },
    { NULL, 0, NULL, 0 },
};

static char *g_pidfile;
static int g_daemon_pipe = -1;     /* --daemonize: tells the parent */

static void
usage(void)
{
    printf(
"Usage: " PROG " [options]\n"
"lockstep storage daemon (qemu-storage-daemon compatible)\n"
"\n"
"  -h, --help             display this help and exit\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                         accepted for compatibility and ignored\n"
"  -V, --version          output version information and exit\n"
"\n"
"  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]\n"
"             [,cache.direct=on|off][,cache.no-flush=on|off]\n"
"             [,read-only=on|off][,auto-read-only=on|off]\n"
"             [,force-share=on|off][,detect-zeroes=on|off|unmap]\n"
"             [,driver specific parameters...]\n"
"                         configure a block node (or a JSON object)\n"
"\n"
"  --chardev socket,id=<id>,path=<path>,server=on,wait=off\n"
"                         a unix socket for a QMP monitor\n"
"\n"
"  --daemonize            daemonize the process, and have the parent exit\n"
"                         once startup is complete\n"
"\n"
"  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]\n"
"           [,writable=on|off][,bitmap=<name>]\n"
"                         export the specified block node over NBD\n"
"                         (requires --nbd-server)\n"
"  --export [type=]fuse,id=<id>,node-name=<node-name>,mountpoint=<file>\n"
"           [,growable=on|off][,writable=on|off][,allow-other=on|off|auto]\n"
"                         export the specified block node as FUSE\n"
"                         (mountpoint: an existing regular file)\n"
"  --export [type=]vhost-user-blk,id=<id>,node-name=<node-name>,\n"
"           addr.type=unix,addr.path=<socket-path>[,writable=on|off]\n"
"           [,logical-block-size=<block-size>][,num-queues=<num-queues>]\n"
"  --export [type=]vhost-user-blk,id=<id>,node-name=<node-name>,\n"
"           addr.type=fd,addr.str=<fd>[,writable=on|off]\n"
"           [,logical-block-size=<block-size>][,num-queues=<num-queues>]\n"
"                         export the specified block node as a\n"
"                         vhost-user-blk device for a VMM\n"
"\n"
"  --monitor [chardev=]name[,mode=control][,pretty[=on|off]]\n"
"                         configure a QMP monitor\n"
"\n"
"  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>\n"
"               [,tls-creds=<id>][,tls-authz=<id>]\n"
"               [,max-connections=<n>][,handshake-max-seconds=<n>]\n"
"  --nbd-server addr.type=unix,addr.path=<path>\n"
"               [,tls-creds=<id>][,tls-authz=<id>]\n"
"               [,max-connections=<n>][,handshake-max-seconds=<n>]\n"
"                         start an NBD server for exporting block nodes\n"
"\n"
"  --object iothread,id=<id>[,poll-max-ns=<n>][,poll-grow=<n>]\n"
"           [,poll-shrink=<n>]\n"
"                         an iothread for exports to name: how their\n"
"                         threads busy-poll\n"
"  --object tls-creds-x509,id=<id>,dir=<dir>,endpoint=server|client\n"
"           [,verify-peer=on|off][,priority=<gnutls priority>]\n"
"  --object tls-creds-psk,id=<id>,dir=<dir>,endpoint=server|client\n"
"           [,username=<user>][,priority=<gnutls priority>]\n"
"                         TLS credentials (docs/security.md)\n"
"  --object authz-simple,id=<id>,identity=<DN or PSK user>\n"
"  --object authz-listfile,id=<id>,filename=<path>[,refresh=on|off]\n"
"  --object '{\"qom-type\":\"authz-list\",\"id\":<id>,\"policy\":...,\n"
"             \"rules\":[{\"match\":...,\"policy\":...,\"format\":...}]}'\n"
"                         who may connect to a TLS NBD server\n"
"\n"
"  --pidfile <path>       write process ID to a file after startup\n"
"\n"
"  --print-qmp-doc        write the QMP reference (Markdown) and exit\n");
}

static void
version(void)
{
    printf(PROG " version %s (lockstep %s)\n", LOCKSTEP_VERSION_STRING,
           LOCKSTEP_VERSION_STRING);
}

/*
 * Leaving before the main loop ran: the exports earlier options made go
 * first, so that no FUSE mount is left behind (a dead one would answer
 * ENOTCONN until someone unmounted it).
 */
static int
startup_exit(int status)
{
    block_export_close_all();
    return status;
}

/* A startup error: "lockstepd: --opt ARG: message", exit 1. */
static void __attribute__((noreturn))
die_opt(const char *opt, const char *arg, struct err *err)
{
    fprintf(stderr, "%s: --%s %s: %s\n", PROG, opt, arg, err->msg);
    err_free(err);
    exit(startup_exit(EXIT_FAILURE));
}

/* --blockdev: a node the monitor owns, as blockdev-add makes it. */
static bool
opt_blockdev(const char *arg, struct err **errp)
{
    json_t *opts = keyval_or_json_parse(arg, "driver", errp);
    json_t *ret;

    if (!opts) {
        return false;
    }
    ret = qmp_execute("blockdev-add", opts, errp);
    json_decref(opts);
    json_decref(ret);
    return ret != NULL;
}

/*
 * --nbd-server takes NbdServerOptions: a flat SocketAddress in "addr"
 * ({type: unix, path} or {type: inet, host, port}).
 */
static bool
opt_nbd_server(const char *arg, struct err **errp)
{
    json_t *opts = keyval_or_json_parse(arg, NULL, errp);
    struct nbd_server_options so = {
        .max_connections = NBD_DEFAULT_MAX_CONNECTIONS,
        .handshake_max_seconds = NBD_DEFAULT_HANDSHAKE_MAX_SECONDS,
    };
    char portbuf[32];
    json_t *addr;
    const char *type, *key;
    json_t *v;
    bool ok = false;

    if (!opts) {
        return false;
    }
    json_object_foreach(opts, key, v) {
        if (strcmp(key, "addr") && strcmp(key, "tls-creds") &&
            strcmp(key, "tls-authz") && strcmp(key, "max-connections") &&
            strcmp(key, "handshake-max-seconds")) {
            err_setf(errp, "Parameter '%s' is unexpected", key);
            goto out;
        }
    }
    addr = json_object_get(opts, "addr");
    if (!addr) {
        err_setf(errp, "Parameter 'addr' is missing");
        goto out;
    }
    if (!json_is_object(addr)) {
        err_setf(errp, "Invalid parameter type for 'addr', expected: object");
        goto out;
    }
    type = qmp_str(addr, "type");
    if (!type) {
        err_setf(errp, "Parameter 'addr.type' is missing");
        goto out;
    }
    if (!strcmp(type, "unix")) {
        if (!json_object_get(addr, "path")) {
            err_setf(errp, "Parameter 'addr.path' is missing");
            goto out;
        }
    } else if (!strcmp(type, "inet")) {
        if (!json_object_get(addr, "host")) {
            err_setf(errp, "Parameter 'addr.host' is missing");
            goto out;
        }
        if (!json_object_get(addr, "port")) {
            err_setf(errp, "Parameter 'addr.port' is missing");
            goto out;
        }
    } else {
        err_setf(errp, "Parameter 'addr.type' does not accept value '%s'",
                 type);
        goto out;
    }
    if ((json_object_get(opts, "tls-creds") &&
         !json_is_string(json_object_get(opts, "tls-creds"))) ||
        (json_object_get(opts, "tls-authz") &&
         !json_is_string(json_object_get(opts, "tls-authz")))) {
        err_setf(errp, "Invalid parameter type for 'tls-creds' or "
                 "'tls-authz', expected: string");
        goto out;
    }
    if (!qmp_keyval_to_int(opts, "max-connections", errp) ||
        !qmp_keyval_to_int(opts, "handshake-max-seconds", errp) ||
        !qmp_socket_address_parse(addr, &so.addr, portbuf, errp)) {
        goto out;
    }
    if (json_object_get(opts, "max-connections")) {
        so.max_connections =
            json_integer_value(json_object_get(opts, "max-connections"));
    }
    if (json_object_get(opts, "handshake-max-seconds")) {
        so.handshake_max_seconds =
            json_integer_value(json_object_get(opts,
                                               "handshake-max-seconds"));
    }
    so.tls_creds = qmp_str(opts, "tls-creds");
    so.tls_authz = qmp_str(opts, "tls-authz");
    ok = nbd_server_start(&so, errp);
out:
    json_decref(opts);
    return ok;
}

/*
 * --export: keyval (or JSON) into the block-export-add arguments: on/off
 * into booleans, and QSD's single "bitmap" into the "bitmaps" list.
 */
static bool
opt_export(const char *arg, struct err **errp)
{
    json_t *opts = keyval_or_json_parse(arg, "type", errp);
    bool ok;

    if (!opts) {
        return false;
    }
    ok = qmp_export_add_keyval(opts, errp);
    json_decref(opts);
    return ok;
}

/*
 * --chardev is QemuOpts syntax in QEMU, which still takes the deprecated
 * short booleans "server", "nowait" (with a warning, as QSD prints it);
 * rewrite them as server=on, wait=off for the keyval parser.
 */
static char *
chardev_expand_short_bools(const char *arg)
{
    static const char *const bools[] = { "server", "wait", NULL };
    size_t n = strlen(arg);
    size_t cap = n * 2 + 32;    /* "nowait" -> "wait=off" at most */
    char *out = xmalloc(cap);
    size_t o = 0;
    const char *p = arg;

    while (*p) {
        const char *end = p;
        size_t len;
        bool done = false;

        /* A token ends at a single ','; ",," is an escaped comma. */
        while (*end && !(*end == ',' && end[1] != ',')) {
            end += (*end == ',' && end[1] == ',') ? 2 : 1;
        }
        len = (size_t)(end - p);
        for (size_t i = 0; bools[i] && !done; i++) {
            size_t bl = strlen(bools[i]);
            bool neg = len == bl + 2 && !strncmp(p, "no", 2) &&
                       !strncmp(p + 2, bools[i], bl);

            if ((len == bl && !strncmp(p, bools[i], bl)) || neg) {
                fprintf(stderr, "%s: --chardev %s: warning: short-form "
                        "boolean option '%.*s' deprecated\nPlease use "
                        "%s=%s instead\n", PROG, arg, (int)len, p, bools[i],
                        neg ? "off" : "on");
                o += (size_t)snprintf(out + o, cap - o, "%s=%s", bools[i],
                                      neg ? "off" : "on");
                done = true;
            }
        }
        if (!done) {
            memcpy(out + o, p, len);
            o += len;
        }
        p = end;
        if (*p == ',') {
            out[o++] = ',';
            p++;
        }
    }
    out[o] = '\0';
    return out;
}

static bool
opt_chardev(const char *arg, struct err **errp)
{
    CLEANUP_FREE char *expanded = chardev_expand_short_bools(arg);
    json_t *opts = keyval_parse(expanded, "backend", errp);
    bool ok;

    if (!opts) {
        return false;
    }
    ok = monitor_chardev_add(opts, errp);
    json_decref(opts);
    return ok;
}

static bool
opt_keyval(const char *arg, const char *implied,
           bool (*fn)(json_t *opts, struct err **errp), struct err **errp)
{
    json_t *opts = keyval_parse(arg, implied, errp);
    bool ok;

    if (!opts) {
        return false;
    }
    ok = fn(opts, errp);
    json_decref(opts);
    return ok;
}

/* --object: keyval, or JSON (authz-list's rules read better so). */
static bool
opt_object(const char *arg, struct err **errp)
{
    json_t *opts = keyval_or_json_parse(arg, "qom-type", errp);
    bool ok;

    if (!opts) {
        return false;
    }
    ok = qmp_object_add_keyval(opts, errp);
    json_decref(opts);
    return ok;
}

/* ---- Daemonizing ------------------------------------------------------- */

/*
 * Fork before anything else runs (no threads yet).  The parent waits for
 * the child to report that startup is complete (one byte on a pipe) and
 * exits 0, or exits 1 when the child died first; the child starts a new
 * session and carries on.
 */
static void
daemonize_fork(void)
{
    int fds[2];
    pid_t pid;

    if (pipe2(fds, O_CLOEXEC) < 0) {
        perror(PROG ": pipe");
        exit(EXIT_FAILURE);
    }
    pid = fork();
    if (pid < 0) {
        perror(PROG ": fork");
        exit(EXIT_FAILURE);
    }
    if (pid > 0) {
        char c;
        ssize_t n;

        close(fds[1]);
        do {
            n = read(fds[0], &c, 1);
        } while (n < 0 && errno == EINTR);
        _exit(n == 1 && c == 0 ? EXIT_SUCCESS : EXIT_FAILURE);
    }
    close(fds[0]);
    g_daemon_pipe = fds[1];
    setsid();
}

static void
daemonize_done(void)
{
    char c = 0;
    int fd;

    if (g_daemon_pipe < 0) {
        return;
    }
    if (chdir("/") < 0) {
        /* Harmless: paths were all resolved at startup. */
    }
    fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        if (fd > STDERR_FILENO) {
            close(fd);
        }
    }
    if (write(g_daemon_pipe, &c, 1) != 1) {
        /* The parent is gone; nothing to tell. */
    }
    close(g_daemon_pipe);
    g_daemon_pipe = -1;
}

static bool
write_pidfile(const char *path, struct err **errp)
{
    char buf[32];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int len;

    if (fd < 0) {
        err_setf_errno(errp, errno, "Cannot open pid file");
        return false;
    }
    len = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (write_full(fd, buf, (size_t)len) < 0) {
        err_setf_errno(errp, errno, "Failed to write pid file");
        close(fd);
        return false;
    }
    close(fd);
    return true;
}

/* ---- Main loop hooks --------------------------------------------------- */

/* Each NBD client costs a file descriptor and no thread: take the hard
 * limit, so that thousands of clients do not stop at the usual soft limit
 * of 1024. */
static void
raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void
quit_now(void)
{
    loop_quit();
}

static void
signal_cb(int signo UNUSED, void *opaque UNUSED)
{
    loop_quit();
}

static void
shutdown_daemon(void)
{
    struct block_node *node = NULL;
    struct block_node **owned = NULL;
    size_t n = 0;

    /* Connects still waiting for a peer end now; requests waiting on
     * one give up after the drain patience, not never. */
    qmp_blockdev_add_cancel_all();
    block_shutdown_begin();
    /* Not running is not an error worth reporting at exit. */
    nbd_server_stop(NULL);
    block_export_close_all();
    job_cancel_sync_all();
    qmp_fleecing_stop_all();

    /* Flush, then drop the monitor's references: formats write their
     * metadata and close cleanly.  Collect first: unref frees nodes. */
    block_drain_begin();
    while ((node = block_node_next(node))) {
        block_flush(node);
        if (node->monitor_owned) {
            owned = xrealloc(owned, (n + 1) * sizeof(*owned));
            owned[n++] = node;
        }
    }
    for (size_t i = n; i-- > 0;) {
        owned[i]->monitor_owned = false;
        block_node_unref(owned[i]);
    }
    block_drain_end();
    free(owned);

    monitor_close_all();
    qmp_objects_free_all();
    if (g_pidfile) {
        unlink(g_pidfile);
    }
}

int
main(int argc, char **argv)
{
    struct err *err = NULL;
    int c;
    int ret;

    /* --daemonize must fork before any thread exists. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--daemonize")) {
            daemonize_fork();
            break;
        }
        if (!strcmp(argv[i], "--")) {
            break;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    ret = loop_init();
    if (ret < 0) {
        fprintf(stderr, "%s: cannot set up the main loop: %s\n", PROG,
                strerror(-ret));
        return EXIT_FAILURE;
    }
    if (loop_add_signal(SIGTERM, signal_cb, NULL) < 0 ||
        loop_add_signal(SIGINT, signal_cb, NULL) < 0 ||
        loop_add_signal(SIGHUP, signal_cb, NULL) < 0) {
        fprintf(stderr, "%s: cannot set up signal handling\n", PROG);
        return EXIT_FAILURE;
    }
    monitor_init();
    qmp_set_quit_handler(quit_now);

    opterr = 0;
    while ((c = getopt_long(argc, argv, "-hT:V", long_options, NULL)) != -1) {
        bool ok = true;
        const char *name = NULL;

        switch (c) {
        case 'h':
            usage();
            return startup_exit(EXIT_SUCCESS);
        case 'V':
            version();
            return startup_exit(EXIT_SUCCESS);
        case 'T':
            fprintf(stderr, "%s: note: tracing is not supported; '-T %s' "
                    "ignored\n", PROG, optarg);
            break;
        case OPT_BLOCKDEV:
            name = "blockdev";
            ok = opt_blockdev(optarg, &err);
            break;
        case OPT_CHARDEV:
            name = "chardev";
            ok = opt_chardev(optarg, &err);
            break;
        case OPT_MONITOR:
            name = "monitor";
            ok = opt_keyval(optarg, "chardev", monitor_add, &err);
            break;
        case OPT_NBD_SERVER:
            name = "nbd-server";
            ok = opt_nbd_server(optarg, &err);
            break;
        case OPT_EXPORT:
            name = "export";
            ok = opt_export(optarg, &err);
            break;
        case OPT_OBJECT:
            name = "object";
            ok = opt_object(optarg, &err);
            break;
        case OPT_DAEMONIZE:
            break;              /* done above */
        case OPT_PIDFILE:
            free(g_pidfile);
            g_pidfile = xstrdup(optarg);
            break;
        case OPT_PRINT_QMP_DOC:
            qmp_schema_print_doc(stdout);
            return startup_exit(EXIT_SUCCESS);
        case 1:
            fprintf(stderr, "%s: %s: Unexpected argument\n", PROG, optarg);
            return startup_exit(EXIT_FAILURE);
        case ':':
            fprintf(stderr, "%s: option '%s' requires an argument\n", PROG,
                    argv[optind - 1]);
            return startup_exit(EXIT_FAILURE);
        default:
            fprintf(stderr, "%s: unrecognized option '%s'\n", PROG,
                    argv[optind - 1]);
            return startup_exit(EXIT_FAILURE);
        }
        if (!ok) {
            die_opt(name, optarg, err);
        }
    }

    if (g_pidfile && !write_pidfile(g_pidfile, &err)) {
        fprintf(stderr, "%s: cannot create PID file: %s\n", PROG, err->msg);
        err_free(err);
        return startup_exit(EXIT_FAILURE);
    }
    daemonize_done();

    loop_run();

    shutdown_daemon();
    loop_fini();
    free(g_pidfile);
    return EXIT_SUCCESS;
}
