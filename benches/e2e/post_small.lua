-- wrk: POST /generate of a 3-row document (format from $FORMAT) with a new
-- idempotency key per request. $DELAY_MS > 0 paces each connection (light load).
local thread_id = 0

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("ARTEFATOS_KEY")
  prefix = os.getenv("RUN_ID") .. "-" .. os.getenv("PHASE") .. "-" .. id .. "-"
  format = os.getenv("FORMAT")
  filename = os.getenv("PHASE")
  delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
  counter = 0
end

function delay()
  return delay_ms
end

function request()
  counter = counter + 1
  local body = '{"format":"' .. format .. '","idempotency_key":"' .. prefix .. counter ..
    '","filename":"' .. filename .. '","document":{"title":"Vendas","sheets":[{"name":"Vendas",' ..
    '"columns":[{"title":"Cliente","type":"text"},{"title":"Valor","type":"number","format":"#,##0.00"},' ..
    '{"title":"Data","type":"date"}],' ..
    '"rows":[["Açaí Ltda",1234.5,"2026-07-01"],["São Paulo SA",99.9,"2026-07-02"],["Ñandú",7,"2026-07-03"]]}]}}'
  return wrk.format(nil, "/generate", nil, body)
end

function response(status, headers, body)
  if status ~= 202 then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
  end
end
