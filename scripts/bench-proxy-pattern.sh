#!/usr/bin/env bash
# Is HAProxy's lead over the C floor proxy, with one connection per request, its
# event pattern? (issue #11; BENCHMARKS.md, "Session 6")
#
# An strace of HAProxy in `mode tcp` showed two differences from psflip's proxy
# and benches/floor-proxy.c as they were before session 6: it registers the
# client socket without EPOLLOUT, and it sends the request to the backend right
# after its connect, without waiting for the backend's EPOLLOUT. The floor proxy
# (and psflip, since) does the second; this builds it as is, without it
# (-DWAIT_FOR_CONNECT) and with the first (-DNO_CLIENT_EPOLLOUT), and runs them,
# psflip's [[proxy]] and HAProxy (one thread) in rotation against the same nginx:
# wrk -t2 -c20 -H "Connection: close" for $DURATION each, $ROUNDS rounds. Prints
# requests/s per round, the medians, and the median over rounds of each one's
# ratio to HAProxy in the same round.
#
#   sudo scripts/bench-proxy-pattern.sh        # ROUNDS=6 DURATION=4s
#
# Needs nginx, haproxy, wrk and cc (scripts/bench-proxy.sh installs the first three).
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-4s}
for t in nginx haproxy wrk cc python3; do
  command -v "$t" >/dev/null || { echo "bench-proxy-pattern: $t is needed" >&2; exit 1; }
done
[ -n "${BENCH_PATTERN_NETNS:-}" ] || cargo build --release --quiet
# As root, in a network namespace of its own (loopback only, nothing else on it).
if [ -z "${BENCH_PATTERN_NETNS:-}" ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
  export BENCH_PATTERN_NETNS=1
  exec unshare -n -- bash -c 'ip link set lo up && exec "$0" "$@"' "$SELF" "$@"
fi

W=$(mktemp -d /tmp/psflip-pattern.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX=$(port)
mkdir -p "$W/tmp"
cat >"$W/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp;
  uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server { listen 127.0.0.1:$NGINX backlog=4096; location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$W/nginx.conf" -p "$W" 2>/dev/null &
PIDS+=($!)

declare -A PORT
PORT[haproxy]=$(port)
cat >"$W/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend f
  bind 127.0.0.1:${PORT[haproxy]}
  default_backend b
backend b
  server nginx 127.0.0.1:$NGINX
CONF
haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 &
PIDS+=($!)

PORT[psflip]=$(port)
cat >"$W/psflip.toml" <<CONF
cmd = ["sleep", "infinity"]
quiet = true
[healthcheck.alive]
timeout = "0s"
[[proxy]]
listen = "127.0.0.1:${PORT[psflip]}"
forward = "127.0.0.1:$NGINX"
CONF
target/release/psflip -c "$W/psflip.toml" 2>"$W/psflip.log" &
PIDS+=($!)

declare -A FLAGS=([floor]="" [wait_for_connect]="-DWAIT_FOR_CONNECT" [no_client_epollout]="-DNO_CLIENT_EPOLLOUT")
for v in floor wait_for_connect no_client_epollout; do
  # shellcheck disable=SC2086
  cc -O2 ${FLAGS[$v]} -o "$W/$v" benches/floor-proxy.c
  PORT[$v]=$(port)
  "$W/$v" "${PORT[$v]}" "$NGINX" 2>"$W/$v.log" &
  PIDS+=($!)
done
VARIANTS=(haproxy psflip floor wait_for_connect no_client_epollout)
for v in "${VARIANTS[@]}"; do
  for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:${PORT[$v]}/" && break
    sleep 0.05
  done
  curl -fs -o /dev/null "http://127.0.0.1:${PORT[$v]}/" || { echo "bench-proxy-pattern: $v does not answer" >&2; exit 1; }
done

echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r); psflip $(git describe --always --dirty 2>/dev/null || echo '?'); wrk -t2 -c20 -d$DURATION -H 'Connection: close'; $ROUNDS rounds, rotating order; load average $(cut -d' ' -f1-3 /proc/loadavg) at the start."
N=${#VARIANTS[@]}
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  for i in $(seq 0 $((N - 1))); do
    v=${VARIANTS[$(((i + r) % N))]}
    rps=$(wrk -t2 -c20 -d"$DURATION" -H "Connection: close" "http://127.0.0.1:${PORT[$v]}/" | awk '/^Requests\/sec/ { printf "%.0f", $2 }')
    echo "$rps" >>"$W/rps.$v"
    line="$line $v $rps;"
  done
  echo "$line load $(cut -d' ' -f1-3 /proc/loadavg)"
done
median() { sort -n | awk '{a[NR] = $1} END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo
echo "| one connection per request | requests/s (median) | × HAProxy, median of the per-round ratios |"
echo "|---|---:|---:|"
for v in "${VARIANTS[@]}"; do
  m=$(median <"$W/rps.$v")
  ratio=$(paste "$W/rps.$v" "$W/rps.haproxy" | awk '{ printf "%.4f\n", $1 / $2 }' | median)
  printf "| %s | %.0f | %.2f× |\n" "$v" "$m" "$ratio"
done
