#!/usr/bin/env bash
# Passkey revocation → its sessions refused (401 REVOKED) at 8 gateways, idle and under load;
# `benches/propagation.sh --passkeys` (see there).
# Usage: benches/passkey-propagation.sh [revocations (1000)] [load req/s (2000)]
exec "$(dirname "$0")/propagation.sh" --passkeys "$@"
