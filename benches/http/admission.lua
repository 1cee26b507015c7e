-- admission.lua: wrk script for the admission benchmark. Every request asks admission for
-- the same 3-node workflow (an image, a video clip and an assistant call) on one of the
-- prepared accounts bench-0 .. bench-(BENCH_ACCOUNTS-1), in turn.

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  accounts = tonumber(os.getenv("BENCH_ACCOUNTS") or "200")
  counter = 0
  body = '{"nodes":['
    .. '{"node_id":"image","type":"image_generator","model":"flux-pro","images":2},'
    .. '{"node_id":"clip","type":"video_generator","model":"kling-2","seconds":5},'
    .. '{"node_id":"chat","type":"assistant","model":"assistant-chat"}'
    .. ']}'
end

function request()
  counter = counter + 1
  local account = (counter * 7 + tid) % accounts
  return wrk.format("POST", "/v1/accounts/bench-" .. account .. "/admission", nil, body)
end
