/*
 * stampworker: the worker the benchmarks run under both start_servers. It writes
 *
 *   start GENERATION PID SECONDS
 *   ready GENERATION PID SECONDS    (only with BENCH_READY_DELAY)
 *   term  GENERATION PID SECONDS
 *
 * to $BENCH_STAMP_FILE (if set) when it starts, when it is ready and when SIGTERM
 * reaches it, with
 * SECONDS read from CLOCK_MONOTONIC: the clock Python's time.monotonic() reads, so
 * the bench can subtract the moment it sent SIGHUP (or spawned start_server) from
 * these. Each line is one write() to an O_APPEND file, so generations that overlap
 * during a restart never interleave their lines.
 *
 * SIGTERM is taken from a signalfd rather than a handler: the stamp is taken the
 * moment the process is scheduled with the signal pending, with nothing in between.
 * Once ready it waits in epoll_wait() on a set holding that signalfd and every
 * listener it inherited (SERVER_STARTER_PORT), as an event-loop server waits for
 * connections: what --ready=listening looks for. It never accepts (no client
 * connects to it); the listeners are edge-triggered so that one that does cannot
 * make it spin.
 *
 * With BENCH_READY_DELAY=SECONDS (fractions allowed) it plays a server that needs
 * that long to get ready: it sleeps, stamps "ready", then says READY=1 to
 * $NOTIFY_SOCKET when that is set, as sd_notify(3) does (one datagram on a unix
 * socket; "@name" is an abstract name), with a plain sendto() and no library.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void stamp(const char *what)
{
    const char *path = getenv("BENCH_STAMP_FILE");
    if (path == NULL || *path == '\0')
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const char *gen = getenv("SERVER_STARTER_GENERATION");
    char line[128];
    int n = snprintf(line, sizeof line, "%s %s %ld %lld.%09ld\n", what, gen ? gen : "?",
                     (long)getpid(), (long long)ts.tv_sec, ts.tv_nsec);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)n) != n)
        perror("stampworker: write");
    close(fd);
}

/* READY=1 to $NOTIFY_SOCKET, if set: what the benchmark's supervisor waits for. */
static void notify_ready(void)
{
    const char *socket_name = getenv("NOTIFY_SOCKET");
    if (socket_name == NULL || (socket_name[0] != '@' && socket_name[0] != '/'))
        return;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(socket_name);
    if (len >= sizeof addr.sun_path) {
        fprintf(stderr, "stampworker: NOTIFY_SOCKET too long\n");
        return;
    }
    memcpy(addr.sun_path, socket_name, len);
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (socket_name[0] == '@')
        addr.sun_path[0] = '\0'; /* abstract: the name is the bytes after the NUL */
    else
        addr_len++; /* a path: count its terminating NUL */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("stampworker: socket");
        return;
    }
    static const char ready[] = "READY=1";
    if (sendto(fd, ready, sizeof ready - 1, 0, (struct sockaddr *)&addr, addr_len) < 0)
        perror("stampworker: sendto NOTIFY_SOCKET");
    close(fd);
}

/* BENCH_READY_DELAY: sleep that long, as a server loading its data would. */
static void get_ready(void)
{
    const char *delay = getenv("BENCH_READY_DELAY");
    if (delay == NULL || *delay == '\0')
        return;
    double seconds = strtod(delay, NULL);
    if (seconds > 0) {
        struct timespec ts = {.tv_sec = (time_t)seconds,
                              .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};
        while (nanosleep(&ts, &ts) != 0)
            ; /* EINTR: sleep the rest */
    }
    stamp("ready");
    notify_ready();
}

/* The descriptors named in SERVER_STARTER_PORT ("host:port=fd;path=fd"), added to
 * the epoll set ep. */
static void watch_listeners(int ep)
{
    const char *ports = getenv("SERVER_STARTER_PORT");
    for (const char *p = ports; p != NULL && *p != '\0';) {
        const char *end = strchr(p, ';');
        const char *eq = NULL;
        for (const char *q = p; q < (end ? end : p + strlen(p)); q++)
            if (*q == '=')
                eq = q;
        if (eq != NULL) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = atoi(eq + 1)};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev) != 0)
                perror("stampworker: epoll_ctl (listener)");
        }
        p = end ? end + 1 : NULL;
    }
}

int main(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    /* A disposition inherited as SIG_IGN would still let the signalfd see the
     * signal while blocked, but reset it so nothing depends on that detail. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || ep < 0) {
        perror("stampworker: signalfd/epoll_create1");
        return 1;
    }
    struct epoll_event sev = {.events = EPOLLIN, .data.fd = sfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &sev) != 0) {
        perror("stampworker: epoll_ctl (signalfd)");
        return 1;
    }
    stamp("start");
    get_ready();
    watch_listeners(ep);
    for (;;) {
        struct epoll_event ev;
        if (epoll_wait(ep, &ev, 1, -1) != 1 || ev.data.fd != sfd)
            continue; /* EINTR, or a connection nobody will serve */
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si &&
            (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)) {
            stamp("term");
            return 0;
        }
    }
}
