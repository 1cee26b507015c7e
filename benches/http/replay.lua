-- replay.lua: wrk script for the retry-storm benchmark. Every request replays a charge the
-- seeding run acknowledged: the same charge_id, account and body, cycling over the
-- BENCH_REPLAY_MAX charges each seeding thread sent after its first (prefix
-- BENCH_REPLAY_OF-t{tid}).

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  accounts = tonumber(os.getenv("BENCH_ACCOUNTS") or "200")
  max = tonumber(os.getenv("BENCH_REPLAY_MAX") or "1000")
  prefix = (os.getenv("BENCH_REPLAY_OF") or "seed") .. "-t" .. tostring(tid)
  counter = 0
end

function request()
  -- Ids 2 .. max+1: wrk calls request() once on its first thread before the run to check
  -- the script, so that thread's id 1 was never sent while seeding; replaying it wrote one
  -- fresh charge in every run, which the benchmark rightly reported as a write.
  counter = (counter % max) + 1
  local id = counter + 1
  local account = (id * 7 + tid) % accounts
  local body = string.format(
    '{"charge_id":"%s-%d","run_id":"bench-run","node_id":"node-1","model":"assistant-chat"}',
    prefix, id)
  return wrk.format("POST", "/v1/accounts/bench-" .. account .. "/charges", nil, body)
end
