#!/usr/bin/env bash
# Apply the settings check.sh reports as failing. Dry run by default: prints every
# change and touches nothing. With --yes it writes the live values, /etc/sysctl.d,
# a systemd drop-in for the coremq unit, and saves every previous value so that
# tuning/revert.sh --yes restores them byte for byte.
set -euo pipefail
PROG=apply.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/lib.sh
. "$HERE/lib.sh"

usage() {
	cat <<'EOF'
Usage: tuning/apply.sh [--dry-run | --yes] [--state-dir DIR] [options]

Applies what tuning/check.sh reports as FAIL or WARN (required and recommended
settings; optional latency settings only with --latency). Never lowers a limit
that is already high enough.
  --dry-run         print the plan only (the default)
  --yes             apply it; previous values go to the state directory
  --state-dir DIR   where previous values are kept (default ROOT/var/lib/coremq-tuning)
EOF
	common_usage
}

YES=0
STATE=""
while (($#)); do
	case $1 in
	-h | --help) usage && exit 0 ;;
	--yes) YES=1 && shift ;;
	--dry-run) YES=0 && shift ;;
	--state-dir)
		(($# >= 2)) || die "--state-dir needs a value"
		STATE=$2 && shift 2
		;;
	*) parse_common_arg "$@" && shift "$CONSUMED" ;;
	esac
done
setup_paths
evaluate_all
[[ -n $STATE ]] || STATE=$(state_dir_default)

# --- build the plan from the evaluated rows ---------------------------------
LIVE_PATH=() LIVE_VALUE=() LIVE_DESC=()
FILE_PATH=() FILE_BODY=()
SYSCTL_LINES=() DROPIN_LINES=() PAM_LINES=() TMPFILES_LINES=() IRQB_LINES=() UNFIXED=() NOTES=()

applies() {
	local i=$1
	case ${R_STATUS[i]} in
	FAIL | WARN) [[ ${R_LEVEL[i]} != info ]] ;;
	OPT) ((LATENCY)) ;;
	*) return 1 ;;
	esac
}

header() {
	printf '# Written by coremq tuning/apply.sh for %s connections, %s cores, role %s.\n' \
		"$CONNECTIONS" "$CORES" "$ROLE"
	printf '# Why: tuning/README.md. Undo: tuning/revert.sh --yes\n'
}

for i in "${!R_NAME[@]}"; do
	applies "$i" || continue
	kind=${R_KIND[i]} target=${R_TARGET[i]} value=${R_VALUE[i]}
	case $kind in
	none)
		UNFIXED+=("${R_NAME[i]}: ${R_NOTE[i]}")
		;;
	sysctl)
		LIVE_PATH+=("$(sysctl_file "$target")") LIVE_VALUE+=("$value")
		LIVE_DESC+=("$(printf 'sysctl %-36s %s -> %s' "$target" "${R_CUR[i]}" "$value")")
		SYSCTL_LINES+=("$target = $value")
		;;
	sysfs)
		for p in $target; do
			LIVE_PATH+=("$p") LIVE_VALUE+=("$value")
			LIVE_DESC+=("$(printf 'write  %s: %s -> %s' "$(shown "$p")" "$(select_value "$(read_value "$p")")" "$value")")
		done
		if [[ -n ${R_PERSIST[i]} ]]; then
			TMPFILES_LINES+=("${R_PERSIST[i]}")
		else
			NOTES+=("${R_NAME[i]}: the live change does not survive a reboot (irqbalance drop-in or a boot script keeps it)")
		fi
		;;
	systemd)
		DROPIN_LINES+=("$target=$value")
		;;
	pam)
		# limits.conf counts memlock in KiB.
		[[ $target == memlock ]] && value=$((value / 1024))
		PAM_LINES+=("$RUN_USER soft $target $value" "$RUN_USER hard $target $value")
		NOTES+=("${R_NAME[i]}: the limits.d entry takes effect at the next login of '$RUN_USER' (a running process keeps its limits; prlimit --pid can raise them)")
		;;
	irqbalance)
		IRQB_LINES+=("Environment=IRQBALANCE_BANNED_CPULIST=$target")
		;;
	esac
done

add_file() { FILE_PATH+=("$1") FILE_BODY+=("$2"); }

if ((${#SYSCTL_LINES[@]})); then
	add_file "$ETC/sysctl.d/90-coremq.conf" "$(header)
$(printf '%s\n' "${SYSCTL_LINES[@]}")"
fi
if ((${#DROPIN_LINES[@]})); then
	add_file "$ETC/systemd/system/$UNIT.service.d/90-coremq-limits.conf" "$(header)
[Service]
$(printf '%s\n' "${DROPIN_LINES[@]}")"
fi
if ((${#PAM_LINES[@]})); then
	add_file "$ETC/security/limits.d/90-coremq.conf" "$(header)
# For brokers started from a login shell; a systemd unit sets its own limits.
$(printf '%s\n' "${PAM_LINES[@]}")"
fi
if ((${#TMPFILES_LINES[@]})); then
	add_file "$ETC/tmpfiles.d/coremq.conf" "$(header)
# Re-applied at every boot by systemd-tmpfiles.
$(printf '%s\n' "${TMPFILES_LINES[@]}")"
fi
if ((${#IRQB_LINES[@]})); then
	add_file "$ETC/systemd/system/irqbalance.service.d/90-coremq.conf" "$(header)
# Keep irqbalance from moving interrupts onto the broker's CPUs.
[Service]
$(printf '%s\n' "${IRQB_LINES[@]}")"
fi

# --- print the plan ----------------------------------------------------------
printf 'coremq tuning plan: %s connections, %s cores, role %s, root %s\n' \
	"$CONNECTIONS" "$CORES" "$ROLE" "${ROOT:-/}"
if ((${#LIVE_PATH[@]} + ${#FILE_PATH[@]} == 0)); then
	if ((${#UNFIXED[@]})); then
		echo "Nothing this script can change."
	else
		echo "Nothing to change: every applicable setting already meets the target."
	fi
	for u in "${UNFIXED[@]}"; do echo "  not fixable by this script: $u"; done
	exit 0
fi
if ((${#LIVE_PATH[@]})); then
	echo "Live kernel changes (take effect now):"
	for d in "${LIVE_DESC[@]}"; do echo "  $d"; done
fi
if ((${#FILE_PATH[@]})); then
	echo "Files (survive reboots):"
	for j in "${!FILE_PATH[@]}"; do
		state=new
		[[ -e ${FILE_PATH[j]} ]] && state="replace, previous copy kept"
		printf '  file   %s (%s)\n' "$(shown "${FILE_PATH[j]}")" "$state"
		while IFS= read -r line; do printf '         | %s\n' "$line"; done <<<"${FILE_BODY[j]}"
	done
fi
if ((${#UNFIXED[@]})); then
	echo "Not fixable by this script:"
	for u in "${UNFIXED[@]}"; do echo "  $u"; done
fi
if ((${#NOTES[@]})); then
	echo "Notes:"
	for u in "${NOTES[@]}"; do echo "  $u"; done
fi
if ((!YES)); then
	echo "Dry run: nothing was changed. Re-run with --yes to apply; tuning/revert.sh --yes undoes it."
	exit 0
fi

# --- apply, recording every previous value first ------------------------------
if [[ -z $ROOT && $EUID -ne 0 ]]; then die "--yes on the real system needs root"; fi
if [[ -e $STATE/manifest ]]; then
	die "a previous apply is recorded in $STATE: run tuning/revert.sh --yes first"
fi
for p in "${LIVE_PATH[@]}" "${FILE_PATH[@]}"; do
	allowed_target "$p" || die "refusing to write outside the target root: $p"
done

# Create the state directory, remembering which parents we made so revert removes them.
missing=()
d=$STATE
while [[ ! -d $d ]]; do
	missing=("$d" "${missing[@]}")
	d=$(dirname "$d")
done
for d in "${missing[@]}"; do mkdir -m 0700 "$d"; done
mkdir -p "$STATE/files"
MANIFEST=$STATE/manifest
: >"$MANIFEST"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$MANIFEST"; }
for d in "${missing[@]}"; do record sdir - "$d"; done
NBACK=0

failed_write() {
	printf '%s: error: %s\nChanges made so far are recorded: tuning/revert.sh --yes%s undoes them.\n' \
		"$PROG" "$1" "${ROOT:+ --root $ROOT}" >&2
	exit 1
}

for j in "${!LIVE_PATH[@]}"; do
	p=${LIVE_PATH[j]}
	[[ -f $p ]] || failed_write "$p does not exist"
	NBACK=$((NBACK + 1))
	cat -- "$p" >"$STATE/files/$NBACK"
	record live "$NBACK" "$p"
	kernel_write "$p" "${LIVE_VALUE[j]}" || failed_write "writing '${LIVE_VALUE[j]}' to $p failed"
done

for j in "${!FILE_PATH[@]}"; do
	p=${FILE_PATH[j]}
	if [[ -e $p ]]; then
		NBACK=$((NBACK + 1))
		cp -p -- "$p" "$STATE/files/$NBACK"
		record file "$NBACK" "$p"
	else
		missing=()
		d=$(dirname "$p")
		while [[ ! -d $d ]]; do
			missing=("$d" "${missing[@]}")
			d=$(dirname "$d")
		done
		for d in "${missing[@]}"; do
			mkdir -m 0755 "$d" || failed_write "cannot create $d"
			record dir - "$d"
		done
		record new - "$p"
	fi
	printf '%s\n' "${FILE_BODY[j]}" >"$p" || failed_write "cannot write $p"
	chmod 0644 "$p"
done

if [[ -z $ROOT && -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
	systemctl daemon-reload || note "systemctl daemon-reload failed; run it by hand"
	echo "Restart the broker to pick up its new limits: systemctl restart $UNIT"
fi
echo "Applied. Previous values saved in $STATE. Verify: tuning/check.sh; undo: tuning/revert.sh --yes${ROOT:+ --root $ROOT}"
