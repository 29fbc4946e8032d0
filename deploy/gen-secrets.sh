#!/usr/bin/env bash
# Creates the secrets a replicated Mandate deployment shares, once:
#
#   audit-checkpoint.key      the audit log's Ed25519 checkpoint signing key
#   audit-checkpoint.key.pub  its public verifier key (publish it)
#   dev-issuer/issuer.pem     a development token issuer's private key (stays
#                             here: only `mandate token mint` uses it)
#   issuer-jwks.json          that issuer's public keys, which Mandate trusts
#   postgres-password         the database password
#   mandate.env               MANDATE_AUDIT_STORE and MANDATE_CONTROL_STORE=postgres://… for the replicas
#
# Usage: deploy/gen-secrets.sh [DIR]          (default: deploy/secrets)
# Env:   MANDATE=PATH        a mandate binary to run (default: `mandate` on
#                            PATH, else the image below through docker)
#        MANDATE_IMAGE=REF   the image to run when there is no binary
#                            (default mandate:0.1.0, built from deploy/Dockerfile)
#        DB_HOST=HOST:PORT   where replicas reach PostgreSQL (default postgres:5432,
#                            the compose service)
#
# Existing files are kept: running it again never replaces a key (a new
# checkpoint key would split the audit log's history in two).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:-$here/secrets}
db_host=${DB_HOST:-postgres:5432}

mkdir -p "$dir"
chmod 0700 "$dir"
dir=$(cd "$dir" && pwd)

# How to run mandate: a binary, or the image with DIR mounted at /out.
if [[ -n "${MANDATE:-}" ]]; then
  run() { MANDATE_LOG=warn "$MANDATE" "$@"; }
  at() { printf '%s' "$dir/$1"; }
elif command -v mandate >/dev/null; then
  run() { MANDATE_LOG=warn mandate "$@"; }
  at() { printf '%s' "$dir/$1"; }
else
  image=${MANDATE_IMAGE:-mandate:0.1.0}
  run() {
    docker run --rm --user "$(id -u):$(id -g)" --volume "$dir:/out" \
      --workdir /out --env MANDATE_LOG=warn "$image" "$@"
  }
  at() { printf '/out/%s' "$1"; }
fi

if [[ ! -e "$dir/audit-checkpoint.key" ]]; then
  # Opening an empty log generates the key; the scratch log is thrown away.
  scratch=".audit-keygen.$$"
  mkdir -p "$dir/$scratch"
  run audit checkpoint --data-dir "$(at "$scratch")" >/dev/null
  mv "$dir/$scratch/audit-checkpoint.key" "$dir/audit-checkpoint.key"
  mv "$dir/$scratch/audit-checkpoint.key.pub" "$dir/audit-checkpoint.key.pub"
  rm -rf "${dir:?}/$scratch"
  echo "wrote $dir/audit-checkpoint.key and .pub ($(cat "$dir/audit-checkpoint.key.pub"))"
fi

if [[ ! -e "$dir/dev-issuer/issuer.pem" ]]; then
  run keys generate --out "$(at dev-issuer)" >/dev/null
  echo "wrote $dir/dev-issuer/ (development token issuer)"
fi
if [[ ! -e "$dir/issuer-jwks.json" ]]; then
  cp "$dir/dev-issuer/jwks.json" "$dir/issuer-jwks.json"
fi

if [[ ! -e "$dir/postgres-password" ]]; then
  (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > "$dir/postgres-password")
  echo "wrote $dir/postgres-password"
fi
if [[ ! -e "$dir/mandate.env" ]]; then
  (umask 077; url="postgres://mandate:$(cat "$dir/postgres-password")@$db_host/mandate"
   printf 'MANDATE_AUDIT_STORE=%s\nMANDATE_CONTROL_STORE=%s\n' "$url" "$url" > "$dir/mandate.env")
  echo "wrote $dir/mandate.env"
fi

# The directory stays private to you (0700). Files that containers mount are
# made readable (0644) because the engine bind-mounts them with their host
# owner and Mandate runs as uid 10001 inside. The issuer's private key, the
# env file (read by the engine) and the password (read by PostgreSQL's
# entrypoint as root) stay 0600.
chmod 0644 "$dir/audit-checkpoint.key" "$dir/audit-checkpoint.key.pub" "$dir/issuer-jwks.json"
chmod 0600 "$dir/dev-issuer/issuer.pem" "$dir/mandate.env" "$dir/postgres-password"
