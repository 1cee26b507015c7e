#!/usr/bin/env bash
# The PostgreSQL cluster benchmark (issue 10): `ledger serve --store postgres://...` over
# loopback with wrk, against a naive PostgreSQL charge measured with pgbench on the same
# server in the same run.
#
#   benches/cluster/run.sh
#   DURATION=10 RUNS=3 CONNECTIONS=64 ACCOUNTS=200 PG=postgres://postgres@127.0.0.1:5432/test benches/cluster/run.sh
#
# Scenarios (medians of RUNS runs of DURATION seconds, wrk -t1):
#   naive     pgbench, 64 clients: one transaction per charge, `UPDATE balance ... WHERE
#             balance >= 1` plus an INSERT, on 200 account rows (the design a team would
#             write first; synchronous_commit as the server has it)
#   one node  one ledger node, 64 connections, 1-credit charges spread over 200 accounts
#   three     three nodes on the same database, 64 connections split over them
#   hot       three nodes, one account: version conflicts between nodes are retried inside
#             the ledger; every answer must still be 201
# Targets: one node >= 1.5x naive; three nodes >= 1.2x one node. Two cores run everything
# (PostgreSQL, the nodes and the load generators), so CPU bounds the cluster figure.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION="${DURATION:-10}"
RUNS="${RUNS:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
ACCOUNTS="${ACCOUNTS:-200}"
WARMUP="${WARMUP:-3}"
PG="${PG:-${LEDGER_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}}"
HERE="benches/cluster"

source benches/lib.sh

need wrk
need curl
need pgbench postgresql-client postgresql-contrib
need psql postgresql-client

ledger_bin

WORK="$(mktemp -d -t ledger-cluster-XXXXXX)"
DB="ledger_bench_$$"
PIDS=()
admin() { psql "$PG" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
db_url() { python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' "$PG" "$1"; }
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    admin "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    admin "DROP DATABASE IF EXISTS ${DB}_naive WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

EXECUTOR="bench-executor-token-0123456789"
BILLING="bench-billing-token-0123456789"
export LEDGER_TOKENS="executor=$EXECUTOR,billing=$BILLING,support=bench-support-token-0123456789,finance=bench-finance-token-0123456789,admin=bench-admin-token-0123456789"
export LEDGER_LOG="${LEDGER_LOG:-warn}"
unset LEDGER_DATA LEDGER_STORE LEDGER_LISTEN LEDGER_CATALOG

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# --- the naive peer: pgbench, one transaction per charge --------------------------------------
log "naive peer: pgbench on $ACCOUNTS account rows"
admin "CREATE DATABASE ${DB}_naive" >/dev/null
NAIVE_URL="$(db_url "${DB}_naive")"
psql "$NAIVE_URL" -qAtX -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE balances (account int PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE charges (id bigserial PRIMARY KEY, account int NOT NULL, cost bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO balances SELECT g, 1000000000 FROM generate_series(0, $ACCOUNTS - 1) g;
SQL
cat >"$WORK/naive.sql" <<SQL
\set account random(0, $ACCOUNTS - 1)
BEGIN;
UPDATE balances SET balance = balance - 1 WHERE account = :account AND balance >= 1;
INSERT INTO charges (account, cost) VALUES (:account, 1);
COMMIT;
SQL
NAIVE=()
for _ in $(seq 1 "$RUNS"); do
    NAIVE+=("$(pgbench -n -c "$CONNECTIONS" -j 2 -T "$DURATION" -f "$WORK/naive.sql" "$NAIVE_URL" 2>/dev/null \
        | awk '/^tps = / { printf "%.1f\n", $3 }')")
    log "naive run: ${NAIVE[-1]} charges/s"
done
NAIVE_TPS="$(printf '%s\n' "${NAIVE[@]}" | median)"

# --- the ledger nodes ------------------------------------------------------------------------
admin "CREATE DATABASE $DB" >/dev/null
STORE="$(db_url "$DB")"
ADDRS=()
start_node() {
    local n="$1"
    : >"$WORK/node$n.out"
    "$BIN" serve --data "$WORK/node$n" --listen 127.0.0.1:0 --store "$STORE" \
        >"$WORK/node$n.out" 2>"$WORK/node$n.err" &
    PIDS+=($!)
    local addr=""
    for _ in $(seq 1 300); do
        addr="$(sed -n 's/^listening on //p' "$WORK/node$n.out" | head -n1)"
        [[ -n "$addr" ]] && break
        sleep 0.1
    done
    [[ -n "$addr" ]] || { log "node $n did not start"; cat "$WORK/node$n.err" >&2; exit 1; }
    ADDRS+=("$addr")
}
for n in 1 2 3; do start_node "$n"; done
log "nodes on ${ADDRS[*]}"

post() {
    curl -sS --fail-with-body --max-time 10 -o /dev/null -X POST \
        -H "Authorization: Bearer $1" -H "Content-Type: application/json" --data "$3" "http://$4$2"
}
NOW="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LATER="$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)"
prepare() {
    local id="bench-$1"
    post "$BILLING" /v1/accounts "{\"account_id\":\"$id\"}" "$2"
    post "$BILLING" "/v1/accounts/$id/subscription" \
        "{\"tier\":\"pro\",\"billing\":\"monthly\",\"period_start\":\"$NOW\",\"period_end\":\"$LATER\",\"reference\":\"sub-$id\"}" "$2"
    post "$BILLING" "/v1/accounts/$id/top-ups" "{\"purchase_id\":\"lot-$id\",\"credits\":1000000000}" "$2"
}
export -f prepare post
export BILLING NOW LATER
log "preparing $ACCOUNTS accounts and the hot one"
seq 0 "$ACCOUNTS" | timeout 600 xargs -P 4 -I{} bash -c "prepare {} ${ADDRS[0]}"

# wrk_on ACCOUNTS_ENV CONNECTIONS ADDR...: one wrk per address at once, for DURATION; prints
# the summed requests/s and the non-2xx count.
wrk_on() {
    local accounts="$1" connections="$2"; shift 2
    local per=$((connections / $#)) outs=() pids=()
    for addr in "$@"; do
        local out="$WORK/wrk.$RANDOM.txt"
        outs+=("$out")
        BENCH_ACCOUNTS="$accounts" BENCH_RUN="r$RANDOM$RANDOM" timeout $((DURATION + 30)) \
            wrk -t1 -c"$per" -d"${DURATION}s" --timeout 5s \
            -H "Authorization: Bearer $EXECUTOR" -H "Content-Type: application/json" \
            -s benches/http/charge.lua "http://$addr" >"$out" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    awk '/^Requests\/sec:/ { rps += $2 } /Non-2xx or 3xx responses:/ { bad += $NF }
         END { printf "%.1f %d\n", rps, bad }' "${outs[@]}"
}

measure() {
    local name="$1"; shift
    DURATION_SAVED="$DURATION"; DURATION="$WARMUP"; wrk_on "$@" >/dev/null; DURATION="$DURATION_SAVED"
    local rates=() errors=0
    for _ in $(seq 1 "$RUNS"); do
        read -r rps bad < <(wrk_on "$@")
        rates+=("$rps"); errors=$((errors + bad))
        log "$name run: $rps charges/s, $bad non-2xx"
    done
    echo "$(printf '%s\n' "${rates[@]}" | median) $errors"
}

read -r ONE ONE_ERR < <(measure "one node" "$ACCOUNTS" "$CONNECTIONS" "${ADDRS[0]}")
read -r THREE THREE_ERR < <(measure "three nodes" "$ACCOUNTS" "$CONNECTIONS" "${ADDRS[@]}")
# BENCH_ACCOUNTS=1 sends every charge to bench-0.
read -r HOT HOT_ERR < <(measure "hot account, three nodes" 1 "$CONNECTIONS" "${ADDRS[@]}")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "PostgreSQL cluster benchmark: $(nproc) cores shared by PostgreSQL, the nodes and the load; $CONNECTIONS connections, $RUNS x ${DURATION}s (medians)"
printf '%-44s %14s %10s %12s\n' "scenario" "charges/s" "non-2xx" "ratio"
printf '%-44s %14s %10s %12s\n' "naive PostgreSQL charge (pgbench)" "$NAIVE_TPS" "-" "1.00"
printf '%-44s %14s %10s %12s\n' "ledger, one node, $ACCOUNTS accounts" "$ONE" "$ONE_ERR" "$(ratio "$ONE" "$NAIVE_TPS") x naive"
printf '%-44s %14s %10s %12s\n' "ledger, three nodes, $ACCOUNTS accounts" "$THREE" "$THREE_ERR" "$(ratio "$THREE" "$ONE") x one"
printf '%-44s %14s %10s %12s\n' "ledger, three nodes, one hot account" "$HOT" "$HOT_ERR" "$(ratio "$HOT" "$ONE") x one"
echo
echo "targets: one node >= 1.5x naive; three nodes >= 1.2x one node; hot account answers only 2xx"
