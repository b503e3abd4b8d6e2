#!/bin/sh
# Init of the Liquid Metal test guest (busybox). The same script is /init of
# the initrd and /sbin/init of the root image.
#
# As /init of the initrd (the file /etc/liquidmetal-initrd exists) it loads
# the kernel modules listed in /etc/liquidmetal/modules, then mounts the root
# device (root= on the kernel command line, else /dev/vda when present and
# not the cidata disk) and switches to its /sbin/init. Without a usable root
# it carries on as the guest itself.
#
# As the guest it mounts the cloud-init NoCloud disk (label cidata or
# CIDATA, iso9660 or vfat), prints "LIQUIDMETAL-GUEST: booted", prints each
# metadata document between "--- NAME ---" and "--- end NAME ---" lines, runs
# user-data when it starts with "#!", and then stays up.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { echo "liquidmetal-init: $*"; }

mounted() { grep -qs " $1 " /proc/mounts; }

mount_basics() {
	mkdir -p /proc /sys /dev /run /tmp
	[ -e /proc/self ] || mount -t proc proc /proc
	mounted /sys || mount -t sysfs sysfs /sys
	if ! mounted /dev; then
		mount -t devtmpfs devtmpfs /dev || { mount -t tmpfs -o mode=0755 tmpfs /dev && mdev -s; }
	fi
	mounted /run || mount -t tmpfs -o mode=0755 tmpfs /run
	mounted /tmp || mount -t tmpfs tmpfs /tmp
	# Booted from a root disk without an initrd, init may have no console.
	exec </dev/console >/dev/console 2>&1
}

cmdline_arg() { # cmdline_arg NAME: the value of NAME= on the kernel command line
	for a in $(cat /proc/cmdline); do
		case "$a" in "$1"=*) echo "${a#*=}"; return 0 ;; esac
	done
	return 1
}

load_modules() {
	[ -f /etc/liquidmetal/modules ] || return 0
	loaded=""
	while read -r m; do
		[ -n "$m" ] || continue
		name=$(basename "$m" .ko | tr - _)
		[ -d "/sys/module/$name" ] && continue
		if insmod "/lib/modules/$(uname -r)/$m"; then
			loaded="$loaded $name"
		else
			say "insmod $m failed"
		fi
	done </etc/liquidmetal/modules
	say "loaded modules:$loaded"
}

# wait_for PATH TENTHS: wait up to TENTHS tenths of a second for PATH.
wait_for() {
	i=0
	while [ ! -e "$1" ] && [ "$i" -lt "$2" ]; do
		sleep 0.1
		i=$((i + 1))
	done
	[ -e "$1" ]
}

# resolve_dev SPEC: a device path for /dev/X, LABEL=X or UUID=X.
resolve_dev() {
	case "$1" in
	/dev/*) echo "$1" ;;
	*=*) findfs "$1" 2>/dev/null ;;
	*) return 1 ;;
	esac
}

try_switch_root() {
	root=$(cmdline_arg root)
	if [ -n "$root" ]; then
		i=0
		dev=$(resolve_dev "$root")
		while { [ -z "$dev" ] || [ ! -b "$dev" ]; } && [ "$i" -lt 100 ]; do
			sleep 0.1
			i=$((i + 1))
			dev=$(resolve_dev "$root")
		done
		if [ -z "$dev" ] || [ ! -b "$dev" ]; then
			say "root device $root did not appear"
			return 1
		fi
	else
		[ -e /sys/block/vda ] || return 1
		wait_for /dev/vda 20 || return 1
		dev=/dev/vda
		for l in cidata CIDATA; do
			if [ "$(findfs "LABEL=$l" 2>/dev/null)" = "$dev" ]; then
				say "$dev is the cidata disk, not a root disk"
				return 1
			fi
		done
	fi
	opts=rw
	grep -qw ro /proc/cmdline && opts=ro
	fstype=$(cmdline_arg rootfstype) && fstype="-t $fstype"
	mkdir -p /newroot
	# shellcheck disable=SC2086
	if ! mount $fstype -o "$opts" "$dev" /newroot; then
		say "cannot mount $dev"
		return 1
	fi
	if [ ! -x /newroot/sbin/init ] && [ ! -L /newroot/sbin/init ]; then
		say "$dev has no /sbin/init"
		umount /newroot
		return 1
	fi
	say "switching to the root filesystem on $dev ($opts)"
	for m in /dev /proc /sys /run; do
		if [ -d "/newroot$m" ]; then mount --move "$m" "/newroot$m"; else umount -l "$m"; fi
	done
	exec switch_root /newroot /sbin/init
}

find_cidata() { # prints the device of the cidata disk, waiting up to 10 s
	i=0
	while [ "$i" -lt 50 ]; do
		for l in cidata CIDATA; do
			d=$(findfs "LABEL=$l" 2>/dev/null) && [ -b "$d" ] && { echo "$d"; return 0; }
		done
		sleep 0.2
		i=$((i + 1))
	done
	return 1
}

print_doc() { # print_doc NAME FILE
	echo "--- $1 ---"
	cat "$2"
	[ -n "$(tail -c 1 "$2")" ] && echo
	echo "--- end $1 ---"
}

guest_main() {
	say "running as the guest (kernel $(uname -r))"
	ip link set lo up 2>/dev/null
	for l in /sys/class/net/*; do
		n=${l##*/}
		[ "$n" = lo ] || ip link set "$n" up 2>/dev/null
	done
	md=/run/cidata
	mkdir -p "$md"
	dev=$(find_cidata)
	if [ -n "$dev" ] &&
		{ mount -t iso9660 -o ro "$dev" "$md" 2>/dev/null ||
			mount -t vfat -o ro "$dev" "$md" 2>/dev/null ||
			mount -o ro "$dev" "$md"; }; then
		say "cidata disk $dev mounted on $md"
	else
		say "no cidata disk found"
		md=""
	fi
	if [ -n "$md" ] && [ -f "$md/meta-data" ]; then
		h=$(sed -n 's/^ *local[-_]hostname: *["'\'']*\([^"'\'' ]*\).*/\1/p' "$md/meta-data" | head -n 1)
		[ -n "$h" ] && hostname "$h"
	fi
	echo "LIQUIDMETAL-GUEST: booted"
	if [ -n "$md" ]; then
		for f in meta-data user-data vendor-data network-config; do
			[ -f "$md/$f" ] && print_doc "$f" "$md/$f"
		done
		if [ -f "$md/user-data" ] && [ "$(head -c 2 "$md/user-data")" = "#!" ]; then
			cp "$md/user-data" /run/user-data
			chmod 0755 /run/user-data
			say "running user-data"
			/run/user-data
			echo "LIQUIDMETAL-GUEST: user-data exited $?"
		fi
	fi
	say "guest up; idling"
	while :; do
		sleep 3600
	done
}

mount_basics
if [ -f /etc/liquidmetal-initrd ]; then
	say "initrd started (kernel $(uname -r))"
	load_modules
	try_switch_root
	say "no root filesystem; the initrd is the guest"
else
	say "started from the root filesystem"
fi
guest_main
