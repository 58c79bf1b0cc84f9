#!/usr/bin/env bash
# Train on one machine with several GPUs: one process sees all of them (no jax.distributed).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/gpu_single_node.sh --config configs/owt.py[:variant] --workdir DIR
                                 [--gpus 0,1,2,3] [--mem-fraction 0.9] [--env KEY=VALUE ...]
                                 [--config.KEY=VALUE ...] [--dry-run] [-- EXTRA_LDLM_TRAIN_FLAGS]

Runs `ldlm-train --config CONFIG --workdir DIR [overrides]` in the foreground as one JAX
process over all visible GPUs (mesh.data=-1 fills them; --gpus restricts them through
CUDA_VISIBLE_DEVICES). XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9 here, 0.75 in JAX) is the
share of each GPU's memory JAX preallocates. Re-running the same command resumes from the
latest checkpoint in DIR (a local path or gs://). Needs `pip install -e ".[cuda]"`. Settings may
come from the environment (CONFIG, WORKDIR, GPUS, MEM_FRACTION).
For background runs: nohup launch/gpu_single_node.sh ... >> train.log 2>&1 &
USAGE
}

main() {
  local gpus="${GPUS:-}" mem_fraction="${MEM_FRACTION:-0.9}"
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
      --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
      --gpus) gpus="${2:?--gpus needs a list like 0,1}"; shift 2 ;;
      --mem-fraction) mem_fraction="${2:?--mem-fraction needs a value}"; shift 2 ;;
      --env) [[ "${2:-}" == *=* ]] || die "--env takes KEY=VALUE"; TRAIN_ENV+=("$2"); shift 2 ;;
      --config.*=*) TRAIN_ARGS+=("$1"); shift ;;
      --config.*) die "override $1 must look like --config.key.path=value" ;;
      --dry-run) DRY_RUN=1; shift ;;
      --) shift; TRAIN_ARGS+=("$@"); break ;;
      *) die "unknown argument '$1' (see --help; ldlm-train flags go after --)" ;;
    esac
  done
  require CONFIG WORKDIR
  [[ -z "$gpus" || "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus takes a list like 0,1,2,3"
  local env_words=("XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction")
  [[ -n "$gpus" ]] && env_words+=("CUDA_VISIBLE_DEVICES=$gpus")
  env_words+=("${TRAIN_ENV[@]}")
  note "one process, all visible GPUs; checkpoints and auto-resume in $WORKDIR"
  run env "${env_words[@]}" ldlm-train --config "$CONFIG" --workdir "$WORKDIR" "${TRAIN_ARGS[@]}"
}

main "$@"
