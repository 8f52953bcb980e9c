-- spec/bench/sandbox/breakdown.lua — where a strict call's time goes.
--   luajit breakdown.lua [N] [GAP_MS] [LEVEL]   (run through ./breakdown)
-- N calls (after 20 untimed) of a trivial strict tool (or balanced: LEVEL)
-- through the sandbox
-- layer (as bench.lua's "layer only" rows), each after GAP_MS of the loop
-- running (0: back to back; 5: a paced caller, the stock refills). Per
-- call, from CLOCK_MONOTONIC stamps taken by the engine and by the worker
-- (its stats: recv_at_ms, answer_at_ms): the engine's own work before the
-- call frame is written, the hand-off to the worker (its wake-up, or the
-- wait for a process when the stock ran dry), the worker's work (decode,
-- handler, encode), the hand-back (the engine's wake-up and reading of the
-- answer), and the rest. Then the CPU per call of the engine and of all
-- worker processes (templates and their forks, startup included).
local rd = require "rubberduck"
local core = require "rubberduck.core"
local ffi = require "ffi"

local n = tonumber(arg[1]) or 200
local gap = tonumber(arg[2]) or 5
local level = arg[3] or "strict"
assert(level == "strict" or level == "balanced", "LEVEL: strict or balanced")
local OP = { principal = "bench", capabilities = { "*" } }

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'") == 0)
local f = assert(io.open(dir .. "/t.lua", "w"))
f:write([[return tool { metadata = { name = "t", description = "a trivial tool" },
  security = { level = "]] .. level .. [[" }, execution = { handler = function(p) return { ok = true } end } }]])
f:close()
local engine = assert(rd.open({ tools = dir, store = false }))

-- the moment the call frame is written (the worker's send, wrapped)
local mt = debug.getregistry()["rubberduck.worker"]
local send, t_sent = mt.send, nil
mt.send = function(w, s)
  if s:find('"op":"call"', 1, true) then t_sent = core.mono_ms() end
  return send(w, s)
end

local function pause(ms)
  if ms <= 0 then return end
  local done = false
  local tm = engine.loop:timer(ms, function() done = true end)
  while not done do engine.loop:run("once") end
  tm:stop()
end

local t = assert(engine.registry:get("t"))
local lim = { cpu_ms = t.def.security.max_cpu, timeout_ms = t.def.execution.timeout,
              max_output = t.def.security.max_output }
local caller = engine.auth:caller(OP)
local spin_us = require("rubberduck.workers").spin_us(t)
local rows = {}
for i = 1, n + 20 do
  pause(gap)
  local st = assert(engine.registry:checkout(t, nil))
  local done, ok, stats, t_cb
  local t0 = core.mono_ms()
  assert(st:start("execute", { params = {}, ctx = { execution_id = "b", tool = "t", attempt = 1,
    caller = caller, deadline = core.now() * 1000 + lim.timeout_ms } }, lim,
    function(a, _, _, s) done, ok, stats, t_cb = true, a, s, core.mono_ms() end))
  local spin_until = core.mono_ms() + spin_us / 1000
  while not done do
    local left = (spin_until - core.mono_ms()) * 1000
    engine.loop:run("once", left > 0 and left or nil)
  end
  local t1 = core.mono_ms()
  engine.registry:checkin(t, st)
  assert(ok, "the call failed")
  if i > 20 then
    rows[#rows + 1] = { t1 - t0, t_sent - t0, stats.recv_at_ms - t_sent,
      stats.answer_at_ms - stats.recv_at_ms, t_cb - stats.answer_at_ms, t1 - t_cb }
  end
end
engine:close()
os.execute("rm -rf '" .. dir .. "'")

ffi.cdef [[
struct rd_rusage { long ut_s, ut_us, st_s, st_us; long rest[14]; };
int getrusage(int who, struct rd_rusage *ru);
]]
local function cpu_us(who) -- RUSAGE_SELF 0, RUSAGE_CHILDREN -1 (reaped at close)
  local r = ffi.new("struct rd_rusage")
  ffi.C.getrusage(who, r)
  return (tonumber(r.ut_s) + tonumber(r.st_s)) * 1e6 + tonumber(r.ut_us) + tonumber(r.st_us)
end

print(("%s call breakdown: %d calls, %s; load %s"):format(level, n,
  gap > 0 and (gap .. " ms between calls") or "back to back",
  io.open("/proc/loadavg"):read("*l"):match("^(%S+ %S+ %S+)")))
local names = { "total", "engine, to the frame written", "hand-off (to the frame read)",
                "worker (read to answer)", "hand-back (to the callback)", "engine, after" }
for j, name in ipairs(names) do
  local v = {}
  for i, r in ipairs(rows) do v[i] = r[j] end
  table.sort(v)
  print(("%-30s p10 %8.1f  p50 %8.1f  p90 %8.1f us"):format(name, v[math.ceil(#v * 0.1)] * 1000,
    v[math.ceil(#v * 0.5)] * 1000, v[math.ceil(#v * 0.9)] * 1000))
end
print(("CPU per call: engine %.0f us, worker processes %.0f us (startup included)"):format(
  cpu_us(0) / (n + 20), cpu_us(-1) / (n + 20)))
