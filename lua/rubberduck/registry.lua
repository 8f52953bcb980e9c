-- rubberduck.registry — the loaded tools of an engine.
--
-- Each tool file is evaluated in a tool state of its own (never in the host
-- state), under a CPU and memory budget, and normalized there; the registry
-- keeps the normalized definition (plain data) and the state that holds the
-- handler. A failed load never replaces a tool that was loaded before.
local core = require "rubberduck.core"
local json = require "rubberduck.json"
local workers = require "rubberduck.workers"

local M = {}

-- Budget of evaluating a definition: top-level code that loops or
-- allocates without end is refused, not hung.
M.DEFINE_CPU_MS = 250
M.DEFINE_TIMEOUT_MS = 2000
M.DEFINE_MEMORY = 64 * 1024 * 1024
-- Levels this build can run: strict and balanced need the worker
-- executable (rduck-worker) for their processes.
M.RUNNABLE = { relaxed = true, none = true }
if workers.available() then
  M.RUNNABLE.strict = true
  M.RUNNABLE.balanced = true
end
-- Levels whose calls run in worker processes.
M.REMOTE = { strict = true, balanced = true }

local Registry = {}
Registry.__index = Registry

function M.new(engine)
  return setmetatable({ engine = engine, tools = {}, order = {} }, Registry)
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  if not s then return nil, path .. ": cannot read" end
  return s
end

local function basename(path) return (path:gsub("^.*/", "")) end

-- Make a tool state and evaluate `source` in it. With `wait` (the handle
-- of the execution whose coroutine calls this: it yields, and the
-- handle's waker resumes it), the definition runs while the loop goes on;
-- without it the loop is run here, which is for load time only (never
-- from inside a loop callback).
-- Returns state, def | nil, problems (list of "file: path: reason").
function M.evaluate(engine, file, source, wait)
  local ok, st = pcall(core.lstate.new, engine.loop, {
    max_memory = M.DEFINE_MEMORY, jit = false, lua_path = engine.lua_path,
  })
  if not ok then return nil, { file .. ": (engine): " .. tostring(st) } end
  -- On a call thread, like a call: code stuck in C (a pathological
  -- pattern) is abandoned at the deadline instead of blocking the engine.
  local done, r = false, nil
  local started, serr = st:start("define",
    { source = source, chunkname = "@" .. file, file = file },
    { cpu_ms = M.DEFINE_CPU_MS, timeout_ms = M.DEFINE_TIMEOUT_MS },
    function(...)
      done, r = true, { ... }
      if wait then wait:_resume("defined") end
    end)
  if not started then
    st:close()
    return nil, { file .. ": (engine): " .. tostring(serr) }
  end
  while not done do
    if wait then coroutine.yield() else engine.loop:run("once") end
  end
  local good, res, _ = r[1], r[2], r[3]
  if not good then
    st:close()
    local kind, msg = res, _
    local why = ({
      cpu_limit = "top-level code spent its CPU budget (" .. M.DEFINE_CPU_MS .. " ms) while loading",
      timeout = "top-level code ran past the load deadline (" .. M.DEFINE_TIMEOUT_MS .. " ms)",
      memory_limit = "top-level code reached the memory cap (" .. M.DEFINE_MEMORY .. " bytes) while loading",
      invalid_output = "definition holds values that cannot leave the tool state: " .. tostring(msg),
    })[kind] or tostring(msg)
    return nil, { file .. ": (load): " .. why }
  end
  if not res.ok then
    st:close()
    return nil, res.problems
  end
  local def = res.def
  if not M.RUNNABLE[def.security.level] then
    st:close()
    return nil, { string.format(
      "%s: security.level: %q needs the sandboxed worker processes, and rduck-worker " ..
      "was not found (build it, or set RUBBERDUCK_WORKER)", file, def.security.level) }
  end
  -- The heap cap counts the tool's own memory: on top of what the state
  -- holds once the definition is loaded.
  st:set_max_memory(st:heap() + def.security.max_memory)
  return st, def
end

-- Load one file. Returns tool | nil, problems.
function M.load_file(engine, file)
  local source, err = read_file(file)
  if not source then return nil, { file .. ": (file): " .. tostring(err) } end
  local st, def = M.evaluate(engine, file, source)
  if not st then return nil, def end
  -- t.idle: states ready for a call; t.live: states that exist (idle or
  -- running). At most def.execution.concurrency are live (the executor
  -- admits no more calls than that).
  local t = { name = def.metadata.name, file = file, source = source, def = def,
              idle = {}, live = 0 }
  if M.REMOTE[def.security.level] then
    -- The definition was checked in-process; calls run in workers.
    st:close()
    st = engine.workers:remote(t)
  end
  t.idle[1], t.live = st, 1
  return t
end

-- List the *.lua files of a directory, sorted.
function M.list_dir(dir)
  local names, err = core.listdir(dir)
  if not names then return nil, dir .. ": (dir): " .. err end
  local files = {}
  for _, name in ipairs(names) do
    if name:match("%.lua$") then files[#files + 1] = dir .. "/" .. name end
  end
  table.sort(files)
  return files
end

-- Load every tool of `dir`, plus any single files in `files`.
-- Returns loaded (list of tools), problems (list of strings).
function M.load_all(engine, dir, files)
  local list = {}
  if dir then
    local l, err = M.list_dir(dir)
    if not l then return {}, { err } end
    for _, p in ipairs(l) do list[#list + 1] = p end
  end
  for _, p in ipairs(files or {}) do list[#list + 1] = p end
  local loaded, problems, seen = {}, {}, {}
  for _, file in ipairs(list) do
    local t, probs = M.load_file(engine, file)
    engine:emit(t and "tool.loaded" or "tool.load_failed", nil,
      { file = file, tool = t and t.name or basename(file),
        reason = probs and probs[1] or nil })
    if not t then
      for _, p in ipairs(probs) do problems[#problems + 1] = p end
    elseif seen[t.name] then
      problems[#problems + 1] = string.format("%s: metadata.name: duplicate tool name %q (also in %s)",
        file, t.name, seen[t.name].file)
      M.close_tool(t)
    else
      seen[t.name] = t
      loaded[#loaded + 1] = t
    end
  end
  return loaded, problems
end

-- Close the idle states of a tool that is no longer served (replaced by
-- a reload, or the engine closes); running ones close when they come back.
function M.close_tool(t)
  t.retired = true
  for _, st in ipairs(t.idle) do st:close() end
  t.live = t.live - #t.idle
  t.idle = {}
end

-- Put tools into the registry (replacing same-named ones).
function Registry:add(list)
  for _, t in ipairs(list) do
    local old = self.tools[t.name]
    if old then
      M.close_tool(old)
    else
      self.order[#self.order + 1] = t.name
    end
    self.tools[t.name] = t
  end
  table.sort(self.order)
end

function Registry:get(name) return self.tools[name] end

-- A state for one call of `t`: an idle one, or a new one (from the tool's
-- source for an in-process level: `wait`, the calling execution's handle,
-- lets the definition run while the loop goes on). The caller (the executor) has made sure fewer than
-- def.execution.concurrency calls of `t` run. Returns state | nil, why.
function Registry:checkout(t, wait)
  local idle = t.idle
  local n = #idle
  if n > 0 then -- (no loop here: LuaJIT compiles a loop-free function whole)
    local st = idle[n]
    idle[n] = nil
    if st:usable() then return st end
    st:close()
    t.live = t.live - 1
    return self:checkout(t, wait)
  end
  t.live = t.live + 1
  if M.REMOTE[t.def.security.level] then
    return self.engine.workers:remote(t)
  end
  local st, def = M.evaluate(self.engine, t.file, t.source, wait)
  if not st then
    t.live = t.live - 1
    return nil, def[1]
  end
  return st
end

-- Give a state back after a call. `recycle`: it breached a limit (or was
-- stopped) and must not serve again.
function Registry:checkin(t, st, recycle)
  if recycle or t.retired or not st:usable() then
    st:close()
    t.live = t.live - 1
  else
    t.idle[#t.idle + 1] = st
  end
end

function Registry:list()
  local out = json.array({})
  for _, name in ipairs(self.order) do out[#out + 1] = self.tools[name] end
  return out
end

function Registry:close()
  for _, name in ipairs(self.order) do M.close_tool(self.tools[name]) end
end

return M
