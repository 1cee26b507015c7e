-- charge.lua: wrk script for the charge benchmark. Every request is a 1-credit charge
-- (assistant-chat, per_call 1) with a charge_id unique across threads and runs, spread over
-- the prepared accounts bench-0 .. bench-(BENCH_ACCOUNTS-1).

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  accounts = tonumber(os.getenv("BENCH_ACCOUNTS") or "200")
  prefix = (os.getenv("BENCH_RUN") or tostring(os.time())) .. "-t" .. tostring(tid)
  counter = 0
end

function request()
  counter = counter + 1
  local account = (counter * 7 + tid) % accounts
  local body = string.format(
    '{"charge_id":"%s-%d","run_id":"bench-run","node_id":"node-1","model":"assistant-chat"}',
    prefix, counter)
  return wrk.format("POST", "/v1/accounts/bench-" .. account .. "/charges", nil, body)
end
