#!/usr/bin/env bash
# jobs/slurm/local-cluster.sh: a private one-node Slurm cluster on this machine, for tests and for
# trying the job scripts without a real cluster. No systemd, no /etc changes: munged, slurmctld
# and slurmd run as background daemons with a generated slurm.conf, a private munge key and
# socket, free TCP ports, and every file under DIR.
#
#   local-cluster.sh start DIR    start the daemons, wait until the node is idle (exit 1 if not
#                                 within 30 s, with the daemons' log tails); prints the export line
#   local-cluster.sh stop DIR     scancel the cluster's jobs, wait for them to end, then SIGTERM
#                                 each daemon by its pid file (SIGKILL after 15 s)
#   local-cluster.sh env DIR      prints "export SLURM_CONF=DIR/etc/slurm.conf"
#
# Environment for start: T5_CLUSTER_MEM_MB (node RealMemory, default what `slurmd -C` reports),
# T5_CLUSTER_PARTITION (default "debug"), T5_CLUSTER_MAXTIME (partition MaxTime, default 30),
# T5_CLUSTER_SMALL_MB (adds a partition "small" on the same node with MaxMemPerNode=that).
# Needs root (munged and slurmd as root) and Debian's slurm-wlm and munge packages.
#
# Daemons are stopped by the pid in their pid file only, and only if /proc/PID/exe is the daemon
# binary (Debian installs them behind alternatives links, so both sides go through readlink -f):
# never by name, so other clusters and processes on the machine are left alone.
set -u

die() { echo "local-cluster: $*" >&2; exit 1; }

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: local-cluster.sh start|stop|env DIR"
case "$dir" in /*) ;; *) dir=$(cd "$dir" 2>/dev/null && pwd) || die "no directory $2" ;; esac
conf=$dir/etc/slurm.conf

# pid_alive FILE BINARY: print the pid if FILE names a live process running BINARY
pid_alive() {
    local file=$1 bin=$2 pid exe
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' < "$file")
    [ -n "$pid" ] || return 1
    exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || return 1
    [ "$exe" = "$(readlink -f "$bin")" ] || return 1
    echo "$pid"
}

# stop_daemon FILE BINARY NAME
stop_daemon() {
    local file=$1 bin=$2 name=$3 pid i
    pid=$(pid_alive "$file" "$bin") || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 150); do
        [ -d "/proc/$pid" ] || { rm -f "$file"; return 0; }
        # a zombie of ours (munged is not our child, but be safe) counts as gone
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
        sleep 0.1
    done
    if pid_alive "$file" "$bin" >/dev/null; then
        echo "local-cluster: $name (pid $pid) ignored SIGTERM for 15 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$file"
}

free_port() {  # a TCP port nobody listens on (random, so concurrent clusters do not collide)
    local p used
    used=$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u)
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        if ! grep -qx "$p" <<<"$used" && ! grep -qx "$((p + 1))" <<<"$used"; then echo "$p"; return; fi
    done
    die "no free TCP port found"
}

start() {
    [ "$(id -u)" -eq 0 ] || die "needs root (munged and slurmd run as root here)"
    for b in munged slurmctld slurmd sinfo; do
        command -v "$b" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
        command -v "$b" >/dev/null || die "$b not found. HINT: apt-get install -y slurm-wlm munge"
    done
    if pid_alive "$dir/run/slurmctld.pid" "$(command -v slurmctld)" >/dev/null; then
        die "a cluster already runs in $dir (stop it first: local-cluster.sh stop $dir)"
    fi
    mkdir -p "$dir"/{etc,run,log,spool/ctld,spool/d,munge-key,munge-sock} || die "cannot create $dir"
    chmod 0755 "$dir" "$dir/munge-sock"
    chmod 0700 "$dir/munge-key"
    [ -s "$dir/munge-key/munge.key" ] || head -c 1024 /dev/urandom > "$dir/munge-key/munge.key"
    chmod 0400 "$dir/munge-key/munge.key"
    local sock=$dir/munge-sock/munge.socket
    munged --key-file="$dir/munge-key/munge.key" --socket="$sock" --pid-file="$dir/run/munged.pid" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/munge-key/munged.seed" --force \
        >>"$dir/log/munged.out" 2>&1 || die "munged did not start: $(tail -3 "$dir/log/munged.log" 2>/dev/null)"
    local i
    for i in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    munge -n -S "$sock" 2>/dev/null | unmunge -S "$sock" >/dev/null 2>&1 \
        || die "munge does not work on $sock: $(tail -3 "$dir/log/munged.log")"

    local host node cpus boards sockets cores threads mem ctld_port d_port
    host=$(hostname -s)
    node=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    boards=$(sed -n 's/.*Boards=\([0-9]*\).*/\1/p' <<<"$node")
    sockets=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$node")
    cores=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$node")
    threads=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$node")
    mem=${T5_CLUSTER_MEM_MB:-$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")}
    ctld_port=$(free_port)
    d_port=$((ctld_port + 1))
    # Job ids of every cluster start at their own random number: a job step's leftovers outside
    # the cluster's directory (PMIx's /tmp/spmix_appdir_UID_JOB.STEP) then never collide with the
    # same job id of a later cluster, which would make that job's srun launch fail.
    first_job_id=$(( (RANDOM * 32768 + RANDOM) % 60000000 + 1000000 ))
    cat > "$conf" <<EOF
# generated by jobs/slurm/local-cluster.sh: a private one-node test cluster
ClusterName=t5local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock,cred_expire=10
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
EnforcePartLimits=ALL
DependencyParameters=kill_invalid_depend
MinJobAge=600
FirstJobId=$first_job_id
KillWait=5
MpiDefault=pmix
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=${T5_CLUSTER_PARTITION:-debug} Nodes=$host Default=YES MaxTime=${T5_CLUSTER_MAXTIME:-30} State=UP
EOF
    if [ -n "${T5_CLUSTER_SMALL_MB:-}" ]; then
        echo "PartitionName=small Nodes=$host MaxMemPerNode=$T5_CLUSTER_SMALL_MB MaxTime=${T5_CLUSTER_MAXTIME:-30} State=UP" >> "$conf"
    fi
    export SLURM_CONF=$conf
    slurmctld -f "$conf" >>"$dir/log/slurmctld.out" 2>&1 \
        || die "slurmctld did not start: $(tail -5 "$dir/log/slurmctld.log" 2>/dev/null)"
    slurmd -f "$conf" >>"$dir/log/slurmd.out" 2>&1 \
        || die "slurmd did not start: $(tail -5 "$dir/log/slurmd.log" 2>/dev/null)"
    local state=""
    for i in $(seq 300); do
        state=$(timeout 5 sinfo -h -N -p "${T5_CLUSTER_PARTITION:-debug}" -o '%T' 2>/dev/null | head -1)
        [ "$state" = idle ] && break
        sleep 0.1
    done
    if [ "$state" != idle ]; then
        echo "local-cluster: the node is '$state', not idle, after 30 s" >&2
        tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2
        stop
        exit 1
    fi
    echo "export SLURM_CONF=$conf"
}

stop() {
    export SLURM_CONF=$conf
    PATH=$PATH:/usr/sbin:/sbin
    local ctld_bin d_bin m_bin i
    ctld_bin=$(command -v slurmctld) d_bin=$(command -v slurmd) m_bin=$(command -v munged)
    # Jobs first: slurmstepd (and the job's processes) outlive slurmd.
    if [ -f "$conf" ] && pid_alive "$dir/run/slurmctld.pid" "$ctld_bin" >/dev/null; then
        local jobs
        jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null
            for i in $(seq 200); do
                [ -z "$(timeout 5 squeue -h -t R,CG,S -o '%A' 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemon "$dir/run/slurmd.pid" "$d_bin" slurmd
    stop_daemon "$dir/run/slurmctld.pid" "$ctld_bin" slurmctld
    stop_daemon "$dir/run/munged.pid" "$m_bin" munged
    # A slurmstepd of this cluster that outlived its job (seen after a time-limit kill): found by
    # pid through its environment naming this cluster's slurm.conf, never by name alone.
    local p stepd_bin
    stepd_bin=$(readlink -f "$(command -v slurmstepd 2>/dev/null || echo /usr/sbin/slurmstepd)")
    for p in /proc/[0-9]*; do
        [ "$(readlink -f "$p/exe" 2>/dev/null)" = "$stepd_bin" ] || continue
        tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$conf" || continue
        kill -KILL "${p#/proc/}" 2>/dev/null
    done
    return 0
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$conf" ;;
    *) die "unknown command '$cmd' (start, stop or env)" ;;
esac
