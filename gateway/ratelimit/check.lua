-- Every rate limit of one request, decided at once and atomically: the arithmetic of
-- algorithms.py (integer milliseconds), run by redis_backend.py with EVALSHA.
--
-- KEYS: one counter per limit, a hash whose fields a, b, c hold algorithms.py's state.
-- ARGV[1]: now in ms, 0 for Redis's own clock (TIME, so replicas with skewed clocks agree);
-- then five per limit: the algorithm's code (f fixed_window, s sliding_window, t token_bucket),
-- limit, period in ms, capacity (token bucket), and 1 if enforced (0: shadow).
-- Returns {admitted, now, then per limit: allowed, remaining, reset ms, retry ms}. Counters
-- change only when every enforced limit allows the request, and then only those that allowed
-- it; each expires on its own.
local function idiv(a, b)
  local q = math.floor(a / b)
  if (q + 1) * b <= a then q = q + 1 elseif q * b > a then q = q - 1 end
  return q
end
local function cdiv(a, b) return -idiv(-a, b) end

if redis.replicate_commands then pcall(redis.replicate_commands) end
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000)
end
local out = {0, now}
local pending = {}
local admitted = true
for i = 1, #KEYS do
  local o = 1 + (i - 1) * 5
  local algo, L, P = ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local C, enforce = tonumber(ARGV[o + 4]), ARGV[o + 5] == '1'
  local st = redis.call('HMGET', KEYS[i], 'a', 'b', 'c')
  local a, b, c = tonumber(st[1]), tonumber(st[2]), tonumber(st[3])
  local allowed, remaining, reset, retry, na, nb, nc, ttl
  if algo == 'f' then
    local w = idiv(now, P)
    local count = 0
    if a == w then count = b end
    allowed = count < L
    if allowed then count = count + 1; remaining = L - count else remaining = 0 end
    reset = (w + 1) * P - now
    if allowed then retry = 0 else retry = reset end
    na, nb, nc, ttl = w, count, 0, reset + 1000
  elseif algo == 's' then
    local w = idiv(now, P)
    local curr, prev = 0, 0
    if a == w then curr, prev = b, c elseif a ~= nil and a == w - 1 then curr, prev = 0, b end
    local weight = P - (now - w * P)
    allowed = prev * weight + (curr + 1) * P <= L * P
    if allowed then
      curr = curr + 1
      remaining = idiv(L * P - prev * weight - curr * P, P)
      if remaining < 0 then remaining = 0 end
      retry = 0
    else
      remaining = 0
      retry = nil
      if curr + 1 <= L and prev > 0 then
        local wait = cdiv(prev * weight + (curr + 1 - L) * P, prev)
        if wait < weight then retry = wait end
      end
      if retry == nil then
        local extra = 0
        if curr > L - 1 then extra = cdiv((curr - L + 1) * P, curr) end
        retry = weight + extra
      end
    end
    reset = weight
    if curr > 0 then reset = weight + P end
    na, nb, nc, ttl = w, curr, prev, weight + P + 1000
  else
    local cap = C * P
    local tokens = cap
    if a ~= nil then
      local elapsed = now - b
      if elapsed < 0 then elapsed = 0 end
      tokens = a + elapsed * L
      if tokens > cap then tokens = cap end
    end
    allowed = tokens >= P
    if allowed then tokens = tokens - P end
    remaining = idiv(tokens, P)
    reset = cdiv(cap - tokens, L)
    if allowed then retry = 0 else retry = cdiv(P - tokens, L) end
    na, nb, nc, ttl = tokens, now, 0, reset + 1000
  end
  if (not allowed) and enforce then admitted = false end
  pending[i] = {allowed, na, nb, nc, ttl}
  local allowed_flag = 0
  if allowed then allowed_flag = 1 end
  out[#out + 1] = allowed_flag
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if admitted then
  for i = 1, #KEYS do
    local p = pending[i]
    if p[1] then
      redis.call('HSET', KEYS[i], 'a', p[2], 'b', p[3], 'c', p[4])
      redis.call('PEXPIRE', KEYS[i], p[5])
    end
  end
  out[1] = 1
end
return out
