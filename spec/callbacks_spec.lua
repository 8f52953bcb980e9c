-- callbacks_spec.lua — the caller's callbacks (on_done, on_progress) of
-- engine:submit, at every level: they run outside the engine's loop
-- (lua/rubberduck/init.lua: defer, loop:after_run), so one may wait for
-- another call (h:wait, engine:execute) or submit more. Until session 7 a
-- wait there never ended at none and relaxed (the loop's done channel was
-- held by the run that called the callback), so each level's scenarios run
-- in a child process with a timeout: a regression fails, it does not hang
-- the suite.

local H = require "helpers"
local workers = require "rubberduck.workers"

local LEVELS = { "none", "relaxed" }
if workers.available() then
  LEVELS[#LEVELS + 1] = "balanced"
  LEVELS[#LEVELS + 1] = "strict"
end

local function write_tools(dir, level)
  H.write_tool(dir, "quick", H.tool_source{ name = "quick", level = level,
    parameters = [[{ type = "object", properties = { n = { type = "integer" } } }]],
    handler = "function(p) return { n = p.n } end" })
  H.write_tool(dir, "chatty", H.tool_source{ name = "chatty", level = level,
    parameters = [[{ type = "object", properties = { k = { type = "integer" } } }]],
    handler = [[function(p, ctx)
      for i = 1, p.k do ctx.progress(i, p.k, "step " .. i) end
      return { k = p.k }
    end]] })
  H.write_tool(dir, "nap", H.tool_source{ name = "nap", level = level,
    execution = "timeout = 20000",
    parameters = [[{ type = "object", properties = { ms = { type = "integer" } } }]],
    handler = [[function(p, ctx) ctx.progress(0, 1, "started") ctx.sleep(p.ms) return { ms = p.ms } end]] })
end

-- Each scenario prints "ok <name>" when it held; any failure raises (exit 1).
local SCRIPT = [=[
package.path = %q
package.cpath = %q
local rd = require "rubberduck"
local engine = assert(rd.open({ tools = %q, data_dir = %q }))
assert(#engine.problems == 0, engine.problems[1])
local OP = { principal = "cb", capabilities = { "*" } }
local function ok(env, what)
  assert(env, what .. ": no envelope (timeout)")
  if env.status ~= "ok" then
    error(what .. ": " .. tostring(env.error.kind) .. ": " .. tostring(env.error.message), 2)
  end
  return env
end
local function say(name) io.stdout:write("ok ", name, "\n") io.stdout:flush() end

-- 1. on_done waits: engine:execute and submit():wait(), with the store on
-- (the inner call outlasts the waiter's spin)
do
  local inner1, inner2
  local h = engine:submit("quick", { n = 1 }, OP, { on_done = function(env)
    ok(env, "outer")
    inner1 = engine:execute("quick", { n = 2 }, OP)
    inner2 = engine:submit("quick", { n = 3 }, OP):wait(10000)
  end })
  ok(h:wait(10000), "outer wait")
  assert(ok(inner1, "execute in on_done").output.n == 2)
  assert(ok(inner2, "wait in on_done").output.n == 3)
  say("on_done")
end

-- 2. on_progress waits, while the call that reports is still running
do
  local inner, calls = nil, 0
  local h = engine:submit("chatty", { k = 1 }, OP, { on_progress = function(done, total, msg)
    calls = calls + 1
    assert(done == 1 and total == 1 and msg == "step 1", "progress " .. tostring(msg))
    inner = engine:execute("quick", { n = 4 }, OP)
  end })
  ok(h:wait(10000), "chatty")
  assert(calls == 1, "on_progress ran " .. calls .. " times")
  assert(ok(inner, "execute in on_progress").output.n == 4)
  say("on_progress")
end

-- 3. results found together: A's on_done waits for B, which ended with A
do
  local hb
  local seen
  local ha = engine:submit("quick", { n = 5 }, OP, { on_done = function(env)
    ok(env, "A")
    seen = hb:wait(10000)
  end })
  hb = engine:submit("quick", { n = 6 }, OP)
  ok(ha:wait(10000), "A wait")
  assert(ok(seen, "B from A's on_done").output.n == 6)
  say("batch")
end

-- 4. two deep: an on_done's wait calls an on_done that waits again
do
  local deepest
  local h = engine:submit("quick", { n = 7 }, OP, { on_done = function()
    local h2 = engine:submit("quick", { n = 8 }, OP, { on_done = function()
      deepest = engine:execute("quick", { n = 9 }, OP)
    end })
    ok(h2:wait(10000), "second")
  end })
  ok(h:wait(10000), "first")
  assert(ok(deepest, "third").output.n == 9)
  say("two_deep")
end

-- 5. many progress reports, each waiting for a call: every report comes
-- once, in order, and the reporting call's own result is not lost
do
  local steps, inner_ok = {}, 0
  local h = engine:submit("chatty", { k = 20 }, OP, { on_progress = function(done)
    steps[#steps + 1] = done
    if ok(engine:execute("quick", { n = done }, OP), "inner").output.n == done then
      inner_ok = inner_ok + 1
    end
  end })
  assert(ok(h:wait(20000), "chatty 20").output.k == 20)
  assert(#steps == 20, #steps .. " progress reports")
  for i = 1, 20 do assert(steps[i] == i, "report " .. i .. " was " .. tostring(steps[i])) end
  assert(inner_ok == 20)
  say("progress_order")
end

-- 6. a callback waits for a call that outlasts the one that called it; a
-- wait with a timeout in a callback times out and the call goes on
do
  local long_env, short
  local h = engine:submit("quick", { n = 10 }, OP, { on_done = function()
    local hn = engine:submit("nap", { ms = 300 }, OP)
    short = { hn:wait(20) }
    long_env = hn:wait(10000)
  end })
  ok(h:wait(10000), "quick")
  assert(short[1] == nil and short[2] == "timeout", "wait(20): " .. tostring(short[2]))
  assert(ok(long_env, "nap").output.ms == 300)
  say("timeout_in_callback")
end

-- 7. chains driven by the caller's own loop: each on_done submits and
-- waits for the next
do
  local n = 0
  local function step(env)
    ok(env, "chain")
    n = n + 1
    if n < 10 then
      engine:submit("quick", { n = n }, OP, { on_done = step })
      ok(engine:execute("quick", { n = n }, OP), "chain execute")
    end
  end
  engine:submit("quick", { n = 0 }, OP, { on_done = step })
  while n < 10 do engine.loop:run("once") end
  assert(engine:drain(10000) == 0)
  say("chain")
end

-- 8. refused, with a message naming why: a wait from an event subscriber
-- (it runs inside the loop), and engine:close() from on_done
do
  local sub_err, close_err
  local load_err
  local id = engine:subscribe("execution.stop", function()
    if sub_err == nil then
      local okw, err = pcall(engine.execute, engine, "quick", { n = 11 }, OP)
      sub_err = okw and "no error" or tostring(err)
      local okl, lerr = pcall(engine.load_tools, engine, %q)
      load_err = okl and "no error" or tostring(lerr)
    end
  end)
  ok(engine:execute("quick", { n = 12 }, OP), "with subscriber")
  engine:unsubscribe(id)
  assert(sub_err and sub_err:find("callbacks", 1, true), "subscriber: " .. tostring(sub_err))
  assert(load_err and load_err:find("load_tools", 1, true), "load_tools: " .. tostring(load_err))
  local h = engine:submit("quick", { n = 13 }, OP, { on_done = function()
    local okc, err = pcall(engine.close, engine)
    close_err = okc and "no error" or tostring(err)
  end })
  ok(h:wait(10000), "close in on_done")
  assert(close_err and close_err:find("callback", 1, true), "close: " .. tostring(close_err))
  ok(engine:execute("quick", { n = 14 }, OP), "after refusals")
  say("refusals")
end

-- 9. tools (re)loaded from on_done: the definitions run, the new tool serves
do
  local loaded, probs
  local h = engine:submit("quick", { n = 15 }, OP, { on_done = function()
    loaded, probs = engine:load_tools(%q)
  end })
  ok(h:wait(10000), "before the reload")
  assert(loaded == true, "reload in on_done: " .. tostring(probs and probs[1]))
  assert(ok(engine:execute("quick", { n = 16 }, OP), "after the reload").output.n == 16)
  say("load_in_on_done")
end

engine:close()
print("closed")
]=]

describe("callbacks that wait", function()
  teardown(function() H.cleanup() end)

  for _, level in ipairs(LEVELS) do
    it("at " .. level .. ": on_done and on_progress may wait for other calls (execute, h:wait)", function()
      local dir = H.tmpdir()
      write_tools(dir, level)
      local out, err, code = H.run_lua(SCRIPT:format(package.path, package.cpath, dir,
        dir .. "/data", dir, dir), { timeout = 90 })
      assert.equal(0, code, "exit " .. tostring(code) .. " (124: it hung)\n" .. out .. err)
      for _, name in ipairs({ "on_done", "on_progress", "batch", "two_deep", "progress_order",
          "timeout_in_callback", "chain", "refusals", "load_in_on_done" }) do
        assert.truthy(out:find("ok " .. name .. "\n", 1, true), name .. " missing:\n" .. out .. err)
      end
      assert.truthy(out:find("closed", 1, true), out)
    end)
  end

  it("runs on_done after the outermost loop:run returns, never inside submit, in order", function()
    local dir = H.tmpdir()
    write_tools(dir, "relaxed")
    local engine = H.open_engine(dir)
    local order, in_submit = {}, false
    for i = 1, 5 do
      in_submit = true
      engine:submit(i % 2 == 0 and "no_such_tool" or "quick", { n = i }, nil, { on_done = function(env)
        assert.is_false(in_submit, "on_done ran inside submit()")
        assert.is_false(engine.loop:running(), "on_done ran inside the loop")
        order[#order + 1] = env.status
      end })
      in_submit = false
    end
    assert.equal(0, engine:drain(10000))
    assert.equal(5, #order)
    engine:close()
  end)

  it("runs, for the C API's rd_engine_run(DEFAULT), until what the callbacks submitted is done", function()
    local dir = H.tmpdir()
    write_tools(dir, "relaxed")
    local engine = H.open_engine(dir, { store = false }) -- no store: no timer keeps the loop alive
    local done = 0
    local function next_call(env)
      assert.equal("ok", env.status)
      done = done + 1
      if done < 3 then engine:submit("quick", { n = done }, nil, { on_done = next_call }) end
    end
    engine:submit("quick", { n = 0 }, nil, { on_done = next_call })
    assert.equal(0, engine:run_c(0)) -- RD_RUN_DEFAULT
    assert.equal(3, done)
    engine:close()
  end)
end)
