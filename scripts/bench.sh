#!/usr/bin/env bash
# Benchmarks of the release psflip binary; writes BENCHMARKS.md.
#
#   scripts/bench.sh            # build, wait for a quiet machine, measure, write BENCHMARKS.md
#
# Environment:
#   BENCH_MAX_LOAD=0.5      wait until the 1-minute load average is below this…
#   BENCH_LOAD_WAIT=900     …for at most this many seconds (0: do not wait)
#   PSFLIP_BENCH_RUNS=40    timed iterations of the latency benches (after 3 warm-ups)
#   PSFLIP_BENCH_IDLE_RUNS=20
#   BENCH_OUTPUT=BENCHMARKS.md
#   BENCH_STATIC=1          also build the static musl psflip (what scripts/package-deb.sh
#                           ships when the x86_64-unknown-linux-musl target is installed)
#                           and measure it, cold and (with BENCH_STANDBY) with a standby
#   BENCH_PROFILE=1         also trace 30 upgrades and 30 failed ones with perf (benches/profile_upgrade.py),
#                           when perf and python3 are there and we are root
#   BENCH_BASELINE=PATH     also measure another psflip binary (e.g. an older commit's
#                           release build) with the same benches, for a before/after
#   BENCH_ALSO=NAME=PATH:…  more binaries to measure alongside (one column each)
#   BENCH_STANDBY=1         also measure the shipped binary configured with
#                           `[upgrade] standby = true`, in the same iterations
#   BENCH_GROW=1            also run benches/grow.py (proxied connections during an
#                           upgrade, accepts during handovers with their time in the
#                           accept queue, configuration size; root and nginx),
#                           BENCH_GROW_ROUNDS=5 upgrades per row
#   BENCH_FLOOR=1           also measure programs that do nothing (C, Rust; dynamic,
#                           static): the floor under the RSS figure
#
# It measures only; no figure makes it fail. It exits non-zero only when something
# could not be run at all.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
max_load=${BENCH_MAX_LOAD:-0.5}
do_static=${BENCH_STATIC:-1}
do_profile=${BENCH_PROFILE:-1}
do_grow=${BENCH_GROW:-1}
do_floor=${BENCH_FLOOR:-1}
do_standby=${BENCH_STANDBY:-1}
baseline=${BENCH_BASELINE:-}
load_wait=${BENCH_LOAD_WAIT:-900}
output=${BENCH_OUTPUT:-BENCHMARKS.md}
export PSFLIP_BENCH_RUNS=${PSFLIP_BENCH_RUNS:-40}
export PSFLIP_BENCH_IDLE_RUNS=${PSFLIP_BENCH_IDLE_RUNS:-20}

work=$(mktemp -d "${TMPDIR:-/tmp}/psflip-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

log() { printf 'bench.sh: %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------
missing=()
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v jq >/dev/null || missing+=(jq)
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing ${missing[*]} from Debian"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        log "missing ${missing[*]}: install them (apt-get install ${missing[*]}) and run again"
        exit 1
    fi
fi

# --- build ---------------------------------------------------------------------
log "cargo build --release"
cargo build --release
bin=$root/target/release/psflip
export PSFLIP_BIN=$bin
# Build the bench too, so that compiling does not overlap the measurements.
cargo bench --bench flip --no-run

static_bin=""
static_note=""
if [ "$do_static" = 1 ]; then
    musl_ok=1
    musl=$(scripts/musl-target.sh) || musl_ok=0
    log "building the static musl build (target/$musl)"
    if [ "$musl_ok" = 0 ]; then
        static_note="the $musl target is not installed (rustup target add $musl)"
        log "$static_note"
    elif cargo build --release --bin psflip --target "$musl"; then
        static_bin=$root/target/$musl/release/psflip
    else
        static_note="the static musl build failed"
        log "$static_note"
    fi
fi
if [ "$do_profile" = 1 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v perf >/dev/null || ! command -v python3 >/dev/null; then
        log "no profile: it needs root, perf and python3"
        do_profile=0
    fi
fi

# --- quiet machine -------------------------------------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
waited=0
load_note=""
if [ "$load_wait" -gt 0 ]; then
    while ! below "$(load1)" "$max_load"; do
        if [ "$waited" -ge "$load_wait" ]; then
            load_note="gave up waiting for a 1-minute load average below $max_load after ${waited} s"
            log "$load_note"
            break
        fi
        log "load average $(load1) ≥ $max_load; waiting (${waited} s so far)"
        sleep 20
        waited=$((waited + 20))
    done
fi
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average at start: $load_before"

# --- latency and footprint (benches/flip.rs) ------------------------------------
# The other binaries (static musl, baseline, BENCH_ALSO) run in the same
# iterations as the shipped one, interleaved, not one after the other: on a
# shared machine, two runs minutes apart compare two loads, not two builds.
also=""
[ -n "$static_bin" ] && also+="static=$static_bin:"
[ -n "$static_bin" ] && [ "$do_standby" = 1 ] && also+="staticsb=$static_bin@standby:"
[ -n "$baseline" ] && also+="baseline=$baseline:"
also+=${BENCH_ALSO:-}
log "cargo bench --bench flip${also:+ (also: $also)}"
PSFLIP_BENCH_STANDBY=$do_standby PSFLIP_BENCH_ALSO=$also PSFLIP_BENCH_OUT=$work/flip cargo bench --bench flip 2>&1 | tee "$work/flip.log"

# --- profile (perf tracepoints) --------------------------------------------------------
if [ "$do_profile" = 1 ]; then
    log "profiling 30 upgrades"
    python3 benches/profile_upgrade.py "$bin" 30 >"$work/profile.md" || do_profile=0
    python3 benches/profile_upgrade.py --failed "$bin" 30 >"$work/profile-failed.md" || true
    if [ "$do_standby" = 1 ]; then
        python3 benches/profile_upgrade.py --standby "$bin" 30 >"$work/profile-standby.md" || true
    fi
    if [ -n "$static_bin" ] && [ "$do_profile" = 1 ]; then
        python3 benches/profile_upgrade.py "$static_bin" 30 >"$work/profile-static.md" || true
    fi
fi

# --- launch to exit (hyperfine) ----------------------------------------------------
# The child exits at once, before it is healthy, so psflip exits 1: -i.
# The floor of figure 1: a launcher that does nothing but start its child
# (vfork, execvp, waitpid: one more exec and one spawn, as any supervisor),
# in C, glibc static and dynamic.
printf 'cmd = ["true"]\n' >"$work/true.toml"
hf_cmds=("$bin -c $work/true.toml" "true")
hf_names=(--command-name 'psflip -c true.toml' --command-name 'true')
if command -v cc >/dev/null; then
    cat >"$work/launch.c" <<'EOT'
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    pid_t pid = vfork();
    if (pid == 0) { execvp(argv[1], argv + 1); _exit(127); }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
EOT
    if cc -O2 -static -o "$work/launch-static" "$work/launch.c" 2>/dev/null &&
        cc -O2 -o "$work/launch-dynamic" "$work/launch.c"; then
        hf_cmds+=("$work/launch-static true" "$work/launch-dynamic true")
        hf_names+=(--command-name 'launch true (C, static)' --command-name 'launch true (C, dynamic)')
        hf_c=1
    fi
fi
# Last, so that the indexes above stay.
if [ -n "$static_bin" ]; then
    hf_cmds+=("$static_bin -c $work/true.toml")
    hf_names+=(--command-name 'psflip -c true.toml (static musl)')
fi
log "hyperfine: psflip -c true.toml vs true (and the C launcher floor)"
hyperfine -N -i --warmup 5 --runs 50 "${hf_names[@]}" \
    --export-json "$work/hyperfine.json" --export-markdown "$work/hyperfine.md" \
    "${hf_cmds[@]}" 2>&1 | tee "$work/hyperfine.log"
hf() { jq -r ".results[$1].$2" "$work/hyperfine.json"; }
to_ms() { awk -v s="$1" 'BEGIN { printf "%.3f", s * 1000 }'; }
hf_psflip=$(to_ms "$(hf 0 median)")
hf_true=$(to_ms "$(hf 1 median)")
hf_over=$(awk -v a="$hf_psflip" -v b="$hf_true" 'BEGIN { printf "%.3f", a - b }')
hf_n=$(jq -r '.results[0].times | length' "$work/hyperfine.json")
hf_floor=""
if [ "${hf_c:-0}" = 1 ]; then
    ls_ms=$(to_ms "$(hf 2 median)")
    ld_ms=$(to_ms "$(hf 3 median)")
    hf_floor=$(awk -v s="$ls_ms" -v d="$ld_ms" -v t="$hf_true" 'BEGIN {
        printf "The floor of figure 1, a C launcher that only starts its child (vfork, execvp, waitpid), takes %.3f ms statically linked (+%.3f ms over `true`) and %.3f ms dynamically linked (+%.3f ms).", s, s - t, d, d - t }')
fi
if [ -n "$static_bin" ]; then
    hs_ms=$(to_ms "$(hf $((${#hf_cmds[@]} - 1)) median)")
    hf_floor+=$(awk -v m="$hs_ms" -v t="$hf_true" 'BEGIN {
        printf " The static musl psflip takes %.3f ms (+%.3f ms over `true`).", m, m - t }')
fi

# --- floors: the RSS and size of programs that do nothing -------------------------
# What any process of each kind costs here, whatever it does: the floor under
# figure 5. Each sleeps until killed; its VmRSS is read once it is idle.
floor_rows=""
if [ "$do_floor" = 1 ] && command -v cc >/dev/null; then
    log "floors: empty C and Rust programs"
    printf '#include <unistd.h>\nint main(void) { pause(); return 0; }\n' >"$work/idle.c"
    printf 'fn main() { loop { std::thread::park(); } }\n' >"$work/idle.rs"
    cat >"$work/idle_c_main.rs" <<'EOT'
#![no_main]
#[link(name = "gcc_eh", kind = "static", modifiers = "-bundle")]
unsafe extern "C" {}
#[unsafe(no_mangle)]
extern "C" fn main(_: i32, _: *const *const u8) -> i32 { loop { std::thread::park(); } }
EOT
    rflags=(-C opt-level=s -C panic=abort -C strip=symbols -C codegen-units=1)
    built=()
    cc -O2 -o "$work/idle-c" "$work/idle.c" && built+=("idle-c|C, glibc dynamic")
    cc -O2 -static -o "$work/idle-c-static" "$work/idle.c" 2>/dev/null && built+=("idle-c-static|C, glibc static")
    rustc "${rflags[@]}" -o "$work/idle-rs" "$work/idle.rs" && built+=("idle-rs|Rust, std's main, glibc dynamic")
    rustc "${rflags[@]}" -o "$work/idle-rs-cmain" "$work/idle_c_main.rs" &&
        built+=("idle-rs-cmain|Rust, C main + libgcc_eh as psflip, glibc dynamic")
    rustc "${rflags[@]}" -C target-feature=+crt-static -o "$work/idle-rs-static" "$work/idle.rs" &&
        built+=("idle-rs-static|Rust, std's main, glibc static (crt-static)")
    for b in "${built[@]}"; do
        name=${b%%|*}
        "$work/$name" &
        pid=$!
        sleep 0.3
        rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
        anon=$(awk '/^RssAnon/ { print $2 }' "/proc/$pid/status")
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        floor_rows+="| ${b#*|} | $rss KiB | $anon KiB | $(stat -c %s "$work/$name") bytes |"$'\n'
    done
fi

# --- cost as the work grows (benches/grow.py) ---------------------------------------
if [ "$do_grow" = 1 ]; then
    if [ "$(id -u)" = 0 ] && command -v nginx >/dev/null; then
        log "benches/grow.py: connections, accepts during handovers, configuration size"
        python3 benches/grow.py --queue "$bin" "${BENCH_GROW_ROUNDS:-5}" >"$work/grow.md" || do_grow=0
    else
        log "no grow bench: it needs root and nginx"
        do_grow=0
    fi
fi

# --- binary size ---------------------------------------------------------------------
size=$(stat -c %s "$bin")
size_mib=$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }')
size_met=$(awk -v s="$size" 'BEGIN { print (s <= 2 * 1048576 ? "yes" : "**no**") }')
file_desc=$(file -b "$bin" 2>/dev/null || echo "?")

load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# The glibc build against the static musl one.
median() { awk -F'\t' -v k="$2" '$1 == k { print $3 }' "$1/medians.tsv"; }
comparison() {
    fmt_ms() { awk -v v="$1" 'BEGIN { if (v == "") print "–"; else printf "%.3f ms", v }'; }
    fmt_kib() { awk -v v="$1" 'BEGIN { if (v == "") print "–"; else printf "%.2f MiB", v / 1024 }'; }
    fmt_size() { [ -n "$1" ] && [ -f "$1" ] && awk -v s="$(stat -c %s "$1")" 'BEGIN { printf "%.2f MiB", s / 1048576 }' || echo "–"; }
    col() { [ -f "$1/medians.tsv" ] && median "$1" "$2"; }
    # name|directory|binary
    local cols=("glibc dynamic|$work/flip|$bin")
    [ "$do_standby" = 1 ] && cols+=("glibc, \`[upgrade] standby = true\`|$work/flip/standby|$bin")
    [ -n "$baseline" ] && cols+=("baseline (\`$(basename "$baseline")\`)|$work/flip/baseline|$baseline")
    [ -n "$static_bin" ] && cols+=("static musl|$work/flip/static|$static_bin")
    [ -n "$static_bin" ] && [ "$do_standby" = 1 ] && cols+=("static musl, \`standby = true\`|$work/flip/staticsb|$static_bin")
    local item
    local also_items=${BENCH_ALSO:-}
    for item in ${also_items//:/ }; do
        cols+=("\`${item%%=*}\`|$work/flip/${item%%=*}|${item#*=}")
    done
    local head="| figure |" rule="|---|" c
    for c in "${cols[@]}"; do head+=" ${c%%|*} |"; rule+="---|"; done
    echo "$head"
    echo "$rule"
    for row in "overhead|1. launch overhead over a direct spawn" "spawn|2. upgrade signal → new child running" \
        "handoff|3. upgrade signal → old child signalled" "failed|4. upgrade signal → failure logged"; do
        local line="| ${row#*|} |"
        for c in "${cols[@]}"; do
            local d=${c#*|}
            line+=" $(fmt_ms "$(col "${d%%|*}" "${row%%|*}")") |"
        done
        echo "$line"
    done
    local rss="| 5. idle VmRSS |" thr="| 5. threads |" sz="| 6. binary size |"
    for c in "${cols[@]}"; do
        local d=${c#*|}
        rss+=" $(fmt_kib "$(col "${d%%|*}" rss)") |"
        thr+=" $(col "${d%%|*}" threads) |"
        sz+=" $(fmt_size "${d#*|}") |"
    done
    echo "$rss"
    echo "$thr"
    echo "$sz"
}

others_note="The glibc build (\`cargo build --release\`)"
if [ -n "$baseline" ]; then
    others_note+="; the baseline \`$baseline\`, an earlier commit's release build (before/after)"
fi
if [ -n "$static_bin" ]; then
    others_note+="; the same sources built for x86_64-unknown-linux-musl, static (what the Debian package ships),"
    others_note+=" cold and with \`[upgrade] standby = true\`"
fi
if [ "$do_standby" = 1 ]; then
    others_note+="; the glibc build again, configured with \`[upgrade] standby = true\` (a successor started"
    others_note+=" ahead of time and woken by the upgrade; its idle RSS counts the standby's too)"
fi
others_note+="."

# --- BENCHMARKS.md -----------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
if [ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    rev="$rev (with uncommitted changes in src/ or Cargo.*)"
fi
{
    cat <<EOF
# Benchmarks

Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs ($cpu), Linux $(uname -r),
$(rustc --version), psflip at commit $rev, release build
(\`opt-level = "s"\`, LTO, one codegen unit, stripped, hot functions first: \`build/psflip-hot.ld\`).
1-minute load average at the start: $load_before; at the end: $load_after.${load_note:+
**Note:** $load_note.}

Latencies are medians of $PSFLIP_BENCH_RUNS interleaved runs (after 3 warm-up runs), memory of
$PSFLIP_BENCH_IDLE_RUNS runs; \`n\` says how many runs went into each figure.

## Summary

| figure | median | target | met? |
|---|---|---|---|
$(cat "$work/flip/summary.md")
| 6. stripped release binary size | $size_mib MiB ($size bytes) | ≤ 2 MB | $size_met |

Launch to exit, for comparison (hyperfine, n = $hf_n): \`psflip -c true.toml\` takes
$hf_psflip ms against $hf_true ms for \`true\` alone (+$hf_over ms, medians).
$hf_floor

## Details

### Latencies and footprint (\`cargo bench --bench flip\`)

$(cat "$work/flip/details.md")

\`smaps_rollup\` of one idle first-generation psflip:

\`\`\`
$(grep -E '^(Rss|Pss|Shared_|Private_|Anonymous)' "$work/flip/smaps_rollup.txt" || true)
\`\`\`

### Launch to exit (hyperfine)

\`psflip -c true.toml\` runs \`cmd = ["true"]\` with the default healthcheck: the child
exits before it is healthy, so psflip exits 1 as soon as it has reaped it (hence \`-i\`).

$(cat "$work/hyperfine.md")

### Binary

\`$bin\`: $size bytes; $file_desc.
$(if [ -n "$static_bin" ] || [ -n "$baseline" ] || [ -n "${BENCH_ALSO:-}" ] || [ "$do_standby" = 1 ]; then cat <<EOT

## Other builds, measured by the same benches in the same run, interleaved

$others_note

$(comparison)
EOT
elif [ -n "$static_note" ]; then printf '\nNo static musl comparison: %s.\n' "$static_note"; fi)
$(if [ -n "$floor_rows" ]; then cat <<EOT

## The floor: programs that do nothing

Each sleeps until killed (\`pause()\` or \`thread::park\`); VmRSS once idle. Most of
an RSS is shared, file-backed pages (the binary and libc, mapped in 64 KiB
fault-around windows as they are touched); only RssAnon is the process's own.

| program | VmRSS | RssAnon | size |
|---|---:|---:|---:|
${floor_rows}
EOT
fi)
$(if [ "$do_grow" = 1 ]; then cat <<EOT

## Cost as the work grows (\`benches/grow.py\`)

$(cat "$work/grow.md")
EOT
fi)
$(if [ "$do_profile" = 1 ]; then cat <<EOT

## Where the time of an upgrade goes

\`benches/profile_upgrade.py\` traces 30 upgrades of psflip supervising \`sleep\` with
\`perf record -a\` (scheduler and syscall tracepoints) and splits each upgrade
signal → new child running into phases. The successor's phases b–e are also what a
first launch costs on top of a direct spawn (figure 1). Tracing adds a little to
every phase: compare phases with one another, not with the targets.

Shipped build:

$(cat "$work/profile.md")
$(if [ -s "$work/profile-static.md" ]; then printf '\nThe static musl build:\n\n'; cat "$work/profile-static.md"; fi)
$(if [ -s "$work/profile-failed.md" ]; then printf '\nFailed upgrades (\`--failed\`: the new child is \`false\`; figure 4), shipped build:\n\n'; cat "$work/profile-failed.md"; fi)
$(if [ -s "$work/profile-standby.md" ]; then printf '\nUpgrades that wake a standby (\`--standby\`: \`[upgrade] standby = true\`), shipped build:\n\n'; cat "$work/profile-standby.md"; fi)
EOT
fi)

## How it is measured

- Everything runs the release binary \`target/release/psflip\`.
- \`benches/flip.rs\` (\`cargo bench --bench flip\`, \`harness = false\`) is multi-call:
  run as \`flip child SOCKET MODE\` it is the supervised child. It sends the datagram
  \`started PID PPID MODE\` to a Unix datagram socket (by path, since psflip closes
  every fd ≥ 3 in its children), exits 1 at once in mode \`fail\`, and otherwise waits
  for SIGTERM, then sends \`term PID\` and exits 0. The harness timestamps every
  datagram and every line psflip writes on stderr with \`std::time::Instant\` on
  receipt, in one reader thread per source.
- Each iteration runs, in an order that rotates from one iteration to the next:
  the child spawned directly (\`std::process::Command\`), the baseline of figure 1;
  psflip with \`[healthcheck.command] cmd = ["true"], after = "0s"\`, timed from the
  spawn of psflip to its child's \`started\` (1), then from the SIGHUP to the new
  child's \`started\` (2) and to the old child's \`term\` (3); psflip with
  \`cmd = [..., "{{ AB "ok" "fail" }}"]\` and \`[healthcheck.alive] timeout = "100ms"\`,
  timed from the SIGHUP to its stderr line \`upgrade failed…\` (4). Each upgrade
  signal comes 400 ms after psflip logged its child healthy (\`PSFLIP_BENCH_PAUSE_MS\`),
  so that it meets an idle psflip, as a real upgrade does: one quiet for longer than
  250 ms, which has given back the pages its start-up mapped and faults in again
  those the upgrade needs (src/effects/resident.rs).
  Figure 1 is median(psflip) − median(direct); the paired difference per iteration
  is in the details. The other builds (\`PSFLIP_BENCH_ALSO\`) run in the same
  iterations: each runs the direct spawn once and every binary's upgrade and failed
  upgrade, in a rotating order, so that all columns share the machine's moments.
- The \`standby\` column is the shipped build again, its three configurations with
  \`[upgrade] standby = true\` added (\`PSFLIP_BENCH_STANDBY=1\`): 400 ms after the
  child is healthy its standby has started (250 ms) and waits. Its figure 5 is
  psflip's VmRSS plus its standby's.
- Figure 5 reads VmRSS and Threads from \`/proc/PID/status\` 1 s after psflip,
  supervising \`sleep 1000\` with \`[healthcheck.alive] timeout = "100ms"\`, logged
  that its child is healthy; and of the successor 1 s after it took over (quiet for over 250 ms, psflip has given back the pages its start-up mapped).
- Figure 6 is \`stat -c %s target/release/psflip\`.
- The harness is a child subreaper: every process psflip starts becomes its child
  once orphaned, all are reaped by pid, and it checks that none is left at the end.
  Nothing asserts on a duration: the benches only measure and print.

To reproduce: \`scripts/bench.sh\` (as root it installs hyperfine and jq from Debian if
missing; it waits up to 15 minutes for the 1-minute load average to drop below
0.5). The latency benches alone: \`cargo build --release && cargo bench --bench flip\`.
EOF
} >"$output"
log "wrote $output"
