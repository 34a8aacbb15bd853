/*
 * echo: a worker for start_server that echoes back whatever it receives, on
 * every listener it inherited.
 *
 *   TCP and unix stream sockets: bytes are written back as they arrive.
 *   UDP (and other datagram) sockets: each datagram is sent back to its sender.
 *
 *   start_server --port=127.0.0.1:7000 --port=u7000 --path=/tmp/echo.sock -- ./echo
 *
 * One thread, one poll() loop, non-blocking sockets throughout, so a slow
 * client never holds up the others.
 *
 * Graceful shutdown on SIGTERM (what start_server sends to the old generation
 * after a restart): the listeners are closed at once, so new connections go to
 * the new generation, which shares the very same listening sockets. Open
 * connections are drained: what was already received is echoed, then they are
 * closed and the process exits 0. A client that keeps sending cannot keep the
 * worker alive forever: after EXAMPLE_DRAIN_TIMEOUT_MS (default 10000) the
 * remaining connections are dropped.
 *
 * The signal handler only writes a byte to a pipe (the "self-pipe trick"):
 * poll() sees the pipe become readable, and all the work happens in the loop.
 *
 * When NOTIFY_SOCKET is set it tells the supervisor READY=1 once it serves,
 * STOPPING=1 when it begins to drain, and WATCHDOG=1 every WATCHDOG_USEC / 2
 * when that is set (see worker.h).
 *
 * Environment knobs, for tests:
 *   EXAMPLE_READY_DELAY_MS    sleep this long before serving (a slow start)
 *   EXAMPLE_DRAIN_TIMEOUT_MS  how long to drain connections after SIGTERM
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
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <server_starter.h>

#include "worker.h"

#define BUF_SIZE 16384

struct conn {
    int fd;
    char buf[BUF_SIZE]; /* received but not yet echoed back */
    size_t len, off;    /* buf[off..len) is still to be written */
};


/* Writes out what is pending. Returns -1 when the connection is dead. */
static int flush_conn(struct conn *c)
{
    while (c->off < c->len) {
        /* MSG_NOSIGNAL: a peer that went away is an error here, not a SIGPIPE. */
        ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        c->off += (size_t)n;
    }
    c->off = c->len = 0;
    return 0;
}

/*
 * Reads what has arrived and echoes it. Only reads while nothing is pending, so
 * a client that does not read its echoes is throttled by TCP flow control
 * instead of growing our buffers. Returns -1 when the connection is over, 1 when
 * the socket has nothing more to read right now, 0 when output is pending.
 */
static int serve_conn(struct conn *c)
{
    for (;;) {
        if (flush_conn(c) < 0)
            return -1;
        if (c->len > 0)
            return 0;
        ssize_t n = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (n == 0)
            return -1; /* the client closed its side: nothing more to echo */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
        }
        c->len = (size_t)n;
    }
}

/* Echoes the datagrams that are waiting, a bounded number so streams get a turn. */
static void serve_datagrams(int fd)
{
    char buf[65536];
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                perror("echo: recvfrom");
            return;
        }
        /* A unix datagram from an unbound socket has no address to answer to. */
        if (fromlen == 0)
            continue;
        /* UDP may drop; so may we, when the send buffer is full. */
        if (sendto(fd, buf, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&from, fromlen) < 0 &&
            errno != EAGAIN && errno != EWOULDBLOCK)
            perror("echo: sendto");
    }
}

int main(void)
{
    worker_name = "echo";
    server_starter_listener fixed[64];
    int count;
    server_starter_listener *ls = read_listeners(fixed, 64, &count);
    if (ls == NULL)
        return 1;
    for (int i = 0; i < count; i++) {
        if (set_nonblocking(ls[i].fd) < 0) {
            fprintf(stderr, "echo: listener %s (fd %d): %s\n", ls[i].name, ls[i].fd, strerror(errno));
            return 1;
        }
    }

    if (install_signal_pipe() < 0) {
        perror("echo: signals");
        return 1;
    }

    long ready_delay = env_ms("EXAMPLE_READY_DELAY_MS", 0);
    long drain_timeout = env_ms("EXAMPLE_DRAIN_TIMEOUT_MS", 10000);
    if (ready_delay > 0)
        sleep_ms(ready_delay);

    fprintf(stderr, "echo: pid %d generation %ld serving %d listener(s)\n", (int)getpid(),
            server_starter_generation(), count);
    tell_ready(count);

    struct conn **conns = NULL;
    size_t nconns = 0, capconns = 0;
    struct pollfd *pfds = NULL;
    size_t cappfds = 0;
    bool draining = false;
    long drain_deadline = 0;

    for (;;) {
        if (draining && nconns == 0)
            break;
        if (draining && now_ms() >= drain_deadline) {
            fprintf(stderr, "echo: drain timeout, dropping %zu connection(s)\n", nconns);
            break;
        }

        /* The poll set: the signal pipe, the listeners (until draining), the connections. */
        size_t need = 1 + (size_t)count + nconns;
        if (need > cappfds) {
            cappfds = need * 2;
            pfds = realloc(pfds, cappfds * sizeof *pfds);
            if (pfds == NULL) {
                perror("echo: realloc");
                return 1;
            }
        }
        size_t np = 0;
        pfds[np++] = (struct pollfd){.fd = signal_pipe[0], .events = POLLIN};
        size_t first_listener = np;
        for (int i = 0; i < count; i++)
            pfds[np++] = (struct pollfd){.fd = draining ? -1 : ls[i].fd, .events = POLLIN};
        size_t first_conn = np;
        for (size_t i = 0; i < nconns; i++)
            pfds[np++] = (struct pollfd){.fd = conns[i]->fd,
                                         .events = conns[i]->len > 0 ? POLLOUT : POLLIN};

        if (poll(pfds, np, poll_timeout(draining ? drain_deadline : -1, now_ms())) < 0) {
            if (errno == EINTR)
                continue;
            perror("echo: poll");
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
                    close(ls[i].fd);
                draining = true;
                drain_deadline = now_ms() + drain_timeout;
                fprintf(stderr, "echo: pid %d got signal %d, draining %zu connection(s)\n",
                        (int)getpid(), sig, nconns);
                tell_supervisor("STOPPING=1");
            }
        }

        /* Connections first: the array is compacted as they close, and the
         * accepted ones appended below have no poll result yet. */
        size_t kept = 0;
        for (size_t i = 0; i < nconns; i++) {
            struct conn *c = conns[i];
            short rev = pfds[first_conn + i].revents;
            int state = 0;
            if (rev != 0 || draining)
                state = serve_conn(c);
            /* Draining: once everything received so far is echoed, we are done. */
            if (state < 0 || (draining && state == 1 && c->len == 0)) {
                close(c->fd);
                free(c);
                continue;
            }
            conns[kept++] = c;
        }
        nconns = kept;

        if (draining)
            continue;
        for (int i = 0; i < count; i++) {
            if (!(pfds[first_listener + (size_t)i].revents & POLLIN))
                continue;
            if (ls[i].socktype == SOCK_DGRAM) {
                serve_datagrams(ls[i].fd);
                continue;
            }
            /* Accept a bounded batch: the other listeners get a turn too. */
            for (int batch = 0; batch < 64; batch++) {
                int fd = accept4(ls[i].fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                        errno != ECONNABORTED)
                        fprintf(stderr, "echo: accept on %s: %s\n", ls[i].name, strerror(errno));
                    break;
                }
                struct conn *c = calloc(1, sizeof *c);
                if (c == NULL || (nconns == capconns &&
                                  (conns = realloc(conns, (capconns = capconns * 2 + 16) *
                                                              sizeof *conns)) == NULL)) {
                    perror("echo: out of memory");
                    return 1;
                }
                c->fd = fd;
                conns[nconns++] = c;
            }
        }
    }

    fprintf(stderr, "echo: pid %d exiting\n", (int)getpid());
    return 0;
}
