#!/usr/bin/env bash
# Bring a preempted TPU run back: recreate the slice if it is gone, set it up, relaunch the
# same train command (ldlm-train resumes from the latest checkpoint in the gs:// workdir).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_resume.sh --project P --zone Z --tpu-name NAME --accelerator-type TYPE
                            --config CONFIG --workdir gs://BUCKET/PATH [--queued] [--spot]
                            [--config.KEY=VALUE ...] [--watch SECONDS] [--assume-state S]
                            [--dry-run] [-- EXTRA_LDLM_TRAIN_FLAGS ...]

Give it exactly the flags of the original tpu_create.sh + tpu_train.sh run. It reads the state
of the slice (queued resource state with --queued, TPU VM state otherwise):
  ACTIVE / READY       the slice is up: relaunch training (a no-op on workers where it runs);
  anything else, or    delete what is left, create the slice again, run tpu_setup.sh's steps,
  not found            then relaunch the same train command.
Training always restarts from the latest checkpoint in WORKDIR (auto-resume), so the only
progress lost is since the last checkpoint (config checkpoint.every).
--watch SECONDS repeats the check forever (e.g. in tmux on a small VM) for unattended spot runs.
--assume-state STATE skips the gcloud query (with --dry-run it defaults to PREEMPTED, to print
the full recovery sequence).
USAGE
}

slice_state() {
  slice_flags
  if [[ "$QUEUED" == 1 ]]; then
    gcloud compute tpus queued-resources describe "$TPU_NAME" "${SLICE_FLAGS[@]}" \
      --format='value(state.state)' 2>/dev/null || echo NOT_FOUND
  else
    gcloud compute tpus tpu-vm describe "$TPU_NAME" "${SLICE_FLAGS[@]}" \
      --format='value(state)' 2>/dev/null || echo NOT_FOUND
  fi
}

recover_once() {
  local state="$ASSUME_STATE"
  if [[ -z "$state" ]]; then
    state="$(slice_state)"
  fi
  note "slice $TPU_NAME state: ${state:-NOT_FOUND}"
  case "$state" in
    ACTIVE | READY)
      note "slice is up: relaunching training (workers where it still runs refuse to start twice)"
      ;;
    *)
      note "slice is gone or broken: recreate, set up, relaunch"
      [[ "$state" == NOT_FOUND || -z "$state" ]] || delete_slice
      local flags=(--project "$PROJECT" --zone "$ZONE" --tpu-name "$TPU_NAME"
        --accelerator-type "$ACCELERATOR_TYPE")
      [[ -n "$RUNTIME_VERSION" ]] && flags+=(--runtime-version "$RUNTIME_VERSION")
      [[ "$QUEUED" == 1 ]] && flags+=(--queued)
      [[ "$SPOT" == 1 ]] && flags+=(--spot)
      [[ "$RESERVED" == 1 ]] && flags+=(--reserved)
      [[ "$DRY_RUN" == 1 ]] && flags+=(--dry-run)
      "$HERE/tpu_create.sh" "${flags[@]}"
      local setup=(--project "$PROJECT" --zone "$ZONE" --tpu-name "$TPU_NAME" --sync "$SYNC")
      [[ -n "$REPO_URL" ]] && setup+=(--repo-url "$REPO_URL" --branch "$BRANCH")
      [[ "$DRY_RUN" == 1 ]] && setup+=(--dry-run)
      "$HERE/tpu_setup.sh" "${setup[@]}"
      ;;
  esac
  # A worker that still trains refuses a second copy, which makes the ssh exit non-zero.
  launch_train || note "some workers did not start training (see above); rechecking later"
}

ASSUME_STATE=""
main() {
  parse_common_args "$@"
  local watch=0 i=0
  while ((i < ${#REST_ARGS[@]})); do
    case "${REST_ARGS[i]}" in
      -h | --help) usage; exit 0 ;;
      --watch) i=$((i + 1)); watch="${REST_ARGS[i]:?--watch needs seconds}" ;;
      --assume-state) i=$((i + 1)); ASSUME_STATE="${REST_ARGS[i]:?--assume-state needs a state}" ;;
      *) die "unknown argument '${REST_ARGS[i]}' (see --help; ldlm-train flags go after --)" ;;
    esac
    i=$((i + 1))
  done
  [[ "$watch" =~ ^[0-9]+$ ]] || die "--watch takes seconds"
  require_slice
  require ACCELERATOR_TYPE CONFIG
  require_persistent_workdir  # before touching anything
  if [[ "$DRY_RUN" == 1 && -z "$ASSUME_STATE" ]]; then
    ASSUME_STATE=PREEMPTED
    note "dry run: not querying the slice; assuming state PREEMPTED"
  fi
  recover_once
  while ((watch > 0)) && [[ "$DRY_RUN" != 1 ]]; do
    sleep "$watch"
    recover_once
  done
}

main "$@"
