#!/usr/bin/env bash
# Put the code on every worker of a TPU slice and install it with the [tpu] extra.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_setup.sh --project P --zone Z --tpu-name NAME
                           [--sync scp | --sync git --repo-url URL [--branch B]]
                           [--no-install] [--python 3.12] [--dry-run]

On every worker at once (--worker=all):
  1. sync the code into ~/ldlm_jax:
     --sync scp (default): `git archive HEAD` of this checkout (committed files only), copied
       with `gcloud compute tpus tpu-vm scp --worker=all` and unpacked;
     --sync git: clone REPO_URL (or fetch BRANCH into an existing clone) on each worker.
  2. unless --no-install: create ~/ldlm_venv with uv (TPU VM images ship Python 3.10; jax 0.10
     needs >= 3.11) and `pip install -e ~/ldlm_jax[tpu]` into it.
Re-run with --no-install after a code change. Settings may come from the environment (PROJECT,
ZONE, TPU_NAME, SYNC, REPO_URL, BRANCH, PYTHON_VERSION). --dry-run prints the commands only.
USAGE
}

INSTALL=1
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"

sync_code() {
  slice_flags
  case "$SYNC" in
    scp)
      local repo tarball
      repo="$(cd "$HERE/.." && pwd)"
      tarball="${TMPDIR:-/tmp}/ldlm_jax_${TPU_NAME}.tar.gz"
      note "copying the committed tree (git HEAD) of $repo; commit local changes first"
      run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
      run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:ldlm_jax.tar.gz" \
        "${SLICE_FLAGS[@]}" --worker=all
      ssh_all "mkdir -p \"\$HOME/$REMOTE_DIR\" && tar -xzf \"\$HOME/ldlm_jax.tar.gz\" -C \"\$HOME/$REMOTE_DIR\""
      ;;
    git)
      require REPO_URL
      local dir="\"\$HOME/$REMOTE_DIR\"" url branch
      url="$(quote_word "$REPO_URL")"
      branch="$(quote_word "$BRANCH")"
      ssh_all "if [ -d $dir/.git ]; then git -C $dir fetch origin $branch && git -C $dir checkout --force --detach FETCH_HEAD; else git clone --branch $branch $url $dir; fi"
      ;;
    *) die "--sync must be scp or git, got '$SYNC'" ;;
  esac
}

install_package() {
  local venv="\"\$HOME/$REMOTE_VENV\"" uv="\"\$HOME/.local/bin/uv\""
  ssh_all "(command -v uv >/dev/null || [ -x $uv ] || python3 -m pip install --user -q uv || curl -LsSf https://astral.sh/uv/install.sh | sh) && UV=\$(command -v uv || echo $uv) && \"\$UV\" venv --allow-existing --python $PYTHON_VERSION $venv && \"\$UV\" pip install --python $venv/bin/python -e \"\$HOME/${REMOTE_DIR}[tpu]\" && $venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.local_device_count())'"
}

main() {
  parse_common_args "$@"
  local i=0
  while ((i < ${#REST_ARGS[@]})); do
    case "${REST_ARGS[i]}" in
      -h | --help) usage; exit 0 ;;
      --no-install) INSTALL=0 ;;
      --python) i=$((i + 1)); PYTHON_VERSION="${REST_ARGS[i]:?--python needs a version}" ;;
      *) die "unknown argument '${REST_ARGS[i]}' (see --help)" ;;
    esac
    i=$((i + 1))
  done
  require_slice
  sync_code
  if [[ "$INSTALL" == 1 ]]; then
    note "install: the last step prints process_index, global and local device counts per worker"
    install_package
  fi
}

main "$@"
