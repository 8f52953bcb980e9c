-- recheck_spec.lua — session 7's independent re-check of two changes to the
-- executor's workers and spins: a strict tool's stock of ready processes
-- (lua/rubberduck/workers.lua: a strict call that leaves others ready asks
-- for its replacement when it ends) and the loop's and call threads'
-- choice to pause or yield by comparing their CPUs (core/lua/l_loop.c,
-- l_lstate.c). Behaviour only: every call ends as it should, the stock is
-- there again after failures, nothing waits for ever.

local H = require "helpers"
local workers = require "rubberduck.workers"

local OP = { principal = "recheck", capabilities = { "*" } }

-- Run the engine's loop until cond() holds or `ms` pass; returns cond().
local function run_until(engine, ms, cond)
  local over = false
  local t = engine.loop:timer(ms, function() over = true end)
  while not over and not cond() do engine.loop:run("once") end
  t:stop()
  return cond()
end

local function kind(env)
  if env == nil then return "none" end
  return env.status == "ok" and "ok" or env.error.kind
end

describe("a strict tool's stock", function()
  teardown(function() H.cleanup() end)

  local function skip()
    if not workers.available() then
      pending("strict needs rduck-worker")
      return true
    end
  end

  local SRC = H.tool_source{ name = "mixed", level = "strict",
    security = "max_cpu = 300",
    execution = "timeout = 2000",
    parameters = [[{ type = "object", properties = { how = { type = "string" }, n = { type = "integer" } } }]],
    handler = [[function(p, ctx)
      if p.how == "error" then error("boom") end
      if p.how == "sleep" then ctx.sleep(20000) end
      if p.how == "spin" then while true do end end
      if p.how == "mem" then local t = {} for i = 1, 1e9 do t[i] = { i } end end
      if p.how == "deep" then local function f() return coroutine.wrap(f)() end f() end
      return { n = p.n }
    end]] }

  -- An engine whose tool "mixed" has served a first call: the engine, the
  -- tool, its stock, and whether that stock is full.
  local function stocked(n)
    local dir = H.tmpdir()
    H.write_tool(dir, "mixed", SRC)
    local engine = H.open_engine(dir, { store = false })
    local t = engine.registry:get("mixed")
    assert.equal("ok", kind(engine:execute("mixed", { n = n }, OP)))
    local st = engine.workers.shared[t]
    assert.truthy(st, "no stock after the first call")
    return engine, t, st, function() return #st.stock >= st.depth and st.stock_pending == 0 end
  end

  it("survives calls that fail, time out, breach a limit or are cancelled, and refills", function()
    if skip() then return end
    local engine, t, st, full = stocked(1)
    assert.is_true(run_until(engine, 20000, full), "the stock never filled")
    local template = st.template
    local cases = {
      { how = "error", want = { tool_error = true } },
      { how = "spin", want = { cpu_limit = true, timeout = true } },
      { how = "mem", want = { memory_limit = true, cpu_limit = true, timeout = true } },
      { how = "deep", want = { tool_error = true, crashed = true, cpu_limit = true, timeout = true } },
      { how = "sleep", deadline = 200, want = { timeout = true } },
      { how = "sleep", cancel = true, want = { cancelled = true } },
    }
    for i, c in ipairs(cases) do
      local h = engine:submit("mixed", { how = c.how, n = i }, OP, { deadline_ms = c.deadline })
      if c.cancel then
        run_until(engine, 300, function() return false end)
        h:cancel()
      end
      local env = h:wait(30000)
      assert.is_truthy(c.want[kind(env)], c.how .. " ended as " .. kind(env))
      -- the same stock and template serve on, full again, nobody waiting
      assert.equal(st, engine.workers.shared[t], c.how .. ": the stock was dropped")
      assert.is_false(st.closed)
      assert.is_true(run_until(engine, 20000, full), c.how .. ": the stock did not refill")
      assert.equal(template, st.template, c.how .. ": the template was dropped")
      assert.equal(0, #st.waiting)
      local nxt = engine:execute("mixed", { n = 100 + i }, OP)
      assert.equal("ok", kind(nxt), c.how .. ": the next call")
      assert.equal(100 + i, nxt.output.n)
    end
    engine:close()
    assert.is_true(st.closed, "the stock outlived the engine")
    assert.equal(0, #st.stock)
  end)

  it("ends every call of a burst after an idle period, failures mixed in, and refills", function()
    if skip() then return end
    local engine, t, st, full = stocked(0)
    for round = 1, 3 do
      assert.is_true(run_until(engine, 20000, full), "round " .. round .. ": the stock never filled")
      -- idle: nothing runs for a while
      run_until(engine, 300, function() return false end)
      local hs, kinds = {}, {}
      for i = 1, 24 do
        local how = (i % 4 == 0 and "error") or (i % 6 == 0 and "spin") or nil
        hs[i] = engine:submit("mixed", { how = how, n = i }, OP)
        if i % 5 == 0 then hs[i]:cancel() end
      end
      for i = 1, 24 do
        local k = kind(hs[i]:wait(60000))
        kinds[k] = (kinds[k] or 0) + 1
        if i % 5 == 0 then
          assert.equal("cancelled", k)
        elseif i % 4 == 0 then
          assert.equal("tool_error", k)
        elseif i % 6 == 0 then
          -- (its 300 ms of CPU, or its 2 s deadline on a busy machine)
          assert.is_truthy(k == "cpu_limit" or k == "timeout", k)
        else
          assert.equal("ok", k, "call " .. i .. " of round " .. round)
        end
      end
      assert.equal(0, engine:in_flight())
      assert.equal(0, #st.waiting)
      assert.equal(0, st.running)
    end
    assert.is_true(run_until(engine, 20000, full), "the stock did not refill after the bursts")
    engine:close()
  end)

  it("goes when its tool is replaced by a reload", function()
    if skip() then return end
    local dir = H.tmpdir()
    H.write_tool(dir, "mixed", SRC)
    local engine = H.open_engine(dir, { store = false })
    local t = engine.registry:get("mixed")
    assert.equal("tool_error", kind(engine:execute("mixed", { how = "error" }, OP)))
    assert.equal("ok", kind(engine:execute("mixed", { n = 1 }, OP)))
    local st = engine.workers.shared[t]
    assert.is_true(run_until(engine, 20000, function() return #st.stock >= st.depth end))
    local pids = {}
    for _, e in ipairs(st.stock) do pids[#pids + 1] = e.pid end
    assert.is_true(engine:load_tools(dir))
    assert.is_true(st.closed, "the replaced tool's stock stayed")
    assert.equal(0, #st.stock)
    assert.equal("ok", kind(engine:execute("mixed", { n = 2 }, OP)))
    assert.is_true(run_until(engine, 5000, function()
      for _, pid in ipairs(pids) do
        local f = io.open("/proc/" .. pid .. "/stat")
        if f then
          local s = f:read("*a") or ""
          f:close()
          if not s:match("^%d+ %b() Z") then return false end
        end
      end
      return true
    end), "a stocked process of the replaced tool lives on")
    engine:close()
  end)
end)

describe("calls on one CPU (taskset)", function()
  teardown(function() H.cleanup() end)

  -- The first CPU this process may run on.
  local function first_cpu()
    local f = io.open("/proc/self/status")
    local s = f and f:read("*a") or ""
    if f then f:close() end
    return s:match("Cpus_allowed_list:%s*(%d+)")
  end

  it("ends every relaxed, none, balanced and strict call ok, one after another and at once", function()
    local cpu = first_cpu()
    local _, _, has = H.run_command("sh", { "-c", "command -v taskset" })
    if not cpu or has ~= 0 then
      pending("needs taskset(1) and /proc/self/status")
      return
    end
    local dir = H.tmpdir()
    local levels = { "relaxed", "none" }
    if workers.available() then
      levels[#levels + 1] = "balanced"
      levels[#levels + 1] = "strict"
    end
    for _, level in ipairs(levels) do
      H.write_tool(dir, "q_" .. level, H.tool_source{ name = "q_" .. level, level = level,
        execution = "timeout = 60000",
        parameters = [[{ type = "object", properties = { n = { type = "integer" } } }]],
        handler = "function(p) return { n = p.n } end" })
    end
    local script = ([=[
      package.path = %q
      package.cpath = %q
      local rd = require "rubberduck"
      local engine = assert(rd.open({ tools = %q, store = false }))
      local OP = { principal = "pin", capabilities = { "*" } }
      local COUNTS = { relaxed = { 500, 200 }, none = { 500, 200 }, balanced = { 200, 100 },
        strict = { 20, 20 } }
      local function check(env, name, n)
        if env == nil then error(name .. " " .. n .. ": no answer") end
        if env.status ~= "ok" then
          error(name .. " " .. n .. ": " .. env.error.kind .. ": " .. tostring(env.error.message))
        end
        if env.output.n ~= n then error(name .. " " .. n .. ": wrong output") end
      end
      for _, level in ipairs({ %s }) do
        local name, c = "q_" .. level, COUNTS[level]
        for i = 1, c[1] do check(engine:execute(name, { n = i }, OP), name, i) end
        local hs = {}
        for i = 1, c[2] do hs[i] = engine:submit(name, { n = i }, OP) end
        for i = 1, c[2] do check(hs[i]:wait(120000), name, i) end
        print("ok " .. level)
      end
      -- relaxed, none and balanced (if any) at once after idle periods,
      -- sequential rounds in between
      local mix = { "q_relaxed", "q_none" }
      if engine:tool("q_balanced") then mix[#mix + 1] = "q_balanced" end
      local function idle(ms)
        local over = false
        engine.loop:timer(ms, function() over = true end)
        while not over do engine.loop:run("once") end
      end
      for round = 1, 5 do
        idle(100 * round) -- a burst after an idle period: threads and workers asleep
        local hs = {}
        for i = 1, 60 do hs[i] = engine:submit(mix[i %% #mix + 1], { n = i }, OP) end
        for i = 1, 60 do check(hs[i]:wait(120000), mix[i %% #mix + 1], i) end
        for i = 1, 50 do check(engine:execute(mix[round %% #mix + 1], { n = i }, OP), "seq", i) end
      end
      print("ok mixed")
      engine:close()
    ]=]):format(package.path, package.cpath, dir,
      '"' .. table.concat(levels, '", "') .. '"')
    local path = dir .. "/pinned.lua"
    H.write_file(path, script)
    local out, err, code = H.run_command("taskset", { "-c", cpu, "luajit", path }, nil,
      { timeout = 300 })
    assert.equal(0, code, "exit " .. tostring(code) .. " (124: a call never ended)\n" .. out .. err)
    for _, level in ipairs(levels) do
      assert.truthy(out:find("ok " .. level .. "\n", 1, true), out .. err)
    end
    assert.truthy(out:find("ok mixed", 1, true), out .. err)
  end)
end)
