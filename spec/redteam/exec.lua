-- Executor red-team: cancellation, retries, deadlines, reentrancy, shutdown.
local common = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local rd = require "rubberduck"
local json = require "rubberduck.json"
local core = require "rubberduck.core"

local BASE = (os.getenv("RD_REDTEAM_DIR") or "/tmp/rdh") .. "/exec"
os.execute("rm -rf " .. BASE .. " && mkdir -p " .. BASE)
local LEVELS = { "strict", "balanced", "relaxed", "none" }
if arg[2] then LEVELS = {} for l in arg[2]:gmatch("[^,]+") do LEVELS[#LEVELS + 1] = l end end

local my_workers = common.my_workers

local function write(path, s) local f = assert(io.open(path, "w")) f:write(s) f:close() end
local function tools_for(level)
  local dir = BASE .. "/tools-" .. level
  os.execute("mkdir -p " .. dir)
  write(dir .. "/slow.lua", ([[return tool { metadata = { name = "slow", description = "s" },
    security = { level = %q }, execution = { timeout = 5000, handler = function(p, ctx)
      for i = 1, (p.n or 10) do ctx.progress(i, p.n or 10, "tick") ctx.sleep((p.ms or 1000) / (p.n or 10)) end
      return { v = p.v or 0 } end } }]]):format(level))
  write(dir .. "/flaky.lua", ([[return tool { metadata = { name = "flaky", description = "f" },
    security = { level = %q }, execution = { timeout = 5000, retries = 5, backoff = { initial = 1500, max = 5000, factor = 2 },
      handler = function(p, ctx) error({ retryable = true, message = "flaky attempt " .. ctx.attempt }) end } }]]):format(level))
  write(dir .. "/tmo.lua", ([[return tool { metadata = { name = "tmo", description = "t" },
    security = { level = %q }, execution = { timeout = 150, retries = 2, backoff = { initial = 10, max = 20, factor = 2 },
      handler = function(p, ctx) ctx.sleep(10000) return {} end } }]]):format(level))
  write(dir .. "/spin.lua", ([[return tool { metadata = { name = "spin", description = "sp" },
    security = { level = %q, max_cpu = 60000 }, execution = { timeout = 60000, handler = function(p, ctx)
      local x = 0 while true do x = x + 1 end end } }]]):format(level))
  write(dir .. "/quick.lua", ([[return tool { metadata = { name = "quick", description = "q" },
    security = { level = %q }, execution = { handler = function(p, ctx) return { v = p.v or 0 } end } }]]):format(level))
  return dir
end

local results = {}
local function report(name, level, good, detail)
  local line = string.format("%-4s %-28s %-8s %s", good and "OK" or "FAIL", name, level, detail)
  results[#results + 1] = { good = good, line = line }
  print(line); io.stdout:flush()
end

local function kind(env) if not env then return "NIL" end return env.status == "ok" and "ok" or (type(env.error) == "table" and env.error.kind or "?") end
local now = core.mono_ms

local scenarios = {}
local function S(name, fn) scenarios[#scenarios + 1] = { name = name, fn = fn } end

S("cancel_in_retry_wait", function(e)
  local h = e:submit("flaky", {})
  local t0 = now()
  while h:stage() ~= "retry_wait" and now() - t0 < 4000 do e.loop:run("once") end
  local st = h:stage()
  local tc = now()
  h:cancel()
  local env = h:wait(3000)
  return kind(env) == "cancelled" and now() - tc < 500 and env.metadata.attempts == 1,
    ("stage=%s kind=%s attempts=%s after=%.0fms"):format(st, kind(env), env and tostring(env.metadata.attempts), now() - tc)
end)

S("deadline_lt_timeout", function(e)
  local t0 = now()
  local env = e:submit("slow", { ms = 3000 }, nil, { deadline_ms = 300 }):wait(6000)
  local dt = now() - t0
  return kind(env) == "timeout" and dt < 1500, ("kind=%s after=%.0fms"):format(kind(env), dt)
end)

S("deadline_in_backoff", function(e)
  local t0 = now()
  local env = e:submit("flaky", {}, nil, { deadline_ms = 700 }):wait(8000)
  local dt = now() - t0
  return (kind(env) == "tool_error" or kind(env) == "timeout") and dt < 1500 and env.metadata.attempts == 1,
    ("kind=%s attempts=%s after=%.0fms msg=%s"):format(kind(env), env and tostring(env.metadata.attempts), dt, tostring(env and env.error and env.error.message))
end)

S("deadline_zero_negative", function(e)
  local a = e:submit("quick", {}, nil, { deadline_ms = 0 }):wait(3000)
  local b = e:submit("quick", {}, nil, { deadline_ms = -100 }):wait(3000)
  local c = e:submit("quick", {}, nil, { deadline_ms = 0/0 }):wait(3000)
  local d = e:submit("quick", {}, nil, { deadline_ms = 1e300 }):wait(3000)
  return a ~= nil and b ~= nil and c ~= nil and kind(d) == "ok",
    ("0:%s  -100:%s  nan:%s  huge:%s"):format(kind(a), kind(b), kind(c), kind(d))
end)

S("timeout_retries_count", function(e)
  local t0 = now()
  local env = e:submit("tmo", {}):wait(8000)
  local dt = now() - t0
  return kind(env) == "timeout" and env.metadata.attempts == 3 and dt < 3000,
    ("kind=%s attempts=%s after=%.0fms"):format(kind(env), env and tostring(env.metadata.attempts), dt)
end)

S("many_cancels", function(e)
  local hs = {}
  for i = 1, 40 do hs[i] = e:submit("slow", { ms = 4000, v = i }) end
  for i = 1, 5 do e.loop:run("nowait") end
  local t0 = now()
  for i = 40, 1, -2 do hs[i]:cancel() end
  for i = 1, 40, 2 do e:cancel(hs[i].id); hs[i]:cancel() end
  local bad = 0
  for i = 1, 40 do local env = hs[i]:wait(3000) if kind(env) ~= "cancelled" then bad = bad + 1 end end
  local dt = now() - t0
  local again = 0
  for i = 1, 40 do if hs[i]:cancel() or e:cancel(hs[i].id) then again = again + 1 end end
  local q = e:execute("quick", { v = 7 })
  return bad == 0 and again == 0 and kind(q) == "ok" and dt < 3000,
    ("not-cancelled=%d late-cancel-true=%d after=%.0fms next=%s"):format(bad, again, dt, kind(q))
end)

S("cancel_from_progress", function(e)
  local h
  h = e:submit("slow", { ms = 2000, n = 20 }, nil, { on_progress = function(d) if d == 2 then h:cancel() end end })
  local env = h:wait(5000)
  local q = e:execute("quick", {})
  return kind(env) == "cancelled" and kind(q) == "ok", ("kind=%s next=%s"):format(kind(env), kind(q))
end)

S("wait_in_progress_cb", function(e)
  local inner
  local h = e:submit("slow", { ms = 600, n = 6 }, nil, { on_progress = function(d)
    if d == 1 and not inner then inner = e:submit("quick", { v = 5 }):wait(3000) end end })
  local env = h:wait(6000)
  return kind(env) == "ok" and kind(inner) == "ok", ("outer=%s inner=%s"):format(kind(env), kind(inner))
end)

S("submit_in_on_done", function(e)
  local second
  local h = e:submit("quick", { v = 1 }, nil, { on_done = function(env) second = e:submit("quick", { v = 2 }) end })
  local env = h:wait(3000)
  local env2 = second and second:wait(3000)
  return kind(env) == "ok" and kind(env2) == "ok" and env2.output.v == 2, ("first=%s second=%s"):format(kind(env), kind(env2))
end)

S("cancel_spin", function(e)
  local h = e:submit("spin", {})
  local t0 = now()
  while h:stage() ~= "running" and now() - t0 < 3000 do e.loop:run("once", 10) end
  -- let it get hot
  local t1 = now() while now() - t1 < 300 do e.loop:run("once", 10) end
  local tc = now()
  h:cancel()
  local env = h:wait(5000)
  local q = e:execute("quick", {})
  return kind(env) == "cancelled" and now() - tc < 2000 and kind(q) == "ok",
    ("kind=%s after=%.0fms next=%s"):format(kind(env), now() - tc, kind(q))
end)

S("wait_zero_then_continue", function(e)
  local h = e:submit("slow", { ms = 300, n = 3 })
  local a, why = h:wait(0)
  local env = h:wait(5000)
  return a == nil and kind(env) == "ok", ("first=%s/%s then=%s"):format(tostring(a), tostring(why), kind(env))
end)

S("cancel_then_refill", function(e)
  local bad = 0
  for r = 1, 5 do
    local h = e:submit("slow", { ms = 2000, n = 2 })
    for i = 1, 3 do e.loop:run("nowait") end
    h:cancel()
    if kind(h:wait(3000)) ~= "cancelled" then bad = bad + 1 end
    local q = e:execute("quick", { v = r })
    if kind(q) ~= "ok" or q.output.v ~= r then bad = bad + 1 end
  end
  return bad == 0, "bad=" .. bad
end)

S("overload_flood", function(e)
  local hs, over, t0 = {}, 0, now()
  for i = 1, 3000 do hs[i] = e:submit("slow", { ms = 2000, n = 1 }) end
  for i = 1, #hs do if hs[i].done and kind(hs[i].envelope) == "overloaded" then over = over + 1 end end
  for i = 1, #hs do hs[i]:cancel() end
  local bad = 0
  for i = 1, #hs do local env = hs[i]:wait(5000) local k = kind(env) if k ~= "cancelled" and k ~= "overloaded" then bad = bad + 1 end end
  local q = e:execute("quick", {})
  return over > 0 and bad == 0 and kind(q) == "ok", ("overloaded=%d other=%d next=%s dt=%.0fms"):format(over, bad, kind(q), now() - t0)
end)

S("close_with_inflight", function(e, level, dir)
  local e2 = assert(rd.open { tools = dir, data_dir = BASE .. "/d2-" .. level })
  local hs = {}
  for i = 1, 12 do hs[i] = e2:submit(i % 2 == 0 and "slow" or "spin", { ms = 5000 }) end
  for i = 1, 20 do e2.loop:run("once", 10) end
  e2:close()
  local bad = 0
  for i = 1, #hs do local k = kind(hs[i]:wait(100)) if k ~= "cancelled" then bad = bad + 1 end end
  local nw, pids = my_workers()
  return bad == 0, ("not-cancelled=%d workers-after-close(all engines)=%d %s"):format(bad, nw, pids)
end)

S("close_in_progress_cb", function(e, level, dir)
  local e2 = assert(rd.open { tools = dir, data_dir = BASE .. "/d3-" .. level })
  local ok, err
  local h = e2:submit("slow", { ms = 2000, n = 20 }, nil, { on_progress = function(d)
    if d == 2 then ok, err = pcall(e2.close, e2) end end })
  local env = h:wait(5000)
  if not e2.closed then pcall(e2.close, e2) end
  return env ~= nil, ("close-in-cb=%s/%s kind=%s"):format(tostring(ok), tostring(err), kind(env))
end)

for _, level in ipairs(LEVELS) do
  local dir = tools_for(level)
  local e = assert(rd.open { tools = dir, data_dir = BASE .. "/d-" .. level, max_queue = 100 })
  assert(#e.problems == 0, table.concat(e.problems, "\n"))
  for _, s in ipairs(scenarios) do
    if not arg[1] or arg[1] == "all" or s.name:find(arg[1]) then
      local ok, good, detail = pcall(s.fn, e, level, dir)
      if not ok then good, detail = false, "HARNESS: " .. tostring(good) end
      report(s.name, level, good, detail)
    end
  end
  e:close()
  local nw, pids = my_workers()
  report("workers_after_close", level, nw == 0, ("workers=%d %s"):format(nw, pids))
end
local nf = 0 for _, r in ipairs(results) do if not r.good then nf = nf + 1 end end
print(("== %d scenarios, %d not as expected"):format(#results, nf))
