#!/usr/bin/env bash
# CPU per charge by stage (issue 18), counted by callgrind: instructions, not seconds, so the
# figures repeat on a noisy shared machine. Runs `ledger serve` under valgrind, sends a fixed
# number of 1-credit HTTP charges (spread over accounts, 8 connections kept alive), stops
# the server, and splits the instructions its threads executed into stages:
#   decide, evolve (folding the new events), seal and hash (envelope + SHA-256 chain),
#   JSON (serde, both ways), store (SQLite and the writer), projectors (their threads),
#   the alerts outbox projector, the projector's feed (decoding events for the views), and
#   the rest: HTTP (hyper, axum, tokio, allocation, logging).
#
#   benches/profile/run.sh                 # 2,000 charges
#   CHARGES=5000 benches/profile/run.sh
#   LEDGER_BIN=/path/to/ledger benches/profile/run.sh   # profile another build
#
# Needs valgrind (installed here if missing). The server runs about 50 times slower under
# callgrind; that changes timing (batch sizes), not the work per charge.
set -euo pipefail
cd "$(dirname "$0")/../.."

CHARGES="${CHARGES:-2000}"
ACCOUNTS="${ACCOUNTS:-50}"
CONNECTIONS="${CONNECTIONS:-8}"

source benches/lib.sh

need valgrind
need callgrind_annotate valgrind

ledger_bin

WORK="$(mktemp -d -t ledger-profile-XXXXXX)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "${KEEP:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

EXECUTOR="profile-executor-token-0123456789"
BILLING="profile-billing-token-0123456789"
export LEDGER_TOKENS="executor=$EXECUTOR,billing=$BILLING"
export LEDGER_LOG="${LEDGER_LOG:-warn}"
unset LEDGER_DATA LEDGER_STORE LEDGER_LISTEN LEDGER_CATALOG

log "starting $BIN serve under callgrind"
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
    --separate-threads=yes --dump-instr=no \
    "$BIN" serve --data "$WORK/data" --listen 127.0.0.1:0 >"$WORK/stdout" 2>"$WORK/stderr" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 1200); do
    ADDR="$(sed -n 's/^listening on //p' "$WORK/stdout" | head -n1)"
    [[ -n "$ADDR" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/stderr" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$ADDR" ]] || { log "the server did not start in 120 s"; cat "$WORK/stderr" >&2; exit 1; }
log "listening on $ADDR; preparing $ACCOUNTS accounts, then zeroing the counters"

python3 - "$ADDR" "$ACCOUNTS" "$CHARGES" "$CONNECTIONS" "$EXECUTOR" "$BILLING" "$BIN" "$SERVER_PID" <<'PY'
import http.client, json, subprocess, sys, threading, datetime

addr, accounts, charges, connections = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
executor, billing = sys.argv[5], sys.argv[6]
pid = sys.argv[8]
host, port = addr.rsplit(":", 1)

def client():
    return http.client.HTTPConnection(host, int(port), timeout=120)

def post(conn, token, path, body, ok=(200, 201)):
    conn.request("POST", path, json.dumps(body), {
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read()
    if response.status not in ok:
        raise SystemExit(f"{path}: {response.status} {text[:200]!r}")

now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
later = now + datetime.timedelta(days=30)
iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
conn = client()
for n in range(accounts):
    account = f"profile-{n}"
    post(conn, billing, "/v1/accounts", {"account_id": account})
    post(conn, billing, f"/v1/accounts/{account}/subscription", {
        "tier": "pro", "billing": "monthly", "period_start": iso(now),
        "period_end": iso(later), "reference": f"sub-{account}"})
    post(conn, billing, f"/v1/accounts/{account}/top-ups",
         {"purchase_id": f"lot-{account}", "credits": 1_000_000_000})
# One warm-up charge per account, so first-touch costs (account load, view rows) stay out.
for n in range(accounts):
    post(conn, executor, f"/v1/accounts/profile-{n}/charges", {
        "charge_id": f"warm-{n}", "run_id": "profile", "node_id": "node-1",
        "model": "assistant-chat"})
subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)

def worker(index):
    conn = client()
    for i in range(index, charges, connections):
        post(conn, executor, f"/v1/accounts/profile-{i % accounts}/charges", {
            "charge_id": f"c-{i}", "run_id": "profile", "node_id": "node-1",
            "model": "assistant-chat"})

threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
for t in threads: t.start()
for t in threads: t.join()
PY

# Let the projectors catch up on the last charges before the counters are read.
sleep 5
log "stopping the server (callgrind writes its counts at exit)"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=""

python3 - "$WORK" "$CHARGES" <<'PY'
import glob, re, subprocess, sys

work, charges = sys.argv[1], int(sys.argv[2])

def annotate(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes",
         "--threshold=100", path], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.*)", line)
        if m and ":" in m.group(2):
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    total = re.search(r"([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", out)
    return rows, int(total.group(1).replace(",", "")) if total else 0

def inclusive_of(rows, pattern):
    """The largest inclusive cost among functions matching: the outermost call."""
    return max((ir for ir, name in rows if re.search(pattern, name)), default=0)

# callgrind.out-NN: one file per thread (--separate-threads); counters were zeroed after
# the warm-up, so each file holds the measured charges only.
parts = {}
for path in glob.glob(f"{work}/callgrind.out-*"):
    m = re.search(r"callgrind\.out-(\d+)$", path)
    if m:
        parts.setdefault(int(m.group(1)), []).append((0, path))

# Stages, as inclusive costs of the functions that bound them on the server's threads; the
# store's writer and the projectors run on threads of their own and count whole.
STAGES = [
    ("request JSON: body to command (parse_json)", r"ledger_service::api::extract::parse_json\b"),
    ("decide", r"ledger_domain::decide::decide\b"),
    ("evolve: folding the new events", r"ledger_domain::state::Account::evolve\b"),
    ("seal: events to JSON, ids, SHA-256 chain", r"ledger_domain::envelope::seal\b"),
    ("  of which the SHA-256 chain hash", r"ledger_domain::envelope::chain_hash\b"),
    ("decoding stored envelopes (SlimEnvelope::parse, any caller; overlaps the others)", r"ledger_domain::envelope::SlimEnvelope::parse\b"),
    ("answer JSON: receipt to response", r"ledger_service::api::receipt_response\b"),
    ("alerts outbox projector (a task on the server's runtime)", r"ledger_alerts::"),
    ("projector feed: events to the view threads (a task on the server's runtime)", r"ledger_projector::feeder::feed\b"),
]
# The server's own work under these (the batch around decide and seal, the answer) is the
# command path, and the alerts projector and the projector's feed (which decodes events once
# for every view) run beside it on the same runtime; what is left of a server thread is
# HTTP, the runtime and allocation.
COMMAND_PATH = [r"ledger_service::api::extract::parse_json\b",
                r"ledger_service::ledger::batch::<impl ledger_service::ledger::Ledger>::decide_all\b",
                r"ledger_service::api::receipt_response\b",
                r"ledger_alerts::",
                r"ledger_projector::feeder::feed\b"]
costs = {name: 0 for name, _ in STAGES}
server = http_rest = writer = projectors = 0
for thread, dumps in parts.items():
    path = max(dumps)[1]
    inc, total = annotate(path)
    if total == 0:
        continue
    # A thread is a projector's or the writer's when that loop holds most of its work;
    # the server's threads call into the store too, which must not classify them.
    if inclusive_of(inc, r"ledger_projector::") * 2 > total:
        projectors += total
        continue
    if inclusive_of(inc, r"ledger_store_sqlite::writer::Writer::run\b") * 2 > total:
        writer += total
        continue
    server += total
    for name, pattern in STAGES:
        costs[name] += inclusive_of(inc, pattern)
    http_rest += max(total - sum(inclusive_of(inc, p) for p in COMMAND_PATH), 0)

grand = server + writer + projectors
per = lambda ir: f"{ir // charges:,}"
share = lambda ir: f"{100 * ir / max(grand, 1):.1f}%"
print(f"CPU per charge by stage: callgrind instructions over {charges} HTTP charges")
print()
print("| stage | instructions per charge | share of all |")
print("|---|---:|---:|")
print(f"| HTTP, runtime and allocation (server threads outside the command path) | {per(http_rest)} | {share(http_rest)} |")
for name, _ in STAGES:
    print(f"| {name} | {per(costs[name])} | {share(costs[name])} |")
print(f"| store: the SQLite writer thread | {per(writer)} | {share(writer)} |")
print(f"| projectors: their threads (one SQLite file per view) | {per(projectors)} | {share(projectors)} |")
print(f"| total (all threads) | {per(grand)} | 100% |")
PY
