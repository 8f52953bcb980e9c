-- spec/bench/sandbox/bench.lua — latency and throughput of a trivial tool
-- through the whole pipeline at each security level, in one process.
-- Prints one line per level: p50 and p99 latency (µs), calls per second.
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

local engine = assert(rd.open({ tools = dir }))
assert(#engine.problems == 0, engine.problems[1])

local function measure(name, n)
  for _ = 1, math.min(50, n) do engine:execute(name, {}, OP) end
  local t = {}
  local start = core.mono_ms()
  for i = 1, n do
    local t0 = core.mono_ms()
    local env = engine:execute(name, {}, OP)
    t[i] = core.mono_ms() - t0
    if env.status ~= "ok" then error(name .. ": " .. env.error.kind .. ": " .. env.error.message) end
  end
  local total = core.mono_ms() - start
  table.sort(t)
  return t[math.ceil(n * 0.5)] * 1000, t[math.ceil(n * 0.99)] * 1000, n / (total / 1000)
end

for _, level in ipairs({ "strict", "balanced", "relaxed", "none" }) do
  local p50, p99, tput = measure("t_" .. level, level == "strict" and n_strict or n_other)
  print(string.format("%-10s %10.1f %10.1f %12.0f", level, p50, p99, tput))
end
engine:close()
os.execute("rm -rf '" .. dir .. "'")
