#!/usr/bin/env python3
"""Cost as the work grows (issue #11, item 5): prints a Markdown section.

    benches/grow.py PSFLIP_BIN [ROUNDS]        (as root: nginx, RLIMIT_NOFILE)

1. Handoff with 0, 1,000 and 9,900 idle proxied connections open during the
   upgrade: upgrade signal → the old generation's "stopping the old child" line
   (the successor's child is healthy), and the RSS of the old generation holding
   the connections and of the successor after it took over.
2. Accepts during a handover: one client connecting through the proxy in a loop
   (connect, send a request, read the answer to the end) while the generation
   is upgraded again and again; the worst connect → answer time within 50 ms of
   each takeover against the same statistic outside those windows, and the
   longest gap between two answers around a takeover.
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


def accepts(binary, d, backend, upgrades):
    """Item 2: connect → answer latency around takeovers."""
    port = free_port()
    cfg = write_config(d, "accepts.toml", f'cmd = ["sleep", "1000"]\n\n{HEALTH}\n[[proxy]]\n'
                       f'listen = "127.0.0.1:{port}"\nforward = "127.0.0.1:{backend}"\n')
    ps = Psflip(binary, cfg, d)
    samples = []  # (start, end) of each request
    errors = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                while s.recv(4096):
                    pass
                s.close()
                samples.append((t0, time.monotonic()))
            except OSError as e:
                errors.append(repr(e))

    takeovers = []
    th = threading.Thread(target=client)
    th.start()
    try:
        time.sleep(0.3)
        for _ in range(upgrades):
            old = ps.pid
            _, _, new = ps.upgrade()
            t, _ = ps.wait_line(rf"psflip\[{new}\]: new child is healthy; taking over")
            takeovers.append(t)
            wait_for(lambda: gone(old), "the old generation to exit")
            time.sleep(0.15)
    finally:
        stop.set()
        th.join()
        ps.stop()
    near, far, gaps = [], [], []
    for t0, t1 in samples:
        lat = t1 - t0
        (near if any(abs(t0 - t) < 0.05 or abs(t1 - t) < 0.05 for t in takeovers) else far).append(lat)
    ends = sorted(t1 for _, t1 in samples)
    for t in takeovers:
        before = [e for e in ends if e <= t]
        after = [e for e in ends if e > t]
        if before and after:
            gaps.append(after[0] - before[-1])
    all_gaps = [b - a for a, b in zip(ends, ends[1:])]
    return {
        "requests": len(samples), "errors": len(errors), "takeovers": len(takeovers),
        "near": sorted(near), "far": sorted(far), "gaps": gaps,
        "gap_p50": med(all_gaps),
    }


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
    binary = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
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
        conns = connections(binary, d, backend, rounds, counts)
        acc = accepts(binary, d, backend, max(rounds * 4, 10))
        sizes = config_sizes(binary, d, [("1 kB", 1000, 0), ("1 MB", 1 << 20, 0),
                                         ("10 MB", 1 << 20, 9 << 20)])
    finally:
        if nginx is not None:
            nginx.terminate()
        left = reap_all()
        shutil.rmtree(d, ignore_errors=True)
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
    near, far = acc["near"], acc["far"]

    def pct(v, q):
        return v[min(len(v) - 1, int(q * len(v)))] * 1e3 if v else float("nan")

    print(f"\n**Accepts during handovers**: one client, one connection per request, in a loop "
          f"through the proxy while the service was upgraded {acc['takeovers']} times; "
          f"{acc['requests']} requests, {acc['errors']} failed.\n")
    print("| requests | n | median connect → answer | p99 | max |\n|---|---:|---:|---:|---:|")
    print(f"| within 50 ms of a takeover | {len(near)} | {pct(near, 0.5):.3f} ms | "
          f"{pct(near, 0.99):.3f} ms | {(near[-1] * 1e3 if near else float('nan')):.3f} ms |")
    print(f"| the rest | {len(far)} | {pct(far, 0.5):.3f} ms | {pct(far, 0.99):.3f} ms | "
          f"{(far[-1] * 1e3 if far else float('nan')):.3f} ms |")
    gaps = sorted(acc["gaps"])
    if gaps:
        print(f"\nGap between the last answer before a takeover and the first after it: median "
              f"{med(gaps) * 1e3:.3f} ms, max {gaps[-1] * 1e3:.3f} ms (the median gap between any "
              f"two answers: {acc['gap_p50'] * 1e3:.3f} ms).")
        stall = gaps[-1] * 1e3
        print(f"\n| target (#11) | measured | met? |\n|---|---:|---|\n| no accept stall longer "
              f"than 1 ms when the successor takes over (longest gap between answers around a "
              f"takeover) | {stall:.3f} ms | {'yes' if stall <= 1.0 else '**no**'} |")
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
