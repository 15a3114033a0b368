#!/bin/bash
# PID 1 of the private namespaces a test boots systemd in (see tests/systemd/main.rs
# and /work/shared/REAL-COMPONENTS.md). Usage: pid1.sh DIR, where DIR holds units/
# (mounted over /etc/systemd/system), system.conf and receives console.log.
# It runs as root inside `unshare --pid --fork --mount --uts --ipc --net`.
set -euo pipefail
dir=$1
mount --make-rprivate /
mount -t proc proc /proc
for p in /proc/sys /proc/sysrq-trigger /sys; do
	[ -e "$p" ] || continue
	mount --bind "$p" "$p"
	mount -o remount,bind,ro "$p"
done
# A private /dev: the host's harmless nodes, its own ptys, shm, and the console
# going to a file.
dev=$dir/dev
mkdir -p "$dev"
mount -t tmpfs -o mode=755,nosuid tmpfs "$dev"
for n in null zero full random urandom tty; do
	touch "$dev/$n"
	mount --bind "/dev/$n" "$dev/$n"
done
mkdir "$dev/pts" "$dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$dev/pts"
ln -s pts/ptmx "$dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dev/shm"
ln -s /proc/self/fd "$dev/fd"
ln -s /proc/self/fd/0 "$dev/stdin"
ln -s /proc/self/fd/1 "$dev/stdout"
ln -s /proc/self/fd/2 "$dev/stderr"
touch "$dir/console.log" "$dev/console"
mount --bind "$dir/console.log" "$dev/console"
mount --move "$dev" /dev
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
# The journal stays in memory: /run, or a tmpfs over the host's persistent one.
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mount --bind "$dir/units" /etc/systemd/system
mount --bind "$dir/system.conf" /etc/systemd/system.conf
mkdir -p "$dir/empty"
for g in /lib/systemd/system-generators /usr/lib/systemd/system-generators; do
	if [ -d "$g" ]; then mount --bind "$dir/empty" "$g"; fi
done
# The test directory stays writable (a mount of its own); the rest of / is read-only.
mount --bind "$dir" "$dir"
mount -o remount,bind,ro /
exec env -i container=psflip-test /lib/systemd/systemd --system \
	--unit=psflip-test.target --show-status=no --log-target=journal
