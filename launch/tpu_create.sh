#!/usr/bin/env bash
# Create a Cloud TPU VM slice: directly (tpu-vm create) or as a queued resource (--queued).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_create.sh --project P --zone Z --tpu-name NAME --accelerator-type TYPE
                            [--runtime-version V] [--queued] [--spot | --reserved] [--no-wait]
                            [--dry-run]

Creates the TPU VM slice NAME. With --queued (or QUEUED=1) it creates a queued resource of the
same name and waits until it is ACTIVE (unless --no-wait); queued resources are the way to get
large or spot v5e/v5p slices. The runtime version defaults by generation (v5litepod:
v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e, v4: tpu-ubuntu2204-base).
Every flag can also be given as an environment variable (PROJECT, ZONE, TPU_NAME,
ACCELERATOR_TYPE, RUNTIME_VERSION, QUEUED, SPOT, RESERVED). --dry-run prints the commands only.
USAGE
}

WAIT=1
wait_until_active() {
  slice_flags
  local describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${SLICE_FLAGS[@]}"
    "--format=value(state.state)")
  if [[ "$DRY_RUN" == 1 ]]; then
    note "then poll every 60 s until the state is ACTIVE:"
    run "${describe[@]}"
    return 0
  fi
  local state
  while true; do
    state="$("${describe[@]}")"
    echo "queued resource $TPU_NAME: $state"
    case "$state" in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) die "queued resource $TPU_NAME is $state; see: ${describe[*]:0:6}" ;;
    esac
    sleep 60
  done
}

main() {
  parse_common_args "$@"
  local arg
  for arg in "${REST_ARGS[@]}"; do
    case "$arg" in
      -h | --help) usage; exit 0 ;;
      --no-wait) WAIT=0 ;;
      *) die "unknown argument '$arg' (see --help)" ;;
    esac
  done
  require_slice
  require ACCELERATOR_TYPE
  RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime_version "$ACCELERATOR_TYPE")}"
  [[ -n "$RUNTIME_VERSION" ]] ||
    die "no default runtime version for '$ACCELERATOR_TYPE': pass --runtime-version"
  [[ "$SPOT" == 1 && "$RESERVED" == 1 ]] && die "--spot and --reserved exclude each other"
  note "slice $TPU_NAME: $ACCELERATOR_TYPE, $(tpu_hosts "$ACCELERATOR_TYPE") host(s)," \
    "runtime $RUNTIME_VERSION"
  slice_flags
  local capacity=()
  [[ "$SPOT" == 1 ]] && capacity+=(--spot)
  if [[ "$QUEUED" == 1 ]]; then
    [[ "$RESERVED" == 1 ]] && capacity+=(--reserved)
    run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
      "${SLICE_FLAGS[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
      --runtime-version="$RUNTIME_VERSION" "${capacity[@]}"
    [[ "$WAIT" == 1 ]] && wait_until_active
  else
    [[ "$RESERVED" == 1 ]] && die "--reserved needs --queued (a queued resource)"
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${SLICE_FLAGS[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${capacity[@]}"
  fi
  return 0
}

main "$@"
