#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests of selfkd's Slurm launcher (issue #25).
#
#   scripts/slurm-local.sh up      install (apt, when missing), configure and start it; waits for the node to be idle
#   scripts/slurm-local.sh down    cancel its jobs and stop the daemons this script started (only those); with
#                                  SELFKD_SLURM_HOLDER=ID set (as make test does), only when no other holder is left
#   scripts/slurm-local.sh status  say whether it is up (exit 0) or not (exit 1)
#   scripts/slurm-local.sh env     print the export line that points Slurm's commands at it
#   scripts/slurm-local.sh purge   down, then delete its folder (state, accounting database, logs)
#
# Needs root and Debian's packages (slurm-wlm 22.05 and munge on bookworm). Daemons run as root (SlurmUser=root),
# started directly (no systemd: CI containers have none). Everything lives in one folder it owns:
#   SELFKD_SLURM_DIR          default /var/lib/selfkd-slurm: etc/ (slurm.conf, slurmdbd.conf), state/, spool/,
#                             log/ (munged, mariadb, slurmdbd, slurmctld, slurmd), run/ (pid files, munge socket),
#                             munge/ (key), db/ and db-socket/ (MariaDB's data and socket, root only)
#   SELFKD_SLURM_ACCOUNTING   1 (default): slurmdbd with a private MariaDB (server-core only), so `sacct` works -
#                             submitit reads job states with sacct and nothing else. 0: no accounting (sacct fails,
#                             submitit's job.state stays UNKNOWN; see tests/test_slurm_cluster.py).
#   SELFKD_SLURM_PORT         slurmctld's port (default 6817); slurmd uses +1, slurmdbd +2.
#   SELFKD_SLURM_WAIT         seconds `up` waits for the node to be idle (default 60).
# Its own munged (own key and socket under run/) and its own MariaDB (socket only, no TCP) leave any system munge or
# database alone. /etc/slurm/slurm.conf is linked to etc/slurm.conf when no such file exists (removed by `down`), so
# plain `sinfo`, `sbatch`... work; otherwise export SLURM_CONF (`env` prints the line).
set -euo pipefail

DIR=${SELFKD_SLURM_DIR:-/var/lib/selfkd-slurm}
ACCOUNTING=${SELFKD_SLURM_ACCOUNTING:-1}
PORT=${SELFKD_SLURM_PORT:-6817}
WAIT_S=${SELFKD_SLURM_WAIT:-60}
CONF=$DIR/etc/slurm.conf
RUN=$DIR/run
LOG=$DIR/log
SYS_CONF=/etc/slurm/slurm.conf
export SLURM_CONF=$CONF
PKGS=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server-core)

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $*"; exit 1; }

# pid from a pid file, when that process is alive and is the named program
live_pid() {  # file name
  local pid
  [ -f "$1" ] || return 1
  pid=$(tr -dc 0-9 <"$1")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

install_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
  say "installing ${missing[*]} (apt)"
  # Debian's maintainer scripts would start munge/slurm from /etc/init.d: a policy-rc.d that says no (as Docker images
  # have) keeps them from starting half-configured system daemons. Put in place only when there is none.
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy && ours=1; fi
  local rc=0
  # another apt at work (a parallel make demo) is waited for, not failed on
  local wait=(-o DPkg::Lock::Timeout=300)
  { apt-get "${wait[@]}" update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" install -y -qq --no-install-recommends "${missing[@]}"
  } >"${TMPDIR:-/tmp}/selfkd-slurm-apt.log" 2>&1 || rc=$?
  [ $ours = 1 ] && rm -f $policy
  if [ $rc != 0 ]; then tail -20 "${TMPDIR:-/tmp}/selfkd-slurm-apt.log" >&2; die "apt-get failed (exit $rc)"; fi
}

write_config() {
  local host cpus sockets cores threads mem hw
  host=$(hostname -s)
  hw=$(slurmd -C | head -1)  # what slurmd itself detects: a node configured otherwise gets drained
  field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$hw"; }
  cpus=$(field CPUs); sockets=$(field SocketsPerBoard); cores=$(field CoresPerSocket)
  threads=$(field ThreadsPerCore); mem=$(field RealMemory)
  mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$LOG" "$RUN"
  chmod 755 "$DIR" "$DIR/etc"
  local acct
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
# for slurmdbd connections this is the munge socket (not a password)
AccountingStoragePass=$RUN/munge.socket"
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  cat >"$CONF.new" <<EOF
# Written by scripts/slurm-local.sh: a one-node test cluster. Edits are overwritten by the next 'up'.
ClusterName=selfkd
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s)
AuthInfo=socket=$RUN/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$acct
JobCompType=jobcomp/none
# Tests requeue jobs (scontrol requeue, submitit's checkpoint-and-requeue): every batch job may be requeued.
JobRequeue=1
# sweeps submit job arrays; a pending array is one record, running tasks one each
MaxArraySize=10001
MaxJobCount=100000
# seconds a finished job stays in slurmctld's memory (squeue/scontrol show job); sacct keeps it after that
MinJobAge=$([ "$ACCOUNTING" = 1 ] && echo 60 || echo 3600)
# SIGTERM -> SIGKILL at cancel/requeue/time limit: submitit ignores SIGTERM, so this is how long a requeued or
# cancelled submitit job lingers (default 30)
KillWait=5
# a node that was DOWN (slurmd restarted, not responding) becomes usable again as soon as it registers
ReturnToService=2
SchedulerType=sched/backfill
# submits and completions start a scheduling pass anyway; a requeued job waiting out its BeginTime is only seen
# by the periodic passes: main loop every 2 s (default 60), backfill every 1 s (default 30). Cheap on one node.
SchedulerParameters=sched_interval=2,bf_interval=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads \
  RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.new" "$CONF"
  chmod 644 "$CONF"
  if [ "$ACCOUNTING" = 1 ]; then
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
# Written by scripts/slurm-local.sh
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.socket
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
  fi
}

start_munged() {
  live_pid "$RUN/munged.pid" munged >/dev/null && return 0
  local key=$DIR/munge/munge.key
  mkdir -p "$DIR/munge"
  [ -s "$key" ] || mungekey --create --keyfile="$key" 2>/dev/null ||
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
  chmod 700 "$DIR/munge"; chmod 600 "$key"
  munged 9>&- --force --key-file="$key" --socket="$RUN/munge.socket" --pid-file="$RUN/munged.pid" \
    --log-file="$LOG/munged.log" --seed-file="$DIR/munge/munged.seed" || { logs_tail; die "munged did not start"; }
}

start_mariadb() {
  live_pid "$RUN/mariadbd.pid" mariadbd >/dev/null && return 0
  # Private server: own data folder, a Unix socket only root can reach (no TCP), so no grant tables to set up.
  mkdir -p "$DIR/db" "$DIR/db-socket"
  chmod 700 "$DIR/db" "$DIR/db-socket"
  setsid mariadbd --no-defaults --user=root --datadir="$DIR/db" --socket="$DIR/db-socket/mysqld.sock" \
    --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadb.log" --skip-networking --skip-grant-tables \
    --innodb-buffer-pool-size=32M --innodb-log-file-size=16M --innodb-use-native-aio=0 \
    --skip-name-resolve </dev/null >/dev/null 2>&1 9>&- &
  local i
  for i in $(seq 100); do [ -S "$DIR/db-socket/mysqld.sock" ] && return 0; sleep 0.1; done
  tail -20 "$LOG/mariadb.log" >&2; die "mariadbd did not start"
}

start_slurmdbd() {
  live_pid "$RUN/slurmdbd.pid" slurmdbd >/dev/null && return 0
  MYSQL_UNIX_PORT=$DIR/db-socket/mysqld.sock slurmdbd 9>&- || { logs_tail; die "slurmdbd did not start"; }
  local i
  for i in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 2))") 2>/dev/null && return 0; sleep 0.1; done
  tail -20 "$LOG/slurmdbd.log" >&2; die "slurmdbd did not start listening on port $((PORT + 2))"
}

link_conf() {
  if [ ! -e $SYS_CONF ] && [ ! -L $SYS_CONF ]; then
    mkdir -p /etc/slurm && ln -s "$CONF" $SYS_CONF && echo "$SYS_CONF" >"$RUN/linked"
  elif [ "$(readlink $SYS_CONF)" != "$CONF" ]; then
    say "$SYS_CONF exists and is not this cluster's: export SLURM_CONF=$CONF to use it"
  fi
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -1; }

cluster_up() {
  live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null && live_pid "$RUN/slurmd.pid" slurmd >/dev/null &&
    [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]
}

logs_tail() {
  local f
  for f in "$LOG"/munged.log "$LOG"/mariadb.log "$LOG"/slurmdbd.log "$LOG"/slurmctld.log "$LOG"/slurmd.log; do
    [ -f "$f" ] && { echo "--- $f (last 15 lines)"; tail -15 "$f"; }
  done >&2
}

# Jobs of an earlier run that was not brought down cleanly come back from state/ with slurmctld (and would run
# again on slurmd's return, taking the CPUs from the tests): cancelled before slurmd starts. State is kept
# otherwise, so job ids keep counting up and never repeat one the accounting database already has.
clear_leftovers() {
  local i jobs
  for i in $(seq 100); do squeue -h >/dev/null 2>&1 && break; sleep 0.1; done
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  [ -z "$jobs" ] && return 0
  say "cancelling jobs left from an earlier run: $jobs"
  scancel --partition=local 2>/dev/null || true
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (daemons run as SlurmUser=root; packages come from apt)"
  mkdir -p "$DIR"
  # two 'up's at once: the second waits, then finds it running
  exec 9>"$DIR/.lock"; flock -w 300 9 || die "another slurm-local.sh holds $DIR/.lock"
  if cluster_up; then link_conf; hold; say "already up ($(node_state))"; return 0; fi
  install_packages
  write_config
  link_conf
  start_munged
  if [ "$ACCOUNTING" = 1 ]; then start_mariadb; start_slurmdbd; fi
  if ! live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
    slurmctld -f "$CONF" 9>&- || { logs_tail; die "slurmctld did not start"; }
    clear_leftovers
  fi
  if ! live_pid "$RUN/slurmd.pid" slurmd >/dev/null; then
    kill_leftover_steps
    slurmd -f "$CONF" 9>&- || { logs_tail; die "slurmd did not start"; }
  fi
  local i state=""
  for i in $(seq $((WAIT_S * 5))); do
    state=$(node_state)
    [[ "$state" =~ ^(idle|mixed|allocated)$ ]] && { hold; say "up: node $(hostname -s) $state, partition local"; return 0; }
    sleep 0.2
  done
  logs_tail
  die "node not idle after ${WAIT_S}s (state: '${state:-no answer from slurmctld}'); logs above, all in $LOG"
}

# Who uses the cluster: 'manual' (an 'up' without SELFKD_SLURM_HOLDER, until a plain 'down') or process ids
# (make test passes its shell's). 'down' with SELFKD_SLURM_HOLDER releases only that one and stops the cluster when
# no live holder is left, so two 'make test' at once do not pull it from under each other.
hold() { mkdir -p "$RUN/holders"; touch "$RUN/holders/${SELFKD_SLURM_HOLDER:-manual}"; }
holders() {
  local h out=""
  for h in "$RUN"/holders/*; do
    [ -e "$h" ] || continue
    h=${h##*/}
    if [ "$h" = manual ] || [ -d "/proc/$h" ]; then out="$out $h"; else rm -f "$RUN/holders/$h"; fi
  done
  echo "${out# }"
}

stop() {  # program names (pid files in run/): SIGTERM to all, then wait for all; SIGKILL after 10 s
  local name pid pids=() i
  for name in "$@"; do
    pid=$(live_pid "$RUN/$name.pid" "$name") && { kill -TERM "$pid" 2>/dev/null || true; pids+=("$name:$pid"); }
  done
  for i in $(seq 100); do
    local alive=0
    for pid in "${pids[@]}"; do [ -d "/proc/${pid#*:}" ] && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    [ -d "/proc/${pid#*:}" ] &&
      { say "${pid%%:*} (${pid#*:}) ignores SIGTERM; killing it"; kill -KILL "${pid#*:}" 2>/dev/null || true; }
  done
  for name in "$@"; do rm -f "$RUN/$name.pid"; done
}

# Job steps still alive without their slurmd (scancel failed, or the daemons were killed): this cluster's when the
# slurmstepd has our slurmd's SLURM_CONF. Ended with the job's processes under them.
kill_leftover_steps() {
  local p steps=() tree
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] && tr '\0' '\n' <"$p/environ" 2>/dev/null |
      grep -qx "SLURM_CONF=$CONF" && steps+=("${p#/proc/}")
  done
  if [ ${#steps[@]} -gt 0 ]; then
    tree=$(descendants "${steps[@]}")
    say "killing leftover job steps: slurmstepd ${steps[*]}, processes ${tree:-none}"
    # shellcheck disable=SC2086
    kill -KILL "${steps[@]}" $tree 2>/dev/null || true
  fi
}

descendants() {  # pids: every process below them
  local ppids
  ppids=$(for p in /proc/[0-9]*/stat; do sed -n 's/^\([0-9]*\) (.*) [A-Za-z] \([0-9]*\) .*/\2 \1/p' "$p" 2>/dev/null; done)
  awk -v roots="$*" 'BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
    { kids[$1] = kids[$1] " " $2 }
    END { for (i = 1; i <= n; i++) queue[++q] = r[i]
          while (h < q) { p = queue[++h]; m = split(kids[p], k, " ")
            for (j = 1; j <= m; j++) if (!(k[j] in want)) { want[k[j]] = 1; queue[++q] = k[j]; printf "%s ", k[j] } } }' <<<"$ppids"
}

down() {
  [ -d "$DIR" ] || { say "nothing to stop ($DIR absent)"; return 0; }
  exec 9>"$DIR/.lock"; flock -w 300 9 || die "another slurm-local.sh holds $DIR/.lock"
  if [ -n "${SELFKD_SLURM_HOLDER:-}" ]; then
    rm -f "$RUN/holders/$SELFKD_SLURM_HOLDER"
    local others
    others=$(holders)
    [ -n "$others" ] && { say "left up: still held by $others"; return 0; }
  fi
  if live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
    scancel --partition=local 2>/dev/null || true  # jobs' processes run under slurmstepd, which outlives slurmd
    local i
    for i in $(seq 100); do [ -z "$(squeue -h -t running,completing -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  stop slurmd slurmctld  # slurmctld hands its last job records to slurmdbd, which writes them to the database
  stop slurmdbd
  stop mariadbd munged
  kill_leftover_steps
  rm -rf "$RUN/holders"
  if [ -f "$RUN/linked" ]; then
    [ "$(readlink $SYS_CONF)" = "$CONF" ] && rm -f $SYS_CONF
    rm -f "$RUN/linked"
  fi
  say "down"
}

status() {
  if cluster_up; then
    say "up ($CONF)"; sinfo; squeue; return 0
  fi
  say "not up"; return 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  purge) down; rm -rf "$DIR" ;;
  *) echo "usage: $0 up|down|status|env|purge" >&2; exit 2 ;;
esac
