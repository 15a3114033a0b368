#!/usr/bin/env bash
# Proxy benchmarks (issues #4 and #11; results in BENCHMARKS.md, "Proxy").
#
# In one run, alternating round by round: direct to nginx; through psflip's
# [[proxy]]; through HAProxy in TCP mode with one thread (nbthread 1); through the
# C floor proxy (benches/floor-proxy.c, built with `cc -O2` into the run's temp
# dir; skipped with a note without cc): the smallest correct one-thread TCP proxy,
# what any single-threaded userspace proxy reaches here. All go to the same nginx
# (one worker, `return 200`, and a 1 GiB sparse file). Measures:
#   - requests/s, p50 and p99 latency: wrk -t2 -c20 -d$DURATION (medians of rounds),
#     with keep-alive, and with one connection per request (Connection: close);
#   - CPU time the proxy spends per request (utime+stime over the wrk run);
#   - bulk: 1 GiB through one connection, counted by a recv_into client;
#   - system calls per proxied request of each proxy (strace -c -f over a
#     3 s wrk run in each mode, after the rounds: strace slows them, so these runs
#     count calls and time nothing);
#   - RSS of psflip (and HAProxy) holding $IDLE idle proxied connections.
# Prints the "## Proxy" section of BENCHMARKS.md; with --write, also replaces that
# section in BENCHMARKS.md (appends it if absent), leaving the rest alone.
#
# With --pattern instead: is HAProxy's lead, with one connection per request, its
# event pattern? An strace of HAProxy in `mode tcp` showed two differences from
# psflip's proxy and the floor proxy as they were before session 6: it registers
# the client socket without EPOLLOUT, and it sends the request right after its
# connect, without waiting for the backend's EPOLLOUT (both do that now). This
# adds the floor proxy built without the latter (-DWAIT_FOR_CONNECT) and with the
# former (-DNO_CLIENT_EPOLLOUT), runs only wrk with one connection per request
# (ROUNDS rounds, rotating), and prints requests/s per round, the medians and the
# median of each one's per-round ratio to HAProxy (and the same for p99
# latency). PATTERN_MODE=ka measures
# keep-alive instead; PSFLIP_ALSO="name=/path/to/psflip …" adds other psflip
# builds (an A/B in the same rounds); PATTERN_VARIANTS="haproxy psflip …" measures
# only those. It also adds `uring`, benches/floor-proxy-uring.c: the floor proxy's
# job through io_uring, one io_uring_enter per turn of its loop, and
# `send_ring`, the epoll floor with its sends queued on an io_uring and handed
# to the kernel once per batch (-DSEND_RING; both built with liburing,
# installed as root when missing, skipped with a note otherwise), and
# reports each proxy's CPU time per request; PATTERN_SYSCALLS=1 adds its system
# calls per request (strace -c, after the rounds).
#
#   sudo scripts/bench-proxy.sh [--write]        # ROUNDS=7 DURATION=5s IDLE=10000
#   sudo scripts/bench-proxy.sh --pattern        # ROUNDS=10 DURATION=4s
#   sudo nice -n -10 scripts/bench-proxy.sh      # on a shared machine: everything
#                                                # measured (wrk, nginx, the proxies)
#                                                # inherits the priority, builds do not
#
# Installs nginx-light, haproxy and wrk from Debian when missing (needs root).
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."

WRITE=0 PATTERN=0
[ "${1:-}" = --write ] && WRITE=1
[ "${1:-}" = --pattern ] && PATTERN=1
if [ "$PATTERN" = 1 ]; then
  ROUNDS=${ROUNDS:-10} DURATION=${DURATION:-4s}
else
  ROUNDS=${ROUNDS:-7} DURATION=${DURATION:-5s}
fi
IDLE=${IDLE:-10000}

have() { command -v "$1" >/dev/null 2>&1; }
if ! have nginx || ! have haproxy || ! have wrk || ! have strace; then
  if [ "$(id -u)" != 0 ]; then
    echo "bench-proxy: nginx, haproxy or wrk missing; run as root to install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy wrk strace >/dev/null
fi
# --pattern also measures the io_uring floor proxy, which needs liburing's headers.
if [ "$PATTERN" = 1 ] && [ ! -e /usr/include/liburing.h ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liburing-dev >/dev/null || true
fi
have python3 || { echo "bench-proxy: python3 is needed (bulk and idle clients)" >&2; exit 1; }
# PSFLIP_BIN=/path/to/psflip measures that build (the static musl one, say:
# target/x86_64-unknown-linux-musl/release/psflip, what the package ships);
# otherwise `cargo build --release` and target/release/psflip.
if [ -z "${PSFLIP_BIN:-}" ]; then
  [ -n "${BENCH_PROXY_NETNS:-}" ] || cargo build --release --quiet
  PSFLIP_BIN=$PWD/target/release/psflip
fi
PSFLIP_BIN=$(realpath "$PSFLIP_BIN")
export PSFLIP_BIN
PSFLIP_BUILD="$(git describe --always --dirty 2>/dev/null || echo '?') ($(file -b "$PSFLIP_BIN" 2>/dev/null | grep -q 'static' && echo 'release, static' || echo release); $PSFLIP_BIN)"

# As root, everything measured runs in a network namespace of its own, whose
# loopback carries nothing else: the TCP segments counted are the benchmark's.
if [ -z "${BENCH_PROXY_NETNS:-}" ] && [ "$(id -u)" = 0 ] && have unshare && have ip; then
  export BENCH_PROXY_NETNS=1
  exec unshare -n -- bash -c 'ip link set lo up && exec "$0" "$@"' "$SELF" "$@"
fi

W=$(mktemp -d /tmp/psflip-bench.XXXXXX)
chmod 755 "$W" # nginx workers run as another user
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

ulimit -n "$(ulimit -Hn)"
HARD=$(ulimit -n)
# Two fds per proxied connection (for HAProxy too), plus a few of their own.
MAXIDLE=$(((HARD - 200) / 2))
IDLE_NOTE=""
if [ "$IDLE" -gt "$MAXIDLE" ]; then
  IDLE_NOTE=" (the hard RLIMIT_NOFILE here is $HARD, so at most $MAXIDLE: two fds per connection)"
  IDLE=$MAXIDLE
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(port)
PSFLIP_PORT=$(port)
HAPROXY_PORT=$(port)
FLOOR_PORT=$(port)

FLOOR=0
if have cc && cc -O2 -o "$W/floor-proxy" benches/floor-proxy.c; then
  FLOOR=1
else
  echo "bench-proxy: no C compiler (cc) that builds benches/floor-proxy.c; the C floor proxy is skipped" >&2
fi

mkdir -p "$W/tmp"
truncate -s 1G "$W/1g.bin"
cat >"$W/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err;
worker_rlimit_nofile $HARD;
events { worker_connections $((HARD - 100)); }
http {
  access_log off;
  keepalive_requests 100000000;
  sendfile on;
  client_body_temp_path $W/tmp;
  proxy_temp_path $W/tmp;
  fastcgi_temp_path $W/tmp;
  uwsgi_temp_path $W/tmp;
  scgi_temp_path $W/tmp;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { return 200 "ok\n"; }
    location = /1g { alias $W/1g.bin; }
  }
}
EOF
cat >"$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $((IDLE + 10))
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend f
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend b
backend b
  server nginx 127.0.0.1:$NGINX_PORT
EOF
cat >"$W/psflip.toml" <<EOF
cmd = ["sleep", "infinity"]
quiet = true
[healthcheck.alive]
timeout = "0s"
[[proxy]]
listen = "127.0.0.1:$PSFLIP_PORT"
forward = "127.0.0.1:$NGINX_PORT"
EOF

nginx -c "$W/nginx.conf" -p "$W" 2>/dev/null &
PIDS+=($!)
haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=($!)
"$PSFLIP_BIN" -c "$W/psflip.toml" 2>"$W/psflip.log" &
PSFLIP_PID=$!
PIDS+=($!)
FLOOR_PID=""
if [ "$FLOOR" = 1 ]; then
  "$W/floor-proxy" "$FLOOR_PORT" "$NGINX_PORT" 2>"$W/floor.log" &
  FLOOR_PID=$!
  PIDS+=($!)
fi

for p in $NGINX_PORT $PSFLIP_PORT $HAPROXY_PORT $([ "$FLOOR" = 1 ] && echo "$FLOOR_PORT"); do
  for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$p/" && break
    sleep 0.05
  done
  curl -fs -o /dev/null "http://127.0.0.1:$p/" || {
    echo "bench-proxy: nothing answers on port $p" >&2
    cat "$W/haproxy.log" "$W/psflip.log" "$W/floor.log" >&2 2>/dev/null
    exit 1
  }
done

declare -A PORT=([direct]=$NGINX_PORT [psflip]=$PSFLIP_PORT [haproxy]=$HAPROXY_PORT [floor]=$FLOOR_PORT)
declare -A PID=([direct]="" [psflip]=$PSFLIP_PID [haproxy]=$HAPROXY_PID [floor]=$FLOOR_PID)
VARIANTS=(direct psflip haproxy)
[ "$FLOOR" = 1 ] && VARIANTS+=(floor)
NV=${#VARIANTS[@]}

cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
user_ticks() { [ -n "$1" ] && awk '{print $14}' "/proc/$1/stat" || echo 0; }


# wrk PORT MODE → "requests/s p50_us p99_us requests"; MODE ka (keep-alive) or
# close (one connection per request).
wrk_run() {
  local hdr=()
  [ "$2" = close ] && hdr=(-H "Connection: close")
  wrk -t2 -c20 -d"$DURATION" --latency "${hdr[@]}" "http://127.0.0.1:$1/" | awk '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }
    /^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) }
    /requests in/ { n = $1 } /^Requests\/sec/ { rps = $2 }
    END { printf "%.0f %.0f %.0f %d\n", rps, p50, p99, n }'
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# syscalls PID PORT MODE → "N (name n, …)": system calls of PID per request during
# a 3 s wrk run on PORT in MODE (the calls made ≥ 0.05 times per request).
syscalls() {
  local hdr=() n sp
  [ "$3" = close ] && hdr=(-H "Connection: close")
  strace -c -f -p "$1" -o "$W/strace.out" 2>/dev/null &
  sp=$!
  sleep 0.5
  n=$(wrk -t2 -c20 -d3s "${hdr[@]}" "http://127.0.0.1:$2/" | awk '/requests in/ { print $1 }')
  kill -INT "$sp"
  wait "$sp" || true
  awk -v n="$n" '$NF == "total" { total = $4 }
    NF >= 5 && $1 ~ /^[0-9.]+$/ && $NF != "total" && $4 / n >= 0.05 { list = list sep $NF " " sprintf("%.2f", $4 / n); sep = ", " }
    END { printf "%.1f (%s)\n", total / n, list }' "$W/strace.out"
}

# TCP segments sent on this network namespace so far (Tcp OutSegs).
outsegs() {
  awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "OutSegs") c = i; h = 1 } else print $c }' /proc/net/snmp
}

# segments PORT MODE → TCP segments sent per request, all sockets (client, proxy
# both sides, nginx), during a 3 s wrk run; "n/a" outside a namespace of our own.
segments() {
  local hdr=() n s0 s1
  [ -n "${BENCH_PROXY_NETNS:-}" ] || { echo n/a; return; }
  [ "$2" = close ] && hdr=(-H "Connection: close")
  s0=$(outsegs)
  n=$(wrk -t2 -c20 -d3s "${hdr[@]}" "http://127.0.0.1:$1/" | awk '/requests in/ { print $1 }')
  s1=$(outsegs)
  awk -v d=$((s1 - s0)) -v n="$n" 'BEGIN { printf "%.2f\n", d / n }'
}

# --pattern: the floor proxy's variants against psflip and HAProxy, one
# connection per request only; then exit.
if [ "$PATTERN" = 1 ]; then
  [ "$FLOOR" = 1 ] || { echo "bench-proxy: --pattern needs cc for the floor proxy" >&2; exit 1; }
  # start_variant NAME CMD…: run CMD (which serves on ${PORT[NAME]}) as
  # variant NAME, and wait until it answers.
  start_variant() {
    local v=$1
    shift
    "$@" 2>"$W/$v.log" &
    PID[$v]=$!
    PIDS+=($!)
    for _ in $(seq 100); do
      curl -fs -o /dev/null "http://127.0.0.1:${PORT[$v]}/" && break
      sleep 0.05
    done
  }
  declare -A FLAGS=([wait_for_connect]=-DWAIT_FOR_CONNECT [no_client_epollout]=-DNO_CLIENT_EPOLLOUT)
  for v in wait_for_connect no_client_epollout; do
    cc -O2 "${FLAGS[$v]}" -o "$W/$v" benches/floor-proxy.c
    PORT[$v]=$(port)
    start_variant "$v" "$W/$v" "${PORT[$v]}" "$NGINX_PORT"
  done
  VARIANTS=(haproxy psflip floor wait_for_connect no_client_epollout)
  # The io_uring floor (benches/floor-proxy-uring.c) and the epoll floor with
  # its sends on an io_uring (-DSEND_RING), where liburing builds them.
  if cc -O2 -o "$W/uring" benches/floor-proxy-uring.c -luring 2>/dev/null &&
    cc -O2 -DSEND_RING -o "$W/send_ring" benches/floor-proxy.c -luring 2>/dev/null; then
    for v in uring send_ring; do
      PORT[$v]=$(port)
      start_variant "$v" "$W/$v" "${PORT[$v]}" "$NGINX_PORT"
      VARIANTS+=("$v")
    done
  else
    echo "bench-proxy: liburing-dev missing; the io_uring floor proxies are skipped" >&2
  fi
  for also in ${PSFLIP_ALSO:-}; do
    v=${also%%=*}
    PORT[$v]=$(port)
    sed "s/127.0.0.1:$PSFLIP_PORT/127.0.0.1:${PORT[$v]}/" "$W/psflip.toml" >"$W/$v.toml"
    start_variant "$v" "${also#*=}" -c "$W/$v.toml"
    VARIANTS+=("$v")
  done
  [ -n "${PATTERN_VARIANTS:-}" ] && read -r -a VARIANTS <<<"$PATTERN_VARIANTS"
  NV=${#VARIANTS[@]}
  MODE=${PATTERN_MODE:-close}
  HOW="-H 'Connection: close'"
  [ "$MODE" = ka ] && HOW="(keep-alive)"
  echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r); psflip $(git describe --always --dirty 2>/dev/null || echo '?')${PSFLIP_ALSO:+; also $PSFLIP_ALSO}; wrk -t2 -c20 -d$DURATION $HOW; $ROUNDS rounds, rotating order; load average $(cut -d' ' -f1-3 /proc/loadavg) at the start."
  for r in $(seq "$ROUNDS"); do
    line="round $r:"
    for i in $(seq 0 $((NV - 1))); do
      v=${VARIANTS[$(((i + r) % NV))]}
      t0=$(cpu_ticks "${PID[$v]}") u0=$(user_ticks "${PID[$v]}")
      read -r rps _ p99 nreq < <(wrk_run "${PORT[$v]}" "$MODE")
      t1=$(cpu_ticks "${PID[$v]}") u1=$(user_ticks "${PID[$v]}")
      # clock ticks (1/100 s) → µs per request: all, and in user space
      awk -v d=$((t1 - t0)) -v n="$nreq" 'BEGIN { printf "%.2f\n", d * 10000 / n }' >>"$W/pattern_cpu.$v"
      awk -v d=$((u1 - u0)) -v n="$nreq" 'BEGIN { printf "%.2f\n", d * 10000 / n }' >>"$W/pattern_user.$v"
      echo "$rps" >>"$W/pattern.$v"
      echo "$p99" >>"$W/pattern_p99.$v"
      line="$line $v $rps;"
    done
    echo "$line load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
  echo
  label="one connection per request"
  [ "$MODE" = ka ] && label="keep-alive"
  echo "| $label | requests/s (median) | × HAProxy, median of the per-round ratios | p99 (median) | × HAProxy's p99, median of the per-round ratios | proxy CPU / request, median (of it in user space) | system calls / request |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  for v in "${VARIANTS[@]}"; do
    ratio=$(paste "$W/pattern.$v" "$W/pattern.haproxy" | awk '{ printf "%.4f\n", $1 / $2 }' | median)
    p99r=$(paste "$W/pattern_p99.$v" "$W/pattern_p99.haproxy" | awk '{ printf "%.4f\n", $1 / $2 }' | median)
    cpu="–" sys="–"
    [ -n "${PID[$v]:-}" ] && cpu="$(median <"$W/pattern_cpu.$v") µs ($(median <"$W/pattern_user.$v") µs)"
    # After the rounds (strace slows the proxy): counted, not timed.
    [ -n "${PID[$v]:-}" ] && [ "${PATTERN_SYSCALLS:-0}" = 1 ] && sys=$(syscalls "${PID[$v]}" "${PORT[$v]}" "$MODE")
    printf "| %s | %.0f | %.2f× | %d µs | %.2f× | %s | %s |\n" "$v" "$(median <"$W/pattern.$v")" "$ratio" "$(median <"$W/pattern_p99.$v")" "$p99r" "$cpu" "$sys"
  done
  exit 0
fi

cat >"$W/bulk.py" <<'EOF'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /1g HTTP/1.0\r\nHost: x\r\n\r\n")
buf = memoryview(bytearray(4 << 20)); n = 0; t = time.monotonic()
while True:
    k = s.recv_into(buf)
    if not k: break
    n += k
assert n > 1 << 30, n
print(f"{n / (time.monotonic() - t) / 1e6:.0f}")
EOF

cat >"$W/idle.py" <<'EOF'
import os, resource, socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def rss():
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
before = rss()
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
deadline = time.monotonic() + 60
while time.monotonic() < deadline and len(os.listdir(f"/proc/{pid}/fd")) < 2 * n:
    time.sleep(0.1)
time.sleep(1)
held = len(os.listdir(f"/proc/{pid}/fd"))
print(before, rss(), held)
for s in socks: s.close()
EOF

# The 1 GiB file is sparse: the first read fills the page cache. Not in a round.
python3 "$W/bulk.py" "$NGINX_PORT" >/dev/null

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

LOAD_START=$(loadavg)
echo "bench-proxy: $ROUNDS rounds, wrk -d$DURATION; load average $LOAD_START" >&2
for r in $(seq "$ROUNDS"); do
  for i in $(seq 0 $((NV - 1))); do
    v=${VARIANTS[$(((i + r) % NV))]}
    line="round $r $v:"
    for mode in ka close; do
      t0=$(cpu_ticks "${PID[$v]}")
      read -r rps p50 p99 n < <(wrk_run "${PORT[$v]}" "$mode")
      t1=$(cpu_ticks "${PID[$v]}")
      echo "$rps" >>"$W/rps_$mode.$v"
      echo "$p50" >>"$W/p50_$mode.$v"
      echo "$p99" >>"$W/p99_$mode.$v"
      # clock ticks (1/100 s) → µs per request
      awk -v d=$((t1 - t0)) -v n="$n" 'BEGIN { printf "%.2f\n", d * 10000 / n }' >>"$W/cpu_$mode.$v"
      line="$line $mode $rps req/s, p50 ${p50} µs, p99 ${p99} µs;"
    done
    python3 "$W/bulk.py" "${PORT[$v]}" >>"$W/bulk.$v"
    echo "$line bulk $(tail -1 "$W/bulk.$v") MB/s; load $(loadavg)" | tee -a "$W/rounds.txt" >&2
  done
done
LOAD_END=$(loadavg)

SYS_psflip_ka=$(syscalls "$PSFLIP_PID" "$PSFLIP_PORT" ka)
SYS_psflip_close=$(syscalls "$PSFLIP_PID" "$PSFLIP_PORT" close)
SYS_haproxy_ka=$(syscalls "$HAPROXY_PID" "$HAPROXY_PORT" ka)
SYS_haproxy_close=$(syscalls "$HAPROXY_PID" "$HAPROXY_PORT" close)
if [ "$FLOOR" = 1 ]; then
  SYS_floor_ka=$(syscalls "$FLOOR_PID" "$FLOOR_PORT" ka)
  SYS_floor_close=$(syscalls "$FLOOR_PID" "$FLOOR_PORT" close)
fi
for v in "${VARIANTS[@]}"; do
  for mode in ka close; do
    eval "SEG_${v}_$mode=$(segments "${PORT[$v]}" "$mode")"
  done
done
read -r PS_BEFORE PS_AFTER PS_FDS < <(python3 "$W/idle.py" "$PSFLIP_PORT" "$IDLE" "$PSFLIP_PID")
read -r HA_BEFORE HA_AFTER _ < <(python3 "$W/idle.py" "$HAPROXY_PORT" "$IDLE" "$HAPROXY_PID")

for v in "${VARIANTS[@]}"; do
  for m in rps_ka p50_ka p99_ka cpu_ka rps_close p50_close p99_close cpu_close bulk; do
    eval "${m}_$v=$(median <"$W/$m.$v")"
  done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
ms() { awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2f ms", u / 1000; else printf "%d µs", u }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

met() { awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN { ok = (op == "ge") ? a >= b : a <= b; print ok ? "yes" : "**no**" }'; }

# paired METRIC ge|le → the median over rounds of psflip's figure / HAProxy's in
# the same round (adjacent in time, so under the same load), and in how many
# rounds psflip was ahead (higher for ge, lower for le).
paired() {
  local k n m
  k=$(paste "$W/$1.psflip" "$W/$1.haproxy" | awk -v op="$2" '((op == "ge") ? $1 > $2 : $1 < $2) { k++ } END { print k + 0 }')
  n=$(wc -l <"$W/$1.psflip")
  m=$(paste "$W/$1.psflip" "$W/$1.haproxy" | awk '{ printf "%.4f\n", $1 / $2 }' | median)
  printf "%.2f×, %d of %d rounds" "$m" "$k" "$n"
}

SECTION=$W/section.md
row() { # VARIANT LABEL
  local v=$1 rk rc p5k p5c pk pc ck cc b
  eval "rk=\$rps_ka_$v rc=\$rps_close_$v p5k=\$p50_ka_$v p5c=\$p50_close_$v"
  eval "pk=\$p99_ka_$v pc=\$p99_close_$v ck=\$cpu_ka_$v cc=\$cpu_close_$v b=\$bulk_$v"
  echo "| $2 | $rk | $(ratio "$rk" "$rps_ka_haproxy") | $(ms "$p5k") | $(ms "$pk") | $rc | $(ratio "$rc" "$rps_close_haproxy") | $(ms "$p5c") | $(ms "$pc") | $ck / $cc µs | $b MB/s | $(ratio "$b" "$bulk_haproxy") |"
}
times() { awk -v a="$1" -v k="$2" 'BEGIN { print a * k }'; }

# The C floor proxy's rows and cells, or a note that it was skipped.
if [ "$FLOOR" = 1 ]; then
  FLOOR_TEXT="The C floor proxy (\`benches/floor-proxy.c\`, \`cc -O2\`) is the smallest correct
single-threaded TCP proxy: one edge-triggered epoll loop, accept4 until EAGAIN, a
nonblocking connect and the request sent on right after it when the handshake is
already done (as HAProxy does; since session 6), TCP_NODELAY on both sides, recv/send through a 16 KiB buffer each
way, half-close passed on, and nothing else (no configuration, logging, timeouts,
limits or splice). It stands for what a one-thread userspace proxy of this shape
reaches on this machine: what is left is the kernel's (accept, connect, handshakes
and FINs). It is a floor only as far as what was tried: until session 6 it waited
for the backend's EPOLLOUT before sending the request, and HAProxy's way (send at
once) turned out faster (scripts/bench-proxy.sh --pattern)."
  FLOOR_ROW=$'\n'"$(row floor "C floor proxy")"
  FLOOR_SYS=$'\n'"| C floor proxy | $SYS_floor_ka | $SYS_floor_close |"
  FLOOR_SEG=$'\n'"| C floor proxy | $SEG_floor_ka | $SEG_floor_close |"
else
  FLOOR_TEXT="The C floor proxy (\`benches/floor-proxy.c\`) was skipped: no C compiler (cc) built it."
  FLOOR_ROW="" FLOOR_SYS="" FLOOR_SEG=""
fi
# floorcell VALUE HAPROXY_VALUE [ms|MB/s] → the floor's figure and its ratio to HAProxy's.
floorcell() {
  [ "$FLOOR" = 1 ] || { echo "skipped"; return; }
  case "${3:-}" in
    ms) echo "$(ms "$1") ($(ratio "$1" "$2"))" ;;
    MB/s) echo "$1 MB/s ($(ratio "$1" "$2"))" ;;
    *) echo "$1 ($(ratio "$1" "$2"))" ;;
  esac
}
cat >"$SECTION" <<EOF
## Proxy

\`scripts/bench-proxy.sh\` (issues #4 and #11): the same nginx (one worker, \`return 200\`, a
1 GiB file) reached directly, through psflip's \`[[proxy]]\`, through HAProxy in
TCP mode with one thread, and through a C floor proxy, alternating in one run. On
these 2-core machines every proxy shares the CPU with the load generator and the
backend, so the ratio to direct cannot reach 1; the reference is HAProxy in the same run.

$FLOOR_TEXT

Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r);
nginx $(nginx -v 2>&1 | sed 's|.*/||'), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}') (\`mode tcp\`, \`nbthread 1\`, default buffers), wrk -t2 -c20 -d$DURATION;
psflip $PSFLIP_BUILD. $ROUNDS rounds, the $NV variants in a rotating order in
each (keep-alive, then one connection per request, then bulk); medians. Run at nice $(nice) (every process measured inherits it). Load average (1/5/15 min): $LOAD_START at the start, $LOAD_END at the end
(other work shared the machine: compare within a run, not across runs).

| | keep-alive: requests/s | × HAProxy | p50 | p99 | one connection per request: requests/s | × HAProxy | p50 | p99 | proxy CPU / request (keep-alive / per connection) | bulk: 1 GiB, one connection | × HAProxy |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
$(row direct "direct to nginx")
$(row psflip "psflip \`[[proxy]]\`")
$(row haproxy "HAProxy")$FLOOR_ROW

System calls per proxied request (strace -c -f during 3 s of wrk in each mode, after the rounds; the calls made at least 0.05 times per request in brackets):

| | keep-alive | one connection per request |
|---|---|---|
| psflip | $SYS_psflip_ka | $SYS_psflip_close |
| HAProxy | $SYS_haproxy_ka | $SYS_haproxy_close |$FLOOR_SYS

TCP segments sent per request, every socket counted (the client's, the proxy's two, nginx's), in a network namespace of the benchmark's own (3 s of wrk in each mode):

| | keep-alive | one connection per request |
|---|---:|---:|
| direct to nginx | $SEG_direct_ka | $SEG_direct_close |
| psflip | $SEG_psflip_ka | $SEG_psflip_close |
| HAProxy | $SEG_haproxy_ka | $SEG_haproxy_close |$FLOOR_SEG

Idle connections$IDLE_NOTE: psflip holding $IDLE idle proxied connections
($PS_FDS fds) has an RSS of $(mib "$PS_AFTER") ($(mib "$PS_BEFORE") before they were opened);
HAProxy with the same: $(mib "$HA_AFTER") ($(mib "$HA_BEFORE") before).

| target | psflip | HAProxy | ratio | per round: median ratio, psflip ahead in | met? | C floor proxy (× HAProxy) |
|---|---:|---:|---:|---:|---|---:|
| #11: requests/s ≥ 1.10 × HAProxy's, keep-alive | $rps_ka_psflip | $rps_ka_haproxy | $(ratio "$rps_ka_psflip" "$rps_ka_haproxy") | $(paired rps_ka ge) | $(met "$rps_ka_psflip" "$(times "$rps_ka_haproxy" 1.1)" ge) | $(floorcell "${rps_ka_floor:-}" "$rps_ka_haproxy") |
| #11: requests/s ≥ 1.10 × HAProxy's, one connection per request | $rps_close_psflip | $rps_close_haproxy | $(ratio "$rps_close_psflip" "$rps_close_haproxy") | $(paired rps_close ge) | $(met "$rps_close_psflip" "$(times "$rps_close_haproxy" 1.1)" ge) | $(floorcell "${rps_close_floor:-}" "$rps_close_haproxy") |
| #11: p99 ≤ HAProxy's, keep-alive | $(ms "$p99_ka_psflip") | $(ms "$p99_ka_haproxy") | $(ratio "$p99_ka_psflip" "$p99_ka_haproxy") | $(paired p99_ka le) | $(met "$p99_ka_psflip" "$p99_ka_haproxy" le) | $(floorcell "${p99_ka_floor:-}" "$p99_ka_haproxy" ms) |
| #11: p99 ≤ HAProxy's, one connection per request | $(ms "$p99_close_psflip") | $(ms "$p99_close_haproxy") | $(ratio "$p99_close_psflip" "$p99_close_haproxy") | $(paired p99_close le) | $(met "$p99_close_psflip" "$p99_close_haproxy" le) | $(floorcell "${p99_close_floor:-}" "$p99_close_haproxy" ms) |
| #11: bulk ≥ 1.5 × HAProxy's | $bulk_psflip MB/s | $bulk_haproxy MB/s | $(ratio "$bulk_psflip" "$bulk_haproxy") | $(paired bulk ge) | $(met "$bulk_psflip" "$(times "$bulk_haproxy" 1.5)" ge) | $(floorcell "${bulk_floor:-}" "$bulk_haproxy" MB/s) |
| #4: idle connections ≤ 64 MiB | $(mib "$PS_AFTER") | $(mib "$HA_AFTER") | | | $(met "$PS_AFTER" 65536 le) | |

Per round (in the order run):

\`\`\`
$(cat "$W/rounds.txt")
\`\`\`
EOF

cat "$SECTION"
if [ "$WRITE" = 1 ]; then
  # Replace (or append) the "## Proxy" section of BENCHMARKS.md, keeping the rest.
  python3 - "$SECTION" BENCHMARKS.md <<'PY'
import os, re, sys
section = open(sys.argv[1]).read().rstrip("\n") + "\n"
path = sys.argv[2]
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
m = re.search(r"^## Proxy\n.*?(?=^## |\Z)", text, re.S | re.M)
if m:
    rest = text[m.end():]
    text = text[:m.start()] + section + ("\n" + rest if rest else "")
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PY
  echo "bench-proxy: wrote the Proxy section of BENCHMARKS.md" >&2
fi
