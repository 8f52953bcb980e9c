-- spec/bench/store/ir.lua DIR POLICY N [ffi] — N cache gets from Lua over
-- 1000 keys (RD_IR_KEYS), through the binding (c.get) or the FFI getter
-- (rubberduck.store_ffi); spec/bench/store/ir counts their instructions.
local core = require "rubberduck.core"
local S = core.store
local dir, policy, n, via = arg[1], arg[2], tonumber(arg[3]), arg[4]
local nkeys = tonumber(os.getenv("RD_IR_KEYS")) or 1000
local env = assert(S.open(dir, "cache", { map_size = 2 ^ 30, max_map_size = 2 ^ 30 }))
local c = S.cache(env, { policy = policy })
local val, keys = ("v"):rep(100), {}
for i = 1, nkeys do keys[i] = string.format("key:%08u", i - 1); assert(c:put(keys[i], val, 3600)) end
local hits = 0
if via == "ffi" then
  local FF = require "rubberduck.store_ffi"
  assert(FF.available, "no FFI path")
  local get = FF.getter(c)
  for i = 1, n do if get(keys[(i % nkeys) + 1]) then hits = hits + 1 end end
else
  local get = c.get
  for i = 1, n do if get(c, keys[(i % nkeys) + 1]) then hits = hits + 1 end end
end
assert(hits == n)
c:close()
env:close()
