-- Last-write-wins upsert of online rows (DESIGN §4 "Online write"), atomic per call.
--
-- KEYS[i]       the row's key (all KEYS of one call share a cluster slot)
-- ARGV[2i - 1]  the row: 8-byte big-endian signed event time (microseconds), then the body
-- ARGV[2i]      absolute expiry in milliseconds since the epoch, '0' for none
-- Returns { written, stale }.
--
-- A row older than the stored one is ignored; an equal event time overwrites. Rows for the same
-- key apply in ARGV order. A stored value shorter than 8 bytes (absent or foreign) never wins.
local written = 0
local stale = 0

for i = 1, #KEYS do
  local key = KEYS[i]
  local row = ARGV[2 * i - 1]
  local expireAtMs = ARGV[2 * i]
  local isStale = false

  local stored = redis.call('GETRANGE', key, 0, 7)
  if #stored == 8 then
    -- Compare (signed high word, unsigned low word): exact for every int64, where one Lua number
    -- (a double) rounds beyond 2^53 and a string comparison uses strcoll and ignores the sign.
    local storedHigh, storedLow = struct.unpack('>i4I4', stored)
    local rowHigh, rowLow = struct.unpack('>i4I4', row)
    isStale = storedHigh > rowHigh or (storedHigh == rowHigh and storedLow > rowLow)
  end

  if isStale then
    stale = stale + 1
  else
    -- SET without KEEPTTL: the row's expiry replaces the old one. A PXAT in the past deletes.
    if expireAtMs == '0' then
      redis.call('SET', key, row)
    else
      redis.call('SET', key, row, 'PXAT', expireAtMs)
    end
    written = written + 1
  end
end

return { written, stale }
