#!/usr/bin/python3
"""A worker written for systemd socket activation, as servers outside this
project are: it finds its sockets with python-systemd's
listen_fds_with_names() (Debian's python3-systemd, on libsystemd's
sd_listen_fds_with_names), never with SERVER_STARTER_PORT. It serves as the
Python example does, whose classes it borrows: HTTP/1.0 "hello from pid P
generation G" on stream sockets, UDP echo; on TERM it drains and exits 0.

Run it with Debian's /usr/bin/python3 (python3-systemd is a Debian package).

REPORT=FILE  first append one JSON line there: the pid, the variables as
             received, what listen_fds_with_names() found, and, with
             SERVER_STARTER_LIBRARY set (the path of libserver_starter.so),
             what the library finds with SERVER_STARTER_PORT set, with it
             unset (from LISTEN_FDS alone), and server_starter_find() of each
             SERVER_STARTER_PORT name with it unset.
"""

import ctypes
import json
import os
import signal
import sys
import threading
import time
import socket

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "..", "c-examples", "python"))
import worker  # noqa: E402  the Python example: its HTTP server, UDP echo, library loader

from systemd import daemon  # noqa: E402

VARIABLES = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "SERVER_STARTER_PORT"]


def library_view():
    lib = worker.load_library()
    lib.server_starter_find.argtypes = [ctypes.c_char_p]
    lib.server_starter_find.restype = ctypes.c_int

    def read():
        return [[l.fd, l.name.decode()] for l in worker.listeners(lib)]

    both = read()
    starter = os.environ.pop("SERVER_STARTER_PORT")  # unsetenv(3): the library sees it gone
    try:
        systemd_only = read()
        names = [entry.rsplit("=", 1)[0] for entry in starter.split(";")]
        found = {name: lib.server_starter_find(name.encode()) for name in names}
    finally:
        os.environ["SERVER_STARTER_PORT"] = starter
    return {"both": both, "listen_fds_only": systemd_only, "find": found}


def main():
    received = {name: os.environ.get(name) for name in VARIABLES}
    fds = daemon.listen_fds_with_names(unset_environment=False)
    if os.environ.get("REPORT"):
        report = {
            "pid": os.getpid(),
            "env": received,
            "systemd": [[fd, name] for fd, name in sorted(fds.items())],
        }
        if os.environ.get("SERVER_STARTER_LIBRARY"):
            report["library"] = library_view()
        with open(os.environ["REPORT"], "a") as f:
            f.write(json.dumps(report) + "\n")

    generation = int(os.environ.get("SERVER_STARTER_GENERATION", "0"))
    worker.Handler.body = ("hello from pid %d generation %d\n" % (os.getpid(), generation)).encode()
    stop = threading.Event()
    # The handler only records the TERM: Event.set() from a handler can deadlock on
    # the lock the main thread holds inside Event.wait() (seen: a worker that never
    # exited after its TERM).
    terms = []
    signal.signal(signal.SIGTERM, lambda *_: terms.append(1))

    servers, threads = [], []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        if sock.type == socket.SOCK_DGRAM:
            t = threading.Thread(target=worker.echo, args=(sock, stop))
        else:
            server = worker.Server(sock)
            servers.append(server)
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
        t.start()
        threads.append(t)

    while not terms:
        time.sleep(0.05)
    stop.set()
    for server in servers:
        server.shutdown()
        server.server_close()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
