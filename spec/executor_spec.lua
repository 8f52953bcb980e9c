-- spec/executor_spec.lua — the executor (issue 5): asynchronous calls,
-- stages and cancellation, retries with backoff, deadlines, concurrency
-- limits with a bounded queue, supervision of workers, shutdown, progress
-- and the caller's context, at every security level.
local H = require "helpers"
local core = require "rubberduck.core"
local workers = require "rubberduck.workers"

local LEVELS = { "relaxed", "none" }
if workers.available() then
  LEVELS[#LEVELS + 1] = "balanced"
  LEVELS[#LEVELS + 1] = "strict"
end

-- Tools: each at every level, named <name>_<level>.
local TOOLS = {
  wait = {
    execution = "timeout = 20000",
    parameters = [[{ type = "object", properties = { ms = { type = "number", default = 5000 } } }]],
    handler = [[function(p, ctx)
      ctx.progress(1, 3, "started")
      ctx.sleep(p.ms)
      ctx.progress(3, 3, "done")
      return { slept = p.ms }
    end]],
  },
  whoami = {
    handler = "function(p, ctx) return { caller = ctx.caller, attempt = ctx.attempt } end",
  },
  third_time = {
    -- fails (retryably) until its third attempt
    execution = "retries = 4, backoff = { initial = 2, factor = 3, max = 5 }",
    handler = [[function(p, ctx)
      if ctx.attempt < 3 then error({ retryable = true, message = "not yet" }) end
      return { attempt = ctx.attempt }
    end]],
  },
  never = {
    execution = "retries = 5, backoff = { initial = 10000, max = 10000 }",
    handler = [[function() error({ retryable = true, message = "always" }) end]],
  },
  backing_off = {
    execution = "retries = 3, backoff = { initial = 60000, max = 60000 }",
    handler = [[function() error({ retryable = true, message = "again" }) end]],
  },
  one_at_a_time = {
    execution = "concurrency = 1, timeout = 20000",
    parameters = [[{ type = "object", properties = { ms = { type = "number", default = 5000 } } }]],
    handler = [[function(p, ctx) ctx.progress(0, 1, "started") ctx.sleep(p.ms) return { ok = true } end]],
  },
  quick = { handler = "function() return { ok = true } end" },
  odd_progress = {
    handler = [[function(p, ctx)
      ctx.progress(0 / 0, math.huge, "nan")
      ctx.progress(-math.huge, 2, "inf")
      local _, err = pcall(ctx.sleep, 1e12)
      return { ok = true, sleep_err = tostring(err) }
    end]],
  },
  square = {
    parameters = [[{ type = "object", properties = { n = { type = "integer" } } }]],
    handler = "function(p, ctx) ctx.sleep(5) return { n = p.n, sq = p.n * p.n, id = ctx.execution_id } end",
  },
  dies = {
    -- its process is killed (by the spec) in every attempt
    execution = "retries = 2, timeout = 20000, backoff = { initial = 1, max = 2 }",
    handler = [[function(p, ctx) ctx.progress(0, 1, "started") ctx.sleep(20000) return {} end]],
  },
  nap100 = {
    execution = "timeout = 100",
    handler = [[function(p, ctx) ctx.sleep(30000) return { woke = true } end]],
  },
}

local function write_tools(dir, levels)
  for name, t in pairs(TOOLS) do
    for _, level in ipairs(levels) do
      local n = name .. "_" .. level
      H.write_tool(dir, n, H.tool_source{ name = n, level = level, handler = t.handler,
        parameters = t.parameters, execution = t.execution })
    end
  end
end

local function fails(env, kind)
  assert.equals("error", env.status, "expected an error envelope")
  assert.equals(kind, env.error.kind, env.error.message)
  return env.error
end

-- Run the loop until `cond()` holds (bounded: a behaviour check, not a
-- timing one — the bound only guards against a hang).
local function pump(engine, cond, what)
  local guard = 0
  while not cond() do
    engine.loop:run("once")
    guard = guard + 1
    assert(guard < 200000, "never happened: " .. (what or "?"))
  end
end

-- Submit a call of wait_<level> and return once its handler runs.
local function submit_running(engine, name, ms, opts)
  local started = false
  opts = opts or {}
  opts.on_progress = function(_, _, msg) if msg == "started" then started = true end end
  local h = engine:submit(name, { ms = ms }, nil, opts)
  pump(engine, function() return started or h.done end, name .. " started")
  assert.is_true(started, "the call never started")
  return h
end

-- Is process `pid` gone (or a zombie waiting for its parent)?
local function gone(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return true end
  local s = f:read("*a") or ""
  f:close()
  return s:match("^%d+ %b() (%a)") == "Z" or s == ""
end

local function wait_gone(engine, pid)
  local guard = 0
  while not gone(pid) and guard < 400 do
    engine.loop:run("nowait")
    os.execute("sleep 0.005")
    guard = guard + 1
  end
  return gone(pid)
end

-- The live descendants of process `pid` (by /proc's parent links), but
-- for those below a process in `except` (a list: processes that were
-- there before, such as another engine's zygote, and what they start).
local function descendants(pid, except)
  local parent = {}
  for _, name in ipairs(core.listdir("/proc") or {}) do
    if name:match("^%d+$") then
      local f = io.open("/proc/" .. name .. "/stat", "r")
      if f then
        local s = f:read("*a") or ""
        f:close()
        local state, ppid = s:match("^%d+ %b() (%a) (%d+)")
        if ppid and state ~= "Z" then parent[tonumber(name)] = tonumber(ppid) end
      end
    end
  end
  local skip = {}
  for _, p in ipairs(except or {}) do skip[p] = true end
  local out = {}
  for p in pairs(parent) do
    local q, depth = p, 0
    while q and depth < 64 and not skip[q] do
      q, depth = parent[q], depth + 1
      if q == pid then out[#out + 1] = p; break end
    end
  end
  return out
end

-- The pid of the worker running call `h` (strict, balanced), or nil.
local function worker_pid(h)
  local st = h.state
  local call = type(st) == "table" and rawget(st, "call")
  return type(call) == "table" and call.worker and call.worker:pid() or nil
end

local function my_pid()
  local f = assert(io.open("/proc/self/stat", "r"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("^(%d+)"))
end

describe("the executor", function()
  local dir, engine
  setup(function()
    dir = H.tmpdir()
    write_tools(dir, LEVELS)
    engine = H.open_engine(dir)
    assert.same({}, engine.problems)
  end)
  teardown(function()
    if engine then engine:close() end
    H.cleanup()
  end)

  describe("submit", function()
    it("returns a handle at once; on_done never runs inside submit()", function()
      local returned, got = false, nil
      local h = engine:submit("no_such_tool", {}, nil, {
        on_done = function(env)
          assert.is_true(returned, "on_done ran inside submit()")
          got = env
        end,
      })
      returned = true
      assert.truthy(H.is_ulid(h.id))
      pump(engine, function() return got ~= nil end, "on_done")
      fails(got, "not_found")
    end)

    it("runs the synchronous execute over the same path", function()
      local env = engine:execute("quick_relaxed", {})
      assert.equals("ok", env.status)
      assert.equals(0, env.metadata.queue_ms)
    end)
  end)

  for _, level in ipairs(LEVELS) do
    describe("at " .. level, function()
      it("reports progress to on_progress and telemetry while the call runs", function()
        local got, events = {}, {}
        local sub = engine:subscribe("execution.progress", function(ev)
          events[#events + 1] = ev.metadata.message
        end)
        local env = engine:execute("wait_" .. level, { ms = 1 }, nil, {
          on_progress = function(done, total, msg) got[#got + 1] = { done, total, msg } end,
        })
        engine:unsubscribe(sub)
        assert.equals("ok", env.status)
        assert.same({ { 1, 3, "started" }, { 3, 3, "done" } }, got)
        assert.same({ "started", "done" }, events)
      end)

      -- NaN or an infinity made a worker's progress note unencodable: the
      -- call ended as `internal` at strict and balanced (red-team finding)
      it("passes on progress with counts that are not finite as 0; ctx.sleep's refusal", function()
        local got = {}
        local env = engine:execute("odd_progress_" .. level, {}, nil, {
          on_progress = function(done, total, msg) got[#got + 1] = { done, total, msg } end,
        })
        assert.equals("ok", env.status, env.error ~= H.json().null and env.error.message or "")
        assert.same({ { 0, 0, "nan" }, { 0, 2, "inf" } }, got)
        -- and ctx.sleep's refusal names the tool's line, not the engine's files
        assert.truthy(env.output.sleep_err:find("at most one hour", 1, true), env.output.sleep_err)
        assert.falsy(env.output.sleep_err:find("toolstate", 1, true), env.output.sleep_err)
      end)

      it("hands every field of the caller to ctx.caller", function()
        local caller = { principal = "ana", roles = { "ops" }, capabilities = { "x.y" },
                         trace_id = "trace-42", tenant = { id = 7, name = "acme" } }
        local traces = {}
        local sub = engine:subscribe("execution.st", function(ev)
          traces[#traces + 1] = ev.name .. " " .. tostring(ev.metadata.trace_id)
        end)
        local env = engine:execute("whoami_" .. level, {}, caller)
        engine:unsubscribe(sub)
        assert.same({ "execution.start trace-42", "execution.stop trace-42" }, traces)
        assert.equals("ok", env.status, env.error ~= H.json().null and env.error.message or nil)
        local c = env.output.caller
        assert.equals("ana", c.principal)
        assert.same({ "ops" }, c.roles)
        assert.same({ "x.y" }, c.capabilities)
        assert.equals("trace-42", c.trace_id)
        assert.same({ id = 7, name = "acme" }, c.tenant)
        -- ... and to the recorded history
        local rows = engine.history:query({ caller = "ana", limit = 20 })
        local rec
        for _, r in ipairs(rows) do if r.id == env.execution_id then rec = r end end
        assert.truthy(rec, "no history record")
        local hc = H.decode(rec.context)
        assert.equals("ana", hc.principal)
        assert.same({ "ops" }, hc.roles)
        assert.same({ "x.y" }, hc.capabilities)
        assert.equals("trace-42", hc.trace_id)
        assert.same({ id = 7, name = "acme" }, hc.tenant)
      end)

      it("cancels a running call and the tool serves the next one", function()
        local h = submit_running(engine, "wait_" .. level, 20000)
        assert.equals("running", h:stage())
        local pid = worker_pid(h)
        assert.is_true(h:cancel())
        local env = h:wait()
        fails(env, "cancelled")
        if pid then assert.is_true(wait_gone(engine, pid), "the worker outlived the cancel") end
        assert.equals("ok", engine:execute("wait_" .. level, { ms = 1 }).status)
      end)

      it("retries with backoff; ctx.attempt and metadata.attempts tell the truth", function()
        local retries = {}
        local sub = engine:subscribe("execution.retry", function(ev)
          retries[#retries + 1] = ev.measurements
        end)
        local env = engine:execute("third_time_" .. level, {})
        engine:unsubscribe(sub)
        assert.equals("ok", env.status)
        assert.equals(3, env.output.attempt)
        assert.equals(3, env.metadata.attempts)
        assert.equals(2, #retries)
        -- backoff = { initial = 2, factor = 3, max = 5 }: 2 ms then min(5, 6) ms, +-25%
        assert.equals(1, retries[1].attempt)
        assert.is_true(retries[1].wait_ms >= 1.5 and retries[1].wait_ms <= 2.5, tostring(retries[1].wait_ms))
        assert.is_true(retries[2].wait_ms >= 3.75 and retries[2].wait_ms <= 6.25, tostring(retries[2].wait_ms))
      end)

      it("lets the caller's deadline win over the attempts left", function()
        local env = engine:execute("never_" .. level, {}, nil, { deadline_ms = 2000 })
        local err = fails(env, "tool_error")
        assert.equals("always", err.message)
        assert.equals(1, env.metadata.attempts)
      end)

      it("ends a call whose deadline passes mid-attempt in timeout", function()
        local h = engine:submit("wait_" .. level, { ms = 20000 }, nil, { deadline_ms = 50 })
        local env = h:wait()
        fails(env, "timeout")
      end)
    end)
  end

  describe("scenarios", function()
    for _, level in ipairs(LEVELS) do
      it("runs five concurrent calls with distinct results at " .. level, function()
        local hs = {}
        for i = 1, 5 do hs[i] = engine:submit("square_" .. level, { n = i }) end
        local ids = {}
        for i = 1, 5 do
          local env = hs[i]:wait()
          assert.equals("ok", env.status)
          assert.same(i * i, env.output.sq)
          assert.equals(hs[i].id, env.output.id)
          ids[env.execution_id] = true
        end
        local n = 0
        for _ in pairs(ids) do n = n + 1 end
        assert.equals(5, n)
      end)

      it("cancels three long calls at " .. level .. "; the tool serves on", function()
        local hs = {}
        for i = 1, 3 do hs[i] = engine:submit("wait_" .. level, { ms = 30000 }) end
        pump(engine, function()
          for _, h in ipairs(hs) do if h:stage() ~= "running" and h:stage() ~= "queued" then return false end end
          return true
        end, "three calls under way")
        for _, h in ipairs(hs) do assert.is_true(h:cancel()) end
        for _, h in ipairs(hs) do fails(h:wait(), "cancelled") end
        assert.equals("ok", engine:execute("wait_" .. level, { ms = 1 }).status)
      end)

      it("ends a 30 s sleep with timeout = 100 ms in timeout, long before it would wake, at " .. level, function()
        local env = engine:execute("nap100_" .. level, {})
        local err = fails(env, "timeout")
        assert.truthy(err.message:find("100 ms", 1, true), err.message)
        assert.is_true(env.metadata.duration_ms < 15000, tostring(env.metadata.duration_ms))
      end)
    end

    if workers.available() then
      for _, level in ipairs({ "balanced", "strict" }) do
        it("reports three attempts for a tool whose process dies each time (retries = 2) at " .. level, function()
          local killed = 0
          local h
          h = engine:submit("dies_" .. level, {}, nil, {
            on_progress = function()
              local pid = worker_pid(h)
              if pid then killed = killed + 1; os.execute("kill -9 " .. pid) end
            end,
          })
          local env = h:wait()
          fails(env, "crashed")
          assert.equals(3, env.metadata.attempts)
          assert.equals(3, killed)
        end)
      end
    end

    it("lets a quick in-process call through while more long calls run than there are CPUs", function()
      -- the call threads run as many calls as there are CPUs; calls that
      -- have run long (sleeping here) make room for the ones waiting
      local ncpu = 2
      local p = io.popen("nproc 2>/dev/null")
      if p then ncpu = tonumber(p:read("*l")) or 2; p:close() end
      local n = math.min(math.max(ncpu, 2), 64) + 1
      local e = H.open_engine(dir, { max_running = n + 8 })
      local long = {}
      for i = 1, n do long[i] = submit_running(e, "wait_" .. LEVELS[i % 2 + 1], 20000) end
      local q = e:submit("quick_relaxed", {})
      assert.equals("ok", q:wait(10000).status)
      for i = 1, n do assert.equals("running", long[i]:stage()) end
      for i = 1, n do long[i]:cancel() end
      for i = 1, n do fails(long[i]:wait(), "cancelled") end
      e:close()
    end)

    it("runs 50 concurrent calls across levels, every one ok", function()
      local e = H.open_engine(dir, { max_running = 64 })
      local hs = {}
      for i = 1, 50 do
        local level = LEVELS[(i - 1) % #LEVELS + 1]
        hs[i] = e:submit("square_" .. level, { n = i })
      end
      for i = 1, 50 do
        local env = hs[i]:wait()
        assert.equals("ok", env.status, env.error ~= H.json().null and env.error.message or nil)
        assert.equals(i * i, env.output.sq)
      end
      e:close()
    end)
  end)

  describe("stages", function()
    it("cancels a call waiting for its retry", function()
      local h = engine:submit("backing_off_relaxed", {})
      pump(engine, function() return h:stage() == "retry_wait" or h.done end, "retry_wait")
      assert.equals("retry_wait", h:stage())
      assert.is_true(h:cancel())
      fails(h:wait(), "cancelled")
      assert.equals(1, h.envelope.metadata.attempts)
    end)

    it("hands the envelope to wait(ms) after the engine closed", function()
      local e = H.open_engine(dir)
      local h = e:submit("wait_relaxed", { ms = 20000 })
      e:close()
      fails(h:wait(100), "cancelled")
      fails(h:wait(), "cancelled")
    end)

    -- engine:close() from a progress callback used to free the loop while
    -- libuv was running it: the process crashed when the callback returned.
    for _, level in ipairs({ "strict", "relaxed" }) do
      it("refuses engine:close() from one of its callbacks, and closes after (" .. level .. ")", function()
        local e = H.open_engine(dir)
        local ok, err
        local h = e:submit("wait_" .. level, { ms = 200 }, nil, { on_progress = function()
          if ok == nil then ok, err = pcall(e.close, e) end
        end })
        local env = h:wait()
        assert.is_false(ok)
        assert.truthy(tostring(err):find("callback", 1, true), tostring(err))
        assert.equals("ok", env.status)
        assert.equals("ok", e:execute("quick_relaxed", {}).status)
        e:close()
        assert.is_true(e.closed)
      end)
    end

    it("is done once the envelope is there, and cancel() then says false", function()
      local h = engine:submit("quick_relaxed", {})
      local env = h:wait()
      assert.equals("ok", env.status)
      assert.equals("done", h:stage())
      assert.is_false(h:cancel())
    end)
  end)

  describe("concurrency", function()
    local e2
    before_each(function() e2 = H.open_engine(dir, { max_running = 2, max_queue = 2 }) end)
    after_each(function() e2:close() end)

    it("runs at most max_running calls, queues the next, refuses beyond the queue", function()
      local a = submit_running(e2, "wait_relaxed", 300)
      local b = submit_running(e2, "wait_none", 300)
      local c = e2:submit("wait_relaxed", { ms = 1 })
      local d = e2:submit("quick_relaxed", {})
      assert.equals("queued", c:stage())
      assert.equals("queued", d:stage())
      local s = e2:stats()
      assert.equals(2, s.running)
      assert.equals(2, s.queued)
      -- the queue is full: refused at once, retryable
      local x = e2:submit("quick_relaxed", {})
      assert.is_true(x.done)
      local err = fails(x.envelope, "overloaded")
      assert.truthy(err.message:find("capacity", 1, true))
      assert.is_true(require("rubberduck.errors").retryable("overloaded"))
      for _, h in ipairs({ a, b, c, d }) do assert.equals("ok", h:wait().status) end
      assert.equals(0, a.envelope.metadata.queue_ms)
      assert.is_true(c.envelope.metadata.queue_ms > 0)
      assert.is_true(d.envelope.metadata.queue_ms > 0)
      assert.same({ running = 0, queued = 0 }, { running = e2:stats().running, queued = e2:stats().queued })
    end)

    it("cancels a queued call; the others go on", function()
      local a = submit_running(e2, "wait_relaxed", 50)
      local b = submit_running(e2, "wait_none", 50)
      local c = e2:submit("quick_relaxed", {})
      assert.equals("queued", c:stage())
      assert.is_true(c:cancel())
      local env = c:wait()
      fails(env, "cancelled")
      assert.equals(0, env.metadata.attempts)
      assert.equals("ok", a:wait().status)
      assert.equals("ok", b:wait().status)
      assert.equals(0, e2:stats().queued)
    end)

    it("ends a queued call whose deadline passes in timeout", function()
      local a = submit_running(e2, "wait_relaxed", 300)
      local b = submit_running(e2, "wait_none", 300)
      local c = e2:submit("quick_relaxed", {}, nil, { deadline_ms = 20 })
      local err = fails(c:wait(), "timeout")
      assert.truthy(err.message:find("queued", 1, true))
      a:cancel(); b:cancel()
      a:wait(); b:wait()
    end)

    it("holds a tool to its execution.concurrency without holding up other tools", function()
      local e3 = H.open_engine(dir, { max_running = 8 })
      local a = submit_running(e3, "one_at_a_time_relaxed", 200)
      local b = e3:submit("one_at_a_time_relaxed", { ms = 1 })
      assert.equals("queued", b:stage())
      local c = submit_running(e3, "wait_relaxed", 1)
      assert.equals("ok", c:wait().status)
      assert.equals("queued", b:stage())
      assert.equals("ok", a:wait().status)
      assert.equals("ok", b:wait().status)
      assert.is_true(b.envelope.metadata.queue_ms > 0)
      e3:close()
    end)

    it("stays flat when refused calls are waited for with a timeout and the loop never runs", function()
      local a = submit_running(e2, "wait_relaxed", 20000)
      local b = submit_running(e2, "wait_none", 20000)
      local c = e2:submit("wait_relaxed", { ms = 20000 })
      local d = e2:submit("wait_relaxed", { ms = 20000 })
      local function round()
        for _ = 1, 1000 do
          local env = e2:submit("quick_relaxed", {}):wait(1000)
          assert(env and env.error.kind == "overloaded")
        end
        collectgarbage("collect")
        return collectgarbage("count")
      end
      round()
      local before = round()
      for _ = 1, 8 do round() end
      local grown = round() - before
      assert.is_true(grown < 256, string.format("heap grew by %.0f KiB over 9000 refusals", grown))
      for _, h in ipairs({ a, b, c, d }) do h:cancel() end
      for _, h in ipairs({ a, b, c, d }) do h:wait() end
    end)

    it("stays flat in memory under a flood of submissions", function()
      local ok, overloaded, other = 0, 0, 0
      local function count(env)
        if env.status == "ok" then ok = ok + 1
        elseif env.error.kind == "overloaded" then overloaded = overloaded + 1
        else other = other + 1 end
      end
      for _ = 1, 200 do e2:submit("quick_relaxed", {}, nil, { on_done = count }) end
      pump(e2, function() return ok + overloaded + other == 200 end, "warm-up")
      collectgarbage("collect")
      local before = collectgarbage("count")
      local N = 20000
      for _ = 1, N do
        e2:submit("quick_relaxed", {}, nil, { on_done = count })
        local n = e2:in_flight()
        assert(n <= 4, "more calls in flight than running + queued: " .. n)
      end
      pump(e2, function() return ok + overloaded + other == 200 + N end, "the flood")
      collectgarbage("collect")
      local grown = collectgarbage("count") - before
      assert.equals(0, other)
      assert.is_true(overloaded > 0)
      assert.is_true(grown < 2048, string.format("heap grew by %.0f KiB", grown))
    end)
  end)

  if workers.available() then
    describe("supervision", function()
      for _, level in ipairs({ "balanced", "strict" }) do
        it("ends a call whose " .. level .. " worker is killed in crashed; the pool refills", function()
          local h = submit_running(engine, "wait_" .. level, 20000)
          local pid = worker_pid(h)
          os.execute("kill -9 " .. pid)
          local err = fails(h:wait(), "crashed")
          assert.truthy(err.message:find("signal 9", 1, true), err.message)
          assert.equals("ok", engine:execute("wait_" .. level, { ms = 1 }).status)
        end)
      end

      for _, level in ipairs({ "balanced", "strict" }) do
        it("survives " .. level .. " workers killed while idle: the next calls end, then serve", function()
          local e = H.open_engine(dir)
          assert.equals("ok", e:execute("wait_" .. level, { ms = 1 }).status)
          assert.equals("ok", e:execute("wait_" .. level, { ms = 1 }).status)
          local pids = {}
          for _, w in ipairs(e.workers.ready) do pids[#pids + 1] = w:pid() end
          local t = e.registry:get("wait_" .. level)
          for _, st in ipairs(t.idle) do
            if st.worker then pids[#pids + 1] = st.worker:pid() end
            for _, x in ipairs(st.s and st.s.stock or {}) do pids[#pids + 1] = x.pid end
          end
          -- a balanced tool's idle workers (workers.lua, shared by its states)
          local b = e.workers.bal[t]
          for _, x in ipairs(b and b.idle or {}) do pids[#pids + 1] = x.w:pid() end
          if level == "balanced" then assert.is_true(b and #b.idle > 0, "no idle balanced worker") end
          assert.is_true(#pids > 0)
          for _, pid in ipairs(pids) do os.execute("kill -9 " .. pid) end
          os.execute("sleep 0.2")
          -- the first call may meet a dead process (crashed, retryable);
          -- none may hang, and the engine must not die (SIGPIPE)
          local env = e:submit("wait_" .. level, { ms = 1 }):wait()
          assert.truthy(env.status == "ok" or env.error.kind == "crashed", H.encode(env.error))
          for _ = 1, 3 do assert.equals("ok", e:execute("wait_" .. level, { ms = 1 }).status) end
          e:close()
        end)
      end

      for _, frame in ipairs({ "not json at all", '{"op":"bogus"}', "[1,2,3]" }) do
        it("ends a call whose worker breaks the protocol (" .. frame .. ") in crashed", function()
          local h = submit_running(engine, "wait_balanced", 20000)
          local pid = worker_pid(h)
          -- a frame as if the worker had sent it
          h.state:_frame(h.state.call.worker, frame)
          local err = fails(h:wait(), "crashed")
          assert.truthy(err.message:find("protocol", 1, true), err.message)
          assert.is_true(wait_gone(engine, pid), "the worker was not killed")
          assert.equals("ok", engine:execute("wait_balanced", { ms = 1 }).status)
        end)
      end

      it("leaves no worker process behind when an engine closes with calls in flight", function()
        local me = my_pid()
        local before = descendants(me)
        local e4 = H.open_engine(dir)
        local done = {}
        local hs = {
          submit_running(e4, "wait_strict", 20000, { on_done = function(env) done[#done + 1] = env end }),
          submit_running(e4, "wait_balanced", 20000, { on_done = function(env) done[#done + 1] = env end }),
        }
        assert.is_true(#descendants(me, before) >= 2, "no worker processes seen")
        e4:close()
        for _, h in ipairs(hs) do assert.is_true(h.done) end
        assert.equals(2, #done)
        for _, env in ipairs(done) do fails(env, "cancelled") end
        local guard = 0
        while #descendants(me, before) > 0 and guard < 400 do
          os.execute("sleep 0.005")
          guard = guard + 1
        end
        assert.same({}, descendants(me, before))
      end)

      it("drains calls in flight on close{ drain = true }, and refuses new ones meanwhile", function()
        local before = descendants(my_pid())
        local e5 = H.open_engine(dir)
        local h = submit_running(e5, "wait_balanced", 50)
        local late
        e5:subscribe("execution.stop", function(ev)
          if ev.metadata.execution_id == h.id then late = e5:submit("quick_relaxed", {}) end
        end)
        e5:close({ drain = true, timeout_ms = 20000 })
        assert.equals("ok", h.envelope.status)
        assert.truthy(late)
        fails(late.envelope, "cancelled")
        local guard = 0
        while #descendants(my_pid(), before) > 0 and guard < 400 do
          os.execute("sleep 0.005")
          guard = guard + 1
        end
        assert.same({}, descendants(my_pid(), before))
      end)
    end)

    it("an embedding process killed by SIGTERM under load leaves no worker behind", function()
      -- a child luajit runs an engine with calls in flight at every level,
      -- and is killed by SIGTERM's default action (no handler): the
      -- zygote and workers die with it (PR_SET_PDEATHSIG)
      local tdir = H.tmpdir()
      write_tools(tdir, LEVELS)
      local script = tdir .. "/load.lua"
      H.write_file(script, string.format([[
        local rd = require "rubberduck"
        local e = assert(rd.open{ tools = %q, data_dir = %q })
        local started = 0
        for i = 1, 12 do
          local level = ({ "strict", "balanced", "relaxed", "none" })[i %% 4 + 1]
          e:submit("wait_" .. level, { ms = 60000 }, nil,
            { on_progress = function() started = started + 1 end })
        end
        while started < 8 do e.loop:run("once") end
        io.stdout:write("loaded\n"); io.stdout:flush()
        while true do e.loop:run("once") end
      ]], tdir, tdir .. "/data"))
      local sh = table.concat({
        "cd " .. H.shell_quote(H.source_dir),
        "setsid luajit " .. H.shell_quote(script) .. " >" .. H.shell_quote(tdir .. "/out") .. " 2>&1 &",
        "pid=$!",
        "i=0; while ! grep -q loaded " .. H.shell_quote(tdir .. "/out") .. " && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done",
        "n=$(env -u LD_PRELOAD ps -eo sid=,pid= | awk -v s=$pid '$1 == s' | wc -l)",
        "echo \"before=$n\"",
        "kill -TERM $pid; wait $pid",
        "i=0; while [ $i -lt 200 ]; do n=$(env -u LD_PRELOAD ps -eo sid=,pid=,stat= | awk -v s=$pid '$1 == s && $3 !~ /^Z/' | wc -l); [ $n -eq 0 ] && break; sleep 0.01; i=$((i+1)); done",
        "echo \"after=$n\"",
      }, "\n")
      local p = io.popen(sh, "r")
      local text = p:read("*a")
      p:close()
      local before = tonumber(text:match("before=(%d+)"))
      assert.truthy(before and before >= 3, text .. (H.read_file(tdir .. "/out") or ""))
      assert.equals("0", text:match("after=(%d+)"), text)
    end)

    it("rduck run ends in cancelled on SIGTERM and leaves no process behind", function()
      local tdir = H.tmpdir()
      H.write_tool(tdir, "snooze", H.tool_source{ name = "snooze", level = "balanced",
        execution = "timeout = 60000",
        handler = [[function(p, ctx) ctx.log("info", "started") ctx.sleep(30000) return {} end]] })
      local out, err = tdir .. "/out", tdir .. "/err"
      -- setsid: the run and everything it starts share a fresh session id
      local script = table.concat({
        "cd " .. H.shell_quote(tdir),
        "setsid " .. H.shell_quote(H.rduck) .. " run snooze --tools . --json >out 2>err &",
        "pid=$!",
        "i=0; while ! grep -q started err 2>/dev/null && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done",
        "kill -TERM $pid",
        "wait $pid; echo \"exit=$?\"",
        "sleep 0.2",
        "env -u LD_PRELOAD ps -eo sid=,pid=,comm= | awk -v s=$pid '$1 == s' | wc -l",
      }, "\n")
      local p = io.popen(script, "r")
      local text = p:read("*a")
      p:close()
      assert.truthy(text:find("exit=1", 1, true), text .. (H.read_file(err) or ""))
      assert.equals("0", text:match("(%d+)%s*$"), "processes left in the run's session: " .. text)
      local env = H.decode(H.read_file(out))
      fails(env, "cancelled")
    end)
  end

  describe("reloading a tool", function()
    it("lets a running call finish on the old definition; new calls get the new one", function()
      local tdir = H.tmpdir()
      local function version(v)
        H.write_tool(tdir, "ver", H.tool_source{ name = "ver", execution = "timeout = 20000",
          handler = string.format([[function(p, ctx)
            ctx.progress(0, 1, "started") ctx.sleep(p.ms or 0) return { v = %d } end]], v) })
      end
      version(1)
      local e6 = H.open_engine(tdir)
      local started = false
      local h = e6:submit("ver", { ms = 100 }, nil,
        { on_progress = function() started = true end })
      pump(e6, function() return started end, "ver started")
      version(2)
      assert.is_true((e6:load_tools(tdir)))
      assert.equals(2, e6:execute("ver", {}).output.v)
      assert.equals(1, h:wait().output.v)
      assert.equals(2, e6:execute("ver", {}).output.v)
      e6:close()
    end)
  end)
end)
