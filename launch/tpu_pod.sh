#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: check the config against the slice's chips and hosts,
# create the slice (directly or as a queued resource), copy the committed code to every worker,
# install it with the pinned versions, and start the main job on all workers at once. On a TPU VM
# the job always starts jax.distributed, which finds the other workers from the TPU metadata, so
# it takes no coordinator flags; data and workdir live on a bucket every worker can read.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE --workdir gs://BUCKET/DIR
                         --config configs/FILE.py[:ARG] [--version RUNTIME] [--queued]
                         [--data-dir gs://BUCKET/tfds] [--reuse] [--detach] [--dry-run]
                         [-- --config.KEY=VALUE ...]

  --name NAME         TPU VM (and queued resource) name
  --zone ZONE         e.g. us-central2-b (v4), us-east5-b (v5p)
  --accelerator TYPE  e.g. v4-8, v4-32, v5p-64
  --version RUNTIME   TPU software version (default: tpu-ubuntu2204-base)
  --queued            request the slice as a queued resource and wait until it is ACTIVE
  --workdir DIR       the run's workdir on a bucket (gs://...): checkpoints, metrics, status
  --config FILE       config of the run, relative to the repository root
  --data-dir DIR      TFDS data dir on a bucket, passed as --config.data.data_dir
  --reuse             the VM exists already: skip creating it (still copies and installs)
  --detach            start the job in the background on every worker and return
  --dry-run           check the config, print every command (and the job script), run nothing
  after --             overrides passed to `python -m rectifiers_jax.main`

Example:
  launch/tpu_pod.sh --name rect-a --zone us-central2-b --accelerator v4-32 --queued \
    --workdir gs://my-bucket/runs/model_a --config configs/default.py \
    --data-dir gs://my-bucket/tfds -- --config.train.num_epochs=80
When done: gcloud compute tpus tpu-vm delete NAME --zone=ZONE
       (or gcloud compute tpus queued-resources delete NAME --zone=ZONE --force)
The config is checked first (python -m rectifiers_jax.preflight, with $PYTHON, default python3).
EOF
}

# JAX devices and hosts of an accelerator type: v2/v3 count TensorCores (one JAX device each,
# 8 per host); v4/v5p count TensorCores too but JAX sees one device per chip (2 cores), 4 chips
# per host; v5e (v5litepod) and v6e count chips, one host up to 8 chips, else 4 chips per host.
tpu_topology() {
  local type=$1 version count devices hosts
  version=${type%-*}
  count=${type##*-}
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || die "--accelerator $type: expected TYPE-COUNT, e.g. v4-32"
  case "$version" in
    v2|v3) devices=$count; hosts=$(( (count + 7) / 8 )) ;;
    v4|v5p) devices=$(( count / 2 )); hosts=$(( (devices + 3) / 4 )) ;;
    v5litepod|v5e|v6e)
      devices=$count
      if (( count <= 8 )); then hosts=1; else hosts=$(( count / 4 )); fi ;;
    *) die "--accelerator $type: unknown TPU version $version (v2, v3, v4, v5p, v5litepod, v6e)" ;;
  esac
  (( devices >= 1 )) || die "--accelerator $type: less than one chip"
  echo "$devices $hosts"
}

SCRIPT=tpu_pod.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run() { if (( DRY_RUN )); then quote "$@"; else "$@"; fi; }

NAME="" ZONE="" ACCELERATOR="" VERSION="tpu-ubuntu2204-base" WORKDIR="" CONFIG="" DATA_DIR=""
QUEUED=0 REUSE=0 DETACH=0 DRY_RUN=0
OVERRIDES=()
while (( $# )); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name|--zone|--accelerator|--version|--workdir|--config|--data-dir)
      (( $# >= 2 )) || die "$1 needs a value"
      case "$1" in
        --name) NAME=$2 ;; --zone) ZONE=$2 ;; --accelerator) ACCELERATOR=$2 ;;
        --version) VERSION=$2 ;; --workdir) WORKDIR=$2 ;; --config) CONFIG=$2 ;;
        --data-dir) DATA_DIR=$2 ;;
      esac
      shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --reuse) REUSE=1; shift ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
for required in NAME ZONE ACCELERATOR WORKDIR CONFIG; do
  [[ -n "${!required}" ]] || die "--$(echo "$required" | tr 'A-Z_' 'a-z-') is required (see --help)"
done
# Every worker writes checkpoints and reads data, so both must be on storage they all share.
[[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// bucket path, got $WORKDIR"
[[ -z "$DATA_DIR" || "$DATA_DIR" == gs://* ]] || die "--data-dir must be a gs:// bucket path, got $DATA_DIR"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -f "$REPO/${CONFIG%%:*}" ]] || die "no config file ${CONFIG%%:*} in $REPO"
TOPOLOGY=$(tpu_topology "$ACCELERATOR")
read -r DEVICES HOSTS <<< "$TOPOLOGY"
echo "# $ACCELERATOR: $DEVICES JAX devices on $HOSTS hosts"
# The config must fit this slice before anything is created (the batch divides, ...).
(cd "$REPO" && "${PYTHON:-python3}" -m rectifiers_jax.preflight --config="$CONFIG" \
  --devices="$DEVICES" --processes="$HOSTS" "${OVERRIDES[@]}") >&2 || exit 2
STAGE="${TMPDIR:-/tmp}/tpu_pod-$NAME"
ARCHIVE="$STAGE/rectifiers_jax.tar.gz"
JOB="$STAGE/rectifiers_jax_job.sh"
ZONE_FLAG="--zone=$ZONE"

ARGS=(--config="$CONFIG" --workdir="$WORKDIR")
[[ -n "$DATA_DIR" ]] && ARGS+=(--config.data.data_dir="$DATA_DIR")
ARGS+=("${OVERRIDES[@]}")
JOB_SCRIPT="#!/usr/bin/env bash
set -euo pipefail
cd \"\$HOME/rectifiers_jax\"
exec .venv/bin/python -m rectifiers_jax.main $(quote "${ARGS[@]}")"

# The project needs Python >= 3.11; the Ubuntu 22.04 TPU images ship 3.10.
INSTALL="set -e; sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv; \
rm -rf ~/rectifiers_jax && mkdir -p ~/rectifiers_jax && tar -xzf ~/rectifiers_jax.tar.gz -C ~/rectifiers_jax; \
cd ~/rectifiers_jax && python3.11 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e \".[tpu]\""
if (( DETACH )); then
  START="setsid nohup bash ~/rectifiers_jax_job.sh > ~/rectifiers_jax_job.log 2>&1 < /dev/null &"
else
  START="bash ~/rectifiers_jax_job.sh"
fi

if (( ! REUSE )); then
  echo "# 1. create $ACCELERATOR $NAME"
  if (( QUEUED )); then
    run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "$ZONE_FLAG" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION"
    echo "# wait until the queued resource is ACTIVE"
    if (( DRY_RUN )); then
      quote gcloud compute tpus queued-resources describe "$NAME" "$ZONE_FLAG" --format='value(state.state)'
    else
      while true; do
        state=$(gcloud compute tpus queued-resources describe "$NAME" "$ZONE_FLAG" --format='value(state.state)')
        case "$state" in
          ACTIVE) break ;;
          FAILED|SUSPENDED) die "queued resource $NAME is $state" ;;
          *) echo "  $NAME: $state"; sleep 60 ;;
        esac
      done
    fi
  else
    run gcloud compute tpus tpu-vm create "$NAME" "$ZONE_FLAG" --accelerator-type="$ACCELERATOR" \
      --version="$VERSION"
  fi
fi

echo "# 2. copy the committed code (git HEAD) and the job script to every worker, install there"
run mkdir -p "$STAGE"
run git -C "$REPO" archive --format=tar.gz --output="$ARCHIVE" HEAD
if (( DRY_RUN )); then
  echo "# $JOB:"
  echo "$JOB_SCRIPT" | sed 's/^/#   /'
else
  echo "$JOB_SCRIPT" > "$JOB"
fi
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$JOB" "$NAME:" "$ZONE_FLAG" --worker=all
run gcloud compute tpus tpu-vm ssh "$NAME" "$ZONE_FLAG" --worker=all --command="$INSTALL"

echo "# 3. run the job on all workers at once"
run gcloud compute tpus tpu-vm ssh "$NAME" "$ZONE_FLAG" --worker=all --command="$START"
if (( DETACH )); then
  echo "# started; logs: ~/rectifiers_jax_job.log on each worker, results in $WORKDIR"
fi
