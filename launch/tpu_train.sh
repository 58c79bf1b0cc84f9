#!/usr/bin/env bash
# Start ldlm-train on every worker of a TPU slice at once, in the background, logging to a file.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_train.sh --project P --zone Z --tpu-name NAME --accelerator-type TYPE
                           --config configs/owt.py[:variant] --workdir gs://BUCKET/PATH
                           [--config.KEY=VALUE ...] [--env KEY=VALUE ...] [--dry-run]
                           [-- EXTRA_LDLM_TRAIN_FLAGS ...]

Runs, on every worker at once (gcloud ... ssh --worker=all), the same command:
  nohup env JAX_PLATFORMS=tpu [--env ...] ~/ldlm_venv/bin/ldlm-train --config CONFIG \
        --workdir WORKDIR [--config.* overrides] >> ~/ldlm_logs/train.log 2>&1 &
Each worker is one JAX process; jax.distributed.initialize() finds the others from the TPU VM
metadata. WORKDIR must be gs:// (shared by all workers, survives preemption): checkpoints,
metrics.jsonl and TensorBoard events go there, and running the same command again resumes from
the latest checkpoint in it. Watch with launch/tpu_logs.sh; stop with launch/tpu_stop.sh.
Settings may come from the environment (PROJECT, ZONE, TPU_NAME, ACCELERATOR_TYPE, CONFIG,
WORKDIR). --dry-run prints the command only.
USAGE
}

main() {
  parse_common_args "$@"
  local arg
  for arg in "${REST_ARGS[@]}"; do
    case "$arg" in
      -h | --help) usage; exit 0 ;;
      *) die "unknown argument '$arg' (see --help; ldlm-train flags go after --)" ;;
    esac
  done
  require_slice
  launch_train
  note "logs: launch/tpu_logs.sh --project $PROJECT --zone $ZONE --tpu-name $TPU_NAME"
}

main "$@"
