/*
 * http: an HTTP/1.1 "hello" worker for start_server. On every inherited stream
 * listener (TCP or unix) it answers any request with
 *
 *   200 OK
 *   hello from pid 1234 generation 5
 *
 * so a client can tell which worker generation served it.
 *
 *   start_server --port=127.0.0.1:8080 -- ./http
 *   curl http://127.0.0.1:8080/        # then: kill -HUP <start_server pid>
 *
 * One thread, one poll() loop, non-blocking sockets: hundreds of concurrent
 * connections cost a few kilobytes each. Keep-alive and pipelining work;
 * a request may arrive in any number of pieces. Request bodies (Content-Length)
 * are read and discarded; chunked request bodies are refused (501).
 *
 * Graceful shutdown on SIGTERM (what start_server sends to the old generation
 * after a restart), designed so that a restart drops no request:
 *   - the listeners are closed at once: the new generation holds the same
 *     listening sockets, so connections still queued there are served by it;
 *   - every request already received, or still arriving on a connection we
 *     accepted, is answered, with "Connection: close";
 *   - idle keep-alive connections (they have been answered and sent nothing
 *     more for EXAMPLE_IDLE_GRACE_MS, default 100) are closed: a busy client
 *     gets its next answer with "Connection: close" instead of a closed socket;
 *   - when no connection is left the process exits 0. After
 *     EXAMPLE_DRAIN_TIMEOUT_MS (default 10000) the stragglers are dropped.
 * The signal handler only writes a byte to a pipe; poll() wakes up on it.
 *
 * The supervisor hears from it through NOTIFY_SOCKET, when that is set
 * (sd_notify messages, see worker.h): READY=1 once it serves, STOPPING=1 when
 * it begins to drain, and WATCHDOG=1 every WATCHDOG_USEC / 2 when that is set
 * (otherwise an idle worker never wakes up).
 *
 * Environment knobs, for tests:
 *   EXAMPLE_READY_DELAY_MS     sleep this long before serving (a slow start)
 *   EXAMPLE_RESPONSE_DELAY_MS  hold each response this long (requests in flight
 *                              when SIGTERM arrives), without blocking the loop
 *   EXAMPLE_DRAIN_TIMEOUT_MS   how long to drain connections after SIGTERM
 *   EXAMPLE_IDLE_GRACE_MS      how long a keep-alive connection must have been
 *                              idle to be closed while draining
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, pipe2 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <server_starter.h>

#include "worker.h"

#define IN_MAX 16384 /* the largest request (head and body) we accept */
#define OUT_MAX 512

struct conn {
    int fd;
    char in[IN_MAX];
    size_t in_len;
    char out[OUT_MAX]; /* one response at a time: pipelined requests wait */
    size_t out_len, out_off;
    bool has_request;       /* in[0..req_len) is a complete request to answer */
    size_t req_len;
    bool req_keep_alive;
    bool req_head;          /* HEAD: headers only */
    int req_status;         /* 200, or the error we answer with before closing */
    long respond_at;        /* EXAMPLE_RESPONSE_DELAY_MS: when to answer */
    bool close_after_write;
    unsigned long served;
    long last_active;       /* when it last sent us bytes or got an answer */
};

static bool draining;
static long response_delay;
static long idle_grace;
static char body[128];
static size_t body_len;

/* Hundreds of connections need more descriptors than the usual soft limit of 1024. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* The value of header `name` in the head [p, end), or NULL; *len gets its length. */
static const char *find_header(const char *p, const char *end, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
            const char *v = p + nlen + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *len = (size_t)(ve - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

static bool has_token(const char *v, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    for (size_t i = 0; i + tlen <= len; i++)
        if (strncasecmp(v + i, token, tlen) == 0)
            return true;
    return false;
}

/*
 * Looks for a complete request at the start of c->in. Returns true when one is
 * there (or when the input is bad, with req_status set to the error to send).
 */
static bool parse_request(struct conn *c)
{
    const char *head = c->in;
    const char *end_of_head = memmem(head, c->in_len, "\r\n\r\n", 4);
    if (end_of_head == NULL) {
        if (c->in_len == IN_MAX) { /* the head does not fit: refuse it */
            c->req_status = 431;
            c->req_keep_alive = false;
            c->req_len = c->in_len;
            return true;
        }
        return false;
    }
    size_t head_len = (size_t)(end_of_head - head) + 4;

    /* Request line: METHOD SP TARGET SP HTTP/1.x */
    const char *eol = memchr(head, '\r', head_len);
    const char *sp1 = memchr(head, ' ', (size_t)(eol - head));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    c->req_status = 200;
    c->req_head = sp1 != NULL && sp1 - head == 4 && memcmp(head, "HEAD", 4) == 0;
    if (sp1 == NULL || sp2 == NULL || eol - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        c->req_status = 400;
        c->req_keep_alive = false;
        c->req_len = c->in_len;
        return true;
    }
    bool http10 = sp2[8] == '0';

    size_t vlen;
    const char *v = find_header(eol + 2, end_of_head + 2, "Connection", &vlen);
    if (http10)
        c->req_keep_alive = v != NULL && has_token(v, vlen, "keep-alive");
    else
        c->req_keep_alive = v == NULL || !has_token(v, vlen, "close");

    size_t content_length = 0;
    if (find_header(eol + 2, end_of_head + 2, "Transfer-Encoding", &vlen) != NULL) {
        c->req_status = 501; /* chunked bodies: more than a hello server needs */
        c->req_keep_alive = false;
        c->req_len = c->in_len;
        return true;
    }
    if ((v = find_header(eol + 2, end_of_head + 2, "Content-Length", &vlen)) != NULL) {
        char num[24] = {0};
        char *num_end;
        memcpy(num, v, vlen < sizeof num - 1 ? vlen : sizeof num - 1);
        unsigned long long n = strtoull(num, &num_end, 10);
        if (vlen == 0 || vlen >= sizeof num || *num_end != '\0' || n > IN_MAX - head_len) {
            c->req_status = vlen == 0 || *num_end != '\0' ? 400 : 413;
            c->req_keep_alive = false;
            c->req_len = c->in_len;
            return true;
        }
        content_length = (size_t)n;
    }
    if (c->in_len < head_len + content_length)
        return false; /* the body is still on its way */
    c->req_len = head_len + content_length;
    return true;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    default: return "Not Implemented";
    }
}

static void queue_response(struct conn *c)
{
    /* While draining every answer is the last one on its connection. */
    c->close_after_write = !c->req_keep_alive || draining;
    bool ok = c->req_status == 200;
    int n = snprintf(c->out, sizeof c->out,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: %s\r\n"
                     "\r\n"
                     "%s",
                     c->req_status, reason_phrase(c->req_status), ok ? body_len : 0,
                     c->close_after_write ? "close" : "keep-alive",
                     ok && !c->req_head ? body : "");
    c->out_len = (size_t)n < sizeof c->out ? (size_t)n : sizeof c->out - 1;
    c->out_off = 0;

    /* The request is answered: drop it from the input, keep what follows. */
    memmove(c->in, c->in + c->req_len, c->in_len - c->req_len);
    c->in_len -= c->req_len;
    c->has_request = false;
    c->served++;
    c->last_active = now_ms();
}

/*
 * Moves a connection along as far as it can go without blocking. Returns false
 * when it is finished and should be closed.
 */
static bool serve_conn(struct conn *c, bool readable)
{
    for (;;) {
        /* 1. Send what is queued. */
        while (c->out_off < c->out_len) {
            ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return errno == EAGAIN || errno == EWOULDBLOCK;
            }
            c->out_off += (size_t)n;
        }
        c->out_len = c->out_off = 0;
        if (c->close_after_write)
            return false;

        /* 2. Answer a complete request, once its delay (if any) is over. */
        if (!c->has_request && parse_request(c)) {
            c->has_request = true;
            c->respond_at = now_ms() + response_delay;
        }
        if (c->has_request) {
            if (now_ms() < c->respond_at)
                return true; /* the poll timeout brings us back */
            queue_response(c);
            continue;
        }

        /* 3. Read more of the next request. While draining, always look: a
         * keep-alive client may have sent its next request since poll() ran,
         * and closing on unread data would reset the connection. */
        if (!readable && !draining)
            return true;
        ssize_t n = recv(c->fd, c->in + c->in_len, IN_MAX - c->in_len, 0);
        if (n == 0)
            return false; /* the client is done (a half-sent request is void) */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return false;
            /* 4. Nothing more to read. While draining, a connection that was
             * answered and has sent nothing since is idle: close it, once it
             * has been idle for EXAMPLE_IDLE_GRACE_MS. The grace spares the
             * busy keep-alive client whose next request is on its way: closing
             * under it would lose that request. */
            return !(draining && c->served > 0 && c->in_len == 0 &&
                     now_ms() - c->last_active >= idle_grace);
        }
        c->in_len += (size_t)n;
        c->last_active = now_ms();
        readable = c->in_len < IN_MAX; /* a short read may mean more is there */
    }
}

int main(void)
{
    worker_name = "http";
    server_starter_listener fixed[64];
    int count;
    server_starter_listener *ls = read_listeners(fixed, 64, &count);
    if (ls == NULL)
        return 1;
    int streams = 0;
    for (int i = 0; i < count; i++) {
        if (ls[i].socktype != SOCK_STREAM)
            continue; /* HTTP needs a stream: UDP listeners are left alone */
        if (set_nonblocking(ls[i].fd) < 0) {
            fprintf(stderr, "http: listener %s (fd %d): %s\n", ls[i].name, ls[i].fd, strerror(errno));
            return 1;
        }
        streams++;
    }

    if (install_signal_pipe() < 0) {
        perror("http: signals");
        return 1;
    }
    raise_fd_limit();

    long ready_delay = env_ms("EXAMPLE_READY_DELAY_MS", 0);
    long drain_timeout = env_ms("EXAMPLE_DRAIN_TIMEOUT_MS", 10000);
    response_delay = env_ms("EXAMPLE_RESPONSE_DELAY_MS", 0);
    idle_grace = env_ms("EXAMPLE_IDLE_GRACE_MS", 100);
    body_len = (size_t)snprintf(body, sizeof body, "hello from pid %d generation %ld\n",
                                (int)getpid(), server_starter_generation());
    if (ready_delay > 0)
        sleep_ms(ready_delay);
    fprintf(stderr, "http: pid %d generation %ld serving %d stream listener(s)\n", (int)getpid(),
            server_starter_generation(), streams);
    tell_ready(streams);

    struct conn **conns = NULL;
    size_t nconns = 0, capconns = 0;
    struct pollfd *pfds = NULL;
    size_t cappfds = 0;
    long drain_deadline = 0, accept_paused_until = 0;
    unsigned long long total_served = 0;

    for (;;) {
        long now = now_ms();
        if (draining && nconns == 0)
            break;
        if (draining && now >= drain_deadline) {
            fprintf(stderr, "http: drain timeout, dropping %zu connection(s)\n", nconns);
            break;
        }

        size_t need = 1 + (size_t)count + nconns;
        if (need > cappfds) {
            cappfds = need * 2;
            pfds = realloc(pfds, cappfds * sizeof *pfds);
            if (pfds == NULL) {
                perror("http: realloc");
                return 1;
            }
        }
        size_t np = 0;
        pfds[np++] = (struct pollfd){.fd = signal_pipe[0], .events = POLLIN};
        size_t first_listener = np;
        bool accepting = !draining && now >= accept_paused_until;
        for (int i = 0; i < count; i++)
            pfds[np++] = (struct pollfd){
                .fd = accepting && ls[i].socktype == SOCK_STREAM ? ls[i].fd : -1, .events = POLLIN};
        size_t first_conn = np;
        long wake_at = draining ? drain_deadline : -1;
        if (!draining && !accepting)
            wake_at = accept_paused_until;
        for (size_t i = 0; i < nconns; i++) {
            struct conn *c = conns[i];
            short events = POLLIN;
            if (c->out_len > c->out_off)
                events = POLLOUT;
            else if (c->has_request) {
                events = 0; /* waiting for respond_at; errors are still reported */
                if (wake_at < 0 || c->respond_at < wake_at)
                    wake_at = c->respond_at;
            }
            else if (draining && c->served > 0 && c->in_len == 0) {
                /* Idle while draining: wake up when its grace is over. */
                long idle_until = c->last_active + idle_grace;
                if (idle_until < wake_at)
                    wake_at = idle_until;
            }
            pfds[np++] = (struct pollfd){.fd = c->fd, .events = events};
        }

        if (poll(pfds, np, poll_timeout(wake_at, now)) < 0) {
            if (errno == EINTR)
                continue;
            perror("http: poll");
            return 1;
        }
        watchdog_kick(now_ms());

        if (pfds[0].revents & POLLIN) {
            unsigned char sig;
            while (read(signal_pipe[0], &sig, 1) == 1)
                ;
            if (!draining) {
                /* Closing our copy of each listener stops us accepting; the new
                 * generation holds its own copy of the same socket, so nothing
                 * queued on it is lost. */
                for (int i = 0; i < count; i++)
                    if (ls[i].socktype == SOCK_STREAM)
                        close(ls[i].fd);
                draining = true;
                drain_deadline = now_ms() + drain_timeout;
                fprintf(stderr, "http: pid %d got signal %d, draining %zu connection(s)\n",
                        (int)getpid(), sig, nconns);
                tell_supervisor("STOPPING=1");
            }
        }

        /* Connections first: the array is compacted as they close, and the
         * accepted ones appended below have no poll result yet. */
        size_t kept = 0;
        now = now_ms();
        for (size_t i = 0; i < nconns; i++) {
            struct conn *c = conns[i];
            short rev = pfds[first_conn + i].revents;
            bool due = c->has_request && now >= c->respond_at;
            if (c->has_request && !due && (rev & (POLLHUP | POLLERR))) {
                /* Gone while its answer was held back: poll would report it
                 * again at once, so give up on it now. */
                close(c->fd);
                free(c);
                continue;
            }
            if (rev != 0 || due || draining) {
                unsigned long before = c->served;
                bool alive = serve_conn(c, (rev & (POLLIN | POLLHUP | POLLERR)) != 0);
                total_served += c->served - before;
                if (!alive) {
                    close(c->fd);
                    free(c);
                    continue;
                }
            }
            conns[kept++] = c;
        }
        nconns = kept;

        if (!accepting)
            continue;
        for (int i = 0; i < count; i++) {
            if (!(pfds[first_listener + (size_t)i].revents & POLLIN))
                continue;
            /* Accept a bounded batch: the other listeners get a turn too. */
            for (int batch = 0; batch < 64; batch++) {
                int fd = accept4(ls[i].fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno == EMFILE || errno == ENFILE) {
                        /* Out of descriptors: let connections finish for a moment
                         * instead of spinning on a listener we cannot serve. */
                        fprintf(stderr, "http: accept on %s: %s, pausing\n", ls[i].name,
                                strerror(errno));
                        accept_paused_until = now_ms() + 100;
                    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                               errno != ECONNABORTED) {
                        fprintf(stderr, "http: accept on %s: %s\n", ls[i].name, strerror(errno));
                    }
                    break;
                }
                struct conn *c = calloc(1, sizeof *c);
                if (c == NULL || (nconns == capconns &&
                                  (conns = realloc(conns, (capconns = capconns * 2 + 16) *
                                                              sizeof *conns)) == NULL)) {
                    perror("http: out of memory");
                    return 1;
                }
                c->fd = fd;
                c->last_active = now_ms();
                conns[nconns++] = c;
            }
        }
    }

    fprintf(stderr, "http: pid %d exiting after %llu response(s)\n", (int)getpid(), total_served);
    return 0;
}
