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
# metadata document between "--- NAME ---" and "--- end NAME ---" lines,
# mounts vendor-data's cloud-init `mounts` (see apply_mounts), applies
# network-config (netplan v2, see apply_network_config), runs
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

# netplan_flat FILE: flattens the netplan v2 YAML subset cloud-init's
# network-config uses (block mappings and lists, flow lists, quotes,
# comments) into PATH=VALUE lines, e.g.
#   ethernets.eth0.match.macaddress=02:00:00:00:00:01
#   ethernets.eth0.addresses[]=10.0.0.5/24
#   ethernets.eth0.routes[0].via=10.0.0.1
# A top-level "network:" wrapper is dropped.
netplan_flat() {
	awk '
	function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
	function unq(s) {
		s = trim(s)
		if (s ~ /^".*"$/ || s ~ /^\047.*\047$/) s = substr(s, 2, length(s) - 2)
		return s
	}
	function path(   p, i) {
		p = ""
		for (i = 1; i <= n; i++) p = p (name[i] ~ /^\[/ || p == "" ? "" : ".") name[i]
		return p
	}
	function emit(p, v,   parts, c, i) {
		sub(/^network\./, "", p)
		v = trim(v)
		if (v ~ /^\[.*\]$/) {
			c = split(substr(v, 2, length(v) - 2), parts, ",")
			for (i = 1; i <= c; i++) if (trim(parts[i]) != "") print p "[]=" unq(parts[i])
			return
		}
		print p "=" unq(v)
	}
	function key_line(ind, body,   k, v, c, p) {
		while (n > 0 && indent[n] >= ind) n--
		c = index(body, ": ")
		if (c == 0 && body ~ /:$/) c = length(body)
		if (c == 0) return
		k = unq(substr(body, 1, c - 1))
		v = trim(substr(body, c + 1))
		if (v == "") { n++; indent[n] = ind; name[n] = k; item[n] = 0; return }
		p = path()
		emit(p (p == "" ? "" : ".") k, v)
	}
	{
		line = $0
		if (line ~ /^[ \t]*#/ || line ~ /^[ \t]*$/ || line ~ /^(---|\.\.\.)/) next
		sub(/[ \t]+#.*$/, "", line)
		match(line, /^ */)
		ind = RLENGTH
		body = substr(line, ind + 1)
		if (body !~ /^-( |$)/) { key_line(ind, body); next }
		while (n > 0 && (indent[n] > ind || (indent[n] == ind && item[n]))) n--
		body = trim(substr(body, 2))
		p = path()
		if (body == "" || body ~ /^[^"\047\[][^:]*:( |$)/) {
			n++; indent[n] = ind; name[n] = "[" cnt[p]++ "]"; item[n] = 1
			if (body != "") key_line(ind + 2, body)
			next
		}
		emit(p "[]", body)
	}' "$1"
}

# write_udhcpc_script PATH: the udhcpc event script, which sets the leased
# address, the default route and resolv.conf, and reports on the console.
write_udhcpc_script() {
	cat >"$1" <<'EOF'
#!/bin/sh
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set dev "$interface" up
	;;
bound | renew)
	case "$mask" in *.*) mask=$(ipcalc -p "$ip" "$mask" | sed 's/.*=//') ;; esac
	if [ "$(ip -4 -o addr show dev "$interface" | awk '{print $4}')" != "$ip/$mask" ]; then
		ip -4 addr flush dev "$interface"
		ip addr add "$ip/$mask" broadcast + dev "$interface"
	fi
	if [ -n "$router" ]; then
		while ip route del default dev "$interface" 2>/dev/null; do :; done
		# Metric 1024 (as systemd-networkd's DHCP routes): a static default
		# route of network-config, metric 0, stays preferred.
		for r in $router; do ip route add default via "$r" dev "$interface" metric 1024 && break; done
	fi
	# Name servers and search domain are added to what is there (the
	# static ones of network-config).
	[ -n "$domain" ] && ! grep -qs "^search $domain\$" /etc/resolv.conf &&
		echo "search $domain" >>/etc/resolv.conf
	for d in $dns; do
		grep -qs "^nameserver $d\$" /etc/resolv.conf || echo "nameserver $d" >>/etc/resolv.conf
	done
	echo "LIQUIDMETAL-GUEST: dhcp $interface $1 $ip/$mask router ${router:-none}"
	;;
leasefail | nak)
	echo "LIQUIDMETAL-GUEST: dhcp $interface $1"
	;;
esac
exit 0
EOF
	chmod 0755 "$1"
}

# nic_by_mac MAC: the interface whose address is MAC (any case).
nic_by_mac() {
	local want l
	want=$(echo "$1" | tr 'A-F' 'a-f')
	for l in /sys/class/net/*; do
		[ "$(cat "$l/address" 2>/dev/null)" = "$want" ] && { echo "${l##*/}"; return 0; }
	done
	return 1
}

truthy() { case "$1" in true | True | TRUE | yes | on) return 0 ;; esac; return 1; }

# apply_network_config FILE: configures the ethernets of a netplan v2
# network-config: each is matched by match.macaddress (else match.name, else
# its key), optionally renamed (set-name), given its mtu, static addresses,
# gateway4/gateway6, routes and name servers, and with dhcp4 a busybox
# udhcpc client. Every interface reports one "LIQUIDMETAL-GUEST: net" line.
apply_network_config() {
	local flat resolv dhcp key mac i dev n new mtu how a g r to via metric s
	flat=/run/liquidmetal/network-config.flat
	dhcp=""
	mkdir -p /run/liquidmetal
	netplan_flat "$1" >"$flat" || return 1
	val() { awk -v p="ethernets.$key.$1=" 'index($0, p) == 1 { print substr($0, length(p) + 1) }' "$flat"; }
	resolv=""
	for key in $(awk -F. '/^ethernets\./ { k = $2; sub(/=.*/, "", k); sub(/\[.*/, "", k); print k }' "$flat" | sort -u); do
		mac=$(val match.macaddress)
		i=0
		dev=""
		while [ -z "$dev" ] && [ "$i" -lt 50 ]; do
			if [ -n "$mac" ]; then
				dev=$(nic_by_mac "$mac")
			else
				n=$(val match.name)
				[ -e "/sys/class/net/${n:-$key}" ] && dev=${n:-$key}
			fi
			[ -n "$dev" ] || { sleep 0.1; i=$((i + 1)); }
		done
		if [ -z "$dev" ]; then
			echo "LIQUIDMETAL-GUEST: net $key: no interface ${mac:+with MAC $mac}"
			continue
		fi
		new=$(val set-name)
		if [ -n "$new" ] && [ "$new" != "$dev" ]; then
			ip link set dev "$dev" down
			ip link set dev "$dev" name "$new" && dev=$new
		fi
		mtu=$(val mtu)
		[ -n "$mtu" ] && ip link set dev "$dev" mtu "$mtu"
		ip link set dev "$dev" up
		how=""
		for a in $(val 'addresses[]'); do
			ip addr add "$a" dev "$dev" && how="$how static $a"
		done
		for g in $(val gateway4) $(val gateway6); do
			ip route add default via "$g" dev "$dev"
		done
		r=0
		while to=$(val "routes[$r].to") && via=$(val "routes[$r].via") && [ -n "$to$via" ]; do
			metric=$(val "routes[$r].metric")
			# shellcheck disable=SC2086
			ip route add "$to" ${via:+via "$via"} dev "$dev" ${metric:+metric "$metric"} ||
				echo "LIQUIDMETAL-GUEST: net $dev: route $to via $via failed"
			r=$((r + 1))
		done
		for s in $(val 'nameservers.search[]'); do resolv="${resolv}search $s
"; done
		for s in $(val 'nameservers.addresses[]'); do resolv="${resolv}nameserver $s
"; done
		if truthy "$(val dhcp4)"; then
			how="$how dhcp4"
			dhcp="$dhcp $dev"
		fi
		echo "LIQUIDMETAL-GUEST: net $dev ${mac:-$key}${how:- no address}"
	done
	[ -n "$resolv" ] && printf '%s' "$resolv" >/etc/resolv.conf 2>/dev/null
	[ -n "$dhcp" ] && write_udhcpc_script /run/liquidmetal/udhcpc.sh
	for dev in $dhcp; do
		# Up to 10 discovers a second apart, then carry on in the
		# background; -R releases the lease when udhcpc is stopped.
		udhcpc -i "$dev" -s /run/liquidmetal/udhcpc.sh -t 10 -T 1 -b -R \
			-p "/run/liquidmetal/udhcpc.$dev.pid" -x "hostname:$(hostname)"
	done
	return 0
}

# apply_mounts FILE: mounts the entries of cloud-init's `mounts` list in
# FILE (a #cloud-config, or a MIME multipart holding one) written as flow
# lists, one a line: - [ DEVICE, DIR, FSTYPE, OPTIONS, ... ] (DEVICE is a
# virtio-fs tag for FSTYPE virtiofs). Each entry
# reports one "LIQUIDMETAL-GUEST: mount" line.
apply_mounts() {
	local dev dir fstype opts o keep
	awk '
	/^mounts:[ \t]*$/ { in_m = 1; next }
	in_m && /^[^ \t-]/ { in_m = 0 }
	in_m && /^[ \t]*-[ \t]*\[/ {
		l = $0; sub(/^[ \t]*-[ \t]*\[/, "", l); sub(/\][ \t]*$/, "", l)
		out = ""
		while (l != "") {
			sub(/^[ \t]+/, "", l)
			if (l ~ /^"/ && match(l, /^"[^"]*"/)) { v = substr(l, 2, RLENGTH - 2) }
			else if (l ~ /^\047/ && match(l, /^\047[^\047]*\047/)) { v = substr(l, 2, RLENGTH - 2) }
			else { match(l, /^[^,]*/); v = substr(l, 1, RLENGTH); sub(/[ \t]+$/, "", v) }
			l = substr(l, RLENGTH + 1)
			sub(/^[ \t]*,?/, "", l)
			out = out v "|"
		}
		print out
	}' "$1" | while IFS='|' read -r dev dir fstype opts _; do
		[ -n "$dev" ] && [ -n "$dir" ] || continue
		# Devices may appear late; a virtio-fs tag (or other source) is no path.
		case "$dev" in /dev/*) wait_for "$dev" 50 ;; esac
		keep=""
		for o in $(echo "$opts" | tr , ' '); do
			case "$o" in defaults | nofail | auto | noauto | x-systemd.*) ;; *) keep="$keep,$o" ;; esac
		done
		mkdir -p "$dir"
		[ "$fstype" = auto ] && fstype=""
		# shellcheck disable=SC2086
		if mount ${fstype:+-t "$fstype"} ${keep:+-o "${keep#,}"} "$dev" "$dir"; then
			echo "LIQUIDMETAL-GUEST: mount $dev on $dir ok"
		else
			echo "LIQUIDMETAL-GUEST: mount $dev on $dir failed"
		fi
	done
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
		[ -f "$md/vendor-data" ] && apply_mounts "$md/vendor-data"
		if [ -f "$md/network-config" ]; then
			apply_network_config "$md/network-config"
			echo "LIQUIDMETAL-GUEST: network configured"
		fi
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
