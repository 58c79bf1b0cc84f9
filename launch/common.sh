# shellcheck shell=bash
# Shared by the launch/tpu_*.sh scripts (sourced, not run): settings from flags or environment
# variables, validation with clear errors, and run-or-print (--dry-run prints every command it
# would run, exactly, and runs nothing).
#
# Settings (flag / environment variable):
#   --project PROJECT          --zone ZONE            --tpu-name TPU_NAME
#   --accelerator-type ACCELERATOR_TYPE (v5litepod-16, v5p-16, v4-8, v6e-8, ...)
#   --runtime-version RUNTIME_VERSION (default from the accelerator type)
#   --queued (QUEUED=1): use a queued resource    --spot (SPOT=1)    --reserved (RESERVED=1)
#   --workdir WORKDIR=gs://...   --config CONFIG (configs/owt.py[:variant])
#   --config.KEY=VALUE ...       passed through to ldlm-train; so is everything after `--`
#   --env KEY=VALUE (repeatable) extra environment for ldlm-train on every worker
#   --sync scp|git (SYNC)        --repo-url REPO_URL --branch BRANCH (for --sync git)
#   --remote-dir REMOTE_DIR (default ldlm_jax, under the workers' home)
#   --dry-run (DRY_RUN=1)        --help

PROJECT="${PROJECT:-}"
ZONE="${ZONE:-}"
TPU_NAME="${TPU_NAME:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
QUEUED="${QUEUED:-0}"
SPOT="${SPOT:-0}"
RESERVED="${RESERVED:-0}"
WORKDIR="${WORKDIR:-}"
CONFIG="${CONFIG:-}"
SYNC="${SYNC:-scp}"
REPO_URL="${REPO_URL:-}"
BRANCH="${BRANCH:-main}"
REMOTE_DIR="${REMOTE_DIR:-ldlm_jax}"
REMOTE_VENV="${REMOTE_VENV:-ldlm_venv}"
LOG_NAME="${LOG_NAME:-train.log}"
DRY_RUN="${DRY_RUN:-0}"
ALLOW_LOCAL_WORKDIR="${ALLOW_LOCAL_WORKDIR:-0}"
TRAIN_ARGS=()  # --config.* overrides and everything after `--`
TRAIN_ENV=()   # --env KEY=VALUE
REST_ARGS=()   # script-specific flags, left for the caller to parse

die() {
  echo "error: $*" >&2
  exit 2
}

# Quote one word for a POSIX shell, leaving plain words readable.
quote_word() {
  local word="$1"
  if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_./:=@,+%^-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

quote_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote_word "$word")"
  done
  printf '%s' "$out"
}

# Print a command as `+ cmd`, then run it unless --dry-run.
run() {
  echo "+ $(quote_cmd "$@")"
  if [[ "$DRY_RUN" == 1 ]]; then
    return 0
  fi
  "$@"
}

note() {
  echo "# $*"
}

# Parse the shared flags; unknown flags go to REST_ARGS for the script (which rejects them).
parse_common_args() {
  while (($#)); do
    case "$1" in
      --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
      --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
      --tpu-name | --name) TPU_NAME="${2:?--tpu-name needs a value}"; shift 2 ;;
      --accelerator-type) ACCELERATOR_TYPE="${2:?--accelerator-type needs a value}"; shift 2 ;;
      --runtime-version) RUNTIME_VERSION="${2:?--runtime-version needs a value}"; shift 2 ;;
      --queued) QUEUED=1; shift ;;
      --spot) SPOT=1; shift ;;
      --reserved) RESERVED=1; shift ;;
      --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
      --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
      --config.*=*) TRAIN_ARGS+=("$1"); shift ;;
      --config.*) die "override $1 must look like --config.key.path=value (one word, with =)" ;;
      --env) [[ "${2:-}" == *=* ]] || die "--env takes KEY=VALUE"; TRAIN_ENV+=("$2"); shift 2 ;;
      --sync) SYNC="${2:?--sync needs scp or git}"; shift 2 ;;
      --repo-url) REPO_URL="${2:?--repo-url needs a value}"; shift 2 ;;
      --branch) BRANCH="${2:?--branch needs a value}"; shift 2 ;;
      --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a value}"; shift 2 ;;
      --allow-local-workdir) ALLOW_LOCAL_WORKDIR=1; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      --) shift; TRAIN_ARGS+=("$@"); break ;;
      *) REST_ARGS+=("$1"); shift ;;
    esac
  done
}

# Reject anything parse_common_args and the script did not consume.
reject_unknown() {
  if ((${#REST_ARGS[@]})); then
    die "unknown argument '${REST_ARGS[0]}' (see --help)"
  fi
}

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name}" ]]; then
      local flag="--${name,,}"
      die "missing setting $name: pass ${flag//_/-} VALUE or set $name=VALUE (see --help)"
    fi
  done
}

# Number of TPU VM hosts (workers) of an accelerator type; 0 when unknown.
tpu_hosts() {
  local type="$1" gen count chips
  gen="${type%-*}"
  count="${type##*-}"
  [[ "$count" =~ ^[0-9]+$ ]] || { echo 0; return; }
  case "$gen" in
    v5litepod | v5e | v6e) chips="$count" ;;      # names count chips
    v4 | v5p) chips=$((count / 2)) ;;               # names count TensorCores (2 per chip)
    v2 | v3) chips=$((count / 2)) ;;
    *) echo 0; return ;;
  esac
  if ((chips <= 8)) && [[ "$gen" =~ ^(v5litepod|v5e|v6e)$ ]]; then
    echo 1                                          # up to 8 chips on one v5e/v6e host
  elif ((chips <= 4)); then
    echo 1
  else
    echo $((chips / 4))
  fi
}

default_runtime_version() {
  case "${1%-*}" in
    v5litepod | v5e) echo "v2-alpha-tpuv5-lite" ;;
    v5p) echo "v2-alpha-tpuv5" ;;
    v6e) echo "v2-alpha-tpuv6e" ;;
    v4) echo "tpu-ubuntu2204-base" ;;
    *) echo "" ;;
  esac
}

# Validate the slice settings every TPU script needs.
require_slice() {
  require PROJECT ZONE TPU_NAME
  [[ "$QUEUED" == 0 || "$QUEUED" == 1 ]] || die "QUEUED must be 0 or 1, got '$QUEUED'"
}

# The workdir must outlive the VMs: preemption or deletion wipes their disks, and every worker
# must read and write the same checkpoints.
require_persistent_workdir() {
  require WORKDIR
  if [[ "$WORKDIR" != gs://?* ]]; then
    local hosts
    hosts="$(tpu_hosts "${ACCELERATOR_TYPE:-unknown}")"
    if [[ "$hosts" != 1 ]]; then
      die "WORKDIR='$WORKDIR' is not a gs:// path: a multi-host TPU slice (or an unknown" \
        "ACCELERATOR_TYPE) needs one workdir all workers share and that survives preemption," \
        "e.g. --workdir gs://BUCKET/ldlm/owt"
    elif [[ "$ALLOW_LOCAL_WORKDIR" != 1 ]]; then
      die "WORKDIR='$WORKDIR' is not a gs:// path: a preempted or deleted TPU VM loses its disk" \
        "and cannot resume; use --workdir gs://BUCKET/... (or --allow-local-workdir for a" \
        "throwaway single-host run)"
    fi
  fi
}

# gcloud flags shared by every TPU command.
slice_flags() {
  SLICE_FLAGS=("--project=$PROJECT" "--zone=$ZONE")
}

# Run one shell command on every worker of the slice at once.
ssh_all() {
  slice_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${SLICE_FLAGS[@]}" --worker=all --command "$1"
}

# The remote shell command that starts ldlm-train in the background on one worker. Every
# worker runs the same command; jax.distributed.initialize() finds its peers from the TPU
# metadata. The log is appended to, so a resumed run keeps its history; a pid file (not a
# process-name match) guards against a second copy and lets tpu_stop.sh end exactly this one.
remote_train_command() {
  local logs="\"\$HOME/ldlm_logs\""
  local pid="\"\$HOME/ldlm_logs/train.pid\""
  local args
  args="$(quote_cmd --config "$CONFIG" --workdir "$WORKDIR" "${TRAIN_ARGS[@]}")"
  printf '%s' "cd \"\$HOME/$REMOTE_DIR\" && mkdir -p $logs &&"
  printf '%s' " if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then"
  printf '%s' " echo \"ldlm-train already runs on \$(hostname); run launch/tpu_stop.sh first\" >&2;"
  printf '%s' " exit 1; fi;"
  printf '%s' " nohup env $(quote_cmd JAX_PLATFORMS=tpu "${TRAIN_ENV[@]}")"
  printf '%s' " \"\$HOME/$REMOTE_VENV/bin/ldlm-train\" $args"
  printf '%s' " >> \"\$HOME/ldlm_logs/$LOG_NAME\" 2>&1 < /dev/null & echo \$! > $pid"
}

launch_train() {
  require CONFIG
  require_persistent_workdir
  note "every worker runs the same command; checkpoints and auto-resume live in $WORKDIR"
  ssh_all "$(remote_train_command)"
}

delete_slice() {
  slice_flags
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${SLICE_FLAGS[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${SLICE_FLAGS[@]}" --quiet
  fi
}
