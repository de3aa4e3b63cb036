#!/usr/bin/env bash
# examples/pose_llama7b.sbatch under a real Slurm on this one machine (CI: a fresh machine, root):
# installs Debian's slurm-wlm and munge when missing, starts a private munged, slurmctld and
# slurmd on localhost (own config, key, ports and state in a temporary directory: nothing under
# /etc is changed and a Slurm already running here is left alone), submits the batch script in
# its CPU mode (POSE_TINY_CPU=1: one node, one srun task, its torchrun with 2 gloo processes)
# with `sbatch --wait`, and checks the one checkpoint series it saved. Every wait is bounded; the
# daemons it started are stopped on exit.
#   bash tools/slurm_check.sh        (INSTALL=0: fail instead of installing missing packages;
#                                     INSTALL_ONLY=1: install them and stop, as CI does early)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
say() { echo "[slurm-check] $*" >&2; }
fail() { echo "error: slurm check: $*" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    [ "${INSTALL:-1}" = 1 ] || fail "slurmctld, slurmd or munged is missing (INSTALL=0)"
    [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are missing and installing them needs root"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >/dev/null || fail "apt-get update failed or took over 5 minutes"
    timeout 600 apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
        || fail "apt-get install slurm-wlm munge failed or took over 10 minutes"
fi
[ "${INSTALL_ONLY:-0}" = 1 ] && { say "slurm-wlm and munge are installed"; exit 0; }
[ "$(id -u)" = 0 ] || fail "starting slurmd needs root (it runs jobs as their users)"

WORK=$(mktemp -d /tmp/slurm-check.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
logs() {
    local f
    for f in "$WORK"/*.log "$WORK"/munge/*.log; do
        [ -f "$f" ] && { echo "---- $f (last lines)" >&2; tail -n 30 "$f" >&2; }
    done
    return 0
}

# ---- munge: a private daemon and key (slurm authenticates every message with it)
mkdir -p "$WORK/munge"
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$WORK/munge"
chmod 711 "$WORK/munge"; chmod 400 "$WORK/munge/munge.key"  # socket reached by path
SOCKET=$WORK/munge/munge.sock
runuser -u munge -- munged -F --socket="$SOCKET" --key-file="$WORK/munge/munge.key" \
    --pid-file="$WORK/munge/munged.pid" --seed-file="$WORK/munge/munged.seed" \
    --log-file="$WORK/munge/munged.log" > "$WORK/munged.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$SOCKET" ] && break; sleep 0.2; done
[ -S "$SOCKET" ] || { logs; fail "munged did not open $SOCKET within 10 s"; }

# ---- slurm: controller and one node, this machine, on two free ports
read -r CTLD_PORT SLURMD_PORT < <("${PYTHON:-python3}" - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
NODE=$(hostname -s)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
export SLURM_CONF=$WORK/slurm.conf
mkdir -p "$WORK/state" "$WORK/spool"
cat > "$SLURM_CONF" <<EOF
ClusterName=slurmcheck
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM_MB State=UNKNOWN
PartitionName=check Nodes=$NODE Default=YES MaxTime=30 State=UP
EOF
slurmctld -D -i -f "$SLURM_CONF" > "$WORK/slurmctld.log" 2>&1 &
PIDS+=($!)
slurmd -D -N "$NODE" -f "$SLURM_CONF" > "$WORK/slurmd.log" 2>&1 &
PIDS+=($!)
state=
for _ in $(seq 60); do
    state=$(timeout 10 sinfo -h -N -o %t 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 1
done
[ "$state" = idle ] || { logs; fail "the node did not come up idle within a minute (state: '${state:-none}')"; }
say "slurmctld and slurmd up (node $NODE idle)"

# ---- the batch script as a user submits it, from the repository root
SAVE=$WORK/ckpt
cd "$REPO"
set +e
POSE_TINY_CPU=1 SAVE=$SAVE timeout 900 sbatch --wait --nodes 1 --time 15 \
    --output "$WORK/job.log" examples/pose_llama7b.sbatch
status=$?
set -e
if [ "$status" != 0 ]; then
    logs
    fail "sbatch examples/pose_llama7b.sbatch ended with status $status (job log above)"
fi
got=$(ls -A "$SAVE" | tr '\n' ' ')
want="iter_0000002 iter_0000003 latest_checkpointed_iteration.txt pose_model.json "
[ "$got" = "$want" ] || { logs; fail "$SAVE holds '$got', expected '$want'"; }
[ "$(cat "$SAVE/latest_checkpointed_iteration.txt")" = 3 ] || fail "the tracker does not name iteration 3"
grep -q -- "--nnodes 1 --node-rank 0 --nproc-per-node 2" "$WORK/job.log" \
    || { logs; fail "the job did not launch torchrun with Slurm's node count and rank"; }
grep -E "^(saved|\+ exec)" "$WORK/job.log" | cut -c1-200 >&2
say "ok: sbatch examples/pose_llama7b.sbatch trained and saved iterations 2 and 3"
