#!/bin/sh
# The one-shot `init` service of docker-compose.yml: a demo account and an API key for it.
# Idempotent: a later run finds both, creates nothing and prints the same key again.
#
#   DEMO_ACCOUNT    the account's slug (default `demo`)
#   DEMO_STATE_DIR  where the key is kept, a volume (default /var/lib/kataven)
#
# The database and the pepper come from the usual KATAVEN_* variables.
set -eu

account="${DEMO_ACCOUNT:-demo}"
key_file="${DEMO_STATE_DIR:-/var/lib/kataven}/demo-api-key"

# `accounts list` prints a header line, then one account per line, slug first.
if kataven-hub accounts list | awk 'NR > 1 { print $1 }' | grep -qx "$account"; then
    echo "account $account exists"
else
    kataven-hub accounts create "$account" --name "Demo"
fi

if [ ! -s "$key_file" ]; then
    umask 077
    kataven-hub api-keys create "$account" --name compose-demo --expiry never > "$key_file.new"
    mv "$key_file.new" "$key_file"
fi
key=$(cat "$key_file")

cat <<MSG
Demo account: $account
API key:      $key
Try:          curl -s http://localhost:8080/api/v1/agents -H "X-Account-ID: $account" -H "Authorization: Bearer $key"
MSG
