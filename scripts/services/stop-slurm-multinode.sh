#!/usr/bin/env bash
# Stop the multi-node Slurm of start-slurm-multinode.sh and remove its network: cancel every
# job, end every process inside the nodes' namespaces (slurmd, its job steps, the jobs: a
# stopped slurmd leaves jobs running), stop slurmctld and its munged by their pid files, then
# delete the namespaces, links and bridge. Leaves the single-node Slurm alone.
set -u
DIR=${MN_DIR:-/var/lib/dgw-slurm-multinode}
export SLURM_CONF=$DIR/etc/slurm.conf
BRIDGE=dgwmn0
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $s != Z* ]]; }

if [ -s "$DIR/run/slurmctld.pid" ] && alive "$(cat "$DIR/run/slurmctld.pid")" \
    && [ -f "$SLURM_CONF" ]; then
    ids=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
        # shellcheck disable=SC2086
        scancel $ids 2>/dev/null
        for _ in $(seq 50); do
            [ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi

namespaces=$(ip netns list 2>/dev/null | awk '$1 ~ /^dgwmn-node[0-9]+$/ {print $1}')
for n in $namespaces; do   # TERM everything in the node, then KILL what is left
    pids=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')
    # shellcheck disable=SC2086
    [ -n "${pids// /}" ] && kill -TERM $pids 2>/dev/null
done
for _ in $(seq 50); do
    left=
    for n in $namespaces; do
        for pid in $(ip netns pids "$n" 2>/dev/null); do alive "$pid" && left=1; done
    done
    [ -z "$left" ] && break
    sleep 0.1
done
for n in $namespaces; do
    pids=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')
    # shellcheck disable=SC2086
    [ -n "${pids// /}" ] && kill -KILL $pids 2>/dev/null
done

stop_pid() {   # $1: pid file. TERM, up to 10 s, then KILL.
    [ -s "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    if alive "$pid"; then
        kill -TERM "$pid"
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -KILL "$pid"
    fi
    rm -f "$1"
}
stop_pid "$DIR/run/slurmctld.pid"
stop_pid "$DIR/munge-private/munged.pid"
rm -f "$DIR"/run/slurmd-*.pid

for n in $namespaces; do
    ip netns del "$n" 2>/dev/null
    rm -rf "/etc/netns/$n"
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 \
    | grep -E '^dgwmn-n[0-9]+$'); do
    ip link del "$link" 2>/dev/null
done
ip link del "$BRIDGE" 2>/dev/null
exit 0
