-- spec/bench/sandbox/bench.lua — latency and throughput of a trivial tool
-- through the whole pipeline at each security level, in one process.
-- Prints one line per level: p50 and p99 latency (µs), calls per second;
-- first through the whole pipeline (engine:execute), then for the sandbox
-- layer alone (the tool's state or worker: what the goals of issue 4 and
-- the bubblewrap anchor are about).
-- Calls follow one another at once, except "strict/5ms": the engine's loop
-- runs 5 ms between two strict calls (a caller not saturating the tool: the
-- strict stock refills meanwhile); its calls per second count call time only.
-- "strict" back to back measures the cost of a process per call (a fork of
-- the tool's template, its limits, its exit), "strict/5ms" the hand-off to
-- a process that is ready.
-- Before the strict rows of each part, "fork floor": what a fresh process
-- costs on this machine at all (forkfloor.c: fork + _exit + waitpid of a
-- minimal C program), measured in the same run; after them, the resident
-- size of the strict tool's template (what each strict process is forked
-- from) and the floor for a process of that size. "fork+filter": the
-- floor with a seccomp filter of 16 instructions loaded in each child (a
-- strict worker loads one of about that size, seccomp_linux.c's drop
-- program): the least a process with a filter of its own costs.
-- Before the relaxed rows, "hand-off" (handoff.c): the round trip of a
-- flag between two threads on the two CPUs, measured right before the
-- relaxed level: what the two hand-offs of an in-process call cost at
-- that moment, which on a shared VM moves by several times from one
-- minute to the next.
--   luajit bench.lua N_STRICT N_OTHER [FORKFLOOR [HANDOFF]]
local rd = require "rubberduck"
local core = require "rubberduck.core"

local n_strict = tonumber(arg[1]) or 500
local n_other = tonumber(arg[2]) or 5000
local forkfloor = arg[3]
local handoff = arg[4]
local OP = { principal = "bench", capabilities = { "*" } }

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'") == 0)
for _, level in ipairs({ "strict", "balanced", "relaxed", "none" }) do
  local f = assert(io.open(dir .. "/t_" .. level .. ".lua", "w"))
  f:write(([[
return tool {
  metadata = { name = "t_%s", description = "a trivial tool" },
  security = { level = "%s" },
  execution = { handler = function(p) return { ok = true } end },
}]]):format(level, level))
  f:close()
end

-- The store off: this measures the sandbox and the pipeline around it.
-- With the store on (the default) a sequential call also waits for its
-- durable history record, a disk sync (spec/bench/executor shows both).
local engine = assert(rd.open({ tools = dir, store = false }))
assert(#engine.problems == 0, engine.problems[1])

-- Let the engine's loop run for `ms` (a caller that is not calling: the
-- strict stock refills meanwhile).
local function pause(ms)
  local done = false
  local tm = engine.loop:timer(ms, function() done = true end)
  while not done do engine.loop:run("once") end
  tm:stop()
end

-- gap_ms: a pause before each call (not timed); calls per second then
-- counts the calls' own time only.
-- n timed calls of one() after up to 50 untimed ones: p50, p99 (µs),
-- calls per second.
local function timed(n, gap_ms, one)
  for _ = 1, math.min(50, n) do one() end
  local t = {}
  local start = core.mono_ms()
  local paused = 0
  for i = 1, n do
    if gap_ms then
      local p0 = core.mono_ms()
      pause(gap_ms)
      paused = paused + core.mono_ms() - p0
    end
    local t0 = core.mono_ms()
    one()
    t[i] = core.mono_ms() - t0
  end
  local total = core.mono_ms() - start - paused
  table.sort(t)
  return t[math.ceil(n * 0.5)] * 1000, t[math.ceil(n * 0.99)] * 1000, n / (total / 1000)
end

local function measure(name, n, gap_ms)
  return timed(n, gap_ms, function()
    local env = engine:execute(name, {}, OP)
    if env.status ~= "ok" then error(name .. ": " .. env.error.kind .. ": " .. env.error.message) end
  end)
end

-- The sandbox layer alone: take the tool's state (or worker), run the
-- handler there, get its output back (the same call the pipeline's
-- execute stage makes: limits, output cap, stats), give the state back;
-- no validation, authorization, result processing or envelope. The
-- caller spins for the answer as engine:execute does.
local function measure_layer(name, n, gap_ms)
  local t = assert(engine.registry:get(name), name)
  local sec = t.def.security
  local lim = { cpu_ms = sec.max_cpu, timeout_ms = t.def.execution.timeout, max_output = sec.max_output }
  local caller = engine.auth:caller(OP)
  local spin_us = require("rubberduck.workers").spin_us(t)
  local function one()
    local st = assert(engine.registry:checkout(t, nil))
    local done, ok, status
    local started, err = st:execute({}, caller, "bench", 1, core.now() * 1000 + lim.timeout_ms,
      lim.cpu_ms, lim.timeout_ms, lim.max_output, function(a, b) done, ok, status = true, a, b end)
    assert(started, err)
    local spin_until = core.mono_ms() + spin_us / 1000
    while not done do
      local left = (spin_until - core.mono_ms()) * 1000
      engine.loop:run("once", left > 0 and left or nil)
    end
    engine.registry:checkin(t, st)
    if not (ok and status.status == "ok") then error(name .. ": " .. tostring(status)) end
  end
  return timed(n, gap_ms, one)
end

-- The forkfloor helper's row (and its CPU line), for a process of `mib`.
local function floor_row(mib, label, insns)
  if not forkfloor then return end
  local p = assert(io.popen(("'%s' %d %d '%s' %d"):format(forkfloor, n_strict, mib, label, insns or 0)))
  io.write(p:read("*a"))
  p:close()
end

-- The strict tool's template: resident size and page tables (kB).
local function template_size()
  for _, r in ipairs(engine.workers.stocked or {}) do
    local z = r.template and r.template.z
    local f = z and io.open("/proc/" .. z:pid() .. "/status")
    if f then
      local s = f:read("*a")
      f:close()
      return tonumber(s:match("VmRSS:%s*(%d+)")), tonumber(s:match("VmPTE:%s*(%d+)"))
    end
  end
end

-- Levels in this order, each measured through the pipeline and then as
-- the layer alone, one right after the other: the in-process levels first,
-- so that no strict process exiting or refilling its stock runs beside
-- them; the two tables are printed afterwards in the usual row order.
local ORDER = { "relaxed", "none", "balanced", "strict/5ms", "strict" }
local ROWS = { "strict", "strict/5ms", "balanced", "relaxed", "none" }
local got = { [false] = {}, [true] = {} }
local tmpl_rss, tmpl_pte
local handoff_row
for _, level in ipairs(ORDER) do
  local name, gap = level:match("^(%a+)/(%d+)ms$")
  name = name or level
  local n = name == "strict" and n_strict or n_other
  if level == "relaxed" and handoff then
    local p = assert(io.popen(("'%s' %d"):format(handoff, 200000)))
    handoff_row = p:read("*a")
    p:close()
  end
  for _, layer in ipairs({ false, true }) do
    got[layer][level] = { (layer and measure_layer or measure)("t_" .. name, n, tonumber(gap)) }
  end
  if level == "strict/5ms" then tmpl_rss, tmpl_pte = template_size() end
end
for _, layer in ipairs({ false, true }) do
  if layer then print("sandbox layer only (checkout, run in the tool's state or worker, output back, checkin):") end
  floor_row(0, "fork floor")
  floor_row(0, "fork+filter", 16)
  for _, level in ipairs(ROWS) do
    if level == "relaxed" and handoff_row then io.write(handoff_row) end
    local p50, p99, tput = unpack(got[layer][level])
    print(string.format("%-10s %10.1f %10.1f %12.0f", level, p50, p99, tput))
    if level == "strict/5ms" and not layer and tmpl_rss then
      print(string.format("  (the strict tool's template: %d kB resident, %d kB of page tables)", tmpl_rss, tmpl_pte or 0))
      floor_row(math.ceil(tmpl_rss / 1024), "fork+tmpl")
    end
  end
end
engine:close()
os.execute("rm -rf '" .. dir .. "'")
