-- store_spec.lua — the storage layer from Lua (lua/rubberduck/store.lua over
-- core.store): kv, cache, history, audit; the engine's result cache,
-- history of every envelope and audit trail; rduck history / rduck audit;
-- a second process reading while one writes; storage full; a child engine
-- killed with SIGKILL at random moments.

local H = require "helpers"
local rd = require "rubberduck"
local store = require "rubberduck.store"
local core = require "rubberduck.core"

local json = H.json()

local function counter_tool(name, version, ttl)
  return ([[
local n = 0
return tool {
  metadata = { name = %q, description = "counts its calls", version = %q },
  parameters = { type = "object" },
  security = { level = "relaxed" },
  execution = { handler = function(p) n = n + 1; return { n = n, p = p } end },
  output = { cache_ttl = %d },
}
]]):format(name, version, ttl)
end

local function sleep(s) os.execute("sleep " .. s) end

describe("store", function()
  lazy_teardown(H.cleanup)

  describe("kv", function()
    local s
    before_each(function() s = assert(store.open(H.tmpdir())) end)
    after_each(function() s:close() end)

    it("puts, gets, deletes keys of any bytes and length", function()
      local long = ("k"):rep(3000)
      assert.is_true(s.kv:put("app", "a", "1"))
      assert.is_true(s.kv:put("app", "\0\255", "bin"))
      assert.is_true(s.kv:put("app", long, "long"))
      assert.is_true(s.kv:put("other", "a", "2"))
      assert.equals("1", s.kv:get("app", "a"))
      assert.equals("bin", s.kv:get("app", "\0\255"))
      assert.equals("long", s.kv:get("app", long))
      assert.equals("2", s.kv:get("other", "a"))
      assert.is_nil(s.kv:get("app", long .. "x"))
      assert.is_true(s.kv:delete("app", "a"))
      assert.is_false(s.kv:delete("app", "a"))
      assert.is_nil(s.kv:get("app", "a"))
    end)

    it("lists a prefix page by page, long keys included", function()
      local long = "p" .. ("z"):rep(500)
      for _, k in ipairs({ "p1", "p2", "q1", "p3", long }) do assert(s.kv:put("ns", k, "v" .. #k)) end
      local seen, cursor = {}, nil
      repeat
        local items
        items, cursor = s.kv:list("ns", { prefix = "p", cursor = cursor, limit = 2 })
        assert.is_true(#items <= 2)
        for _, it in ipairs(items) do seen[#seen + 1] = it.key end
      until not cursor
      assert.same({ "p1", "p2", "p3", long }, seen)
      local items = s.kv:list("ns", { prefix = long })
      assert.equals(1, #items)
      assert.equals("v501", items[1].value)
    end)

    it("refuses bad input with a clear error and keeps what it has", function()
      assert(s.kv:put("ns", "keep", "me"))
      local ok, err, code = s.kv:put("no spaces", "k", "v")
      assert.is_nil(ok)
      assert.equals("invalid_argument", code)
      assert.truthy(err:find("namespace", 1, true), err)
      ok, err, code = s.kv:put("ns", "big", ("x"):rep(16 * 2 ^ 20 + 1))
      assert.is_nil(ok)
      assert.equals("limit", code)
      assert.truthy(err:find("16 MiB", 1, true), err)
      assert.has_error(function() s.kv:put("ns", "t", { 1 }) end)
      ok, err, code = s.kv:list("ns", { cursor = "xyz" })
      assert.is_nil(ok)
      assert.equals("invalid_argument", code)
      assert.equals("me", s.kv:get("ns", "keep"))
    end)
  end)

  describe("cache", function()
    it("expires entries by TTL and the sweep counts them", function()
      local s = assert(store.open(H.tmpdir()))
      local c = s.cache
      c:set_time(1000)
      assert(c:put("a", "A", 5))
      assert(c:put("b", "B"))
      assert.equals("A", c:get("a"))
      c:set_time(1006)
      assert.is_nil(c:get("a"))
      assert.equals("B", c:get("b"))
      assert.equals(1, c:sweep())
      local st = c:stats()
      assert.same({ 2, 1, 1, 1, 2 }, { st.hits, st.misses, st.expirations, st.entries, st.puts })
      s:close()
    end)

    for _, case in ipairs({
      { "fifo", "k1" },   -- the oldest insertion, though just read
      { "lru", "k2" },    -- the least recently read
      { "lfu", "k2" },    -- the least often read
    }) do
      it("evicts by " .. case[1], function()
        local s = assert(store.open(H.tmpdir(), { cache = { policy = case[1], max_entries = 3 } }))
        local c, t = s.cache, 5000
        for i = 1, 3 do t = t + 1; c:set_time(t); c:put("k" .. i, "v") end
        t = t + 1; c:set_time(t)
        assert.equals("v", c:get("k1"))
        assert.equals("v", c:get("k3"))
        t = t + 1; c:set_time(t)
        assert(c:put("k4", "v"))
        assert.is_nil(c:get(case[2]))
        assert.equals(1, c:stats().evictions)
        assert.equals(3, c:stats().entries)
        s:close()
      end)
    end

    it("get checks its handle: another object or a closed cache is a clear error", function()
      local s = assert(store.open(H.tmpdir()))
      local c = s.cache.c
      assert(c:put("k", "v"))
      assert.equals("v", c:get("k"))
      assert.equals("v", c:get("k")) -- the handle's read txn, renewed
      local ok, err = pcall(c.get, {}, "k")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("rubberduck.store.cache expected", 1, true))
      ok, err = pcall(c.get, s.cache_env, "k")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("rubberduck.store.cache expected", 1, true))
      ok, err = pcall(c.get, c)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("string expected", 1, true))
      s:close()
      ok, err = pcall(c.get, c, "k")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("cache is closed", 1, true))
    end)

    it("reads through the FFI path like the binding: TTL, notes, errors", function()
      local FF = require "rubberduck.store_ffi"
      assert.is_true(FF.available) -- LuaJIT with the FFI: the facade's path
      local s = assert(store.open(H.tmpdir(), { cache = { policy = "lru", max_entries = 2 } }))
      local c, get = s.cache.c, FF.getter(s.cache.c)
      c:set_time(1000)
      assert(c:put("a", "A\0binary", 5))
      assert(c:put("b", "B"))
      assert.equals("A\0binary", get("a"))
      assert.equals("A\0binary", s.cache:get("a")) -- the facade uses it
      assert.is_nil(get("missing"))
      c:set_time(1006)
      assert.is_nil(get("a")) -- expired on read
      -- lru notes recorded by FFI reads: "b" read, so "c" evicts "a"... "a"
      -- expired but present; read "b" then put "c", "d": "b" stays longest
      c:set_time(1007); assert.equals("B", get("b"))
      c:set_time(1008); assert(c:put("c", "C"))
      c:set_time(1009); assert.equals("B", get("b"))
      c:set_time(1010); assert(c:put("d", "D"))
      assert.equals("B", get("b"))
      assert.is_nil(get("c"))
      local st = c:stats()
      assert.equals(2, st.entries)
      -- errors go through the binding
      local v, err, code = get("")
      assert.is_nil(v)
      assert.equals("invalid_argument", code)
      assert.truthy(err:find("empty", 1, true))
      local ok, perr = pcall(get, {})
      assert.is_false(ok)
      assert.truthy(tostring(perr):find("string expected", 1, true))
      s:close()
      ok, perr = pcall(get, "b")
      assert.is_false(ok)
      assert.truthy(tostring(perr):find("cache is closed", 1, true))
    end)

    it("a getter's kept snapshot never serves what another handle or process changed", function()
      local FF = require "rubberduck.store_ffi"
      local dir = H.tmpdir()
      local s = assert(store.open(dir, { cache = { policy = "fifo" } }))
      local S = core.store
      local other = S.cache(s.cache_env, { policy = "lru", max_entries = 3 })
      local get = FF.getter(s.cache.c)
      s.cache:set_time(1000)
      other:set_time(1000)
      assert(other:put("k1", "v1"))
      assert(other:put("k2", "v2"))
      assert(other:put("k3", "v3", 10))
      assert.equals("v1", get("k1")) -- the snapshot is kept from here on
      assert(other:delete("k1"))
      assert.is_nil(get("k1"))
      assert(other:put("k2", "v2b"))
      assert.equals("v2b", get("k2"))
      assert.equals("v3", get("k3"))
      s.cache:set_time(1011) -- no commit in between: expiry is checked on every get
      assert.is_nil(get("k3"))
      assert(other:put("k4", "v4"))
      assert(other:put("k5", "v5")) -- max_entries 3: evicts the least recently used
      assert.equals("v5", get("k5"))
      assert.equals(3, other:stats().entries)
      s.cache:idle()
      assert.equals("v4", get("k4"))
      -- another process deletes, overwrites and adds
      local _, err, code = H.run_lua(([[
local S = require("rubberduck.core").store
local env = assert(S.open(%q, "cache"))
local c = S.cache(env, {})
assert(c:delete("k4"))
assert(c:put("k5", "v5 from the child"))
assert(c:put("k6", "v6"))
c:close()
env:close()
]]):format(dir))
      assert.equals(0, code, err)
      assert.is_nil(get("k4"))
      assert.equals("v5 from the child", get("k5"))
      assert.equals("v6", get("k6"))
      assert(other:clear())
      assert.is_nil(get("k5"))
      assert.is_nil(s.cache:get("k6"))
      other:close()
      s:close()
    end)

    it("zero-copy views read in place, and refuse to read once released", function()
      local FF = require "rubberduck.store_ffi"
      local ffi = require "ffi"
      local s = assert(store.open(H.tmpdir(), { cache = { policy = "lru" } }))
      local c = s.cache.c
      c:set_time(1000)
      assert(c:put("a", "A\0binary", 5))
      assert(c:put("b", "B"))
      local v = FF.viewer(c)
      assert.equals(8, v:get("a"))
      assert.equals("A\0binary", v:string())
      local fv = s.cache:viewer() -- the facade's: the same kind, on the same handle
      assert.equals(1, fv:get("b"))
      assert.equals("B", fv:string())
      assert.equals(8, v:get("a"))
      assert.equals("\0b", v:string(2, 3))
      assert.equals("binary", v:string(-6))
      assert.equals("", v:string(5, 4))
      assert.equals(8, v:len())
      assert.equals(1005, v:expires_at())
      assert.equals(65, v:ptr()[0])
      assert.equals("A\0binary", ffi.string(v:ptr(), v:len()))
      local function refused(f, ...)
        local ok, err = pcall(f, ...)
        assert.is_false(ok)
        assert.truthy(tostring(err):find("view released", 1, true), tostring(err))
      end
      -- a miss releases what the view held
      assert.is_nil(v:get("missing"))
      refused(v.string, v)
      refused(v.ptr, v)
      refused(v.len, v)
      refused(v.expires_at, v)
      -- an expired entry is a miss (expiry checked on every get)
      c:set_time(1006)
      assert.is_nil(v:get("a"))
      -- bad keys: an empty key is an error value, a non-string raises
      local n, err, code = v:get("")
      assert.is_nil(n)
      assert.equals("invalid_argument", code)
      assert.truthy(err:find("empty", 1, true))
      local ok, perr = pcall(v.get, v, { "table" })
      assert.is_false(ok)
      assert.truthy(tostring(perr):find("key must be a string", 1, true))
      -- release, twice
      assert.equals(1, v:get("b"))
      v:release()
      refused(v.string, v)
      v:release()
      -- a handle holds one view: another viewer's get releases this one
      local w = FF.viewer(c)
      assert.equals(1, v:get("b"))
      assert.equals(1, w:get("b"))
      refused(v.string, v)
      assert.equals("B", w:string())
      -- while a view is held, the handle's other gets work (pooled txns)
      local get = FF.getter(c)
      assert.equals("B", get("b"))
      assert.equals("B", c:get("b"))
      assert.equals("B", w:string())
      -- any other method of the handle releases it: writes, idle, stats
      assert(c:put("x", "X"))
      refused(w.string, w)
      assert.equals(1, w:get("x"))
      c:idle()
      refused(w.len, w)
      assert.equals(1, w:get("x"))
      assert.is_true(c:stats().hits >= 8) -- view gets count as hits
      refused(w.len, w)
      -- not a cache handle
      ok, perr = pcall(FF.viewer, s.cache_env)
      assert.is_false(ok)
      assert.truthy(tostring(perr):find("rubberduck.store.cache expected", 1, true))
      -- closed: get raises, a view held before the close is released
      assert.equals(1, w:get("x"))
      s:close()
      refused(w.string, w)
      ok, perr = pcall(v.get, v, "b")
      assert.is_false(ok)
      assert.truthy(tostring(perr):find("cache is closed", 1, true))
    end)

    it("a held view keeps its snapshot while another process changes the value; the next get sees the change", function()
      local FF = require "rubberduck.store_ffi"
      local dir = H.tmpdir()
      local s = assert(store.open(dir, { cache = { policy = "fifo" } }))
      local c = s.cache.c
      assert(c:put("k", "old value"))
      assert(c:put("gone", "soon"))
      local v = FF.viewer(c)
      assert.equals(9, v:get("k"))
      local p = v:ptr()
      local _, err, code = H.run_lua(([[
local S = require("rubberduck.core").store
local env = assert(S.open(%q, "cache"))
local c = S.cache(env, {})
assert(c:put("k", "a new value written by another process"))
assert(c:delete("gone"))
c:close()
env:close()
]]):format(dir))
      assert.equals(0, code, err)
      -- the held view still reads its snapshot: the bytes stay as they were
      assert.equals("old value", v:string())
      assert.equals("old value", require("ffi").string(p, 9))
      -- the next get renews: the other process's commit is seen
      assert.equals(38, v:get("k"))
      assert.equals("a new value written by another process", v:string())
      assert.is_nil(v:get("gone"))
      v:release()
      s:close()
    end)

    it("refuses an unknown policy", function()
      local s, err = store.open(H.tmpdir(), { cache = { policy = "random" } })
      assert.is_nil(s)
      assert.truthy(err:find("lru, lfu, fifo", 1, true))
    end)

    it("after a machine restart, rebuilds a cache written since its last sync", function()
      local dir = H.tmpdir()
      -- A process that wrote without syncing, as if the machine then went
      -- down: its session record names another boot; os.exit skips close.
      local _, err, code = H.run_lua(([[
local S = require("rubberduck.core").store
local env = assert(S.open(%q, "cache"))
local c = S.cache(env, {})
assert(env:raw_put("meta", "session", ("b"):rep(40) .. ("\0"):rep(8)))
assert(c:put("k", "v"))
os.exit(0)
]]):format(dir), { env = { ASAN_OPTIONS = "detect_leaks=0" } }) -- leaves on purpose, unclosed
      assert.equals(0, code, err)
      local s = assert(store.open(dir))
      local info = s:info().cache
      assert.is_true(info.rebuilt)
      assert.truthy(info.rebuild_reason:find("restarted", 1, true), info.rebuild_reason)
      assert.is_nil(s.cache:get("k"))
      s:close()
      -- a clean close records its sync: the next open trusts the file
      s = assert(store.open(dir))
      assert(s.cache:put("k", "v"))
      s:close()
      s = assert(store.open(dir))
      assert.is_false(s:info().cache.rebuilt)
      assert.equals("v", s.cache:get("k"))
      s:close()
    end)

    it("rebuilds an unusable cache file empty, and says so", function()
      local dir = H.tmpdir()
      local s = assert(store.open(dir))
      assert(s.cache:put("k", "v"))
      assert(s.kv:put("ns", "k", "kept"))
      s:close()
      H.write_file(dir .. "/cache.mdb", ("garbage"):rep(2000))
      s = assert(store.open(dir))
      local info = s:info().cache
      assert.is_true(info.rebuilt)
      assert.truthy(#info.rebuild_reason > 0)
      assert.is_nil(s.cache:get("k"))
      assert(s.cache:put("k", "again"))
      assert.equals("again", s.cache:get("k"))
      assert.equals("kept", s.kv:get("ns", "k"))
      s:close()
    end)
  end)

  describe("history", function()
    it("queries by tool, status, kind, caller and time, newest first, with a cursor", function()
      local s = assert(store.open(H.tmpdir()))
      local ids = {}
      for i = 1, 12 do
        local id = core.ulid()
        ids[i] = id
        assert(s.history:append({ id = id, tool = i % 2 == 0 and "even" or "odd",
          status = i % 4 == 0 and "error" or "ok", kind = i % 4 == 0 and "timeout" or "",
          caller = i <= 6 and "alice" or "bob", started_at = core.now(), duration_ms = i }))
      end
      local rows, cursor = s.history:query({ limit = 5 })
      assert.equals(5, #rows)
      assert.equals(ids[12], rows[1].id)
      rows = s.history:query({ limit = 5, cursor = cursor })
      assert.equals(ids[7], rows[1].id)
      rows = s.history:query({ tool = "even", caller = "bob" })
      assert.same({ ids[12], ids[10], ids[8] }, { rows[1].id, rows[2].id, rows[3].id })
      rows = s.history:query({ kind = "timeout" })
      assert.equals(3, #rows)
      rows = s.history:query({ status = "error", caller = "alice" })
      assert.equals(1, #rows)
      assert.equals(ids[4], rows[1].id)
      local t5 = core.now() + 10
      assert.equals(0, #s.history:query({ since = t5 }))
      assert.equals(12, #s.history:query({ ["until"] = t5 }))
      assert.equals(2, s.history:prune(nil, 10))
      assert.equals(10, s.history:count())
      s:close()
    end)
  end)

  describe("audit", function()
    it("verifies an intact chain and names the first bad entry", function()
      local dir = H.tmpdir()
      local s = assert(store.open(dir))
      for i = 1, 5 do assert(s.audit:append("config.changed", { i = i })) end
      local r = s.audit:verify()
      assert.is_true(r.ok)
      assert.equals(5, r.entries)
      local entries = s.audit:list()
      assert.equals(5, #entries)
      assert.equals(entries[1].hash, entries[2].prev)
      -- edit entry 2 directly through LMDB
      local key = "\0\0\0\0\0\0\0\2"
      local raw = assert(s.data:raw_get("audit", key))
      assert(s.data:raw_put("audit", key, raw:gsub('"i":2', '"i":7')))
      r = s.audit:verify()
      assert.is_false(r.ok)
      assert.equals(2, r.bad_seq)
      assert.truthy(r.problem:find("edited", 1, true), r.problem)
      s:close()
    end)
  end)

  describe("in the engine", function()
    local tools, data
    before_each(function()
      tools, data = H.tmpdir(), H.tmpdir()
      H.write_tool(tools, "count", counter_tool("count", "1.0.0", 60))
      H.write_tool(tools, "nocache", counter_tool("nocache", "1.0.0", 0))
      H.write_tool(tools, "guarded", H.tool_source{ name = "guarded", top = 'capabilities = { "secret.read" }' })
    end)

    it("serves identical calls from the result cache, whatever the key order", function()
      local e = assert(rd.open{ tools = tools, data_dir = data })
      local cached_events = 0
      e:subscribe("tool.result.cached", function() cached_events = cached_events + 1 end)
      local a = e:execute("count", { x = 1, y = { b = 2, a = 1 } })
      assert.equals("ok", a.status)
      assert.is_false(a.metadata.cached)
      assert.equals(1, a.output.n)
      local b = e:execute("count", { y = { a = 1, b = 2 }, x = 1 })
      assert.is_true(b.metadata.cached)
      assert.equals(1, b.output.n)
      assert.same(a.output, b.output)
      assert.equals(1, cached_events)
      local c = e:execute("count", { x = 2 })
      assert.is_false(c.metadata.cached)
      assert.equals(2, c.output.n)
      -- cache_ttl 0: never cached
      assert.equals(1, e:execute("nocache", {}).output.n)
      assert.equals(2, e:execute("nocache", {}).output.n)
      assert.truthy(e.cache:stats().hits >= 1)
      e:close()
      -- a new version of the tool misses
      H.write_tool(tools, "count", counter_tool("count", "2.0.0", 60))
      e = assert(rd.open{ tools = tools, data_dir = data })
      local d = e:execute("count", { x = 1, y = { b = 2, a = 1 } })
      assert.is_false(d.metadata.cached)
      assert.equals(1, d.output.n)
      -- ... and the old version's entry still answers the same call of 1.0.0
      assert.is_not_nil(e.cache:get(store.result_key("count", "1.0.0", { x = 1, y = { a = 1, b = 2 } })))
      e:close()
    end)

    it("records every envelope in the history, params only when configured", function()
      local e = assert(rd.open{ tools = tools, data_dir = data })
      local ok = e:execute("nocache", { q = 1 }, { principal = "alice", capabilities = { "*" } })
      local denied = e:execute("guarded", {}, { principal = "mallory" })
      local missing = e:execute("nope", {})
      local rows = e.history:query({})
      assert.equals(3, #rows)
      assert.equals(missing.execution_id, rows[1].id)
      assert.equals("not_found", rows[1].kind)
      assert.equals(denied.execution_id, rows[2].id)
      assert.same({ "guarded", "error", "unauthorized", "mallory" },
        { rows[2].tool, rows[2].status, rows[2].kind, rows[2].caller })
      assert.equals(ok.execution_id, rows[3].id)
      assert.same({ "nocache", "1.0.0", "ok", "", "alice", 1 },
        { rows[3].tool, rows[3].version, rows[3].status, rows[3].kind, rows[3].caller, rows[3].attempts })
      assert.equals(64, #rows[3].params_hash)
      assert.is_nil(rows[3].params)
      assert.truthy(rows[3].duration_ms > 0)
      e:close()
      e = assert(rd.open{ tools = tools, data_dir = data, history = { params = true } })
      e:execute("nocache", { z = 1, a = 2 })
      rows = e.history:query({ limit = 1 })
      assert.equals('{"a":2,"z":1}', rows[1].params)
      e:close()
      -- history = { wait = false }: the envelope comes back at once, the
      -- record follows with the next group commit (here: by close)
      e = assert(rd.open{ tools = tools, data_dir = data, history = { wait = false } })
      local before = e.history:count()
      local env = e:execute("nocache", { q = 1 })
      assert.equals("ok", env.status)
      e:close()
      e = assert(rd.open{ tools = tools, data_dir = data })
      assert.equals(before + 1, e.history:count())
      assert.equals(env.execution_id, e.history:query({ limit = 1 })[1].id)
      e:close()
    end)

    it("keeps security events in the audit trail", function()
      local e = assert(rd.open{ tools = tools, data_dir = data })
      e:execute("guarded", {}, { principal = "mallory" })
      e:emit("config.changed", nil, { key = "x" })
      e:emit("execution.log", nil, { message = "not audited" })
      e:close()
      local s = assert(store.open(data))
      local names = {}
      for _, en in ipairs(s.audit:list()) do names[en.event] = (names[en.event] or 0) + 1 end
      assert.equals(3, names["tool.loaded"])
      assert.equals(1, names["authorization.denied"])
      assert.equals(1, names["config.changed"])
      assert.is_nil(names["execution.log"])
      local denied
      for _, en in ipairs(s.audit:list()) do
        if en.event == "authorization.denied" then denied = H.decode(en.data) end
      end
      assert.equals("mallory", denied.metadata.principal)
      assert.equals("guarded", denied.metadata.tool)
      assert.is_true(s.audit:verify().ok)
      s:close()
    end)

    it("sweeps expired cache entries and prunes history on timers", function()
      local e = assert(rd.open{ tools = tools, data_dir = data,
        cache = { sweep_ms = 5, idle_ms = 5 }, history = { prune_ms = 5, max_count = 2 } })
      for i = 1, 4 do e:execute("count", { i = i }) end
      e.cache:set_time(core.now() + 3600)
      local idle, cache_idle = 0, e.cache.idle
      e.cache.idle = function(self) idle = idle + 1; return cache_idle(self) end
      local fired = false
      e.loop:timer(100, function() fired = true end)
      while not fired do e.loop:run("once") end
      assert.equals(4, e.cache:stats().expirations)
      assert.equals(2, e.history:count())
      assert.truthy(idle >= 1) -- the kept read snapshot is dropped on a timer too
      e:close()
    end)

    it("goes on when storage is full: envelopes stay, the error is clear", function()
      local e = assert(rd.open{ tools = tools, data_dir = data, history = { params = true },
        storage = { map_size = 64 * 1024, max_map_size = 128 * 1024 } })
      local errors = {}
      e:subscribe("store.error", function(ev) errors[#errors + 1] = ev.metadata end)
      local big = ("p"):rep(8000)
      local last
      for i = 1, 40 do
        last = e:execute("nocache", { big = big, i = i })
        assert.equals("ok", last.status)
      end
      assert.truthy(#errors > 0)
      assert.equals("storage_full", errors[1].code)
      assert.truthy(errors[1].message:find("maximum map size", 1, true), errors[1].message)
      -- what was committed stays readable
      local rows = e.history:query({ limit = 1000 })
      assert.truthy(#rows > 3)
      e:close()
    end)
  end)

  describe("rduck history and rduck audit", function()
    local tools, data
    before_each(function()
      tools, data = H.tmpdir(), H.tmpdir()
      H.write_tool(tools, "nocache", counter_tool("nocache", "1.0.0", 0))
      H.write_tool(tools, "other", counter_tool("other", "1.0.0", 0))
      local e = assert(rd.open{ tools = tools, data_dir = data })
      for i = 1, 3 do e:execute("nocache", { i = i }, { principal = "alice" }) end
      e:execute("other", {})
      e:close()
    end)

    it("prints filtered history, pages with a cursor, and JSON", function()
      local out, err, code = H.run_rduck({ "history", "--data", data, "--tool", "nocache", "--limit", "2" })
      assert.equals(0, code, err)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.equals(3, #lines)
      assert.truthy(lines[1]:find("nocache@1.0.0", 1, true))
      local cursor = lines[3]:match("^more: %-%-cursor (%w+)$")
      assert.truthy(cursor, lines[3])
      out, err, code = H.run_rduck({ "history", "--data", data, "--tool", "nocache", "--cursor", cursor, "--json" })
      assert.equals(0, code, err)
      local doc = H.decode(out)
      assert.equals(1, #doc.records)
      assert.equals(json.null, doc.cursor)
      out = H.run_rduck({ "history", "--data", data, "--caller", "operator", "--json" })
      assert.equals(0, #H.decode(out).records)
      out = H.run_rduck({ "history", "--data", data, "--since", "1h", "--json" })
      assert.equals(4, #H.decode(out).records)
      out = H.run_rduck({ "history", "--data", data, "--until", "2000-01-01", "--json" })
      assert.equals(0, #H.decode(out).records)
      local _, e2, c2 = H.run_rduck({ "history", "--data", data, "--since", "yesterday" })
      assert.equals(2, c2)
      assert.truthy(e2:find("--since", 1, true))
    end)

    it("verifies the audit trail, and names an edited, removed or reordered entry", function()
      local out, err, code = H.run_rduck({ "audit", "verify", "--data", data })
      assert.equals(0, code, err)
      assert.truthy(out:find("2 entries, chain intact", 1, true), out)
      out, _, code = H.run_rduck({ "audit", "list", "--data", data })
      assert.equals(0, code)
      assert.truthy(out:find("tool.loaded", 1, true))
      local s = assert(store.open(data))
      for i = 1, 4 do assert(s.audit:append("config.changed", { i = i })) end
      local function key(n) return "\0\0\0\0\0\0\0" .. string.char(n) end
      local orig = {}
      for n = 1, 6 do orig[n] = assert(s.data:raw_get("audit", key(n))) end
      s:close()
      local function verify()
        local o, _, c = H.run_rduck({ "audit", "verify", "--data", data })
        return c, o
      end
      local function tamper(fn)
        local st = assert(store.open(data))
        for n = 1, 6 do assert(st.data:raw_put("audit", key(n), orig[n])) end
        fn(st.data)
        st:close()
      end
      tamper(function(d) d:raw_put("audit", key(4), (orig[4]:gsub('"i":2', '"i":9'))) end)
      local c, o = verify()
      assert.equals(1, c)
      assert.truthy(o:find("entry 4: entry 4 was edited", 1, true), o)
      tamper(function(d) d:raw_delete("audit", key(3)) end)
      c, o = verify()
      assert.equals(1, c)
      assert.truthy(o:find("entry 3 was removed", 1, true), o)
      tamper(function(d) d:raw_put("audit", key(5), orig[6]); d:raw_put("audit", key(6), orig[5]) end)
      c, o = verify()
      assert.equals(1, c)
      assert.truthy(o:find("entry 5: entry 5 holds entry 6: entries were reordered", 1, true), o)
      tamper(function(d) d:raw_delete("audit", key(6)) end)
      c, o = verify()
      assert.equals(1, c)
      assert.truthy(o:find("entry 6 was removed", 1, true), o)
      tamper(function() end)
      c = verify()
      assert.equals(0, c)
      local _, e2, c2 = H.run_rduck({ "audit", "check", "--data", data })
      assert.equals(2, c2)
      assert.truthy(e2:find("verify or list", 1, true))
    end)
  end)

  describe("two processes", function()
    it("a second engine reads history and cache while another writes", function()
      local tools, data = H.tmpdir(), H.tmpdir()
      H.write_tool(tools, "count", counter_tool("count", "1.0.0", 600))
      local done = data .. "/writer.done"
      local script = H.tmpdir() .. "/writer.lua"
      H.write_file(script, ([[
local rd = require "rubberduck"
local e = assert(rd.open{ tools = %q, data_dir = %q })
for i = 1, 200 do assert(e:execute("count", { i = i }).status == "ok") end
e:close()
io.open(%q, "w"):close()
]]):format(tools, data, done))
      -- the writer starts first so the data directory exists
      assert(os.execute("cd " .. H.shell_quote(H.source_dir) .. " && luajit " ..
        H.shell_quote(script) .. " >/dev/null 2>&1 &") )
      local e
      for _ = 1, 200 do
        if H.read_file(data .. "/data.mdb") then break end
        sleep(0.05)
      end
      e = assert(rd.open{ tools = tools, data_dir = data })
      local last, grew, reads = 0, 0, 0
      while not H.read_file(done) and reads < 2000 do
        local n = e.history:count()
        assert.truthy(n >= last)
        if n > last then grew = grew + 1 end
        last = n
        reads = reads + 1
        sleep(0.02)
      end
      assert.truthy(H.read_file(done), "the writer did not finish")
      assert.truthy(grew >= 1)
      assert.equals(200, e.history:count())
      -- the writer's cached results answer here
      local env = e:execute("count", { i = 7 })
      assert.is_true(env.metadata.cached)
      assert.equals(7, env.output.p.i)
      e:close()
    end)
  end)

  describe("crash", function()
    it("a child engine killed with SIGKILL 20 times loses no acknowledged record", function()
      local tools, data = H.tmpdir(), H.tmpdir()
      H.write_tool(tools, "count", counter_tool("count", "1.0.0", 600))
      H.write_tool(tools, "guarded", H.tool_source{ name = "guarded", top = 'capabilities = { "x" }' })
      local script = H.tmpdir() .. "/child.lua"
      H.write_file(script, ([[
local rd = require "rubberduck"
local e = assert(rd.open{ tools = %q, data_dir = %q })
local i = 0
while true do
  i = i + 1
  local env = e:execute(i %% 3 == 0 and "guarded" or "count", { i = i %% 50 }, { principal = "p" })
  io.write(env.execution_id, " ", env.tool, " ", env.status, "\n")
  io.flush()
end
]]):format(tools, data))
      math.randomseed(os.time())
      local total = 0
      for round = 1, 20 do
        local out = data .. "/out" .. round
        local pidf = io.popen("cd " .. H.shell_quote(H.source_dir) .. " && (luajit " ..
          H.shell_quote(script) .. " > " .. H.shell_quote(out) .. " 2>&1 & echo $!)")
        local pid = pidf:read("*l")
        pidf:close()
        sleep(string.format("%.2f", 0.15 + math.random() * 0.5))
        os.execute("kill -9 " .. pid .. " 2>/dev/null")
        os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.01; done")
        local acked = {}
        for line in (H.read_file(out) or ""):gmatch("[^\n]+") do
          local id, tool, status = line:match("^(%w+) (%w+) (%w+)$")
          if id then acked[#acked + 1] = { id = id, tool = tool, status = status } end
        end
        total = total + #acked
        local s = assert(store.open(data))
        local byid = {}
        for _, r in ipairs(s.history:query({ limit = 1000000 })) do byid[r.id] = r end
        for _, a in ipairs(acked) do
          local r = byid[a.id]
          assert.truthy(r, "round " .. round .. ": acknowledged record " .. a.id .. " is missing")
          assert.same({ a.tool, a.status, "p" }, { r.tool, r.status, r.caller })
          assert.equals(64, #r.params_hash)
        end
        local v = s.audit:verify()
        assert.is_true(v.ok, v.problem)
        assert(s.cache:put("probe", "x"))
        assert.equals("x", s.cache:get("probe"))
        s:close()
      end
      assert.truthy(total > 0, "no execution was acknowledged in 20 rounds")
    end)
  end)
end)
