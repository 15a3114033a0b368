#!/usr/bin/env python3
"""Cost as the work grows (issue #11, item 5): prints a Markdown section.

    benches/grow.py PSFLIP_BIN [ROUNDS]        (as root: nginx, RLIMIT_NOFILE)
    benches/grow.py --accepts PSFLIP_BIN [ROUNDS]   only item 2 (4 × ROUNDS upgrades)
    --standby: every configuration with `[upgrade] standby = true` (each
    upgrade then waits until the generation has started its standby)
    --queue: with item 2, also time each proxied connection's wait in the
    listener's accept queue, by the kernel's own clock (ftrace, below);
    GROW_DEBUG=1 prints each wait over 0.5 ms and when it was

1. Handoff with 0, 1,000 and 9,900 idle proxied connections open during the
   upgrade: upgrade signal → the old generation's "stopping the old child" line
   (the successor's child is healthy), and the RSS of the old generation holding
   the connections and of the successor after it took over.
2. Accepts during a handover: one client connecting through the proxy in a loop
   (connect, send a request, read the answer to the end) while the generation
   is upgraded again and again, alternating with a control straight to nginx;
   connect → answer times during each handover (upgrade signal to 10 ms after
   the takeover) against the same outside them (median, p99, p99.9, max), and
   the longest time without an answer. Run it as `chrt -f 1 benches/grow.py
   --accepts …` on a shared machine: other work cannot preempt what is measured.
   With --queue, also each connection's time in the proxy listener's accept
   queue, from the kernel's trace events, not from psflip or the client: the
   handshake's last ACK (tracepoint sock:inet_sock_set_state, SYN_RECV →
   ESTABLISHED on the listener's port) to the accept4 that took it (psflip's
   syscalls:sys_exit_accept4 on the fd it accepts proxied connections on).
   One listener socket, shared by every generation, is one FIFO queue: the
   n-th connection established is the n-th accepted. That is the accept stall
   itself, without the client's and the network stack's own delays; a run
   whose counts disagree says so and prints no figure.
3. Configuration size: `psflip check` (parse, templates, print) and an upgrade
   with 1 kB, 1 MB and 10 MB configurations (the bulk is an [env] table, whose
   variables every child gets; execve takes at most 6 MB of environment, so the
   10 MB one is 1 MB of [env] and 9 MB of comments), with the peak RSS of
   `psflip check` and of each generation (VmHWM: the high-water mark since
   exec, parsing included).

The backend is nginx (one worker, `return 200`). Every process started is
reaped by pid (the script is a child subreaper); none may be left at the end.
Nothing here asserts on a duration: it measures and prints.
"""

import array
import ctypes
import os
import queue
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

PR_SET_CHILD_SUBREAPER = 36
# `--standby`: the [upgrade] table every configuration gets.
UPGRADE = ""
# `--queue`: trace the accept queue during item 2.
QUEUE = False
# GROW_DEBUG=1: print each long wait, and with --queue what the CPUs ran meanwhile.
DEBUG = bool(os.environ.get("GROW_DEBUG"))
TRACING = "/sys/kernel/tracing"


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


class Psflip:
    """A first generation started with CONFIG; follows its successors by their log."""

    def __init__(self, binary, config, cwd):
        self.p = subprocess.Popen([binary, "-c", config], cwd=cwd, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.log = []
        threading.Thread(target=self._read, daemon=True).start()
        self.pid = self.p.pid
        self.wait_line(rf"psflip\[{self.pid}\]: child is healthy")

    def _read(self):
        for line in self.p.stderr:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def wait_line(self, pattern, timeout=30.0):
        """The first line (seen so far or to come) matching `pattern`: (time, match)."""
        for t, line in self.log:
            m = re.search(pattern, line)
            if m:
                return t, m
        deadline = time.monotonic() + timeout
        while True:
            t, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            self.log.append((t, line))
            m = re.search(pattern, line)
            if m:
                return t, m

    def upgrade(self):
        """SIGHUP the current generation; returns (handoff seconds, old pid, new pid)."""
        old = self.pid
        t0 = time.monotonic()
        os.kill(old, signal.SIGHUP)
        _, m = self.wait_line(rf"psflip\[{old}\]: started successor \(pid (\d+)\)")
        new = int(m.group(1))
        t1, _ = self.wait_line(rf"psflip\[{old}\]: upgrade: the successor is ready; stopping the old child")
        self.pid = new
        return t1 - t0, old, new

    def stop(self):
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def reap_all(timeout=15.0):
    """Reap every child (we are a subreaper); returns how many were still there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            time.sleep(0.02)
    left = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return left
        if pid == 0:
            return 1


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


class QueueTrace:
    """Kernel trace events for the accept queue of the listener on `port`, in a
    tracing instance of our own (CLOCK_MONOTONIC, as time.monotonic()). Enabling
    is synchronous: nothing that happens after __init__ returns is missed."""

    EVENTS = ("sock/inet_sock_set_state", "syscalls/sys_enter_accept4",
              "syscalls/sys_exit_accept4")

    def __init__(self, port):
        self.dir = f"{TRACING}/instances/psflip-grow-{os.getpid()}"
        os.mkdir(self.dir)
        try:
            self._w("tracing_on", "0")
            self._w("trace_clock", "mono")
            self._w("buffer_size_kb", "32768")
            # TCP_SYN_RECV = 3, TCP_ESTABLISHED = 1: a passive connection completed.
            self._w("events/sock/inet_sock_set_state/filter",
                    f"sport == {port} && oldstate == 3 && newstate == 1")
            for e in self.EVENTS[1:]:
                self._w(f"events/{e}/filter", 'comm ~ "psflip*"')
            if DEBUG:
                self.EVENTS += ("sched/sched_switch", "sched/sched_wakeup")
                self._w("buffer_size_kb", "262144")
            for e in self.EVENTS:
                self._w(f"events/{e}/enable", "1")
            self._w("tracing_on", "1")
        except OSError:
            self.stop()
            raise

    def _w(self, name, value):
        with open(f"{self.dir}/{name}", "w") as f:
            f.write(value)

    def stop(self):
        """Stops tracing, removes the instance; returns (trace lines, events lost)."""
        for name in ["tracing_on"] + [f"events/{e}/enable" for e in self.EVENTS]:
            try:
                self._w(name, "0")
            except OSError:
                pass
        with open(f"{self.dir}/trace") as f:
            lines = f.read().splitlines()
        lost = 0
        for cpu in os.listdir(f"{self.dir}/per_cpu"):
            with open(f"{self.dir}/per_cpu/{cpu}/stats") as f:
                for line in f:
                    if line.startswith(("overrun:", "dropped events:")):
                        lost += int(line.split(":")[1])
        os.rmdir(self.dir)
        return lines, lost


TRACE_LINE = re.compile(r"^\s*(.+)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+):\s+(.*)$")


def queue_waits(lines):
    """(established time, wait in the accept queue) of each proxied connection,
    or a reason there are none. The events print as `inet_sock_set_state: …`,
    `sys_accept4(fd: N, …)` and `sys_accept4 -> 0xRET`."""
    established, accepted, pending = [], {}, {}
    for line in lines:
        m = TRACE_LINE.match(line)
        if not m:
            continue
        tid, ts, rest = int(m.group(2)), float(m.group(3)), m.group(4)
        if rest.startswith("inet_sock_set_state:"):
            established.append(ts)
        elif rest.startswith("sys_accept4("):
            pending[tid] = int(re.search(r"fd: (\w+)", rest).group(1), 0)
        elif rest.startswith("sys_accept4 -> ") and tid in pending:
            fd = pending.pop(tid)
            ret = int(rest.split()[2], 0)
            if 0 <= ret < 1 << 63:
                accepted.setdefault((tid, fd), []).append((ts, tid))
    # A thread takes proxied connections on one fd (its listener); its other
    # accepts, if any, are the control socket's.
    takes = []
    for tid in {t for t, _ in accepted}:
        fds = sorted(((len(v), fd) for (t, fd), v in accepted.items() if t == tid), reverse=True)
        takes += accepted[(tid, fds[0][1])]
    takes.sort()
    # The last connection may be established and not yet accepted when the
    # client stops; any other difference means the pairing cannot be trusted.
    if not 0 <= len(established) - len(takes) <= 1:
        return None, (f"{len(established)} connections established on the listener's port, "
                      f"{len(takes)} accepted by psflip: not paired")
    waits = [(e, a - e, tid) for e, (a, tid) in zip(established, takes)]
    if any(w < 0 for _, w, _ in waits):
        return None, "an accept before its connection was established: not paired"
    return waits, None


def print_cpus(lines, t0, t1):
    """What each CPU switched to between t0 and t1 (GROW_DEBUG, sched events)."""
    cpu_re = re.compile(r"\[(\d+)\]")
    for line in lines:
        m = TRACE_LINE.match(line)
        if not m or not t0 - 0.0005 <= float(m.group(3)) <= t1:
            continue
        rest = m.group(4)
        if rest.startswith(("sched_switch:", "sched_wakeup:", "sys_accept4 ->", "inet_sock")):
            cpu = cpu_re.search(line).group(1)
            print(f"  {(float(m.group(3)) - t0) * 1e3:+8.3f} ms cpu{cpu} {m.group(1).strip()}-"
                  f"{m.group(2)}: {rest[:150]}", file=sys.stderr)


def sched():
    """This process's scheduling, which everything it starts inherits."""
    policy = os.sched_getscheduler(0)
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        name = "SCHED_FIFO" if policy == os.SCHED_FIFO else "SCHED_RR"
        return f"{name} {os.sched_getparam(0).sched_priority}"
    return f"nice {os.nice(0)}"


def med(v):
    return statistics.median(v) if v else float("nan")


def nginx_start(d, hard):
    port = free_port()
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx.err;
worker_rlimit_nofile {hard};
events {{ worker_connections {hard - 100}; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", d], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_for(lambda: try_connect(port), "nginx")
    return p, port


def try_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def write_config(d, name, body):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(body)
    return path


HEALTH = '[healthcheck.command]\ncmd = ["true"]\nafter = "0s"\n\n[shutdown]\ntimeout = "2s"\n'


def connections(binary, d, backend, rounds, counts):
    """Item 1: handoff and RSS with N idle proxied connections."""
    port = free_port()
    cfg = write_config(d, "conns.toml", f'cmd = ["sleep", "1000"]\n\n{HEALTH}\n[[proxy]]\n'
                       f'listen = "127.0.0.1:{port}"\nforward = "127.0.0.1:{backend}"\n')
    ps = Psflip(binary, cfg, d)
    rows = []
    try:
        for n in counts:
            handoff, rss_old, rss_new = [], [], []
            for _ in range(rounds):
                cur = ps.pid
                socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
                # Every connection proxied: two fds each in psflip.
                wait_for(lambda: len(os.listdir(f"/proc/{cur}/fd")) >= 2 * n, "proxied connections")
                time.sleep(0.1)
                rss_old.append(status(cur, "VmRSS"))
                dt, old, new = ps.upgrade()
                handoff.append(dt)
                time.sleep(0.2)
                rss_new.append(status(new, "VmRSS"))
                for s in socks:
                    s.close()
                # The old generation drains its connections, then exits.
                wait_for(lambda: gone(old), "the old generation to exit")
                time.sleep(0.05)
            rows.append((n, med(handoff) * 1e3, min(handoff) * 1e3, max(handoff) * 1e3,
                         med(rss_old), med(rss_new)))
    finally:
        ps.stop()
    return rows


# The client of item 2, run as a process of its own: in this script's process
# it would share the GIL with the thread reading psflip's log, which is busiest
# exactly at a takeover (a Python thread holds the GIL up to 5 ms before another
# runs), and the waits measured would be the script's own. It connects, sends a
# request and reads the answer to the end, in a loop until SIGTERM, alternating
# between the proxy and nginx itself (the control: what the machine's own load
# at a takeover does to a connection that no proxy accepts); then writes
# (target, connect started, first byte, last byte) of each request as doubles
# (CLOCK_MONOTONIC, as time.monotonic() here), and one line per failure on stderr.
ACCEPT_CLIENT = r"""
import array, signal, socket, sys, time
ports = [int(p) for p in sys.argv[1:]]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
out = array.array("d")
req = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
mono = time.monotonic
i = 0
while not stop:
    i = (i + 1) % len(ports)
    t0 = mono()
    try:
        s = socket.create_connection(("127.0.0.1", ports[i]), timeout=5)
        s.sendall(req)
        first = s.recv(4096)
        t1 = mono()
        while first and s.recv(4096):
            pass
        t2 = mono()
        s.close()
        if not first:
            raise OSError("connection closed without an answer")
        out.extend((i, t0, t1, t2))
    except OSError as e:
        print(repr(e), file=sys.stderr, flush=True)
sys.stdout.buffer.write(out.tobytes())
"""


# A handover, for item 2: from the upgrade signal to this long after the
# successor's "taking over" line reached this script (the old generation stops
# its child and exits within about 2 ms of that line, by its own log).
AFTER_TAKEOVER = 0.010
# With --queue, "at the switch": a connection in the accept queue at some time
# within this long of a successor's first accept.
SWITCH = 0.001


def accepts(binary, d, backend, upgrades):
    """Item 2: connect → answer latency around takeovers."""
    port = free_port()
    cfg = write_config(d, "accepts.toml", f'cmd = ["sleep", "1000"]\n\n{HEALTH}\n[[proxy]]\n'
                       f'listen = "127.0.0.1:{port}"\nforward = "127.0.0.1:{backend}"\n{UPGRADE}')
    trace, no_trace = None, None
    if QUEUE:
        try:
            trace = QueueTrace(port)
        except OSError as e:
            no_trace = f"no kernel tracing here ({e})"
    try:
        ps = Psflip(binary, cfg, d)
    except BaseException:
        if trace is not None:
            trace.stop()
        raise
    client = subprocess.Popen([sys.executable, "-c", ACCEPT_CLIENT, str(port), str(backend)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    takeovers = []
    try:
        time.sleep(0.3)
        for _ in range(upgrades):
            old = ps.pid
            if UPGRADE:
                ps.wait_line(rf"psflip\[{old}\]: standby successor started")
            hup = time.monotonic()
            _, _, new = ps.upgrade()
            t, _ = ps.wait_line(rf"psflip\[{new}\]: new child is healthy; taking over")
            takeovers.append((hup, t + AFTER_TAKEOVER))
            wait_for(lambda: gone(old), "the old generation to exit")
            time.sleep(0.15)
    finally:
        client.send_signal(signal.SIGTERM)
        raw, err = client.communicate()
        ps.stop()
        if trace is not None:
            trace_lines, lost = trace.stop()
    flat = array.array("d")
    flat.frombytes(raw)
    rows = [tuple(flat[i:i + 4]) for i in range(0, len(flat) - 3, 4)]
    samples = [r[1:] for r in rows if r[0] == 0]
    control = [r[1:] for r in rows if r[0] == 1]
    errors = err.decode().splitlines()

    def near_any(a, b):
        return any(a <= end and start <= b for start, end in takeovers)

    near, far, near_direct, far_direct = [], [], [], []
    for t0, t1, t2 in samples:
        (near if near_any(t0, t2) else far).append(t1 - t0)
    for t0, t1, t2 in control:
        (near_direct if near_any(t0, t2) else far_direct).append(t1 - t0)
    ends = sorted(r[3] for r in rows)
    gaps, far_gaps = [], []
    for a, b in zip(ends, ends[1:]):
        (gaps if near_any(a, b) else far_gaps).append(b - a)
    qstats = None
    if no_trace:
        qstats = {"why": no_trace}
    if trace is not None:
        waits, why = queue_waits(trace_lines)
        if lost:
            waits, why = None, f"{lost} trace events lost"
        # The switch: a successor's proxy thread takes its first connection
        # (the first generation's took its first before any upgrade signal).
        first = {}
        for e, w, tid in waits or []:
            first.setdefault(tid, e + w)
        switches = sorted(a for a in first.values() if near_any(a, a))

        def at_switch(a, b):
            return any(a <= sw + SWITCH and sw - SWITCH <= b for sw in switches)

        near_q, far_q, switch_q = [], [], []
        for e, w, tid in waits or []:
            if at_switch(e, e + w):
                switch_q.append(w)
                if w > 0.0005 and DEBUG:
                    sw = min(switches, key=lambda x: abs(x - e))
                    who = "the successor" if first[tid] == sw else "another thread"
                    print(f"at a switch: wait {w * 1e3:.3f} ms, established {(e - sw) * 1e3:+.3f} ms "
                          f"from the successor's first accept, taken by {who} (thread {tid})",
                          file=sys.stderr)
            (near_q if near_any(e, e) else far_q).append(w)
            if w > 0.0005 and DEBUG:
                since = min((e - h for h, _ in takeovers if h <= e), default=float("nan"))
                print(f"queue wait {w * 1e3:.3f} ms (accepted by thread {tid}), established "
                      f"{since * 1e3:.1f} ms after the last upgrade signal", file=sys.stderr)
                if w > 0.001:
                    print_cpus(trace_lines, e, e + w)
        qstats = {"near": sorted(near_q), "far": sorted(far_q), "switch": sorted(switch_q),
                  "switches": len(switches), "why": why}
    return {
        "queue": qstats,
        "requests": len(samples), "errors": len(errors), "error_lines": errors[:3],
        "takeovers": len(takeovers), "near": sorted(near), "far": sorted(far),
        "near_direct": sorted(near_direct), "far_direct": sorted(far_direct),
        "gaps": sorted(gaps), "far_gaps": sorted(far_gaps),
        "samples": samples, "control": control, "times": takeovers,
    }


def print_accepts(acc):
    near, far = acc["near"], acc["far"]

    def pct(v, q):
        return v[min(len(v) - 1, int(q * len(v)))] * 1e3 if v else float("nan")

    def top(v):
        return v[-1] * 1e3 if v else float("nan")

    failed = f"{acc['errors']} failed"
    if acc["errors"]:
        failed += " (" + "; ".join(acc["error_lines"]) + ")"
    print(f"**Accepts during handovers**: one client process, one connection per request "
          f"(connect, request, read to the end), in a loop, alternately through the proxy and "
          f"straight to nginx (the control), while the service was upgraded "
          f"{acc['takeovers']} times; {acc['requests']} requests through the proxy, {failed}. "
          f"Connect → first byte of the answer (through the proxy: its accept, its connect to "
          f"nginx, nginx's answer); \"during a handover\": in flight between the upgrade "
          f"signal and 10 ms after the successor's \"taking over\" line (the old generation "
          f"has stopped accepting and exited by then).\n")
    print("| requests | n | median | p99 | p99.9 | max | over 1 ms |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for label, v in (("through the proxy, during a handover", near),
                     ("through the proxy, the rest", far),
                     ("straight to nginx, during a handover", acc["near_direct"]),
                     ("straight to nginx, the rest", acc["far_direct"])):
        print(f"| {label} | {len(v)} | {pct(v, 0.5):.3f} ms | {pct(v, 0.99):.3f} ms | "
              f"{pct(v, 0.999):.3f} ms | {top(v):.3f} ms | {sum(x > 0.001 for x in v)} |")
    gaps, far_gaps = acc["gaps"], acc["far_gaps"]
    print(f"\nLongest time without an answer: {top(gaps):.3f} ms during a handover, "
          f"{top(far_gaps):.3f} ms elsewhere (median time between answers "
          f"{pct(far_gaps, 0.5):.3f} ms).")
    stall = top(near)
    print(f"\n| target (#11) | measured | met? |\n|---|---:|---|\n| no accept stall longer "
          f"than 1 ms when the successor takes over (longest connect → answer during a handover; "
          f"p99.9 {pct(near, 0.999):.3f} ms) | {stall:.3f} ms | "
          f"{'yes' if stall <= 1.0 else '**no**'} |")
    q = acc.get("queue")
    if q is None:
        return
    print("\n**Time in the accept queue** (kernel trace events: the handshake's last ACK on the "
          "listener's port → the accept4 of psflip that took the connection; one shared "
          "listener, so the n-th established is the n-th accepted):\n")
    if q["why"]:
        print(f"No figure: {q['why']}.")
        return
    print("| connections | n | median | p99 | p99.9 | max | over 1 ms |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for label, v in (("in the queue within 1 ms of a successor's first accept (the switch)",
                      q["switch"]),
                     ("established during a handover", q["near"]),
                     ("established the rest of the time", q["far"])):
        print(f"| {label} | {len(v)} | {pct(v, 0.5):.3f} ms | {pct(v, 0.99):.3f} ms | "
              f"{pct(v, 0.999):.3f} ms | {top(v):.3f} ms | {sum(x > 0.001 for x in v)} |")
    print(f"\nSwitches found in the trace: {q['switches']} of {acc['takeovers']} upgrades.")
    qstall, qnear = top(q["switch"]), top(q["near"])
    print(f"\n| target (#11) | measured | met? |\n|---|---:|---|\n| no accept stall longer than "
          f"1 ms when the successor takes over (longest wait in the accept queue at the switch) "
          f"| {qstall:.3f} ms | {'yes' if qstall <= 1.0 else '**no**'} |\n| the same, over the "
          f"whole handover (upgrade signal to 10 ms after the takeover) | {qnear:.3f} ms | "
          f"{'yes' if qnear <= 1.0 else '**no**'} |")


def env_config(size, comments=0):
    """A configuration of about `size` bytes whose bulk is an [env] table of
    80-byte values, then `comments` bytes of comment lines."""
    parts = ['cmd = ["sleep", "1000"]\n\n' + HEALTH + "\n[env]\n"]
    total = len(parts[0])
    i = 0
    while total < size:
        line = f'PSFLIP_BENCH_{i:07d} = "{"x" * 80}"\n'
        parts.append(line)
        total += len(line)
        i += 1
    comment = "# " + "c" * 97 + "\n"
    parts.append(comment * (comments // len(comment)))
    return "".join(parts)


def check_peak(binary, cfg):
    """`psflip check`: (seconds, VmHWM KiB or None). Its answer is built whole
    before it is printed; an answer larger than the pipe holds it in write(),
    where VmHWM is read (a small one ends it first: None)."""
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "check", "-c", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    peak = None
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/wchan") as f:
                if "pipe_write" in f.read():
                    peak = status(p.pid, "VmHWM")
                    break
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.001)
    p.stdout.read()
    p.wait()
    return time.monotonic() - t0, peak


def config_sizes(binary, d, sizes):
    """Item 3: parse time, peak RSS and upgrade time by configuration size."""
    rows = []
    for label, size, comments in sizes:
        cfg = write_config(d, f"size-{size + comments}.toml", env_config(size, comments))
        actual = os.path.getsize(cfg)
        checks, check_peaks = [], []
        for _ in range(5):
            dt, peak = check_peak(binary, cfg)
            checks.append(dt)
            if peak is not None:
                check_peaks.append(peak)
        # The first generation's VmHWM (its peak since exec, parsing included),
        # then upgrades to the same configuration and each successor's.
        up, peaks, fails = [], [], []
        up_note = ""
        ps = Psflip(binary, cfg, d)
        try:
            peaks.append(status(ps.pid, "VmHWM"))
            for _ in range(5):
                time.sleep(0.1)
                dt, old, new = ps.upgrade()
                up.append(dt)
                wait_for(lambda: gone(old), "the old generation to exit")
                peaks.append(status(new, "VmHWM"))
        except (RuntimeError, queue.Empty) as e:
            fails.append(str(e) or "no takeover")
        finally:
            ps.stop()
        if fails:
            last = [line for _, line in ps.log if "failed" in line or "cannot" in line][-1:]
            up_note = "; ".join(last) or fails[0]
        rows.append((label, actual, med(checks) * 1e3,
                     max(check_peaks) if check_peaks else None,
                     max(peaks) if peaks else None, med(up) * 1e3 if up else None, up_note))
        os.unlink(cfg)
    return rows


def main():
    global UPGRADE, QUEUE
    args = sys.argv[1:]
    only_accepts = "--accepts" in args
    if only_accepts:
        args.remove("--accepts")
    if "--standby" in args:
        args.remove("--standby")
        UPGRADE = "\n[upgrade]\nstandby = true\n"
    if "--queue" in args:
        args.remove("--queue")
        QUEUE = True
    binary = os.path.abspath(args[0])
    rounds = int(args[1]) if len(args) > 1 else 5
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    most = min(9900, (hard - 200) // 2)
    counts = [0, 1000, most]
    d = tempfile.mkdtemp(prefix="psflip-grow.")
    os.chmod(d, 0o755)
    load0 = open("/proc/loadavg").read().split()[:3]
    nginx = None
    try:
        nginx, backend = nginx_start(d, hard)
        if only_accepts:
            acc = accepts(binary, d, backend, max(rounds * 4, 10))
            return
        conns = connections(binary, d, backend, rounds, counts)
        acc = accepts(binary, d, backend, max(rounds * 4, 10))
        sizes = config_sizes(binary, d, [("1 kB", 1000, 0), ("1 MB", 1 << 20, 0),
                                         ("10 MB", 1 << 20, 9 << 20)])
    finally:
        if nginx is not None:
            nginx.terminate()
        left = reap_all()
        shutil.rmtree(d, ignore_errors=True)
        if only_accepts:
            load1 = open("/proc/loadavg").read().split()[:3]
            print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
                  f"{' '.join(load0)} at the start, {' '.join(load1)} at the end; scheduling: "
                  f"{sched()}. Processes left over: {left}.\n")
            print_accepts(acc)
    load1 = open("/proc/loadavg").read().split()[:3]

    print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{' '.join(load0)} at the start, {' '.join(load1)} at the end; {rounds} upgrades per row "
          f"(medians). Processes left over: {left}.\n")
    print("**Handoff with idle proxied connections open** (upgrade signal → the old generation "
          "stops its child, the successor's child healthy by `[healthcheck.command] true`; "
          "the connections stay with the old generation, which drains them):\n")
    print("| proxied connections open | handoff (median) | min | max | RSS of the old generation "
          "holding them | RSS of the successor |\n|---:|---:|---:|---:|---:|---:|")
    for n, m, lo, hi, ro, rn in conns:
        print(f"| {n} | {m:.2f} ms | {lo:.2f} ms | {hi:.2f} ms | {ro / 1024:.1f} MiB | {rn / 1024:.1f} MiB |")
    print()
    print_accepts(acc)
    print("\n**Configuration size** (`[env]` tables of 80-byte values: every child gets them. "
          "The 10 MB one is 1 MB of `[env]` and 9 MB of comments, since execve takes at most "
          "6 MB of environment; `psflip check` parses, expands templates and prints; upgrade = "
          "signal → the old child stopped; VmHWM is a process's peak RSS since exec):\n")
    print("| configuration | bytes | `psflip check` (median of 5) | its peak RSS | peak RSS of a "
          "running generation (max of 6) | upgrade (median of 5) |\n|---|---:|---:|---:|---:|---:|")

    def mib(k):
        return f"{k / 1024:.1f} MiB" if k is not None else "— (answer fits the pipe)"

    for label, actual, chk, cpeak, peak, up, note in sizes:
        ups = f"{up:.2f} ms" if up is not None else f"— ({note})"
        print(f"| {label} | {actual} | {chk:.2f} ms | {mib(cpeak)} | {mib(peak)} | {ups} |")

if __name__ == "__main__":
    main()
