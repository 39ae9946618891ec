-- wrk: POST /generate with a new idempotency key on every request.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("ARTEFATOS_KEY")
  prefix = os.getenv("RUN_ID") .. "-" .. id .. "-"
end

function request()
  counter = counter + 1
  local body = '{"format":"xlsx","idempotency_key":"' .. prefix .. counter ..
    '","filename":"bench","document":{"title":"Bench","sheets":[{"name":"S","columns":' ..
    '[{"title":"A","type":"text"},{"title":"B","type":"number"}],"rows":[["x",1],["y",2]]}]}}'
  return wrk.format(nil, "/generate", nil, body)
end

-- POST_DELAY_MS paces each connection (benches/retention/run.sh: a constant rate).
if os.getenv("POST_DELAY_MS") then
  function delay()
    return tonumber(os.getenv("POST_DELAY_MS"))
  end
end

function response(status, headers, body)
  if status ~= 202 then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
  end
end
