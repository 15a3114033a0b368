#!/usr/bin/env python3
"""Write build/psflip-hot.ld: the functions a running psflip executes, laid out first.

    scripts/symbol-order.py            (from the repository; Linux x86_64, python3, nm, readelf)

Builds an unstripped release psflip (target/symbol-order), runs it under a tiny
breakpoint tracer (an int3 at every function entry, removed when hit; it follows
the spawned children and successors) through a start, idle supervision, a
`psflip status`, upgrades with `[healthcheck.alive]` and `[healthcheck.command]`,
and a failed upgrade, then writes the functions hit, in first-hit order, as a
linker script that `build.rs` passes to rust-lld for the release binary. The
names are written as patterns (crate hashes, `17h…E` hashes and LLVM's `.N`
suffixes wildcarded; `.text.unlikely.` too, where LLVM puts #[cold] functions),
so the file stays mostly valid as the code changes; a function it misses only
lands in the cold part. Re-run after large changes: BENCHMARKS.md's idle RSS
shows when the hot part has gone stale.
"""
import ctypes, os, re, signal, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
TRACEME, PEEK, POKE, CONT, GETREGS, SETREGS, SETOPTIONS, DETACH = 0, 1, 4, 7, 12, 13, 0x4200, 17
OPTS = 8 | 4 | 2 | 0x10 | 0x100000  # TRACECLONE, TRACEVFORK, TRACEFORK, TRACEEXEC, EXITKILL
__WALL = 0x40000000


class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs".split()]


def exe_of(pid):
    try:
        return os.path.realpath(f"/proc/{pid}/exe")
    except OSError:
        return None


def trace(binary, cfg, secs, hups, status_at, syms):
    """Run `binary -c cfg` for `secs`, upgrade signals at `hups` (seconds), a
    `psflip status` at `status_at`; return the function addresses hit, in order."""
    base_of = lambda pid: next(int(l.split()[0].split("-")[0], 16) for l in open(f"/proc/{pid}/maps")
                               if l.split()[5:6] == [binary] and int(l.split()[2], 16) == 0)
    seen, order = set(), []

    def poke_all(pid):
        base, saved = base_of(pid), {}
        for va in syms:
            if va in seen:
                continue
            a = base + va
            w = libc.ptrace(PEEK, pid, ctypes.c_void_p(a), None)
            saved[a] = (w, va)
            libc.ptrace(POKE, pid, ctypes.c_void_p(a), ctypes.c_void_p((w & ~0xFF) | 0xCC))
        return saved

    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        libc.ptrace(TRACEME, 0, None, None)
        os.execv(binary, [binary, "-c", cfg])
    os.waitpid(pid, 0)
    libc.ptrace(SETOPTIONS, pid, None, ctypes.c_void_p(OPTS))
    mm = {pid: poke_all(pid)}
    libc.ptrace(CONT, pid, None, None)

    def psflips():
        return [p for p in list(mm) if exe_of(p) == binary]

    def timers():
        t0 = time.monotonic()
        events = sorted([(h, "hup") for h in hups] + ([(status_at, "status")] if status_at else []) + [(secs, "end")])
        for at, what in events:
            time.sleep(max(0, t0 + at - time.monotonic()))
            ps = psflips()
            if what == "status":
                subprocess.run([binary, "status", "-c", cfg], capture_output=True)
            elif what == "hup" and ps:
                os.kill(max(ps), signal.SIGHUP)
            elif what == "end":
                for p in ps:
                    try:
                        os.kill(p, signal.SIGTERM)
                    except OSError:
                        pass

    threading.Thread(target=timers, daemon=True).start()
    regs = Regs()
    while mm:
        try:
            p, st = os.waitpid(-1, __WALL)
        except ChildProcessError:
            break
        if os.WIFEXITED(st) or os.WIFSIGNALED(st):
            mm.pop(p, None)
            continue
        sig, event = os.WSTOPSIG(st), st >> 16
        if p not in mm:  # a new tracee: shares its parent's memory until it execs
            ppid = next(int(l.split()[1]) for l in open(f"/proc/{p}/status") if l.startswith("PPid:"))
            mm[p] = mm.get(ppid, {})
            libc.ptrace(CONT, p, None, None)
        elif sig == signal.SIGTRAP and event == 4:  # exec: psflip again (a successor) or a child
            if exe_of(p) == binary:
                mm[p] = poke_all(p)
                libc.ptrace(CONT, p, None, None)
            else:
                mm.pop(p, None)
                libc.ptrace(DETACH, p, None, None)
        elif sig == signal.SIGTRAP and event:
            libc.ptrace(CONT, p, None, None)
        elif sig == signal.SIGTRAP:
            libc.ptrace(GETREGS, p, None, ctypes.byref(regs))
            a = regs.rip - 1
            if a in mm[p]:
                w, va = mm[p].pop(a)
                libc.ptrace(POKE, p, ctypes.c_void_p(a), ctypes.c_void_p(w))
                regs.rip = a
                libc.ptrace(SETREGS, p, None, ctypes.byref(regs))
                if va not in seen:
                    seen.add(va)
                    order.append(va)
                libc.ptrace(CONT, p, None, None)
            else:
                libc.ptrace(CONT, p, None, ctypes.c_void_p(sig))
        else:
            libc.ptrace(CONT, p, None, ctypes.c_void_p(0 if event else sig))
    return order


def pattern(name):
    name = re.sub(r"\.\d+$", "", name)
    name = re.sub(r"17h[0-9a-f]{16}E$", "17h*E", name)
    name = re.sub(r"Cs[0-9A-Za-z]+_(?=\d)", "Cs*_", name)
    return name.rstrip("*") + "*"


def main():
    target = os.path.join(ROOT, "target", "symbol-order")
    env = dict(os.environ, CARGO_PROFILE_RELEASE_STRIP="false", CARGO_TARGET_DIR=target)
    subprocess.run(["cargo", "build", "--release", "--bin", "psflip"], cwd=ROOT, env=env, check=True)
    binary = os.path.realpath(os.path.join(target, "release", "psflip"))
    syms = {}
    for l in subprocess.run(["nm", "--defined-only", "-S", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        p = l.split()
        if len(p) == 4 and p[2] in "tTwW" and int(p[1], 16) > 0:
            syms.setdefault(int(p[0], 16), []).append(p[3])
    conf = {
        "alive": '[healthcheck.alive]\ntimeout = "100ms"\n',
        "command": '[healthcheck.command]\ncmd = ["true"]\nafter = "0s"\n',
    }
    runs = [
        ("alive.toml", 'cmd = ["sleep", "1000"]\n\n' + conf["alive"], 2.5, [0.8], 0.5),
        ("command.toml", 'cmd = ["sleep", "1000"]\n\n' + conf["command"], 2.5, [0.5, 1.5], None),
        ("failed.toml", 'cmd = ["sh", "-c", "{{ AB \\"exec sleep 1000\\" \\"exit 1\\" }}"]\n\n' + conf["alive"], 2.0, [0.6], None),
    ]
    order = []
    with tempfile.TemporaryDirectory(prefix="psflip-order.") as d:
        for name, text, secs, hups, status_at in runs:
            cfg = os.path.join(d, name)
            with open(cfg, "w") as f:
                f.write(text + '\n[shutdown]\ntimeout = "1s"\n')
            hit = trace(binary, cfg, secs, hups, status_at, syms)
            print(f"{name}: {len(hit)} functions run", file=sys.stderr)
            order += [va for va in hit if va not in order]
    patterns = []
    for va in order:
        for n in syms[va]:
            if n != "_start" and pattern(n) not in patterns:
                patterns.append(pattern(n))
    out = os.path.join(ROOT, "build", "psflip-hot.ld")
    with open(out, "w") as f:
        f.write("/* Written by scripts/symbol-order.py: the functions a running psflip executes, first\n"
                "   (see build.rs). */\nSECTIONS {\n  .text.hot : {\n")
        for p in patterns:
            f.write(f"    *(.text.{p} .text.unlikely.{p})\n")
        f.write("  }\n}\nINSERT BEFORE .text;\n")
    print(f"{out}: {len(patterns)} patterns", file=sys.stderr)


if __name__ == "__main__":
    main()
