# Shared shell helpers of the launch scripts; sourced, not run. SCRIPT names the caller in errors.

die() { echo "${SCRIPT}: error: $*" >&2; exit 2; }

# Prints a command shell-quoted (only where needed), so a dry run can be pasted back.
quote() {
  local words=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then words+=("$arg"); else words+=("${arg@Q}"); fi
  done
  echo "${words[*]}"
}
