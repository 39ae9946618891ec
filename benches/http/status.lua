-- wrk: GET /status/{job} for one job (served from the Redis status cache).
function init(args)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("ARTEFATOS_KEY")
  wrk.path = "/status/" .. os.getenv("JOB_ID")
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
