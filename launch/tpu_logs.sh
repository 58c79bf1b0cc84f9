#!/usr/bin/env bash
# Stream the training log of a TPU slice (worker 0 by default: it writes the metrics).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_logs.sh --project P --zone Z --tpu-name NAME [--worker 0|N|all]
                          [--lines 100] [--no-follow] [--dry-run]

Streams ~/ldlm_logs/train.log (tail -F) from one worker (default 0; process 0 logs the
metrics) or from all workers (--worker all, lines interleaved). Ctrl-C stops watching, not
training. The same metrics are also in WORKDIR/metrics.jsonl on gs://.
USAGE
}

main() {
  parse_common_args "$@"
  local worker=0 lines=100 follow=-F i=0
  while ((i < ${#REST_ARGS[@]})); do
    case "${REST_ARGS[i]}" in
      -h | --help) usage; exit 0 ;;
      --worker) i=$((i + 1)); worker="${REST_ARGS[i]:?--worker needs 0..N-1 or all}" ;;
      --lines) i=$((i + 1)); lines="${REST_ARGS[i]:?--lines needs a number}" ;;
      --no-follow) follow="" ;;
      *) die "unknown argument '${REST_ARGS[i]}' (see --help)" ;;
    esac
    i=$((i + 1))
  done
  [[ "$worker" == all || "$worker" =~ ^[0-9]+$ ]] || die "--worker takes a number or all"
  [[ "$lines" =~ ^[0-9]+$ ]] || die "--lines takes a number"
  require_slice
  slice_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${SLICE_FLAGS[@]}" --worker="$worker" \
    --command "tail -n $lines ${follow} \"\$HOME/ldlm_logs/$LOG_NAME\""
}

main "$@"
