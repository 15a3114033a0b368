#!/bin/sh
# A tiny stand-in for a real service, used by the examples: it says which
# generation it is, exits cleanly on SIGTERM, and reloads nothing.
# Usage: app.sh NAME
name=${1:-app}
echo "$name: started (pid $$, PSFLIP_AB_FLAG=${PSFLIP_AB_FLAG:-a})"
trap 'echo "$name: SIGTERM, shutting down"; exit 0' TERM
trap 'echo "$name: SIGUSR1 received"' USR1
while :; do
  sleep 1 &
  wait $!
done
