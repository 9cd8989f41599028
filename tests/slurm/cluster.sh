#!/usr/bin/env bash
# A real single-node Slurm cluster for lpm's tests, started without systemd:
#
#   bash tests/slurm/cluster.sh start    # install Slurm + munge if missing, start, wait for idle
#   bash tests/slurm/cluster.sh status   # daemons and node state
#   bash tests/slurm/cluster.sh stop     # stop what start started
#
# Root on Debian/Ubuntu only: it installs the distribution's packages and runs the daemons as
# root. Everything it writes lives in $LPM_SLURM_DIR (default /tmp/lpm-slurm), symlinked from
# /etc/slurm so that sbatch/srun/sinfo need no SLURM_CONF. The node claims $LPM_SLURM_CPUS CPUs
# (default 4, more than a 2-core CI machine has: Slurm's bookkeeping, not the kernel, limits
# jobs) and two fake GPUs, so `--gpus-per-node=2` works and sets CUDA_VISIBLE_DEVICES=0,1.
#
# There is no accounting database, so the real `sacct` fails; start installs a stand-in in
# $LPM_SLURM_DIR/bin that answers from `scontrol`. Put that directory first on PATH for anything
# that waits on jobs (submitit), or a job killed without a result is waited on forever.
#
# Exit status: 0 done; 2 this machine cannot run it (not root, not Debian, no apt-get, a host
# name that does not resolve); 1 any other error.
set -euo pipefail

DIR=${LPM_SLURM_DIR:-/tmp/lpm-slurm}
CPUS=${LPM_SLURM_CPUS:-4}
# The node is this machine, by a name that resolves: Lightning's DDP takes its rendezvous
# address (MASTER_ADDR) from the job's node list.
NODE=$(hostname -s)
PARTITION=lpm
GPUS=2
CONF=$DIR/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge)
T0=$(date +%s.%N)

say() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: $*" >&2; exit "${2:-1}"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# `kill -0` succeeds on a zombie (PID 1 here reaps late): read the state in /proc/PID/stat, and
# check the command name so that a recycled pid is never taken for our daemon.
alive() {
    local pid=$1 name=$2 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }  # the fields after "(comm)"; comm itself may hold spaces
    [[ ${stat%% *} != [ZX] ]]
}

pid_of() { cat "$1" 2>/dev/null || true; }

running() {  # running NAME PIDFILE
    alive "$(pid_of "$2")" "$1"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -1; }

check_machine() {
    [[ $(id -u) == 0 ]] || die "needs root (installs packages, runs slurmctld/slurmd as root)" 2
    [[ -r /etc/debian_version ]] || die "needs Debian or Ubuntu (apt packages)" 2
    getent hosts "$NODE" >/dev/null ||
        die "this machine's name, $NODE, does not resolve: add it to /etc/hosts" 2
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "needs apt-get to install ${missing[*]}" 2
    local t quiet=(-qq -o Dpkg::Use-Pty=0)
    t=$(date +%s.%N)
    export DEBIAN_FRONTEND=noninteractive
    # A fresh container has empty package lists: update only then, or when install fails.
    if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null ||
        ! apt-get install "${quiet[@]}" -y --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get "${quiet[@]}" update
        apt-get install "${quiet[@]}" -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
    say "installed ${missing[*]} in $(since "$t") s"
}

start_munge() {
    munge_works && return 0
    # systemd would make /run/munge (tmpfs) and the key; the package's post-install makes the key.
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        install -d -o munge -g munge -m 0700 /etc/munge
        (umask 077 && head -c 1024 /dev/urandom >/etc/munge/munge.key)
        chown munge:munge /etc/munge/munge.key
    fi
    runuser -u munge -- munged --force
    cp /run/munge/munged.pid "$DIR/run/munged.pid"  # ours: stop ends it, and no other munged
    local i
    for i in $(seq 50); do munge_works && return 0; sleep 0.1; done
    die "munged started but munge -n | unmunge fails"
}

write_config() {
    # More memory than this drains the node ("Low RealMemory"); slurmd -C reports MB.
    local real_mb
    real_mb=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    [[ $real_mb =~ ^[0-9]+$ ]] || die "slurmd -C gave no RealMemory"
    local i
    for ((i = 0; i < GPUS; i++)); do
        # Slurm binds GPUs by device files: a plain file gives no CUDA_VISIBLE_DEVICES.
        [[ -c $DIR/dev/nvidia$i ]] || mknod "$DIR/dev/nvidia$i" c 195 "$i"
    done
    cat >"$DIR/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=$DIR/dev/nvidia[0-$((GPUS - 1))]
EOF
    cat >"$CONF" <<EOF
# lpm's single-node test cluster (tests/slurm/cluster.sh); rewritten on every start.
ClusterName=lpm
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups, no accounting daemon, no MPI: none exists in a container without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Schedule at once (the defaults add ~3 s per job); keep finished jobs visible to scontrol (and
# so to the sacct stand-in) for an hour; SIGKILL 5 s after SIGTERM.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge=3600
KillWait=5
ReturnToService=2
# Take CPUs= below as given, not what the hardware has.
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$((real_mb * 9 / 10)) Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    local f
    mkdir -p /etc/slurm
    for f in slurm.conf gres.conf; do
        if [[ -e /etc/slurm/$f && $(readlink "/etc/slurm/$f") != "$DIR/$f" ]]; then
            die "/etc/slurm/$f exists and is not this test cluster's: refusing to replace it"
        fi
        ln -sfn "$DIR/$f" "/etc/slurm/$f"
    done
}

install_sacct() {
    cat >"$DIR/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# sacct stand-in for lpm's test cluster, which has no accounting database: answers submitit's
# `sacct -o JobID,State,NodeList --parsable2 -j ID ...` from `scontrol -o show job`.
set -euo pipefail
ids=()
while (($#)); do
    case $1 in
        -j | --jobs) IFS=, read -ra more <<<"$2" && ids+=("${more[@]}") && shift 2 ;;
        -o | --format)
            [[ $2 == JobID,State,NodeList ]] ||
                { echo "sacct stand-in: only -o JobID,State,NodeList, not $2" >&2 && exit 1; }
            shift 2 ;;
        -P | --parsable2) shift ;;
        *) echo "sacct stand-in: unsupported argument $1" >&2 && exit 1 ;;
    esac
done
echo "JobID|State|NodeList"
for id in "${ids[@]}"; do
    # An unknown id prints only the header, as sacct does for a job not recorded yet.
    scontrol -o show job "$id" 2>/dev/null | awk '{
        delete f
        for (i = 1; i <= NF; i++) { n = index($i, "="); if (n) f[substr($i, 1, n - 1)] = substr($i, n + 1) }
        id = f["JobId"]
        if ("ArrayJobId" in f) {  # an array task: 12_3; tasks not started yet: 12_[4-7%2]
            t = f["ArrayTaskId"]
            id = f["ArrayJobId"] "_" (t ~ /^[0-9]+$/ ? t : "[" t "]")
        }
        nodes = (f["NodeList"] == "" || f["NodeList"] == "(null)") ? "None assigned" : f["NodeList"]
        print id "|" f["JobState"] "|" nodes
    }'
done
EOF
    chmod 755 "$DIR/bin/sacct"
}

start() {
    check_machine
    if running slurmctld "$DIR/run/slurmctld.pid" && running slurmd "$DIR/run/slurmd.pid" &&
        munge_works && [[ $(node_state) =~ ^(idle|mix|alloc|comp) ]]; then
        say "already running: node $NODE $(node_state) (nothing to do)"
        return 0
    fi
    stop_daemons  # whatever is left of a half-started cluster
    install_packages
    local t
    t=$(date +%s.%N)
    # A fresh state dir each start: no jobs or node state left over from an earlier cluster.
    rm -rf "$DIR/state" "$DIR/spool"
    mkdir -p "$DIR"/{state,spool,run,log,dev,bin}
    start_munge
    write_config
    install_sacct
    slurmctld -f "$CONF"
    slurmd -f "$CONF" -N "$NODE"
    local i
    for i in $(seq 300); do
        [[ $(node_state) == idle ]] && break
        ((i < 300)) || {
            tail -n 20 "$DIR"/log/*.log >&2
            die "node $NODE not idle after 30 s (state: $(node_state)); logs in $DIR/log"
        }
        sleep 0.1
    done
    say "node $NODE idle in partition $PARTITION: $(since "$t") s from starting the daemons," \
        "$(since "$T0") s in all"
    say "for submitit, put the sacct stand-in first on PATH: export PATH=$DIR/bin:\$PATH"
}

stop_one() {  # stop_one NAME PIDFILE
    local name=$1 file=$2 pid i
    pid=$(pid_of "$file")
    if alive "$pid" "$name"; then
        kill -TERM "$pid"
        for i in $(seq 100); do alive "$pid" "$name" || break; sleep 0.1; done
        if alive "$pid" "$name"; then
            say "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid"
        fi
        say "stopped $name ($pid)"
    fi
    rm -f "$file"
}

stop_daemons() {
    stop_one slurmd "$DIR/run/slurmd.pid"
    stop_one slurmctld "$DIR/run/slurmctld.pid"
}

# Job processes outlive slurmd: cancel every job (all are tests') while slurmctld can.
cancel_jobs() {
    running slurmctld "$DIR/run/slurmctld.pid" || return 0
    local jobs i
    jobs=$(squeue -h -o %A 2>/dev/null) || return 0
    [[ -n $jobs ]] || return 0
    # shellcheck disable=SC2086  # one job id a word
    scancel $jobs
    for i in $(seq 150); do
        [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
        sleep 0.1
    done
    say "cancelled jobs ${jobs//$'\n'/ }"
}

stop() {
    cancel_jobs
    stop_daemons
    stop_one munged "$DIR/run/munged.pid"  # only a munged that start started
    local f
    for f in slurm.conf gres.conf; do
        [[ $(readlink "/etc/slurm/$f" 2>/dev/null) != "$DIR/$f" ]] || rm -f "/etc/slurm/$f"
    done
}

status() {
    local rc=0 name file
    for name in slurmctld slurmd munged; do
        file=$DIR/run/$name.pid
        if running "$name" "$file"; then
            say "$name running ($(pid_of "$file"))"
        elif [[ $name == munged ]] && munge_works; then
            say "munged running (not started by this script)"
        else
            say "$name not running"
            rc=3
        fi
    done
    ((rc)) || say "node $NODE: $(node_state)"
    return "$rc"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
