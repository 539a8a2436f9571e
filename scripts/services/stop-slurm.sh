#!/usr/bin/env bash
# Stop the Slurm started by start-slurm.sh: cancel every job (stopping slurmd leaves jobs
# running), then stop slurmd, slurmctld and munged by the pids in their pid files.
set -u
# A daemon whose parent is gone stays a zombie for a while here, and kill -0 succeeds on a
# zombie: treat Z as gone.
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $s != Z* ]]; }
if [ -s /run/slurmctld.pid ] && alive "$(cat /run/slurmctld.pid)"; then
    ids=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
        # shellcheck disable=SC2086
        scancel $ids 2>/dev/null
        for _ in $(seq 100); do
            [ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi
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
stop_pid /run/slurmd.pid
stop_pid /run/slurmctld.pid
stop_pid /run/munge/munged.pid
exit 0
