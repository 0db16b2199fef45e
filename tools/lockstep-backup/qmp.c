/* SPDX-License-Identifier: MIT */
/*
 * A QMP client: one unix socket, one command at a time.  Messages are one
 * JSON object a line.  Replies carry the "id" we sent; events that come
 * in between are kept for qmp_wait_event().  Every read waits at most
 * timeout_ms for the next byte: a daemon that hangs fails the command
 * (ETIMEDOUT) instead of hanging the tool, and the connection is then
 * marked broken, since a late reply would be taken for the next one's.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "backup.h"
#include "util.h"

struct qmp {
    int fd;
    int timeout_ms;
    bool broken;
    char *buf;            /* received bytes not yet parsed */
    size_t len, cap;
    json_t *events;       /* events not yet waited for */
    unsigned long next_id;
};

static void
qmp_fail(struct qmp *q, struct err **errp, int errnum, const char *what)
{
    q->broken = true;
    err_setf_errno(errp, errnum, "QMP: %s", what);
}

static bool
qmp_send(struct qmp *q, json_t *msg, struct err **errp)
{
    CLEANUP_FREE char *s = json_dumps(msg, JSON_COMPACT);
    CLEANUP_FREE char *line = xasprintf("%s\n", s);
    size_t len = strlen(line), off = 0;

    while (off < len) {
        ssize_t n = send(q->fd, line + off, len - off, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            qmp_fail(q, errp, errno, "sending to the daemon");
            return false;
        }
        off += (size_t)n;
    }
    return true;
}

/* The next message, waiting at most timeout_ms for each piece of it. */
static json_t *
qmp_recv(struct qmp *q, struct err **errp)
{
    for (;;) {
        char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
        struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
        json_error_t jerr;
        ssize_t n;
        int r;

        if (nl) {
            size_t line = (size_t)(nl - q->buf);
            json_t *msg = json_loadb(q->buf, line, 0, &jerr);

            memmove(q->buf, nl + 1, q->len - line - 1);
            q->len -= line + 1;
            if (!msg || !json_is_object(msg)) {
                json_decref(msg);
                qmp_fail(q, errp, EPROTO, "the daemon sent a message that "
                         "is not a JSON object");
                return NULL;
            }
            return msg;
        }
        if (q->broken) {
            err_setf_errno(errp, EPIPE, "QMP: connection unusable");
            return NULL;
        }
        r = poll(&pfd, 1, q->timeout_ms);
        if (r < 0 && errno == EINTR) {
            if (bk_check_interrupted(errp)) {
                q->broken = true;
                return NULL;
            }
            continue;
        }
        if (r == 0) {
            qmp_fail(q, errp, ETIMEDOUT, "the daemon did not answer");
            return NULL;
        }
        if (q->cap - q->len < 4096) {
            q->cap = q->cap * 2 + 4096;
            q->buf = xrealloc(q->buf, q->cap);
        }
        n = recv(q->fd, q->buf + q->len, q->cap - q->len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            qmp_fail(q, errp, n == 0 ? ECONNRESET : errno,
                     "lost the connection to the daemon");
            return NULL;
        }
        q->len += (size_t)n;
    }
}

/* Messages until the reply to id; events are kept. */
static json_t *
qmp_reply(struct qmp *q, unsigned long id, struct err **errp)
{
    for (;;) {
        json_t *msg = qmp_recv(q, errp);
        json_t *jid;

        if (!msg) {
            return NULL;
        }
        if (json_object_get(msg, "event")) {
            json_array_append_new(q->events, msg);
            continue;
        }
        jid = json_object_get(msg, "id");
        if (json_is_integer(jid) && (unsigned long)json_integer_value(jid) ==
            id) {
            return msg;
        }
        json_decref(msg);   /* a stray reply: not ours */
    }
}

json_t *
qmp_cmd(struct qmp *q, const char *cmd, json_t *args, struct err **errp)
{
    unsigned long id = ++q->next_id;
    json_t *req = json_pack("{s:s, s:I}", "execute", cmd, "id",
                            (json_int_t)id);
    json_t *reply, *ret, *error;
    bool sent;

    if (args) {
        json_object_set_new(req, "arguments", args);
    }
    sent = !q->broken ? qmp_send(q, req, errp)
                      : (err_setf_errno(errp, EPIPE, "QMP: connection "
                                        "unusable"), false);
    json_decref(req);
    if (!sent) {
        return NULL;
    }
    reply = qmp_reply(q, id, errp);
    if (!reply) {
        err_prepend(errp, "%s: ", cmd);
        return NULL;
    }
    error = json_object_get(reply, "error");
    if (error) {
        const char *desc = json_string_value(json_object_get(error, "desc"));

        err_setf(errp, "%s: %s", cmd, desc ? desc : "failed");
        json_decref(reply);
        return NULL;
    }
    ret = json_incref(json_object_get(reply, "return"));
    json_decref(reply);
    return ret ? ret : json_object();
}

bool
qmp_run(struct qmp *q, const char *cmd, json_t *args, struct err **errp)
{
    json_t *r = qmp_cmd(q, cmd, args, errp);

    json_decref(r);
    return r != NULL;
}

bool
qmp_broken(const struct qmp *q)
{
    return q->broken;
}

static bool
event_matches(json_t *ev, const char *name, va_list pairs)
{
    const char *n = json_string_value(json_object_get(ev, "event"));
    json_t *data = json_object_get(ev, "data");
    const char *key;
    bool match = n && !strcmp(n, name);

    while ((key = va_arg(pairs, const char *)) != NULL) {
        const char *want = va_arg(pairs, const char *);
        const char *v = json_string_value(json_object_get(data, key));

        match = match && v && !strcmp(v, want);
    }
    return match;
}

bool
qmp_wait_event(struct qmp *q, struct err **errp, const char *name, ...)
{
    for (;;) {
        json_t *msg;

        for (size_t i = 0; i < json_array_size(q->events); i++) {
            va_list ap;
            bool match;

            va_start(ap, name);
            match = event_matches(json_array_get(q->events, i), name, ap);
            va_end(ap);
            if (match) {
                for (size_t k = 0; k <= i; k++) {
                    json_array_remove(q->events, 0);
                }
                return true;
            }
        }
        msg = qmp_recv(q, errp);
        if (!msg) {
            err_prepend(errp, "waiting for %s: ", name);
            return false;
        }
        if (json_object_get(msg, "event")) {
            json_array_append_new(q->events, msg);
        } else {
            json_decref(msg);
        }
    }
}

struct qmp *
qmp_connect(const char *path, int timeout_ms, struct err **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct qmp *q;
    struct err *e = NULL;
    json_t *greeting;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        err_setf(errp, "QMP socket path too long: %s", path);
        return NULL;
    }
    strcpy(sa.sun_path, path);
    q = xzalloc(sizeof(*q));
    q->timeout_ms = timeout_ms;
    q->events = json_array();
    q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (q->fd < 0 || connect(q->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        err_setf_errno(errp, errno, "Could not connect to QMP socket %s",
                       path);
        qmp_close(q);
        return NULL;
    }
    greeting = qmp_recv(q, &e);
    if (!greeting || !json_object_get(greeting, "QMP")) {
        if (greeting) {
            err_setf(errp, "%s does not speak QMP (no greeting)", path);
        } else if (e->errnum == ETIMEDOUT) {
            err_setf(errp, "%s: no QMP greeting within %d s (a monitor "
                     "of qemu-storage-daemon serves one client at a time: "
                     "is another one connected?)", path, timeout_ms / 1000);
        } else {
            err_prepend(&e, "%s: ", path);
            err_propagate(errp, e);
            e = NULL;
        }
        err_free(e);
        json_decref(greeting);
        qmp_close(q);
        return NULL;
    }
    json_decref(greeting);
    if (!qmp_run(q, "qmp_capabilities", NULL, errp)) {
        qmp_close(q);
        return NULL;
    }
    return q;
}

void
qmp_close(struct qmp *q)
{
    if (!q) {
        return;
    }
    if (q->fd >= 0) {
        close(q->fd);
    }
    json_decref(q->events);
    free(q->buf);
    free(q);
}
