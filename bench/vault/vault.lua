-- wrk script of bench/vault (bench/vault/workloads.py sets the environment): one Vault API call per
-- request on keep-alive connections, the token in X-Vault-Token, a JSON body for writes.
--   VAULT_TOKEN     the token (from the environment, never from the command line: ps shows argv)
--   BENCH_METHOD    GET or POST
--   BENCH_PATH      /v1/... ; with BENCH_SPREAD = N > 0, requests cycle through BENCH_PATH .. 0..N-1
--   BENCH_BODY      request body (JSON), if any
--   PACED_MEAN_MS   if set: wait an exponential time of this mean before each request (as paced.lua)
local token = os.getenv("VAULT_TOKEN") or ""
local path = os.getenv("BENCH_PATH") or "/v1/sys/health"
local body = os.getenv("BENCH_BODY") or ""
local spread = tonumber(os.getenv("BENCH_SPREAD") or "0")
local mean_ms = tonumber(os.getenv("PACED_MEAN_MS") or "")

wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.path = path
wrk.headers["X-Vault-Token"] = token
if body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

if spread > 0 then
  local counter = 0
  function request()
    counter = counter + 1
    return wrk.format(nil, path .. (counter % spread))
  end
end

if mean_ms then
  math.randomseed(tonumber(os.getenv("PACED_SEED") or "1"))
  function delay()
    -- wrk takes whole milliseconds: round, rather than truncate, to keep the mean.
    return math.floor(-mean_ms * math.log(1 - math.random()) + 0.5)
  end
end
