/*
 * worker.h: the plumbing the C examples share: reading the inherited
 * listeners into an array, telling the supervisor when they serve (READY=1,
 * WATCHDOG=1 keep-alives, STOPPING=1), the self-pipe that turns SIGTERM into a
 * poll() event, millisecond clocks, and the environment knobs the tests use.
 * Each function is static: include it from one .c file per program.
 */
#ifndef WORKER_H
#define WORKER_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <server_starter.h>

/* The program's name, for messages. */
static const char *worker_name = "worker";

/* Written by the signal handler, read by the poll() loop. */
static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno; /* write() may clobber errno of the interrupted code */
    unsigned char byte = (unsigned char)sig;
    ssize_t ignored = write(signal_pipe[1], &byte, 1);
    (void)ignored; /* a full pipe already holds a pending wake-up */
    errno = saved;
}

/* SIGTERM and SIGINT become a readable signal_pipe[0]; SIGPIPE is ignored (a
 * client that went away is an EPIPE to handle). Returns -1 on failure. */
static int install_signal_pipe(void)
{
    if (pipe2(signal_pipe, O_NONBLOCK | O_CLOEXEC) < 0)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
        return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Every inherited listener: into `fixed` when it has room, else into a
 * calloc'd array. Returns NULL, after saying why, when there are none. */
static server_starter_listener *read_listeners(server_starter_listener *fixed, size_t cap, int *count)
{
    *count = server_starter_listeners(fixed, cap);
    if (*count < 0) {
        fprintf(stderr, "%s: no inherited listeners: %s (run me under start_server)\n", worker_name,
                server_starter_strerror(*count));
        return NULL;
    }
    if ((size_t)*count <= cap)
        return fixed;
    /* More than the array holds: ask again with room for all. */
    server_starter_listener *all = calloc((size_t)*count, sizeof *all);
    if (all == NULL || server_starter_listeners(all, (size_t)*count) != *count) {
        fprintf(stderr, "%s: cannot read the %d inherited listeners\n", worker_name, *count);
        free(all);
        return NULL;
    }
    return all;
}

static long env_ms(const char *name, long fallback)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return fallback;
    char *end;
    long ms = strtol(v, &end, 10);
    if (*end != '\0' || ms < 0) {
        fprintf(stderr, "%s: ignoring %s=%s: not a number of milliseconds\n", worker_name, name, v);
        return fallback;
    }
    return ms;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Sends `state` to the supervisor (sd_notify messages; nothing when no
 * NOTIFY_SOCKET is set). A failure is worth a line, not an exit: the program
 * serves all the same. */
static void tell_supervisor(const char *state)
{
    int rc = server_starter_notify(state);
    if (rc < 0) /* -errno, not a SERVER_STARTER_E* code */
        fprintf(stderr, "%s: telling the supervisor %s: %s\n", worker_name, state, strerror(-rc));
}

/* Keep-alives: every WATCHDOG_USEC / 2 when the supervisor asks for them, at
 * watchdog_due (ms); watchdog_every is 0 when it does not, and then the poll()
 * loop never wakes up for them. */
static long watchdog_every, watchdog_due;

/* Tells the supervisor that the program serves, and starts the keep-alives. */
static void tell_ready(int listeners)
{
    char state[64];
    snprintf(state, sizeof state, "READY=1\nSTATUS=serving %d listener(s)", listeners);
    tell_supervisor(state);

    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    if (usec == NULL || *usec == '\0')
        return;
    if (pid != NULL && *pid != '\0' && strtol(pid, NULL, 10) != (long)getpid())
        return; /* meant for another process */
    char *end;
    unsigned long long us = strtoull(usec, &end, 10);
    if (*end != '\0' || us == 0) {
        fprintf(stderr, "%s: ignoring WATCHDOG_USEC=%s: not a number of microseconds\n", worker_name, usec);
        return;
    }
    /* At least 1 ms, at most a day: what a poll() timeout holds. */
    watchdog_every = us < 2000 ? 1 : us / 2000 > 86400000 ? 86400000 : (long)(us / 2000);
    watchdog_due = now_ms() + watchdog_every;
}

/* Sends WATCHDOG=1 when it is due; call it after every poll(). */
static void watchdog_kick(long now)
{
    if (watchdog_every == 0 || now < watchdog_due)
        return;
    tell_supervisor("WATCHDOG=1");
    watchdog_due = now + watchdog_every;
}

/* The poll() timeout to wake up at `wake_at` (ms; -1: no need to) or for the
 * next keep-alive, whichever comes first. */
static int poll_timeout(long wake_at, long now)
{
    if (watchdog_every > 0 && (wake_at < 0 || watchdog_due < wake_at))
        wake_at = watchdog_due;
    if (wake_at < 0)
        return -1;
    return wake_at > now ? (int)(wake_at - now) : 0;
}

#endif /* WORKER_H */
