-- Leases tokens from shared token buckets (src/adapters/redis/redis-rate-limiter.ts), atomically:
-- every bucket of the call grants, or none does.
--
-- KEYS[i]          a bucket: a hash { tokens, at } (at: microseconds of Redis TIME); all KEYS of
--                  one call share a cluster slot (one principal's hash tag)
-- ARGV[5i - 4]     the bucket's rate, tokens per second (> 0)
-- ARGV[5i - 3]     its size (burst)
-- ARGV[5i - 2]     need: the least this call can use (0: take what there is, never refuse)
-- ARGV[5i - 1]     want: the most it asks for (>= need)
-- ARGV[5i]         PEXPIRE in ms: the time to refill the whole bucket and then some, after which
--                  an absent key (a full bucket) means the same as the stored one
-- Returns { 1 granted, 0 refused, granted_1, remaining_1, granted_2, remaining_2, ... }: whole
-- tokens granted per bucket (all 0 when refused), and the tokens left there after the call as
-- a string (a Lua number in a reply would be truncated to an integer).
--
-- Refilling by elapsed time on each call (no timer) with the server's clock, never the
-- callers': every serving process sees one clock.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local available = {}
local refused = false
for i = 1, #KEYS do
  local rate = tonumber(ARGV[5 * i - 4])
  local burst = tonumber(ARGV[5 * i - 3])
  local need = tonumber(ARGV[5 * i - 2])
  local stored = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local tokens = burst
  if stored[1] and stored[2] then
    tokens = tonumber(stored[1])
    -- A clock that went back refills nothing (and the bucket restarts from `now` below): that may
    -- count the skipped span twice, capped by the burst, rather than stall the bucket until the
    -- clock catches up.
    local elapsed = now - tonumber(stored[2])
    if elapsed > 0 then tokens = math.min(burst, tokens + elapsed * rate / 1000000) end
  end
  available[i] = tokens
  if tokens < need then refused = true end
end

local reply = { refused and 0 or 1 }
for i = 1, #KEYS do
  local granted = 0
  if not refused then
    granted = math.min(math.floor(available[i]), tonumber(ARGV[5 * i - 1]))
    -- A bucket this call did not touch needs no write: its state is a function of time.
    if granted > 0 then
      available[i] = available[i] - granted
      -- '%d': tostring keeps 14 digits, too few for microseconds since 1970 (16).
      redis.call('HSET', KEYS[i], 'tokens', tostring(available[i]), 'at', string.format('%d', now))
      redis.call('PEXPIRE', KEYS[i], ARGV[5 * i])
    end
  end
  reply[2 * i] = granted
  reply[2 * i + 1] = tostring(available[i])
end
return reply
