#!/bin/sh
# Mutation score of the protocol machine (src/machine/, without its tests) and
# of the restart watcher (src/watch.rs), against the unit tests and the
# simulation (tests/sim). Results in mutants.out/ (gitignored); the score is
# recorded in TESTING.md.
#
#   scripts/mutants.sh                 # the whole run (hours on 2 busy cores; in a
#                                      # random order, so a cut-short run is a fair sample)
#   scripts/mutants.sh --iterate       # only the mutants not caught last time
#   scripts/mutants.sh -F 'stop.rs'    # any extra cargo-mutants arguments
#
# The library's effects:: tests are skipped: they run real processes, cannot see
# a machine mutant, and one (fd numbers across fork) is flaky under load.
# The simulation runs fewer seeds per mutant than its default (10000), to keep
# each mutant fast; PSFLIP_SIM_SEEDS overrides it.
set -eu
cd "$(dirname "$0")/.."

export PSFLIP_SIM_SEEDS="${PSFLIP_SIM_SEEDS:-1000}"
# No debug info: each mutant is a rebuild, and nothing here needs a debugger.
export CARGO_PROFILE_DEV_DEBUG=0
export CARGO_PROFILE_TEST_DEBUG=0
# One build directory across runs: the dependencies are built once, and a rerun
# (`--iterate`, `-F`) only rebuilds psflip.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/mutants-build}"

exec nice cargo mutants \
    --jobs 1 \
    --shuffle \
    --file 'src/machine/**/*.rs' \
    --exclude src/machine/tests.rs \
    --file src/watch.rs \
    --minimum-test-timeout 60 \
    --cargo-arg=--lib --cargo-arg=--test=sim \
    --output "${MUTANTS_OUT:-.}" \
    "$@" \
    -- -- --skip effects::
