/*
 * stampworker: the worker the benchmarks run under both start_servers. It writes
 *
 *   start GENERATION PID SECONDS
 *   term  GENERATION PID SECONDS
 *
 * to $BENCH_STAMP_FILE (if set) when it starts and when SIGTERM reaches it, with
 * SECONDS read from CLOCK_MONOTONIC: the clock Python's time.monotonic() reads, so
 * the bench can subtract the moment it sent SIGHUP (or spawned start_server) from
 * these. Each line is one write() to an O_APPEND file, so generations that overlap
 * during a restart never interleave their lines.
 *
 * SIGTERM is taken with sigwaitinfo() rather than a handler: the stamp is taken the
 * moment the process is scheduled with the signal pending, with nothing in between.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int main(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    /* A disposition inherited as SIG_IGN would still let sigwaitinfo() see the
     * signal while blocked, but reset it so nothing depends on that detail. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    sigprocmask(SIG_BLOCK, &set, NULL);
    stamp("start");
    for (;;) {
        int sig = sigwaitinfo(&set, NULL);
        if (sig == SIGTERM || sig == SIGINT) {
            stamp("term");
            return 0;
        }
    }
}
