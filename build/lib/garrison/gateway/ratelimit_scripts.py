"""The Lua scripts behind Redis-backed rate limits (gateway/ratelimit.py), one per strategy.

Each processes every hit of one round trip, on many keys, atomically (a Lua script runs alone in
Redis), with the same data layout as the ``limits`` library's own scripts, so replicas running
either share counters. ``limits`` has no batch call: each of its scripts touches one key with an
all-or-nothing amount and needs a second round trip to read the window back.
"""

from __future__ import annotations

# Every script takes the hits on each key as one space-separated string (ARGV[1]) and replies with
# one space-separated string: redis-py's pure-Python reply parser costs about 2 µs per reply
# element, bytes.split() a fraction of that (and a Lua number in a list reply loses its fraction).
# A key of another strategy's type (the route's strategy changed) is dropped and its window starts
# afresh, rather than failing every request for it until it expires. Any other error fails the
# whole call, and so every hit of the round trip: such errors are normally Redis-wide (out of
# memory, a read-only replica), not one key's.
FIXED_WINDOW_SCRIPT = """
-- limits' incr_expire.lua for many counters, plus each counter's PTTL.
-- KEYS[i]: a counter; ARGV[1]: hits per key; ARGV[2]: the window in seconds.
-- Reply per key: the count after the hits, the window's time to live in milliseconds.
local window = tonumber(ARGV[2])
local reply = {}
local i = 0
for field in string.gmatch(ARGV[1], '%d+') do
    i = i + 1
    local key, hits = KEYS[i], tonumber(field)
    local count = redis.pcall('incrby', key, hits)
    if type(count) == 'table' then
        if string.sub(count.err, 1, 9) ~= 'WRONGTYPE' then return count end
        redis.call('del', key)
        count = redis.call('incrby', key, hits)
    end
    local ttl = redis.call('pttl', key)
    if ttl < 0 then
        redis.call('expire', key, window)
        ttl = window * 1000
    end
    reply[2 * i - 1] = count
    reply[2 * i] = ttl
end
return table.concat(reply, ' ')
"""
MOVING_WINDOW_SCRIPT = """
-- limits' acquire_moving_window.lua once per hit, for many windows, with what its
-- moving_window.lua counts. A window is a list of hit timestamps, newest first.
-- KEYS[i]: a window; ARGV[1]: hits per key; ARGV[2]: now (epoch seconds), ARGV[3]: the limit,
-- ARGV[4]: the window in seconds.
-- Reply per key: how many of the hits fit (the first ones), how many earlier hits the window
-- holds, and the oldest of those (now if none).
local now, limit, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local since = now - window
local reply = {}
local i = 0
for field in string.gmatch(ARGV[1], '%d+') do
    i = i + 1
    local key, hits = KEYS[i], tonumber(field)
    local length = redis.pcall('llen', key)
    if type(length) == 'table' then
        if string.sub(length.err, 1, 9) ~= 'WRONGTYPE' then return length end
        redis.call('del', key)
        length = 0
    end
    -- The oldest entry still in the window: a binary search, as moving_window.lua.
    local low, high, oldest_index = 0, math.min(length, limit) - 1, nil
    while low <= high do
        local middle = math.floor((low + high) / 2)
        local entry = tonumber(redis.call('lindex', key, middle))
        if entry and entry >= since then
            oldest_index = middle
            low = middle + 1
        else
            high = middle - 1
        end
    end
    local counted, oldest = 0, now
    if oldest_index then
        counted = oldest_index + 1
        oldest = tonumber(redis.call('lindex', key, oldest_index))
    end
    -- Hit number j fits if the entry at index limit - 1 after the j - 1 hits before it were
    -- pushed (index limit - j now) is missing or outside the window: acquire_moving_window.lua.
    local accepted = 0
    while accepted < hits and accepted < limit do
        local entry = tonumber(redis.call('lindex', key, limit - accepted - 1))
        if entry and entry >= since then break end
        accepted = accepted + 1
    end
    if accepted > 0 then
        local entries = {}
        for j = 1, accepted do entries[j] = ARGV[2] end
        for j = 1, accepted, 5000 do
            redis.call('lpush', key, unpack(entries, j, math.min(j + 4999, accepted)))
        end
        redis.call('ltrim', key, 0, limit - 1)
        redis.call('expire', key, window)
    end
    reply[3 * i - 2] = accepted
    reply[3 * i - 1] = counted
    reply[3 * i] = oldest
end
return table.concat(reply, ' ')
"""
SLIDING_WINDOW_SCRIPT = """
-- limits' acquire_sliding_window.lua once per hit, for many limits, with what its
-- sliding_window.lua reads. Times in milliseconds.
-- KEYS[2i - 1], KEYS[2i]: one limit's previous and current window counters; ARGV[1]: hits per
-- limit; ARGV[2]: the limit, ARGV[3]: the window in seconds.
-- Reply per limit: how many of the hits fit (the first ones), the previous window's count and
-- time to live, the current window's count before the hits and its time to live.
local limit, window = tonumber(ARGV[2]), tonumber(ARGV[3]) * 1000
local reply = {}
local i = 0
for field in string.gmatch(ARGV[1], '%d+') do
    i = i + 1
    local previous_key, current_key, hits = KEYS[2 * i - 1], KEYS[2 * i], tonumber(field)
    local current_ttl = tonumber(redis.call('pttl', current_key))
    if current_ttl > 0 and current_ttl < window then
        -- The current window has ended: it becomes the previous one.
        redis.call('rename', current_key, previous_key)
        redis.call('set', current_key, 0, 'PX', current_ttl + window)
    end
    local previous = tonumber(redis.call('get', previous_key)) or 0
    local previous_ttl = math.max(0, redis.call('pttl', previous_key))
    local current = tonumber(redis.call('get', current_key)) or 0
    current_ttl = math.max(0, redis.call('pttl', current_key))
    local weighted = math.floor(previous * previous_ttl / window) + current
    local accepted = math.max(0, math.min(hits, limit - weighted))
    if accepted > 0 then
        if redis.call('exists', current_key) == 1 then
            redis.call('incrby', current_key, accepted)
        else
            redis.call('set', current_key, accepted, 'PX', window * 2)
            current_ttl = window * 2
        end
    end
    reply[5 * i - 4] = accepted
    reply[5 * i - 3] = previous
    reply[5 * i - 2] = previous_ttl
    reply[5 * i - 1] = current
    reply[5 * i] = current_ttl
end
return table.concat(reply, ' ')
"""
SCRIPTS: dict[str, tuple[str, int]] = {  # strategy -> (script, reply items per key)
    "fixed_window": (FIXED_WINDOW_SCRIPT, 2),
    "moving_window": (MOVING_WINDOW_SCRIPT, 3),
    "sliding_window_counter": (SLIDING_WINDOW_SCRIPT, 5),
}
