-- rubberduck.executor — admission of executions: how many run at once, and
-- what waits.
--
-- A call that has passed validation and authorization asks for a slot
-- before it runs. It gets one at once when fewer than `max_running` calls
-- run in the engine and fewer than the tool's `execution.concurrency` run
-- for that tool; otherwise it waits in one bounded FIFO queue (stage
-- "queued"), and when the queue holds `max_queue` calls it ends at once as
-- `overloaded`, so a flood of submissions costs a bounded amount of memory.
-- A slot is held through all attempts of a call, retry waits included.
--
-- A freed slot goes to the oldest queued call that fits (a call whose tool
-- is at its own limit does not hold up calls of other tools). Queued calls
-- are started from a zero-delay timer, not from inside the call that freed
-- the slot, so no coroutine resumes another one in a chain.
local core = require "rubberduck.core"

local M = {}

M.MAX_RUNNING = 32     -- executions running at once, per engine
M.MAX_QUEUE = 1024     -- executions waiting for a slot, per engine

local Exec = {}
Exec.__index = Exec

-- opts: max_running, max_queue (positive integers; max_queue may be 0: no
-- queue, a call that cannot run at once is overloaded).
function M.new(engine, opts)
  opts = opts or {}
  local function limit(name, dflt, min)
    local v = opts[name]
    if v == nil then return dflt end
    if type(v) ~= "number" or v ~= math.floor(v) or v < min then
      error(string.format("%s must be an integer >= %d, got %s", name, min, tostring(v)), 3)
    end
    return v
  end
  local self
  self = setmetatable({
    engine = engine,
    max_running = limit("max_running", M.MAX_RUNNING, 1),
    max_queue = limit("max_queue", M.MAX_QUEUE, 0),
    running = 0,
    by_tool = {},      -- tool name -> running count
    queue = {},        -- handles, oldest first
    rejected = 0,      -- calls refused as overloaded
  }, Exec)
  -- made once: a closure made where it is used would keep LuaJIT from
  -- compiling that function (schedule runs at the end of every call)
  self.dispatcher = function() self:_dispatch() end
  return self
end

local function fits(self, name, limit)
  return self.running < self.max_running and (self.by_tool[name] or 0) < limit
end

local function take(self, name)
  self.running = self.running + 1
  self.by_tool[name] = (self.by_tool[name] or 0) + 1
end

local function unqueue(self, h)
  local q = self.queue
  for i = 1, #q do
    if q[i] == h then table.remove(q, i); return true end
  end
  return false
end

-- Start the queued calls that fit now, oldest first.
function Exec:_dispatch()
  self.pending = nil
  local q, i = self.queue, 1
  while i <= #q and self.running < self.max_running do
    local h = q[i]
    if fits(self, h.slot_tool, h.slot_limit) then
      table.remove(q, i)
      take(self, h.slot_tool)
      h.admitted = true
      h:_resume("admitted")
    else
      i = i + 1
    end
  end
end

local function schedule(self)
  if self.pending or #self.queue == 0 then return end
  self.pending = self.engine.loop:timer(0, self.dispatcher)
end

-- A timer that ends the wait of queued call h at its deadline (a function
-- of its own: a closure made in admit() would keep LuaJIT from compiling
-- admit's fast path).
local function deadline_timer(self, h, t0)
  return self.engine.loop:timer(math.max(0, h.deadline - t0), function()
    if not h.admitted and unqueue(self, h) then h:_resume("deadline") end
  end)
end

-- In the call's coroutine: wait for a slot for tool `name` whose own limit
-- is `limit`. Returns true, queue_ms | nil, kind, message (kind is
-- "overloaded", "cancelled" or "timeout" when the caller's deadline passed
-- in the queue).
function Exec:admit(h, name, limit)
  if fits(self, name, limit) and #self.queue == 0 then
    take(self, name)
    h.slot_tool, h.admitted = name, true
    return true, 0
  end
  if #self.queue >= self.max_queue then
    self.rejected = self.rejected + 1
    return nil, "overloaded", string.format(
      "the engine is at capacity (%d running, %d queued); try again later",
      self.running, #self.queue)
  end
  local t0 = core.mono_ms()
  h.slot_tool, h.slot_limit, h.admitted = name, limit, false
  self.queue[#self.queue + 1] = h
  h.stage_name = "queued"
  local dl = h.deadline and deadline_timer(self, h, t0)
  -- a slot may be free already (the queue held only calls of full tools)
  schedule(self)
  local why
  repeat
    why = coroutine.yield()
  until h.admitted or h.cancelled or why == "deadline"
  if dl then dl:stop() end
  if not h.admitted then
    unqueue(self, h)
    h.slot_tool = nil
    if h.cancelled then return nil, "cancelled", "cancelled by the caller while queued" end
    return nil, "timeout", "the caller's deadline passed while the call was queued"
  end
  return true, core.mono_ms() - t0
end

-- Give the slot back (no-op when the call holds none).
function Exec:release(h)
  local name = h.slot_tool
  if not name or not h.admitted then return end
  h.slot_tool = nil
  self.running = self.running - 1
  local n = self.by_tool[name] - 1
  self.by_tool[name] = n > 0 and n or nil
  schedule(self)
end

-- A queued call was cancelled from outside its coroutine.
function Exec:forget(h)
  return unqueue(self, h)
end

function Exec:stats()
  local per = {}
  for k, v in pairs(self.by_tool) do per[k] = v end
  return { running = self.running, queued = #self.queue, max_running = self.max_running,
           max_queue = self.max_queue, rejected = self.rejected, by_tool = per }
end

function Exec:close()
  if self.pending then self.pending:stop(); self.pending = nil end
end

return M
