#!/usr/bin/env python3
"""Where the time of an upgrade goes, from kernel tracepoints (perf record -a).

    benches/profile_upgrade.py PSFLIP_BIN [RUNS]            (as root, with perf)
    benches/profile_upgrade.py --failed PSFLIP_BIN [RUNS]   failed upgrades instead
    benches/profile_upgrade.py --standby PSFLIP_BIN [RUNS]  with `[upgrade] standby = true`

Starts PSFLIP_BIN supervising `sleep 1000` with `[healthcheck.command] cmd =
["true"], after = "0s"`, sends it RUNS upgrade signals (each to the current
generation, 400 ms after the previous one took over) while `perf record -a`
records scheduler and syscall tracepoints, then splits each upgrade signal →
new child running into phases, and the rest of the handoff (the probe, the
successor's pidfile and control socket, the old psflip's SIGTERM to its child)
into more, and prints a Markdown table of their medians.

The phases of the successor (exec → main → config → signalfd → clone of the
child) are also what a first launch costs, so the table explains figure 1 too.
With --failed, the new child is `false` (`{{ AB "sleep" "false" }}`, checked by
`[healthcheck.alive]`) and each failed upgrade signal → the old psflip's "upgrade
failed" line is split instead: the successor's start, the failing child, the
successor's way out, and the old psflip's reaction to its exit (figure 4 of
benches/flip.rs).

Children are started with clone(CLONE_VM|CLONE_VFORK), which the kernel reports
as sched_process_fork like a fork.
Tracing adds a few microseconds per event: compare phases with one another,
and the totals with benches/flip.rs, not with the targets. Used by
scripts/bench.sh; measures only.
"""

import ctypes
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
EVENTS = [
    "sched:sched_process_fork",
    "sched:sched_process_exec",
    "syscalls:sys_enter_kill",
    "syscalls:sys_enter_rt_sigprocmask",
    "syscalls:sys_enter_getcwd",
    "syscalls:sys_enter_signalfd4",
    "syscalls:sys_enter_clock_nanosleep",
    "sched:sched_process_exit",
    "syscalls:sys_enter_exit_group",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_bind",
    "syscalls:sys_enter_rename",
    "sched:sched_switch",
]
PHASES = [
    ("a", "old psflip: kill(SIGHUP) → clone of the successor (wake-up, event loop, machine step, log line, spawn plan: argv, envp)"),
    ("a1", "of a: kill(SIGHUP) → the old psflip on a CPU (the kernel's wake-up: signal, signalfd, epoll, scheduler)"),
    ("a2", "of a: on a CPU → clone of the successor (psflip's own work: event loop, machine step, log line, spawn plan)"),
    ("b", "clone → successor's execve done (clone(CLONE_VM + CLONE_VFORK + CLONE_FILES), fds kept, execve of psflip)"),
    ("c1", "successor: execve → main() (loading: ld.so mapping and relocating libc.so, or a static binary relocating itself; no Rust runtime init: C main)"),
    ("c2", "successor: main() → config load (signal mask, dispositions, fd sweep, arguments: clap only for other command lines than -c FILE)"),
    ("c3", "successor: config load → signalfd (read + parse TOML, templates, control socket directory, own_binary)"),
    ("d", "successor: signalfd → clone of the child (subreaper, event loop start, machine step, spawn plan; the control socket waits until the successor is ready)"),
    ("e", "clone → child's execve done (close_range unshare, setpgid, prctl, getppid, sigprocmask, execve)"),
    ("f", "child: execve done → running (`sleep`'s own start-up: not psflip's)"),
    ("total", "kill(SIGHUP) → new child running"),
    ("g", "successor: clone of the child → clone of the probe (`true`, the command check, after = 0s)"),
    ("h", "probe: clone → exit (its execve and run)"),
    ("i1", "successor: probe exit → bind of the control socket (SIGCHLD, reaping, machine step, pidfile written and renamed)"),
    ("i2", "successor: bind → its last rename (the control socket's name claimed)"),
    ("i3", "successor's rename → old psflip's SIGTERM to the old child (ready written, the old psflip's wake-up and machine step)"),
    ("handoff", "kill(SIGHUP) → old child signalled"),
]
FAILED_PHASES = [
    ("a", "old psflip: kill(SIGHUP) → clone of the successor"),
    ("b–d", "successor: clone → clone of its child (exec, loading, configuration, spawn plan)"),
    ("e", "child: clone → execve done"),
    ("f", "child (`false`): execve done → exit"),
    ("g", "successor: child's exit → its exit_group (SIGCHLD, reaping, machine step, log line, failure reported to the old psflip, sweep for escaped processes, fds closed)"),
    ("h", "successor: exit_group → exited (the kernel's teardown)"),
    ("i", "old psflip: successor exited → its \"upgrade failed\" line written (SIGCHLD, reaping, machine step)"),
    ("total", "kill(SIGHUP) → \"upgrade failed\" written"),
]


STANDBY_PHASES = [
    ("a", "old psflip: kill(SIGHUP) → handoff written to the standby (wake-up, event loop, machine step, log line, the handoff)"),
    ("w", "standby: woken → configuration load (its read returns, pages mapped back, environment, binary check, fd sweep, arguments)"),
    ("c3", "successor: config load → signalfd (read + parse TOML, templates, control socket directory, own_binary)"),
    ("d", "successor: signalfd → clone of the child"),
    ("e", "clone → child's execve done"),
    ("f", "child: execve done → running (`sleep`'s own start-up: not psflip's)"),
    ("total", "kill(SIGHUP) → new child running"),
]


def main():
    args = sys.argv[1:]
    failed = args[:1] == ["--failed"]
    if failed:
        args = args[1:]
    standby = args[:1] == ["--standby"]
    if standby:
        args = args[1:]
    binary = os.path.abspath(args[0])
    runs = int(args[1]) if len(args) > 1 else 30
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    with tempfile.TemporaryDirectory(prefix="psflip-profile.") as d:
        cfg = os.path.join(d, "p.toml")
        with open(cfg, "w") as f:
            if failed:
                f.write('cmd = ["{{ AB \\"sleep\\" \\"false\\" }}", "1000"]\n\n'
                        '[healthcheck.alive]\ntimeout = "100ms"\n\n[shutdown]\ntimeout = "1s"\n')
            else:
                f.write('cmd = ["sleep", "1000"]\n\n[healthcheck.command]\ncmd = ["true"]\n'
                        'after = "0s"\n\n[shutdown]\ntimeout = "1s"\n')
            if standby:
                f.write('\n[upgrade]\nstandby = true\n')
        data = os.path.join(d, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-e", ",".join(EVENTS), "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        try:
            targets = upgrade(binary, cfg, runs, failed, standby)
        finally:
            perf.send_signal(signal.SIGINT)
            perf.wait()
            reap(wait=True)
        out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,time,event,trace"],
                             capture_output=True, text=True, check=True).stdout
    (report_failed if failed else report_standby if standby else report)(parse(out), targets)


def reap(wait=False):
    deadline = time.monotonic() + 5
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if wait else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0 or time.monotonic() > deadline:
            return


def upgrade(binary, cfg, runs, failed=False, standby=False):
    """Run the upgrades; return the pids the upgrade signals went to (each
    failed upgrade's: the same pid every time)."""
    p = subprocess.Popen([binary, "-c", cfg], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()

    def read():
        for line in p.stderr:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()

    def wait_line(pattern):
        while True:
            m = re.search(pattern, lines.get(timeout=10))
            if m:
                return m

    cur = p.pid
    targets = []
    try:
        wait_line(rf"psflip\[{cur}\]: child is healthy; serving")
        for _ in range(runs):
            # Longer than psflip's SETTLE_AFTER (250 ms): a settled psflip, as a
            # real upgrade meets it.
            time.sleep(0.4)
            if standby:
                wait_line(rf"psflip\[{cur}\]: standby successor started")
            os.kill(cur, signal.SIGHUP)
            if failed:
                wait_line(rf"psflip\[{cur}\]: upgrade failed")
                targets.append(cur)
                reap()
                continue
            succ = int(wait_line(rf"psflip\[{cur}\]: started successor \(pid (\d+)\)").group(1))
            wait_line(rf"psflip\[{succ}\]: the previous generation has exited")
            targets.append(cur)
            cur = succ
            reap()
    finally:
        os.kill(cur, signal.SIGTERM)
    return targets


def sighups(events, pid):
    """When each upgrade signal (SIGHUP) was sent to `pid`: its kill's entry, in order."""
    return [e[0] for e in events if e[2] == "syscalls:sys_enter_kill"
            and re.search(r"pid: (0x)?0*%x\b" % pid, e[3]) and re.search(r"sig: (0x)?0*1\b", e[3])]


def finder(after, t0):
    """first(pid, name, since=t0): the first event `name` of `pid` in `after` from `since` on."""
    def first(pid, name, since=t0):
        return next(e for e in after if e[1] == pid and e[2] == name and e[0] >= since)
    return first


def print_phases(labels, phases):
    """The Markdown table of each phase's median, min and max."""
    print("| phase | median | min | max |\n|---|---|---|---|")
    for key, label in labels:
        v = sorted(phases[key])
        if v:
            print(f"| {key}. {label} | {statistics.median(v):.3f} ms | {v[0]:.3f} ms | {v[-1]:.3f} ms |")


def report_failed(events, targets):
    """The failed upgrades' phases: every upgrade signal went to the same psflip."""
    old = targets[0] if targets else 0
    phases = {k: [] for k, _ in FAILED_PHASES}
    kills = sighups(events, old)
    for t0 in kills:
        after = [e for e in events if t0 <= e[0] < t0 + 1000]
        first = finder(after, t0)

        try:
            fork = first(old, "sched:sched_process_fork")
            succ = int(re.search(r"child_pid=(\d+)", fork[3]).group(1))
            cfork = first(succ, "sched:sched_process_fork", fork[0])
            child = int(re.search(r"child_pid=(\d+)", cfork[3]).group(1))
            cexe = first(child, "sched:sched_process_exec")
            cend = first(child, "sched:sched_process_exit", cexe[0])
            sexit = first(succ, "syscalls:sys_enter_exit_group", cend[0])
            send = first(succ, "sched:sched_process_exit", sexit[0])
            logged = first(old, "syscalls:sys_enter_write", send[0])
        except (StopIteration, AttributeError):
            continue
        for key, a, b in [("a", t0, fork[0]), ("b–d", fork[0], cfork[0]), ("e", cfork[0], cexe[0]),
                          ("f", cexe[0], cend[0]), ("g", cend[0], sexit[0]), ("h", sexit[0], send[0]),
                          ("i", send[0], logged[0]), ("total", t0, logged[0])]:
            phases[key].append(b - a)
    print(f"Failed upgrades traced: {len(phases['total'])} of {len(kills)}.\n")
    print_phases(FAILED_PHASES, phases)


def report_standby(events, targets):
    """Upgrades that woke a standby: the successor is a process that already ran."""
    phases = {k: [] for k, _ in STANDBY_PHASES}
    for old in targets:
        try:
            t0 = next(iter(sighups(events, old)))
            after = [e for e in events if e[0] >= t0]
            first = finder(after, t0)

            # The handoff: the old psflip's first write that is not a log line (fd 2).
            go = next(e for e in after if e[1] == old and e[2] == "syscalls:sys_enter_write"
                      and not re.search(r"fd: (0x)?0*2\b", e[3]))
            # The successor: whoever clones the new child after the handoff
            # and is not the old psflip.
            cfork = next(e for e in after if e[2] == "sched:sched_process_fork" and e[0] > go[0]
                         and e[1] != old)
            succ = cfork[1]
            cwd = first(succ, "syscalls:sys_enter_getcwd", go[0])
            sfd = first(succ, "syscalls:sys_enter_signalfd4", cwd[0])
            child = int(re.search(r"child_pid=(\d+)", cfork[3]).group(1))
            cexe = first(child, "sched:sched_process_exec")
            run = first(child, "syscalls:sys_enter_clock_nanosleep", cexe[0])
        except (StopIteration, AttributeError):
            continue
        for key, a, b in [("a", t0, go[0]), ("w", go[0], cwd[0]), ("c3", cwd[0], sfd[0]),
                          ("d", sfd[0], cfork[0]), ("e", cfork[0], cexe[0]), ("f", cexe[0], run[0]),
                          ("total", t0, run[0])]:
            phases[key].append(b - a)
    print(f"Upgrades traced (standby woken): {len(phases['total'])} of {len(targets)}.\n")
    print_phases(STANDBY_PHASES, phases)


def parse(out):
    events = []
    for line in out.splitlines():
        m = re.match(r"\s*(.+?)\s+(\d+)/\d+\s+([\d.]+):\s+(\S+):\s*(.*)", line)
        if m:
            _, pid, t, name, rest = m.groups()
            events.append((float(t) * 1e3, int(pid), name, rest))
    events.sort()
    return events


def report(events, targets):
    phases = {k: [] for k, _ in PHASES}
    for old in targets:
        try:
            t0 = next(iter(sighups(events, old)))
            after = [e for e in events if e[0] >= t0]
            first = finder(after, t0)

            fork = first(old, "sched:sched_process_fork")
            succ = int(re.search(r"child_pid=(\d+)", fork[3]).group(1))
            exe = first(succ, "sched:sched_process_exec")
            main_ = first(succ, "syscalls:sys_enter_rt_sigprocmask", exe[0])
            cwd = first(succ, "syscalls:sys_enter_getcwd", main_[0])
            sfd = first(succ, "syscalls:sys_enter_signalfd4", cwd[0])
            cfork = first(succ, "sched:sched_process_fork", sfd[0])
            child = int(re.search(r"child_pid=(\d+)", cfork[3]).group(1))
            cexe = first(child, "sched:sched_process_exec")
            run = first(child, "syscalls:sys_enter_clock_nanosleep", cexe[0])
        except (StopIteration, AttributeError):
            continue
        # The old psflip's first time on a CPU after the signal (sched_switch
        # is recorded by the task going off the CPU; the one coming on is in it).
        oncpu = next((e for e in after if e[2] == "sched:sched_switch" and e[0] <= fork[0]
                      and re.search(r"next_pid=%d\b" % old, e[3])), None)
        if oncpu is not None:
            phases["a1"].append(oncpu[0] - t0)
            phases["a2"].append(fork[0] - oncpu[0])
        for key, a, b in [("a", t0, fork[0]), ("b", fork[0], exe[0]), ("c1", exe[0], main_[0]),
                          ("c2", main_[0], cwd[0]), ("c3", cwd[0], sfd[0]), ("d", sfd[0], cfork[0]),
                          ("e", cfork[0], cexe[0]), ("f", cexe[0], run[0]), ("total", t0, run[0])]:
            phases[key].append(b - a)
        # The handoff's phases, when every event of them was recorded.
        try:
            pfork = first(succ, "sched:sched_process_fork", cfork[0] + 1e-6)
            probe = int(re.search(r"child_pid=(\d+)", pfork[3]).group(1))
            pexit = first(probe, "sched:sched_process_exit", pfork[0])
            bind = first(succ, "syscalls:sys_enter_bind", pexit[0])
            term = next(e for e in after if e[1] == old and e[2] == "syscalls:sys_enter_kill"
                        and e[0] > pexit[0] and re.search(r"sig: (0x)?0*(f|15)\b", e[3]))
            renames = [e for e in after if e[1] == succ and e[2] == "syscalls:sys_enter_rename"
                       and bind[0] <= e[0] <= term[0]]
            claimed = renames[-1] if renames else bind
        except (StopIteration, AttributeError):
            continue
        for key, a, b in [("g", cfork[0], pfork[0]), ("h", pfork[0], pexit[0]), ("i1", pexit[0], bind[0]),
                          ("i2", bind[0], claimed[0]), ("i3", claimed[0], term[0]), ("handoff", t0, term[0])]:
            phases[key].append(b - a)
    n = len(phases["total"])
    print(f"Upgrades traced: {n} of {len(targets)} (handoff phases g–i: {len(phases['handoff'])}).\n")
    print_phases(PHASES, phases)


if __name__ == "__main__":
    main()
