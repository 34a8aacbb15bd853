/*
 * Exercises every function of libserver_starter against real sockets that the
 * checked process inherited across exec, as a start_server worker or a
 * systemd-activated service would.
 *
 * Stages (argv[1]):
 *   (none)    bind TCP 127.0.0.1:0, TCP [::1]:0 (when IPv6 works), UDP
 *             127.0.0.1:0 and a unix socket in a fresh temp dir; fork; the child
 *             moves them to descriptors 3, 4, ... and execs "starter"; the
 *             parent waits, removes the temp dir and exits with the child's status.
 *   starter   SERVER_STARTER_PORT checks, then execs "systemd" (same pid).
 *   systemd   LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES checks.
 * The parent also checks server_starter_notify() against datagram sockets it
 * binds itself (an abstract one and one in the temp dir), before it forks.
 *
 * Prints "FAIL file:line: ..." for each failed check and "ALL OK" at the end
 * when there were none; exits 0 only then.
 */
#define _GNU_SOURCE
#include "server_starter.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks, failures;

#define CHECK(cond)                                                          \
    do {                                                                     \
        checks++;                                                            \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
        }                                                                    \
    } while (0)

#define CHECK_EQ(a, b)                                                       \
    do {                                                                     \
        long long a_ = (long long)(a), b_ = (long long)(b);                  \
        checks++;                                                            \
        if (a_ != b_) {                                                      \
            failures++;                                                      \
            printf("FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__,        \
                   __LINE__, #a, #b, a_, b_);                                \
        }                                                                    \
    } while (0)

#define CHECK_STR(a, b)                                                      \
    do {                                                                     \
        const char *a_ = (a), *b_ = (b);                                     \
        checks++;                                                            \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {               \
            failures++;                                                      \
            printf("FAIL %s:%d: %s == %s (\"%s\" != \"%s\")\n", __FILE__,    \
                   __LINE__, #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");\
        }                                                                    \
    } while (0)

static void die(const char *what) {
    printf("FAIL setup: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Descriptors the stages rely on: the listeners start at FIRST_FD; NOT_SOCKET
 * is /dev/null; CLOSED is never open. */
enum { FIRST_FD = 3, NOT_SOCKET = 40, CLOSED = 41, MAX_LISTENERS = 4 };

/* What the kernel says about a descriptor, and the name start_server would give it. */
struct expected {
    int fd, family, socktype, port;
    char name[SERVER_STARTER_NAME_MAX];
};

static void kernel_view(int fd, struct expected *e) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int type = 0;
    socklen_t tlen = sizeof type;
    memset(e, 0, sizeof *e);
    e->fd = fd;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) die("getsockname");
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0) die("getsockopt");
    e->family = ss.ss_family;
    e->socktype = type;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        char host[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
        e->port = ntohs(sin->sin_port);
        snprintf(e->name, sizeof e->name, "%s:%d", host, e->port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        char host[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
        e->port = ntohs(sin6->sin6_port);
        snprintf(e->name, sizeof e->name, "[%s]:%d", host, e->port);
    } else if (ss.ss_family == AF_UNIX) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
        snprintf(e->name, sizeof e->name, "%s", sun->sun_path);
    }
}

/* The inherited listeners, FIRST_FD on, as the kernel describes them. */
static int inherited(struct expected *e) {
    int n = 0;
    for (int fd = FIRST_FD; fd < FIRST_FD + MAX_LISTENERS; fd++) {
        int type;
        socklen_t len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) break;
        kernel_view(fd, &e[n++]);
    }
    return n;
}

static void check_listener(const server_starter_listener *l, const struct expected *e, const char *name) {
    CHECK_EQ(l->fd, e->fd);
    CHECK_EQ(l->family, e->family);
    CHECK_EQ(l->socktype, e->socktype);
    CHECK_EQ(l->port, e->port);
    CHECK_STR(l->name, name);
}

static void exec_stage(const char *stage, const char *dir) {
    char *args[] = {"listeners_test", (char *)stage, (char *)dir, NULL};
    fflush(stdout);
    execv("/proc/self/exe", args);
    die("execv");
}

/* Canary-filled array: entries past what a call may write must stay intact. */
static server_starter_listener canary[MAX_LISTENERS + 2];

static void fill_canary(void) { memset(canary, 0xa5, sizeof canary); }

static int canary_intact(size_t from) {
    const unsigned char *p = (const unsigned char *)&canary[from];
    for (size_t i = 0; i < (sizeof canary - from * sizeof canary[0]); i++)
        if (p[i] != 0xa5) return 0;
    return 1;
}

static void stage_starter(const char *dir) {
    struct expected e[MAX_LISTENERS];
    server_starter_listener l[MAX_LISTENERS + 1];
    int n = inherited(e);
    char *value = getenv("SERVER_STARTER_PORT");
    CHECK(value != NULL);
    if (value == NULL) return;
    char saved[4096];
    snprintf(saved, sizeof saved, "%s", value);
    printf("starter: pid %d, SERVER_STARTER_PORT=%s\n", (int)getpid(), saved);

    /* Counting, filling, and a cap smaller than the count. */
    CHECK_EQ(server_starter_listeners(NULL, 0), n);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS + 1), n);
    for (int i = 0; i < n; i++) check_listener(&l[i], &e[i], e[i].name);
    fill_canary();
    CHECK_EQ(server_starter_listeners(canary, 2), n);
    check_listener(&canary[1], &e[1], e[1].name);
    CHECK(canary_intact(2));
    CHECK_EQ(server_starter_listeners(NULL, 1), SERVER_STARTER_ENULL);

    /* find */
    for (int i = 0; i < n; i++) CHECK_EQ(server_starter_find(e[i].name), e[i].fd);
    CHECK_EQ(server_starter_find("127.0.0.1:1"), SERVER_STARTER_ENOTFOUND);
    CHECK_EQ(server_starter_find(""), SERVER_STARTER_ENOTFOUND);
    CHECK_EQ(server_starter_find(NULL), SERVER_STARTER_ENULL);
    char longname[SERVER_STARTER_NAME_MAX + 1];
    memset(longname, 'x', sizeof longname - 1);
    longname[SERVER_STARTER_NAME_MAX] = '\0';
    CHECK_EQ(server_starter_find(longname), SERVER_STARTER_ENAMETOOLONG);
    longname[SERVER_STARTER_NAME_MAX - 1] = '\0';
    CHECK_EQ(server_starter_find(longname), SERVER_STARTER_ENOTFOUND);

    /* The pure parser on the same value: hints from the text, no kernel. */
    fill_canary();
    CHECK_EQ(server_starter_parse(saved, canary, MAX_LISTENERS), n);
    for (int i = 0; i < n; i++) {
        CHECK_EQ(canary[i].fd, e[i].fd);
        CHECK_EQ(canary[i].family, e[i].family);
        CHECK_EQ(canary[i].socktype, 0);
        CHECK_EQ(canary[i].port, e[i].port);
        CHECK_STR(canary[i].name, e[i].name);
    }
    CHECK(canary_intact((size_t)n));
    CHECK_EQ(server_starter_parse(" 80 = 3 ;", l, 1), 1);
    CHECK_STR(l[0].name, "80");
    CHECK_EQ(l[0].family, AF_UNSPEC);
    CHECK_EQ(l[0].port, 80);
    CHECK_EQ(server_starter_parse("/a=b.sock=7", l, 1), 1);
    CHECK_STR(l[0].name, "/a=b.sock");
    CHECK_EQ(l[0].fd, 7);
    CHECK_EQ(l[0].family, AF_UNIX);
    CHECK_EQ(server_starter_parse("", NULL, 0), 0);
    CHECK_EQ(server_starter_parse("80=3;81=4", NULL, 0), 2);
    CHECK_EQ(server_starter_parse("80", l, 1), SERVER_STARTER_EMALFORMED);
    CHECK_EQ(server_starter_parse("80=3;;81=4", l, 1), SERVER_STARTER_EMALFORMED);
    CHECK_EQ(server_starter_parse("80=2147483648", l, 1), SERVER_STARTER_EMALFORMED);
    CHECK_EQ(server_starter_parse(NULL, l, 1), SERVER_STARTER_ENULL);
    CHECK_EQ(server_starter_parse("80=3", NULL, 1), SERVER_STARTER_ENULL);
    char longentry[SERVER_STARTER_NAME_MAX + 8];
    memset(longentry, '/', SERVER_STARTER_NAME_MAX);
    strcpy(longentry + SERVER_STARTER_NAME_MAX, "=3");
    CHECK_EQ(server_starter_parse(longentry, l, 1), SERVER_STARTER_ENAMETOOLONG);
    strcpy(longentry + SERVER_STARTER_NAME_MAX - 1, "=3");
    CHECK_EQ(server_starter_parse(longentry, l, 1), 1);
    CHECK_EQ(strlen(l[0].name), SERVER_STARTER_NAME_MAX - 1);

    /* generation */
    CHECK_EQ(server_starter_generation(), 7);
    setenv("SERVER_STARTER_GENERATION", " 12 ", 1);
    CHECK_EQ(server_starter_generation(), 12);
    setenv("SERVER_STARTER_GENERATION", "x", 1);
    CHECK_EQ(server_starter_generation(), -1);
    unsetenv("SERVER_STARTER_GENERATION");
    CHECK_EQ(server_starter_generation(), -1);

    /* strerror and version */
    const int codes[] = {SERVER_STARTER_ENOTSET, SERVER_STARTER_EMALFORMED, SERVER_STARTER_EBADFD,
                         SERVER_STARTER_ENOTFOUND, SERVER_STARTER_ENULL, SERVER_STARTER_ENAMETOOLONG,
                         SERVER_STARTER_EINTERNAL};
    const size_t ncodes = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < ncodes; i++) {
        CHECK(codes[i] < 0);
        CHECK(server_starter_strerror(codes[i]) != NULL);
        CHECK(strlen(server_starter_strerror(codes[i])) > 0);
        for (size_t j = 0; j < i; j++) CHECK(strcmp(server_starter_strerror(codes[i]), server_starter_strerror(codes[j])) != 0);
    }
    CHECK(server_starter_strerror(-1000) != NULL);
    CHECK(server_starter_strerror(0) != NULL);
    CHECK_STR(server_starter_version(), SERVER_STARTER_VERSION_STRING);
    char version[32];
    snprintf(version, sizeof version, "%d.%d.%d", SERVER_STARTER_VERSION_MAJOR, SERVER_STARTER_VERSION_MINOR,
             SERVER_STARTER_VERSION_PATCH);
    CHECK_STR(server_starter_version(), version);

    /* Every error code of the queries. */
    char buf[64];
    snprintf(buf, sizeof buf, "devnull=%d", NOT_SOCKET);
    setenv("SERVER_STARTER_PORT", buf, 1);
    CHECK_EQ(server_starter_listeners(l, 1), SERVER_STARTER_EBADFD);
    CHECK_EQ(server_starter_find("devnull"), SERVER_STARTER_EBADFD);
    snprintf(buf, sizeof buf, "80=%d; closed = %d", FIRST_FD, CLOSED);
    setenv("SERVER_STARTER_PORT", buf, 1);
    CHECK_EQ(server_starter_listeners(NULL, 0), SERVER_STARTER_EBADFD);
    CHECK_EQ(server_starter_find("closed"), SERVER_STARTER_EBADFD);
    CHECK_EQ(server_starter_find("80"), FIRST_FD);
    /* Malformed text wins over a bad descriptor, wherever it is. */
    snprintf(buf, sizeof buf, "x=%d;oops", CLOSED);
    setenv("SERVER_STARTER_PORT", buf, 1);
    CHECK_EQ(server_starter_listeners(l, 1), SERVER_STARTER_EMALFORMED);
    CHECK_EQ(server_starter_find("x"), SERVER_STARTER_EMALFORMED);
    setenv("SERVER_STARTER_PORT", longentry, 1);
    CHECK_EQ(server_starter_listeners(l, 1), 1); /* the longest name allowed */
    CHECK_EQ(strlen(l[0].name), SERVER_STARTER_NAME_MAX - 1);
    setenv("SERVER_STARTER_PORT", "", 1);
    CHECK_EQ(server_starter_listeners(l, 1), 0);
    CHECK_EQ(server_starter_find("80"), SERVER_STARTER_ENOTFOUND);
    unsetenv("SERVER_STARTER_PORT");
    CHECK_EQ(server_starter_listeners(l, 1), SERVER_STARTER_ENOTSET);
    CHECK_EQ(server_starter_find("80"), SERVER_STARTER_ENOTSET);

    printf("starter: %d checks, %d failed\n", checks, failures);
    if (failures) exit(1);

    /* Hand the same descriptors over the systemd way, in the same process. */
    snprintf(buf, sizeof buf, "%d", (int)getpid());
    setenv("LISTEN_PID", buf, 1);
    snprintf(buf, sizeof buf, "%d", n);
    setenv("LISTEN_FDS", buf, 1);
    setenv("LISTEN_FDNAMES", n == 4 ? "tcp4:tcp6:udp:unix" : "tcp4:udp:unix", 1);
    exec_stage("systemd", dir);
}

static void stage_systemd(void) {
    struct expected e[MAX_LISTENERS];
    server_starter_listener l[MAX_LISTENERS];
    int n = inherited(e);
    const char *names4[] = {"tcp4", "tcp6", "udp", "unix"}, *names3[] = {"tcp4", "udp", "unix"};
    const char **names = n == 4 ? names4 : names3;
    char buf[64];
    printf("systemd: pid %d, LISTEN_FDS=%s LISTEN_FDNAMES=%s\n", (int)getpid(), getenv("LISTEN_FDS"),
           getenv("LISTEN_FDNAMES"));

    CHECK_EQ(server_starter_listeners(NULL, 0), n);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), n);
    for (int i = 0; i < n; i++) check_listener(&l[i], &e[i], names[i]);
    for (int i = 0; i < n; i++) CHECK_EQ(server_starter_find(names[i]), FIRST_FD + i);
    CHECK_EQ(server_starter_find("nope"), SERVER_STARTER_ENOTFOUND);
    /* Unlike sd_listen_fds(), the library leaves FD_CLOEXEC alone. */
    for (int i = 0; i < n; i++) CHECK_EQ(fcntl(FIRST_FD + i, F_GETFD) & FD_CLOEXEC, 0);

    /* Missing names are "unknown". */
    setenv("LISTEN_FDNAMES", n == 4 ? ":tcp6::unix" : ":udp:", 1);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), n);
    CHECK_STR(l[0].name, "unknown");
    CHECK_STR(l[1].name, n == 4 ? "tcp6" : "udp");
    CHECK_STR(l[2].name, "unknown");
    CHECK_EQ(server_starter_find("unknown"), FIRST_FD);
    unsetenv("LISTEN_FDNAMES");
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), n);
    for (int i = 0; i < n; i++) check_listener(&l[i], &e[i], "unknown");

    /* A different number of names than descriptors is malformed, as in systemd. */
    setenv("LISTEN_FDNAMES", "a:b", 1);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), SERVER_STARTER_EMALFORMED);
    CHECK_EQ(server_starter_find("a"), SERVER_STARTER_EMALFORMED);
    unsetenv("LISTEN_FDNAMES");

    /* Variables meant for another process are not set for us. */
    snprintf(buf, sizeof buf, "%d", (int)getpid() + 1);
    setenv("LISTEN_PID", buf, 1);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), SERVER_STARTER_ENOTSET);
    CHECK_EQ(server_starter_find("unknown"), SERVER_STARTER_ENOTSET);
    unsetenv("LISTEN_PID");
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), SERVER_STARTER_ENOTSET);
    setenv("LISTEN_PID", "abc", 1);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), SERVER_STARTER_EMALFORMED);
    snprintf(buf, sizeof buf, "%d", (int)getpid());
    setenv("LISTEN_PID", buf, 1);

    /* Malformed counts, and a count reaching a closed descriptor. */
    setenv("LISTEN_FDS", "x", 1);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), SERVER_STARTER_EMALFORMED);
    setenv("LISTEN_FDS", "0", 1);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), SERVER_STARTER_EMALFORMED);
    snprintf(buf, sizeof buf, "%d", n + 1);
    setenv("LISTEN_FDS", buf, 1);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), SERVER_STARTER_EBADFD);
    CHECK_EQ(server_starter_find("unknown"), FIRST_FD);
    unsetenv("LISTEN_FDS");
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), SERVER_STARTER_ENOTSET);
    snprintf(buf, sizeof buf, "%d", n);
    setenv("LISTEN_FDS", buf, 1);

    /* SERVER_STARTER_PORT, even empty, takes precedence. */
    setenv("SERVER_STARTER_PORT", "", 1);
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), 0);
    unsetenv("SERVER_STARTER_PORT");
    CHECK_EQ(server_starter_listeners(l, MAX_LISTENERS), n);

    printf("systemd: %d checks, %d failed\n", checks, failures);
}

/* The lowest free descriptor: unchanged by a call that closes what it opens. */
static int lowest_free_fd(void) {
    int fd = dup(0);
    if (fd < 0) die("dup");
    close(fd);
    return fd;
}

/* A unix datagram socket bound to `addr`, with SO_PASSCRED: what a supervisor
 * listening for notifications binds. */
static int notify_receiver(const struct sockaddr_un *addr, socklen_t len) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0 ||
        bind(fd, (const struct sockaddr *)addr, len) != 0)
        die("notify receiver");
    return fd;
}

/* Receives the one datagram queued on `fd` (sendto has queued it by the time it
 * returns: nothing to wait for) into buf, NUL-terminated; returns its length,
 * or -1 when none is there. *pid gets the sender's pid from SCM_CREDENTIALS. */
static ssize_t receive_notification(int fd, char *buf, size_t cap, pid_t *pid) {
    union {
        struct cmsghdr align;
        char bytes[CMSG_SPACE(sizeof(struct ucred))];
    } control;
    struct iovec iov = {.iov_base = buf, .iov_len = cap - 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                         .msg_controllen = sizeof control.bytes};
    *pid = 0;
    ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) return -1;
    buf[n] = '\0';
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            *pid = cred.pid;
        }
    return n;
}

/* server_starter_notify() to an abstract socket and to one in `dir`, and every
 * way it can fail. */
static void check_notify(const char *dir) {
    char buf[256], value[256];
    pid_t pid;
    int free_fd = lowest_free_fd();

    unsetenv("NOTIFY_SOCKET");
    CHECK_EQ(server_starter_notify("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    CHECK_EQ(server_starter_notify("READY=1"), 0);
    CHECK_EQ(server_starter_notify(NULL), -EINVAL);

    /* Abstract: a NUL, then the name, and the address exactly that long. */
    struct sockaddr_un abstract = {.sun_family = AF_UNIX};
    int name_len = snprintf(abstract.sun_path + 1, sizeof abstract.sun_path - 1,
                            "server_starter_test/%d/notify", (int)getpid());
    int abstract_fd = notify_receiver(&abstract, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + name_len));
    snprintf(value, sizeof value, "@%s", abstract.sun_path + 1);
    setenv("NOTIFY_SOCKET", value, 1);
    CHECK(server_starter_notify("READY=1\nSTATUS=serving") > 0);
    CHECK_EQ(receive_notification(abstract_fd, buf, sizeof buf, &pid), 22);
    CHECK_STR(buf, "READY=1\nSTATUS=serving");
    CHECK_EQ(pid, getpid());
    CHECK_EQ(receive_notification(abstract_fd, buf, sizeof buf, &pid), -1); /* one datagram only */
    CHECK(server_starter_notify(NULL) == -EINVAL);
    close(abstract_fd);
    CHECK_EQ(server_starter_notify("READY=1"), -ECONNREFUSED);

    /* A socket in the filesystem. */
    struct sockaddr_un path = {.sun_family = AF_UNIX};
    snprintf(path.sun_path, sizeof path.sun_path, "%s/notify.sock", dir);
    int path_fd = notify_receiver(&path, sizeof path);
    setenv("NOTIFY_SOCKET", path.sun_path, 1);
    CHECK(server_starter_notify("WATCHDOG=1") > 0);
    CHECK(server_starter_notify("STOPPING=1") > 0);
    CHECK_EQ(receive_notification(path_fd, buf, sizeof buf, &pid), 10);
    CHECK_STR(buf, "WATCHDOG=1");
    CHECK_EQ(receive_notification(path_fd, buf, sizeof buf, &pid), 10);
    CHECK_STR(buf, "STOPPING=1");
    CHECK_EQ(pid, getpid());
    close(path_fd);
    /* The file is still there, with nobody bound to it. */
    CHECK_EQ(server_starter_notify("READY=1"), -ECONNREFUSED);
    unlink(path.sun_path);
    CHECK_EQ(server_starter_notify("READY=1"), -ENOENT);

    /* Not an address, or too long for one (sun_path holds 108 bytes). */
    const char *not_addresses[] = {"notify.sock", "@", "x", "vsock:2:1"};
    for (size_t i = 0; i < sizeof not_addresses / sizeof not_addresses[0]; i++) {
        setenv("NOTIFY_SOCKET", not_addresses[i], 1);
        CHECK_EQ(server_starter_notify("READY=1"), -EINVAL);
    }
    char longest[sizeof path.sun_path + 2];
    memset(longest, 'x', sizeof longest);
    longest[0] = '/';
    longest[sizeof path.sun_path] = '\0'; /* 108 bytes: no room for the NUL */
    setenv("NOTIFY_SOCKET", longest, 1);
    CHECK_EQ(server_starter_notify("READY=1"), -ENAMETOOLONG);
    longest[0] = '@';
    longest[sizeof path.sun_path] = 'x'; /* a NUL and 108 bytes of name */
    longest[sizeof path.sun_path + 1] = '\0';
    setenv("NOTIFY_SOCKET", longest, 1);
    CHECK_EQ(server_starter_notify("READY=1"), -ENAMETOOLONG);
    longest[sizeof path.sun_path] = '\0'; /* 107 bytes of name fit: nobody there */
    setenv("NOTIFY_SOCKET", longest, 1);
    CHECK_EQ(server_starter_notify("READY=1"), -ECONNREFUSED);

    unsetenv("NOTIFY_SOCKET");
    CHECK_EQ(lowest_free_fd(), free_fd); /* every call closed its socket */
    printf("notify: %d checks, %d failed\n", checks, failures);
}

static int bound(int family, int type, const struct sockaddr *addr, socklen_t len) {
    int fd = socket(family, type, 0);
    if (fd < 0) return -1;
    if (bind(fd, addr, len) != 0 || (type == SOCK_STREAM && listen(fd, 16) != 0)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int stage_parent(void) {
    const char *tmp = getenv("TMPDIR");
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/server_starter_c.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) die("mkdtemp");
    check_notify(dir);

    int fds[MAX_LISTENERS], n = 0;
    struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    /* A '=' in the path checks that the descriptor follows the last '='. */
    if (snprintf(un.sun_path, sizeof un.sun_path, "%s/app=1.sock", dir) >= (int)sizeof un.sun_path) {
        errno = ENAMETOOLONG;
        die(dir);
    }

    if ((fds[n++] = bound(AF_INET, SOCK_STREAM, (struct sockaddr *)&v4, sizeof v4)) < 0) die("tcp4");
    if ((fds[n] = bound(AF_INET6, SOCK_STREAM, (struct sockaddr *)&v6, sizeof v6)) >= 0)
        n++;
    else
        printf("SKIP ipv6: no [::1] (%s)\n", strerror(errno));
    if ((fds[n++] = bound(AF_INET, SOCK_DGRAM, (struct sockaddr *)&v4, sizeof v4)) < 0) die("udp4");
    if ((fds[n++] = bound(AF_UNIX, SOCK_STREAM, (struct sockaddr *)&un, sizeof un)) < 0) die("unix");

    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        /* Out of the way first, then to 3, 4, ...: inherited like start_server's. */
        for (int i = 0; i < n; i++) {
            int high = fcntl(fds[i], F_DUPFD, 100);
            if (high < 0) die("F_DUPFD");
            close(fds[i]);
            fds[i] = high;
        }
        for (int i = 0; i < n; i++) {
            if (dup2(fds[i], FIRST_FD + i) < 0) die("dup2");
            close(fds[i]);
        }
        for (int fd = FIRST_FD + n; fd < 100; fd++) close(fd);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull < 0 || dup2(devnull, NOT_SOCKET) < 0) die("/dev/null");
        close(devnull);

        struct expected e;
        char value[2048] = "";
        for (int i = 0; i < n; i++) {
            kernel_view(FIRST_FD + i, &e);
            size_t used = strlen(value);
            snprintf(value + used, sizeof value - used, "%s%s=%d", i ? ";" : "", e.name, FIRST_FD + i);
        }
        setenv("SERVER_STARTER_PORT", value, 1);
        setenv("SERVER_STARTER_GENERATION", "7", 1);
        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_FDNAMES");
        exec_stage("starter", dir);
    }
    for (int i = 0; i < n; i++) close(fds[i]);
    int status;
    if (waitpid(pid, &status, 0) != pid) die("waitpid");
    unlink(un.sun_path);
    if (rmdir(dir) != 0) die("rmdir");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && failures == 0) {
        printf("ALL OK\n");
        return 0;
    }
    printf("FAIL child status %d\n", status);
    return 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) return stage_parent();
    if (strcmp(argv[1], "starter") == 0 && argc == 3) {
        stage_starter(argv[2]);
        return 1; /* exec_stage returned */
    }
    if (strcmp(argv[1], "systemd") == 0) {
        stage_systemd();
        return failures ? 1 : 0;
    }
    fprintf(stderr, "usage: %s [starter DIR | systemd DIR]\n", argv[0]);
    return 2;
}
