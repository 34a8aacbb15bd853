#!/usr/bin/env python3
"""A minimal start_server worker in Python, finding its listeners through
libserver_starter (ctypes).

Stream listeners (TCP, unix) serve HTTP/1.0: "hello from pid P generation G".
Datagram listeners (UDP) echo each datagram back to its sender.

On SIGTERM (start_server's "you are the old generation now") it stops
accepting, lets the requests in flight finish, and exits 0.

When NOTIFY_SOCKET is set it tells the supervisor READY=1 once it serves,
STOPPING=1 when it begins to drain, and WATCHDOG=1 every WATCHDOG_USEC / 2
when that is set (sd_notify messages, through server_starter_notify).

The library is looked up, in order:
  1. $SERVER_STARTER_LIBRARY, a path to libserver_starter.so;
  2. BUILT_LIBRARY below, which `make examples` sets in its copy
     (build/examples/python/worker.py) to the library it staged;
  3. pkg-config's libdir for server_starter (honouring PKG_CONFIG_PATH and
     PKG_CONFIG_SYSROOT_DIR, so a staged install works);
  4. the dynamic linker's own search: LD_LIBRARY_PATH, then ld.so.cache.
"""

import ctypes
import http.server
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

NAME_MAX = 272  # SERVER_STARTER_NAME_MAX in server_starter.h

BUILT_LIBRARY = None


class Listener(ctypes.Structure):
    """server_starter_listener from server_starter.h."""
    _fields_ = [
        ("fd", ctypes.c_int),
        ("family", ctypes.c_int),
        ("socktype", ctypes.c_int),
        ("port", ctypes.c_int),
        ("name", ctypes.c_char * NAME_MAX),
    ]


def pkg_config_libdir():
    try:
        out = subprocess.run(["pkg-config", "--variable=libdir", "server_starter"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    # pkg-config applies the sysroot to -L flags but not to plain variables.
    sysroot = os.environ.get("PKG_CONFIG_SYSROOT_DIR", "")
    if out and sysroot and not out.startswith(sysroot):
        out = sysroot.rstrip("/") + out
    return out or None


def load_library():
    tried = []
    candidates = []
    if os.environ.get("SERVER_STARTER_LIBRARY"):
        candidates.append(os.environ["SERVER_STARTER_LIBRARY"])
    if BUILT_LIBRARY:
        candidates.append(BUILT_LIBRARY)
    libdir = pkg_config_libdir()
    if libdir:
        candidates.append(os.path.join(libdir, "libserver_starter.so.0"))
    candidates.append("libserver_starter.so.0")  # LD_LIBRARY_PATH, ld.so.cache
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path}: {e}")
            continue
        lib.server_starter_listeners.argtypes = [ctypes.POINTER(Listener), ctypes.c_size_t]
        lib.server_starter_listeners.restype = ctypes.c_int
        lib.server_starter_generation.argtypes = []
        lib.server_starter_generation.restype = ctypes.c_long
        lib.server_starter_strerror.argtypes = [ctypes.c_int]
        lib.server_starter_strerror.restype = ctypes.c_char_p
        lib.server_starter_notify.argtypes = [ctypes.c_char_p]
        lib.server_starter_notify.restype = ctypes.c_int
        return lib
    sys.exit("worker.py: cannot load libserver_starter:\n  " + "\n  ".join(tried))


def listeners(lib):
    cap = 64
    while True:
        buf = (Listener * cap)()
        n = lib.server_starter_listeners(buf, cap)
        if n < 0:
            sys.exit("worker.py: no inherited listeners: %s (run me under start_server)"
                     % lib.server_starter_strerror(n).decode())
        if n <= cap:
            return list(buf[:n])
        cap = n  # more than we had room for: ask again


def notify(lib, state):
    """Sends state to the supervisor (nothing when NOTIFY_SOCKET is unset). A
    failure is worth a line: the worker serves all the same."""
    rc = lib.server_starter_notify(state.encode())
    if rc < 0:  # -errno, not a SERVER_STARTER_E* code
        print("worker.py: telling the supervisor %r: %s" % (state, os.strerror(-rc)),
              file=sys.stderr, flush=True)


def watchdog_interval():
    """WATCHDOG_USEC / 2 in seconds when the supervisor asks this process for
    keep-alives, else None."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    # A client that connects and sends nothing must not hold the drain (server_close
    # waits for every request thread) past a few seconds.
    timeout = 5

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass  # unix sockets have no client address to log, and tests want quiet


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    # server_close() waits for the request threads: that is the graceful drain.
    block_on_close = True

    def __init__(self, sock):
        # The socket is inherited, already bound and listening: skip bind/listen.
        self.address_family = sock.family
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock


def echo(sock, stop):
    sock.settimeout(0.2)  # to notice `stop`; the socket itself stays open
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(65536)
        except socket.timeout:
            continue
        except OSError:
            return
        try:
            sock.sendto(data, addr)
        except OSError:
            pass  # UDP may drop, and so may we


def main():
    lib = load_library()
    generation = lib.server_starter_generation()
    Handler.body = ("hello from pid %d generation %d\n" % (os.getpid(), generation)).encode()

    stop = threading.Event()
    # The handlers only record the signal: Event.set() from a handler can deadlock on
    # the lock the main thread holds inside Event.wait(), and the worker then never
    # exits after its TERM.
    signalled = []
    signal.signal(signal.SIGTERM, lambda *_: signalled.append(1))
    signal.signal(signal.SIGINT, lambda *_: signalled.append(1))

    servers, threads = [], []
    for l in listeners(lib):
        sock = socket.socket(fileno=l.fd)  # family and type are read from the fd
        if sock.type == socket.SOCK_DGRAM:
            t = threading.Thread(target=echo, args=(sock, stop))
        else:
            server = Server(sock)
            servers.append(server)
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
        t.start()
        threads.append(t)
    print("worker.py: pid %d generation %d serving %d listener(s)"
          % (os.getpid(), generation, len(threads)), file=sys.stderr, flush=True)
    notify(lib, "READY=1")

    keep_alive = watchdog_interval()
    next_ping = time.monotonic() + (keep_alive or 0)
    while not signalled:
        if keep_alive and time.monotonic() >= next_ping:
            notify(lib, "WATCHDOG=1")
            next_ping += keep_alive
        time.sleep(0.05)
    stop.set()
    print("worker.py: pid %d draining" % os.getpid(), file=sys.stderr, flush=True)
    notify(lib, "STOPPING=1")
    for server in servers:
        server.shutdown()      # stop accepting
        server.server_close()  # close the listener, wait for requests in flight
    for t in threads:
        t.join()
    print("worker.py: pid %d exiting" % os.getpid(), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
