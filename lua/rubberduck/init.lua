-- rubberduck — the engine, from Lua.
--
--   local rd = require "rubberduck"
--   local engine = assert(rd.open{ data_dir = dir, tools = "tools" })
--   local env = engine:execute(name, params, caller)   -- envelope (table)
--   local h = engine:submit(name, params, caller, { on_progress = fn })
--   h.id; h:stage(); h:cancel(); local env2 = h:wait(timeout_ms)
--   engine:tools(); engine:subscribe(prefix, fn); engine:close()
--
-- open{} options: data_dir (default "./.rduck"), tools (a directory),
-- files (a list of tool files), entry (who calls: "lua", "cli", "c", ...),
-- max_running (executions at once, default 32), max_queue (executions
-- waiting for a slot, default 1024; beyond it a call is `overloaded`),
-- policy (an authorization policy file, see authorizer.lua), audience (this
-- engine's name, for tokens issued to an audience),
-- cache / history / storage (options of rubberduck.store; store = false:
-- no data directory at all), results = { persist = false, threshold = N,
-- encrypt = true } (large results kept in the store: rubberduck.persist).
-- Returns the engine, or nil and a message when `tools` is not a readable
-- directory or the policy is refused. Tools that fail to load are reported in engine.problems and
-- through the "tool.load_failed" event; the engine still opens.
local core = require "rubberduck.core"
local json = require "rubberduck.json"
local registry = require "rubberduck.registry"
local pipeline = require "rubberduck.pipeline"
local authorizer = require "rubberduck.authorizer"
local validator = require "rubberduck.validator"
local workers = require "rubberduck.workers"
local executor = require "rubberduck.executor"
local store = require "rubberduck.store"
local persist = require "rubberduck.persist"
local results = require "rubberduck.results"

local M = {}
M.version = core.version
M.json = json
M.results = results   -- results.render(env), results.raw(env)

local Engine = {}
Engine.__index = Engine
local WEAK_VALUES = { __mode = "v" }
local Handle = {}
Handle.__index = Handle

-- Where lua/rubberduck lives: the tool states load their bootstrap from it.
local function lua_dir()
  local p = package.searchpath and package.searchpath("rubberduck", package.path)
  if p then return (p:gsub("/rubberduck/init%.lua$", ""):gsub("/rubberduck%.lua$", "")) end
  local src = debug.getinfo(1, "S").source
  return (src:gsub("^@", ""):gsub("/rubberduck/init%.lua$", ""))
end

M.lua_dir = lua_dir

-- The directory above lua/: the source tree, or <prefix>/share/rubberduck.
-- It holds tools/ (the bundled tools) and schemas/.
function M.root_dir()
  local d = lua_dir()
  if d == "lua" then return "." end
  return d:match("^(.*)/lua$") or (d .. "/..")
end

-- The project's schemas (schemas/*.json: tool definition, result envelope,
-- shared parameter schemas) are in the validator's store, by $id, so a
-- tool's parameters can $ref them. Loaded once per process.
local schemas_loaded = false
local function load_schemas()
  if schemas_loaded then return end
  schemas_loaded = true
  local dir = M.root_dir() .. "/schemas"
  local ok, err = validator.store:add_dir(dir)
  if not ok then io.stderr:write("rubberduck: schemas not loaded: ", tostring(err), "\n") end
end

-- The caller's callbacks (on_done, on_progress) never run inside the loop:
-- they are queued (defer) and run in order once the outermost loop:run has
-- returned (loop:after_run), by whatever ran the loop (h:wait, execute,
-- drain, engine:close, or the caller's own engine.loop:run). So a callback
-- may wait (h:wait, execute) and submit: the loop it runs is not nested in
-- the one that found the result (libuv's uv_run is not reentrant: a nested
-- run misses work the outer one holds, and the engine's channels held a
-- spinning flag and batches of results there, so such waits never ended).
-- A completion callback never runs inside submit() either, so a caller can
-- rely on having its handle before the callback sees the result.
local function new_callbacks()
  local q = { head = 1, tail = 0, running = 0 }
  function q.flush()
    while q.head <= q.tail do
      local i = q.head
      local what, fn, a, b, c = q[i], q[i + 1], q[i + 2], q[i + 3], q[i + 4]
      for k = i, i + 4 do q[k] = nil end
      q.head = i + 5
      q.running = q.running + 1
      local ok, err = pcall(fn, a, b, c)
      q.running = q.running - 1
      if not ok then io.stderr:write("rubberduck: ", what, " raised: ", tostring(err), "\n") end
    end
    q.head, q.tail = 1, 0
  end
  return q
end

-- Inside one of the loop's own callbacks (an event subscriber, a timer):
-- running the loop there (wait, drain, loading tools or a policy) is
-- refused, since uv_run is not reentrant.
local function in_loop_callback(e)
  return e.loop:running()
end

function M.open(opts)
  opts = opts or {}
  if opts.tools then
    local ok, err = core.listdir(opts.tools)
    if not ok then return nil, "tools: " .. tostring(opts.tools) .. ": " .. err end
  end
  load_schemas()
  local dir = lua_dir()
  local self = setmetatable({
    data_dir = opts.data_dir or "./.rduck",
    entry = opts.entry or "lua",
    lua_dir = dir,
    lua_path = dir .. "/?.lua;" .. dir .. "/?/init.lua",
    loop = core.loop.new(),
    bus = core.telemetry.new(),
    -- id -> handle, weak: a finished call's entry is dropped by the
    -- collector, not by deleting it (deleting from a big, busy hash table
    -- at every call costs LuaJIT more than the rest of a trivial call's
    -- path). A call in flight is always held by whatever will wake it (a
    -- tool state's or timer's callback, the executor's queue, the store).
    -- When no call is in flight the table is replaced by an empty one, so
    -- the slots of finished calls do not outlive a burst.
    handles = setmetatable({}, WEAK_VALUES),
    n_inflight = 0,   -- calls submitted and not finished
    wanted = {},      -- event name -> someone listens (Engine:wants)
    problems = {},
    warnings = {},    -- "file: field: /path: why" for tools that load anyway
    closed = false,
    callbacks = new_callbacks(),   -- on_done/on_progress waiting to run (see defer)
  }, Engine)
  self.loop:after_run(self.callbacks.flush)
  local ok, ex = pcall(executor.new, self, opts)
  if not ok then
    self.loop:close()
    self.bus:close()
    return nil, tostring(ex)
  end
  self.executor = ex
  self.registry = registry.new(self)
  self.workers = workers.new(self)
  self.auth = authorizer.new({ data_dir = self.data_dir, audience = opts.audience,
    emit = function(...) return self:emit(...) end })
  -- the store first: its audit trail records the policy's load
  if opts.store ~= false then store.attach(self, opts) end
  local pok, perr = persist.attach(self, opts.results)
  if not pok then
    self:close()
    return nil, perr
  end
  if opts.policy then
    local ok, probs = self.auth:load(self, opts.policy)
    if not ok then
      self:close()
      return nil, table.concat(probs, "\n")
    end
  end
  if opts.tools or opts.files then
    local _, probs = self:load_tools(opts.tools, opts.files)
    self.problems = probs
  end
  return self
end

-- ---- telemetry ---------------------------------------------------------------

function Engine:emit(name, measurements, metadata)
  if self.closed then return 0 end
  return self.bus:emit(name, measurements, metadata)
end

-- Whether an event `name` would reach a subscriber: a publisher checks
-- before building an event's tables (the pipeline emits several per call).
-- The answers are kept until the subscribers change: subscribe and
-- unsubscribe here, and C subscribers, which get the bus through
-- bus_pointer() each time (core/engine.c).
function Engine:wants(name)
  local w = self.wanted[name]
  if w == nil then
    w = not self.closed and self.bus:wants(name)
    self.wanted[name] = w
  end
  return w
end

function Engine:subscribe(prefix, fn)
  self.wanted = {}
  return self.bus:subscribe(prefix or "", fn)
end

function Engine:unsubscribe(id)
  self.wanted = {}
  self.bus:unsubscribe(id)
end

function Engine:bus_pointer()
  self.wanted = {}
  if self.closed then return nil end
  return self.bus:pointer()
end

-- ---- tools -----------------------------------------------------------------------

local function compile_schemas(t)
  local v, ov, warnings = validator.compile_tool(t.def, t.file)
  if not v then return nil, ov end
  t.validator, t.output_validator, t.warnings = v, ov, warnings
  local oo, rerr = results.compile_tool(t.def.output)
  if not oo then return nil, t.file .. ": " .. rerr end
  t.output_opts = oo
  return true
end

-- Load (or reload) the tools of `dir` and/or `files`. Returns
-- ok, problems (a list of "file: field.path: reason").
function Engine:load_tools(dir, files)
  -- (the definitions run on the loop, which cannot run inside itself)
  if in_loop_callback(self) then
    error("engine:load_tools() from inside one of the engine loop's callbacks (an event " ..
      "subscriber): load from on_done/on_progress or after the callback returns", 2)
  end
  local loaded, problems = registry.load_all(self, dir, files)
  local good = {}
  for _, t in ipairs(loaded) do
    local ok, err = compile_schemas(t)
    if ok then
      good[#good + 1] = t
      -- unknown schema keywords: the tool loads, with a warning
      for _, w in ipairs(t.warnings) do
        self.warnings[#self.warnings + 1] = w
        self:emit("tool.warning", nil, { file = t.file, tool = t.name, message = w })
      end
    else
      problems[#problems + 1] = err
      registry.close_tool(t)
    end
  end
  self.registry:add(good)
  for _, p in ipairs(problems) do self.problems[#self.problems + 1] = p end
  return #problems == 0, problems[1] and problems or problems, problems[1]
end

-- Load the policy file again (or `file` instead). Atomic: on failure the
-- policy in force stays. Returns true | nil, problems.
function Engine:reload_policy(file)
  if in_loop_callback(self) then
    error("engine:reload_policy() from inside one of the engine loop's callbacks (an event " ..
      "subscriber): reload from on_done/on_progress or after the callback returns", 2)
  end
  return self.auth:load(self, file)
end

-- C API shape: ok, first problem.
function Engine:load_tools_c(dir)
  local ok, probs = self:load_tools(dir)
  return ok, probs[1]
end

-- Normalized definitions (plain data, the shape of schemas/tool.schema.json).
function Engine:tools()
  local out = json.array({})
  for _, t in ipairs(self.registry:list()) do out[#out + 1] = t.def end
  return out
end

function Engine:tool(name)
  local t = self.registry:get(name)
  return t and t.def
end

function Engine:tools_json()
  return assert(json.encode(self:tools()))
end

-- ---- executions -------------------------------------------------------------------

function Handle:_resume(...)
  if self.done or not self.co then return end
  if coroutine.status(self.co) ~= "suspended" then return end
  local ok, err = coroutine.resume(self.co, ...)
  if not ok then
    -- pipeline.run catches everything; reaching here is an engine bug
    self:_finish(pipeline.error_envelope(self.id, self.name, "internal", tostring(err)))
  end
end

-- What wakes the call: a callable object, w(...) resumes the call's
-- coroutine with those arguments (tool states, timers and the history
-- call it back). Made once per call, as a table: a closure made per call
-- would keep LuaJIT from compiling the path that makes it. Not the handle
-- itself, which the caller holds: calling it must not wake the call.
local Waker = { __call = function(w, ...) return w.h:_resume(...) end }

function Handle:waker()
  local w = self.wake
  if not w then
    w = setmetatable({ h = self }, Waker)
    self.wake = w
  end
  return w
end

local function defer(e, what, fn, a, b, c)
  local q = e.callbacks
  local i = q.tail
  q[i + 1], q[i + 2], q[i + 3], q[i + 4], q[i + 5] = what, fn, a, b, c
  q.tail = i + 5
  e.loop:defer()
end

function Handle:_finish(env)
  if self.done then return end
  self.done = true
  self.envelope = env
  self.stage_name = "done"
  local e = self.engine
  e.n_inflight = e.n_inflight - 1
  if e.n_inflight == 0 then e.handles = setmetatable({}, WEAK_VALUES) end
  local fn = self.on_done
  if fn and not e.closed then defer(e, "on_done", fn, env) end
end

-- The stage the call is in: queued (waiting for an executor slot),
-- validating, authorizing, starting (getting a tool state or worker),
-- running, retry_wait, done.
function Handle:stage()
  return self.done and "done" or self.stage_name or "queued"
end

-- Cancel the call at whatever stage it is. Returns true if it was still
-- running (its envelope will say "cancelled").
function Handle:cancel()
  if self.done then return false end
  self.cancelled = true
  if self.state then
    -- an attempt is running: stop it (a worker is killed)
    self.state:stop("cancel")
  elseif self.timer then
    self.timer:stop()
    self.timer = nil
    self:_resume("cancelled")
  else
    -- queued, or waiting for a tool state: every wait checks h.cancelled
    self.engine.executor:forget(self)
    self:_resume("cancelled")
  end
  return true
end

-- Wait for the envelope, running the loop. timeout_ms nil: no limit.
-- Returns the envelope, or nil, "timeout" if it is not done in time (the
-- call goes on).
function Handle:wait(timeout_ms)
  local e = self.engine
  if self.done then
    -- its on_done (queued) has run when wait returns, as when wait ran the loop
    if e.callbacks.head <= e.callbacks.tail and not e.closed and not e.loop:running() then
      e.callbacks.flush()
    end
    return self.envelope -- also after engine:close()
  end
  if e.closed then return nil, "the engine is closed" end
  local loop = e.loop
  if in_loop_callback(e) then
    error("h:wait()/engine:execute() from inside one of the engine loop's callbacks (an event " ..
      "subscriber, a timer): the loop cannot run inside itself; wait from on_done/on_progress " ..
      "or after the callback returns", 2)
  end
  local timed_out = false
  local timer
  if timeout_ms then timer = loop:timer(timeout_ms, function() timed_out = true end) end
  -- A caller that waits expects a quick tool's answer within microseconds:
  -- spin briefly before sleeping in the loop (workers.spin_us).
  local spin_until = core.mono_ms() + workers.spin_us(self.tool) / 1000
  while not self.done and not timed_out do
    local left = (spin_until - core.mono_ms()) * 1000
    loop:run("once", left > 0 and left or nil)
  end
  if timer then timer:stop() end
  if not self.done then return nil, "timeout" end
  return self.envelope
end

-- The bodies of a call's coroutine (one of them, by how submit found the
-- call); each returns the envelope.
local function run_closing(h)
  return pipeline.error_envelope(h.id, h.name, "cancelled", "the engine is closing")
end

local function run_refused(h)
  local env = pipeline.error_envelope(h.id, h.name, "unauthorized", "caller refused: " .. h.refused)
  store.record(h.engine, h, env)
  return env
end

local function run_pipeline(h) return pipeline.run(h.engine, h) end

-- A call's coroutine. When the call is done, the coroutine waits in
-- `idle_cos` for the next call instead of ending: making a coroutine per
-- call costs more than the rest of a trivial call's path when hundreds are
-- in flight. Every resume of a call goes through its handle (_resume),
-- which does nothing once the call is done, so a pooled coroutine is never
-- woken by its previous call.
local idle_cos, n_idle, IDLE_COS_MAX = {}, 0, 256
local running, yield = coroutine.running, coroutine.yield

local function call_main(h, body)
  while true do
    h:_finish(body(h))
    h, body = nil, nil -- an idle coroutine holds on to nothing
    if n_idle >= IDLE_COS_MAX then return end
    n_idle = n_idle + 1
    idle_cos[n_idle] = running()
    h, body = yield()
  end
end

local NO_OPTS = setmetatable({}, { __newindex = function() error("call options are read-only", 2) end })
local ok_tnew, tnew = pcall(require, "table.new")
if not ok_tnew then tnew = function() return {} end end

function Engine:submit(name, params, caller, opts)
  if self.closed then error("engine is closed", 2) end
  opts = opts or NO_OPTS
  -- sized for the fields a call sets on its way (no rehash as it goes)
  local h = setmetatable(tnew(0, 32), Handle)
  h.id, h.engine, h.name, h.params, h.opts = core.ulid(), self, name, params, opts
  h.on_done = opts.on_done
  local on_progress = opts.on_progress
  if on_progress then
    h.on_progress = function(a, b, c) defer(self, "on_progress", on_progress, a, b, c) end
  end
  if opts.deadline_ms then h.deadline = core.mono_ms() + opts.deadline_ms end
  local c, why = self.auth:caller(caller)
  local body
  if self.closing then
    h.caller = c or authorizer.caller(nil)
    body = run_closing
  elseif not c then
    h.caller = authorizer.caller(nil)
    h.refused = why
    self:emit("authorization.denied", nil, { execution_id = h.id, tool = tostring(name),
      principal = "anonymous", reason = "caller refused: " .. why })
    body = run_refused
  else
    h.caller = c
    body = run_pipeline
  end
  self.handles[h.id] = h
  self.n_inflight = self.n_inflight + 1
  if n_idle > 0 then
    h.co = idle_cos[n_idle]
    idle_cos[n_idle] = false
    n_idle = n_idle - 1
  else
    h.co = coroutine.create(call_main)
  end
  -- Runs until the first wait (or to the end, for a call refused early).
  h.in_submit = true
  local ok, err = coroutine.resume(h.co, h, body)
  h.in_submit = nil
  if not ok then
    -- pipeline.run catches everything; reaching here is an engine bug
    h:_finish(pipeline.error_envelope(h.id, name, "internal", tostring(err)))
  end
  return h
end

-- A call by id (while it is in flight).
function Engine:handle(id)
  local h = self.handles[id]
  if h and not h.done then return h end
  return nil
end

-- Cancel a call by id. Returns true if it was in flight.
function Engine:cancel(id)
  local h = self:handle(id)
  return h ~= nil and h:cancel()
end

-- How many calls are in flight (submitted, not finished).
function Engine:in_flight() return self.n_inflight end

-- Executions running and queued, and the limits.
function Engine:stats()
  return self.executor:stats()
end

function Engine:execute(name, params, caller, opts)
  return self:submit(name, params, caller, opts):wait()
end

-- The params and caller of a C API call, from their JSON (either may be
-- nil). Returns params, caller | nil, nil, message.
local function decode_request(params_json, caller_json)
  local params, caller
  if params_json then
    local p, err = json.decode(params_json)
    if p == nil then return nil, nil, "params: " .. err end
    params = p
  end
  if caller_json then
    local c, err = json.decode(caller_json)
    if c == nil then return nil, nil, "caller: " .. err end
    caller = c
  end
  return params, caller
end

-- For the C API: JSON in, JSON out. Returns envelope_json, ok | nil, message.
function Engine:execute_json(name, params_json, caller_json)
  local params, caller, err = decode_request(params_json, caller_json)
  if err then return nil, err end
  local env = self:execute(name, params, caller, { entry = "c" })
  return assert(json.encode(env)), env.status == "ok"
end

-- ---- the C API's asynchronous calls (core/engine.c) -----------------------

-- Returns id | nil, message ("closed: ..." when the engine is closed).
function Engine:submit_json(name, params_json, caller_json, opts, on_done, on_progress)
  if self.closed then return nil, "closed: the engine is closed" end
  local params, caller, err = decode_request(params_json, caller_json)
  if err then return nil, err end
  local h
  opts.entry = "c"
  opts.on_done = function(env)
    on_done(env.execution_id, assert(json.encode(env)), env.status == "ok")
  end
  if on_progress then
    opts.on_progress = function(done, total, msg) on_progress(h.id, done, total, msg) end
  end
  h = self:submit(name, params, caller, opts)
  return h.id
end

function Engine:stage_of(id)
  local h = self:handle(id)
  return h and h:stage()
end

local RUN_MODES = { [0] = "default", [1] = "once", [2] = "nowait" }

function Engine:run_c(mode)
  local m = RUN_MODES[mode] or "once"
  if m ~= "default" then
    self.loop:run(m)
    return self.n_inflight
  end
  -- "default": until no call is in flight, one "once" run at a time, so
  -- that the callbacks run (when a run returns) and what they submit is
  -- run too (libuv's own default mode would run for as long as any
  -- handle lives, and never return to flush them)
  if self.n_inflight == 0 then self.loop:run("nowait") end
  while self.n_inflight > 0 do self.loop:run("once") end
  return self.n_inflight
end

-- Run the loop until no call is in flight or timeout_ms (< 0: none) passed.
-- Returns the number still in flight.
function Engine:drain(timeout_ms)
  if self.n_inflight > 0 then
    if in_loop_callback(self) then
      error("engine:drain() from inside one of the engine loop's callbacks: the loop cannot run inside itself", 2)
    end
    local expired = false
    local timer = timeout_ms and timeout_ms >= 0
      and self.loop:timer(timeout_ms, function() expired = true end)
    while self.n_inflight > 0 and not expired do self.loop:run("once") end
    if timer then timer:stop() end
  end
  return self.n_inflight
end

-- Close the engine. opts.drain: let the calls in flight (queued ones
-- included) finish first, for at most opts.timeout_ms (default 30000);
-- what is left then, or everything without drain, is cancelled. Every
-- worker process is gone when this returns.
function Engine:close(opts)
  if self.closed then return end
  -- from a callback of this engine (on_progress, on_done) the loop is inside
  -- its run: freeing it there would crash the run when the callback returns
  if self.loop:running() or self.callbacks.running > 0 then
    error("engine:close() from one of the engine's callbacks (on_progress, on_done, an event subscriber): close after wait/drain returns", 2)
  end
  opts = opts or {}
  self.closing = true
  if opts.drain then self:drain(opts.timeout_ms or 30000) end
  for _, h in pairs(self.handles) do h:cancel() end
  self.callbacks.flush() -- on_done of the calls cancelled at once
  -- let cancelled calls finish
  local guard = 0
  while self.n_inflight > 0 and guard < 1000 do
    self.loop:run("once")
    guard = guard + 1
  end
  self.callbacks.flush()
  self.executor:close()
  self.registry:close()
  self.workers:close()
  if self.auth.signkey then self.auth.signkey:close(); self.auth.signkey = nil end
  -- let the zygote and the workers' sockets close
  self.loop:run("nowait")
  persist.detach(self)
  store.detach(self)
  self.closed = true
  self.wanted = {}
  self.bus:close()
  self.loop:close()
end

return M
