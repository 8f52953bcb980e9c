-- spec/bench/store/ir.lua DIR POLICY N — N cache gets from Lua over 1000
-- keys (spec/bench/store/ir counts their instructions under callgrind).
local core = require "rubberduck.core"
local S = core.store
local dir, policy, n = arg[1], arg[2], tonumber(arg[3])
local env = assert(S.open(dir, "cache"))
local c = S.cache(env, { policy = policy })
local val, keys = ("v"):rep(100), {}
for i = 1, 1000 do keys[i] = string.format("key:%08u", i - 1); assert(c:put(keys[i], val, 3600)) end
local get, hits = c.get, 0
for i = 1, n do if get(c, keys[(i % 1000) + 1]) then hits = hits + 1 end end
assert(hits == n)
c:close()
env:close()
