#!/usr/bin/env bash
# Tear down a TPU slice (the gs:// workdir, with its checkpoints, is not touched).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_delete.sh --project P --zone Z --tpu-name NAME [--queued] [--dry-run]

Deletes the TPU VM slice NAME (--queued: the queued resource NAME and, with --force, its
node). The workers' disks go with it; checkpoints in the gs:// workdir stay.
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
  delete_slice
}

main "$@"
