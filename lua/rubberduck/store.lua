-- rubberduck.store — what the engine remembers: the API over core.store
-- (core/store/store.h) and its wiring into an engine.
--
--   local store = require "rubberduck.store"
--   local s = assert(store.open(dir, opts))   -- the data directory
--   s.kv:put(ns, key, value); s.kv:get(ns, key); s.kv:delete(ns, key)
--   s.kv:list(ns, { prefix =, cursor =, limit = }) -> items, next_cursor
--   s.cache:get(key); s.cache:put(key, value, ttl_s); s.cache:delete(key)
--   s.cache:clear(); s.cache:sweep(); s.cache:stats()
--   s.history:append(record); s.history:query(filter) -> rows, next_cursor
--   s.history:prune(); s.history:count()
--   s.audit:append(event, data); s.audit:list(from, limit); s.audit:verify()
--   s:close()
--
-- Failures are values (nil, message, code: "storage_full", "limit", ...);
-- misuse (a closed store, wrong argument types) raises.
--
-- An engine gets one through M.attach (rd.open): engine.store (the kv),
-- engine.cache, engine.history and engine.audit; the pipeline calls
-- M.cached_output, M.remember_output and M.record.
local core = require "rubberduck.core"
local json = require "rubberduck.json"

local S = core.store
local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs
local format = string.format

local M = {}

-- Defaults of the options of open() / rd.open{ cache =, history =, storage = }.
M.DEFAULTS = {
  storage = { map_size = 16 * 2 ^ 20, max_map_size = 8 * 2 ^ 30 },
  cache = { max_bytes = 256 * 2 ^ 20, max_entries = 0, policy = "lru",
            map_size = 16 * 2 ^ 20, max_map_size = 1 * 2 ^ 30, sweep_ms = 60000,
            -- how often the cache drops the read snapshot it keeps between
            -- gets (so it pins no pages another process's writes freed)
            idle_ms = 1000 },
  -- wait: a call's envelope is handed back once its history record is
  -- durable (true), or at once, the record following in the next group
  -- commit (false: a crash may lose the last group_ms of records)
  history = { params = false, max_age = 30 * 86400, max_count = 1000000,
              prune_ms = 60000, group_ms = 2, max_batch = 512, wait = true },
}

-- The telemetry events the audit trail keeps.
M.AUDIT_EVENTS = { "authorization.denied", "security.violation", "tool.loaded",
  "tool.load_failed", "tool.reloaded", "policy.loaded", "policy.reload_failed",
  "config.changed" }

local function merged(defaults, given)
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  if type(given) == "table" then for k, v in pairs(given) do out[k] = v end end
  return out
end

-- ---- kv ------------------------------------------------------------------------

local KV = {}
KV.__index = KV

function KV:put(ns, key, value)
  if type(value) ~= "string" then
    error("store.put: value must be a string (encode tables with json.encode), got " .. type(value), 2)
  end
  return self.env:kv_put(ns, key, value)
end
function KV:get(ns, key) return self.env:kv_get(ns, key) end
function KV:delete(ns, key) return self.env:kv_delete(ns, key) end
-- opts: prefix, cursor, limit (default 100). Returns items ({key=, value=}),
-- next_cursor (nil on the last page).
function KV:list(ns, opts)
  opts = opts or {}
  return self.env:kv_list(ns, opts.prefix or "", opts.cursor, opts.limit or 100)
end

-- ---- cache ------------------------------------------------------------------------

local Cache = {}
Cache.__index = Cache

-- (the FFI read path when LuaJIT has it: rubberduck.store_ffi)
function Cache:get(key) return self.fast_get(key) end
-- A zero-copy view on this cache (rubberduck.store_ffi.viewer: one per
-- handle, valid until its next get, its release or any other method).
function Cache:viewer() return require("rubberduck.store_ffi").viewer(self.c) end
function Cache:put(key, value, ttl) return self.c:put(key, value, ttl or 0) end
function Cache:delete(key) return self.c:delete(key) end
function Cache:clear() return self.c:clear() end
function Cache:sweep(max) return self.c:sweep(max) end
function Cache:flush() return self.c:flush() end
-- Drop the read snapshot kept between gets (the engine does it on a timer).
function Cache:idle() return self.c:idle() end
function Cache:stats() return self.c:stats() end
function Cache:set_time(t) return self.c:set_time(t) end
function Cache:info() return self.env:info() end

-- ---- history --------------------------------------------------------------------------

local History = {}
History.__index = History

-- Append and return once the record is durable: true | nil, message, code.
function History:append(rec) return self.h:append(rec) end
-- Queue; fn(ok, message, code) runs on `loop` once the record is durable.
function History:append_async(rec, loop, fn) return self.h:append_async(rec, loop, fn) end
-- filter: tool, status, kind, caller, since, until (epoch seconds),
-- cursor, limit. Newest first. Returns rows, next_cursor.
function History:query(filter) return self.env:history_query(filter or {}) end
function History:count() return self.env:history_count() end
-- Retention: the configured max_age and max_count unless given.
function History:prune(max_age, max_count, now)
  return self.env:history_prune(max_age or self.cfg.max_age, max_count or self.cfg.max_count, now)
end

-- ---- audit -----------------------------------------------------------------------------

local Audit = {}
Audit.__index = Audit

local function encode_data(data)
  if data == nil then return "{}" end
  if type(data) == "string" then return data end
  local s, err = json.encode(data, { sort_keys = true })
  if not s then return json.encode({ unencodable = tostring(err) }) end
  return s
end

-- Append now (durable when it returns): seq | nil, message, code.
function Audit:append(event, data, time)
  return self.env:audit_append(event, encode_data(data), time or core.now())
end
-- Queue an entry for the next flush (a batch, one transaction).
function Audit:queue(event, data)
  self.pending[#self.pending + 1] = { event, encode_data(data), core.now() }
  if #self.pending >= 64 then return self:flush() end
  return true
end
function Audit:flush()
  if #self.pending == 0 then return true end
  local batch = self.pending
  self.pending = {}
  local ok, err, code = self.env:audit_append_batch(batch)
  if not ok then return nil, err, code end
  return true
end
function Audit:list(from, limit) return self.env:audit_list(from or 1, limit or 0) end
-- { ok, entries, bad_seq, problem }
function Audit:verify() return self.env:audit_verify() end

-- ---- the store ----------------------------------------------------------------------------

local Store = {}
Store.__index = Store

-- Open the data directory. opts: storage = { map_size, max_map_size },
-- cache = { max_bytes, max_entries, policy, map_size, max_map_size,
-- sweep_ms, idle_ms (attach's timers) },
-- history = { params, max_age, max_count, group_ms, max_batch }.
-- Returns the store or nil, message, code.
function M.open(dir, opts)
  opts = opts or {}
  if type(dir) ~= "string" or dir == "" then return nil, "store: the data dir must be a path", "invalid_argument" end
  local st = merged(M.DEFAULTS.storage, opts.storage)
  local cc = merged(M.DEFAULTS.cache, opts.cache)
  local hc = merged(M.DEFAULTS.history, opts.history)
  if cc.policy ~= "lru" and cc.policy ~= "lfu" and cc.policy ~= "fifo" then
    return nil, "cache.policy: expected one of lru, lfu, fifo, got " .. tostring(cc.policy), "invalid_argument"
  end
  local data, err, code = S.open(dir, "data", st)
  if not data then return nil, err, code end
  local cenv
  cenv, err, code = S.open(dir, "cache", { map_size = cc.map_size, max_map_size = cc.max_map_size })
  if not cenv then data:close(); return nil, err, code end
  local c = S.cache(cenv, cc)
  local h
  h, err, code = S.history(data, hc)
  if not h then c:close(); cenv:close(); data:close(); return nil, err, code end
  local self = setmetatable({ dir = dir, data = data, cache_env = cenv, config = {
    storage = st, cache = cc, history = hc } }, Store)
  self.kv = setmetatable({ env = data }, KV)
  self.cache = setmetatable({ c = c, env = cenv, cfg = cc,
    fast_get = require("rubberduck.store_ffi").getter(c) }, Cache)
  self.history = setmetatable({ h = h, env = data, cfg = hc }, History)
  self.audit = setmetatable({ env = data, pending = {} }, Audit)
  return self
end

function Store:info()
  return { data = self.data:info(), cache = self.cache_env:info() }
end

function Store:close()
  if self.closed then return end
  self.closed = true
  self.audit:flush()
  self.history.h:close()
  self.cache.c:close()
  self.cache_env:close()
  self.data:close()
end

-- ---- engine wiring ---------------------------------------------------------------------------

local function warn(engine, what, err, code)
  engine.store_errors = (engine.store_errors or 0) + 1
  if not engine.store_warned then
    engine.store_warned = true
    io.stderr:write("rubberduck: ", what, ": ", tostring(err), "\n")
  end
  engine:emit("store.error", nil, { what = what, message = tostring(err), code = tostring(code) })
end

-- A timer that fires every `ms` on the engine's loop without keeping it alive.
local function every(engine, ms, fn)
  local t = {}
  local function arm()
    if engine.closed or t.stopped then return end
    t.timer = engine.loop:timer(ms, function()
      local ok, err = pcall(fn)
      if not ok then io.stderr:write("rubberduck: store timer: ", tostring(err), "\n") end
      arm()
    end)
    t.timer:unref()
  end
  arm()
  function t.stop()
    t.stopped = true
    if t.timer then t.timer:stop() end
  end
  return t
end

-- Open the engine's data directory and wire it in. opts: rd.open's
-- (data_dir, cache, history, storage). A store that cannot open is
-- reported on stderr and through "store.error"; the engine runs without
-- it (no result cache, history or audit).
function M.attach(engine, opts)
  local s, err, code = M.open(engine.data_dir, opts)
  if not s then
    warn(engine, "storage unavailable (" .. tostring(engine.data_dir) .. ")", err, code)
    return nil, err
  end
  engine.storage = s
  engine.store, engine.cache, engine.history, engine.audit = s.kv, s.cache, s.history, s.audit
  engine.store_info = s:info()
  -- Audit: each event queued, written in one transaction per loop turn.
  local wanted = {}
  for _, name in ipairs(M.AUDIT_EVENTS) do wanted[name] = true end
  local flush_timer
  local function flush()
    flush_timer = nil
    local ok, ferr, fcode = s.audit:flush()
    if not ok then warn(engine, "audit trail", ferr, fcode) end
  end
  -- One subscription per audited event (not one to every event: the
  -- pipeline builds an event only when someone listens for it).
  local function on_event(ev)
    if not wanted[ev.name] then return end
    s.audit:queue(ev.name, { metadata = ev.metadata, measurements = ev.measurements })
    if not flush_timer and not engine.closed then
      flush_timer = engine.loop:timer(0, flush)
    end
  end
  s.audit_subs = {}
  for _, name in ipairs(M.AUDIT_EVENTS) do
    s.audit_subs[#s.audit_subs + 1] = engine:subscribe(name, on_event)
  end
  local cc, hc = s.config.cache, s.config.history
  -- Retention at open too: a short-lived engine (rduck run) never sees its timer.
  local pok, perr, pcode = s.history:prune()
  if not pok then warn(engine, "history retention", perr, pcode) end
  s.timers = {
    every(engine, cc.sweep_ms, function()
      local ok, serr, scode = s.cache:sweep()
      if ok then ok, serr, scode = s.cache:flush() end
      if not ok then warn(engine, "cache sweep", serr, scode) end
    end),
    every(engine, hc.prune_ms, function()
      local ok, perr, pcode = s.history:prune()
      if not ok then warn(engine, "history retention", perr, pcode) end
    end),
  }
  -- the read snapshot the cache keeps between gets, dropped when idle
  if (tonumber(cc.idle_ms) or 0) > 0 then
    s.timers[#s.timers + 1] = every(engine, cc.idle_ms, function() s.cache:idle() end)
  end
  return s
end

function M.detach(engine)
  local s = engine.storage
  if not s then return end
  for _, t in ipairs(s.timers or {}) do t.stop() end
  for _, id in ipairs(s.audit_subs or {}) do engine:unsubscribe(id) end
  local ok, err, code = s.audit:flush()
  if not ok then warn(engine, "audit trail", err, code) end
  s:close()
  engine.storage = nil
  -- let the history's last callbacks run
  engine.loop:run("nowait")
end

-- ---- the pipeline's calls ---------------------------------------------------------------------

local function canonical(v)
  local s = json.encode(v == nil and json.object({}) or v, { sort_keys = true })
  return s
end

-- The result cache key of a call: BLAKE2b(tool name, version, canonical params).
function M.result_key(name, version, params)
  local text = canonical(params)
  if not text then return nil end
  return S.hash("rubberduck.result.v1", tostring(name), tostring(version or ""), text)
end

-- Before execution: the cached output of an identical call, or nil. Sets
-- metadata.cached on a hit (the pipeline then emits "tool.result.cached").
function M.cached_output(engine, h, t, params, meta)
  local ttl = t.def.output and t.def.output.cache_ttl or 0
  if not engine.cache or type(ttl) ~= "number" or ttl <= 0 then return nil end
  local key = M.result_key(t.name, t.def.metadata.version, params)
  if not key then return nil end
  h.cache_key, h.cache_ttl = key, ttl
  local text = engine.cache:get(key)
  if not text then return nil end
  local out = json.decode(text)
  if out == nil and text ~= "null" then return nil end
  meta.cached = true -- pipeline.run emits "tool.result.cached" with the envelope's metadata
  return out == nil and json.null or out
end

-- After a successful execution: keep the output for identical calls.
function M.remember_output(engine, h, output, meta)
  if not h.cache_key or meta.cached or not engine.cache then return end
  local text = json.encode(output == nil and json.null or output)
  if not text then return end
  local ok, err, code = engine.cache:put(h.cache_key, text, h.cache_ttl)
  if not ok and code ~= "limit" then warn(engine, "result cache", err, code) end
end

-- The history record of an envelope.
function M.history_record(engine, h, env)
  local md = env.metadata or {}
  local ptext = canonical(h.params) or "unencodable"
  local rec = {
    id = env.execution_id, tool = env.tool, version = md.tool_version,
    status = env.status, kind = env.status == "error" and env.error.kind or "",
    caller = h.caller and h.caller.principal or "anonymous",
    params_hash = S.hash(ptext),
    started_at = core.now() - (tonumber(md.duration_ms) or 0) / 1000,
    duration_ms = md.duration_ms, cpu_ms = md.cpu_ms,
    peak_memory_bytes = md.peak_memory_bytes, attempts = md.attempts,
    cached = md.cached == true,
  }
  if engine.storage and engine.storage.config.history.params and #ptext <= 2 ^ 20 then
    rec.params = ptext
  end
  -- everything the caller passed (the authorizer's internal cache key aside)
  if h.caller then
    local ctx = {}
    for k, v in pairs(h.caller) do if k ~= "key" then ctx[k] = v end end
    local text = canonical(ctx)
    if text and #text <= 2 ^ 20 then
      rec.context = text
    else
      rec.context = text and '{"dropped":"caller context larger than 1 MiB"}'
        or '{"dropped":"caller context cannot be encoded as JSON"}'
    end
  end
  if type(rec.version) ~= "string" then rec.version = nil end
  return rec
end

-- Yield until the history's answer (ok, message, code) resumes the
-- coroutine; any other wake-up (a cancel: a string) yields again, by a
-- tail call (no loop in the compiled path).
local function wait_answer()
  local ok, err, code = coroutine.yield()
  if type(ok) == "boolean" then return ok, err, code end
  return wait_answer()
end

-- At the end of the pipeline: record the envelope, and wait (yielding the
-- execution's coroutine) until the record is durable; with `nowait`, the
-- record goes into the next group commit and the call does not wait. A
-- failure to write is reported, never turned into the call's result.
function M.record(engine, h, env, nowait)
  local hist = engine.history
  if not hist then return end
  local rec = M.history_record(engine, h, env)
  if nowait or engine.storage.config.history.wait == false then
    -- no callback: nothing is held for the loop to deliver (a caller that
    -- never runs the loop while refusals pile up keeps no memory for them)
    local queued, qerr, qcode = hist:append_async(rec, engine.loop)
    if not queued then warn(engine, "history", qerr, qcode) end
    return
  end
  local co, main = coroutine.running()
  if not co or main then
    local ok, err, code = hist:append(rec)
    if not ok then warn(engine, "history", err, code) end
    return
  end
  -- the history's answer, (ok, message, code), resumes the coroutine
  -- through the call's waker (a closure per call would keep LuaJIT from
  -- compiling this). Any other wake-up (a cancel: a string) waits on.
  local queued, qerr, qcode = hist:append_async(rec, engine.loop, h:waker())
  if not queued then warn(engine, "history", qerr, qcode); return end
  local ok, err, code = wait_answer()
  if not ok then warn(engine, "history", err, code) end
end

-- ---- the command line: rduck history, rduck audit ----------------------------------------------

-- "1700000000", "2026-11-26", "2026-11-26T20:03:53Z", "15m" / "2h" / "7d" ago.
function M.parse_time(s, now)
  now = now or core.now()
  if s == nil then return nil end
  local n = tonumber(s)
  if n then return n end
  local num, unit = s:match("^(%d+%.?%d*)([smhd])$")
  if num then
    local mult = ({ s = 1, m = 60, h = 3600, d = 86400 })[unit]
    return now - tonumber(num) * mult
  end
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil end
  local hh, mi, ss, frac = 0, 0, 0, 0
  if rest ~= "" then
    local a, b, c, f = rest:match("^[T ](%d%d):(%d%d):?(%d?%d?)(%.?%d*)Z?$")
    if not a then return nil end
    hh, mi, ss = tonumber(a), tonumber(b), tonumber(c) or 0
    frac = tonumber(f ~= "" and f ~= "." and f or "0") or 0
  end
  -- days since the epoch (civil from days, Howard Hinnant's algorithm)
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 or d > 31 or hh > 23 or mi > 59 or ss > 60 then return nil end
  local yy = mo <= 2 and y - 1 or y
  local era = math.floor(yy / 400)
  local yoe = yy - era * 400
  local mp = (mo + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + hh * 3600 + mi * 60 + ss + frac
end

local function iso(t)
  local s = math.floor(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", s) .. format(".%03dZ", math.floor((t - s) * 1000))
end
M.iso8601 = iso

-- Open only what the commands read (no engine, no tools).
local function open_for_cli(opts)
  local dir = opts.data or "./.rduck"
  if not core.listdir(dir) then return nil, "--data " .. dir .. ": no such data directory" end
  local s, err = M.open(dir, {})
  if not s then return nil, "--data " .. dir .. ": " .. tostring(err) end
  return s
end

-- rduck history: opts from cli.lua's parser. Returns an exit code | nil, usage error.
function M.cli_history(opts, pos, out)
  out = out or io.stdout
  if #pos > 0 then return nil, "history: unexpected argument " .. pos[1] end
  local filter = { tool = opts.tool, status = opts.status, kind = opts.kind, caller = opts.caller,
    cursor = opts.cursor }
  for _, f in ipairs({ "since", "until" }) do
    if opts[f] then
      local t = M.parse_time(opts[f])
      if not t then
        return nil, "--" .. f .. ": expected epoch seconds, YYYY-MM-DD[THH:MM:SSZ] or an age like 15m, 2h, 7d"
      end
      filter[f] = t
    end
  end
  if opts.limit then
    local n = tonumber(opts.limit)
    if not n or n < 1 or n % 1 ~= 0 then return nil, "--limit: expected a whole number > 0" end
    filter.limit = n
  end
  if opts.status and opts.status ~= "ok" and opts.status ~= "error" then
    return nil, "--status: expected ok or error, got " .. opts.status
  end
  local s, err = open_for_cli(opts)
  if not s then return nil, err end
  local rows, cursor, code = s.history:query(filter)
  s:close()
  if not rows then
    io.stderr:write("rduck history: ", tostring(cursor), "\n")
    return code == "invalid_argument" and 2 or 1
  end
  if opts.json then
    out:write(json.encode({ records = json.array(rows), cursor = cursor or json.null },
      { pretty = true, sort_keys = true }), "\n")
    return 0
  end
  for _, r in ipairs(rows) do
    out:write(format("%s  %s  %-20s %-6s %-18s %-12s %9.2f ms%s\n", iso(r.started_at), r.id,
      r.tool .. (r.version ~= "" and ("@" .. r.version) or ""), r.status,
      r.kind ~= "" and r.kind or "-", r.caller, r.duration_ms, r.cached and "  cached" or ""))
  end
  if cursor then out:write("more: --cursor ", cursor, "\n") end
  return 0
end

-- rduck audit verify|list
function M.cli_audit(opts, pos, out)
  out = out or io.stdout
  local sub = pos[1]
  if sub ~= "verify" and sub ~= "list" then
    return nil, "audit: expected verify or list" .. (sub and (", got " .. sub) or "")
  end
  if pos[2] then return nil, "audit: unexpected argument " .. pos[2] end
  local s, err = open_for_cli(opts)
  if not s then return nil, err end
  if sub == "verify" then
    local r, verr = s.audit:verify()
    s:close()
    if not r then io.stderr:write("rduck audit: ", tostring(verr), "\n"); return 1 end
    if opts.json then
      out:write(json.encode(r, { sort_keys = true }), "\n")
    elseif r.ok then
      out:write(format("audit: %d entries, chain intact\n", r.entries))
    else
      out:write(format("audit: entry %d: %s\n", r.bad_seq, r.problem))
    end
    return r.ok and 0 or 1
  end
  local from = tonumber(opts.from or 1)
  local limit = tonumber(opts.limit or 0)
  if not from or not limit then s:close(); return nil, "--from/--limit: expected numbers" end
  local entries, lerr = s.audit:list(from, limit)
  s:close()
  if not entries then io.stderr:write("rduck audit: ", tostring(lerr), "\n"); return 1 end
  if opts.json then
    out:write(json.encode(json.array(entries), { pretty = true, sort_keys = true }), "\n")
    return 0
  end
  for _, e in ipairs(entries) do
    out:write(format("%6d  %s  %-22s %s\n", e.seq, iso(e.time), e.event, e.data))
  end
  return 0
end

return M
