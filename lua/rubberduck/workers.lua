-- rubberduck.workers — levels strict and balanced: tool calls in sandboxed
-- worker processes (core/sandbox/worker.h).
--
-- One zygote per engine (rduck-worker) keeps a few workers ready: forked,
-- stripped, waiting for their tool. A `strict` call takes a fresh worker
-- and the worker exits after answering; a strict tool's workers are forked
-- from its template (a worker that sandboxed itself and defined the tool
-- once, see "a strict tool's stock" below). A `balanced` tool keeps one worker
-- (sandboxed once for that tool) that serves calls, each in a fresh Lua
-- state, until it has served max_calls, hit a limit or died; then the next
-- call takes a fresh one.
--
-- A remote state has the shape of an in-process tool state as the pipeline
-- uses it (start, stop, on_notify, busy, usable, close), so the pipeline
-- does not care where a tool runs.
local core = require "rubberduck.core"
local json = require "rubberduck.json"
local results = require "rubberduck.results"

local M = {}

M.READY = 2            -- workers the zygote keeps ready
M.MAX_CALLS = 100      -- calls a balanced worker serves before it is replaced
M.BALANCED_WORKERS = 4 -- worker processes a balanced tool keeps at most (its calls share them)
M.SPARE_AHEAD = 8      -- calls before a balanced worker's last: its replacement is readied
M.STOCK = 2            -- processes a strict tool keeps ready, its tool defined
M.STOCK_MAX = 6        -- ... up to this many while its calls keep finding none ready
M.STOCK_TOOLS = 8      -- strict tools that keep a stock (most recently used)
M.GRACE_MS = 250       -- after the deadline, before the worker is killed
M.EXIT_WAIT_MS = 200   -- after a worker's socket closes, wait for its exit status
M.SPAWN_BATCH = 64     -- workers one request to the zygote may ask for (worker.c)
M.RESPAWN_MS = 5       -- a refused request to the zygote is sent again after this (ms)
-- A synchronous caller (Handle:wait) spins this long for the answer before
-- it sleeps in the loop: a quick call then costs no wake-up. The call
-- threads (l_lstate.c) and the balanced workers (worker.c) spin likewise
-- for their next call.
M.SPIN_US = 300
-- ... except for a strict call (M.spin_us): its answer comes from a process
-- woken for it, which needs a CPU; a caller that sleeps at once leaves it
-- its own, and a spin would only delay both.
M.SPIN_US_STRICT = 0
-- A strict tool's processes are forked from its template (a process that
-- defined the tool once, inside the sandbox); false: each one gets the
-- tool message and defines it itself.
M.TEMPLATES = true

local SIGKILL, SIGXCPU, SIGSYS, SIGXFSZ = 9, 24, 31, 25
local floor = math.floor

-- How long (µs) a synchronous caller spins for the answer of a call to the
-- tool `t` (nil: not known yet) before it sleeps in the loop.
function M.spin_us(t)
  local sec = t and t.def and t.def.security
  if sec and sec.level == "strict" then return M.SPIN_US_STRICT end
  return M.SPIN_US
end

-- ---- the pool of ready workers -------------------------------------------------------

local Pool = {}
Pool.__index = Pool

function M.new(engine)
  return setmetatable({ engine = engine, ready = {}, waiting = {}, by_pid = {},
                        warned = {}, stocking = {}, stocked = {},
                        bal = setmetatable({}, { __mode = "k" }) }, Pool)
end

function M.available()
  return core.worker_path() ~= nil
end

function Pool:_event(ev, a, b, c)
  if ev == "worker" then
    -- a waiting call first, then a strict tool's stock, then the pool
    local cb = table.remove(self.waiting, 1) or table.remove(self.stocking, 1)
    if cb then cb(a) else self.ready[#self.ready + 1] = a end
    -- the zygote is reading its requests again: send what it refused
    if self.unsent then self:_spawn(0) end
  elseif ev == "exit" then
    local r = self.by_pid[a]
    self.by_pid[a] = nil
    if r then return r:_exited(a, b, c) end
    -- a ready worker that died while it waited (killed from outside)
    for i = #self.ready, 1, -1 do
      local w = self.ready[i]
      if w:pid() == a then table.remove(self.ready, i); w:close() end
    end
  elseif ev == "warning" then
    self.engine:emit("sandbox.warning", nil, { message = a })
    if not self.warned[a] then
      self.warned[a] = true
      io.stderr:write("rubberduck: sandbox: ", a, "\n")
    end
  elseif ev == "zygote_exit" then
    self.zygote = nil
    self.unsent = nil
    local waiting = self.waiting
    self.waiting = {}
    for _, cb in ipairs(waiting) do cb(nil, "the worker zygote exited (code " .. tostring(a) .. ")") end
    local stocking = self.stocking
    self.stocking = {}
    for _, cb in ipairs(stocking) do cb(nil) end
  end
end

function Pool:_start()
  if self.zygote then return true end
  local path = core.worker_path()
  if not path then return nil, "rduck-worker not found (build it, or set RUBBERDUCK_WORKER)" end
  local z, err = core.zygote.new(self.engine.loop, { path = path, lua_dir = self.engine.lua_dir },
    function(...) self:_event(...) end)
  if not z then return nil, err end
  self.zygote = z
  self:_spawn(M.READY)
  return true
end

-- Ask the zygote for n more workers (and for any it refused before). Its
-- control socket does not block the engine: when its buffer is full (a
-- burst of calls, the zygote busy forking) a request is refused; it is
-- kept and sent again when the zygote hands over a worker, or after
-- M.RESPAWN_MS. Never lost: a call waiting for a worker would otherwise
-- wait until its deadline.
function Pool:_spawn(n)
  n = n + (self.unsent or 0)
  self.unsent = nil
  local z = self.zygote
  if not z then return end
  while n > 0 do
    local k = math.min(n, M.SPAWN_BATCH)
    if not z:spawn(k) then break end
    n = n - k
  end
  if n > 0 then
    self.unsent = n
    if not self.respawn_timer then
      self.respawn_timer = self.engine.loop:timer(M.RESPAWN_MS, function()
        self.respawn_timer = nil
        if self.unsent then self:_spawn(0) end
      end)
    end
  end
end

-- Take a ready worker: cb(worker) now or later, or cb(nil, why).
function Pool:take(cb)
  local ok, err = self:_start()
  if not ok then return cb(nil, err) end
  local w = table.remove(self.ready, 1)
  while w and w:eof() do -- died while it waited
    self.owed = (self.owed or 0) + 1
    w:close()
    w = table.remove(self.ready, 1)
  end
  if w then
    -- The stock is refilled when this call is done (Pool:refill), so the
    -- zygote's fork does not compete with the call for the CPU.
    self.owed = (self.owed or 0) + 1
    return cb(w)
  end
  self:_spawn(1)
  self.waiting[#self.waiting + 1] = cb
end

-- A worker for a strict tool's stock: cb(worker) when one is free, after
-- any call that waits for one (cb(nil) if the zygote is gone).
function Pool:take_for_stock(cb)
  local ok = self:_start()
  if not ok then return cb(nil) end
  local w = table.remove(self.ready, 1)
  if w then
    self.owed = (self.owed or 0) + 1
    return cb(w)
  end
  self:_spawn(1)
  self.stocking[#self.stocking + 1] = cb
end

-- Keep `r` among the strict tools that hold a stock (most recent last);
-- past M.STOCK_TOOLS, the least recently used one gives its stock up.
function Pool:touch(r)
  local list = self.stocked
  for i = #list, 1, -1 do
    if list[i] == r then table.remove(list, i); break end
  end
  list[#list + 1] = r
  while #list > M.STOCK_TOOLS do table.remove(list, 1):_drop_stock() end
end

function Pool:stocks(r)
  for _, x in ipairs(self.stocked) do if x == r then return true end end
  return false
end

function Pool:forget(r)
  for i = #self.stocked, 1, -1 do
    if self.stocked[i] == r then table.remove(self.stocked, i) end
  end
end

-- Ask the zygote for the workers taken since the last refill.
function Pool:refill()
  local n = self.owed or 0
  if n > 0 and self.zygote then
    self.owed = 0
    self:_spawn(n)
  end
end

function Pool:close()
  if self.respawn_timer then self.respawn_timer:stop(); self.respawn_timer = nil end
  for _, s in pairs(self.shared or {}) do s:_close() end
  for t in pairs(self.bal) do self:_bal_drop(t) end
  self.unsent = nil
  for _, w in ipairs(self.ready) do w:close() end
  self.ready = {}
  if self.zygote then self.zygote:close() end
  self.zygote = nil
end

-- ---- a balanced tool's workers -------------------------------------------------------
-- A balanced tool's calls share at most M.BALANCED_WORKERS worker processes
-- (or its execution.concurrency, if lower): a call takes an idle one (the
-- one given back last first), else starts one while there are fewer, else
-- waits in a FIFO for one to be given back (its deadline runs meanwhile).
-- Each worker serves M.MAX_CALLS calls; M.SPARE_AHEAD calls before a
-- worker's last one, a replacement is taken from the zygote and given the
-- tool, so it has defined the tool by the time the old one retires (the
-- definition, milliseconds in the sandbox, is then off the call's path).
-- An entry: { w = worker, calls = calls sent to it, fresh = no tool
-- message sent yet, last_cpu = its process CPU (ms) after its last call }.

local tool_message
-- (ahead: the worker builds its snapshotted state and faults in what a
-- call writes before it waits, worker.c's ready_ahead)
local function bal_message(t) return tool_message({ tool = t, once = false }, nil, true) end

function Pool:_bal(t)
  local b = self.bal[t]
  if not b then
    local cap = M.BALANCED_WORKERS
    local conc = t.def.execution and t.def.execution.concurrency
    if type(conc) == "number" and conc >= 1 and conc < cap then cap = conc end
    b = { idle = {}, n = 0, cap = cap, waiting = {} }
    self.bal[t] = b
  end
  return b
end

local function bal_kill(e)
  e.w:kill(SIGKILL)
  e.w:close()
end

-- cb(worker, nil, nil, entry) with a worker for a call of balanced tool
-- t, now or when one is free; cb(nil, why) if none can be had.
function Pool:_bal_take(t, cb)
  local b = self:_bal(t)
  local idle = b.idle
  while #idle > 0 do
    local e = table.remove(idle)
    if not e.w:eof() then return cb(e.w, nil, nil, e) end
    b.n = b.n - 1 -- died while idle
    e.w:close()
  end
  if b.n >= b.cap then
    b.waiting[#b.waiting + 1] = cb
    return
  end
  b.n = b.n + 1
  local e = b.spare
  b.spare = nil
  if e and not e.w:eof() then return cb(e.w, nil, nil, e) end
  if e then e.w:close() end
  self:take(function(w, err)
    if not w then
      b.n = b.n - 1
      return cb(nil, err)
    end
    return cb(w, nil, nil, { w = w, calls = 0, fresh = true })
  end)
end

-- Give a worker back after a call it survived: to the first waiting call,
-- else to the idle ones (killed if its tool is gone).
function Pool:_bal_put(t, e)
  local b = self:_bal(t)
  if t.retired or not self.zygote then
    b.n = b.n - 1
    return bal_kill(e)
  end
  local cb = table.remove(b.waiting, 1)
  if cb then return cb(e.w, nil, nil, e) end
  b.idle[#b.idle + 1] = e
end

-- A worker retired (its last call, a breach, a crash): a waiting call gets
-- a worker in its place.
function Pool:_bal_retired(t)
  local b = self:_bal(t)
  b.n = b.n - 1
  local cb = table.remove(b.waiting, 1)
  if cb then self:_bal_take(t, cb) end
end

-- Ready the replacement of a worker that nears its last call (once).
function Pool:_bal_spare(t, e)
  local b = self:_bal(t)
  if b.spare or b.sparing or e.calls < M.MAX_CALLS - M.SPARE_AHEAD or t.retired then return end
  b.sparing = true
  self:take(function(w)
    b.sparing = nil
    if not w then return end
    if t.retired or b.spare or not self.zygote then
      w:kill(SIGKILL)
      w:close()
      return
    end
    if not w:send(bal_message(t)) then w:kill(SIGKILL); w:close(); return end
    b.spare = { w = w, calls = 0 }
  end)
end

-- The tool is gone: its idle workers and spare die; calls that wait get
-- nothing (they end by their deadline or cancel; the registry closes
-- their states).
function Pool:_bal_drop(t)
  local b = self.bal[t]
  if not b then return end
  for _, e in ipairs(b.idle) do bal_kill(e) end
  b.n = b.n - #b.idle
  b.idle = {}
  if b.spare then bal_kill(b.spare); b.spare = nil end
  local waiting = b.waiting
  b.waiting = {}
  for _, cb in ipairs(waiting) do cb(nil, "the tool was closed") end
end

-- ---- a tool's remote state ----------------------------------------------------------------

local Remote = {}
Remote.__index = Remote

function tool_message(self, mode, ahead)
  local t, sec = self.tool, self.tool.def.security
  return json.encode({ op = "tool", mode = mode or (self.once and "once" or "pool"), ahead = ahead,
    file = t.file, source = t.source, max_calls = M.MAX_CALLS,
    security = { max_memory = sec.max_memory, max_cpu = sec.max_cpu,
                 max_file_size = sec.max_file_size, allowed_paths = sec.allowed_paths } })
end

local Stock = {}
Stock.__index = Stock

function Pool:remote(t)
  local r = setmetatable({ pool = self, tool = t, once = t.def.security.level == "strict",
                           closed = false }, Remote)
  if r.once then
    -- one stock (and template) per tool, shared by all its states: calls
    -- in flight at once each hold a state of their own
    self.shared = self.shared or {}
    -- stocks kept for tools no longer served (reloaded) with no state left
    for t2, s2 in pairs(self.shared) do
      if s2.refs == 0 and t2.retired then s2:_close() end
    end
    local s = self.shared[t]
    if not s then
      s = setmetatable({ pool = self, tool = t, once = true, closed = false, refs = 0,
                         running = 0, stock = {}, stock_pending = 0, stock_gen = 0,
                         depth = M.STOCK, waiting = {}, no_template = not M.TEMPLATES }, Stock)
      self.shared[t] = s
    end
    s.refs = s.refs + 1
    r.s = s
  end
  return r
end

-- ---- a strict tool's stock -------------------------------------------------------
-- A strict call takes a process that has its tool already: limits in force
-- and the tool defined in a fresh state, waiting for the call. Each one
-- still serves one call only. The stock (one per tool, whatever the number
-- of its states) is filled from the tool's first call on: a call that
-- takes the last ready process asks for its replacement at once, so the
-- fork overlaps the call; one that leaves others ready asks when it ends,
-- so the fork does not compete with it. It holds `depth` processes: M.STOCK, one more each time a call
-- finds none ready (calls coming faster than they are replaced), up to
-- M.STOCK_MAX, one fewer each time a call finds it full. It is given up when the tool is closed (its last state) or
-- is no longer among the M.STOCK_TOOLS most recently used.
--
-- The stock comes from the tool's template: a worker that sandboxed itself
-- once (with a filter that still lets it fork), defined the tool once, and
-- then forks single-use workers on request (worker.c). A worker forked from
-- it only lowers its own limits (CPU from zero, no processes) and stacks
-- the worker filter, so it costs a fork instead of a whole definition.
-- Where a template cannot be made (no seccomp spawner program, a
-- definition that fails in the sandbox), each stocked process gets its tool
-- message and defines the tool itself, as a first call does.

function Stock:_stock_frame(e, text)
  if text ~= nil then
    local m = json.decode(text)
    if type(m) == "table" and m.op == "ready" then
      e.base_cpu = m.proc_cpu_ms
      return
    end
  end
  -- the process died, or could not sandbox itself (an "error" message)
  for i, x in ipairs(self.stock) do
    if x == e then table.remove(self.stock, i); break end
  end
  self.pool.by_pid[e.pid] = nil
  e.worker:kill(SIGKILL)
  e.worker:close()
end

-- A worker for the stock: watched until a call takes it.
function Stock:_stock_add(w, base_cpu)
  local e = { worker = w, pid = w:pid(), base_cpu = base_cpu }
  self.stock[#self.stock + 1] = e
  w:on_frame(function(text) self:_stock_frame(e, text) end)
  return e
end

function Stock:_template_failed(t)
  if self.template ~= t then return end
  self.template = nil
  self.stock_pending = 0
  self.stock_gen = self.stock_gen + 1
  if t.worker then t.worker:kill(SIGKILL); t.worker:close() end
  if t.z then t.z:close() end
  -- its stocked processes die with it (PR_SET_PDEATHSIG)
  local stock = self.stock
  self.stock = {}
  for _, e in ipairs(stock) do
    e.worker:kill(SIGKILL)
    e.worker:close()
  end
  -- twice in a row: this tool stocks the other way
  self.template_fails = (self.template_fails or 0) + 1
  if self.template_fails >= 2 then self.no_template = true end
  -- a call waiting for a worker of this template: one made for it, or
  -- the next template's
  local waiting = self.waiting
  self.waiting = {}
  for _, cb in ipairs(waiting) do self:_want(cb) end
end

-- cb(worker, nil, entry) with a worker for this strict tool's call: its
-- template's next one (asked for now), or where there is no template, a
-- ready one from the pool that gets the tool message first.
function Stock:_want(cb)
  if self.no_template or self.closed then return self.pool:take(cb) end
  self.waiting[#self.waiting + 1] = cb
  if not self.template then return self:_make_template() end
  self:_ask(false)
end

-- Ask the template for the workers the waiting calls need (and, with
-- `stock`, those that fill the stock) beyond those asked for already.
-- The template's workers go to waiting calls first.
function Stock:_ask(stock)
  local t = self.template
  if not (t and t.z) then return end
  local n = #self.waiting - self.stock_pending
  if stock then n = n + self.depth - #self.stock end
  if n > 0 and t.z:spawn(n) then self.stock_pending = self.stock_pending + n end
end

function Stock:_template_event(t, ev, a, b, c)
  if ev == "worker" then
    if self.template ~= t or self.closed then
      a:kill(SIGKILL)
      a:close()
      return
    end
    if self.stock_pending > 0 then self.stock_pending = self.stock_pending - 1 end
    self.template_fails = 0
    -- its CPU counts from its fork
    local cb = table.remove(self.waiting, 1)
    if cb then return cb(a, nil, { base_cpu = 0 }) end
    if #self.stock >= self.depth then
      a:kill(SIGKILL)
      a:close()
      return
    end
    self:_stock_add(a, 0)
  elseif ev == "exit" or ev == "warning" then
    self.pool:_event(ev, a, b, c)
  elseif ev == "zygote_exit" then
    self:_template_failed(t)
  end
end

-- Start the tool's template: a ready worker gets the tool in mode
-- "template"; on its "ready" its socket becomes a control socket.
function Stock:_make_template()
  local t = {}
  self.template = t
  self.pool:take_for_stock(function(w)
    if not w then
      if self.template == t then self.template = nil end
      return
    end
    if self.closed or self.template ~= t then
      w:kill(SIGKILL)
      w:close()
      return
    end
    t.worker = w
    w:on_frame(function(text)
      if self.template ~= t or t.z then return end
      local m = text and json.decode(text)
      if type(m) == "table" and m.op == "ready" then
        t.worker = nil
        local z = core.zygote.adopt(self.pool.engine.loop, w,
          function(...) return self:_template_event(t, ...) end)
        t.z = z
        self:_ask(false)
      else
        self:_template_failed(t)
      end
    end)
    if not w:send(tool_message(self, "template")) then self:_template_failed(t) end
  end)
end

function Stock:_fill_stock()
  if not self.once or self.closed then return end
  -- a tool replaced (reloaded) or recycled during its call keeps none
  local reg = self.pool.engine.registry
  if self.tool.retired or (reg and reg:get(self.tool.name) ~= self.tool) then return end
  self.pool:touch(self)
  if not self.no_template then
    if not self.template then return self:_make_template() end
    return self:_ask(true)
  end
  local gen = self.stock_gen
  for _ = 1, self.depth - #self.stock - self.stock_pending do
    self.stock_pending = self.stock_pending + 1
    self.pool:take_for_stock(function(w)
      if self.stock_gen == gen then self.stock_pending = self.stock_pending - 1 end
      if not w then return end
      if self.closed or self.stock_gen ~= gen or #self.stock >= self.depth then
        w:kill(SIGKILL)
        w:close()
        return
      end
      self:_stock_add(w)
      assert(w:send(tool_message(self)))
    end)
  end
end

-- The tool is no longer served: its stock and template go for good.
function Stock:_close()
  self.closed = true
  if self.pool.shared and self.pool.shared[self.tool] == self then self.pool.shared[self.tool] = nil end
  self:_drop_stock()
  self.pool:forget(self)
end

function Stock:_drop_stock()
  local stock = self.stock
  self.stock = {}
  -- processes still on their way are not stocked when they come
  self.stock_gen = self.stock_gen + 1
  self.stock_pending = 0
  for _, e in ipairs(stock) do
    self.pool.by_pid[e.pid] = nil
    e.worker:kill(SIGKILL)
    e.worker:close()
  end
  -- the template goes too, but not under a running call (its worker would
  -- die with it): then when that call ends
  local t = self.template
  if t and self.running == 0 then
    self.template = nil
    if t.worker then t.worker:kill(SIGKILL); t.worker:close() end
    if t.z then t.z:close() end
  elseif t then
    self.drop_template = true
  end
end

function Remote:busy() return self.call ~= nil end
function Remote:usable() return not self.closed end
function Remote:on_notify(fn, arg) self.notify, self.notify_arg = fn, arg end

function Remote:_finish(ok, a, b, stats)
  local call = self.call
  if not call then return end
  self.call = nil
  self.pool.engine.loop:answered(ok and (core.mono_ms() - call.t0) * 1000 or nil, true)
  if call.timer then call.timer:stop() end
  if call.exit_timer then call.exit_timer:stop() end
  if call.kill_timer then call.kill_timer:stop() end
  local w = call.worker
  local be = call.be
  if self.worker == w then self.worker = nil end
  -- (a balanced worker retires after M.MAX_CALLS calls also if it did not
  -- say "last": the engine counts them too)
  if w and (self.once or not ok or call.eof or call.last or (be and be.calls >= M.MAX_CALLS)) then
    -- a strict worker is single-use; a balanced one retires after a breach
    -- a worker that answered with "last" exits by itself
    if not call.eof and not (ok and call.last) then w:kill(SIGKILL) end
    w:close()
    if be then self.pool:_bal_retired(self.tool) end
    be = nil
  end
  local st = self.s
  if st then
    st.running = st.running - 1
    if st.drop_template and st.running == 0 then
      st.drop_template = nil
      if st.closed or not self.pool:stocks(st) then st:_drop_stock() end
    end
  end
  call.cb(ok, a, b, stats or {})
  -- a balanced worker goes back to its tool's (after the answer is out)
  if be then self.pool:_bal_put(self.tool, be) end
  if st then st:_fill_stock() end
  self.pool:refill()
end

-- The worker's socket closed before it answered: tell why from its exit.
function Remote:_exited(pid, code, sig)
  local call = self.call
  if not call or not call.worker or call.worker:pid() ~= pid then return end
  call.exit = { code = code, sig = sig }
  if call.eof then self:_classify() end
end

function Remote:_classify()
  local call = self.call
  if not call then return end
  if call.killed == "timeout" and call.cpu_at_kill and call.base_cpu
     and call.cpu_at_kill - call.base_cpu >= call.max_cpu then
    return self:_finish(false, "cpu_limit", "CPU budget spent in C code the instruction " ..
      "hook cannot see (a pattern match); the worker was killed")
  end
  if call.killed then
    return self:_finish(false, call.killed, call.killed == "timeout"
      and "deadline passed; the worker was killed" or "cancelled by the caller")
  end
  local e = call.exit
  if e and e.sig == SIGXCPU then
    return self:_finish(false, "cpu_limit", "the worker's CPU limit (RLIMIT_CPU) was reached")
  elseif e and e.sig == SIGSYS then
    return self:_finish(false, "sandbox_violation", "a denied system call")
  elseif e and e.sig == SIGXFSZ then
    return self:_finish(false, "sandbox_violation", "a file grew past max_file_size")
  end
  local how = e and (e.sig ~= 0 and ("killed by signal " .. e.sig) or ("exited with code " .. e.code))
    or "its socket closed"
  return self:_finish(false, "crashed", "the worker process died (" .. how .. ")")
end

function Remote:_frame(w, text, why)
  local call = self.call
  if text == nil then
    if call and call.worker == w then
      call.eof = true
      if call.exit or call.killed then return self:_classify() end
      call.exit_timer = self.pool.engine.loop:timer(M.EXIT_WAIT_MS, function() self:_classify() end)
    elseif self.worker == w then
      self.worker = nil -- an idle pooled worker retired
      w:close()
    end
    return
  end
  if not call or call.worker ~= w then return end
  local m = json.decode(text, { max_depth = json.max_depth + 2 })
  if type(m) ~= "table" then
    call.killed = "crashed"
    return self:_finish(false, "crashed", "the worker broke the protocol")
  end
  if m.op == "ready" then
    call.base_cpu = m.proc_cpu_ms
  elseif m.op == "note" then
    local fn, arg = self.notify, self.notify_arg
    if fn and arg ~= nil then fn(arg, m.kind, m.a, m.b, m.text)
    elseif fn then fn(m.kind, m.a, m.b, m.text) end
  elseif m.op == "result" then
    call.last = m.last
    local stats = m.stats
    if type(stats) == "table" and call.be then call.be.last_cpu = stats.proc_cpu_ms end
    if m.ok then
      -- binary strings travel as base64 (rubberduck.results)
      local okb, out = pcall(results.unview, m.output, m.binary_paths)
      if not okb then return self:_finish(false, "internal", "worker answer: " .. tostring(out), stats) end
      return self:_finish(true, m.status, out, stats)
    end
    return self:_finish(false, m.kind, m.message, stats)
  elseif m.op == "error" then
    return self:_finish(false, "internal", "worker: " .. tostring(m.message))
  else
    call.killed = "crashed"
    return self:_finish(false, "crashed", "the worker broke the protocol (a frame of op " ..
      string.format("%q", tostring(m.op)):sub(1, 80) .. ")")
  end
end

-- The pipeline's call, as core.lstate's st:execute takes it (l_lstate.c):
-- a worker gets the whole ctx in its call frame.
function Remote:execute(params, caller, id, attempt, deadline, cpu_ms, timeout_ms, max_output, cb)
  local tool = self.tool and self.tool.name
  return self:start("execute", { params = params, ctx = { execution_id = id, tool = tool,
    attempt = attempt, caller = caller, deadline = deadline } },
    { cpu_ms = cpu_ms, timeout_ms = timeout_ms, max_output = max_output }, cb)
end

function Remote:start(fname, arg, limits, cb)
  assert(fname == "execute", "a remote state only executes")
  if self.closed then return nil, "tool state is closed" end
  if self.call then return nil, "tool state is busy" end
  local call = { cb = cb, max_cpu = limits.cpu_ms or math.huge, t0 = core.mono_ms() }
  -- the deadline (ms since the epoch) to 10 µs: a short decimal, which the
  -- JSON codec writes and reads without snprintf and strtod
  local ctx = arg.ctx
  local d = ctx and ctx.deadline
  if type(d) == "number" and d > 0 and d < 1e13 then ctx.deadline = floor(d * 100 + 0.5) / 100 end
  -- encoded before a worker is taken: what cannot be sent ends the call now
  local msg, eerr = json.encode({ op = "call", arg = arg, limits = limits })
  if not msg then return nil, "cannot send the call to a worker: " .. tostring(eerr) end
  self.call = call
  -- the loop spins for quick answers (l_loop.c, auto_spin)
  self.pool.engine.loop:expect(true)
  local tries = 0
  local go
  -- A worker that died while it waited (killed from outside) is dropped
  -- and another taken: the call has not started.
  local function dead(w, stocked, be)
    if self.worker == w then self.worker = nil end
    self.pool.by_pid[w:pid()] = nil
    w:kill(SIGKILL)
    w:close()
    call.be = nil
    if be then self.pool:_bal_retired(self.tool) end
    tries = tries + 1
    if tries > 3 then
      return self:_finish(false, "crashed", "worker processes died before the call could start")
    end
    if stocked and #self.s.stock > 0 then
      local e = table.remove(self.s.stock, 1)
      return go(e.worker, nil, e)
    end
    if be then return self.pool:_bal_take(self.tool, go) end
    self.pool:take(go)
  end
  go = function(w, err, stocked, be)
    if self.call ~= call then
      -- the call ended (deadline, cancel) while it waited for a worker
      if be then self.pool:_bal_put(self.tool, be) elseif w then w:close() end
      return
    end
    if not w then return self:_finish(false, "internal", err) end
    if w:eof() then return dead(w, stocked, be) end
    call.worker = w
    call.be = be
    -- a pooled worker's CPU after its last call, a stocked one's after
    -- its definition (nil until its "ready" comes)
    call.base_cpu = stocked and stocked.base_cpu or (be and be.last_cpu)
    self.pool.by_pid[w:pid()] = self
    -- (a balanced worker's frames already come here when this state had
    -- it last: no new closure and registry reference per call)
    if not be or be.owner ~= self then
      w:on_frame(function(text, why) self:_frame(w, text, why) end)
      if be then be.owner = self end
    end
    if be then
      self.worker = w
      if be.fresh then
        be.fresh = nil
        if not w:send(tool_message(self)) then return dead(w, stocked, be) end
      end
      be.calls = be.calls + 1
      self.pool:_bal_spare(self.tool, be)
    elseif not stocked then
      if not w:send(tool_message(self)) then return dead(w, stocked) end
    end
    if not w:send(msg) then
      return dead(w, stocked, be)
    end
  end
  -- The deadline runs from now, also while the call waits for a worker.
  if limits.timeout_ms and limits.timeout_ms > 0 then
    call.timer = self.pool.engine.loop:timer(limits.timeout_ms + M.GRACE_MS, function()
      call.timer = nil
      self:_kill("timeout")
    end)
  end
  if self.once then
    local st = self.s
    st.running = st.running + 1
    local e = table.remove(st.stock, 1)
    -- a call that finds no process ready while the tool holds a stock:
    -- its calls come faster than the stock refills, keep more ready; one
    -- that finds it full: they come slower, keep one fewer (down to
    -- M.STOCK)
    if not e and st.depth < M.STOCK_MAX and self.pool:stocks(st) then
      st.depth = st.depth + 1
    elseif e and #st.stock + 1 >= st.depth and st.depth > M.STOCK then
      st.depth = st.depth - 1
    end
    if e then go(e.worker, nil, e) else st:_want(go) end
    -- The replacement: while another process is ready, when this call
    -- ends (_finish), so that its fork and preparation (milliseconds of
    -- page-table work on some VMs) do not compete with the call for the
    -- CPUs; with the stock empty, now, so that they overlap the call.
    if #st.stock == 0 then st:_fill_stock() end
  else
    self.pool:_bal_take(self.tool, go)
  end
  return true
end

function Remote:_kill(kind)
  local call = self.call
  if not call then return end
  call.killed = kind
  if call.worker then
    call.cpu_at_kill = call.worker:cpu_ms()
    call.worker:kill(SIGKILL)
    -- its end is told by its socket and exit status; should neither come
    -- (a process already reaped), the call ends all the same
    call.kill_timer = self.pool.engine.loop:timer(M.EXIT_WAIT_MS, function()
      call.kill_timer = nil
      if self.call == call then self:_classify() end
    end)
  else
    self:_finish(false, kind, kind == "timeout" and "deadline passed before a worker was free"
      or "cancelled by the caller")
  end
end

function Remote:stop(why)
  if not self.call then return false end
  self:_kill(why == "cancel" and "cancelled" or "timeout")
  return true
end

function Remote:close()
  if self.closed then return end
  self.closed = true
  if self.call then self:_kill("cancelled") end
  -- the tool's stock goes with its last state once the tool is no longer
  -- served (closed, replaced). A state closed after a breach (the registry
  -- recycles it) leaves the stock to the tool's next state: its processes
  -- and template never ran a call (until session 7 the stock and template
  -- went, and the next call started cold, with no stock to refill).
  local st = self.s
  if st then
    st.refs = st.refs - 1
    local reg = self.pool.engine.registry
    if st.refs == 0 and (self.tool.retired or not reg or reg:get(self.tool.name) ~= self.tool) then
      st:_close()
    end
  end
  if not self.once and self.tool.retired then self.pool:_bal_drop(self.tool) end
  if self.worker then
    self.worker:kill(SIGKILL)
    self.worker:close()
    self.worker = nil
  end
end

return M
