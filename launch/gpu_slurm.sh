#!/usr/bin/env bash
# Multi-node GPU training under Slurm: checks the config against the planned cluster, writes an
# sbatch script into the workdir and submits it. One process per GPU (as JAX expects under
# Slurm: each process drives the GPU of its SLURM_LOCALID); the first node hosts the
# jax.distributed coordinator, and every process gets the coordinator address, the process
# count (SLURM_NTASKS) and its own id (SLURM_PROCID) as flags of the main entry point. A run
# stopped by a preemption notice exits 75 after saving; the job then requeues itself and resumes.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/gpu_slurm.sh --nodes N --gpus-per-node G --workdir DIR --config configs/FILE.py[:ARG]
                           [--job-name NAME] [--partition P] [--time HH:MM:SS] [--port PORT]
                           [--setup 'COMMAND'] [--dry-run] [-- --config.KEY=VALUE ...]

  --nodes N           nodes
  --gpus-per-node G   GPUs per node (one process each)
  --workdir DIR       the run's workdir on a file system all nodes share
  --config FILE       config of the run, relative to the repository root
  --job-name NAME     Slurm job name (default: rectifiers_jax)
  --partition P       Slurm partition
  --time T            Slurm time limit
  --port PORT         coordinator port (default: 20000 + job id mod 20000, so jobs sharing a
                      node do not collide)
  --setup COMMAND     shell line run before training, e.g. 'source .venv/bin/activate'
  --dry-run           check the config, print the sbatch script and the sbatch command; write
                      and submit nothing
  after --             overrides passed to `python -m rectifiers_jax.main`

The job runs in the repository root (which must be on the shared file system too) and writes
its log to WORKDIR/slurm-JOBID.out. Restarting the same command resumes from the checkpoints.
The config is checked first (python -m rectifiers_jax.preflight, with $PYTHON, default python3).
EOF
}

SCRIPT=gpu_slurm.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODES="" GPUS="" WORKDIR="" CONFIG="" JOB_NAME="rectifiers_jax" PARTITION="" TIME="" PORT="" SETUP=""
DRY_RUN=0
OVERRIDES=()
while (( $# )); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nodes|--gpus-per-node|--workdir|--config|--job-name|--partition|--time|--port|--setup)
      (( $# >= 2 )) || die "$1 needs a value"
      case "$1" in
        --nodes) NODES=$2 ;; --gpus-per-node) GPUS=$2 ;; --workdir) WORKDIR=$2 ;;
        --config) CONFIG=$2 ;; --job-name) JOB_NAME=$2 ;; --partition) PARTITION=$2 ;;
        --time) TIME=$2 ;; --port) PORT=$2 ;; --setup) SETUP=$2 ;;
      esac
      shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n "$NODES" ]] || die "--nodes is required (see --help)"
[[ -n "$GPUS" ]] || die "--gpus-per-node is required (see --help)"
[[ -n "$WORKDIR" ]] || die "--workdir is required (see --help)"
[[ -n "$CONFIG" ]] || die "--config is required (see --help)"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got $NODES"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got $GPUS"
[[ -z "$PORT" || "$PORT" =~ ^[1-9][0-9]*$ ]] || die "--port must be a number, got $PORT"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -f "$REPO/${CONFIG%%:*}" ]] || die "no config file ${CONFIG%%:*} in $REPO"
# The job runs in the repository root, so a relative workdir is taken from here and made absolute.
[[ "$WORKDIR" == /* || "$WORKDIR" == *://* ]] || WORKDIR="$PWD/$WORKDIR"
SCRIPT="$WORKDIR/job.sbatch"
PROCESSES=$((NODES * GPUS))
echo "# $NODES nodes x $GPUS GPUs: $PROCESSES processes, 1 GPU each"
# The config must fit this cluster before anything is submitted (the batch divides, ...).
(cd "$REPO" && "${PYTHON:-python3}" -m rectifiers_jax.preflight --config="$CONFIG" \
  --devices="$PROCESSES" --processes="$PROCESSES" "${OVERRIDES[@]}") >&2 || exit 2

HEADER="#SBATCH --job-name=$(quote "$JOB_NAME")
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$GPUS
#SBATCH --gpus-per-node=$GPUS
#SBATCH --chdir=$(quote "$REPO")
#SBATCH --output=$(quote "$WORKDIR/slurm-%j.out")"
[[ -z "$PARTITION" ]] || HEADER+=$'\n'"#SBATCH --partition=$PARTITION"
[[ -z "$TIME" ]] || HEADER+=$'\n'"#SBATCH --time=$TIME"

SBATCH_SCRIPT="#!/usr/bin/env bash
$HEADER
set -euo pipefail
${SETUP:+$SETUP
}# jax.distributed: the first node of the allocation hosts the coordinator (process 0).
mapfile -t NODE_LIST < <(scontrol show hostnames \"\$SLURM_JOB_NODELIST\")
export COORDINATOR_ADDRESS=\"\${NODE_LIST[0]}:${PORT:-\$((20000 + SLURM_JOB_ID % 20000))}\"
# Single quotes: each task expands its own SLURM_PROCID.
status=0
srun --ntasks=\"\$SLURM_NTASKS\" bash -c 'exec python -m rectifiers_jax.main \"\$@\" \\
  --coordinator_address=\"\$COORDINATOR_ADDRESS\" --num_processes=\"\$SLURM_NTASKS\" \\
  --process_id=\"\$SLURM_PROCID\"' rectifiers_jax \\
  $(quote --config="$CONFIG" --workdir="$WORKDIR" "${OVERRIDES[@]}") || status=\$?
# 75: stopped by a preemption notice after saving; back in the queue, the job resumes.
if (( status == 75 )); then scontrol requeue \"\$SLURM_JOB_ID\"; fi
exit \"\$status\""

if (( DRY_RUN )); then
  echo "# $SCRIPT:"
  echo "$SBATCH_SCRIPT"
  echo "# submit:"
  quote sbatch "$SCRIPT"
else
  mkdir -p "$WORKDIR"
  echo "$SBATCH_SCRIPT" > "$SCRIPT"
  sbatch "$SCRIPT"
fi
