#!/usr/bin/env bash
# Undo tuning/apply.sh --yes: restore every saved value byte for byte, remove the
# files and directories it created, then forget the saved state. Dry run by default.
set -euo pipefail
PROG=revert.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/lib.sh
. "$HERE/lib.sh"

usage() {
	cat <<'EOF'
Usage: tuning/revert.sh [--dry-run | --yes] [--root DIR] [--proc-sys DIR] [--state-dir DIR]

  --dry-run         print what would be restored (the default)
  --yes             restore it and delete the saved state
  --root DIR        the root apply.sh was given (default /)
  --proc-sys DIR    the sysctl directory apply.sh was given
  --state-dir DIR   the state directory apply.sh was given (default ROOT/var/lib/coremq-tuning)
EOF
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
	--root | --proc-sys) parse_common_arg "$@" && shift "$CONSUMED" ;;
	*) die "unknown option '$1' (see --help)" ;;
	esac
done
setup_paths
[[ -n $STATE ]] || STATE=$(state_dir_default)
MANIFEST=$STATE/manifest

if [[ ! -f $MANIFEST ]]; then
	echo "Nothing to revert: no saved state in $STATE."
	exit 0
fi

KIND=() NUM=() TARGET=()
while IFS=$'\t' read -r kind num path; do
	case $kind in
	live | file | new | dir | sdir) ;;
	*) die "corrupt manifest line in $MANIFEST: '$kind $num $path'" ;;
	esac
	if [[ $kind != sdir ]]; then
		allowed_target "$path" || die "manifest names a path outside the target root: $path"
	fi
	if [[ $kind == live || $kind == file ]]; then
		[[ $num =~ ^[0-9]+$ && -f $STATE/files/$num ]] || die "saved copy $num of $path is missing from $STATE"
	fi
	KIND+=("$kind") NUM+=("$num") TARGET+=("$path")
done <"$MANIFEST"

echo "Restoring what apply.sh changed (root ${ROOT:-/}), newest first:"
for ((i = ${#KIND[@]} - 1; i >= 0; i--)); do
	p=${TARGET[i]}
	case ${KIND[i]} in
	live) printf '  restore %s: %s\n' "$(shown "$p")" "$(read_value "$STATE/files/${NUM[i]}")" ;;
	file) printf '  restore %s (previous copy)\n' "$(shown "$p")" ;;
	new) printf '  remove  %s\n' "$(shown "$p")" ;;
	dir) printf '  rmdir   %s (if empty)\n' "$(shown "$p")" ;;
	esac
done
if ((!YES)); then
	echo "Dry run: nothing was changed. Re-run with --yes to restore."
	exit 0
fi
if [[ -z $ROOT && $EUID -ne 0 ]]; then die "--yes on the real system needs root"; fi

errors=0
for ((i = ${#KIND[@]} - 1; i >= 0; i--)); do
	p=${TARGET[i]} saved=$STATE/files/${NUM[i]}
	case ${KIND[i]} in
	live)
		orig=$(<"$saved")
		if [[ $orig =~ \[([^]]+)\] ]]; then
			# sysfs "select" file: write back the word that was selected.
			kernel_write "$p" "${BASH_REMATCH[1]}" || { note "cannot restore $p" && errors=$((errors + 1)); }
		else
			cat -- "$saved" >"$p" || { note "cannot restore $p" && errors=$((errors + 1)); }
		fi
		;;
	file) cp -p -- "$saved" "$p" || { note "cannot restore $p" && errors=$((errors + 1)); } ;;
	new) rm -f -- "$p" ;;
	dir) rmdir -- "$p" 2>/dev/null || note "kept $p: not empty" ;;
	esac
done
if ((errors)); then
	note "$errors value(s) could not be restored; saved state kept in $STATE"
	exit 1
fi

rm -f -- "$STATE"/files/* "$MANIFEST"
rmdir -- "$STATE/files"
for ((i = ${#KIND[@]} - 1; i >= 0; i--)); do
	[[ ${KIND[i]} == sdir ]] && { rmdir -- "${TARGET[i]}" 2>/dev/null || true; }
done
if [[ -d $STATE ]]; then rmdir -- "$STATE" 2>/dev/null || note "kept $STATE: not empty"; fi

if [[ -z $ROOT && -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
	systemctl daemon-reload || note "systemctl daemon-reload failed; run it by hand"
fi
echo "Reverted."
