/* SPDX-License-Identifier: MIT */
/*
 * The QMP monitor: listening sockets (unix or TCP chardevs), clients,
 * message framing, the greeting, and event delivery.
 *
 * Design notes.
 *   - Framing (qmp/framer.c).  A client's input is a stream of JSON
 *     values; the framer cuts it into complete values without parsing
 *     them, and only a complete value goes to json_loadb().  A parse error
 *     thus costs one message, never the connection.  Too large or too deep
 *     values are skipped and answered with one error.
 *   - Output.  Responses and events are appended to a per-client buffer
 *     written without blocking; POLLOUT is watched only while it is not
 *     empty.  A client that lets more than QMP_MAX_OUTPUT pile up is
 *     dropped.
 *   - Deferred commands.  A command that waits on a remote peer
 *     (blockdev-add connecting to an NBD server) answers later
 *     (qmp_dispatch_async).  Meanwhile its client's input is not read and
 *     bytes already read are held, so that its commands still run and
 *     answer in order; other clients and monitors are served as usual.
 *   - Lifetime.  Commands run synchronously from the read callback, and a
 *     command may end the daemon's loop (quit), so a client is never freed
 *     from inside its own callback: it is marked closed and freed by a
 *     loop_call.
 *   - Events.  The monitor is the runtime's event sink (runtime/event.h),
 *     called on whatever thread emits.  The sink turns the event into its
 *     QMP message and appends it to one FIFO; the main thread writes the
 *     FIFO out to every negotiated client: at once when it emitted the
 *     event itself, from a loop_call otherwise, and always before it
 *     writes a command's response.  So clients see events in the order
 *     they were emitted, and an event emitted before a command finished
 *     (by the command, or by a job meanwhile) precedes its response, as
 *     in QEMU.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "qmp/framer.h"
#include "runtime/loop.h"
#include "qmp/monitor.h"
#include "qmp/qmp-event.h"
#include "qmp/qmp-internal.h"
#include "util.h"

#define QMP_MAX_OUTPUT (64 * 1024 * 1024)
#define READ_CHUNK 65536

struct chardev {
    char *id;
    char *path;                     /* unix socket path, or NULL (TCP) */
    int fd;                         /* listening socket */
    struct monitor *mon;            /* attached monitor or NULL */
    struct loop_watch *watch;
    LIST_ENTRY(chardev) link;
};

struct monitor {
    struct chardev *chr;
    bool pretty;
    LIST_HEAD(, client) clients;
    LIST_ENTRY(monitor) link;
};

struct client {
    struct monitor *mon;
    int fd;
    struct loop_watch *watch;
    struct qmp_session session;
    bool closed;

    struct qmp_framer input;

    /* Output queue. */
    char *out;
    size_t out_len, out_cap;

    /* A deferred command runs (see qmp_dispatch_async): input is not
     * read, and what was read already waits in held. */
    struct reply_ticket *ticket;
    char *held;
    size_t held_len;

    LIST_ENTRY(client) link;
};

static LIST_HEAD(, chardev) g_chardevs = LIST_HEAD_INITIALIZER(g_chardevs);
static LIST_HEAD(, monitor) g_monitors = LIST_HEAD_INITIALIZER(g_monitors);

/* ---- Output ------------------------------------------------------------ */

static void client_close(struct client *cl);

static void
client_flush(struct client *cl)
{
    while (cl->out_len) {
        ssize_t n = send(cl->fd, cl->out, cl->out_len, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            client_close(cl);
            return;
        }
        memmove(cl->out, cl->out + n, cl->out_len - (size_t)n);
        cl->out_len -= (size_t)n;
    }
    loop_watch_set_events(cl->watch, (short)((cl->ticket ? 0 : POLLIN) |
                                             (cl->out_len ? POLLOUT : 0)));
}

/* Queue msg (borrowed) as one line. */
static void
client_send(struct client *cl, json_t *msg)
{
    char *text;
    size_t n;

    if (cl->closed) {
        return;
    }
    text = json_dumps(msg, (cl->mon->pretty ? JSON_INDENT(4) : 0) |
                           JSON_PRESERVE_ORDER | JSON_ENCODE_ANY |
                           JSON_ENSURE_ASCII);
    if (!text) {
        return;
    }
    if (cl->mon->pretty) {
        /* QEMU's chardev turns every line feed into CR LF. */
        size_t lf = 0, j = 0;
        char *crlf;

        for (const char *p = text; *p; p++) {
            lf += *p == '\n';
        }
        crlf = xmalloc(strlen(text) + lf + 1);
        for (const char *p = text; *p; p++) {
            if (*p == '\n') {
                crlf[j++] = '\r';
            }
            crlf[j++] = *p;
        }
        crlf[j] = '\0';
        free(text);
        text = crlf;
    }
    n = strlen(text);
    if (cl->out_len + n + 2 > QMP_MAX_OUTPUT) {
        /* Not reading its output: drop the client, not the daemon. */
        free(text);
        client_close(cl);
        return;
    }
    if (cl->out_len + n + 2 > cl->out_cap) {
        cl->out_cap = MAX(cl->out_cap * 2, cl->out_len + n + 2);
        cl->out = xrealloc(cl->out, cl->out_cap);
    }
    memcpy(cl->out + cl->out_len, text, n);
    memcpy(cl->out + cl->out_len + n, "\r\n", 2);
    cl->out_len += n + 2;
    free(text);
    client_flush(cl);
}

static void
client_send_error(struct client *cl, const char *fmt, const char *arg)
{
    struct err *err = NULL;
    json_t *resp;

    err_setf(&err, fmt, arg);
    resp = qmp_error_response(err, NULL);
    client_send(cl, resp);
    json_decref(resp);
}

/* ---- Events ------------------------------------------------------------ */

/* Event messages on their way to the clients, in emission order.
 * Protected by: g_events_lock (a leaf). */
static struct lock g_events_lock = LOCK_INITIALIZER(MONITOR_EVENTS);
static json_t *g_events;            /* array, or NULL when empty */
static bool g_events_posted;        /* a deliver_events_cb is queued */

static void
broadcast(json_t *ev)
{
    struct monitor *mon;
    struct client *cl;

    LIST_FOREACH(mon, &g_monitors, link) {
        LIST_FOREACH(cl, &mon->clients, link) {
            if (cl->session.negotiated && !cl->closed) {
                client_send(cl, ev);
            }
        }
    }
}

/* Main thread: write out every event emitted so far. */
static void
deliver_events(void)
{
    json_t *list;
    json_t *ev;
    size_t i;

    mutex_lock(&g_events_lock);
    list = g_events;
    g_events = NULL;
    mutex_unlock(&g_events_lock);
    json_array_foreach(list, i, ev) {
        broadcast(ev);
    }
    json_decref(list);
}

static void
deliver_events_cb(void *opaque UNUSED)
{
    mutex_lock(&g_events_lock);
    g_events_posted = false;
    mutex_unlock(&g_events_lock);
    deliver_events();
}

/* The runtime's event sink: any thread. */
static void
event_sink(const struct event *event)
{
    json_t *msg = qmp_event_message(event);
    bool main_thread = loop_is_main_thread();
    bool post;

    mutex_lock(&g_events_lock);
    if (!g_events) {
        g_events = json_array();
    }
    json_array_append_new(g_events, msg);
    post = !main_thread && !g_events_posted;
    g_events_posted |= post;
    mutex_unlock(&g_events_lock);
    if (main_thread) {
        deliver_events();
    } else if (post) {
        loop_call(deliver_events_cb, NULL);
    }
}

void
monitor_init(void)
{
    event_set_sink(event_sink);
}

/* ---- Input ------------------------------------------------------------- */

/*
 * The link between a deferred command and its client: the client may
 * close first, then cl is NULL and the response goes nowhere.
 */
struct reply_ticket {
    struct client *cl;
};

static void client_feed(struct client *cl, const char *data, size_t n);

static void
deferred_reply(void *opaque, json_t *resp)
{
    struct reply_ticket *t = opaque;
    struct client *cl = t->cl;
    char *held;
    size_t n;

    free(t);
    if (!cl) {
        return;
    }
    cl->ticket = NULL;
    deliver_events();
    client_send(cl, resp);
    if (cl->closed) {
        return;
    }
    /* Go on with what the client sent meanwhile, then read again. */
    held = cl->held;
    n = cl->held_len;
    cl->held = NULL;
    cl->held_len = 0;
    client_feed(cl, held, n);
    free(held);
    if (!cl->closed) {
        client_flush(cl);
    }
}

static void
handle_value(struct client *cl, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *req, *resp;
    struct reply_ticket *t;

    req = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!req) {
        client_send_error(cl, "JSON parse error, %s", jerr.text);
        return;
    }
    t = xzalloc(sizeof(*t));
    t->cl = cl;
    resp = qmp_dispatch_async(req, &cl->session, deferred_reply, t);
    json_decref(req);
    if (!resp) {
        cl->ticket = t;     /* input waits until the response is sent */
        client_flush(cl);
        return;
    }
    free(t);
    deliver_events();
    client_send(cl, resp);
    json_decref(resp);
}

/* Keep data[0..n) for after the deferred command. */
static void
client_hold(struct client *cl, const char *data, size_t n)
{
    if (cl->held_len + n > QMP_MAX_REQUEST * 4) {
        /* Flooding while it waits: as for unread output. */
        client_close(cl);
        return;
    }
    cl->held = xrealloc(cl->held, cl->held_len + n);
    memcpy(cl->held + cl->held_len, data, n);
    cl->held_len += n;
}

/* A value, or a framing error, from the framer; false to stop feeding:
 * the client is gone, or a command was deferred (the rest waits). */
static bool
frame_cb(void *opaque, const char *text, size_t len, const char *error)
{
    struct client *cl = opaque;

    if (!text) {
        client_send_error(cl, strncmp(error, "JSON ", 5) ?
                              "JSON parse error, %s" : "%s", error);
    } else {
        handle_value(cl, text, len);
    }
    return !cl->closed && !cl->ticket;
}

/* Feed received bytes to the framer; stops early if the client closed,
 * and holds the rest back when a command was deferred. */
static void
client_feed(struct client *cl, const char *data, size_t n)
{
    size_t used;

    if (cl->ticket) {
        client_hold(cl, data, n);
        return;
    }
    used = qmp_framer_feed(&cl->input, data, n, frame_cb, cl);
    if (used < n && !cl->closed && cl->ticket) {
        client_hold(cl, data + used, n - used);
    }
}

static void
client_free_cb(void *opaque)
{
    struct client *cl = opaque;

    qmp_framer_free(&cl->input);
    free(cl->out);
    free(cl->held);
    free(cl);
}

static void
client_close(struct client *cl)
{
    if (cl->closed) {
        return;
    }
    cl->closed = true;
    if (cl->ticket) {
        cl->ticket->cl = NULL;
        cl->ticket = NULL;
    }
    loop_remove_fd(cl->watch);
    close(cl->fd);
    LIST_REMOVE(cl, link);
    loop_call(client_free_cb, cl);
}

static void
client_cb(int fd, short revents, void *opaque)
{
    struct client *cl = opaque;
    char chunk[READ_CHUNK];
    ssize_t n;

    if (revents & POLLOUT) {
        client_flush(cl);
        if (cl->closed) {
            return;
        }
    }
    if (!(revents & (POLLIN | POLLHUP | POLLERR))) {
        return;
    }
    if (cl->ticket && !(revents & (POLLHUP | POLLERR))) {
        return;     /* not reading while a deferred command runs */
    }
    n = read(fd, chunk, sizeof(chunk));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return;
    }
    if (n <= 0) {
        client_close(cl);
        return;
    }
    client_feed(cl, chunk, (size_t)n);
}

/* ---- Listening --------------------------------------------------------- */

static json_t *
greeting(void)
{
    return json_pack("{s:{s:{s:{s:i, s:i, s:i}, s:s}, s:[s]}}", "QMP",
                     "version", "qemu", "micro", LOCKSTEP_VERSION_MICRO, "minor",
                     LOCKSTEP_VERSION_MINOR, "major", LOCKSTEP_VERSION_MAJOR,
                     "package", "lockstep " LOCKSTEP_VERSION_STRING,
                     "capabilities", "oob");
}

static void
accept_cb(int fd, short revents UNUSED, void *opaque)
{
    struct chardev *chr = opaque;
    struct client *cl;
    json_t *g;
    int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

    if (cfd < 0 || !chr->mon) {
        if (cfd >= 0) {
            close(cfd);
        }
        return;
    }
    cl = xzalloc(sizeof(*cl));
    cl->mon = chr->mon;
    cl->fd = cfd;
    cl->watch = loop_add_fd(cfd, POLLIN, client_cb, cl);
    LIST_INSERT_HEAD(&chr->mon->clients, cl, link);
    g = greeting();
    client_send(cl, g);
    json_decref(g);
}

/* A TCP listening socket for host:port (QEMU's inet chardev). */
static int
listen_inet(const char *host, const char *port, struct err **errp)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE,
    };
    struct addrinfo *res, *ai;
    int ret, fd = -1, one = 1, saved = 0;

    ret = getaddrinfo(*host ? host : NULL, port, &hints, &res);
    if (ret) {
        err_setf(errp, "address resolution failed for %s:%s: %s", host, port,
                 gai_strerror(ret));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC |
                    SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
            listen(fd, 16) == 0) {
            break;
        }
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        err_setf_errno(errp, saved, "Failed to bind socket");
    }
    return fd;
}

static struct chardev *
chardev_find(const char *id)
{
    struct chardev *chr;

    LIST_FOREACH(chr, &g_chardevs, link) {
        if (!strcmp(chr->id, id)) {
            return chr;
        }
    }
    return NULL;
}

bool
monitor_chardev_add(json_t *opts, struct err **errp)
{
    static const char *const known[] = {
        "backend", "id", "path", "host", "port", "server", "wait", NULL,
    };
    const char *host = qmp_str(opts, "host");
    const char *port = qmp_str(opts, "port");
    const char *backend = qmp_str(opts, "backend");
    const char *id = qmp_str(opts, "id");
    const char *path = qmp_str(opts, "path");
    bool server = false, wait = true;
    struct sockaddr_un sun;
    struct chardev *chr;
    const char *key;
    json_t *v;
    int fd;

    json_object_foreach(opts, key, v) {
        bool ok = false;

        for (size_t i = 0; known[i]; i++) {
            ok |= !strcmp(known[i], key);
        }
        if (!ok) {
            err_setf(errp, "Invalid parameter '%s'", key);
            return false;
        }
    }
    if (!backend) {
        err_setf(errp, "chardev: \"\" missing backend");
        return false;
    }
    if (strcmp(backend, "socket")) {
        err_setf(errp, "'%s' is not a valid char driver name (only unix "
                 "\"socket\" is supported)", backend);
        return false;
    }
    if (!id) {
        err_setf(errp, "Parameter 'id' is missing");
        return false;
    }
    if (chardev_find(id)) {
        err_setf(errp, "attempt to add duplicate property '%s' to object "
                 "(type 'container')", id);
        return false;
    }
    if (!path && !host) {
        err_setf(errp, "chardev: socket: no host given");
        return false;
    }
    if (host && !port) {
        err_setf(errp, "chardev: socket: no port given");
        return false;
    }
    if (qmp_opt_bool(opts, "server", &server, errp) < 0 ||
        qmp_opt_bool(opts, "wait", &wait, errp) < 0) {
        return false;
    }
    if (!server) {
        err_setf(errp, "client sockets are not supported: use server=on");
        return false;
    }
    if (wait) {
        err_setf(errp, "wait=on is not supported: use wait=off");
        return false;
    }
    if (!path) {
        fd = listen_inet(host, port, errp);
        if (fd < 0) {
            return false;
        }
        if (!socket_is_loopback(fd)) {
            /* QMP has no authentication (nor has QEMU's). */
            fprintf(stderr, "%s: warning: chardev '%s': the monitor "
                    "listens on %s:%s, not a loopback address: anyone who "
                    "can reach it controls the daemon; put it on a unix "
                    "socket (docs/security.md)\n",
                    program_invocation_short_name, id, host, port);
        }
        goto done;
    }
    if (strlen(path) >= sizeof(sun.sun_path)) {
        err_setf(errp, "UNIX socket path '%s' is too long", path);
        return false;
    }
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        err_setf_errno(errp, errno, "Failed to create socket");
        return false;
    }
    /* As QEMU does: a stale socket file from an earlier run goes. */
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        err_setf_errno(errp, errno, "Failed to bind socket to %s", path);
        close(fd);
        return false;
    }
    if (listen(fd, 16) < 0) {
        err_setf_errno(errp, errno, "Failed to listen on socket");
        close(fd);
        unlink(path);
        return false;
    }
done:
    chr = xzalloc(sizeof(*chr));
    chr->id = xstrdup(id);
    chr->path = path ? xstrdup(path) : NULL;
    chr->fd = fd;
    LIST_INSERT_HEAD(&g_chardevs, chr, link);
    return true;
}

bool
monitor_add(json_t *opts, struct err **errp)
{
    const char *id = qmp_str(opts, "chardev");
    const char *mode = qmp_str(opts, "mode");
    const char *key;
    json_t *v;
    struct chardev *chr;
    struct monitor *mon;
    bool pretty = false;

    json_object_foreach(opts, key, v) {
        if (strcmp(key, "chardev") && strcmp(key, "mode") &&
            strcmp(key, "pretty") && strcmp(key, "id")) {
            err_setf(errp, "Parameter '%s' is unexpected", key);
            return false;
        }
    }
    if (!id) {
        err_setf(errp, "Parameter 'chardev' is missing");
        return false;
    }
    if (mode && strcmp(mode, "control")) {
        err_setf(errp, "Only QMP is supported");
        return false;
    }
    if (qmp_opt_bool(opts, "pretty", &pretty, errp) < 0) {
        return false;
    }
    chr = chardev_find(id);
    if (!chr) {
        err_setf(errp, "chardev \"%s\" not found", id);
        return false;
    }
    if (chr->mon) {
        err_setf(errp, "Device '%s' is in use", id);
        return false;
    }
    mon = xzalloc(sizeof(*mon));
    mon->chr = chr;
    mon->pretty = pretty;
    LIST_INIT(&mon->clients);
    chr->mon = mon;
    chr->watch = loop_add_fd(chr->fd, POLLIN, accept_cb, chr);
    LIST_INSERT_HEAD(&g_monitors, mon, link);
    return true;
}

void
monitor_close_all(void)
{
    struct chardev *chr;
    struct monitor *mon;
    struct client *cl;

    event_set_sink(NULL);
    deliver_events();
    /* Best effort: give what is queued (the answer to quit) a moment. */
    LIST_FOREACH(mon, &g_monitors, link) {
        LIST_FOREACH(cl, &mon->clients, link) {
            int64_t deadline = clock_ns() + 1000000000LL;

            while (cl->out_len && clock_ns() < deadline) {
                struct pollfd pfd = { .fd = cl->fd, .events = POLLOUT };

                if (poll(&pfd, 1, 100) < 0) {
                    break;
                }
                client_flush(cl);
                if (cl->closed) {
                    break;
                }
            }
            if (cl->closed) {
                /* client_flush dropped it from the list: start over. */
                break;
            }
        }
    }
    while ((mon = LIST_FIRST(&g_monitors))) {
        while ((cl = LIST_FIRST(&mon->clients))) {
            client_close(cl);
        }
        LIST_REMOVE(mon, link);
        free(mon);
    }
    while ((chr = LIST_FIRST(&g_chardevs))) {
        LIST_REMOVE(chr, link);
        loop_remove_fd(chr->watch);
        close(chr->fd);
        if (chr->path) {
            unlink(chr->path);
        }
        free(chr->id);
        free(chr->path);
        free(chr);
    }
}

/* ---- Quit -------------------------------------------------------------- */

static void (*g_quit_handler)(void);

void
qmp_set_quit_handler(void (*fn)(void))
{
    g_quit_handler = fn;
}

void
qmp_request_quit(void)
{
    if (g_quit_handler) {
        g_quit_handler();
    }
}
