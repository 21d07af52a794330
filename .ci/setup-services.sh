#!/usr/bin/env bash
# Install the system services the slow tests need, only when they are missing:
#   chromium    headless browser for tests/ui (Dagster web UI screenshots)
#   postgresql  a throwaway local server for tests/scaleout (PostgreSQL-backed Dagster instance)
# Idempotent and quiet. Exits 0 when apt-get is unavailable or the install fails (not root, no
# network): the tests that need a missing service then skip with the reason.
set -u

log() { echo "setup-services: $*" >&2; }

need=()
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
have_postgres() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1
}

have_chromium || need+=(chromium)
have_postgres || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  log "apt-get not available; not installing ${need[*]} (the tests needing them will skip)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    log "not root and no passwordless sudo; not installing ${need[*]} (the tests needing them will skip)"
    exit 0
  fi
fi

export DEBIAN_FRONTEND=noninteractive
log "installing ${need[*]}"
if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
  # the package lists may be missing or stale on a fresh image: update once and retry
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    log "apt-get install ${need[*]} failed; the tests needing them will skip"
    exit 0
  fi
fi
exit 0
