#!/usr/bin/env bash
# Print every kernel/system setting that matters for coremq, its current value,
# the value recommended for a target connection count and core count, and whether
# it passes. Read-only. Exit 0 only when every required setting passes.
set -euo pipefail
PROG=check.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/lib.sh
. "$HERE/lib.sh"

usage() {
	cat <<'EOF'
Usage: tuning/check.sh [--json] [options]

Prints a table: SETTING CURRENT RULE RECOMMENDED LEVEL STATUS NOTE.
  LEVEL   required | recommended | optional (latency) | info
  STATUS  PASS | FAIL (required) | WARN (recommended) | OPT (optional, off) | SKIP (n/a)
Exit status: 0 all required settings pass, 1 some required setting fails, 2 usage error.

  --json            one JSON object instead of the table
EOF
	common_usage
}

JSON=0
while (($#)); do
	case $1 in
	-h | --help) usage && exit 0 ;;
	--json) JSON=1 && shift ;;
	*) parse_common_arg "$@" && shift "$CONSUMED" ;;
	esac
done
setup_paths
evaluate_all

json_str() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\t'/ }
	s=${s//$'\n'/ }
	printf '"%s"' "$s"
}

failed=0
for i in "${!R_NAME[@]}"; do
	[[ ${R_STATUS[i]} == FAIL ]] && failed=$((failed + 1))
done

if ((JSON)); then
	printf '{"target":{"connections":%s,"cores":%s,"role":%s,"io_memory":%s,"broker_cpus":%s,"root":%s},' \
		"$CONNECTIONS" "$CORES" "$(json_str "$ROLE")" "$IO_MEMORY" \
		"$(json_str "$(compress_cpulist "$BROKER_CPU_LIST")")" "$(json_str "${ROOT:-/}")"
	printf '"ok":%s,"failed":%s,"settings":[' "$([[ $failed == 0 ]] && echo true || echo false)" "$failed"
	for i in "${!R_NAME[@]}"; do
		((i)) && printf ','
		printf '{"name":%s,"current":%s,"minimum":%s,"recommended":%s,"level":%s,"status":%s,"note":%s}' \
			"$(json_str "${R_NAME[i]}")" "$(json_str "${R_CUR[i]}")" "$(json_str "${R_MIN[i]}")" \
			"$(json_str "${R_REC[i]}")" "$(json_str "${R_LEVEL[i]}")" "$(json_str "${R_STATUS[i]}")" \
			"$(json_str "${R_NOTE[i]}")"
	done
	printf ']}\n'
else
	printf 'coremq tuning check: %s connections, %s cores (CPUs %s), role %s, root %s\n\n' \
		"$CONNECTIONS" "$CORES" "$(compress_cpulist "$BROKER_CPU_LIST")" "$ROLE" "${ROOT:-/}"
	fmt='%-34s %-24s %-26s %-24s %-11s %-6s %s\n'
	# shellcheck disable=SC2059 # the format is a constant
	printf "$fmt" SETTING CURRENT RULE RECOMMENDED LEVEL STATUS NOTE
	for i in "${!R_NAME[@]}"; do
		# shellcheck disable=SC2059
		printf "$fmt" "${R_NAME[i]}" "${R_CUR[i]}" "${R_MIN[i]}" "${R_REC[i]}" "${R_LEVEL[i]}" "${R_STATUS[i]}" "${R_NOTE[i]}"
	done
	echo
	if ((failed)); then
		echo "$failed required setting(s) FAIL. tuning/apply.sh shows the fix (dry run by default)."
	else
		echo "All required settings pass."
	fi
fi
((failed == 0)) || exit 1
