#!/usr/bin/env bash
# llamafleet drift check for any CI system (GitLab, Jenkins, Buildkite, cron, ...).
#
#   ci/drift-check.sh [INVENTORY]        default: $LLAMAFLEET_INVENTORY or inventory/cluster.yaml
#
# Runs `llamafleet validate`, then `llamafleet drift` (SSH) and, with LLAMAFLEET_DOCTOR=1,
# `llamafleet doctor` (HTTP), writing JUnit reports to $LLAMAFLEET_REPORTS (default: reports/).
# Exit code, like `terraform plan -detailed-exitcode`: 0 no drift, 2 drift, 1 error (an invalid
# inventory, an unreachable host). An error outranks drift.
#
# Environment:
#   LLAMAFLEET_SSH_KEY       private key text; loaded into a private ssh-agent for this run only
#   LLAMAFLEET_KNOWN_HOSTS   host keys (ssh-keyscan output) appended to ~/.ssh/known_hosts
#   LLAMAFLEET_DEEP=1        re-hash model files (catches same-size, same-mtime replacements)
#   LLAMAFLEET_LIMIT         a host or group name / glob, as pyinfra --limit
#   LLAMAFLEET_DOCTOR=1      also run doctor (needs network access to the services)
#   LLAMAFLEET_PROXY_TOKEN   the proxy's bearer token for doctor
#   LLAMAFLEET               the llamafleet command (default: llamafleet on PATH)
set -uo pipefail

inventory="${1:-${LLAMAFLEET_INVENTORY:-inventory/cluster.yaml}}"
reports="${LLAMAFLEET_REPORTS:-reports}"
llamafleet="${LLAMAFLEET:-llamafleet}"
mkdir -p "$reports" || exit 1

if [ -n "${LLAMAFLEET_KNOWN_HOSTS:-}" ]; then
    install -d -m 700 ~/.ssh && printf '%s\n' "$LLAMAFLEET_KNOWN_HOSTS" >> ~/.ssh/known_hosts || exit 1
fi
if [ -n "${LLAMAFLEET_SSH_KEY:-}" ]; then
    eval "$(ssh-agent -s)" >/dev/null || exit 1
    trap 'ssh-agent -k >/dev/null' EXIT
    printf '%s\n' "$LLAMAFLEET_SSH_KEY" | ssh-add - 2>/dev/null || { echo "drift-check: LLAMAFLEET_SSH_KEY is not a usable private key" >&2; exit 1; }
fi

limit=()
[ -n "${LLAMAFLEET_LIMIT:-}" ] && limit=(--limit "$LLAMAFLEET_LIMIT")

# validate first: drift against an invalid inventory means nothing.
"$llamafleet" validate "$inventory" || exit 1

deep=()
[ "${LLAMAFLEET_DEEP:-0}" = 1 ] && deep=(--deep)
"$llamafleet" drift "$inventory" "${deep[@]}" "${limit[@]}" --junit "$reports/drift.xml"
status=$?

if [ "${LLAMAFLEET_DOCTOR:-0}" = 1 ]; then
    token=()
    [ -n "${LLAMAFLEET_PROXY_TOKEN:-}" ] && token=(--proxy-token-env LLAMAFLEET_PROXY_TOKEN)
    "$llamafleet" doctor "$inventory" "${limit[@]}" "${token[@]}" --junit "$reports/doctor.xml"
    doctor=$?
    # Keep the worse result: 1 (error) over 2 (drift) over 0.
    if [ "$doctor" = 1 ] || { [ "$doctor" = 2 ] && [ "$status" = 0 ]; }; then status=$doctor; fi
fi

case "$status" in
    0) echo "drift-check: no drift" ;;
    2) echo "drift-check: drift found (reports in $reports/)" ;;
    *) echo "drift-check: error (exit $status; reports in $reports/)"; status=1 ;;
esac
exit "$status"
