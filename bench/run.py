#!/usr/bin/env python3
"""Side-by-side benchmarks of our start_server against the Perl original.

Run by `make bench`, which builds everything first. Both implementations run in the
same invocation on the same machine, and one markdown table comes out: on stdout and
in build/bench/results.md.

Environment:
  START_SERVER          our binary (default: the release musl build)
  EXAMPLES              directory holding http-static (default: build/examples)
  BENCH_IDLE_SECONDS    idle window for the context-switch counts (default 30)
  BENCH_REPS            repetitions of each latency measurement (default 7)
  BENCH_LOAD_SECONDS    length of each load run (default 15)

The upgrade-in-place rows are ours only: the original dies of SIGUSR2.

A second table sets `start_server --workers=4 --rolling=1` beside PM2's cluster mode
on the same Node app (bench/node/app.js, Debian's nodejs): reloads under load, and
the supervisor's idle cost with 16 workers. PM2 comes from npm, installed once into
build/bench/pm2, and runs under a private PM2_HOME that `pm2 kill` ends.

Options this build of ours lacks (--workers, --ready=listening: the bench runs
against whatever main has) are said in one line, and their rows are skipped.

Every process is started here and stopped here, by its PID, with bounded waits; every
server listens on 127.0.0.1 only, on ports the kernel handed out as free.
"""

import datetime
import itertools
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.environ.get("START_SERVER") or os.path.join(
    ROOT, "target/x86_64-unknown-linux-musl/release/start_server")
EXAMPLES = os.environ.get("EXAMPLES") or os.path.join(ROOT, "build/examples")
HTTP_WORKER = os.path.join(EXAMPLES, "http-static")
OUT_DIR = os.path.join(ROOT, "build/bench")
STAMP_WORKER = os.path.join(OUT_DIR, "stampworker")

PERL_SCRIPT = "/usr/bin/start_server"
PERL_MODULE = "/usr/share/perl5/Server/Starter.pm"
PERL_GUARD = "/usr/share/perl5/Server/Starter/Guard.pm"

IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "30"))
REPS = int(os.environ.get("BENCH_REPS", "7"))
LOAD_SECONDS = int(os.environ.get("BENCH_LOAD_SECONDS", "15"))
# A load run around one restart of a worker that needs 1.5 s to get ready: long
# enough for the HUP (1 s in) and the old worker's signal (2 s later at most).
RESTART_LOAD_SECONDS = 6
UPGRADES = 20
UPGRADE_PACE = 0.4  # seconds between two upgrades under load
MANY_PORTS = 1000

IMPLS = ("ours", "perl")

NODE_APP = os.path.join(ROOT, "bench/node/app.js")
PM2_VERSION = "7.0.4"
PM2_DIR = os.path.join(OUT_DIR, "pm2")
PM2 = os.path.join(PM2_DIR, "node_modules/.bin/pm2")
WORKERS = 4  # Node workers in the reload comparison
IDLE_WORKERS = 16  # in the idle-cost comparison
RELOADS = 10
RELOAD_PACE = 0.5  # seconds between the end of a reload and the next one


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def note(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- setup

def ensure_tools():
    """Installs the Perl original, wrk, nodejs and npm from Debian when missing."""
    missing = []
    if not (os.path.exists(PERL_SCRIPT) and os.path.exists(PERL_MODULE)):
        missing.append("libserver-starter-perl")
    if shutil.which("wrk") is None:
        missing.append("wrk")
    if shutil.which("node") is None:
        missing.append("nodejs")
    if shutil.which("npm") is None:
        missing.append("npm")
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    note(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = sudo + ["apt-get", "install", "-y", "--no-install-recommends"] + missing
    if subprocess.run(install, env=env).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(sudo + ["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def ensure_pm2():
    """PM2 from npm into build/bench/pm2, once: later runs reuse it."""
    if os.access(PM2, os.X_OK):
        return
    note(f"installing pm2@{PM2_VERSION} from npm into {os.path.relpath(PM2_DIR, ROOT)}")
    os.makedirs(PM2_DIR, exist_ok=True)
    subprocess.run(["npm", "install", "--prefix", PM2_DIR, "--no-audit", "--no-fund",
                    "--loglevel=error", f"pm2@{PM2_VERSION}"],
                   stdout=subprocess.DEVNULL, check=True, timeout=600)


def ours_has(option, value):
    """Whether our binary takes option=value. Its parser checks some values only when
    it runs, so it is run, on a free port with a worker that waits: refused, it exits
    at once (with a line naming the option); taken, it is still running a second
    later, and is stopped."""
    port = free_ports(1)[0]
    p = subprocess.Popen([OURS, f"{option}={value}", f"--port=127.0.0.1:{port}", "--",
                          "sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=1.0)
        return False
    except subprocess.TimeoutExpired:
        return True
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=15)


def skipped(what, rows):
    note(f"{os.path.basename(OURS)} has no {what}: skipping {rows}")
    return f"This build of ours has no {what}: {rows} skipped."


def build_stamp_worker():
    os.makedirs(OUT_DIR, exist_ok=True)
    src = os.path.join(ROOT, "bench/stampworker.c")
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-Wextra", "-Werror",
                    "-std=c11", "-o", STAMP_WORKER, src], check=True)


def free_ports(n):
    """n distinct ports the kernel reports free on 127.0.0.1, all held at once so
    none is handed out twice, then released for the servers to bind."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- processes

def proc_status(pid, task=None):
    fields = {}
    path = f"/proc/{pid}/task/{task}/status" if task else f"/proc/{pid}/status"
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields


def rss_kib(pid):
    return int(proc_status(pid)["VmRSS"].split()[0])


def private_kib(pid):
    """Memory that is this process's alone: its dirty private pages plus anonymous
    memory not counted there (smaps_rollup), what a second instance would add."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                fields[k] = int(v.split()[0])
    anon_clean = max(fields.get("Anonymous", 0) - fields.get("Private_Dirty", 0), 0)
    return fields.get("Private_Dirty", 0) + anon_clean


def ctxt(pid):
    """Context switches of every thread of pid (ours has one; node has several): each
    is a wake-up."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            st = proc_status(pid, task)
        except FileNotFoundError:  # a thread that just ended
            continue
        total += int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
    return total


class Server:
    """One start_server process (either implementation) and what it logs."""

    serial = itertools.count(1)  # a fresh stamp file per server, never a stale one

    def __init__(self, impl, args, worker, tmp, env=None, tag="", exe=None):
        self.impl = impl
        self.tmp = tmp
        name = f"{impl}{tag}-{next(Server.serial)}"
        self.stamp_file = os.path.join(tmp, name + ".stamps")
        self.log_file = os.path.join(tmp, name + ".log")
        exe = [exe or OURS] if impl == "ours" else ["/usr/bin/perl", PERL_SCRIPT]
        full_env = dict(os.environ, BENCH_STAMP_FILE=self.stamp_file, **(env or {}))
        # Neither implementation must see these from the caller's environment.
        for k in ("ENABLE_AUTO_RESTART", "AUTO_RESTART_INTERVAL", "KILL_OLD_DELAY", "ENVDIR",
                  "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            if k not in (env or {}):
                full_env.pop(k, None)
        self.log = open(self.log_file, "wb")
        self.spawned_at = now()
        worker = worker if isinstance(worker, list) else [worker]
        self.proc = subprocess.Popen(exe + args + ["--"] + worker, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.pid = self.proc.pid

    def stamps(self):
        """[(what, generation, pid, time)] in the order written."""
        try:
            with open(self.stamp_file) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            what, gen, pid, t = line.split()
            out.append((what, int(gen), int(pid), float(t)))
        return out

    def wait_stamp(self, what, gen, timeout=15.0):
        deadline = now() + timeout
        while now() < deadline:
            for s in self.stamps():
                if s[0] == what and s[1] == gen:
                    return s
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.impl} start_server exited: {self.log_text()}")
            time.sleep(0.001)
        raise RuntimeError(f"{self.impl}: no '{what}' stamp for generation {gen} "
                           f"within {timeout}s; log:\n{self.log_text()}")

    def log_text(self):
        with open(self.log_file, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_line(self, needle, n, timeout=15.0):
        """The n-th (1-based) log line containing needle."""
        deadline = now() + timeout
        while now() < deadline:
            found = [l for l in self.log_text().splitlines() if needle in l]
            if len(found) >= n:
                return found[n - 1]
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.impl} start_server exited: {self.log_text()}")
            time.sleep(0.0002)
        raise RuntimeError(f"{self.impl}: no line {needle!r} #{n} within {timeout}s; "
                           f"log:\n{self.log_text()}")

    def worker_pids(self):
        return [int(p) for p in re.findall(r"starting new worker (\d+)", self.log_text())]

    def rss_kib(self):
        return rss_kib(self.pid)

    def private_kib(self):
        return private_kib(self.pid)

    def ctxt(self):
        return ctxt(self.pid)

    forced = {impl: 0 for impl in IMPLS}  # start_servers that needed KILL

    def stop(self):
        """TERM, as an operator would; KILL to start_server and its workers if the
        exit takes longer than 5 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                note(f"{self.impl} start_server {self.pid} still running 5 s after TERM; "
                     f"killing it. Its log ends:\n{self.log_text()[-600:]}")
                Server.forced[self.impl] += 1
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in self.worker_pids():
            try:
                # Only if it is still our worker: a reused PID would not be a zombie
                # child of the start_server we just reaped, but check the command.
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if os.path.basename(f.read().split(b"\0")[0]).decode() in (
                            "stampworker", "http-static", "node"):
                        os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass
        self.log.close()


class Pm2:
    """A PM2 daemon of our own (a private PM2_HOME) running the Node app in cluster
    mode, as `pm2 start app.js -i N` does, listening on port."""

    impl = "pm2"

    def __init__(self, tmp, workers, port):
        self.home = tempfile.mkdtemp(prefix="pm2-home-", dir=tmp)
        self.env = dict(os.environ, PM2_HOME=self.home, PORT=str(port))
        self.workers = workers

    def start(self):
        self.cli("start", NODE_APP, "-i", str(self.workers), "--name", "app")

    @property
    def pid(self):
        try:
            with open(os.path.join(self.home, "pm2.pid")) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            return None

    def cli(self, *args, timeout=120):
        r = subprocess.run([PM2, *args], env=self.env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"pm2 {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def online(self):
        return sum(p["pm2_env"]["status"] == "online" for p in json.loads(self.cli("jlist").stdout))

    def wait_online(self, timeout=60):
        deadline = now() + timeout
        while self.online() < self.workers:
            if now() > deadline:
                raise RuntimeError(f"pm2: fewer than {self.workers} workers online after "
                                   f"{timeout} s; log:\n{self.log_text()[-2000:]}")
            time.sleep(0.1)

    def reload(self):
        """`pm2 reload app`, which returns once every worker has been replaced."""
        return subprocess.run([PM2, "reload", "app"], env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=120).returncode == 0

    def log_text(self):
        with open(os.path.join(self.home, "pm2.log"), errors="replace") as f:
            return f.read()

    def stop(self):
        """`pm2 kill`; the daemon, which is ours, killed by its pid if it outlives that."""
        pid = self.pid  # pm2 kill removes the file
        try:
            if pid:
                self.cli("kill", timeout=30)
        finally:
            deadline = now() + 10
            while pid and now() < deadline and is_pm2_daemon(pid):
                time.sleep(0.05)
            if pid and is_pm2_daemon(pid):
                note(f"pm2 daemon {pid} still running after `pm2 kill`: killing it")
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.home, ignore_errors=True)


def is_pm2_daemon(pid):
    """Whether pid is still a PM2 daemon (not a pid reused since)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"PM2" in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False


class Registry:
    """Every server started, so that a failure anywhere still stops them all."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.live = []

    def start(self, *a, **kw):
        s = Server(*a, tmp=self.tmp, **kw)
        self.live.append(s)
        return s

    def start_pm2(self, workers, port):
        p = Pm2(self.tmp, workers, port)
        self.live.append(p)  # before it starts, so that a failed start is cleaned up too
        p.start()
        return p

    def stop(self, s):
        s.stop()
        self.live.remove(s)

    def stop_all(self):
        for s in list(self.live):
            try:
                self.stop(s)
            except Exception as e:  # keep stopping the others
                note(f"stopping {s.impl} {s.pid}: {e}")


# ---------------------------------------------------------------- measurements

def sizes():
    ours = os.path.getsize(OURS)
    perl_files = [PERL_SCRIPT, PERL_MODULE, PERL_GUARD]
    original = sum(os.path.getsize(p) for p in perl_files if os.path.exists(p))
    interp = {"/usr/bin/perl": os.path.getsize(os.path.realpath("/usr/bin/perl"))}
    ldd = subprocess.run(["ldd", "/usr/bin/perl"], capture_output=True, text=True).stdout
    m = re.search(r"(\S*libperl\.so\S*) => (\S+)", ldd)
    if m:
        interp[m.group(1)] = os.path.getsize(os.path.realpath(m.group(2)))
    # What the script pulls in from perl's library at start-up, besides its own module.
    inc = subprocess.run(
        ["/usr/bin/perl", "-MGetopt::Long", "-MPod::Usage", "-MServer::Starter", "-e",
         'print "$_\\n" for values %INC'], capture_output=True, text=True).stdout.split()
    libs = [p for p in inc if "Server/Starter" not in p]
    lib_bytes = sum(os.path.getsize(p) for p in libs)
    return ours, original, interp, (len(libs), lib_bytes)


def idle(reg):
    """RSS and context switches of start_server over an idle window, all four
    configurations side by side in the same window."""
    auto = ["--enable-auto-restart", "--auto-restart-interval=3600"]
    configs = {(impl, a): None for impl in IMPLS for a in (False, True)}
    for impl, a in configs:
        port = free_ports(1)[0]
        configs[(impl, a)] = reg.start(impl, [f"--port=127.0.0.1:{port}"] + (auto if a else []),
                                       STAMP_WORKER, tag="-idle")
    for s in configs.values():
        s.wait_stamp("start", 1)
    # Past --interval (1 s), so that ours has declared the worker started and has no
    # timer left: the window then sees only the steady state.
    time.sleep(1.5)
    before = {k: s.ctxt() for k, s in configs.items()}
    note(f"idle window of {IDLE_SECONDS:g} s")
    time.sleep(IDLE_SECONDS)
    result = {}
    for k, s in configs.items():
        result[k] = {"ctxt": s.ctxt() - before[k], "rss": s.rss_kib(),
                     "private": s.private_kib(),
                     "restarts": len(s.worker_pids()) - 1}
    for s in configs.values():
        reg.stop(s)
    return result


def hup_rounds(s, timeout):
    """REPS restarts of the running stamp-worker server `s`, one after the other: for
    each, the moment SIGHUP was sent and the old worker's SIGTERM stamp."""
    out = []
    for gen in range(1, REPS + 1):
        sent = now()
        os.kill(s.pid, signal.SIGHUP)
        term = s.wait_stamp("term", gen, timeout=timeout)
        out.append((gen, sent, term[3]))
        # The new generation is current once the old one is told to go; a short
        # pause lets start_server get back to waiting before the next HUP.
        time.sleep(0.1)
    return out


def restart_latency(reg, impl, interval):
    """Seconds from sending SIGHUP to the old worker taking SIGTERM, REPS times."""
    s = reg.start(impl, [f"--interval={interval}"], STAMP_WORKER, tag=f"-hup{interval}")
    try:
        s.wait_stamp("start", 1)
        # Let the first worker count as started, so the first HUP is a plain restart.
        time.sleep(float(interval) + 0.3)
        return [term - sent for _, sent, term in hup_rounds(s, float(interval) + 10)]
    finally:
        reg.stop(s)


def switch_over(reg, impl, args, ready_delay):
    """Restarts of a stamp worker that needs `ready_delay` seconds to get ready (then
    says READY=1 where NOTIFY_SOCKET is set and waits in epoll_wait on its listener),
    REPS times: seconds from SIGHUP to the old worker's SIGTERM, seconds from the new
    worker's readiness to that SIGTERM (negative: the old one was signalled before the
    new one was ready)."""
    port = free_ports(1)[0]
    s = reg.start(impl, [f"--port=127.0.0.1:{port}"] + args, STAMP_WORKER,
                  env={"BENCH_READY_DELAY": str(ready_delay)}, tag="-switch")
    try:
        s.wait_stamp("ready", 1, timeout=ready_delay + 15)
        # Past the original's --interval too (2 at most here), so that the first HUP
        # is a plain restart.
        time.sleep(2.3)
        rounds = hup_rounds(s, ready_delay + 15)
        return ([term - sent for _, sent, term in rounds],
                [term - s.wait_stamp("ready", gen + 1)[3] for gen, _, term in rounds])
    finally:
        reg.stop(s)


def switch_over_rows(ready, mode, interval, ours, perl):
    """The rows of one readiness mode of ours beside the original's --interval, from
    switch_over()'s results for each."""
    (oh, oready), (ph, pready) = ours, perl
    return [(f"switch-over, worker ready {ready} after exec: SIGHUP → old worker's SIGTERM "
             f"(ours --ready={mode}; original --interval={interval}, the smallest safe for it)",
             fmt_ms(oh), fmt_ms(ph), ratio(med(oh), med(ph))),
            ("the same restarts: new worker ready → old worker's SIGTERM",
             fmt_ms(oready), fmt_ms(pready), ratio(med(oready), med(pready))),
            ("the same restarts: old worker signalled before the new one was ready",
             f"{sum(x < 0 for x in oready)} of {len(oready)}",
             f"{sum(x < 0 for x in pready)} of {len(pready)}", "—")]


def http_get(port, timeout=1.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def first_response(reg, impl):
    """Seconds from just before spawning start_server to the first HTTP response of
    its worker, polling connect+request every millisecond."""
    port = free_ports(1)[0]
    s = reg.start(impl, [f"--port=127.0.0.1:{port}"], HTTP_WORKER, tag="-first")
    try:
        deadline = s.spawned_at + 15
        while now() < deadline:
            try:
                if http_get(port).startswith(b"HTTP/1.1 200"):
                    return now() - s.spawned_at
            except OSError:
                pass
            time.sleep(0.001)
        raise RuntimeError(f"{impl}: no response within 15 s; log:\n{s.log_text()}")
    finally:
        reg.stop(s)


def many_ports(reg, impl, ports):
    """Start-up with MANY_PORTS listeners: seconds to the first worker's start, and
    start_server's RSS once it is up."""
    args = [f"--port=127.0.0.1:{p}" for p in ports]
    s = reg.start(impl, args, STAMP_WORKER, tag="-many")
    try:
        st = s.wait_stamp("start", 1, timeout=60)
        elapsed = st[3] - s.spawned_at
        time.sleep(0.2)
        return elapsed, s.rss_kib()
    finally:
        reg.stop(s)


def wrk_seconds(text):
    """A duration as wrk prints it: 512.00us, 1.23ms, 2.00s, 1.00m."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise RuntimeError(f"wrk duration not understood: {text}")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def wrk_result(out, err):
    """Requests served, failed (by kind), and the latency's max and 99th percentile
    (when wrk ran with --latency), from wrk's output."""
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}\n{err}")
    served = int(m.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errs = dict(zip(("connect", "read", "write", "timeout"),
                    map(int, errors.groups()))) if errors else {}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs["non-2xx"] = int(non2xx.group(1)) if non2xx else 0
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return {"served": served, "failed": sum(errs.values()),
            "errors": {k: v for k, v in errs.items() if v},
            "max": wrk_seconds(latency.group(1)) if latency else None,
            "p99": wrk_seconds(p99.group(1)) if p99 else None}


def wait_serving(s, port, timeout=15):
    deadline = now() + timeout
    while True:
        try:
            if http_get(port).startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        if now() > deadline:
            raise RuntimeError(f"{s.impl}: http-static never answered: {s.log_text()}")
        time.sleep(0.01)


def load(reg, impl, keep_alive):
    """wrk -c 64 against http-static for LOAD_SECONDS with a SIGHUP every second.

    Without keep-alive every request has a connection of its own, accepted from the
    listener start_server holds: a failure there is a listener lost or left unserved
    across a restart. With keep-alive a failure can also be the worker's: http-static
    closes its idle keep-alive connections on SIGTERM, and a request the client sent
    at that moment meets a closed connection (wrk counts a read error, never retries).
    """
    port = free_ports(1)[0]
    s = reg.start(impl, [f"--port=127.0.0.1:{port}", "--interval=1"], HTTP_WORKER, tag="-load")
    try:
        wait_serving(s, port)
        time.sleep(1.2)
        stop = threading.Event()
        hups = [0]

        def hupper():
            while not stop.wait(1.0):
                os.kill(s.pid, signal.SIGHUP)
                hups[0] += 1

        t = threading.Thread(target=hupper)
        t.start()
        try:
            wrk = subprocess.run(
                ["wrk", "-t2", "-c64", f"-d{LOAD_SECONDS}s", "--timeout", "5s"]
                + ([] if keep_alive else ["-H", "Connection: close"])
                + [f"http://127.0.0.1:{port}/"],
                capture_output=True, text=True, timeout=LOAD_SECONDS + 60)
        finally:
            stop.set()
            t.join()
        return dict(wrk_result(wrk.stdout, wrk.stderr), hups=hups[0],
                    restarts=len(re.findall(r"new worker is now running", s.log_text())))
    finally:
        reg.stop(s)


def restart_under_load(reg, impl, args):
    """wrk -c64 (Connection: close) against http-static that needs 1.5 s to get ready
    (EXAMPLE_READY_DELAY_MS), with one SIGHUP a second into the run: the slowest
    request answered, and the failed ones. Until the new worker accepts, the old one
    must: a request meets a stall only if the old one is told to stop too early."""
    port = free_ports(1)[0]
    s = reg.start(impl, [f"--port=127.0.0.1:{port}"] + args, HTTP_WORKER,
                  env={"EXAMPLE_READY_DELAY_MS": "1500"}, tag="-slowstart")
    try:
        wait_serving(s, port)
        # Past the original's --interval (2 at most here) since the spawn.
        time.sleep(1.0)
        wrk = subprocess.Popen(
            ["wrk", "-t2", "-c64", f"-d{RESTART_LOAD_SECONDS}s", "--timeout", "5s", "--latency",
             "-H", "Connection: close", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            os.kill(s.pid, signal.SIGHUP)
            out, err = wrk.communicate(timeout=RESTART_LOAD_SECONDS + 60)
        except BaseException:
            wrk.kill()
            wrk.wait()
            raise
        log = s.log_text()
        return dict(wrk_result(out, err),
                    restarted=bool(re.search(r"old worker \d+ died", log)))
    finally:
        reg.stop(s)


def installed_copy(tmp):
    """Our binary copied to a directory of its own, as installed: the path a deploy
    replaces and an upgrade in place executes."""
    path = os.path.join(tempfile.mkdtemp(dir=tmp), "start_server")
    shutil.copy2(OURS, path)
    return path


def deploy(path):
    """A new build at path, as a deploy puts it there: a copy, renamed over it."""
    shutil.copy2(OURS, path + ".new")
    os.rename(path + ".new", path)


def upgrade_latency(reg):
    """SIGUSR2 → the new image back in its event loop (it logs `upgraded from` as it
    goes back to it), REPS times, each to a freshly deployed copy; also the time
    start_server logs itself (SIGUSR2 read → supervising again), and how many workers
    were started (1: none restarted)."""
    exe = installed_copy(reg.tmp)
    s = reg.start("ours", ["--interval=0"], STAMP_WORKER, exe=exe, tag="-usr2")
    try:
        s.wait_stamp("start", 1)
        outside, inside = [], []
        for n in range(1, REPS + 1):
            deploy(exe)
            sent = now()
            os.kill(s.pid, signal.SIGUSR2)
            line = s.wait_line("upgraded from", n)
            outside.append(now() - sent)
            inside.append(float(re.search(r" in ([\d.]+) ms", line).group(1)) / 1000)
        return outside, inside, len(s.worker_pids())
    finally:
        reg.stop(s)


def upgrades_under_load(reg):
    """wrk -c64 (Connection: close) against http-static while start_server is upgraded
    in place UPGRADES times, every UPGRADE_PACE s, each time to a freshly deployed
    copy: every request is accepted from the listeners the upgrades carry over."""
    exe = installed_copy(reg.tmp)
    port = free_ports(1)[0]
    s = reg.start("ours", [f"--port=127.0.0.1:{port}", "--interval=1"], HTTP_WORKER, exe=exe,
                  tag="-upgrades")
    try:
        wait_serving(s, port)
        time.sleep(1.2)
        seconds = round(UPGRADES * UPGRADE_PACE + 2)
        wrk = subprocess.Popen(
            ["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "5s",
             "-H", "Connection: close", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            for n in range(1, UPGRADES + 1):
                deploy(exe)
                os.kill(s.pid, signal.SIGUSR2)
                s.wait_line("upgraded from", n)
                time.sleep(UPGRADE_PACE)
            out, err = wrk.communicate(timeout=seconds + 60)
        except BaseException:
            wrk.kill()
            wrk.wait()
            raise
        log = s.log_text()
        return dict(wrk_result(out, err), upgrades=log.count("upgraded from"),
                    restarted=len(s.worker_pids()) - 1)
    finally:
        reg.stop(s)


def status_workers(path, generation):
    """How many workers of generation the status file lists (one gen:pid line each)."""
    try:
        with open(path) as f:
            return sum(line.split(":")[0] == str(generation) for line in f)
    except FileNotFoundError:
        return 0


def start_ours_workers(reg, workers, port, args=()):
    """Our start_server with --workers=N running the Node app; returns once all N of
    generation 1 are in the status file and the port answers."""
    pid_file = os.path.join(reg.tmp, f"workers-{port}.pid")
    status = os.path.join(reg.tmp, f"workers-{port}.status")
    s = reg.start("ours", [f"--port=127.0.0.1:{port}", f"--workers={workers}",
                           f"--pid-file={pid_file}", f"--status-file={status}", *args],
                  ["node", NODE_APP], tag="-workers")
    s.pid_file, s.status_file = pid_file, status
    deadline = now() + 60
    while status_workers(status, 1) < workers:
        if now() > deadline or s.proc.poll() is not None:
            raise RuntimeError(f"ours: {workers} workers not started; log:\n{s.log_text()}")
        time.sleep(0.05)
    wait_serving(s, port)
    return s


def ours_restart(s):
    """`start_server --restart`, which returns with the verdict: True once the new
    generation runs alone."""
    r = subprocess.run([OURS, "--restart", f"--pid-file={s.pid_file}",
                        f"--status-file={s.status_file}"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)
    return r.returncode == 0


def reloads_under_load(port, reload):
    """wrk -t2 -c64 (Connection: close) against the app on port while reload() (which
    returns once its reload is over, True if it succeeded) runs RELOADS times:
    requests failed, the slowest one, and how long each reload took."""
    wrk = subprocess.Popen(
        ["wrk", "-t2", "-c64", "-d600s", "--timeout", "5s", "--latency",
         "-H", "Connection: close", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        times, failures = [], 0
        for _ in range(RELOADS):
            started = now()
            failures += not reload()
            times.append(now() - started)
            time.sleep(RELOAD_PACE)
        # wrk stops on SIGINT and prints what it measured so far.
        wrk.send_signal(signal.SIGINT)
        out, err = wrk.communicate(timeout=30)
    except BaseException:
        wrk.kill()
        wrk.wait()
        raise
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return dict(wrk_result(out, err), times=times, failed_reloads=failures,
                rps=float(rps.group(1)) if rps else None)


def ours_reloads(reg, args):
    """--workers=WORKERS and args under load, restarted RELOADS times."""
    port = free_ports(1)[0]
    s = start_ours_workers(reg, WORKERS, port, args)
    try:
        time.sleep(1.0)  # past --interval, when that is the readiness
        return reloads_under_load(port, lambda: ours_restart(s))
    finally:
        reg.stop(s)


def pm2_reloads(reg):
    """PM2's cluster mode, WORKERS workers, under load, `pm2 reload`-ed RELOADS times."""
    port = free_ports(1)[0]
    p = reg.start_pm2(WORKERS, port)
    try:
        p.wait_online()
        wait_serving(p, port)
        time.sleep(1.0)
        return reloads_under_load(port, p.reload)
    finally:
        reg.stop(p)


def idle_workers(reg, with_ours, args):
    """The supervisors' own cost with 1 and IDLE_WORKERS Node workers, all side by
    side in one idle window: start_server (when it has --workers) and PM2's daemon
    (which is also the cluster's master), ours with args. RSS, private memory,
    context switches of all its threads (each a wake-up)."""
    sups = {}
    for n in (1, IDLE_WORKERS):
        if with_ours:
            sups[("ours", n)] = start_ours_workers(reg, n, free_ports(1)[0], args)
        p = reg.start_pm2(n, free_ports(1)[0])
        p.wait_online()
        sups[("pm2", n)] = p
    # Past --interval (1 s) after the last start, and the Node workers past their
    # start-up, which PM2's daemon hears about.
    time.sleep(2.0)
    before = {k: ctxt(x.pid) for k, x in sups.items()}
    note(f"idle window of {IDLE_SECONDS:g} s, {len(sups)} supervisors")
    time.sleep(IDLE_SECONDS)
    result = {k: {"ctxt": ctxt(x.pid) - before[k], "rss": rss_kib(x.pid),
                  "private": private_kib(x.pid)} for k, x in sups.items()}
    for x in sups.values():
        reg.stop(x)
    return result


def many_workers(reg):
    """start_server --workers beside PM2's cluster mode on the Node app: the header,
    rows (ours, PM2, ratio) and notes of the second table."""
    rows, notes = [], []
    has_workers = ours_has("--workers", str(WORKERS))
    rolling = ["--rolling=1"] if ours_has("--rolling", "1") else []
    readiness = ["--ready=listening"] if ours_has("--ready", "listening") else []
    args = [*rolling, *readiness]
    ours_args = " ".join([f"--workers={WORKERS}", *args])
    if not has_workers:
        notes.append(skipped("--workers", "its side of the many-workers comparison"))
    else:
        if not rolling:
            notes.append("This build of ours has no --rolling: each restart starts the "
                         "whole new generation at once.")
        if not readiness:
            notes.append("Ours without --ready=listening: each new worker counts as started "
                         "after --interval (1 s).")
    ensure_pm2()
    note(f"{RELOADS} reloads of {WORKERS} Node workers under load: PM2, then ours")
    pm2 = pm2_reloads(reg)
    ours = ours_reloads(reg, args) if has_workers else None
    note(f"idle cost of the supervisors with 1 and {IDLE_WORKERS} Node workers")
    idl = idle_workers(reg, has_workers, args)

    def side(x, fmt):
        return "n/a (no --workers)" if x is None else fmt(x)

    def row(label, fmt, value=lambda x: x):
        o = None if ours is None else value(ours)
        rows.append((label, side(ours, lambda x: fmt(x)), fmt(pm2), ratio(o, value(pm2))))

    row(f"time per reload, to its verdict (`start_server --restart`, `pm2 reload app`), "
        f"{RELOADS} reloads", lambda x: fmt_ms(x["times"]), lambda x: med(x["times"]))
    row(f"requests failed across the {RELOADS} reloads (wrk -t2 -c64 Connection: close "
        "throughout)", lambda x: f"{failed(x)} of {x['served']}", lambda x: x["failed"])
    row("slowest request during the reloads (same run)", fmt_latency, lambda x: x["max"])
    row("requests per second during the reloads (same run)", lambda x: f"{x['rps']:.0f}",
        lambda x: x["rps"])
    row("reloads whose verdict was a failure (same run)", lambda x: str(x["failed_reloads"]),
        lambda x: x["failed_reloads"])

    def idle_row(label, fmt, value):
        o = value(idl, "ours") if has_workers else None
        rows.append((label, side(o, fmt), fmt(value(idl, "pm2")), ratio(o, value(idl, "pm2"))))

    n = IDLE_WORKERS
    idle_row(f"supervisor RSS, idle, {n} workers", fmt_kib, lambda d, k: d[(k, n)]["rss"])
    idle_row(f"supervisor private memory (smaps_rollup), idle, {n} workers", fmt_kib,
             lambda d, k: d[(k, n)]["private"])
    idle_row(f"private memory per worker (({n} workers − 1 worker) / {n - 1})", fmt_kib,
             lambda d, k: (d[(k, n)]["private"] - d[(k, 1)]["private"]) / (n - 1))
    for workers in (n, 1):
        idle_row(f"wake-ups (context switches, all threads) in {IDLE_SECONDS:g} s idle, "
                 f"{workers} worker{'s' if workers > 1 else ''}", str,
                 lambda d, k, w=workers: d[(k, w)]["ctxt"])
    for who, ld in (("ours", ours), ("PM2", pm2)):
        if ld is not None and ld["errors"]:
            notes.append(f"{who}: failed requests by kind: {failed(ld)}.")
    notes.append("PM2's daemon is also the cluster's master: it accepts every connection "
                 "and hands it to a worker (round-robin), and it is the process measured "
                 "here. Ours: the workers accept from the listener they inherit.")
    notes.append("Time per reload is the command's wall time to its verdict: "
                 "`start_server --restart` is a client of a few ms; `pm2 reload` a Node CLI, "
                 "its own start-up included.")
    header = [
        "## Many workers: start_server --workers beside PM2's cluster mode",
        "",
        f"The same Node app (`bench/node/app.js`, node {tool_version(['node', '--version'])}) "
        f"with {WORKERS} workers: ours `start_server {ours_args}`; PM2 {pm2_version()} "
        f"`pm2 start app.js -i {WORKERS}`, `pm2 reload app`. {RELOADS} reloads "
        f"{RELOAD_PACE:g} s apart; latencies median (min–max); ratio = ours / PM2.",
    ]
    return header, rows, notes


def tool_version(cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def pm2_version():
    with open(os.path.join(PM2_DIR, "node_modules/pm2/package.json")) as f:
        return json.load(f)["version"]


# ---------------------------------------------------------------- table

def failed(ld):
    detail = ", ".join(f"{k} {v}" for k, v in ld["errors"].items())
    return f"{ld['failed']} ({detail})" if detail else str(ld["failed"])


def fmt_bytes(n):
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    return f"{n / 1024:.1f} KiB"


def fmt_kib(k):
    return fmt_bytes(k * 1024)


def fmt_latency(ld):
    if ld["max"] is None:
        return "n/a"
    p99 = f" (p99 {ld['p99'] * 1000:.2f} ms)" if ld["p99"] is not None else ""
    return f"{ld['max'] * 1000:.2f} ms{p99}"


def fmt_ms(xs):
    if not xs:
        return "n/a"
    med = statistics.median(xs) * 1000
    lo, hi = min(xs) * 1000, max(xs) * 1000
    return f"{med:.2f} ms ({lo:.2f}–{hi:.2f})"


def ratio(a, b):
    if a is None or b is None:
        return "—"
    if b == 0:
        return "—" if a == 0 else "∞"
    return f"{a / b:.3g}"


def med(xs):
    return statistics.median(xs) if xs else None


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"nproc {nproc}, Linux {platform.release()}, {cpu}"


def versions():
    ours = subprocess.run([OURS, "--version"], capture_output=True, text=True).stdout.strip()
    perl = subprocess.run(["/usr/bin/perl", PERL_SCRIPT, "--version"], capture_output=True,
                          text=True).stdout.strip()
    perlv = subprocess.run(["/usr/bin/perl", "-e", "print $^V"], capture_output=True,
                           text=True).stdout.strip()
    return ours, perl, perlv


def main():
    started = now()
    # Other work on the machine skews every figure here: say how busy it was.
    with open("/proc/loadavg") as f:
        loadavg = " ".join(f.read().split()[:3])
    ensure_tools()
    # 1000 listeners take 1000 descriptors, here and in both start_servers: a soft
    # limit of 1024 (a common default) would be too tight.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MANY_PORTS + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want * 4, hard), hard))
    build_stamp_worker()
    for p in (OURS, HTTP_WORKER):
        if not os.access(p, os.X_OK):
            sys.exit(f"bench: {p} missing: run `make all examples` first")
    tmp = tempfile.mkdtemp(prefix="start_server-bench-")
    reg = Registry(tmp)
    rows = []
    notes = []
    try:
        ours_size, orig_size, interp, (nlibs, lib_bytes) = sizes()
        rows.append(("binary size", fmt_bytes(ours_size),
                     fmt_bytes(orig_size) + " (script + Starter.pm + Guard.pm)",
                     ratio(ours_size, orig_size)))
        needs = orig_size + sum(interp.values()) + lib_bytes
        rows.append(("size with what it needs to run", fmt_bytes(ours_size),
                     fmt_bytes(needs) + " (+ perl and the modules it loads)",
                     ratio(ours_size, needs)))
        notes.append("The original also needs the perl interpreter: " +
                     ", ".join(f"{os.path.basename(k)} {fmt_bytes(v)}" for k, v in interp.items()) +
                     f", and loads {nlibs} modules ({fmt_bytes(lib_bytes)}) from its library "
                     "at start-up. Ours is one static binary and needs nothing else.")

        note("idle: RSS and context switches")
        idl = idle(reg)
        rows.append(("start_server RSS, idle, one worker",
                     fmt_kib(idl[("ours", False)]["rss"]), fmt_kib(idl[("perl", False)]["rss"]),
                     ratio(idl[("ours", False)]["rss"], idl[("perl", False)]["rss"])))
        rows.append(("start_server private memory (smaps_rollup), idle, one worker",
                     fmt_kib(idl[("ours", False)]["private"]),
                     fmt_kib(idl[("perl", False)]["private"]),
                     ratio(idl[("ours", False)]["private"], idl[("perl", False)]["private"])))
        for a, label in ((False, ""), (True, ", --enable-auto-restart --auto-restart-interval=3600")):
            o, p = idl[("ours", a)]["ctxt"], idl[("perl", a)]["ctxt"]
            rows.append((f"context switches in {IDLE_SECONDS:g} s idle{label}", str(o), str(p),
                         ratio(o, p)))
            for impl in IMPLS:
                if idl[(impl, a)]["restarts"]:
                    notes.append(f"{impl}{label}: {idl[(impl, a)]['restarts']} restart(s) "
                                 "happened in the idle window.")

        note("restart latency")
        lat = {}
        for interval in ("1", "0"):
            for impl in IMPLS:
                lat[(impl, interval)] = restart_latency(reg, impl, interval)
            o, p = lat[("ours", interval)], lat[("perl", interval)]
            rows.append((f"restart latency, SIGHUP → old worker's SIGTERM, --interval={interval}",
                         fmt_ms(o), fmt_ms(p), ratio(med(o), med(p))))
        o = restart_latency(reg, "ours", "0.05")
        rows.append(("restart latency, --interval=0.05", fmt_ms(o),
                     "n/a (integer seconds only)", "—"))

        note("switch-over at the worker's own readiness")
        listening = ours_has("--ready", "listening")
        if not listening:
            notes.append(skipped("--ready=listening", "its switch-over rows"))
        for delay, interval in ((0.05, "1"), (1.5, "2")):
            ready = f"{delay * 1000:g} ms" if delay < 1 else f"{delay:g} s"
            perl = switch_over(reg, "perl", [f"--interval={interval}"], delay)
            for mode in ("notify", "listening") if listening else ("notify",):
                ours = switch_over(reg, "ours", [f"--ready={mode}"], delay)
                rows += switch_over_rows(ready, mode, interval, ours, perl)

        note("exec → first response")
        first = {impl: [first_response(reg, impl) for _ in range(REPS)] for impl in IMPLS}
        rows.append(("exec → first HTTP response (http-static)", fmt_ms(first["ours"]),
                     fmt_ms(first["perl"]), ratio(med(first["ours"]), med(first["perl"]))))

        note(f"{MANY_PORTS} listeners")
        ports = free_ports(MANY_PORTS)
        many = {impl: [many_ports(reg, impl, ports) for _ in range(max(3, REPS // 2 + 1))]
                for impl in IMPLS}
        t = {impl: [x[0] for x in many[impl]] for impl in IMPLS}
        r = {impl: med([x[1] for x in many[impl]]) for impl in IMPLS}
        rows.append((f"{MANY_PORTS} --port listeners: exec → first worker start",
                     fmt_ms(t["ours"]), fmt_ms(t["perl"]), ratio(med(t["ours"]), med(t["perl"]))))
        rows.append((f"{MANY_PORTS} --port listeners: start_server RSS",
                     fmt_kib(r["ours"]), fmt_kib(r["perl"]), ratio(r["ours"], r["perl"])))

        for keep_alive in (False, True):
            mode = "keep-alive" if keep_alive else "Connection: close"
            note(f"load: wrk -c64 {mode} for {LOAD_SECONDS} s with SIGHUP every second")
            ld = {impl: load(reg, impl, keep_alive) for impl in IMPLS}
            label = f"wrk -t2 -c64 {mode}, {LOAD_SECONDS} s, --interval=1, SIGHUP every 1 s"
            rows.append((f"requests served ({label})", str(ld["ours"]["served"]),
                         str(ld["perl"]["served"]),
                         ratio(ld["ours"]["served"], ld["perl"]["served"])))
            rows.append((f"requests failed ({mode}, same run)",
                         failed(ld["ours"]), failed(ld["perl"]),
                         ratio(ld["ours"]["failed"], ld["perl"]["failed"])))
            rows.append((f"restarts completed ({mode}, same run)",
                         f"{ld['ours']['restarts']} of {ld['ours']['hups']} HUPs",
                         f"{ld['perl']['restarts']} of {ld['perl']['hups']} HUPs",
                         ratio(ld["ours"]["restarts"], ld["perl"]["restarts"])))
        note(f"restart under load, worker ready 1.5 s after exec, {RESTART_LOAD_SECONDS} s each")
        slow = {"ours": restart_under_load(reg, "ours", ["--ready=notify"]),
                "perl": restart_under_load(reg, "perl", ["--interval=2"])}
        early = restart_under_load(reg, "perl", ["--interval=1"])
        label = (f"wrk -t2 -c64 Connection: close, {RESTART_LOAD_SECONDS} s, one SIGHUP, "
                 "http-static ready 1.5 s after exec; ours --ready=notify, original --interval=2")
        rows.append((f"slowest request answered during a restart ({label})",
                     fmt_latency(slow["ours"]), fmt_latency(slow["perl"]),
                     ratio(slow["ours"]["max"], slow["perl"]["max"])))
        rows.append(("requests failed (same run)", failed(slow["ours"]), failed(slow["perl"]),
                     ratio(slow["ours"]["failed"], slow["perl"]["failed"])))
        notes.append("The original at --interval=1, shorter than that worker's 1.5 s start, "
                     "tells the old worker to stop half a second before the new one accepts: "
                     f"in the same load its slowest request took {fmt_latency(early)}, "
                     f"{failed(early)} failed.")
        for impl, ld in (("ours", slow["ours"]), ("perl", slow["perl"]),
                         ("perl --interval=1", early)):
            if not ld["restarted"]:
                notes.append(f"{impl}: the restart under load had not completed when wrk "
                             "stopped.")
        note(f"upgrade in place: SIGUSR2 to a new build, {REPS} times, then {UPGRADES} under load")
        outside, inside, workers = upgrade_latency(reg)
        rows.append(("upgrade in place, SIGUSR2 → the new image back in its event loop "
                     "(a new build at the path each time; ours only)", fmt_ms(outside),
                     "n/a (USR2 kills it)", "—"))
        rows.append(("the same upgrades as start_server logs them (USR2 read → supervising "
                     "again, the check of the new binary included)", fmt_ms(inside), "n/a", "—"))
        up = upgrades_under_load(reg)
        rows.append((f"requests failed across {UPGRADES} upgrades in place (wrk -t2 -c64 "
                     f"Connection: close, one every {UPGRADE_PACE:g} s)",
                     f"{failed(up)} of {up['served']}", "n/a", "—"))
        rows.append(("the same run: upgrades completed, workers restarted",
                     f"{up['upgrades']} of {UPGRADES}, {up['restarted']}", "n/a", "—"))
        if workers != 1:
            notes.append(f"The {REPS} timed upgrades restarted {workers - 1} worker(s).")
        notes.append("Load runs: with Connection: close every request is a new connection "
                     "accepted from the listener start_server holds across restarts, so a "
                     "failure there is start_server's. With keep-alive, a failure is a read "
                     "error in wrk (it never retries) when the old worker closes a keep-alive "
                     "connection under a request already on its way: http-static's drain "
                     "policy, whichever start_server runs it.")
        workers_header, workers_rows, workers_notes = many_workers(reg)
    finally:
        reg.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    ours_v, perl_v, perlv = versions()
    lines = [
        "# start_server: ours vs the Perl original",
        "",
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} — {machine()}; "
        f"load average at the start: {loadavg}",
        "",
        f"ours: `{os.path.relpath(OURS, ROOT)}` ({ours_v}); original: Server::Starter {perl_v} "
        f"on perl {perlv}. Latencies: median (min–max) of {REPS} runs "
        f"({len(many['ours'])} for the {MANY_PORTS}-listener start-up); "
        "ratio = ours / original.",
        "",
        "| measurement | ours | original (Perl) | ours/original |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += [""] + [f"- {n}" for n in notes]
    lines += [""] + workers_header + ["", "| measurement | ours | PM2 | ours/PM2 |",
                                      "| --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in workers_rows]
    lines += [""] + [f"- {n}" for n in workers_notes]
    for impl in IMPLS:
        if Server.forced[impl]:
            lines.append(f"- {impl}: start_server was still running 5 s after TERM "
                         f"{Server.forced[impl]} time(s) and was killed (log on stderr).")
    lines += [f"- Whole run: {now() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "results.md"), "w") as f:
        f.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
