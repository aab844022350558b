-- Independent arrivals for `wrk -s paced.lua` (bench/common/loadgen.py run_paced): before each request
-- a connection waits an exponentially distributed time of mean PACED_MEAN_MS, so arrivals are close to
-- a Poisson process at connections / mean requests per second, never in lockstep.
local mean_ms = tonumber(os.getenv("PACED_MEAN_MS") or "50")
math.randomseed(tonumber(os.getenv("PACED_SEED") or "1"))

function delay()
  -- wrk takes whole milliseconds: round, rather than truncate, to keep the mean.
  return math.floor(-mean_ms * math.log(1 - math.random()) + 0.5)
end
