#!/usr/bin/env bash
# HTTP load benchmark of `ledger serve` over loopback (issue 5): charges and admission
# checks measured with wrk, next to a baseline of GET /healthz through the same server and
# wrk settings (the ceiling of the HTTP stack on this machine). Charges run spread over the
# accounts, all on one hot account, at 256 connections and at 16 (issue 18's targets: the hot
# account at 0.7x the spread rate, 256 connections at 0.35x /healthz, p99 under 5 ms at 16).
# Beside each rate: the server's CPU time per request (all its threads, from /proc), which
# moves far less than the rate when wrk and other tenants take the cores.
#
#   benches/http/run.sh            # 3 runs of 15 s per scenario, 2 wrk threads, 64 connections
#   DURATION=10 RUNS=5 CONNECTIONS=32 THREADS=1 ACCOUNTS=200 benches/http/run.sh
#   LEDGER_BIN=/path/to/older/ledger benches/http/run.sh   # measure another build
#
# Targets: 20,000 charges/s and 50,000 admission checks/s with p99 under 5 ms, on two cores
# shared with the load generator. Loopback only; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION="${DURATION:-15}"
RUNS="${RUNS:-3}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
ACCOUNTS="${ACCOUNTS:-200}"
WARMUP="${WARMUP:-3}"
HERE="benches/http"

source benches/lib.sh

need wrk
need curl

ledger_bin

WORK="$(mktemp -d -t ledger-bench-XXXXXX)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

EXECUTOR="bench-executor-token-0123456789"
BILLING="bench-billing-token-0123456789"
export LEDGER_TOKENS="executor=$EXECUTOR,billing=$BILLING,support=bench-support-token-0123456789,finance=bench-finance-token-0123456789,admin=bench-admin-token-0123456789"
# One log line per command at info level; the benchmark measures the ledger, not the log.
export LEDGER_LOG="${LEDGER_LOG:-warn}"
unset LEDGER_DATA LEDGER_STORE LEDGER_LISTEN LEDGER_CATALOG

log "starting $BIN serve on a fresh data directory"
"$BIN" serve --data "$WORK/data" --listen 127.0.0.1:0 >"$WORK/stdout" 2>"$WORK/stderr" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 300); do
    ADDR="$(sed -n 's/^listening on //p' "$WORK/stdout" | head -n1)"
    [[ -n "$ADDR" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/stderr" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$ADDR" ]] || { log "the server did not start in 30 s"; cat "$WORK/stderr" >&2; exit 1; }
BASE="http://$ADDR"
log "listening on $ADDR"

# post TOKEN PATH BODY: fails on a non-2xx answer.
post() {
    curl -sS --fail-with-body --max-time 10 -o /dev/null -X POST \
        -H "Authorization: Bearer $1" -H "Content-Type: application/json" \
        --data "$3" "$BASE$2"
}

log "preparing $ACCOUNTS accounts (pro, topped up with 1,000,000,000 credits)"
NOW="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LATER="$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)"
prepare() {
    local id="bench-$1"
    post "$BILLING" /v1/accounts "{\"account_id\":\"$id\"}"
    post "$BILLING" "/v1/accounts/$id/subscription" \
        "{\"tier\":\"pro\",\"billing\":\"monthly\",\"period_start\":\"$NOW\",\"period_end\":\"$LATER\",\"reference\":\"sub-$id\"}"
    post "$BILLING" "/v1/accounts/$id/top-ups" "{\"purchase_id\":\"lot-$id\",\"credits\":1000000000}"
}
export -f prepare post
export BASE BILLING NOW LATER
seq 0 $((ACCOUNTS - 1)) | timeout 300 xargs -P 4 -I{} bash -c 'prepare {}'
# Let the views catch up before admission reads them.
sleep 1

# to_ms VALUE: wrk's "1.23ms" / "850.00us" / "1.02s" in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else { printf "%s", v } }'
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# server_ticks: CPU time the server has used so far (all its threads, user and system), in
# clock ticks.
server_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
TICKS_PER_S="$(getconf CLK_TCK)"

# measure NAME ARGS...: warm-up, then RUNS runs; prints "rps p99_ms non2xx cpu_us" medians
# (errors summed). cpu_us is the server's CPU time per request: on cores shared with wrk and
# other tenants, a steadier figure of what a request costs than the rate.
measure() {
    local name="$1"; shift
    local rps_file="$WORK/$name.rps" p99_file="$WORK/$name.p99" cpu_file="$WORK/$name.cpu"
    local errors=0
    : >"$rps_file"; : >"$p99_file"; : >"$cpu_file"
    timeout $((WARMUP + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" --timeout 5s "$@" >/dev/null
    for run in $(seq 1 "$RUNS"); do
        local out="$WORK/$name.$run.txt" ticks_before
        ticks_before="$(server_ticks)"
        BENCH_RUN="$name-$run-$RANDOM" timeout $((DURATION + 30)) \
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency "$@" >"$out"
        # Requests wrk had in flight when it stopped are counted by neither side: a rounding
        # error at these rates.
        awk -v ticks=$(( $(server_ticks) - ticks_before )) -v hz="$TICKS_PER_S" \
            '/ requests in / { if ($1 > 0) printf "%.1f\n", ticks * 1e6 / hz / $1 }' "$out" >>"$cpu_file"
        awk '/^Requests\/sec:/ { print $2 }' "$out" >>"$rps_file"
        to_ms "$(awk '$1 == "99%" { print $2 }' "$out")" >>"$p99_file"
        echo >>"$p99_file"
        local bad
        bad="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")"
        errors=$((errors + ${bad:-0}))
        log "$name run $run: $(awk '/^Requests\/sec:/ { print $2 }' "$out") req/s, p99 $(awk '$1 == "99%" { print $2 }' "$out")"
    done
    echo "$(median <"$rps_file") $(grep -v '^$' "$p99_file" | median) $errors $(median <"$cpu_file")"
}

AUTH=(-H "Authorization: Bearer $EXECUTOR" -H "Content-Type: application/json")
export BENCH_ACCOUNTS="$ACCOUNTS"

log "baseline: GET /healthz"
read -r H_RPS H_P99 H_ERR H_CPU < <(measure healthz "$BASE/healthz")
log "charges: POST /v1/accounts/{id}/charges (unique charge_id, 1 credit)"
read -r C_RPS C_P99 C_ERR C_CPU < <(measure charges "${AUTH[@]}" -s "$HERE/charge.lua" "$BASE")
log "hot account: POST charges, every one on bench-0"
read -r HOT_RPS HOT_P99 HOT_ERR HOT_CPU < <(BENCH_ACCOUNTS=1 measure hot "${AUTH[@]}" -s "$HERE/charge.lua" "$BASE")
log "charges at 256 connections"
read -r WIDE_RPS WIDE_P99 WIDE_ERR WIDE_CPU < <(CONNECTIONS=256 measure wide "${AUTH[@]}" -s "$HERE/charge.lua" "$BASE")
log "charges at 16 connections (the p99 target's load)"
read -r NARROW_RPS NARROW_P99 NARROW_ERR NARROW_CPU < <(CONNECTIONS=16 measure narrow "${AUTH[@]}" -s "$HERE/charge.lua" "$BASE")

# proc_stats: "threads open_files rss_mib" of the server, from /proc.
proc_stats() {
    local threads files rss
    threads="$(awk '/^Threads:/ { print $2 }' "/proc/$SERVER_PID/status")"
    files="$(ls "/proc/$SERVER_PID/fd" | wc -l)"
    rss="$(awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$SERVER_PID/status")"
    echo "$threads $files $rss"
}
read -r F_THREADS F_FILES F_RSS < <(proc_stats)

log "retry storm: seeding acknowledged charges, then replaying 100% of them"
SEED_OUT="$WORK/seed.txt"
BENCH_RUN="seed" timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
    --timeout 5s "${AUTH[@]}" -s "$HERE/charge.lua" "$BASE" >"$SEED_OUT"
SEEDED="$(awk '/requests in/ { print $1 }' "$SEED_OUT")"
# Each seeding thread sent about SEEDED/THREADS charges; replay the first half of each
# thread's, so every replayed id was acknowledged.
export BENCH_REPLAY_OF="seed" BENCH_REPLAY_MAX=$((SEEDED / THREADS / 2))
fresh_201() { curl -sS --max-time 10 "$BASE/metrics" | awk '/^ledger_http_requests_total\{.*route="\/v1\/accounts\/\{id\}\/charges".*status="201"/ { s += $NF } END { print s + 0 }'; }
# Requests wrk had in flight when the seeding run ended are still being answered.
sleep 1
BEFORE_REPLAY_201="$(fresh_201)"
read -r R_RPS R_P99 R_ERR R_CPU < <(measure replays "${AUTH[@]}" -s "$HERE/replay.lua" "$BASE")
REPLAY_WROTE=$(( $(fresh_201) - BEFORE_REPLAY_201 ))
read -r R_THREADS R_FILES R_RSS < <(proc_stats)

log "admission: POST /v1/accounts/{id}/admission (3 nodes)"
read -r A_RPS A_P99 A_ERR A_CPU < <(measure admission "${AUTH[@]}" -s "$HERE/admission.lua" "$BASE")

CHARGED="$(curl -sS --max-time 10 "$BASE/metrics" | awk -F' ' '/^ledger_http_requests_total\{.*route="\/v1\/accounts\/\{id\}\/charges".*status="201"/ { s += $NF } END { print s + 0 }')"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "ledger HTTP benchmark: $(nproc) cores shared by server and wrk; wrk -t$THREADS -c$CONNECTIONS, $RUNS x ${DURATION}s per scenario (medians)"
printf '%-34s %14s %12s %10s %16s %18s\n' "scenario" "requests/s" "p99 (ms)" "non-2xx" "vs /healthz" "server CPU us/req"
printf '%-34s %14s %12s %10s %16s %18s\n' "GET /healthz (baseline)" "$H_RPS" "$H_P99" "$H_ERR" "1.00" "$H_CPU"
printf '%-34s %14s %12s %10s %16s %18s\n' "POST charges (1 credit, unique id)" "$C_RPS" "$C_P99" "$C_ERR" "$(ratio "$C_RPS" "$H_RPS")" "$C_CPU"
printf '%-34s %14s %12s %10s %16s %18s\n' "POST charges, one hot account" "$HOT_RPS" "$HOT_P99" "$HOT_ERR" "$(ratio "$HOT_RPS" "$H_RPS")" "$HOT_CPU"
printf '%-34s %14s %12s %10s %16s %18s\n' "POST charges, 256 connections" "$WIDE_RPS" "$WIDE_P99" "$WIDE_ERR" "$(ratio "$WIDE_RPS" "$H_RPS")" "$WIDE_CPU"
printf '%-34s %14s %12s %10s %16s %18s\n' "POST charges, 16 connections" "$NARROW_RPS" "$NARROW_P99" "$NARROW_ERR" "$(ratio "$NARROW_RPS" "$H_RPS")" "$NARROW_CPU"
printf '%-34s %14s %12s %10s %16s %18s\n' "POST charges, 100% replays" "$R_RPS" "$R_P99" "$R_ERR" "$(ratio "$R_RPS" "$H_RPS")" "$R_CPU"
printf '%-34s %14s %12s %10s %16s %18s\n' "POST admission (3 nodes)" "$A_RPS" "$A_P99" "$A_ERR" "$(ratio "$A_RPS" "$H_RPS")" "$A_CPU"
echo
echo "hot account: $(ratio "$HOT_RPS" "$C_RPS")x the spread charge rate (target >= 0.7x); 256 connections: $(ratio "$WIDE_RPS" "$H_RPS")x /healthz (target >= 0.35x)"
echo "retry storm: replays $(ratio "$R_RPS" "$C_RPS")x the fresh-charge rate (target >= 1.5x); charges written during the replay runs: $REPLAY_WROTE (must be 0)"
echo "server after fresh charges: $F_THREADS threads, $F_FILES open files, $F_RSS MiB RSS; after the replays: $R_THREADS threads, $R_FILES open files, $R_RSS MiB RSS"
echo
echo "charge p99 at 16 connections: $NARROW_P99 ms (target < 5 ms)"
echo "targets: charges >= 20000/s, admission >= 50000/s, p99 < 5 ms; charges acknowledged (201) during the runs: $CHARGED"
