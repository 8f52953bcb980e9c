-- workers_spec.lua — how strict and balanced calls reach their worker
-- processes (lua/rubberduck/workers.lua, core/sandbox/worker.c): the strict
-- stock of processes with the tool defined, and the balanced worker whose
-- states are restored from a snapshot after each call. What they must not
-- change: a strict call runs in a process of its own, every call starts
-- from a pristine state, and no process outlives its tool.

local H = require "helpers"
local workers = require "rubberduck.workers"
local registry = require "rubberduck.registry"

local OP = { principal = "op", capabilities = { "*" } }

-- A tool that poisons everything it can reach and reports what it found
-- from the previous call.
local POISON = [[function(p)
  local seen = { count = counter, upper = string.upper ~= nil, meta = ("x"):upper() == "X",
                 lib = table.concat ~= nil }
  counter = (counter or 0) + 1
  string.upper = nil
  table.concat = nil
  hog = {} for i = 1, 5000 do hog[i] = tostring(i) end
  return seen
end]]

local function alive(pid)
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0
end

-- Has process `pid` gone within 5 s?
local function gone(pid)
  for _ = 1, 100 do
    if not alive(pid) then return true end
    os.execute("sleep 0.05")
  end
  return false
end

-- Run the engine's loop until ok() or `ms` pass.
local function run_until(engine, ms, ok)
  local done = false
  local tm = engine.loop:timer(ms, function() done = true end)
  while not done and not ok() do engine.loop:run("once") end
  tm:stop()
  return ok()
end

-- The state of tool `name` that served its last call (the registry keeps
-- idle states in a pool; the last one given back is reused first).
local function last_state(engine, name)
  local t = engine.registry:get(name)
  return t.idle[#t.idle]
end

local function skip_unless_runnable(level)
  if not registry.RUNNABLE[level] then
    pending("level " .. level .. " needs rduck-worker")
    return true
  end
end

-- `total` calls of `name`, `at_once` in flight (each one done submits the
-- next); returns how they ended: { ok = n, <error kind> = n, ... }.
local function kinds_of_calls(engine, name, at_once, total)
  local left, inflight, kinds = total, 0, {}
  local function submit()
    left = left - 1
    inflight = inflight + 1
    engine:submit(name, {}, OP, { on_done = function(env)
      inflight = inflight - 1
      local k = env.status == "ok" and "ok" or env.error.kind
      kinds[k] = (kinds[k] or 0) + 1
      if left > 0 then submit() end
    end })
  end
  for _ = 1, at_once do submit() end
  while inflight > 0 do engine.loop:run("once") end
  return kinds
end

describe("workers", function()
  teardown(function() H.cleanup() end)

  it("balanced: every call starts from a pristine state, in the same worker", function()
    if skip_unless_runnable("balanced") then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "poison", H.tool_source({ name = "poison", level = "balanced", handler = POISON }))
    local engine = H.open_engine(dir)
    local pids = {}
    for i = 1, 6 do
      local env = engine:execute("poison", {}, OP)
      assert.equal("ok", env.status, i .. ": " .. H.encode(env.error))
      -- nothing from the previous call: no counter, the string library whole
      assert.is_nil(env.output.count, "call " .. i)
      assert.is_true(env.output.upper, "call " .. i)
      assert.is_true(env.output.meta, "call " .. i)
      assert.is_true(env.output.lib, "call " .. i)
      local idle = engine.workers.bal[engine.registry:get("poison")].idle
      pids[i] = idle[#idle] and idle[#idle].w:pid()
    end
    -- one pooled worker served them all (the later ones from a snapshot)
    for i = 2, 6 do assert.equal(pids[1], pids[i]) end
    engine:close()
  end)

  -- Run fn with workers.BALANCED_WORKERS set to n, put back whatever fn does.
  local function with_balanced_workers(n, fn)
    local saved = workers.BALANCED_WORKERS
    workers.BALANCED_WORKERS = n
    local ok, err = pcall(fn)
    workers.BALANCED_WORKERS = saved
    assert(ok, err)
  end

  it("balanced: a tool's calls share at most BALANCED_WORKERS workers, the others wait", function()
    if skip_unless_runnable("balanced") then return end
    with_balanced_workers(2, function()
      local dir = H.tmpdir()
      H.write_tool(dir, "share", H.tool_source({ name = "share", level = "balanced",
        execution = "concurrency = 8, timeout = 20000",
        handler = "function(p, ctx) ctx.sleep(20) return { ok = true } end" }))
      local engine = H.open_engine(dir, { max_running = 8, store = false })
      local t = engine.registry:get("share")
      local kinds, inflight, max_n, max_waiting = {}, 0, 0, 0
      for _ = 1, 8 do
        inflight = inflight + 1
        engine:submit("share", {}, OP, { on_done = function(env)
          inflight = inflight - 1
          local k = env.status == "ok" and "ok" or env.error.kind
          kinds[k] = (kinds[k] or 0) + 1
        end })
      end
      while inflight > 0 do
        local b = engine.workers.bal[t]
        if b then
          max_n = math.max(max_n, b.n)
          max_waiting = math.max(max_waiting, #b.waiting)
        end
        engine.loop:run("once")
      end
      assert.same({ ok = 8 }, kinds)
      assert.is_true(max_n <= 2, max_n .. " workers for a cap of 2")
      assert.is_true(max_waiting >= 1, "no call waited for a worker")
      -- the calls ran in two processes, both still serving
      local pids = {}
      for _, e in ipairs(engine.workers.bal[t].idle) do pids[#pids + 1] = e.w:pid() end
      assert.equal(2, #pids)
      for _, pid in ipairs(pids) do assert.is_true(alive(pid)) end
      engine:close()
      for _, pid in ipairs(pids) do assert.is_true(gone(pid), "worker " .. pid .. " outlived its engine") end
    end)
  end)

  it("balanced: a call whose deadline passes while it waits for a worker leaves it to the next", function()
    if skip_unless_runnable("balanced") then return end
    with_balanced_workers(1, function()
      local dir = H.tmpdir()
      H.write_tool(dir, "slow", H.tool_source({ name = "slow", level = "balanced",
        execution = "concurrency = 4, timeout = 20000",
        handler = "function(p, ctx) ctx.sleep(p.ms or 0) return { ms = p.ms } end",
        parameters = "{ ms = { type = 'integer' } }" }))
      local engine = H.open_engine(dir, { store = false })
      local t = engine.registry:get("slow")
      assert.equal("ok", engine:execute("slow", {}, OP).status) -- its worker exists
      local b = engine.workers.bal[t]
      local pid = b.idle[1].w:pid()
      local got = {}
      engine:submit("slow", { ms = 300 }, OP, { on_done = function(env) got.a = env end })
      engine:submit("slow", {}, OP, { deadline_ms = 50, on_done = function(env) got.b = env end })
      while not (got.a and got.b) do engine.loop:run("once") end
      assert.equal("ok", got.a.status)
      assert.equal("timeout", got.b.error.kind)
      -- the worker went back to the tool, and serves the next call
      assert.equal(1, b.n)
      assert.equal(0, #b.waiting)
      local env = engine:execute("slow", { ms = 1 }, OP)
      assert.equal("ok", env.status)
      assert.equal(pid, b.idle[1].w:pid())
      engine:close()
    end)
  end)

  it("balanced: a worker's replacement is readied before its last call, pristine", function()
    if skip_unless_runnable("balanced") then return end
    local saved_max, saved_ahead = workers.MAX_CALLS, workers.SPARE_AHEAD
    workers.MAX_CALLS, workers.SPARE_AHEAD = 6, 3
    local ok, err = pcall(function()
      local dir = H.tmpdir()
      H.write_tool(dir, "poison", H.tool_source({ name = "poison", level = "balanced", handler = POISON }))
      local engine = H.open_engine(dir, { store = false })
      local t = engine.registry:get("poison")
      local function call(i)
        local env = engine:execute("poison", {}, OP)
        assert.equal("ok", env.status, i .. ": " .. H.encode(env.error))
        assert.is_nil(env.output.count, "call " .. i)
        assert.is_true(env.output.upper, "call " .. i)
        return engine.workers.bal[t].idle[1]
      end
      local first = call(1).w:pid()
      call(2)
      local b = engine.workers.bal[t]
      assert.is_nil(b.spare)
      assert.equal(first, call(3).w:pid()) -- 3 calls sent: 3 before the 6th
      assert.is_true(run_until(engine, 5000, function() return b.spare ~= nil end),
        "no replacement readied")
      local spare = b.spare.w:pid()
      assert.are_not.equal(first, spare)
      for i = 4, 5 do assert.equal(first, call(i).w:pid()) end
      -- the 6th call is the worker's last: it retires after answering
      assert.is_nil(call(6))
      assert.is_true(run_until(engine, 5000, function() return not alive(first) end),
        "the retired worker still runs")
      -- the next call runs in the replacement, which defined the tool ahead
      assert.equal(spare, call(7).w:pid())
      assert.is_nil(b.spare)
      assert.equal(1, b.n)
      engine:close()
      assert.is_true(gone(spare), "the replacement outlived its engine")
    end)
    workers.MAX_CALLS, workers.SPARE_AHEAD = saved_max, saved_ahead
    assert(ok, err)
  end)

  it("balanced with allowed_paths: pristine states too (rebuilt, no snapshot)", function()
    if skip_unless_runnable("balanced") then return end
    local dir = H.tmpdir()
    local root = H.tmpdir()
    H.write_tool(dir, "poison", H.tool_source({ name = "poison", level = "balanced", handler = POISON,
      security = ("allowed_paths = { %q }"):format(root) }))
    local engine = H.open_engine(dir)
    for i = 1, 4 do
      local env = engine:execute("poison", {}, OP)
      assert.equal("ok", env.status)
      assert.is_nil(env.output.count, "call " .. i)
      assert.is_true(env.output.upper, "call " .. i)
    end
    engine:close()
  end)

  it("strict: a stock of defined processes, each used once, gone with the tool", function()
    if skip_unless_runnable("strict") then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "poison", H.tool_source({ name = "poison", level = "strict", handler = POISON }))
    local engine = H.open_engine(dir)
    local function stock() return last_state(engine, "poison").s.stock end
    local function depth() return last_state(engine, "poison").s.depth end
    -- no stock before the first call
    assert.equal(0, #stock())
    assert.equal("ok", engine:execute("poison", {}, OP).status)
    assert.is_true(run_until(engine, 10000, function()
      local s = stock()
      if #s < depth() then return false end
      for _, e in ipairs(s) do if not e.base_cpu then return false end end
      return true
    end), "the stock did not fill")

    -- a call takes the oldest stocked process; it exits after the call
    local used = stock()[1].pid
    local env = engine:execute("poison", {}, OP)
    assert.equal("ok", env.status)
    assert.is_nil(env.output.count)
    assert.is_true(env.output.upper)
    assert.is_true(run_until(engine, 5000, function() return not alive(used) end),
      "a strict process served a second call's turn")
    for _, e in ipairs(stock()) do assert.are_not.equal(used, e.pid) end

    -- a stocked process that dies is dropped; calls go on
    assert.is_true(run_until(engine, 10000, function() return #stock() == depth() end))
    local victim = stock()[1].pid
    os.execute("kill -9 " .. victim)
    assert.is_true(run_until(engine, 5000, function()
      for _, e in ipairs(stock()) do if e.pid == victim then return false end end
      return true
    end), "a dead process stayed in the stock")
    for _ = 1, 3 do assert.equal("ok", engine:execute("poison", {}, OP).status) end

    -- reloading the tool gives the old stock up (its processes are killed)
    assert.is_true(run_until(engine, 10000, function() return #stock() == depth() end))
    local old = {}
    for _, e in ipairs(stock()) do old[#old + 1] = e.pid end
    assert.is_true((engine:load_tools(nil, { dir .. "/poison.lua" })))
    assert.is_true(run_until(engine, 5000, function()
      for _, pid in ipairs(old) do if alive(pid) then return false end end
      return true
    end), "the replaced tool's stock outlived it")
    assert.equal("ok", engine:execute("poison", {}, OP).status)
    engine:close()
  end)

  local function ppid(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return nil end
    local line = f:read("*l")
    f:close()
    return tonumber(line:match("%) %a (%d+)"))
  end

  it("strict: processes forked from the tool's template, each pristine, gone with the tool", function()
    if skip_unless_runnable("strict") then return end
    local dir = H.tmpdir()
    -- state made by the definition (an upvalue) and by calls (globals)
    H.write_tool(dir, "tp", H.tool_source({ name = "tp", level = "strict",
      prelude = "local n = 0",
      handler = [[function(p)
        n = n + 1
        local seen = { n = n, g = gcount, upper = string.upper ~= nil }
        gcount = (gcount or 0) + 1
        string.upper = nil
        return seen
      end]] }))
    local engine = H.open_engine(dir)
    for i = 1, 6 do
      local env = engine:execute("tp", {}, OP)
      assert.equal("ok", env.status, i .. ": " .. H.encode(env.error))
      assert.same({ n = 1, upper = true }, env.output, "call " .. i)
    end
    local st = last_state(engine, "tp").s
    local t = st.template
    assert.is_table(t, "the tool has no template")
    assert.is_truthy(t.z, "the template is not serving")
    local tpid = t.z:pid()
    assert.is_true(alive(tpid))
    assert.is_true(run_until(engine, 10000, function() return #st.stock == st.depth end),
      "the stock did not fill")
    for _, e in ipairs(st.stock) do
      assert.equal(tpid, ppid(e.pid), "a stocked process not forked from the template")
    end
    -- a template that dies (its processes with it) is replaced; calls go on
    os.execute("kill -9 " .. tpid)
    assert.is_true(run_until(engine, 5000, function() return st.template == nil end),
      "the template's end went unnoticed")
    assert.equal(0, #st.stock, "processes of a dead template stayed in the stock")
    for i = 1, 4 do
      local env = engine:execute("tp", {}, OP)
      assert.equal("ok", env.status, "after the template died, call " .. i .. ": " .. H.encode(env.error))
      assert.same({ n = 1, upper = true }, env.output)
    end
    assert.is_true(run_until(engine, 10000, function()
      return st.template and st.template.z and st.template.z:pid() ~= tpid
    end), "no new template")
    -- reloading the tool ends its template and its stock
    local tpid2 = st.template.z:pid()
    assert.is_true(run_until(engine, 10000, function() return #st.stock == st.depth end))
    local old = { tpid2 }
    for _, e in ipairs(st.stock) do old[#old + 1] = e.pid end
    assert.is_true((engine:load_tools(nil, { dir .. "/tp.lua" })))
    assert.is_true(run_until(engine, 5000, function()
      for _, pid in ipairs(old) do if alive(pid) then return false end end
      return true
    end), "the replaced tool's template or stock outlived it")
    assert.equal("ok", engine:execute("tp", {}, OP).status)
    local tpid3 = last_state(engine, "tp").s.template.z:pid()
    engine:close()
    for _ = 1, 40 do
      if not alive(tpid3) then break end
      os.execute("sleep 0.05")
    end
    assert.is_false(alive(tpid3), "a template outlived its engine")
  end)

  -- A process forked from the template writes as few inherited pages as it
  -- can (core/sandbox/lstate.h, rd__lstate_forked): its heaps hand out new
  -- blocks only, inherited ones are never reused. Hostile uses of that: the
  -- tool frees what it inherited and churns garbage many times its cap, floods
  -- notes, or bombs its memory; each call still ends as at any level.
  it("strict: a forked process keeps its memory cap and reuses its own garbage", function()
    if skip_unless_runnable("strict") then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "churn", H.tool_source({ name = "churn", level = "strict",
      security = "max_memory = 8 * 1024 * 1024, max_cpu = 5000",
      execution = "timeout = 20000",
      prelude = "local big = {} for i = 1, 20000 do big[i] = { i, tostring(i) } end",
      handler = [[function(p, ctx)
        if p.mode == "churn" then
          big = nil -- inherited: freed by the collector, never reused
          for r = 1, 100 do
            local t = {}
            for i = 1, 2000 do t[i] = ("x"):rep(200) .. i end
          end
          return { ok = true }
        elseif p.mode == "notes" then
          for i = 1, 20000 do ctx.progress(i, 20000, "step") end
          return { ok = true }
        end
        local t = {}
        for i = 1, 1e7 do t[i] = ("y"):rep(100) .. i end
        return { ok = false }
      end]] }))
    local engine = H.open_engine(dir)
    -- twice each: the first call may find no stocked process, the second does
    for i = 1, 2 do
      local env = engine:execute("churn", { mode = "churn" }, OP)
      assert.equal("ok", env.status, "churn " .. i .. ": " .. H.encode(env.error))
      env = engine:execute("churn", { mode = "notes" }, OP)
      assert.equal("ok", env.status, "notes " .. i .. ": " .. H.encode(env.error))
      local stocked = engine.workers.stocked[1]
      assert.is_truthy(stocked and stocked.template, "the tool has no template: its processes were not forked")
      env = engine:execute("churn", { mode = "bomb" }, OP)
      assert.equal("error", env.status)
      assert.equal("memory_limit", env.error.kind, H.encode(env.error))
    end
    engine:close()
  end)

  -- The pid of every worker process a call frame was sent to (the
  -- worker's send method, wrapped for the duration of fn).
  local function with_call_pids(fn)
    local mt = debug.getregistry()["rubberduck.worker"]
    local real = mt.send
    local pids = {}
    mt.send = function(w, text)
      if text:find('"op":"call"', 1, true) then pids[#pids + 1] = w:pid() end
      return real(w, text)
    end
    local ok, err = pcall(fn, pids)
    mt.send = real
    assert(ok, err)
    return pids
  end

  it("strict: a stock refilled ahead and deepened under load still gives each call its own process", function()
    if skip_unless_runnable("strict") then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "once", H.tool_source({ name = "once", level = "strict",
      execution = "concurrency = 16, timeout = 20000",
      prelude = "local n = 0",
      handler = [[function(p) n = n + 1; g = (g or 0) + 1; return { n = n, g = g } end]] }))
    local engine = H.open_engine(dir, { max_running = 16, store = false })
    local outs, peak = {}, 0
    local pids = with_call_pids(function()
      -- back to back: each call finds the stock drained more often than not
      for i = 1, 30 do
        local env = engine:execute("once", {}, OP)
        assert.equal("ok", env.status, i .. ": " .. H.encode(env.error))
        outs[#outs + 1] = env.output
        peak = math.max(peak, last_state(engine, "once").s.depth)
      end
      -- 16 at once, twice over
      local left, inflight = 32, 0
      local function submit()
        left = left - 1
        inflight = inflight + 1
        engine:submit("once", {}, OP, { on_done = function(env)
          inflight = inflight - 1
          assert.equal("ok", env.status, H.encode(env.error))
          outs[#outs + 1] = env.output
          if left > 0 then submit() end
        end })
      end
      for _ = 1, 16 do submit() end
      while inflight > 0 do engine.loop:run("once") end
    end)
    assert.equal(62, #outs)
    -- every call started from the definition's state, in a process no
    -- other call used
    for i, o in ipairs(outs) do assert.same({ n = 1, g = 1 }, o, "call " .. i) end
    assert.equal(62, #pids)
    local seen = {}
    for _, pid in ipairs(pids) do
      assert.is_nil(seen[pid], "process " .. pid .. " served two calls")
      seen[pid] = true
    end
    -- the stock grew past its resting size under back-to-back calls,
    -- within its bound, and what it holds now are processes no call has used
    local st = last_state(engine, "once").s
    assert.is_true(peak > workers.STOCK and peak <= workers.STOCK_MAX, "depth " .. peak)
    assert.is_true(st.depth >= workers.STOCK and st.depth <= workers.STOCK_MAX, "depth " .. st.depth)
    assert.is_true(run_until(engine, 10000, function() return #st.stock == st.depth end),
      "the stock did not fill to its depth")
    for _, e in ipairs(st.stock) do
      assert.is_nil(seen[e.pid], "a used process is back in the stock")
      assert.is_true(alive(e.pid))
    end
    -- calls that find the stock full shrink it back to its resting size
    for _ = 1, 2 * workers.STOCK_MAX do
      assert.is_true(run_until(engine, 10000, function() return #st.stock >= st.depth end))
      assert.equal("ok", engine:execute("once", {}, OP).status)
    end
    assert.equal(workers.STOCK, st.depth)
    -- a call that leaves others ready asks for its replacement when it
    -- ends (the fork would compete with it); one that takes the last
    -- ready process asks at once (the fork overlaps it)
    local function full()
      return run_until(engine, 10000, function()
        return #st.stock == st.depth and st.stock_pending == 0
      end)
    end
    assert.is_true(full())
    local h = engine:submit("once", {}, OP)
    assert.equal(st.depth - 1, #st.stock)
    assert.equal(0, st.stock_pending, "a replacement asked for while others were ready")
    assert.equal("ok", h:wait().status)
    assert.equal(1, st.stock_pending + #st.stock - (st.depth - 1),
      "no replacement asked for when the call ended")
    assert.is_true(full())
    local hs = {}
    for i = 1, st.depth do
      hs[i] = engine:submit("once", {}, OP)
      -- (the last asks for a whole stock)
      assert.equal(i == st.depth and st.depth or 0, st.stock_pending, "call " .. i)
    end
    for _, x in ipairs(hs) do assert.equal("ok", x:wait().status) end
    engine:close()
  end)

  it("spinning for the answer is chosen per level: never for strict", function()
    if skip_unless_runnable("strict") or skip_unless_runnable("balanced") then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "s", H.tool_source({ name = "s", level = "strict" }))
    H.write_tool(dir, "b", H.tool_source({ name = "b", level = "balanced" }))
    local engine = H.open_engine(dir, { store = false })
    assert.equal(workers.SPIN_US_STRICT, workers.spin_us(engine.registry:get("s")))
    assert.equal(workers.SPIN_US, workers.spin_us(engine.registry:get("b")))
    assert.equal(workers.SPIN_US, workers.spin_us(nil))
    assert.equal(0, workers.SPIN_US_STRICT)
    -- what Handle:wait hands the loop: a spin time for balanced, none
    -- for strict
    local mt = getmetatable(engine.loop)
    local real = mt.__index.run
    local spins
    mt.__index.run = function(loop, mode, spin)
      if spins and mode == "once" then spins[#spins + 1] = spin or 0 end
      return real(loop, mode, spin)
    end
    local function max_spin(name)
      engine:execute(name, {}, OP) -- warm: the first call starts processes
      spins = {}
      local env = engine:execute(name, {}, OP)
      local m = 0
      for _, v in ipairs(spins) do if v > m then m = v end end
      spins = nil
      assert.equal("ok", env.status)
      return m
    end
    local ok, err = pcall(function()
      assert.equal(0, max_spin("s"))
      assert.is_true(max_spin("b") > 0)
    end)
    mt.__index.run = real
    assert(ok, err)
    engine:close()
  end)

  it("strict without templates: each process defines the tool itself", function()
    if skip_unless_runnable("strict") then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "nt", H.tool_source({ name = "nt", level = "strict", handler = POISON }))
    workers.TEMPLATES = false
    local ok, err = pcall(function()
      local engine = H.open_engine(dir)
      for i = 1, 5 do
        local env = engine:execute("nt", {}, OP)
        assert.equal("ok", env.status, i .. ": " .. H.encode(env.error))
        assert.is_nil(env.output.count)
        assert.is_true(env.output.upper)
      end
      local st = last_state(engine, "nt").s
      assert.is_nil(st.template)
      assert.is_true(run_until(engine, 10000, function() return #st.stock == st.depth end))
      -- each defined its tool itself: a child of the zygote, not of a template
      local zpid = engine.workers.zygote:pid()
      for _, e in ipairs(st.stock) do assert.equal(zpid, ppid(e.pid)) end
      engine:close()
    end)
    workers.TEMPLATES = true
    assert(ok, err)
  end)

  it("strict: only the most recently used tools keep a stock", function()
    if skip_unless_runnable("strict") then return end
    local dir = H.tmpdir()
    local n = workers.STOCK_TOOLS + 2
    for i = 1, n do
      H.write_tool(dir, "s" .. i, H.tool_source({ name = "s" .. i, level = "strict" }))
    end
    local engine = H.open_engine(dir)
    for i = 1, n do assert.equal("ok", engine:execute("s" .. i, {}, OP).status) end
    run_until(engine, 200, function() return false end)
    local with = 0
    for i = 1, n do
      local st = last_state(engine, "s" .. i).s
      if #st.stock + st.stock_pending > 0 then with = with + 1 end
    end
    assert.is_true(with <= workers.STOCK_TOOLS, with .. " tools keep a stock")
    assert.equal(0, #last_state(engine, "s1").s.stock)
    engine:close()
  end)

  it("a request the zygote's socket refuses is sent again, in batches it accepts", function()
    if skip_unless_runnable("balanced") then return end
    local engine = H.open_engine(H.tmpdir())
    local pool = engine.workers
    assert.is_true((pool:_start()))
    local real = pool.zygote
    local asked, refuse = {}, 3
    pool.zygote = { spawn = function(_, n)
      if refuse > 0 then refuse = refuse - 1; return false end
      asked[#asked + 1] = n
      return true
    end }
    pool.owed = 150
    pool:refill()
    local sum = 0
    assert.is_true(run_until(engine, 5000, function()
      sum = 0
      for _, n in ipairs(asked) do sum = sum + n end
      return sum == 150
    end), "requests refused once were lost: " .. sum .. " of 150 asked")
    for _, n in ipairs(asked) do assert.is_true(n <= workers.SPAWN_BATCH, n .. " in one request") end
    assert.is_nil(pool.unsent)
    pool.zygote = real
    engine:close()
  end)

  it("100 strict calls at once, then none: every one gets its process (the template forks all it is asked for)", function()
    -- The template used to fork at most 64 per request while the engine
    -- counted on all of them: with no later call to ask again, the rest
    -- waited for their deadline.
    if skip_unless_runnable("strict") then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "s", H.tool_source({ name = "s", level = "strict",
      execution = "concurrency = 100, timeout = 15000" }))
    local engine = H.open_engine(dir, { max_running = 100, store = false })
    assert.same({ ok = 100 }, kinds_of_calls(engine, "s", 100, 100))
    engine:close()
  end)

  it("256 balanced calls in flight at once: every one gets a worker", function()
    if skip_unless_runnable("balanced") then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "b", H.tool_source({ name = "b", level = "balanced",
      execution = "concurrency = 256, timeout = 20000" }))
    local engine = H.open_engine(dir, { max_running = 256, store = false })
    assert.same({ ok = 512 }, kinds_of_calls(engine, "b", 256, 512))
    engine:close()
  end)
end)
