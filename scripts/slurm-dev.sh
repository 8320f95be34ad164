#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (or a laptop, or a container), for trying
# dagrun's Slurm executor and for its tests: munge, slurmctld and slurmd on localhost.
# Idempotent: installs (Debian's slurm-wlm and munge) and starts only what is missing.
#
# usage: scripts/slurm-dev.sh [start|stop|status]        (default: start)
#
# Runs as root (it installs packages and writes /etc/slurm and /etc/munge). The node
# declares 4 CPUs and 4000 MB whatever the machine has (SlurmdParameters=config_overrides),
# uses no cgroups (proctrack/linuxproc, task/none), and keeps finished jobs in a text file
# that `sacct -c` reads (jobcomp/filetxt): no database daemon.
set -euo pipefail

conf=/etc/slurm/slurm.conf
key=/etc/munge/munge.key

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  echo "slurm-dev: installing slurm-wlm and munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq slurm-wlm munge >/dev/null; }
}

start_munge() {
  if [ ! -s "$key" ]; then
    mkdir -p /etc/munge
    head -c 1024 /dev/urandom >"$key"
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge "$key" /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 700 /etc/munge
  chmod 400 "$key"
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    echo "slurm-dev: munged did not start; see /var/log/munge/munged.log" >&2
    exit 1
  fi
}

write_conf() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat >"$conf.new" <<'EOF'
# Written by dagrun's scripts/slurm-dev.sh: a single-node cluster on localhost.
ClusterName=dev
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.txt
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 RealMemory=4000 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  if cmp -s "$conf.new" "$conf"; then rm "$conf.new"; else mv "$conf.new" "$conf"; fi
}

start() {
  install
  start_munge
  write_conf
  running /run/slurmctld.pid || slurmctld
  # The client commands retry a missing controller for minutes: each try is bounded here.
  for _ in $(seq 100); do timeout 2 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  if ! timeout 2 scontrol ping 2>/dev/null | grep -q UP; then
    echo "slurm-dev: slurmctld did not come up; see /var/log/slurm/slurmctld.log" >&2
    exit 1
  fi
  running /run/slurmd.pid || slurmd -N localhost
  for _ in $(seq 100); do
    if timeout 2 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "slurm-dev: up: $(sinfo -h -o '%P %a %D %T %N')"
      return
    fi
    sleep 0.1
  done
  echo "slurm-dev: the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
  exit 1
}

stop() {
  for daemon in slurmd slurmctld; do
    if running "/run/$daemon.pid"; then kill "$(cat "/run/$daemon.pid")"; fi
  done
  # slurmctld saves its state before it exits: wait, so that a start right after finds it gone.
  for _ in $(seq 100); do
    running /run/slurmd.pid || running /run/slurmctld.pid || break
    sleep 0.1
  done
  echo "slurm-dev: stopped slurmd and slurmctld (munged left running)"
}

status() {
  if running /run/slurmctld.pid && running /run/slurmd.pid; then
    timeout 5 sinfo
  else
    echo "slurm-dev: not running"
    exit 1
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
