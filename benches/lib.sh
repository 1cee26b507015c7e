#!/usr/bin/env bash
# What the load scripts under benches/ share: logging, Debian tools installed when missing,
# and the `ledger` binary to measure. Sourced, not run.

log() { printf '== %s\n' "$*" >&2; }

# need COMMAND [PACKAGE...]: installs PACKAGE (default: COMMAND) from Debian when COMMAND is
# missing.
need() {
    local command="$1"; shift
    command -v "$command" >/dev/null 2>&1 && return
    log "installing ${*:-$command}"
    timeout 300 apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${@:-$command}" >/dev/null
}

# ledger_bin: sets BIN to $LEDGER_BIN (an older build, for a before/after comparison) or to a
# release build of this checkout, made now.
ledger_bin() {
    if [[ -n "${LEDGER_BIN:-}" ]]; then
        BIN="$LEDGER_BIN"
    else
        log "building the release binary"
        timeout 3600 cargo build --release -p ledger-cli --quiet
        BIN="${CARGO_TARGET_DIR:-target}/release/ledger"
    fi
}
