-- wrk: POST /generate repeating one request: every answer is an idempotent replay.
function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("ARTEFATOS_KEY")
  wrk.path = "/generate"
  wrk.body = '{"format":"xlsx","idempotency_key":"replay-' .. os.getenv("RUN_ID") ..
    '","filename":"bench","document":{"title":"Bench","sheets":[{"name":"S","columns":' ..
    '[{"title":"A","type":"text"},{"title":"B","type":"number"}],"rows":[["x",1],["y",2]]}]}}'
end

function response(status, headers, body)
  if status ~= 202 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
