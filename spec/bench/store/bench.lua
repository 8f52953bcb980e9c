-- spec/bench/store/bench.lua DIR N_KEYS N_GETS N_APPENDS — the store from
-- Lua: cache get/put through core.store (the binding the engine uses),
-- history appends with group commit (append_async on a loop). Prints
-- "name ops_per_s" lines, like bench.c.
local core = require "rubberduck.core"
local S = core.store
local dir, nkeys, ngets, napp = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
local function now() return core.mono_ms() / 1000 end

local env = assert(S.open(dir, "cache", { map_size = 2 ^ 30, max_map_size = 2 ^ 30 }))
local val = ("v"):rep(100)
local keys, pick = {}, {}
for i = 1, nkeys do keys[i] = string.format("key:%08u", i - 1) end
for i = 1, ngets do pick[i] = keys[math.random(nkeys)] end
local policies = { "lru", "lfu", "fifo" }
for _, policy in ipairs(policies) do
  local c = S.cache(env, { policy = policy })
  c:clear()
  local t0 = now()
  for i = 1, nkeys do c:put(keys[i], val, 3600) end
  print(string.format("lua_cache_put_%s %.0f", policy, nkeys / (now() - t0)))
  c:close()
end
-- Gets: the best of 3 rounds (a noisy shared VM), a fresh handle per
-- round and policy, all on the same file, like bench.c.
local best = {}
for _ = 1, 3 do
  for _, policy in ipairs(policies) do
    local c = S.cache(env, { policy = policy })
    local get, n = c.get, 0
    local t0 = now()
    for i = 1, ngets do
      if get(c, pick[i]) then n = n + 1 end
    end
    local rate = ngets / (now() - t0)
    assert(n == ngets)
    if rate > (best[policy] or 0) then best[policy] = rate end
    c:close()
  end
end
for _, policy in ipairs(policies) do
  print(string.format("lua_cache_get_%s %.0f", policy, best[policy]))
end
env:close()

local data = assert(S.open(dir, "data", { map_size = 2 ^ 30, max_map_size = 2 ^ 30 }))
local h = S.history(data, { group_ms = 2, max_batch = 2048 })
local loop = core.loop.new()
local done = 0
local function cb(ok) if ok then done = done + 1 end end
local rec = { tool = "echo", version = "1.0.0", status = "ok", caller = "bench",
  params_hash = ("0"):rep(64), started_at = 1, duration_ms = 1, attempts = 1 }
local t0 = now()
for i = 1, napp do
  rec.id = core.ulid()
  h:append_async(rec, loop, cb)
  if i % 4096 == 0 then loop:run("nowait") end
end
while done < napp do loop:run("once") end
print(string.format("lua_history_append %.0f", napp / (now() - t0)))
h:close()
loop:close()
data:close()
