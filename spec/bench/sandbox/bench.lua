-- spec/bench/sandbox/bench.lua — latency and throughput of a trivial tool
-- through the whole pipeline at each security level, in one process.
-- Prints one line per level: p50 and p99 latency (µs), calls per second.
-- Calls follow one another at once, except "strict/5ms": the engine's loop
-- runs 5 ms between two strict calls (a caller not saturating the tool: the
-- strict stock refills meanwhile); its calls per second count call time only.
-- "strict" back to back measures the cost of a process per call (a fork of
-- the tool's template, its limits, its exit), "strict/5ms" the hand-off to
-- a process that is ready.
--   luajit bench.lua N_STRICT N_OTHER
local rd = require "rubberduck"
local core = require "rubberduck.core"

local n_strict = tonumber(arg[1]) or 500
local n_other = tonumber(arg[2]) or 5000
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
local function measure(name, n, gap_ms)
  for _ = 1, math.min(50, n) do engine:execute(name, {}, OP) end
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
    local env = engine:execute(name, {}, OP)
    t[i] = core.mono_ms() - t0
    if env.status ~= "ok" then error(name .. ": " .. env.error.kind .. ": " .. env.error.message) end
  end
  local total = core.mono_ms() - start - paused
  table.sort(t)
  return t[math.ceil(n * 0.5)] * 1000, t[math.ceil(n * 0.99)] * 1000, n / (total / 1000)
end

for _, level in ipairs({ "strict", "strict/5ms", "balanced", "relaxed", "none" }) do
  local name, gap = level:match("^(%a+)/(%d+)ms$")
  name = name or level
  local n = name == "strict" and n_strict or n_other
  local p50, p99, tput = measure("t_" .. name, n, tonumber(gap))
  print(string.format("%-10s %10.1f %10.1f %12.0f", level, p50, p99, tput))
end
engine:close()
os.execute("rm -rf '" .. dir .. "'")
