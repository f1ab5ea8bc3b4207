# shellcheck shell=bash disable=SC2034,SC2153
# (SC2034/SC2153: variables are set or used by the scripts that source this file)
# Shared by check.sh, apply.sh and revert.sh: sourced, never executed.
#
# One evaluation (evaluate_all) feeds both the check table and the apply plan, so
# apply.sh changes exactly what check.sh reports as failing. Every number below is
# explained, with the arithmetic, in tuning/README.md.

# --- measured / target constants (keep in sync with src/limits.rs) -----------
KERNEL_SOCK_BYTES=3900     # kernel slab per idle TCP socket, measured 3.7-3.9 KB on 6.18
USER_CONN_BYTES=512        # coremq's user-space RSS target per idle connection
BASE_RESERVE_BYTES=$((1024 * 1024 * 1024)) # kernel, page cache, broker base: keep free
PAGE_BYTES=4096
FD_FIXED=1024              # stdio, listeners, log files, metrics, admin sockets
FD_PER_SHARD=256           # 3 io_uring rings, eventfds, channel mesh, open log segments
CHURN_DIV=20               # +1/20 = 5%: old sockets still open while their clients reconnect
GLOMMIO_MIN_MEMLOCK=$((512 * 1024)) # glommio refuses to start an executor below this
GLOMMIO_RINGS=3            # main, latency and poll rings each register io_memory
GLOMMIO_MIN_IO_MEMORY=65536 # glommio rounds io_memory up to at least this
# io_uring socket backend (io = "uring"/"auto"), per shard: the provided-buffer ring's descriptors (256 x 16 B,
# one pinned page). Its SQ/CQ rings are charged to the memory cgroup, not RLIMIT_MEMLOCK, on every kernel the
# backend runs on (6.0+; 5.12 stopped charging rings to it). Matches URING_LOCKED_PER_SHARD in src/limits.rs.
URING_LOCKED_PER_SHARD=4096
BIG_TARGET=100000          # from here on, queues are sized for reconnect storms
PORT_LO_REC=10000          # ephemeral range for load generators: clear of service ports
PORT_HI_REC=65535
INF=9223372036854775807    # "unlimited"/"infinity" as a comparable number

# --- option defaults ---------------------------------------------------------
CONNECTIONS=1000000
CORES=""
ROLE=broker
ROOT=/
PROC_SYS=""
IO_MEMORY=$((512 * 1024))
BROKER_CPUS=""
UNIT=coremq
RUN_USER=coremq
PID_ARG=""
ONLY=""
USE_SYSTEMD=auto
LATENCY=0

die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 2
}

note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

common_usage() {
	cat <<'EOF'
Target and host options (shared by check.sh and apply.sh):
  --connections N   target concurrent connections (default 1000000; 250k, 1M accepted)
  --cores N         broker shards = pinned cores (default: number of broker CPUs)
  --role R          broker | loadgen | both (both = broker and load generator on one box)
  --io-memory BYTES glommio io_memory per executor (default 524288)
  --broker-cpus L   CPUs the broker is pinned to, e.g. 0-7 (default: all online CPUs)
  --unit NAME       systemd unit of the broker (default coremq)
  --user NAME       user the broker runs as, for /etc/security/limits.d (default coremq)
  --pid PID         check this running process's limits (default: a running coremq, else this shell)
  --only P1,P2      only settings whose name starts with one of these prefixes
  --no-systemd      ignore systemd even if it is running
  --latency         also apply the optional latency settings (busy polling, RFS)
  --root DIR        treat DIR as / : read and write DIR/proc/sys, DIR/sys, DIR/etc, ...
  --proc-sys DIR    read/write sysctls under DIR instead of ROOT/proc/sys
EOF
}

# parse_count NAME VALUE: "1000000", "1_000_000", "250k", "1M" -> integer > 0.
parse_count() {
	local s=${2//_/} mult=1
	case $s in
	*[kK]) mult=1000 s=${s%?} ;;
	*M) mult=1000000 s=${s%?} ;;
	esac
	[[ $s =~ ^[0-9]{1,12}$ ]] || die "$1: expected a positive integer (e.g. 1000000 or 1M), got '$2'"
	local n=$((10#$s * mult))
	((n > 0)) || die "$1: must be greater than zero, got '$2'"
	echo "$n"
}

# parse_common_arg "$@": consumes one option (and its value), sets CONSUMED.
parse_common_arg() {
	local opt=$1
	CONSUMED=2
	case $opt in
	--connections | --cores | --role | --io-memory | --broker-cpus | --unit | --user | --pid | --only | --root | --proc-sys)
		(($# >= 2)) || die "$opt needs a value"
		;;
	esac
	case $opt in
	--connections) CONNECTIONS=$(parse_count "$opt" "$2") || exit 2 ;;
	--cores) CORES=$(parse_count "$opt" "$2") || exit 2 ;;
	--io-memory) IO_MEMORY=$(parse_count "$opt" "$2") || exit 2 ;;
	--role)
		case $2 in broker | loadgen | both) ROLE=$2 ;; *) die "--role: expected broker, loadgen or both, got '$2'" ;; esac
		;;
	--broker-cpus)
		[[ $2 =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || die "--broker-cpus: expected a CPU list like 0-3,8, got '$2'"
		BROKER_CPUS=$2
		;;
	--unit) [[ $2 =~ ^[A-Za-z0-9@_.:-]+$ ]] || die "--unit: invalid unit name '$2'" && UNIT=${2%.service} ;;
	--user) [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_.-]*$ ]] || die "--user: invalid user name '$2'" && RUN_USER=$2 ;;
	--pid) [[ $2 =~ ^[0-9]+$ ]] || die "--pid: expected a process id, got '$2'" && PID_ARG=$2 ;;
	--only) ONLY=$2 ;;
	--root) ROOT=$2 ;;
	--proc-sys) PROC_SYS=$2 ;;
	--no-systemd) USE_SYSTEMD=no CONSUMED=1 ;;
	--latency) LATENCY=1 CONSUMED=1 ;;
	*) die "unknown option '$opt' (see --help)" ;;
	esac
}

setup_paths() {
	[[ -d $ROOT ]] || die "--root $ROOT: not a directory"
	ROOT=$(cd "$ROOT" && pwd -P) || die "--root $ROOT: cannot enter"
	[[ $ROOT == / ]] && ROOT=""
	PROC=$ROOT/proc
	SYS=$ROOT/sys
	ETC=$ROOT/etc
	RUN=$ROOT/run
	if [[ -z $PROC_SYS ]]; then
		PROC_SYS=$PROC/sys
	else
		[[ -d $PROC_SYS ]] || die "--proc-sys $PROC_SYS: not a directory"
	fi
}

# shown PATH: the path as it is on the (possibly fake) target system.
shown() {
	local p=$1
	if [[ -n $ROOT && $p == "$ROOT"/* ]]; then p=${p#"$ROOT"}; fi
	printf '%s\n' "$p"
}

# A path the real kernel serves (as opposed to a file in a fake root).
is_kernel_path() { [[ $1 == /proc/* || $1 == /sys/* ]]; }

# read_value FILE: content with tabs/space runs squeezed to one space; fails if unreadable.
read_value() {
	[[ -r $1 && -f $1 ]] || return 1
	tr -s '\t ' '  ' <"$1" | tr -d '\n'
}

sysctl_file() { printf '%s/%s\n' "$PROC_SYS" "${1//.//}"; }

is_uint() { [[ $1 =~ ^[0-9]{1,19}$ ]]; }

round_up() { echo $((($1 + $2 - 1) / $2 * $2)); }

pow2_ceil() {
	local p=1
	while ((p < $1)); do p=$((p * 2)); done
	echo "$p"
}

pow2_floor() {
	local p=1
	while ((p * 2 <= $1)); do p=$((p * 2)); done
	echo "$p"
}

clamp() {
	local v=$1
	((v < $2)) && v=$2
	((v > $3)) && v=$3
	echo "$v"
}

human_bytes() {
	awk -v b="$1" 'BEGIN {
		if (b >= 1073741824) printf "%.1f GiB", b / 1073741824;
		else if (b >= 1048576) printf "%.1f MiB", b / 1048576;
		else printf "%.0f KiB", b / 1024 }'
}

# expand_cpulist "0-2,5" -> "0 1 2 5"
expand_cpulist() {
	local part out=() a b i
	for part in ${1//,/ }; do
		a=${part%-*} b=${part#*-}
		for ((i = a; i <= b; i++)); do out+=("$i"); done
	done
	echo "${out[*]}"
}

# compress_cpulist "0 1 2 5" -> "0-2,5"
compress_cpulist() {
	local res="" start="" prev="" c
	for c in $1; do
		if [[ -n $prev && $c -eq $((prev + 1)) ]]; then
			prev=$c
			continue
		fi
		[[ -n $start ]] && res+="${res:+,}$start$([[ $prev != "$start" ]] && echo "-$prev")"
		start=$c prev=$c
	done
	[[ -n $start ]] && res+="${res:+,}$start$([[ $prev != "$start" ]] && echo "-$prev")"
	echo "$res"
}

online_cpus() {
	local v
	if v=$(read_value "$SYS/devices/system/cpu/online") && [[ $v =~ ^[0-9,-]+$ ]]; then
		expand_cpulist "$v"
	else
		local n i out=()
		n=$(nproc 2>/dev/null || echo 1)
		for ((i = 0; i < n; i++)); do out+=("$i"); done
		echo "${out[*]}"
	fi
}

# Pid of a process whose comm is $1 under $PROC, empty if none.
find_comm() {
	local f c
	for f in "$PROC"/[0-9]*/comm; do
		[[ -r $f ]] || continue
		c=$(<"$f") 2>/dev/null || continue
		if [[ $c == "$1" ]]; then
			f=${f%/comm}
			echo "${f##*/}"
			return 0
		fi
	done
	return 1
}

# --- limits parsing ----------------------------------------------------------

# parse_limit VALUE bytes|count -> "SOFT HARD" (numbers, INF for unlimited).
# Accepts systemd syntax: N, soft:hard, infinity, and K/M/G/T suffixes for bytes.
parse_limit() {
	local v=$1 kind=$2 soft hard
	if [[ $v == *:* ]]; then soft=${v%%:*} hard=${v#*:}; else soft=$v hard=$v; fi
	soft=$(limit_number "$soft" "$kind") || return 1
	hard=$(limit_number "$hard" "$kind") || return 1
	echo "$soft $hard"
}

limit_number() {
	local v=$1 mult=1
	case $v in
	infinity | unlimited) echo "$INF" && return 0 ;;
	esac
	if [[ $2 == bytes && $v =~ ^([0-9]+)([KMGT])(i?B)?$ ]]; then
		v=${BASH_REMATCH[1]}
		case ${BASH_REMATCH[2]} in K) mult=1024 ;; M) mult=$((1024 ** 2)) ;; G) mult=$((1024 ** 3)) ;; T) mult=$((1024 ** 4)) ;; esac
	fi
	is_uint "$v" || return 1
	echo $((10#$v * mult))
}

show_limit() {
	if [[ $1 == "$INF" ]]; then echo infinity; else echo "$1"; fi
}

# proc_limits FILE "open files"|"locked memory" -> "SOFT HARD"
proc_limits() {
	local line
	line=$(awk -v what="$2" 'index($0, "Max " what) == 1 {
		sub("^Max " what " *", ""); print $1, $2; exit }' "$1" 2>/dev/null) || return 1
	[[ -n $line ]] || return 1
	local soft=${line% *} hard=${line#* }
	soft=$(limit_number "$soft" count) && hard=$(limit_number "$hard" count) || return 1
	echo "$soft $hard"
}

UNIT_DIRS=()
set_unit_dirs() {
	UNIT_DIRS=("$ETC/systemd/system" "$RUN/systemd/system" "$ROOT/usr/local/lib/systemd/system"
		"$ROOT/usr/lib/systemd/system" "$ROOT/lib/systemd/system")
}

# The installed unit file of $UNIT, empty if none.
unit_file() {
	local d
	for d in "${UNIT_DIRS[@]}"; do
		[[ -f $d/$UNIT.service ]] && echo "$d/$UNIT.service" && return 0
	done
	return 1
}

# Unit file then its drop-ins in the order systemd reads them: sorted by file name,
# a name in a higher-priority directory masking the same name in a lower one.
unit_files_in_order() {
	local main d f name i
	local -A by_name=()
	main=$(unit_file) || return 1
	echo "$main"
	for ((i = ${#UNIT_DIRS[@]} - 1; i >= 0; i--)); do
		d=${UNIT_DIRS[i]}/$UNIT.service.d
		for f in "$d"/*.conf; do
			[[ -f $f ]] || continue
			name=${f##*/}
			by_name[$name]=$f
		done
	done
	for name in $(printf '%s\n' "${!by_name[@]}" | LC_ALL=C sort); do
		echo "${by_name[$name]}"
	done
}

# ini_value SECTION KEY FILE...: last assignment wins, an empty one resets. Fails if unset.
ini_value() {
	local section=$1 key=$2
	shift 2
	awk -v sec="[$section]" -v key="$key" '
		FNR == 1 { cur = "" }
		/^[ \t]*\[/ { cur = $0; gsub(/[ \t]/, "", cur); next }
		cur == sec {
			line = $0; sub(/^[ \t]+/, "", line)
			if (index(line, key "=") == 1) { v = substr(line, length(key) + 2); sub(/[ \t]+$/, "", v); set = (v != "") }
		}
		END { if (set) print v; else exit 1 }' "$@" 2>/dev/null
}

# Effective LimitX= of the unit: unit + drop-ins, else the manager default, else
# systemd's built-in default (1024:524288 open files, 8M locked memory since v253).
systemd_limit() {
	local key=$1 builtin=$2 files v
	mapfile -t files < <(unit_files_in_order)
	if ((${#files[@]})) && v=$(ini_value Service "$key" "${files[@]}"); then
		echo "$v"
		return
	fi
	local conf=("$ETC/systemd/system.conf")
	for f in "$ETC"/systemd/system.conf.d/*.conf; do [[ -f $f ]] && conf+=("$f"); done
	if v=$(ini_value Manager "Default$key" "${conf[@]}"); then
		echo "$v"
		return
	fi
	echo "$builtin"
}

# --- targets -----------------------------------------------------------------

compute_targets() {
	ALL_CPUS=$(online_cpus)
	if [[ -n $BROKER_CPUS ]]; then BROKER_CPU_LIST=$(expand_cpulist "$BROKER_CPUS"); else BROKER_CPU_LIST=$ALL_CPUS; fi
	if [[ -z $CORES ]]; then
		local n=0 c
		for c in $BROKER_CPU_LIST; do n=$((n + 1)); done
		CORES=$n
	fi
	((CORES >= 1)) || CORES=1
	ENDS=1 BROKER_SIDE=1 LOADGEN_SIDE=0
	case $ROLE in
	loadgen) BROKER_SIDE=0 LOADGEN_SIDE=1 ;;
	both) ENDS=2 LOADGEN_SIDE=1 ;;
	esac
	SOCKETS=$((CONNECTIONS * ENDS))

	FD_NEED=$((CONNECTIONS + CONNECTIONS / CHURN_DIV + FD_FIXED + FD_PER_SHARD * CORES))
	FD_REC=$(round_up "$FD_NEED" 65536)
	FILE_MAX_NEED=$((FD_NEED * ENDS + 65536))
	FILE_MAX_REC=$(round_up "$FILE_MAX_NEED" 65536)

	local io=$(((IO_MEMORY + 4095) / 4096 * 4096))
	((io < GLOMMIO_MIN_IO_MEMORY)) && io=$GLOMMIO_MIN_IO_MEMORY
	MEMLOCK_NEED=$((CORES * (GLOMMIO_MIN_MEMLOCK + GLOMMIO_RINGS * io + URING_LOCKED_PER_SHARD)))
	MEMLOCK_REC=$(round_up $((MEMLOCK_NEED * 2)) $((1024 * 1024)))

	local kb
	kb=$(awk '$1 == "MemTotal:" { print $2; exit }' "$PROC/meminfo" 2>/dev/null) || kb=""
	if is_uint "$kb"; then MEM_TOTAL=$((kb * 1024)); else MEM_TOTAL=""; fi
	SLAB_BYTES=$((SOCKETS * KERNEL_SOCK_BYTES))
	USER_BYTES=$((CONNECTIONS * USER_CONN_BYTES * BROKER_SIDE))
	BUF_MIN_BYTES=$((SOCKETS * PAGE_BYTES))
	MEM_NEED=$((SLAB_BYTES + USER_BYTES + BASE_RESERVE_BYTES + BUF_MIN_BYTES))

	# tcp_mem (pages): up to two pages of queued data per socket, bounded by what RAM
	# leaves after slab, user space and the reserve; kernel's own ratios 1/2 : 2/3 : 1.
	local avail_pages=$((SOCKETS * 2))
	if [[ -n $MEM_TOTAL ]]; then
		local free=$(((MEM_TOTAL - SLAB_BYTES - USER_BYTES - BASE_RESERVE_BYTES) / PAGE_BYTES))
		((free < avail_pages)) && avail_pages=$free
	fi
	((avail_pages < 4096)) && avail_pages=4096
	TCP_MEM_HIGH=$avail_pages
	TCP_MEM_PRESSURE=$((TCP_MEM_HIGH * 2 / 3))
	TCP_MEM_LOW=$((TCP_MEM_HIGH / 2))
	local per_socket=$((TCP_MEM_HIGH * PAGE_BYTES / SOCKETS))
	per_socket=$(pow2_floor "$per_socket")
	RMEM_DEFAULT_REC=$(clamp "$per_socket" 4096 131072)
	WMEM_DEFAULT_REC=$(clamp "$per_socket" 4096 16384)

	if ((CONNECTIONS >= BIG_TARGET)); then
		BACKLOG_REC=65535 NETDEV_REC=16384
	else
		BACKLOG_REC=4096 NETDEV_REC=1000
	fi
	MAP_COUNT_REC=$((65530 + CORES * 8192))
	((MAP_COUNT_REC < 262144)) && MAP_COUNT_REC=262144
	CONNTRACK_NEED=$((CONNECTIONS + CONNECTIONS / CHURN_DIV + 65536))
	CONNTRACK_REC=$(round_up "$CONNTRACK_NEED" 65536)
	CONNTRACK_BUCKETS_REC=$(pow2_ceil $((CONNTRACK_REC / 4)))
	PORT_WIDTH_REC=$((PORT_HI_REC - PORT_LO_REC + 1))
}

# --- rows --------------------------------------------------------------------
# Parallel arrays, one entry per setting. STATUS: PASS, FAIL (required and failing),
# WARN (recommended/info and failing), OPT (optional, not enabled), SKIP (n/a).
R_NAME=() R_CUR=() R_MIN=() R_REC=() R_LEVEL=() R_STATUS=() R_NOTE=()
R_KIND=() R_TARGET=() R_VALUE=() R_PERSIST=()
LAST_ADDED=0

selected() {
	[[ -z $ONLY ]] && return 0
	local p
	local IFS=,
	for p in $ONLY; do [[ $1 == "$p"* ]] && return 0; done
	return 1
}

# add_row NAME LEVEL pass|fail|skip CURRENT MINIMUM RECOMMENDED NOTE
add_row() {
	LAST_ADDED=0
	selected "$1" || return 0
	local status
	case $3 in
	pass) status=PASS ;;
	skip) status=SKIP ;;
	*) case $2 in required) status=FAIL ;; optional) status=OPT ;; *) status=WARN ;; esac ;;
	esac
	R_NAME+=("$1") R_LEVEL+=("$2") R_STATUS+=("$status") R_CUR+=("$4") R_MIN+=("$5")
	R_REC+=("$6") R_NOTE+=("$7") R_KIND+=(none) R_TARGET+=("") R_VALUE+=("") R_PERSIST+=("")
	LAST_ADDED=1
}

# set_action KIND TARGET VALUE [PERSIST]: how apply.sh fixes the last row.
#   sysctl  TARGET=key            VALUE written live and to /etc/sysctl.d
#   sysfs   TARGET=paths (spaces)  VALUE written live; PERSIST = tmpfiles.d line
#   systemd TARGET=LimitX          VALUE in the unit's drop-in
#   pam     TARGET=nofile|memlock  VALUE in /etc/security/limits.d
#   irqbalance TARGET=cpulist      banned in irqbalance's drop-in
set_action() {
	((LAST_ADDED)) || return 0
	local i=$((${#R_NAME[@]} - 1))
	# A read-only sysctl (e.g. conntrack limits in a child network namespace) cannot be applied.
	if [[ $1 == sysctl && ! -w $(sysctl_file "$2") ]]; then
		R_NOTE[i]+="; read-only here"
		return 0
	fi
	R_KIND[i]=$1 R_TARGET[i]=$2 R_VALUE[i]=$3 R_PERSIST[i]=${4:-}
}

# sysctl_row KEY LEVEL ge|le MINIMUM RECOMMENDED NOTE
sysctl_row() {
	local key=$1 level=$2 op=$3 min=$4 rec=$5 why=$6 cur state=fail
	if ! cur=$(read_value "$(sysctl_file "$key")"); then
		add_row "$key" "$level" skip "-" "$min" "$rec" "not present in this kernel or namespace"
		return
	fi
	if ! is_uint "$cur"; then
		add_row "$key" "$level" fail "$cur" "$min" "$rec" "unexpected value; $why"
	else
		if [[ $op == ge ]] && ((cur >= min)); then state=pass; fi
		if [[ $op == le ]] && ((cur <= min)); then state=pass; fi
		local rule=">= $min"
		[[ $op == le ]] && rule="<= $min"
		add_row "$key" "$level" "$state" "$cur" "$rule" "$rec" "$why"
	fi
	set_action sysctl "$key" "$rec"
}

level_for() { # level_for APPLIES LEVEL: the level when the row applies, else info
	if (($1)); then echo "$2"; else echo info; fi
}

row_files() {
	sysctl_row fs.nr_open required ge "$FD_NEED" "$FD_REC" \
		"per-process open-file cap; LimitNOFILE cannot exceed it (need $FD_NEED fds)"
	sysctl_row fs.file-max required ge "$FILE_MAX_NEED" "$FILE_MAX_REC" \
		"system-wide open files: $ENDS x $FD_NEED + 65536 for the rest of the system"
}

row_process_limits() {
	local file who level cur soft hard
	if [[ -n $PID_ARG ]]; then
		file=$PROC/$PID_ARG/limits who="pid $PID_ARG"
	elif [[ $ROLE != loadgen ]] && pid=$(find_comm coremq); then
		file=$PROC/$pid/limits who="running coremq (pid $pid)"
	else
		file=$PROC/self/limits who="this shell (processes started from it)"
	fi
	# With systemd the unit's limits are what the broker gets; the shell's are advisory.
	level=required
	if [[ $SYSTEMD_ON == 1 && -z $PID_ARG && $ROLE != loadgen && $who != running* ]] && unit_file >/dev/null; then
		level=recommended
	fi
	if cur=$(proc_limits "$file" "open files"); then
		soft=${cur% *} hard=${cur#* }
		local st=fail
		((hard >= FD_NEED)) && st=pass
		add_row limits.process.nofile "$level" "$st" "$(show_limit "$hard")" ">= $FD_NEED" "$FD_REC" \
			"$who: hard limit (soft $(show_limit "$soft"), coremq raises soft to hard); ulimit -Hn"
		set_action pam nofile "$FD_REC"
	else
		add_row limits.process.nofile "$level" skip "-" ">= $FD_NEED" "$FD_REC" "cannot read $(shown "$file")"
	fi
	((BROKER_SIDE)) || return 0
	if cur=$(proc_limits "$file" "locked memory"); then
		soft=${cur% *}
		local st=fail
		((soft >= MEMLOCK_NEED)) && st=pass
		add_row limits.process.memlock "$level" "$st" "$(show_limit "$soft")" ">= $MEMLOCK_NEED" "$MEMLOCK_REC" \
			"$who: soft limit in bytes; $CORES x (glommio 512 KiB + 3 x io_memory + io_uring buffer ring 4 KiB); ulimit -l is KiB"
		set_action pam memlock "$MEMLOCK_REC"
	else
		add_row limits.process.memlock "$level" skip "-" ">= $MEMLOCK_NEED" "$MEMLOCK_REC" "cannot read $(shown "$file")"
	fi
}

row_systemd_limits() {
	((BROKER_SIDE)) || return 0
	if [[ $SYSTEMD_ON != 1 ]]; then
		add_row "systemd.$UNIT.LimitNOFILE" required skip "-" ">= $FD_NEED" "$FD_REC" "systemd is not running (or --no-systemd)"
		add_row "systemd.$UNIT.LimitMEMLOCK" required skip "-" ">= $MEMLOCK_NEED" "$MEMLOCK_REC" "systemd is not running (or --no-systemd)"
		return
	fi
	local v lim st where="unit $UNIT.service + drop-ins"
	if ! unit_file >/dev/null; then
		local why="$UNIT.service is not installed (install tuning/coremq.service, or the shell's limits apply)"
		add_row "systemd.$UNIT.LimitNOFILE" required skip "-" ">= $FD_NEED (hard)" "$FD_REC" "$why"
		add_row "systemd.$UNIT.LimitMEMLOCK" required skip "-" ">= $MEMLOCK_NEED (soft)" "$MEMLOCK_REC" "$why"
		return
	fi
	v=$(systemd_limit LimitNOFILE 1024:524288)
	st=fail
	if lim=$(parse_limit "$v" count); then
		((${lim#* } >= FD_NEED)) && st=pass
	fi
	add_row "systemd.$UNIT.LimitNOFILE" required "$st" "$v" ">= $FD_NEED (hard)" "$FD_REC" "$where"
	set_action systemd LimitNOFILE "$FD_REC"

	v=$(systemd_limit LimitMEMLOCK 8M)
	st=fail
	if lim=$(parse_limit "$v" bytes); then
		((${lim% *} >= MEMLOCK_NEED)) && st=pass
	fi
	add_row "systemd.$UNIT.LimitMEMLOCK" required "$st" "$v" ">= $MEMLOCK_NEED (soft)" "$MEMLOCK_REC" \
		"$where; io_uring charges registered buffers to the user's locked memory"
	set_action systemd LimitMEMLOCK "$MEMLOCK_REC"
}

row_memory_budget() {
	if [[ -z $MEM_TOTAL ]]; then
		add_row memory.budget required skip "-" ">= $MEM_NEED" "$MEM_NEED" "cannot read $(shown "$PROC/meminfo")"
		return
	fi
	local st=fail
	((MEM_TOTAL >= MEM_NEED)) && st=pass
	add_row memory.budget required "$st" "$MEM_TOTAL" ">= $MEM_NEED" "$MEM_NEED" \
		"bytes of RAM: $SOCKETS sockets x ($KERNEL_SOCK_BYTES slab + 4096 buffer) + $CONNECTIONS x $USER_CONN_BYTES user + 1 GiB = $(human_bytes "$MEM_NEED") (have $(human_bytes "$MEM_TOTAL")); not fixable by sysctl"
}

# triple_row KEY LEVEL "min1 min2 min3" "rec" NOTE RULE: each element >= / <= its minimum.
# RULE is a 3-letter pattern of g (>=), l (<=) or x (ignored) per element.
triple_row() {
	local key=$1 level=$2 min=$3 rec=$4 why=$5 rule=$6 cur
	if ! cur=$(read_value "$(sysctl_file "$key")"); then
		add_row "$key" "$level" skip "-" "$min" "$rec" "not present in this kernel or namespace"
		return
	fi
	local -a c m
	read -r -a c <<<"$cur"
	read -r -a m <<<"$min"
	local st=pass i
	if ((${#c[@]} != 3)); then
		st=fail
	else
		for i in 0 1 2; do
			is_uint "${c[i]}" || { st=fail && break; }
			case ${rule:i:1} in
			g) ((c[i] >= m[i])) || st=fail ;;
			l) ((c[i] <= m[i])) || st=fail ;;
			esac
		done
	fi
	local shown_rule="" sym
	for i in 0 1 2; do
		case ${rule:i:1} in g) sym=">=${m[i]}" ;; l) sym="<=${m[i]}" ;; *) sym="*" ;; esac
		shown_rule+="${shown_rule:+ }$sym"
	done
	add_row "$key" "$level" "$st" "$cur" "$shown_rule" "$rec" "$why"
	set_action sysctl "$key" "$rec"
}

row_tcp() {
	local b_level cur
	b_level=$(level_for "$BROKER_SIDE" required)
	sysctl_row net.core.somaxconn "$b_level" ge "$BACKLOG_REC" "$BACKLOG_REC" \
		"accept queue cap per listener (one per shard, SO_REUSEPORT): absorbs reconnect storms; the listen() backlog must be as large"
	local syn_level=recommended
	((CONNECTIONS >= BIG_TARGET)) && syn_level=required
	sysctl_row net.ipv4.tcp_max_syn_backlog "$(level_for "$BROKER_SIDE" "$syn_level")" ge "$BACKLOG_REC" "$BACKLOG_REC" \
		"half-open (SYN_RECV) queue per listener; beyond it SYN cookies"
	sysctl_row net.core.netdev_max_backlog recommended ge "$NETDEV_REC" "$NETDEV_REC" \
		"per-CPU packet queue before the stack; bursts beyond it are dropped"

	# tcp_mem: never lower what is already there.
	local want="$TCP_MEM_LOW $TCP_MEM_PRESSURE $TCP_MEM_HIGH" rec=() i
	if cur=$(read_value "$(sysctl_file net.ipv4.tcp_mem)"); then
		local -a c w
		read -r -a c <<<"$cur"
		read -r -a w <<<"$want"
		for i in 0 1 2; do
			if is_uint "${c[i]:-}" && ((c[i] > w[i])); then rec+=("${c[i]}"); else rec+=("${w[i]}"); fi
		done
	else
		read -r -a rec <<<"$want"
	fi
	triple_row net.ipv4.tcp_mem required "$want" "${rec[*]}" \
		"pages (low pressure high): high = 2 pages x $SOCKETS sockets, capped by RAM left after slab ($(human_bytes $((TCP_MEM_HIGH * PAGE_BYTES))))" ggg

	local max
	for key in net.ipv4.tcp_rmem net.ipv4.tcp_wmem; do
		local def=$RMEM_DEFAULT_REC kdef=131072
		[[ $key == *wmem ]] && def=$WMEM_DEFAULT_REC kdef=16384
		max=4194304
		if cur=$(read_value "$(sysctl_file "$key")"); then
			max=${cur##* }
			is_uint "$max" || max=4194304
		fi
		triple_row "$key" recommended "4096 $def 0" "4096 $def $max" \
			"min default max bytes: default sized so $SOCKETS x default fits tcp_mem (kernel default $kdef); autotuning still grows busy sockets to max" llx
	done

	local l_level
	l_level=$(level_for "$LOADGEN_SIDE" required)
	if cur=$(read_value "$(sysctl_file net.ipv4.ip_local_port_range)"); then
		local lo=${cur% *} hi=${cur#* } st=fail width=0
		if is_uint "$lo" && is_uint "$hi"; then
			width=$((hi - lo + 1))
			((width >= PORT_WIDTH_REC)) && st=pass
		fi
		local need_src=$(((CONNECTIONS + PORT_WIDTH_REC - 1) / PORT_WIDTH_REC)) have_src="?"
		((width > 0)) && have_src=$(((CONNECTIONS + width - 1) / width))
		add_row net.ipv4.ip_local_port_range "$l_level" "$st" "$cur" "width >= $PORT_WIDTH_REC" "$PORT_LO_REC $PORT_HI_REC" \
			"load generators: $width ports per (src IP, dst IP, dst port) -> $have_src source addresses for $CONNECTIONS (with rec: $need_src)"
		set_action sysctl net.ipv4.ip_local_port_range "$PORT_LO_REC $PORT_HI_REC"
	else
		add_row net.ipv4.ip_local_port_range "$l_level" skip "-" "width >= $PORT_WIDTH_REC" "$PORT_LO_REC $PORT_HI_REC" "not present in this kernel or namespace"
	fi

	if cur=$(read_value "$(sysctl_file net.ipv4.tcp_tw_reuse)"); then
		local st=fail why="reuse TIME_WAIT ports for new outgoing connections (load generators)"
		[[ $cur == 1 ]] && st=pass
		[[ $cur == 2 ]] && why="2 = loopback only (kernel default): enough for loopback tests, not for a remote load generator"
		add_row net.ipv4.tcp_tw_reuse "$(level_for "$LOADGEN_SIDE" recommended)" "$st" "$cur" "1" "1" "$why"
		set_action sysctl net.ipv4.tcp_tw_reuse 1
	else
		add_row net.ipv4.tcp_tw_reuse "$(level_for "$LOADGEN_SIDE" recommended)" skip "-" "1" "1" "not present in this kernel or namespace"
	fi
	sysctl_row net.ipv4.tcp_fin_timeout recommended le 15 15 \
		"seconds an orphaned FIN_WAIT_2 socket holds memory after coremq drops a dead client"
}

row_vm_and_conntrack() {
	local map_level=recommended
	((CONNECTIONS >= BIG_TARGET)) && map_level=required
	sysctl_row vm.max_map_count "$(level_for "$BROKER_SIDE" "$map_level")" ge "$MAP_COUNT_REC" "$MAP_COUNT_REC" \
		"mappings per process: mmap log segments (up to 8192 per shard), allocator arenas, thread stacks"
	if [[ -e $(sysctl_file net.netfilter.nf_conntrack_max) ]]; then
		sysctl_row net.netfilter.nf_conntrack_max required ge "$CONNTRACK_NEED" "$CONNTRACK_REC" \
			"nf_conntrack is loaded: one entry (~320 B) per connection; full table drops new SYNs"
		sysctl_row net.netfilter.nf_conntrack_buckets recommended ge "$CONNTRACK_BUCKETS_REC" "$CONNTRACK_BUCKETS_REC" \
			"hash buckets: <= 4 entries per chain keeps lookups short"
	else
		add_row net.netfilter.nf_conntrack_max required pass "-" "-" "-" "nf_conntrack not loaded: no limit applies"
	fi
}

# select_value "always [madvise] never" -> madvise
select_value() {
	local v=$1
	if [[ $v =~ \[([^]]+)\] ]]; then echo "${BASH_REMATCH[1]}"; else echo "$v"; fi
}

row_thp() {
	local name file cur sel
	for name in enabled defrag; do
		file=$SYS/kernel/mm/transparent_hugepage/$name
		if ! cur=$(read_value "$file"); then
			add_row "thp.$name" recommended skip "-" "not always" madvise "no transparent hugepage support"
			continue
		fi
		sel=$(select_value "$cur")
		local st=pass
		[[ $sel == always ]] && st=fail
		add_row "thp.$name" "$(level_for "$BROKER_SIDE" recommended)" "$st" "$sel" "not always" madvise \
			"always = khugepaged/compaction stalls and RSS bloat on sparse heaps; $(shown "$file")"
		set_action sysfs "$file" madvise "w $(shown "$file") - - - - madvise"
	done
}

row_governor() {
	local c f govs="" paths="" g
	for c in $ALL_CPUS; do
		f=$SYS/devices/system/cpu/cpu$c/cpufreq/scaling_governor
		g=$(read_value "$f") || continue
		paths+="${paths:+ }$f"
		[[ " $govs " == *" $g "* ]] || govs+="${govs:+ }$g"
	done
	if [[ -z $paths ]]; then
		add_row cpu.governor recommended skip "-" performance performance "no cpufreq (VM or firmware-managed frequency)"
		return
	fi
	local st=pass
	[[ $govs == performance ]] || st=fail
	add_row cpu.governor "$(level_for "$BROKER_SIDE" recommended)" "$st" "${govs// /,}" performance performance \
		"frequency ramp-up adds 10s-100s of us to wake-ups of idle cores"
	set_action sysfs "$paths" performance "w /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor - - - - performance"
}

row_irq() {
	local isolated=0 others="" c
	for c in $ALL_CPUS; do
		[[ " $BROKER_CPU_LIST " == *" $c "* ]] || others+="${others:+ }$c"
	done
	[[ -n $BROKER_CPUS && -n $others ]] && isolated=1
	local irqbalance_pid=""
	irqbalance_pid=$(find_comm irqbalance) || irqbalance_pid=""
	local broker_list other_list
	broker_list=$(compress_cpulist "$BROKER_CPU_LIST")
	other_list=$(compress_cpulist "$others")

	if ((!isolated)); then
		add_row irq.affinity info pass "shared" "-" "-" \
			"broker uses all CPUs ($broker_list): nothing to isolate (see --broker-cpus)"
		add_row irqbalance info pass "$([[ -n $irqbalance_pid ]] && echo running || echo "not running")" "-" "-" \
			"only matters when broker CPUs are isolated"
		return
	fi

	local dev irq f aff bad="" paths=""
	for dev in "$SYS"/class/net/*; do
		[[ -d $dev/device/msi_irqs ]] || continue
		for irq in "$dev"/device/msi_irqs/*; do
			irq=${irq##*/}
			f=$PROC/irq/$irq/smp_affinity_list
			aff=$(read_value "$f") || continue
			[[ $aff =~ ^[0-9,-]+$ ]] || continue
			for c in $(expand_cpulist "$aff"); do
				if [[ " $BROKER_CPU_LIST " == *" $c "* ]]; then
					bad+="${bad:+ }${dev##*/}:$irq" paths+="${paths:+ }$f"
					break
				fi
			done
		done
	done
	if [[ -z $bad ]]; then
		add_row irq.affinity recommended pass "off broker CPUs" "$other_list" "$other_list" \
			"no NIC interrupt targets broker CPUs $broker_list"
	else
		add_row irq.affinity recommended fail "on $broker_list" "$other_list" "$other_list" \
			"NIC IRQs hitting broker CPUs: $bad (not persistent: irqbalance drop-in or boot script keeps it)"
		set_action sysfs "$paths" "$other_list"
	fi

	if [[ -z $irqbalance_pid ]]; then
		add_row irqbalance recommended pass "not running" "banned $broker_list" "banned $broker_list" \
			"nothing moves IRQs back onto broker CPUs"
		return
	fi
	local banned="" files=() d=$ETC/systemd/system/irqbalance.service.d
	[[ -f $ETC/default/irqbalance ]] && files+=("$ETC/default/irqbalance")
	for f in "$d"/*.conf; do [[ -f $f ]] && files+=("$f"); done
	if ((${#files[@]})); then
		banned=$(grep -h -o 'IRQBALANCE_BANNED_CPULIST=[0-9,-]*' "${files[@]}" 2>/dev/null | tail -n 1) || banned=""
		banned=${banned#*=}
	fi
	local st=fail
	if [[ -n $banned ]]; then
		st=pass
		for c in $BROKER_CPU_LIST; do
			[[ " $(expand_cpulist "$banned") " == *" $c "* ]] || st=fail
		done
	fi
	add_row irqbalance recommended "$st" "running, banned ${banned:-none}" "banned $broker_list" "banned $broker_list" \
		"irqbalance would move NIC interrupts back onto broker CPUs"
	set_action irqbalance "$broker_list" "$broker_list"
}

row_latency() {
	sysctl_row net.core.busy_poll optional ge 50 50 \
		"us of busy polling in poll/epoll; burns CPU; glommio's io_uring polling does not use it"
	sysctl_row net.core.busy_read optional ge 50 50 \
		"us of busy polling on socket reads (SO_BUSY_POLL default); burns CPU"
	sysctl_row net.core.rps_sock_flow_entries optional ge 32768 32768 \
		"RFS flow table: steers packets to the CPU of the reading shard; also set rps_cpus/rps_flow_cnt per rx queue"
}

evaluate_all() {
	SYSTEMD_ON=0
	if [[ $USE_SYSTEMD == auto && -d $RUN/systemd/system ]]; then SYSTEMD_ON=1; fi
	set_unit_dirs
	compute_targets
	row_files
	row_process_limits
	row_systemd_limits
	row_memory_budget
	row_tcp
	row_vm_and_conntrack
	row_thp
	row_governor
	row_irq
	row_latency
}

# --- writing (apply.sh and revert.sh) ----------------------------------------

# kernel_write PATH VALUE: write a sysctl/sysfs value. In a fake root, "select" files
# such as THP's "always [madvise] never" are emulated the way sysfs shows them, so a
# fake-root round trip behaves like the kernel.
kernel_write() {
	local path=$1 value=$2 cur
	if ! is_kernel_path "$path" && cur=$(<"$path") && [[ $cur =~ \[[^]]+\] ]]; then
		local words=${cur//[\[\]]/} w out=() found=0
		for w in $words; do
			if [[ $w == "$value" ]]; then out+=("[$w]") found=1; else out+=("$w"); fi
		done
		((found)) || return 1
		printf '%s\n' "${out[*]}" >"$path"
		return
	fi
	printf '%s\n' "$value" >"$path"
}

state_dir_default() { printf '%s/var/lib/coremq-tuning\n' "$ROOT"; }

# Paths apply/revert may write: inside the fake root, or the live kernel and /etc.
allowed_target() {
	local p=$1
	[[ $p != *..* ]] || return 1
	if [[ -n $ROOT && $p == "$ROOT"/* ]]; then return 0; fi
	[[ $p == "$PROC_SYS"/* ]] && return 0
	[[ -z $ROOT && ($p == /proc/sys/* || $p == /sys/* || $p == /proc/irq/* || $p == /etc/*) ]]
}
