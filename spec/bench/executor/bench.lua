-- spec/bench/executor/bench.lua — the executor under load, in one process.
--
--   luajit bench.lua pipeline on|off SECONDS WARMUP_SECONDS
--     A trivial tool through the whole pipeline (engine:submit -> envelope,
--     the Lua API), closed loop: C calls in flight at once, each one
--     submitted with on_done and a new one submitted as each finishes.
--     Latency of a call = submit to on_done (queued time included).
--     `on`: the engine's default store (a data directory in a temporary
--     directory: every call waits for its durable history record);
--     `off`: rd.open{ store = false }. The engine is opened with
--     max_running = 256, the tools with execution.concurrency = 256.
--     One line per level and concurrency, tab-separated:
--       store level concurrency calls_per_s p50_us p99_us calls errors stuck
--
--   luajit bench.lua rss N
--     VmRSS of the process before and after N submissions that stay queued
--     (a tool that sleeps; rd.open{ max_queue = N + 64 }, default
--     max_running and per-tool concurrency). One line, tab-separated:
--       rss N rss_before_kib rss_after_kib accepted submit_ms
local rd = require "rubberduck"
local core = require "rubberduck.core"

local OP = { principal = "bench", capabilities = { "*" } }
-- RD_BENCH_LEVELS="relaxed none": only those levels (all four by default)
local LEVELS = { "strict", "balanced", "relaxed", "none" }
if os.getenv("RD_BENCH_LEVELS") then
  LEVELS = {}
  for l in os.getenv("RD_BENCH_LEVELS"):gmatch("%a+") do LEVELS[#LEVELS + 1] = l end
end
-- RD_BENCH_CONC="16": only those concurrencies (1, 16 and 256 by default)
local CONCURRENCY = { 1, 16, 256 }
if os.getenv("RD_BENCH_CONC") then
  CONCURRENCY = {}
  for c in os.getenv("RD_BENCH_CONC"):gmatch("%d+") do CONCURRENCY[#CONCURRENCY + 1] = tonumber(c) end
end

local function tmpdir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'") == 0)
  return dir
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function vmrss_kib()
  for line in io.lines("/proc/self/status") do
    local kib = line:match("^VmRSS:%s*(%d+)%s*kB")
    if kib then return tonumber(kib) end
  end
  error("no VmRSS in /proc/self/status")
end

local function pct(sorted, p)
  if #sorted == 0 then return 0 / 0 end
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

-- ---- throughput and latency ---------------------------------------------------

-- Run `name` closed-loop with `conc` calls in flight. Warm-up first (not
-- counted): at least `warm` seconds and 2 x conc calls done (the first
-- calls at a high concurrency make the tool states or workers). Then
-- `secs` seconds counted: the calls that complete inside that window. Then
-- no new calls; those still in flight get DRAIN_MS to finish (not counted)
-- and are cancelled after it (counted as stuck: a call the engine did not
-- answer in time, which a benchmark must not hide).
local DRAIN_MS = 3000

local function cell(engine, name, conc, warm, secs)
  local now = core.mono_ms
  local t_begin = now()
  local t_start, t_end = math.huge, math.huge
  local warm_done = 0
  local lat, n, errors, first_error = {}, 0, 0, nil
  local inflight, started = 0, {}   -- execution id -> submit time (ms)
  local submit
  -- One on_done and one options table for every call (a lean client: no
  -- closure or table made per call on this side of the measurement).
  local function done(env)
    local t1 = now()
    local id = env.execution_id
    local t0 = started[id]
    started[id] = nil
    inflight = inflight - 1
    if t_start == math.huge then
      warm_done = warm_done + 1
      if warm_done >= 2 * conc and t1 - t_begin >= warm * 1000 then
        t_start = t1
        t_end = t1 + secs * 1000
      end
    elseif t1 < t_end then
      n = n + 1
      lat[n] = t1 - t0
      if env.status ~= "ok" then
        errors = errors + 1
        first_error = first_error or (env.error.kind .. ": " .. env.error.message)
      end
    end
    if t1 < t_end then submit() end
  end
  local opts, params = { on_done = done }, {}
  submit = function()
    inflight = inflight + 1
    local t0 = now()
    local h = engine:submit(name, params, OP, opts)
    started[h.id] = t0
  end
  for _ = 1, conc do submit() end
  -- a timer, so that a call the engine never answers cannot hold the loop
  local stuck, tick_timer = 0, nil
  local function tick()
    tick_timer = nil
    if now() > t_end + DRAIN_MS then
      for id in pairs(started) do
        stuck = stuck + 1
        engine:cancel(id)
      end
    else
      tick_timer = engine.loop:timer(100, tick)
    end
  end
  tick()
  while inflight > 0 do engine.loop:run("once") end
  if tick_timer then tick_timer:stop() end
  if n == 0 then error(name .. " at concurrency " .. conc .. ": no call completed in the window") end
  table.sort(lat)
  return n / secs, pct(lat, 0.50) * 1000, pct(lat, 0.99) * 1000, n, errors, stuck, first_error
end

local function pipeline(store_on, secs, warm)
  local dir = tmpdir()
  for _, level in ipairs(LEVELS) do
    write(dir .. "/t_" .. level .. ".lua", ([[
return tool {
  metadata = { name = "t_%s", description = "a trivial tool" },
  security = { level = "%s" },
  execution = { concurrency = 256, handler = function(p) return { ok = true } end },
}]]):format(level, level))
  end
  local opts = { tools = dir, max_running = 256, data_dir = dir .. "/data" }
  if not store_on then opts.store = false end
  local engine = assert(rd.open(opts))
  assert(#engine.problems == 0, engine.problems[1])
  for _, level in ipairs(LEVELS) do
    for _, conc in ipairs(CONCURRENCY) do
      local tput, p50, p99, n, errors, stuck, first_error = cell(engine, "t_" .. level, conc, warm, secs)
      print(string.format("%s\t%s\t%d\t%.0f\t%.1f\t%.1f\t%d\t%d\t%d", store_on and "on" or "off",
        level, conc, tput, p50, p99, n, errors, stuck))
      io.stdout:flush()
      if first_error then io.stderr:write("bench: t_", level, " c=", conc, ": ", first_error, "\n") end
    end
  end
  engine:close()
  os.execute("rm -rf '" .. dir .. "'")
end

-- ---- memory under a queue of N ----------------------------------------------

local function rss(n)
  local dir = tmpdir()
  write(dir .. "/nap.lua", [[
return tool {
  metadata = { name = "nap", description = "sleeps, so that calls stay queued" },
  parameters = { type = "object", properties = { ms = { type = "number" } } },
  security = { level = "relaxed" },
  execution = { timeout = 60000, handler = function(p, ctx) ctx.sleep(p.ms) return { ok = true } end },
}]])
  local engine = assert(rd.open({ tools = dir, max_queue = n + 64, data_dir = dir .. "/data" }))
  assert(#engine.problems == 0, engine.problems[1])
  -- warm: the tool's states and the pipeline's code paths exist before
  for _ = 1, 8 do assert(engine:execute("nap", { ms = 0 }, OP).status == "ok") end
  collectgarbage()
  collectgarbage()
  local before = vmrss_kib()
  local t0 = core.mono_ms()
  local handles, accepted = {}, 0
  for i = 1, n do
    handles[i] = engine:submit("nap", { ms = 60000 }, OP)
  end
  local submit_ms = core.mono_ms() - t0
  engine.loop:run("nowait")
  for i = 1, n do
    local s = handles[i]:stage()
    if s ~= "done" then accepted = accepted + 1 end
  end
  local after = vmrss_kib()
  local st = engine:stats()
  print(string.format("rss\t%d\t%d\t%d\t%d\t%.0f\t%s\t%s", n, before, after, accepted, submit_ms,
    tostring(st.queued), tostring(st.running)))
  io.stdout:flush()
  handles = nil
  engine:close()
  os.execute("rm -rf '" .. dir .. "'")
end

local mode = arg[1]
if mode == "pipeline" then
  assert(arg[2] == "on" or arg[2] == "off", "pipeline on|off SECONDS WARMUP")
  pipeline(arg[2] == "on", tonumber(arg[3]) or 1.0, tonumber(arg[4]) or 0.3)
elseif mode == "rss" then
  rss(tonumber(arg[2]) or 10000)
else
  io.stderr:write("usage: luajit bench.lua pipeline on|off SECONDS WARMUP | rss N\n")
  os.exit(2)
end
