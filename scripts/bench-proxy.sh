#!/usr/bin/env bash
# Proxy benchmarks (issue #4; results in BENCHMARKS.md, "Proxy").
#
# In one run, alternating round by round: direct to nginx; through psflip's
# [[proxy]]; through HAProxy in TCP mode with one thread (nbthread 1). All three go
# to the same nginx (one worker, `return 200`, and a 1 GiB sparse file). Measures:
#   - requests/s, p50 and p99 latency: wrk -t2 -c20 -d$DURATION (medians of rounds);
#   - CPU time the proxy spends per request (utime+stime over the wrk run);
#   - bulk: 1 GiB through one connection, counted by a recv_into client;
#   - RSS of psflip (and HAProxy) holding $IDLE idle proxied connections.
# Prints the "## Proxy" section of BENCHMARKS.md; with --write, also replaces that
# section in BENCHMARKS.md (appends it if absent), leaving the rest alone.
#
#   sudo scripts/bench-proxy.sh [--write]        # ROUNDS=3 DURATION=10s IDLE=10000
#
# Installs nginx-light, haproxy and wrk from Debian when missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
WRITE=0
[ "${1:-}" = --write ] && WRITE=1
DURATION=${DURATION:-10s}
IDLE=${IDLE:-10000}

have() { command -v "$1" >/dev/null 2>&1; }
if ! have nginx || ! have haproxy || ! have wrk; then
  if [ "$(id -u)" != 0 ]; then
    echo "bench-proxy: nginx, haproxy or wrk missing; run as root to install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy wrk >/dev/null
fi
have python3 || { echo "bench-proxy: python3 is needed (bulk and idle clients)" >&2; exit 1; }
cargo build --release --quiet
PSFLIP_BIN=$PWD/target/release/psflip

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

for p in $NGINX_PORT $PSFLIP_PORT $HAPROXY_PORT; do
  for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$p/" && break
    sleep 0.05
  done
  curl -fs -o /dev/null "http://127.0.0.1:$p/" || {
    echo "bench-proxy: nothing answers on port $p" >&2
    cat "$W/haproxy.log" "$W/psflip.log" >&2
    exit 1
  }
done

declare -A PORT=([direct]=$NGINX_PORT [psflip]=$PSFLIP_PORT [haproxy]=$HAPROXY_PORT)
declare -A PID=([direct]="" [psflip]=$PSFLIP_PID [haproxy]=$HAPROXY_PID)
VARIANTS=(direct psflip haproxy)

cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }

# wrk → "requests/s p50_us p99_us requests"
wrk_run() {
  wrk -t2 -c20 -d"$DURATION" --latency "http://127.0.0.1:$1/" | awk '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }
    /^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) }
    /requests in/ { n = $1 } /^Requests\/sec/ { rps = $2 }
    END { printf "%.0f %.0f %.0f %d\n", rps, p50, p99, n }'
}

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

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

LOAD_START=$(loadavg)
echo "bench-proxy: $ROUNDS rounds, wrk -d$DURATION; load average $LOAD_START" >&2
for r in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    v=${VARIANTS[$(((i + r) % 3))]}
    t0=$(cpu_ticks "${PID[$v]}")
    read -r rps p50 p99 n < <(wrk_run "${PORT[$v]}")
    t1=$(cpu_ticks "${PID[$v]}")
    echo "$rps" >>"$W/rps.$v"
    echo "$p50" >>"$W/p50.$v"
    echo "$p99" >>"$W/p99.$v"
    # clock ticks (1/100 s) → µs per request
    awk -v d=$((t1 - t0)) -v n="$n" 'BEGIN { printf "%.2f\n", d * 10000 / n }' >>"$W/cpu.$v"
    python3 "$W/bulk.py" "${PORT[$v]}" >>"$W/bulk.$v"
    echo "round $r $v: $rps req/s, p50 ${p50} µs, p99 ${p99} µs, bulk $(tail -1 "$W/bulk.$v") MB/s; load $(loadavg)" | tee -a "$W/rounds.txt" >&2
  done
done
LOAD_END=$(loadavg)

read -r PS_BEFORE PS_AFTER PS_FDS < <(python3 "$W/idle.py" "$PSFLIP_PORT" "$IDLE" "$PSFLIP_PID")
read -r HA_BEFORE HA_AFTER _ < <(python3 "$W/idle.py" "$HAPROXY_PORT" "$IDLE" "$HAPROXY_PID")

for v in "${VARIANTS[@]}"; do
  for m in rps p50 p99 cpu bulk; do
    eval "${m}_$v=$(median <"$W/$m.$v")"
  done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
ms() { awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2f ms", u / 1000; else printf "%d µs", u }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

met() { awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN { ok = (op == "ge") ? a >= b : a <= b; print ok ? "yes" : "**no**" }'; }

SECTION=$W/section.md
cat >"$SECTION" <<EOF
## Proxy

\`scripts/bench-proxy.sh\` (issue #4): the same nginx (one worker, \`return 200\`, a
1 GiB file) reached directly, through psflip's \`[[proxy]]\`, and through HAProxy in
TCP mode with one thread, alternating in one run. On these 2-core machines every
proxy shares the CPU with the load generator and the backend, so the ratio to
direct cannot reach 1; the reference is HAProxy in the same run.

Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r);
nginx $(nginx -v 2>&1 | sed 's|.*/||'), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}') (\`mode tcp\`, \`nbthread 1\`, default buffers), wrk -t2 -c20 -d$DURATION;
psflip $(git describe --always --dirty 2>/dev/null || echo '?') (release). $ROUNDS rounds, the three variants in a rotating order in
each; medians. Load average (1/5/15 min): $LOAD_START at the start, $LOAD_END at the end
(other work shared the machine: compare within a run, not across runs).

| | requests/s | × direct | p50 | × direct | p99 | × direct | proxy CPU / request | bulk: 1 GiB, one connection | × direct |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| direct to nginx | $rps_direct | 1.00× | $(ms "$p50_direct") | 1.00× | $(ms "$p99_direct") | 1.00× | — | $bulk_direct MB/s | 1.00× |
| psflip \`[[proxy]]\` | $rps_psflip | $(ratio "$rps_psflip" "$rps_direct") | $(ms "$p50_psflip") | $(ratio "$p50_psflip" "$p50_direct") | $(ms "$p99_psflip") | $(ratio "$p99_psflip" "$p99_direct") | $cpu_psflip µs | $bulk_psflip MB/s | $(ratio "$bulk_psflip" "$bulk_direct") |
| HAProxy | $rps_haproxy | $(ratio "$rps_haproxy" "$rps_direct") | $(ms "$p50_haproxy") | $(ratio "$p50_haproxy" "$p50_direct") | $(ms "$p99_haproxy") | $(ratio "$p99_haproxy" "$p99_direct") | $cpu_haproxy µs | $bulk_haproxy MB/s | $(ratio "$bulk_haproxy" "$bulk_direct") |

Idle connections$IDLE_NOTE: psflip holding $IDLE idle proxied connections
($PS_FDS fds) has an RSS of $(mib "$PS_AFTER") ($(mib "$PS_BEFORE") before they were opened);
HAProxy with the same: $(mib "$HA_AFTER") ($(mib "$HA_BEFORE") before).

| target (issue #4) | psflip | HAProxy | met? |
|---|---:|---:|---|
| requests/s at least HAProxy's | $rps_psflip | $rps_haproxy | $(met "$rps_psflip" "$rps_haproxy" ge) |
| p50 at least as good as HAProxy's | $(ms "$p50_psflip") | $(ms "$p50_haproxy") | $(met "$p50_psflip" "$p50_haproxy" le) |
| bulk at least HAProxy's | $bulk_psflip MB/s | $bulk_haproxy MB/s | $(met "$bulk_psflip" "$bulk_haproxy" ge) |
| idle connections ≤ 64 MiB | $(mib "$PS_AFTER") | | $(met "$PS_AFTER" 65536 le) |

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
