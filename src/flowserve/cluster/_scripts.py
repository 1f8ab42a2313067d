"""The Lua scripts :class:`~flowserve.cluster.redis.RedisCluster` runs in Redis, each one
atomic: no other process's command runs between its reads and its writes. Times are Redis's
own clock (``TIME``), so processes whose clocks differ still count the same.
"""

from __future__ import annotations

# One request against a key's rate and, if asked, a run slot: one round trip per admission.
# The rate is a token bucket holding a minute's worth (a hash: tokens, at), forgotten after a
# minute idle (it is full again by then). A slot is a member of two sorted sets, the key's and
# everyone's, scored by when it expires: its process pushes that forward at each heartbeat,
# so the slots of a process that died expire by themselves. Expired members are dropped
# before counting. A refused slot has still counted against the rate (as one request).
#
# KEYS: rate bucket, the key's slots, all slots
# ARGV: per minute (0: no rate), max slots per key, max slots in all, slot id ('' = rate
#       only), slot ttl in ms
# Returns {verdict, seconds to wait}: ok, rate, key or total; numbers as strings (Redis
# would truncate a Lua number to an integer).
ADMIT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local per_minute = tonumber(ARGV[1])
if per_minute > 0 then
  local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens = tonumber(bucket[1]) or per_minute
  local at = tonumber(bucket[2]) or now
  local rate = per_minute / 60000.0
  tokens = math.min(per_minute, tokens + math.max(0, now - at) * rate)
  local refused = tokens < 1
  if not refused then
    tokens = tokens - 1
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], 60000)
  if refused then
    return {'rate', tostring((1 - tokens) / rate / 1000)}
  end
end
local slot = ARGV[4]
if slot == '' then
  return {'ok', '0'}
end
local ttl = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  return {'key', '0'}
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  return {'total', '0'}
end
redis.call('ZADD', KEYS[2], now + ttl, slot)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], now + ttl, slot)
redis.call('PEXPIRE', KEYS[3], ttl)
return {'ok', '0'}
"""

# A process's heartbeat for the slots it holds: each one's expiry pushed forward. 'XX' only
# updates members still there (a slot released meanwhile is not brought back); 'ADD' puts
# them all back (after an outage or a stall, when they may have expired, or were taken while
# Redis was unreachable).
#
# KEYS: all slots, then the key's slots of each slot; ARGV: ttl in ms, 'XX' or 'ADD', then
# the slot ids, in the order of KEYS[2..]
REFRESH = """
local clock = redis.call('TIME')
local ttl = tonumber(ARGV[1])
local expiry = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + ttl
local only_existing = ARGV[2] == 'XX'
for i = 3, #ARGV do
  local key = KEYS[i - 1]
  if only_existing then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
    redis.call('ZADD', key, 'XX', expiry, ARGV[i])
  else
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
    redis.call('ZADD', key, expiry, ARGV[i])
  end
  redis.call('PEXPIRE', key, ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
"""

# What one run appended since its last write, as stream entries numbered by the run's own
# event numbers (ids 0-1, 0-2, ...), so a reader asks for "after n" directly. An empty
# payload is the end marker, written by close(). The stream is capped at about ``max
# length`` entries (approximate trimming: whole nodes of the oldest) and expires ``ttl`` ms
# after its last write unless refreshed.
#
# KEYS: the run's stream; ARGV: max length, ttl in ms, number of the first event, then one
# encoded event per entry
APPEND = """
local seq = tonumber(ARGV[3])
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-' .. seq, 'e', ARGV[i])
  seq = seq + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return seq
"""
