-- rubberduck.pipeline — the request path of one execution (DESIGN.md, "The
-- pipeline"): validate, authorize, execute (with retries), process, and
-- record, ending in one result envelope.
--
-- It runs as one coroutine per execution in the host state. Where a tool
-- runs, the coroutine yields; the C side resumes it from the libuv loop when
-- the worker answers (or the deadline passes, or the caller cancels), so
-- the loop never waits on a tool.
local core = require "rubberduck.core"
local json = require "rubberduck.json"
local errors = require "rubberduck.errors"
local store = require "rubberduck.store"
local results = require "rubberduck.results"

local M = {}

-- Breaches after which a tool state is not reused.
local RECYCLE = { memory_limit = true, cpu_limit = true, timeout = true,
                  cancelled = true, sandbox_violation = true, internal = true }

local floor, format, huge = math.floor, string.format, math.huge
local yield, running = coroutine.yield, coroutine.running

-- The date and time part is formatted once a second; the milliseconds
-- come from a table.
local iso_sec, iso_text
local MS = {}
for i = 0, 999 do MS[i] = format(".%03dZ", i) end
function M.iso8601(t)
  local s = floor(t)
  local ms = floor((t - s) * 1000)
  if s ~= iso_sec then iso_sec, iso_text = s, os.date("!%Y-%m-%dT%H:%M:%S", s) end
  return iso_text .. MS[ms]
end

-- A copy of the caller's params (the validator fills defaults in place; the
-- caller's table stays as it was). Keeps the JSON markers.
-- Values and keys JSON cannot hold (a function, a coroutine, a userdata
-- other than json.null, a table or boolean key) raise NOT_DATA; the slow
-- not_data below then says where.
local NOT_DATA = {}
local NOT_VALUE = { ["function"] = true, thread = true, userdata = true }
local KEY_OK = { string = true, number = true }
local function copy(v, depth)
  if type(v) ~= "table" then
    if NOT_VALUE[type(v)] and v ~= json.null then error(NOT_DATA, 0) end
    if v ~= v or v == huge or v == -huge then error(NOT_DATA, 0) end
    return v
  end
  if depth > json.max_depth then error("parameters nested deeper than " .. json.max_depth, 0) end
  local out = {}
  -- (an empty table, the common case, enters no loop: compiled whole)
  if next(v) ~= nil then
    for k, x in pairs(v) do
      if not KEY_OK[type(k)] then error(NOT_DATA, 0) end
      out[k] = copy(x, depth + 1)
    end
  end
  local mt = getmetatable(v)
  if mt == json.array_mt or mt == json.object_mt then setmetatable(out, mt) end
  return out
end

-- Where params that copy() refused hold what JSON cannot: pointer, why.
-- (Only on that error path; copy() checked the depth and the cycles.)
function M.not_data(v, ptr)
  for k, x in pairs(v) do
    if not KEY_OK[type(k)] then return ptr, "a " .. type(k) .. " key is not JSON" end
    local p = ptr .. "/" .. tostring(k):gsub("~", "~0"):gsub("/", "~1")
    if type(x) == "table" then
      local q, why = M.not_data(x, p)
      if q then return q, why end
    elseif NOT_VALUE[type(x)] and x ~= json.null then
      return p, "a " .. type(x) .. " is not a JSON value"
    elseif x ~= x or x == huge or x == -huge then
      return p, tostring(x) .. " is not a JSON number"
    end
  end
  return nil
end

local function is_object(v)
  return type(v) == "table" and getmetatable(v) ~= json.array_mt
    and (next(v) == nil or not json.is_array(v))
end

-- ctx.log / print / ctx.progress of the call h's running attempt (the
-- state's notify callback, with h as its argument: no closure per call).
-- What a call may push through them is capped like its output: past
-- max_output bytes, notes are dropped (one "truncated" entry says so).
local function on_note(h, kind, a, b, text)
  local engine, name = h.engine, h.tool.name
  local budget = h.note_budget - #text - 16
  h.note_budget = budget
  if budget < 0 then
    if not h.logs_truncated then
      h.logs_truncated = true
      engine:emit("execution.log", nil, { execution_id = h.id, tool = name, level = "warn",
        message = "log truncated: more than max_output bytes" })
    end
    return
  end
  if kind == "progress" then
    engine:emit("execution.progress", { done = a, total = b },
      { execution_id = h.id, tool = name, message = text })
    if h.on_progress then
      local ok, err = pcall(h.on_progress, a, b, text)
      if not ok then io.stderr:write("rubberduck: on_progress raised: ", tostring(err), "\n") end
    end
  elseif kind == "log" then
    local level, msg = text:match("^([^\t]*)\t(.*)$")
    engine:emit("execution.log", nil,
      { execution_id = h.id, tool = name, level = level or "info", message = msg or text })
  end
end

-- Each tool state's notify callback is set once, with a slot naming the
-- call it runs (setting it per call cost two registry references).
local slots = setmetatable({}, { __mode = "k" })

local function on_slot_note(slot, kind, a, b, text)
  local h = slot.h
  if h then on_note(h, kind, a, b, text) end
end

-- Run one attempt in the tool state. Returns ok, status|kind, output|msg, stats.
local function attempt_call(h, st, params, attempt, deadline, sec, timeout)
  h.note_budget = sec.max_output
  local slot = slots[st]
  if not slot then
    slot = {}
    slots[st] = slot
    st:on_notify(on_slot_note, slot)
  end
  slot.h = h
  local ok, err = st:execute(params, h.caller, h.id, attempt, deadline,
    sec.max_cpu, timeout, sec.max_output, h:waker())
  if not ok then slot.h = nil; return false, "internal", err, {} end
  h.state = st
  h.stage_name = "running"
  local r1, r2, r3, r4 = yield()
  h.state = nil
  slot.h = nil
  return r1, r2, r3, r4 or {}
end

-- The wait before attempt n+1: min(max, initial * factor^(n-1)) ms, with
-- +-25% jitter so that calls failing together do not retry together.
function M.backoff_ms(B, attempt)
  local d = math.min(B.max, B.initial * B.factor ^ (attempt - 1))
  return d * (0.75 + 0.5 * math.random())
end

local function sleep(engine, h, ms)
  h.stage_name = "retry_wait"
  local wake = h:waker()
  h.timer = engine.loop:timer(ms, function() h.timer = nil; wake("timer") end)
  repeat
    local why = yield()
    if why == "cancelled" or h.cancelled then
      if h.timer then h.timer:stop(); h.timer = nil end
      return false
    end
  until h.timer == nil
  return true
end

-- Give a tool state back after an attempt. `recycle`: it must not serve again.
local function give_back(engine, h, t, st, recycle)
  h.held = nil
  engine.registry:checkin(t, st, recycle)
end

-- The body: returns output, err (err = { kind, message, details, retryable }).
local function body(engine, h, meta)
  local t = engine.registry:get(h.name)
  if not t then
    return nil, errors.new("not_found", format("no tool named %q", tostring(h.name)))
  end
  local def = t.def
  meta.security_level = def.security.level
  meta.tool_version = def.metadata.version
  meta.format = h.opts.format or def.output.format
  local operr = results.check_options(t, h.opts)
  if operr then meta.format = def.output.format; return nil, errors.new("invalid_params", operr) end

  -- 1 validate
  h.stage_name = "validating"
  local params = h.params
  if params == nil or params == json.null then params = {} end
  if type(params) == "table" then
    local ok, c = pcall(copy, params, 0)
    if not ok then
      local ptr, kw = "", "maxDepth"
      if c == NOT_DATA then ptr, c = M.not_data(params, ""); kw = "type" end
      return nil, errors.new("invalid_params", (ptr ~= "" and ptr .. ": " or "") .. tostring(c),
        { errors = json.array({ { pointer = ptr, keyword = kw, schema_path = "",
          message = (ptr ~= "" and ptr or "/") .. ": " .. tostring(c) } }) })
    end
    params = c
  end
  if not is_object(params) then
    return nil, errors.new("invalid_params", "parameters must be a JSON object",
      { errors = json.array({ { pointer = "", keyword = "type", schema_path = "/type",
        message = "/: must be an object, got " .. (type(params) == "table" and "array" or type(params)) } }) })
  end
  if t.validator then
    local ok, errs = t.validator(params)
    if not ok then
      local msgs = {}
      for i, e in ipairs(errs) do if i <= 5 then msgs[#msgs + 1] = e.message end end
      if #errs > 5 then msgs[#msgs + 1] = format("and %d more", #errs - 5) end
      return nil, errors.new("invalid_params", table.concat(msgs, "; "),
        { errors = json.array(errs) })
    end
  end

  -- 2 authorize
  h.stage_name = "authorizing"
  local allowed, why, details = engine.auth:check(def, h.caller, params, h.opts.entry or engine.entry)
  if not allowed then
    engine:emit("authorization.denied", nil, { execution_id = h.id, tool = t.name,
      principal = h.caller.principal, reason = why })
    return nil, errors.new("unauthorized", why, details)
  end

  -- result cache (output.cache_ttl > 0): an identical call's output
  local cached = store.cached_output(engine, h, t, params, meta)
  if cached ~= nil then return cached end

  -- 3 execute, with retries, in a slot of the executor
  local sec, exe = def.security, def.execution
  local admitted, qkind, qmsg = engine.executor:admit(h, t.name, exe.concurrency)
  if not admitted then return nil, errors.new(qkind, qmsg) end
  meta.queue_ms = qkind
  h.tool = t
  local attempts = 1 + (h.opts.retries or exe.retries)
  local last
  for attempt = 1, attempts do
    if h.cancelled then return nil, errors.new("cancelled", "cancelled by the caller") end
    local timeout = exe.timeout
    if h.deadline then
      local left = h.deadline - core.mono_ms()
      if left <= 0 then
        return nil, last or errors.new("timeout", "the caller's deadline passed")
      end
      if left < timeout then timeout = left end
    end
    meta.attempts = attempt
    if engine:wants("execution.attempt") then
      engine:emit("execution.attempt", { attempt = attempt }, { execution_id = h.id, tool = t.name })
    end
    h.stage_name = "starting"
    local st, serr = engine.registry:checkout(t, h)
    if not st then
      if h.cancelled then return nil, errors.new("cancelled", "cancelled by the caller") end
      return nil, errors.new("internal", serr)
    end
    h.held = st
    if h.cancelled then
      give_back(engine, h, t, st)
      return nil, errors.new("cancelled", "cancelled by the caller")
    end
    local ok, a, b, stats = attempt_call(h, st, params, attempt, core.now() * 1000 + timeout, sec, timeout)
    meta.cpu_ms = (meta.cpu_ms or 0) + (stats.cpu_ms or 0)
    if (stats.peak_memory_bytes or 0) > (meta.peak_memory_bytes or 0) then
      meta.peak_memory_bytes = stats.peak_memory_bytes
    end
    if ok and a.status == "ok" then
      give_back(engine, h, t, st)
      return b
    end
    local err
    if ok then
      give_back(engine, h, t, st)
      err = errors.new(a.kind, a.message, a.details)
      err.retryable = errors.retryable(a.kind, a.retryable)
    else
      -- a breach recorded in C, or the bootstrap itself failed
      local k = a == "error" and "internal" or a
      give_back(engine, h, t, st, RECYCLE[k])
      err = errors.new(k, k == "internal" and ("tool state failed: " .. tostring(b)) or tostring(b))
      if k == "cpu_limit" then
        err.message = format("CPU budget of %s ms spent", sec.max_cpu)
      elseif k == "memory_limit" then
        err.message = format("memory cap of %d bytes reached", sec.max_memory)
      elseif k == "timeout" and not b:find("discarded", 1, true) then
        err.message = format("deadline of %s ms passed", timeout)
      elseif k == "cancelled" then
        err.message = "cancelled by the caller"
      elseif k == "sandbox_violation" then
        err.message = tostring(b):gsub("^sandbox_violation: ", "")
      end
      err.retryable = errors.retryable(k)
      if k == "sandbox_violation" then
        engine:emit("security.violation", nil, { execution_id = h.id, tool = t.name,
          principal = h.caller.principal, kind = k, message = err.message })
      end
    end
    last = err
    if not err.retryable or attempt == attempts or h.cancelled then break end
    local wait = M.backoff_ms(exe.backoff, attempt)
    -- the caller's deadline wins over the attempts left
    if h.deadline and core.mono_ms() + wait >= h.deadline then break end
    engine:emit("execution.retry", { attempt = attempt, wait_ms = wait },
      { execution_id = h.id, tool = t.name, kind = err.kind })
    if not sleep(engine, h, wait) then
      return nil, errors.new("cancelled", "cancelled by the caller")
    end
  end
  if h.cancelled and last.kind ~= "cancelled" then
    return nil, errors.new("cancelled", "cancelled by the caller")
  end
  return nil, last
end

-- An envelope for a call that ended before the pipeline could run.
function M.error_envelope(id, tool, kind, message)
  return { execution_id = id, tool = tostring(tool), status = "error", output = json.null,
    error = { kind = kind, message = message, details = json.object({}) },
    metadata = { started_at = M.iso8601(core.now()), duration_ms = 0, attempts = 0,
      security_level = json.null, cached = false, format = "json",
      peak_memory_bytes = 0, cpu_ms = 0, queue_ms = 0 } }
end

function M.run(engine, h)
  local t0 = core.mono_ms()
  local meta = { started_at = M.iso8601(core.now()), duration_ms = 0, attempts = 0,
    security_level = json.null, cached = false, format = h.opts.format or "json",
    peak_memory_bytes = 0, cpu_ms = 0, queue_ms = 0 }
  -- a caller's trace id (a string) goes with the call's events
  local trace = h.caller.trace_id
  if type(trace) ~= "string" then trace = nil end
  if engine:wants("execution.start") then
    engine:emit("execution.start", nil, { execution_id = h.id, tool = tostring(h.name),
      principal = h.caller.principal, entry = h.opts.entry or engine.entry, trace_id = trace })
  end
  local ok, output, err = pcall(body, engine, h, meta)
  if h.held then -- the body failed (an engine bug) while it held a state
    engine.registry:checkin(h.tool, h.held, true)
    h.held = nil
  end
  engine.executor:release(h)
  if not ok then
    err = errors.new("internal", "engine error: " .. tostring(output))
    output = nil
  end
  -- 4 process (rubberduck.results), then the result cache keeps what was shown
  local pok, pout, perr = pcall(results.process, engine, h, output, err, meta)
  if pok then output, err = pout, perr
  else output, err = nil, errors.new("internal", "result processor: " .. tostring(pout)) end
  if not err then store.remember_output(engine, h, output, meta) end
  meta.duration_ms = core.mono_ms() - t0
  local env = {
    execution_id = h.id, tool = tostring(h.name),
    status = err and "error" or "ok",
    output = (err or output == nil) and json.null or output,
    error = json.null,
    metadata = meta,
  }
  if err then
    env.error = { kind = err.kind, message = err.message, details = err.details or json.object({}) }
  end
  results.emit(engine, env)
  if meta.cached then results.emit(engine, env, "tool.result.cached") end
  local stop, exc = engine:wants("execution.stop"), err and engine:wants("execution.exception")
  if stop or exc then
    local md = { execution_id = h.id, tool = env.tool, status = env.status,
      principal = h.caller.principal, kind = err and err.kind or nil, trace_id = trace }
    local ms = { duration_ms = meta.duration_ms, attempts = meta.attempts,
      cpu_ms = meta.cpu_ms, peak_memory_bytes = meta.peak_memory_bytes }
    if stop then engine:emit("execution.stop", ms, md) end
    if exc then engine:emit("execution.exception", ms, md) end
  end
  -- history; returns once the record is durable, except for a call refused
  -- as overloaded: backpressure answers at once (its record is written
  -- with the next group commit all the same)
  store.record(engine, h, env, err and err.kind == "overloaded")
  return env
end

return M
