# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=sh
# The PF_* results are read by the scripts that source this file.
# shellcheck disable=SC2034
#
# The flash of the qemu-malta-mipsel MiniProbe (docs/firmware.md, "probeforge-flash 1") for
# busybox ash; the initramfs init and sysupgrade source it. Everything goes through the whole
# disk $PF_FLASH at byte offsets taken from its MBR, so the same code runs on the device
# (/dev/vda, whose partitions need not have device nodes yet) and on a build host against a
# flash file.
#
# Functions print one line to stderr and return non-zero on failure. Results are PF_*
# variables, scratch ones _pf_* (POSIX sh has no "local").

PF_FLASH=${PF_FLASH:-/dev/vda}
PF_PROG=${PF_PROG:-flash}
# Offset of the settings archive in partition 1: after the two 512-byte boot environments.
PF_SETTINGS_OFFSET=65536

pf_error() {
	echo "$PF_PROG: $*" >&2
	return 1
}

# pf_read FILE OFFSET LENGTH: LENGTH bytes of FILE from byte OFFSET, to stdout.
pf_read() {
	dd if="$1" bs=65536 iflag=skip_bytes,count_bytes skip="$2" count="$3" 2>/dev/null
}

# pf_sha256 FILE OFFSET LENGTH: SHA-256 (hex) of that byte range.
pf_sha256() {
	_pf_sum=$(pf_read "$1" "$2" "$3" | sha256sum) || return 1
	echo "${_pf_sum%% *}"
}

# pf_size FILE: its size in bytes (a regular file or a block device).
pf_size() {
	if [ -b "$1" ]; then
		blockdev --getsize64 "$1"
	else
		stat -L -c %s "$1"
	fi
}

# pf_layout: PF_Pn_START and PF_Pn_SIZE (bytes) of partitions 1-4 from the MBR of $PF_FLASH.
pf_layout() {
	[ -r "$PF_FLASH" ] || {
		pf_error "cannot read the flash $PF_FLASH: give the flash device or file in PF_FLASH"
		return 1
	}
	# od prints one decimal word per byte; the MBR is little-endian whatever the CPU is.
	# shellcheck disable=SC2046
	set -- $(pf_read "$PF_FLASH" 0 512 | od -A n -t u1 -v)
	[ $# -eq 512 ] || {
		pf_error "cannot read the partition table of $PF_FLASH"
		return 1
	}
	shift 446
	_pf_n=1
	while [ $_pf_n -le 4 ]; do
		_pf_start=$(($9 + ${10} * 256 + ${11} * 65536 + ${12} * 16777216))
		_pf_length=$((${13} + ${14} * 256 + ${15} * 65536 + ${16} * 16777216))
		if [ "$_pf_start" -eq 0 ] || [ "$_pf_length" -eq 0 ]; then
			pf_error "$PF_FLASH has no partition $_pf_n: it is not a probeforge flash (program it with rig.flash.create_flash)"
			return 1
		fi
		eval "PF_P${_pf_n}_START=$((_pf_start * 512)) PF_P${_pf_n}_SIZE=$((_pf_length * 512))"
		shift 16
		_pf_n=$((_pf_n + 1))
	done
	if [ "$1" != 85 ] || [ "$2" != 170 ]; then
		pf_error "$PF_FLASH has no MBR signature: it is not a probeforge flash"
		return 1
	fi
}

# pf_slot_start SLOT: byte offset of slot a (partition 2) or b (partition 3).
pf_slot_start() {
	case $1 in
	a) echo "$PF_P2_START" ;;
	b) echo "$PF_P3_START" ;;
	*) pf_error "no slot '$1': slots are a and b" ;;
	esac
}

pf_slot_size() {
	case $1 in
	a) echo "$PF_P2_SIZE" ;;
	b) echo "$PF_P3_SIZE" ;;
	*) pf_error "no slot '$1': slots are a and b" ;;
	esac
}

pf_other_slot() {
	if [ "$1" = a ]; then echo b; else echo a; fi
}

# pf_block FILE OFFSET SIZE: check the block of ASCII lines at OFFSET that ends with
# "end <sha256 of the bytes before this line>" and is NUL padded to SIZE bytes (an image
# header, a boot environment). Sets PF_LINES to the lines before "end"; returns 1, silently,
# when the block is damaged or was never written.
pf_block() {
	_pf_raw=$(pf_read "$1" "$2" "$3" | tr -d '\000')
	PF_LINES=''
	_pf_end=
	while IFS= read -r _pf_line; do
		[ -z "$_pf_end" ] || return 1
		case $_pf_line in
		"end "*) _pf_end=${_pf_line#end } ;;
		*) PF_LINES="$PF_LINES$_pf_line
" ;;
		esac
	done <<EOF
$_pf_raw
EOF
	[ -n "$_pf_end" ] || return 1
	_pf_sum=$(printf '%s' "$PF_LINES" | sha256sum)
	[ "${_pf_sum%% *}" = "$_pf_end" ] || return 1
	# tr dropped the NULs: the bytes must also be exactly these lines, then NULs only.
	_pf_length=$((${#PF_LINES} + ${#_pf_end} + 5))
	_pf_sum=$(pf_read "$1" "$2" "$_pf_length" | sha256sum)
	[ "$_pf_sum" = "$(printf '%send %s\n' "$PF_LINES" "$_pf_end" | sha256sum)" ] || return 1
	[ "$(pf_read "$1" $(($2 + _pf_length)) $(($3 - _pf_length)) | tr -d '\000' | wc -c)" -eq 0 ]
}

# pf_number VALUE: a decimal number without leading zeros (ash reads 010 as octal).
pf_number() {
	case $1 in
	0) return 0 ;;
	'' | 0* | *[!0-9]*) return 1 ;;
	esac
}

pf_sha_like() {
	[ ${#1} -eq 64 ] && case $1 in *[!0-9a-f]*) false ;; esac
}

# pf_env_copy N: parse boot-environment copy N (0 or 1) into PF_C_SEQ, PF_C_ACTIVE and
# PF_C_PENDING ("none", "0 -" or "SIZE SHA256"); returns 1 when the copy is not valid.
pf_env_copy() {
	pf_block "$PF_FLASH" $((PF_P1_START + $1 * 512)) 512 || return 1
	PF_C_SEQ='' PF_C_ACTIVE='' PF_C_PENDING=''
	_pf_n=0
	while IFS= read -r _pf_line; do
		_pf_n=$((_pf_n + 1))
		case $_pf_n:$_pf_line in
		"1:probeforge-bootenv 1") ;;
		"2:seq "*) PF_C_SEQ=${_pf_line#seq } ;;
		"3:active a" | "3:active b") PF_C_ACTIVE=${_pf_line#active } ;;
		"4:pending "*) PF_C_PENDING=${_pf_line#pending } ;;
		*) return 1 ;;
		esac
	done <<EOF
${PF_LINES%?}
EOF
	[ $_pf_n -eq 4 ] && pf_number "$PF_C_SEQ" || return 1
	case $PF_C_PENDING in
	none | "0 -") return 0 ;;
	esac
	pf_number "${PF_C_PENDING%% *}" && pf_sha_like "${PF_C_PENDING#* }"
}

# pf_env_load: the boot environment in force (the valid copy with the higher seq) into
# PF_ENV_SEQ, PF_ENV_ACTIVE, PF_ENV_PENDING and PF_ENV_COPY.
pf_env_load() {
	PF_ENV_COPY='' PF_ENV_SEQ='' PF_ENV_ACTIVE='' PF_ENV_PENDING=''
	for _pf_copy in 0 1; do
		pf_env_copy $_pf_copy || continue
		if [ -z "$PF_ENV_COPY" ] || [ "$PF_C_SEQ" -gt "$PF_ENV_SEQ" ]; then
			PF_ENV_COPY=$_pf_copy PF_ENV_SEQ=$PF_C_SEQ
			PF_ENV_ACTIVE=$PF_C_ACTIVE PF_ENV_PENDING=$PF_C_PENDING
		fi
	done
	[ -n "$PF_ENV_COPY" ] || pf_error "no valid boot environment on $PF_FLASH: program the flash again (rig.flash.install_image)"
}

# pf_env_write ACTIVE PENDING: a new environment (seq + 1) into the copy not in force, in one
# 512-byte write: torn by a power cut, it leaves the previous environment in force.
pf_env_write() {
	if [ -n "$PF_ENV_COPY" ]; then
		_pf_seq=$((PF_ENV_SEQ + 1)) _pf_copy=$((1 - PF_ENV_COPY))
	else
		_pf_seq=1 _pf_copy=0
	fi
	_pf_body="probeforge-bootenv 1
seq $_pf_seq
active $1
pending $2
"
	_pf_sum=$(printf '%s' "$_pf_body" | sha256sum)
	printf '%send %s\n' "$_pf_body" "${_pf_sum%% *}" |
		dd of="$PF_FLASH" bs=512 count=1 seek=$((PF_P1_START / 512 + _pf_copy)) \
			iflag=fullblock conv=notrunc,sync,fsync 2>/dev/null || {
		pf_error "writing the boot environment to $PF_FLASH failed"
		return 1
	}
	sync
	if ! pf_env_load || [ "$PF_ENV_SEQ" != "$_pf_seq" ]; then
		pf_error "the boot environment written to $PF_FLASH does not read back"
		return 1
	fi
}

# pf_settings_write ARCHIVE: the settings archive into partition 1; prints "SIZE SHA256",
# the value for "pending".
pf_settings_write() {
	_pf_size=$(pf_size "$1") || return 1
	_pf_room=$((PF_P1_SIZE - PF_SETTINGS_OFFSET))
	[ "$_pf_size" -le "$_pf_room" ] || {
		pf_error "the settings archive is $_pf_size bytes, partition 1 holds $_pf_room: keep fewer files (/etc/sysupgrade.conf) or use -n"
		return 1
	}
	_pf_want=$(sha256sum <"$1") || return 1
	dd if="$1" of="$PF_FLASH" bs=512 seek=$(((PF_P1_START + PF_SETTINGS_OFFSET) / 512)) \
		conv=notrunc,fsync 2>/dev/null || {
		pf_error "writing the settings archive to $PF_FLASH failed"
		return 1
	}
	sync
	pf_flush
	[ "$(pf_sha256 "$PF_FLASH" $((PF_P1_START + PF_SETTINGS_OFFSET)) "$_pf_size")" = "${_pf_want%% *}" ] || {
		pf_error "the settings archive written to $PF_FLASH does not read back"
		return 1
	}
	echo "$_pf_size ${_pf_want%% *}"
}

# pf_settings_read SIZE SHA256 OUT: the settings archive named by "pending" into OUT.
pf_settings_read() {
	pf_read "$PF_FLASH" $((PF_P1_START + PF_SETTINGS_OFFSET)) "$1" >"$3" || return 1
	_pf_sum=$(sha256sum <"$3")
	[ "${_pf_sum%% *}" = "$2" ] || {
		pf_error "the settings archive on $PF_FLASH does not match its boot environment"
		return 1
	}
}

# pf_flush: drop the kernel's cached blocks of a flash device, so that a read-back reads
# the medium and not the page cache the write went through.
pf_flush() {
	[ ! -b "$PF_FLASH" ] || blockdev --flushbufs "$PF_FLASH" 2>/dev/null || true
}

# pf_image_header FILE OFFSET: parse and check the header of the image at OFFSET of FILE
# (docs/firmware.md, "probeforge-firmware 1") into PF_IMG_BOARD, PF_IMG_VERSION,
# PF_IMG_BUILD, PF_IMG_HOST, PF_IMG_PARTS ("NAME OFFSET SIZE SHA256" lines), PF_IMG_SIZE.
pf_image_header() {
	_pf_first=$(pf_read "$1" "$2" 64 | tr -d '\000' | head -n 1)
	case $_pf_first in
	"probeforge-firmware 1") ;;
	"probeforge-firmware "*)
		pf_error "$1 has format '$_pf_first'; this device reads 'probeforge-firmware 1': use an image of the same release"
		return 1
		;;
	*)
		pf_error "$1 is not a probeforge image (bad magic): give a probeforge-*-sysupgrade.bin file"
		return 1
		;;
	esac
	pf_block "$1" "$2" 4096 || {
		pf_error "$1: header hash mismatch (the header was altered or damaged): copy or download the image again"
		return 1
	}
	PF_IMG_BOARD='' PF_IMG_VERSION='' PF_IMG_BUILD='' PF_IMG_HOST='' PF_IMG_PARTS='' PF_IMG_SIZE=4096
	_pf_n=0
	_pf_names=
	while IFS= read -r _pf_line; do
		_pf_n=$((_pf_n + 1))
		case $_pf_n:$_pf_line in
		1:*) ;;
		"2:board "*) PF_IMG_BOARD=${_pf_line#board } ;;
		"3:version "*) PF_IMG_VERSION=${_pf_line#version } ;;
		"4:build "*) PF_IMG_BUILD=${_pf_line#build } ;;
		"5:host "*) PF_IMG_HOST=${_pf_line#host } ;;
		*:"part "*)
			# shellcheck disable=SC2086
			set -- ${_pf_line#part }
			if [ $# -ne 4 ] || ! pf_number "$2" || ! pf_number "$3" || ! pf_sha_like "$4" ||
				[ $(($2 % 4096)) -ne 0 ] || [ "$2" -lt "$PF_IMG_SIZE" ]; then
				pf_error "image header line $_pf_n '$_pf_line' is malformed: rebuild the image"
				return 1
			fi
			_pf_names="$_pf_names $1"
			PF_IMG_PARTS="$PF_IMG_PARTS$1 $2 $3 $4
"
			PF_IMG_SIZE=$(($2 + $3))
			;;
		*)
			pf_error "image header line $_pf_n '$_pf_line' is unexpected: rebuild the image"
			return 1
			;;
		esac
	done <<EOF
${PF_LINES%?}
EOF
	[ "$_pf_names" = " kernel initramfs rootfs host" ] || {
		pf_error "image parts are '${_pf_names# }', expected 'kernel initramfs rootfs host': rebuild the image"
		return 1
	}
	for _pf_field in "$PF_IMG_BOARD" "$PF_IMG_VERSION" "$PF_IMG_BUILD" "$PF_IMG_HOST"; do
		case $_pf_field in
		'' | *[!A-Za-z0-9._+~-]*)
			pf_error "image header field '$_pf_field' is malformed: rebuild the image"
			return 1
			;;
		esac
	done
}

# pf_image_verify FILE OFFSET: the header as pf_image_header, the image inside FILE and
# every part's SHA-256.
pf_image_verify() {
	_pf_have=
	[ -b "$1" ] || _pf_have=$(($(pf_size "$1") - $2))
	if [ -n "$_pf_have" ] && [ "$_pf_have" -lt 4096 ]; then
		pf_error "$1 is truncated: $_pf_have bytes, shorter than the 4096-byte header of a probeforge image: copy or download the image again"
		return 1
	fi
	pf_image_header "$1" "$2" || return 1
	if [ -n "$_pf_have" ] && [ "$_pf_have" -lt "$PF_IMG_SIZE" ]; then
		pf_error "$1 is truncated: $_pf_have bytes, its header says $PF_IMG_SIZE: copy or download the image again"
		return 1
	fi
	while read -r _pf_name _pf_offset _pf_length _pf_want; do
		[ -n "$_pf_name" ] || continue
		[ "$(pf_sha256 "$1" $(($2 + _pf_offset)) "$_pf_length")" = "$_pf_want" ] || {
			pf_error "$1: part $_pf_name hash mismatch (SHA-256 differs from the header, the image is damaged): copy or download the image again"
			return 1
		}
	done <<EOF
$PF_IMG_PARTS
EOF
}

# pf_overlay_wipe DIR: empty upper/ and work/ of the overlay partition mounted on DIR.
pf_overlay_wipe() {
	rm -rf "$1/upper" "$1/work" && mkdir -p "$1/upper" "$1/work" && sync
}

# pf_settings_restore ARCHIVE ROOT: put the kept files of a settings archive into the
# mounted root ROOT (the fresh overlay). local.tar holds the files changed on the device:
# they win. image.tar holds kept files that came with the previous image: they only fill
# gaps, so that a newer image's credentials and keys are not masked by the old ones.
pf_settings_restore() {
	_pf_root=$2
	_pf_tmp=$(mktemp -d) || return 1
	if ! tar -xzf "$1" -C "$_pf_tmp" ||
		[ "$(cat "$_pf_tmp/settings" 2>/dev/null)" != "probeforge-settings 1" ]; then
		rm -rf "$_pf_tmp"
		pf_error "the settings archive is not a probeforge-settings 1 archive: nothing restored"
		return 1
	fi
	_pf_ok=1
	[ ! -f "$_pf_tmp/local.tar" ] || tar -xf "$_pf_tmp/local.tar" -C "$_pf_root" || _pf_ok=0
	if [ -f "$_pf_tmp/image.tar" ]; then
		set --
		while IFS= read -r _pf_member; do
			[ -n "$_pf_member" ] || continue
			[ -e "$_pf_root/$_pf_member" ] || [ -L "$_pf_root/$_pf_member" ] ||
				set -- "$@" "$_pf_member"
		done <<EOF
$(tar -tf "$_pf_tmp/image.tar")
EOF
		[ $# -eq 0 ] || tar -xf "$_pf_tmp/image.tar" -C "$_pf_root" "$@" || _pf_ok=0
	fi
	rm -rf "$_pf_tmp"
	sync
	[ $_pf_ok -eq 1 ] || pf_error "some kept files could not be restored"
}
