#!/usr/bin/env bash
# Stop ldlm-train on every worker (by the pid the launcher recorded); the slice stays up.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_stop.sh --project P --zone Z --tpu-name NAME [--dry-run]

Sends SIGTERM to the ldlm-train process whose pid launch/tpu_train.sh recorded in
~/ldlm_logs/train.pid on every worker. The slice keeps running (delete it with
launch/tpu_delete.sh); the gs:// workdir keeps the checkpoints for a later resume.
USAGE
}

main() {
  parse_common_args "$@"
  local arg
  for arg in "${REST_ARGS[@]}"; do
    case "$arg" in
      -h | --help) usage; exit 0 ;;
      *) die "unknown argument '$arg' (see --help)" ;;
    esac
  done
  require_slice
  local pid="\"\$HOME/ldlm_logs/train.pid\""
  ssh_all "if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then kill \"\$(cat $pid)\" && echo \"stopped ldlm-train on \$(hostname)\"; else echo \"no ldlm-train running on \$(hostname)\"; fi; rm -f $pid"
}

main "$@"
