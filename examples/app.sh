#!/bin/sh
# A tiny stand-in for a real service, used by the examples: it says which
# generation it is, exits cleanly on SIGTERM (and Ctrl-C), and reloads nothing.
# Usage: app.sh NAME [MARKER]
# With MARKER, it creates that file once it is up and removes it when it exits
# (examples/healthcheck_command.toml checks for it).
name=${1:-app}
marker=${2:-}
echo "$name: started (pid $$, PSFLIP_AB_FLAG=${PSFLIP_AB_FLAG:-a})"
trap '[ -z "$marker" ] || rm -f "$marker"' EXIT
trap 'echo "$name: SIGTERM, shutting down"; exit 0' TERM
trap 'echo "$name: SIGINT, shutting down"; exit 0' INT
trap 'echo "$name: SIGUSR1 received"' USR1
[ -z "$marker" ] || : > "$marker"
while :; do
  sleep 1 &
  wait $!
done
