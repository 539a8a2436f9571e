#!/usr/bin/env bash
# A multi-node Slurm on this one machine for the tests: a controller (slurmctld, in the root
# network namespace) and N slurmd nodes, each in its own network namespace and UTS namespace
# (hostname node1..N) with its own address on a bridge, so that a job on a node runs "on
# another host" as far as the gateway can tell: other addresses, another hostname, only the
# bridge between them. It runs beside start-slurm.sh's single-node Slurm (own ports, own
# munged, own state; the clients pick it with SLURM_CONF) and shares the file system, as the
# nodes of a real cluster share home directories.
#
# Usage: start-slurm-multinode.sh           (re)start everything, fresh job state
#        start-slurm-multinode.sh node NAME  bring one node back (its link up, its slurmd
#                                            started) after a test took it down
# Prints, last: SLURM_CONF=<path> (what clients and the gateway must have in their environment).
#
# Network: bridge dgwmn0 with ${MN_NET}.1/24 (the gateway listens there), node i at
# ${MN_NET}.$((10+i)); only addresses inside the namespaces this script creates. A node's
# default route is its link with no gateway behind it, so a job finds its own address (as
# distributed does, by "connecting" a UDP socket) and nothing leaves the bridge.
# Knobs: MN_NODES (default 3), MN_NET (10.87.0), MN_DIR (/var/lib/dgw-slurm-multinode),
# MN_CTLD_PORT (6827), MN_SLURMD_PORT (6828), MN_CPUS (CPUs Slurm believes each node has; 4),
# MN_MEM_MB (6000), MN_SLURMD_TIMEOUT (s without an answer before a node is DOWN; 10).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
HERE=$(cd "$(dirname "$0")" && pwd)
NODES=${MN_NODES:-3}
NET=${MN_NET:-10.87.0}
DIR=${MN_DIR:-/var/lib/dgw-slurm-multinode}
CTLD_PORT=${MN_CTLD_PORT:-6827}
SLURMD_PORT=${MN_SLURMD_PORT:-6828}
CPUS=${MN_CPUS:-4}
MEM=${MN_MEM_MB:-6000}
TIMEOUT=${MN_SLURMD_TIMEOUT:-10}
BRIDGE=dgwmn0
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null \
    || ! command -v ip >/dev/null || ! command -v unshare >/dev/null; then
    apt-get update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        slurm-wlm munge iproute2 util-linux >/dev/null
fi

# The daemons outlive this script: they must not keep its open files (a caller's flock).
daemon() {
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        exec "$@"
    )
}
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $s != Z* ]]; }

ns() { echo "dgwmn-$1"; }   # the network namespace of node $1

wait_node_state() {   # $1: node; waits until sinfo shows it usable
    local state=
    for _ in $(seq 150); do
        state=$(sinfo -h -N -n "$1" -o '%T' 2>/dev/null || true)
        case "$state" in idle|mixed|allocated) return 0 ;; esac
        sleep 0.2
    done
    echo "slurm node $1 state: '$state'" >&2
    tail -20 "$DIR/log/slurmd-$1.log" >&2 || true
    return 1
}

start_slurmd() {   # $1: node. Its slurmd, in its namespaces, unless it runs already.
    local node=$1 pid
    pid=$(cat "$DIR/run/slurmd-$node.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && alive "$pid" && [ "$(ps -o comm= -p "$pid")" = slurmd ]; then
        return 0
    fi
    mkdir -p "$DIR/spool/$node"
    # nsenter, not ip netns exec: that mounts a new /sys, without the cgroup file systems
    # slurmd needs. Its own mount namespace, for its own /etc/hosts.
    daemon nsenter --net="/run/netns/$(ns "$node")" unshare --uts --mount sh -c \
        "mount --bind /etc/netns/$(ns "$node")/hosts /etc/hosts && hostname $node \
         && exec /usr/sbin/slurmd"
}

node_up() {   # $1: node. Its link up again and its slurmd running; Slurm takes it back.
    local node=$1
    ip -n "$(ns "$node")" link set eth0 up
    ip -n "$(ns "$node")" route replace default dev eth0
    start_slurmd "$node"
    scontrol update nodename="$node" state=resume 2>/dev/null || true
    wait_node_state "$node"
}

if [ "${1:-}" = node ]; then
    node_up "${2:?usage: $0 node NAME}"
    echo "SLURM_CONF=$CONF"
    exit 0
fi

bash "$HERE/stop-slurm-multinode.sh"   # whatever a previous run left up

# -- network ---------------------------------------------------------------------------
ip link add "$BRIDGE" type bridge
ip addr add "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
HOSTS="127.0.0.1 localhost
$NET.1 $(hostname -s)-bridge"
for i in $(seq "$NODES"); do HOSTS+=$'\n'"$NET.$((10 + i)) node$i"; done
for i in $(seq "$NODES"); do
    node=node$i
    n=$(ns "$node")
    ip netns add "$n"
    ip link add "dgwmn-n$i" type veth peer name "dgwmn-n${i}p"
    ip link set "dgwmn-n${i}p" netns "$n"
    ip link set "dgwmn-n$i" master "$BRIDGE"
    ip link set "dgwmn-n$i" up
    ip -n "$n" link set lo up
    ip -n "$n" link set "dgwmn-n${i}p" name eth0
    ip -n "$n" addr add "$NET.$((10 + i))/24" dev eth0
    ip -n "$n" link set eth0 up
    ip -n "$n" route add default dev eth0
    mkdir -p "/etc/netns/$n"
    printf '%s\n' "$HOSTS" >"/etc/netns/$n/hosts"
done

# -- munge: its own daemon, key and socket (start-slurm.sh restarts the system one) --------
install -d -m 0755 "$DIR" "$DIR/etc" "$DIR/log" "$DIR/run" "$DIR/spool"
install -d -o munge -g munge -m 0755 "$DIR/munge"
install -d -o munge -g munge -m 0700 "$DIR/munge-private"
KEY=$DIR/munge-private/munge.key
[ -s "$KEY" ] || dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none
chown munge:munge "$KEY"
chmod 0400 "$KEY"
SOCKET=$DIR/munge/munge.socket
daemon runuser -u munge -- /usr/sbin/munged --socket="$SOCKET" --key-file="$KEY" \
    --pid-file="$DIR/munge-private/munged.pid" --log-file="$DIR/munge-private/munged.log" \
    --seed-file="$DIR/munge-private/munged.seed"
for _ in $(seq 50); do munge -S "$SOCKET" -n 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1 && break; sleep 0.1; done
munge -S "$SOCKET" -n | unmunge -S "$SOCKET" >/dev/null

# -- slurm -------------------------------------------------------------------------------
rm -rf "$DIR/state" "$DIR/spool"
mkdir -p "$DIR/state" "$DIR/spool"
: >"$DIR/log/slurmctld.log"
CTL=$(hostname -s)
{
cat <<CONF
# Written by dask-gateway's scripts/services/start-slurm-multinode.sh for its tests.
ClusterName=dgmulti
# The controller runs on this host (its name is checked), reached by the nodes on the bridge.
SlurmctldHost=${CTL}(${NET}.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${SOCKET}
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
DefMemPerCPU=512
SelectType=select/cons_tres
# CR_LLN: each job goes to the least loaded node, so a cluster spreads over the nodes.
SelectTypeParameters=CR_Core_Memory,CR_LLN
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
StateSaveLocation=${DIR}/state
# The nodes share this file system: each its own spool, pid file and log (%n: its name).
SlurmdSpoolDir=${DIR}/spool/%n
SlurmctldPidFile=${DIR}/run/slurmctld.pid
SlurmdPidFile=${DIR}/run/slurmd-%n.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# A node that stops answering is DOWN after SlurmdTimeout s; it returns when its slurmd
# registers again.
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=${TIMEOUT}
MessageTimeout=5
InactiveLimit=0
KillWait=5
MinJobAge=300
CONF
for i in $(seq "$NODES"); do
    echo "NodeName=node$i NodeHostname=node$i NodeAddr=$NET.$((10 + i)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
done
echo "PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
} >"$CONF"
chmod 0644 "$CONF"

daemon /usr/sbin/slurmctld -c
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping | grep -q 'is UP' || { tail -30 "$DIR/log/slurmctld.log" >&2; exit 1; }

for i in $(seq "$NODES"); do
    : >"$DIR/log/slurmd-node$i.log"
    start_slurmd "node$i"
done
for i in $(seq "$NODES"); do wait_node_state "node$i"; done
echo "slurm multinode ready: controller $CTL at $NET.1:$CTLD_PORT, nodes" \
    "$(sinfo -h -N -o '%N' | sort -u | tr '\n' ' ')($CPUS CPUs, $MEM MB each)"
echo "SLURM_CONF=$CONF"
