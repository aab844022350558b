-- wrk script of bench/identity/run.py: POST form bodies to one endpoint with HTTP Basic client
-- authentication, cycling through the bodies of a file, and count 200 responses whose body is not
-- what a working provider returns (wrk itself counts statuses >= 400 as "Non-2xx or 3xx responses").
--
-- Read from the environment (so that no credential appears on a command line):
--   BENCH_PATH           request path, e.g. /token or /introspect
--   BENCH_AUTHORIZATION  the whole Authorization header value: "Basic <base64(id:secret)>"
--   BENCH_BODIES         a file with one application/x-www-form-urlencoded body per line
--   BENCH_EXPECT         a Lua pattern that a good response body contains, e.g. "active"%s*:%s*true
--
-- Prints "Unexpected responses: N" at the end: statuses 1xx-3xx other than 200, and 200s whose body
-- does not match BENCH_EXPECT.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local prepared = {}
local next_index = 0
local expect = nil
unexpected = 0 -- global: read by done() through thread:get

function init(args)
  local path = os.getenv("BENCH_PATH")
  local authorization = os.getenv("BENCH_AUTHORIZATION")
  expect = os.getenv("BENCH_EXPECT")
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    if #line > 0 then
      local headers = {
        ["Authorization"] = authorization,
        ["Content-Type"] = "application/x-www-form-urlencoded",
      }
      table.insert(prepared, wrk.format("POST", path, headers, line))
    end
  end
  if #prepared == 0 then
    error("no request bodies in " .. os.getenv("BENCH_BODIES"))
  end
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function response(status, headers, body)
  if status < 400 and (status ~= 200 or not string.find(body, expect)) then
    unexpected = unexpected + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("unexpected")
  end
  io.write(string.format("Unexpected responses: %d\n", total))
end
