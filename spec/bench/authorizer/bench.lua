-- spec/bench/authorizer/bench.lua — decisions and token verification per
-- second, in one process, with the anchor measured in the same run:
-- libsodium's own crypto_sign_verify_detached (through the LuaJIT FFI).
--   luajit bench.lua [N]
-- Goals (issue #7): a cached decision under 200 ns, an uncached one under
-- 5 µs, token verification close to crypto_sign_verify_detached.
local rd = require "rubberduck"
local core = require "rubberduck.core"
local authorizer = require "rubberduck.authorizer"
local token = require "rubberduck.token"

local N = tonumber(arg[1]) or 1000000
local now = core.mono_ms

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "/tools'") == 0)
local function put(path, s)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
end
put(dir .. "/tools/store.lua", [[
return tool {
  metadata = { name = "store", description = "bench" },
  parameters = { type = "object", properties = { action = { type = "string" } } },
  capabilities = { "fs.read" },
  requires = { { when = { action = "write" }, capabilities = { "fs.write" } } },
  security = { level = "relaxed" },
  execution = { handler = function() return {} end },
}]])
local policy = [[
return {
  roles = {
    admin = { capabilities = { "*" }, inherits = { "user" } },
    user = { capabilities = { "execute", "fs.read", "fs.write" } },
    reader = { capabilities = { "fs.read" } },
  },
  principals = { bob = { roles = { "user" } }, carol = { roles = { "reader" } } },
  rules = {
    { name = "no deletes over http", when = { entry = { "http" }, params = { action = "delete" } }, deny = true },
    { name = "writes from cli or lua", tools = { "store" }, when = { params = { action = "write" } },
      require = { entry = { "cli", "lua", "console" } } },
  },
  cache_ttl = %d,
}]]
put(dir .. "/cached.lua", policy:format(3600))
put(dir .. "/uncached.lua", policy:format(0))

local engine = assert(rd.open({ tools = dir .. "/tools", data_dir = dir .. "/data",
  policy = dir .. "/cached.lua" }))
local A = engine.auth
local def = engine:tool("store")
local bob = assert(authorizer.caller({ principal = "bob" }))
local params = { action = "write" }

local function rate(label, n, fn, goal)
  for _ = 1, math.min(n, 10000) do fn() end
  local t0 = now()
  for _ = 1, n do fn() end
  local ms = now() - t0
  local ns = ms * 1e6 / n
  print(string.format("%-34s %12.0f /s %10.1f ns%s", label, n / (ms / 1000), ns,
    goal and string.format("   (goal < %d ns: %s)", goal, ns < goal and "met" or "NOT met") or ""))
  return ns
end

print(string.format("authorizer benchmark: %s, N = %d", jit and jit.version or _VERSION, N))
assert(A:check(def, bob, params, "lua"))
rate("decision, cached", N, function() return A:check(def, bob, params, "lua") end, 200)

assert(engine:reload_policy(dir .. "/uncached.lua"))
rate("decision, uncached", math.floor(N / 10), function() return A:check(def, bob, params, "lua") end, 5000)
rate("decision, uncached, grants anew", math.floor(N / 10), function()
  -- the caller's grants (roles expanded through the policy) worked out again
  A.grants, A.ngrants = {}, 0
  return A:check(def, bob, params, "lua")
end, 5000)
local i = 0
rate("caller normalization (per call)", math.floor(N / 10), function()
  i = i + 1
  return authorizer.caller({ principal = "bob", roles = { "reader" }, trace = i })
end)

-- tokens
local key = assert(A:key(true))
local pk = key:public()
local t1 = assert(token.issue(key, { principal = "bob", capabilities = { "fs.read", "fs.write" },
  roles = { "user" }, ttl = 3600 }))
local t2 = assert(token.attenuate(t1, { capabilities = { "fs.read" }, ttl = 600 }))
local nt = math.max(1000, math.floor(N / 100))
local v1 = rate("token verify, 1 block", nt, function() return assert(token.verify(t1, pk)) end)
local v2 = rate("token verify, 2 blocks", nt, function() return assert(token.verify(t2, pk)) end)

-- a token as a caller again: its signatures were checked on first use
local tcaller = { token = t2 }
assert(A:caller(tcaller))
rate("token caller, verified before", nt * 10, function() return assert(A:caller(tcaller)) end)

-- the anchor: one crypto_sign_verify_detached, straight into libsodium
local ok, ffi = pcall(require, "ffi")
local anchor
if ok then
  local lib
  for _, name in ipairs({ "sodium", "libsodium.so.23", "libsodium.so" }) do
    local fine, l = pcall(ffi.load, name)
    if fine then lib = l; break end
  end
  if lib then
    ffi.cdef [[int crypto_sign_verify_detached(const unsigned char *sig, const unsigned char *m,
      unsigned long long mlen, const unsigned char *pk);]]
    local d = assert(token.decode(t1))
    local msg = "rduck-token-v1\0" .. "1\0" .. d.blocks[1].raw
    local sig = d.blocks[1].sig
    assert(lib.crypto_sign_verify_detached(sig, msg, #msg, pk) == 0)
    anchor = rate("libsodium verify_detached (anchor)", nt, function()
      return lib.crypto_sign_verify_detached(sig, msg, #msg, pk)
    end)
  end
end
if anchor then
  print(string.format("token verify / anchor: 1 block %.2fx, 2 blocks %.2fx " ..
    "(a block = 1 signature; + 1 key derivation for the proof)", v1 / anchor, v2 / anchor))
else
  print("anchor: libsodium not loadable through the FFI here")
end
local s = A:stats()
print(string.format("cache: %d hits, %d misses", s.hits, s.misses))
key:close()
engine:close()
os.execute("rm -rf '" .. dir .. "'")
