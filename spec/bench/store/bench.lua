-- spec/bench/store/bench.lua DIR N_KEYS N_GETS N_APPENDS — the store from
-- Lua: cache get/put through core.store (the binding), gets also through
-- rubberduck.store_ffi (the FFI path the facade, hence the engine, uses),
-- history appends with group commit (append_async on a loop). Prints
-- "name ops_per_s" lines, like bench.c.
local core = require "rubberduck.core"
local FF = require "rubberduck.store_ffi"
local S = core.store
local dir, nkeys, ngets, napp = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
local function now() return core.mono_ms() / 1000 end
-- The gets' and puts' clock: wall, or with RD_BENCH_CLOCK=cpu this
-- process's CPU time (os.clock; the get loops run on one thread).
local clock = os.getenv("RD_BENCH_CLOCK") == "cpu" and os.clock or now

local env = assert(S.open(dir, "cache", { map_size = 2 ^ 30, max_map_size = 2 ^ 30 }))
local val = ("v"):rep(100)
local keys, pick = {}, {}
for i = 1, nkeys do keys[i] = string.format("key:%08u", i - 1) end
for i = 1, ngets do pick[i] = keys[math.random(nkeys)] end
local policies = { "lru", "lfu", "fifo" }
for _, policy in ipairs(policies) do
  local c = S.cache(env, { policy = policy })
  c:clear()
  local t0 = clock()
  for i = 1, nkeys do c:put(keys[i], val, 3600) end
  print(string.format("lua_cache_put_%s %.0f", policy, nkeys / (clock() - t0)))
  c:close()
end
-- The anchor from Lua, in this process, interleaved with the cache's
-- rounds (so both see the same load): raw LMDB through the FFI on the same
-- data ('k' + key -> 40-byte header + value), the same Lua loop, the value
-- copied into a Lua string like c:get does. raw renew: one read txn
-- renewed / reset per get; raw begin: a new read txn per get; raw one txn:
-- every get in one long read txn (the access pattern of the cache's kept
-- snapshot while nothing is written); raw file one txn: the same on a copy
-- of the cache's file (its own layout: the physical limit of its gets).
local ffi = require "ffi"
ffi.cdef [[
typedef struct MDB_env MDB_env; typedef struct MDB_txn MDB_txn;
typedef unsigned int MDB_dbi;
typedef struct MDB_val { size_t mv_size; void *mv_data; } MDB_val;
int mdb_env_create(MDB_env **env); int mdb_env_set_mapsize(MDB_env *env, size_t size);
int mdb_env_open(MDB_env *env, const char *path, unsigned int flags, int mode);
void mdb_env_close(MDB_env *env);
int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned int flags, MDB_txn **txn);
int mdb_txn_commit(MDB_txn *txn); void mdb_txn_abort(MDB_txn *txn);
void mdb_txn_reset(MDB_txn *txn); int mdb_txn_renew(MDB_txn *txn);
int mdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi);
int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);
int mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags);
int mdb_env_set_maxdbs(MDB_env *env, MDB_dbi dbs);
]]
local ok, L = pcall(ffi.load, "lmdb")
if not ok then L = ffi.load("liblmdb.so.0") end
local MDB_NOSUBDIR, MDB_NOSYNC, MDB_NOTLS, MDB_RDONLY = 0x4000, 0x10000, 0x200000, 0x20000
local penv, ptxn, pdbi = ffi.new("MDB_env*[1]"), ffi.new("MDB_txn*[1]"), ffi.new("MDB_dbi[1]")
assert(L.mdb_env_create(penv) == 0)
local renv = penv[0]
L.mdb_env_set_mapsize(renv, 2 ^ 30)
assert(L.mdb_env_open(renv, dir .. "/raw-lua.mdb", MDB_NOSUBDIR + MDB_NOSYNC + MDB_NOTLS, 420) == 0)
assert(L.mdb_txn_begin(renv, nil, 0, ptxn) == 0)
assert(L.mdb_dbi_open(ptxn[0], nil, 0, pdbi) == 0)
local dbi = pdbi[0]
local kv, vv = ffi.new("MDB_val"), ffi.new("MDB_val")
local rv = ("v"):rep(140)
local ekeys = {}
for i = 1, nkeys do ekeys[keys[i]] = "k" .. keys[i] end
for i = 1, nkeys do
  local ek = ekeys[keys[i]]
  kv.mv_size, kv.mv_data = #ek, ffi.cast("void *", ek)
  vv.mv_size, vv.mv_data = #rv, ffi.cast("void *", rv)
  assert(L.mdb_put(ptxn[0], dbi, kv, vv, 0) == 0)
end
assert(L.mdb_txn_commit(ptxn[0]) == 0)
-- A page-for-page copy of the cache's file (every write committed): raw
-- gets on it read the cache's own layout with no cache code in the way.
assert(os.execute("cp '" .. dir .. "/cache.mdb' '" .. dir .. "/copy-lua.mdb'"))
local pfenv, pfdbi = ffi.new("MDB_env*[1]"), ffi.new("MDB_dbi[1]")
assert(L.mdb_env_create(pfenv) == 0)
local fenv = pfenv[0]
L.mdb_env_set_mapsize(fenv, 2 ^ 30)
L.mdb_env_set_maxdbs(fenv, 8)
assert(L.mdb_env_open(fenv, dir .. "/copy-lua.mdb", MDB_NOSUBDIR + MDB_NOTLS + MDB_RDONLY, 420) == 0)
assert(L.mdb_txn_begin(fenv, nil, MDB_RDONLY, ptxn) == 0)
local ftxn = ptxn[0]
assert(L.mdb_dbi_open(ftxn, nil, 0, pfdbi) == 0)
local fdbi = pfdbi[0]
L.mdb_txn_reset(ftxn)
local epick = {}
for i = 1, ngets do epick[i] = ekeys[pick[i]] end
assert(L.mdb_txn_begin(renv, nil, MDB_RDONLY, ptxn) == 0)
local rtxn = ptxn[0]
L.mdb_txn_reset(rtxn)
local fstring, cast = ffi.string, ffi.cast
local function raw_renew()
  local n = 0
  for i = 1, ngets do
    local ek = epick[i]
    L.mdb_txn_renew(rtxn)
    kv.mv_size, kv.mv_data = #ek, cast("void *", ek)
    if L.mdb_get(rtxn, dbi, kv, vv) == 0 then
      -- n + #s, not "if s": LuaJIT drops a string nothing reads
      local s = fstring(cast("const char *", vv.mv_data) + 40, vv.mv_size - 40)
      n = n + #s
    end
    L.mdb_txn_reset(rtxn)
  end
  return n
end
local function raw_one(txn, db)
  local n = 0
  L.mdb_txn_renew(txn)
  for i = 1, ngets do
    local ek = epick[i]
    kv.mv_size, kv.mv_data = #ek, cast("void *", ek)
    if L.mdb_get(txn, db, kv, vv) == 0 then
      -- n + #s, not "if s": LuaJIT drops a string nothing reads
      local s = fstring(cast("const char *", vv.mv_data) + 40, vv.mv_size - 40)
      n = n + #s
    end
  end
  L.mdb_txn_reset(txn)
  return n
end
-- the same without the copy: pointer and length, the anchor of the views
local function raw_one_view(txn, db)
  local n = 0
  L.mdb_txn_renew(txn)
  for i = 1, ngets do
    local ek = epick[i]
    kv.mv_size, kv.mv_data = #ek, cast("void *", ek)
    if L.mdb_get(txn, db, kv, vv) == 0 then n = n + tonumber(vv.mv_size) - 40 end
  end
  L.mdb_txn_reset(txn)
  return n
end
local function raw_begin()
  local n = 0
  for i = 1, ngets do
    local ek = epick[i]
    L.mdb_txn_begin(renv, nil, MDB_RDONLY, ptxn)
    local t = ptxn[0]
    kv.mv_size, kv.mv_data = #ek, cast("void *", ek)
    if L.mdb_get(t, dbi, kv, vv) == 0 then
      -- n + #s, not "if s": LuaJIT drops a string nothing reads
      local s = fstring(cast("const char *", vv.mv_data) + 40, vv.mv_size - 40)
      n = n + #s
    end
    L.mdb_txn_abort(t)
  end
  return n
end

-- Gets: the best of 3 rounds (a noisy shared VM), a fresh handle per
-- round and policy, all on the same file, like bench.c.
local best = {}
local function keep(name, rate) if rate > (best[name] or 0) then best[name] = rate end end
for _ = 1, 3 do
  local t0 = clock()
  assert(raw_begin() == ngets * 100)
  keep("lua_raw_get_begin", ngets / (clock() - t0))
  t0 = clock()
  assert(raw_renew() == ngets * 100)
  keep("lua_raw_get_renew", ngets / (clock() - t0))
  t0 = clock()
  assert(raw_one(rtxn, dbi) == ngets * 100)
  keep("lua_raw_get_one_txn", ngets / (clock() - t0))
  t0 = clock()
  assert(raw_one(ftxn, fdbi) == ngets * 100)
  keep("lua_raw_get_file_one_txn", ngets / (clock() - t0))
  t0 = clock()
  assert(raw_one_view(rtxn, dbi) == ngets * 100)
  keep("lua_raw_view_one_txn", ngets / (clock() - t0))
  t0 = clock()
  assert(raw_one_view(ftxn, fdbi) == ngets * 100)
  keep("lua_raw_view_file_one_txn", ngets / (clock() - t0))
  for _, policy in ipairs(policies) do
    local c = S.cache(env, { policy = policy })
    local get, n = c.get, 0
    t0 = clock()
    for i = 1, ngets do
      if get(c, pick[i]) then n = n + 1 end
    end
    keep("lua_cache_get_" .. policy, ngets / (clock() - t0))
    assert(n == ngets)
    -- the facade's path: the FFI getter (rubberduck.store_ffi), the value
    -- copied into a Lua string
    local fget = FF.getter(c)
    n = 0
    t0 = clock()
    for i = 1, ngets do
      local s = fget(pick[i])
      if s then n = n + #s end
    end
    keep("lua_ffi_cache_get_" .. policy, ngets / (clock() - t0))
    assert(n == ngets * 100)
    -- the zero-copy view: length and a pointer into the map, no copy
    local view = FF.viewer(c)
    n = 0
    t0 = clock()
    for i = 1, ngets do
      local len = view:get(pick[i])
      if len then n = n + len end
    end
    view:release()
    keep("lua_ffi_cache_view_" .. policy, ngets / (clock() - t0))
    assert(n == ngets * 100)
    c:close()
  end
end
L.mdb_txn_abort(rtxn)
L.mdb_env_close(renv)
L.mdb_txn_abort(ftxn)
L.mdb_env_close(fenv)
assert(FF.available, "the FFI read path is not available")
for _, name in ipairs({ "lua_raw_get_begin", "lua_raw_get_renew", "lua_raw_get_one_txn", "lua_raw_get_file_one_txn",
    "lua_cache_get_lru",
    "lua_cache_get_lfu", "lua_cache_get_fifo", "lua_ffi_cache_get_lru", "lua_ffi_cache_get_lfu",
    "lua_ffi_cache_get_fifo", "lua_raw_view_one_txn", "lua_raw_view_file_one_txn", "lua_ffi_cache_view_lru",
    "lua_ffi_cache_view_lfu", "lua_ffi_cache_view_fifo" }) do
  print(string.format("%s %.0f", name, best[name]))
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
