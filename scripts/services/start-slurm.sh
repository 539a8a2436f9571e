#!/usr/bin/env bash
# A single-node Slurm (munged + slurmctld + slurmd) on this machine for the tests, as root and
# without systemd. Installs Debian's slurm-wlm and munge if missing; fresh job state each run.
# Usage: start-slurm.sh [PROCTRACK]   PROCTRACK: how slurmd finds a job's processes to signal
# and wait for: pgid (default; the job's process group), linuxproc (the job's tree of
# processes, read from /proc: what many sites run) or cgroup (a cgroup v1 freezer per job).
# Knobs: SLURM_CPUS (CPUs Slurm believes the node has; default 16, more than the machine:
# a scheduler plus workers must fit at once), SLURM_MEM_MB (default 16000).
set -euo pipefail
PROCTRACK=${1:-${SLURM_PROCTRACK:-pgid}}
case "$PROCTRACK" in
    pgid|linuxproc|cgroup) ;;
    *) echo "usage: $0 [pgid|linuxproc|cgroup]" >&2; exit 2 ;;
esac
export DEBIAN_FRONTEND=noninteractive
HERE=$(cd "$(dirname "$0")" && pwd)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    # The image's policy-rc.d keeps postinst scripts from starting daemons; we start them below.
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
fi

bash "$HERE/stop-slurm.sh"   # whatever a previous run left up

# The daemons outlive this script: they must not keep its open files, e.g. the lock of a
# `flock LOCK start-slurm.sh` (munged would hold that lock for as long as it runs).
daemon() {
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        exec "$@"
    )
}

NODE=$(hostname -s)
CPUS=${SLURM_CPUS:-16}
MEM=${SLURM_MEM_MB:-16000}

# munge: the package made the key; the runtime directory is systemd's job elsewhere.
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    daemon runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null

mkdir -p /etc/slurm /var/log/slurm
: >/var/log/slurm/slurmctld.log
: >/var/log/slurm/slurmd.log
rm -rf /var/spool/slurmctld /var/spool/slurmd
mkdir -p /var/spool/slurmctld /var/spool/slurmd
cat >/etc/slurm/slurm.conf <<CONF
# Written by dask-gateway's scripts/services/start-slurm.sh for its tests.
ClusterName=dgtest
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# pgid: a job's processes are its process group; linuxproc: the tree of processes below the
# job's slurmstepd, from /proc (it skips a process whose name, /proc/PID/stat's second field,
# has a space); cgroup: a freezer cgroup per job (cgroup.conf below).
ProctrackType=proctrack/${PROCTRACK}
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Start a job when it is submitted instead of up to 3 s later.
SchedulerParameters=batch_sched_delay=0
# Believe the CPU and memory numbers below even where they exceed the hardware.
SlurmdParameters=config_overrides
# Without it a job that gives no --mem is handed the whole node.
DefMemPerCPU=512
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
# Finished jobs stay visible to squeue for 5 minutes.
MinJobAge=300
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

if [ "$PROCTRACK" = cgroup ]; then
    # cgroup v1 (this machine's hierarchy), only for tracking: no resource constraints.
    cat >/etc/slurm/cgroup.conf <<CONF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
CONF
else
    rm -f /etc/slurm/cgroup.conf
fi

daemon /usr/sbin/slurmctld -c   # -c: forget saved jobs
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping | grep -q 'is UP' || { tail -30 /var/log/slurm/slurmctld.log; exit 1; }

daemon /usr/sbin/slurmd
state=
for _ in $(seq 150); do
    state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null || true)
    case "$state" in idle|mixed|allocated) break ;; esac
    sleep 0.2
done
case "$state" in
    idle|mixed|allocated) ;;
    *) echo "slurm node state: '$state'" >&2; tail -30 /var/log/slurm/slurmd.log >&2; exit 1 ;;
esac
echo "slurm ready: node $NODE $state, $CPUS CPUs, ${MEM} MB, proctrack/$PROCTRACK"
