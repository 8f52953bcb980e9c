-- pipeline_spec.lua — the request path through the Lua API
-- (require "rubberduck"; lua/rubberduck/init.lua and pipeline.lua):
-- validate, authorize, execute (limits, retries, timeout, cancellation),
-- process, observe — one envelope per call, whatever happens.

local H = require "helpers"
local rd = require "rubberduck"

local json = H.json()
local null = json.null

-- The tools of this spec, by name: fields of H.tool_source.
local TOOLS = {
  echo = { handler = "function(p) return p end" },
  echo_strict = { level = "strict", handler = "function(p) return p end" },
  echo_balanced = { level = "balanced", handler = "function(p) return p end" },
  defaults = {
    parameters = [[{ type = "object", properties = {
      n = { type = "integer", default = 7 }, s = { type = "string", default = "dflt" } } }]],
    handler = "function(p) return { n = p.n, s = p.s } end",
  },
  valid = {
    parameters = [[{ type = "object",
      properties = { n = { type = "integer", minimum = 1 }, s = { type = "string" } },
      required = { "s" }, additionalProperties = false }]],
    top = [[constraints = {
      function(p) return p.s ~= "bad", "/s: must not be bad" end,
      function(p) return p.n == nil or p.n % 2 == 0, "/n: must be even" end,
    }]],
    handler = "function(p) return { ok = true } end",
  },
  pattern = {
    parameters = [[{ type = "object", properties = { s = { type = "string", pattern = "^(a+)+$" } } }]],
  },
  needs_read = { top = 'capabilities = { "fs.read" }' },
  needs_admin = { top = 'roles = { "admin" }' },
  boom = { handler = "function() error('boom') end" },
  nil_why = { handler = "function() return nil, 'why' end" },
  flaky = {
    execution = "retries = 2",
    handler = [[function(p, ctx)
      ctx.log("info", "attempt", ctx.attempt)
      error({ retryable = true, message = "try again (" .. ctx.attempt .. ")" })
    end]],
  },
  flaky_long = {
    execution = "retries = 10",
    handler = "function() error({ retryable = true, message = 'again' }) end",
  },
  firm = {
    execution = "retries = 2",
    handler = "function(p, ctx) ctx.log('info', 'attempt', ctx.attempt) error('not retryable') end",
  },
  mem = {
    security = "max_memory = 1048576",
    handler = "function() local t = {} for i = 1, 1e8 do t[i] = { i } end return {} end",
  },
  mem_pcall = {
    security = "max_memory = 1048576",
    handler = [[function()
      local ok = pcall(function() local t = {} for i = 1, 1e8 do t[i] = { i } end end)
      return { survived = ok }
    end]],
  },
  spin = {
    security = "max_cpu = 100",
    parameters = [[{ type = "object", properties = { how = { type = "string" } } }]],
    handler = [[function(p)
      local how = p.how
      if how == "loop" then while true do end
      elseif how == "pcall" then for i = 1, 100 do pcall(function() while true do end end) end
      elseif how == "xpcall" then
        for i = 1, 100 do xpcall(function() while true do end end, function(e) return e end) end
      elseif how == "coroutine" then pcall(coroutine.wrap(function() while true do end end))
      elseif how == "gsub" then string.gsub("aaaa", "a", function() while true do end end)
      end
      return { spun = false }
    end]],
  },
  slow = {
    execution = "timeout = 100",
    handler = "function(p, ctx) ctx.sleep(10000) return { woke = true } end",
  },
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
  bad_fn = { handler = "function() return { f = function() end } end" },
  bad_cycle = { handler = "function() local t = {} t.self = t return t end" },
  bad_schema = {
    handler = "function() return { n = 1 } end",
    output = [[{ schema = { type = "object", required = { "content" } } }]],
  },
  unencodable = {
    parameters = [[{ type = "object", properties = { what = { type = "string" } } }]],
    handler = [[function(p)
      if p.what == "utf8" then return { s = "\255\254" } end
      if p.what == "mixed" then return { 1, 2, x = 3 } end
      if p.what == "sparse" then return { [1] = 1, [1000000] = 2 } end
      if p.what == "key" then return { [1.5] = "x" } end
      return { fine = true }
    end]],
  },
  empties = {
    handler = "function() return { a = json.array(), o = json.object(), n = json.null, l = { 1, 2 } } end",
  },
  big = {
    security = "max_output = 1000",
    handler = "function() return { s = string.rep('x', 10240) } end",
  },
  trusted = {
    level = "none",
    handler = [[function()
      return { io = type(io), execute = type(os.execute), debug = type(debug), require = type(require) }
    end]],
  },
  restricted = {
    handler = [[function()
      -- spelled so the load-time scan of dangerous names does not refuse
      -- the tool: this checks what is absent at run time
      return { io = type(io), execute = type(os["exe" .. "cute"]), debug = type(debug),
               require = type(_G["requ" .. "ire"]), strmeta = type(getmetatable("")) }
    end]],
  },
  poison = {
    handler = [[function(p) if p.set then POISONED = "yes" end return { seen = POISONED or "no" } end]],
  },
  victim = { handler = [[function() return { seen = POISONED or "no" } end]] },
  recycle = {
    security = "max_cpu = 100, max_memory = 1048576",
    handler = [[function(p)
      if p.spin then while true do end end
      if p.eat then local t = {} while true do t[#t + 1] = { 1 } end end
      return { fine = true }
    end]],
  },
}

describe("the pipeline", function()
  local engine, dir, fsdir

  setup(function()
    dir = H.tmpdir()
    fsdir = H.tmpdir()
    for name, o in pairs(TOOLS) do
      local t = {}
      for k, v in pairs(o) do t[k] = v end
      t.name = name
      H.write_tool(dir, name, H.tool_source(t))
    end
    H.write_tool(dir, "reader", H.tool_source{ name = "reader",
      security = ("allowed_paths = { %q }"):format(fsdir),
      parameters = [[{ type = "object", properties = { path = { type = "string" },
                       catch = { type = "boolean" } } }]],
      handler = [[function(p)
        if p.catch then
          local ok, err = pcall(fs.read, p.path)
          return { caught = ok, err = tostring(err) }
        end
        return { content = fs.read(p.path) }
      end]] })
    engine = H.open_engine(dir)
    assert.same({}, engine.problems)
  end)

  teardown(function()
    if engine then engine:close() end
    H.cleanup()
  end)

  local function run(name, params, caller, opts)
    return engine:execute(name, params, caller, opts)
  end

  -- Run a relaxed tool with `handler` (max_cpu 100, timeout 500) once, in a
  -- child luajit with a 5 s guard, then close its engine. Returns the
  -- child's stdout ("<status> <kind>\nclosed\n"), stderr and exit code
  -- (124: the guard fired, something hung).
  local function in_child(handler)
    local d = H.tmpdir()
    H.write_tool(d, "x", H.tool_source{ name = "x", security = "max_cpu = 100",
      execution = "timeout = 500", handler = handler })
    return H.run_lua(([[
local rd = require "rubberduck"
local e = assert(rd.open{ tools = %q, data_dir = %q })
local env = e:execute("x", {})
io.write(env.status, " ", tostring(env.error ~= rd.json.null and env.error.kind), "\n")
io.flush()
e:close()
io.write("closed\n")
]]):format(d, d .. "/data"), { timeout = 5 })
  end

  local function fails(env, kind)
    assert.equals("error", env.status)
    assert.equals(null, env.output)
    assert.is_table(env.error)
    assert.equals(kind, env.error.kind, env.error.kind .. ": " .. tostring(env.error.message))
    assert.is_string(env.error.message)
    return env.error
  end

  describe("the envelope", function()
    it("has the documented shape on success", function()
      local env = run("echo", { text = "hi" })
      assert.equals("ok", env.status)
      assert.equals("echo", env.tool)
      assert.same({ text = "hi" }, env.output)
      assert.equals(null, env.error)
      assert.is_true(H.is_ulid(env.execution_id), tostring(env.execution_id))
      local m = env.metadata
      assert.truthy(m.started_at:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), m.started_at)
      assert.is_number(m.duration_ms)
      assert.is_true(m.duration_ms >= 0)
      assert.equals(1, m.attempts)
      assert.equals("relaxed", m.security_level)
      assert.is_false(m.cached)
      assert.equals("json", m.format)
      assert.is_number(m.peak_memory_bytes)
      assert.is_true(m.peak_memory_bytes > 0)
      assert.is_number(m.cpu_ms)
      assert.is_true(m.cpu_ms >= 0)
      -- the whole envelope encodes as JSON
      local text = H.encode(env)
      assert.truthy(text:find('"error":null', 1, true), text)
    end)

    it("gives every call a fresh, time-ordered ULID", function()
      local a = run("echo", {}).execution_id
      local b = run("echo", {}).execution_id
      local c = run("nope", {}).execution_id
      assert.is_true(H.is_ulid(c))
      assert.is_true(a < b and b < c, a .. " " .. b .. " " .. c)
    end)

    it("takes nil params as {}", function()
      local env = run("echo", nil)
      assert.equals("ok", env.status)
    end)
  end)

  describe("validation", function()
    it("ends in not_found for an unknown tool", function()
      local err = fails(run("no_such_tool", {}), "not_found")
      assert.truthy(err.message:find("no_such_tool", 1, true))
    end)

    it("ends in invalid_params with a pointer, keyword, schema_path and message per failure", function()
      local err = fails(run("valid", { n = "x", z = 1 }), "invalid_params")
      local errors = err.details.errors
      assert.is_table(errors)
      assert.is_true(#errors >= 3)
      local by = {}
      for _, e in ipairs(errors) do
        assert.is_string(e.pointer)
        assert.is_string(e.keyword)
        assert.is_string(e.schema_path)
        assert.is_string(e.message)
        by[e.keyword] = e
      end
      assert.equals("", by.required.pointer)
      assert.equals("/required", by.required.schema_path)
      assert.equals("/n", by.type.pointer)
      assert.equals("/properties/n/type", by.type.schema_path)
      assert.equals("/z", by.additionalProperties.pointer)
      assert.equals("[]", H.encode(json.array({})))  -- sanity of the codec
      assert.equals("[", H.encode(err.details.errors):sub(1, 1))
    end)

    it("refuses params that are not an object", function()
      local err = fails(run("echo", { 1, 2 }), "invalid_params")
      assert.equals("", err.details.errors[1].pointer)
      fails(run("echo", "text"), "invalid_params")
    end)

    -- Params from the Lua API that JSON cannot hold used to reach the
    -- executor: `internal` at relaxed and balanced, and a call that hung
    -- until its timeout at strict (the worker message failed to encode).
    for _, name in ipairs({ "echo", "echo_balanced", "echo_strict" }) do
      it("refuses params holding what JSON cannot, naming where (" .. name .. ")", function()
        local cases = {
          { { a = { b = print } }, "/a/b", "function" },
          { { c = coroutine.create(print) }, "/c", "thread" },
          { { n = 0 / 0 }, "/n", "JSON number" },
          { { n = -math.huge }, "/n", "JSON number" },
          { { t = { [{}] = 1 } }, "/t", "key" },
          { { t = { [true] = 1 } }, "/t", "key" },
        }
        -- an engine of its own: the worker processes go with it
        local e = H.open_engine(dir)
        finally(function() e:close() end)
        for _, c in ipairs(cases) do
          local err = fails(e:execute(name, c[1], nil, { deadline_ms = 5000 }), "invalid_params")
          assert.equals(c[2], err.details.errors[1].pointer, err.message)
          assert.truthy(err.message:find(c[3], 1, true), err.message)
        end
        assert.same({ x = 1, n = json.null }, e:execute(name, { x = 1, n = json.null }).output)
      end)
    end

    it("applies schema defaults before the handler", function()
      local env = run("defaults", {})
      assert.same({ n = 7, s = "dflt" }, env.output)
      assert.same({ n = 3, s = "dflt" }, run("defaults", { n = 3 }).output)
    end)

    it("ends a value that makes a schema pattern backtrack in invalid_params", function()
      -- A backtracking pattern hits PCRE2's match limit: that must be the
      -- caller's invalid_params, never `internal`. (Seen failing while this
      -- spec was written: the lua-rex-pcre2 path of validator/regex.lua
      -- raises PCRE2_ERROR_MATCHLIMIT from find(); the FFI path now treats
      -- it as no match. The rex fallback still raises.)
      assert.equals("ok", run("pattern", { s = "aaaa" }).status)
      local env = run("pattern", { s = ("a"):rep(5000) .. "!" })
      assert.equals("error", env.status)
      assert.equals("invalid_params", env.error.kind, env.error.message)
      assert.equals("/s", env.error.details.errors[1].pointer)
    end)

    it("leaves the caller's params table as it was", function()
      -- BUG: pipeline.lua body() hands h.params (the caller's own table) to
      -- the validator compiled with { defaults = true }, which fills
      -- defaults in place: after engine:execute("defaults", p), p.n == 7 and
      -- p.s == "dflt". A caller reusing a params table (or a frozen config)
      -- sees it change. Fix: copy the params before validating (a deep copy
      -- keeping json.array/object marks) and validate the copy.
      local p = {}
      assert.same({ n = 7, s = "dflt" }, run("defaults", p).output)
      assert.same({}, p)
    end)

    it("ends in invalid_params when a constraint fails", function()
      local err = fails(run("valid", { s = "bad", n = 3 }), "invalid_params")
      assert.equals(2, #err.details.errors)
      assert.equals("/s: must not be bad", err.details.errors[1].message)
      assert.equals("constraints", err.details.errors[1].keyword)
      assert.equals("/n: must be even", err.details.errors[2].message)
      assert.equals("ok", run("valid", { s = "good", n = 2 }).status)
    end)
  end)

  describe("authorization", function()
    local function caller(caps, roles)
      return { principal = "carol", capabilities = caps or {}, roles = roles or {} }
    end

    it("refuses a caller without the capability, naming only what is missing", function()
      local err = fails(run("needs_read", {}, caller({ "net.http", "secret.grant" })), "unauthorized")
      assert.same({ "fs.read" }, err.details.missing_capabilities)
      assert.truthy(err.message:find("fs.read", 1, true), err.message)
      assert.falsy(err.message:find("net.http", 1, true), err.message)
      assert.falsy(H.encode(err):find("secret.grant", 1, true))
    end)

    it("refuses the anonymous caller", function()
      fails(run("needs_read", {}), "unauthorized")
    end)

    it("allows fs.read, fs.* and *, but not fs or fs.readx", function()
      for _, c in ipairs({ "fs.read", "fs.*", "*" }) do
        assert.equals("ok", run("needs_read", {}, caller({ c })).status, c)
      end
      for _, c in ipairs({ "fs", "fs.readx", "fs.read.x", "f*" }) do
        fails(run("needs_read", {}, caller({ c })), "unauthorized")
      end
    end)

    it("checks roles", function()
      local err = fails(run("needs_admin", {}, caller({ "*" }, { "user" })), "unauthorized")
      assert.same({ "admin" }, err.details.missing_roles)
      assert.equals("ok", run("needs_admin", {}, caller({}, { "admin" })).status)
    end)

    it("refuses a malformed caller", function()
      fails(run("echo", {}, 42), "unauthorized")
      fails(run("echo", {}, { principal = "" }), "unauthorized")
      fails(run("echo", {}, { capabilities = "fs.read" }), "unauthorized")
    end)
  end)

  describe("tool errors and retries", function()
    it("ends in tool_error when the handler raises", function()
      local err = fails(run("boom", {}), "tool_error")
      assert.truthy(err.message:find("boom", 1, true), err.message)
    end)

    it("ends in tool_error when the handler returns nil, why", function()
      local err = fails(run("nil_why", {}), "tool_error")
      assert.equals("why", err.message)
    end)

    local function attempts_logged(name)
      local seen = {}
      local sub = engine:subscribe("execution.log", function(ev)
        seen[#seen + 1] = ev.metadata.message
      end)
      local env = run(name, {})
      engine:unsubscribe(sub)
      return env, seen
    end

    it("retries a retryable tool error: retries = 2 makes 3 attempts", function()
      local env, seen = attempts_logged("flaky")
      local err = fails(env, "tool_error")
      assert.equals(3, env.metadata.attempts)
      assert.same({ "attempt 1", "attempt 2", "attempt 3" }, seen)
      assert.equals("try again (3)", err.message)
    end)

    it("does not retry a tool error the tool did not mark retryable", function()
      local env, seen = attempts_logged("firm")
      fails(env, "tool_error")
      assert.equals(1, env.metadata.attempts)
      assert.same({ "attempt 1" }, seen)
    end)
  end)

  describe("limits", function()
    it("ends a table bomb in memory_limit", function()
      fails(run("mem", {}), "memory_limit")
    end)

    it("ends a table bomb in memory_limit even inside pcall", function()
      fails(run("mem_pcall", {}), "memory_limit")
    end)

    for _, how in ipairs({ "loop", "pcall", "xpcall", "coroutine", "gsub" }) do
      it("ends an endless loop (" .. how .. ") in cpu_limit", function()
        fails(run("spin", { how = how }), "cpu_limit")
      end)
    end

    it("reuses nothing of a state after a breach: the next call works", function()
      fails(run("recycle", { spin = true }), "cpu_limit")
      assert.same({ fine = true }, run("recycle", {}).output)
      fails(run("recycle", { eat = true }), "memory_limit")
      assert.same({ fine = true }, run("recycle", {}).output)
    end)

    it("ends a sleep past execution.timeout in timeout", function()
      local err = fails(run("slow", {}), "timeout")
      assert.is_string(err.message)
    end)

    it("ends an output larger than max_output in output_limit", function()
      fails(run("big", {}), "output_limit")
    end)

    it("stops a looping xpcall message handler", function()
      -- BUG: see hostile_load_spec ("a looping xpcall message handler"):
      -- after the hook raises a breach, LuaJIT runs the message handler with
      -- the hook still marked active, so it is never interrupted. The call
      -- ends in a misleading `timeout` ("blocked outside Lua") after the
      -- grace period, the pool thread spins forever, and engine:close()
      -- never returns. Child process + guard (124 = hung).
      -- Fix in lua/rubberduck/toolstate.lua: wrap xpcall (see the other spec).
      local out, err, code = in_child(
        "function() xpcall(function() while true do end end, function(e) while true do end end) return {} end")
      assert.are_not.equal(124, code, "hung: " .. out .. err)
      assert.equals("error cpu_limit\nclosed\n", out)
    end)

    it("stops a catastrophic pattern match (C code) and closes", function()
      -- BUG: the pattern matcher runs in C, where the count hook never fires:
      -- neither max_cpu nor the deadline stops it. The call ends in
      -- `timeout` via the overdue timer, but the pool thread runs on for
      -- hours and engine:close() waits for it. Fix: pattern functions with
      -- a step budget in the tool environment (see hostile_load_spec).
      local out, err, code = in_child(
        "function() return { r = string.find(string.rep('a', 40), string.rep('a-', 20) .. 'b') } end")
      assert.are_not.equal(124, code, "hung: " .. out .. err)
      assert.truthy(out == "error cpu_limit\nclosed\n" or out == "error timeout\nclosed\n", out .. err)
    end)
  end)

  -- Submit a call of `wait` and return once its handler runs (it reported
  -- progress "started"): the worker thread has picked it up.
  local function submit_running(e, ms)
    local started = false
    local h = e:submit("wait", { ms = ms }, nil, {
      on_progress = function(_, _, msg) if msg == "started" then started = true end end,
    })
    local guard = 0
    while not started and not h.done and guard < 100000 do
      h:wait(1)
      guard = guard + 1
    end
    assert.is_true(started, "the call never started")
    return h
  end

  describe("cancellation", function()
    it("cancels a running call", function()
      local h = submit_running(engine, 10000)
      assert.is_true(H.is_ulid(h.id))
      assert.equals("running", h:stage())
      assert.is_true(h:cancel())
      local env = h:wait()
      fails(env, "cancelled")
      assert.equals(h.id, env.execution_id)
      assert.is_false(h:cancel())   -- already done
    end)

    it("cancels a call right after submit", function()
      -- BUG (race, about one cancel in two is lost here): st:start() queues
      -- the call on the libuv pool; h:cancel() then calls st:stop("cancel"),
      -- which sets stop_req; but when the pool thread starts the call,
      -- rd__lstate_arm() (core/sandbox/lstate.c:151) resets stop_req to
      -- NONE, so a cancel that arrives before the thread runs is forgotten:
      -- cancel() returns true and the call runs to the end with status ok.
      -- engine:close() is hit by the same race (it cancels, then waits).
      -- Fix: clear stop_req on the loop thread when the call is prepared
      -- (prepare() in core/lua/l_lstate.c, before uv_queue_work), not in
      -- rd__lstate_arm; or keep the pending request in lcore and re-apply
      -- it right after arming.
      local lost = 0
      for _ = 1, 10 do
        local h = engine:submit("wait", { ms = 300 })
        assert.is_true(h:cancel())
        local env = h:wait()
        if env.status == "ok" then lost = lost + 1 end
      end
      assert.equals(0, lost, lost .. " of 10 cancels were lost")
    end)

    it("cancels a call waiting for a busy tool, and the first one completes", function()
      local first = engine:submit("wait", { ms = 50 })
      local second = engine:submit("wait", { ms = 50 })
      assert.is_true(second:cancel())
      fails(second:wait(), "cancelled")
      assert.equals("ok", first:wait().status)
    end)

    it("cancels a call between retries", function()
      local h = engine:submit("flaky_long", {})
      local guard = 0
      while h:stage() ~= "retry_wait" and h:stage() ~= "done" and guard < 100000 do
        h:wait(1)
        guard = guard + 1
      end
      assert.equals("retry_wait", h:stage())
      assert.is_true(h:cancel())
      fails(h:wait(), "cancelled")
    end)

    it("wait(timeout_ms) returns nil, 'timeout' and the call goes on", function()
      local h = engine:submit("wait", { ms = 200 })
      local env, why = h:wait(1)
      assert.is_nil(env)
      assert.equals("timeout", why)
      assert.equals("ok", h:wait().status)
    end)
  end)

  describe("output", function()
    it("ends a function in the result in invalid_output", function()
      fails(run("bad_fn", {}), "invalid_output")
    end)

    it("ends a cycle in the result in invalid_output", function()
      fails(run("bad_cycle", {}), "invalid_output")
    end)

    it("ends a result that cannot be encoded as JSON in invalid_output", function()
      -- BUG: these pass as status "ok" (rd__xcopy copies them; process()
      -- only checks output.schema) and the envelope then cannot be encoded:
      -- engine:execute_json raises at init.lua (assert(json.encode(env)))
      -- and `rduck run` crashes (see cli_spec). DESIGN.md: invalid_output
      -- is "holds what cannot be encoded". Fix: in pipeline.lua process(),
      -- `local ok, why = json.encode(output)`; if not ok, return
      -- errors.new("invalid_output", why) (or make the output copy apply
      -- the encoder's rules).
      -- (A string that is not valid UTF-8 is not among them: it is carried
      -- as binary, see results_spec.)
      for _, what in ipairs({ "mixed", "sparse", "key" }) do
        local env = run("unencodable", { what = what })
        assert.equals("error", env.status, what .. " passed as ok")
        assert.equals("invalid_output", env.error.kind, what)
        assert.is_string(json.encode(env), what)
        local ok, text = pcall(engine.execute_json, engine, "unencodable", H.encode({ what = what }))
        assert.is_true(ok, text)
      end
      assert.equals("ok", run("unencodable", {}).status)
      local env = run("unencodable", { what = "utf8" })
      assert.equals("ok", env.status)
      assert.is_string(json.encode(env))
    end)

    it("keeps marked empty arrays and objects, and null, in the result", function()
      local env = run("empties", {})
      assert.equals("ok", env.status)
      local text = H.encode(env.output, { sort_keys = true })
      assert.equals('{"a":[],"l":[1,2],"n":null,"o":{}}', text)
    end)

    it("ends a result failing output.schema in invalid_output", function()
      local err = fails(run("bad_schema", {}), "invalid_output")
      assert.is_table(err.details.errors)
      assert.equals("required", err.details.errors[1].keyword)
    end)
  end)

  describe("files", function()
    it("reads inside allowed_paths", function()
      H.write_file(fsdir .. "/hello.txt", "hello\n")
      local env = run("reader", { path = fsdir .. "/hello.txt" })
      assert.equals("ok", env.status)
      assert.equals("hello\n", env.output.content)
    end)

    it("ends a read outside allowed_paths in sandbox_violation, without naming the path", function()
      for _, p in ipairs({ "/etc/passwd", fsdir .. "/../../etc/passwd" }) do
        local err = fails(run("reader", { path = p }), "sandbox_violation")
        assert.falsy(err.message:find("passwd", 1, true), err.message)
        assert.falsy(H.encode(err):find("passwd", 1, true))
      end
    end)

    it("keeps the violation even when the tool catches it", function()
      fails(run("reader", { path = "/etc/passwd", catch = true }), "sandbox_violation")
      assert.equals("ok", run("reader", { path = fsdir .. "/hello.txt" }).status)
    end)
  end)

  describe("levels", function()
    it("gives a none tool the full standard library", function()
      local env = run("trusted", {})
      assert.equals("ok", env.status)
      assert.equals("none", env.metadata.security_level)
      assert.same({ io = "table", execute = "function", debug = "table", require = "function" }, env.output)
    end)

    it("gives a relaxed tool none of it", function()
      local env = run("restricted", {})
      assert.same({ io = "nil", execute = "nil", debug = "nil", require = "nil", strmeta = "nil" },
        env.output)
    end)

    it("keeps globals per tool: a second call sees them, another tool does not", function()
      -- Documented: relaxed and none tools have a per-tool state (DESIGN.md).
      assert.same({ seen = "yes" }, run("poison", { set = true }).output)
      assert.same({ seen = "yes" }, run("poison", {}).output)
      assert.same({ seen = "no" }, run("victim", {}).output)
    end)
  end)

  describe("observation", function()
    it("reports progress to opts.on_progress", function()
      local got = {}
      local env = run("wait", { ms = 10 }, nil, {
        on_progress = function(done, total, message) got[#got + 1] = { done, total, message } end,
      })
      assert.equals("ok", env.status)
      assert.same({ { 1, 3, "started" }, { 3, 3, "done" } }, got)
    end)

    it("emits execution.start and execution.stop", function()
      local evs = {}
      local sub = engine:subscribe("execution.", function(ev) evs[#evs + 1] = ev end)
      local env = run("echo", { x = 1 })
      engine:unsubscribe(sub)
      local start, stop, exc
      for _, ev in ipairs(evs) do
        if ev.metadata.execution_id == env.execution_id then
          if ev.name == "execution.start" then start = ev end
          if ev.name == "execution.stop" then stop = ev end
          if ev.name == "execution.exception" then exc = ev end
        end
      end
      assert.is_table(start)
      assert.equals("echo", start.metadata.tool)
      assert.is_table(stop)
      assert.equals("echo", stop.metadata.tool)
      assert.equals("ok", stop.metadata.status)
      assert.is_number(stop.measurements.duration_ms)
      assert.is_nil(exc)
    end)

    it("emits execution.exception on an error", function()
      local evs = {}
      local sub = engine:subscribe("execution.exception", function(ev) evs[#evs + 1] = ev end)
      local env = run("boom", {})
      engine:unsubscribe(sub)
      assert.equals(1, #evs)
      assert.equals(env.execution_id, evs[1].metadata.execution_id)
      assert.equals("boom", evs[1].metadata.tool)
      assert.equals("tool_error", evs[1].metadata.kind)
      assert.is_number(evs[1].measurements.duration_ms)
    end)

    it("emits tool.loaded and tool.load_failed when tools load", function()
      -- (rd.open has no way to subscribe before its own load: see the
      -- report; this loads into an open engine instead.)
      local d = H.tmpdir()
      H.write_tool(d, "fresh", H.tool_source{ name = "fresh" })
      H.write_tool(d, "broken", "return 42")
      local e = H.open_engine(nil)
      local evs = {}
      e:subscribe("tool.", function(ev) evs[#evs + 1] = ev end)
      e:load_tools(d)
      local by = {}
      for _, ev in ipairs(evs) do by[ev.name] = ev end
      assert.is_table(by["tool.loaded"])
      assert.equals("fresh", by["tool.loaded"].metadata.tool)
      assert.is_table(by["tool.load_failed"])
      assert.truthy(by["tool.load_failed"].metadata.reason:find("does not return a tool", 1, true))
      e:close()
    end)
  end)

  describe("unknown schema keywords", function()
    it("load the tool with a tool.warning event and engine.warnings", function()
      local d = H.tmpdir()
      H.write_tool(d, "typo", H.tool_source{ name = "typo",
        parameters = [[{ type = "object", properties = { n = { type = "integer", maximun = 3 } } }]] })
      local e = H.open_engine(nil)
      local evs = {}
      e:subscribe("tool.warning", function(ev) evs[#evs + 1] = ev end)
      local ok, problems = e:load_tools(d)
      assert.is_true(ok)
      assert.are.same({}, problems)
      local want = d .. '/typo.lua: parameters: /properties/n: unknown keyword "maximun" (did you mean "maximum"?)'
      assert.are.same({ want }, e.warnings)
      assert.equals(1, #evs)
      assert.equals("typo", evs[1].metadata.tool)
      assert.equals(want, evs[1].metadata.message)
      -- the tool runs; the misspelt bound checks nothing, as the standard says
      assert.equals("ok", e:execute("typo", { n = 9 }).status)
      e:close()
    end)
  end)

  describe("concurrency", function()
    it("completes five concurrent submits with distinct ids", function()
      local hs, ids = {}, {}
      for i = 1, 5 do hs[i] = engine:submit("wait", { ms = 20 }) end
      for i = 1, 5 do
        local env = hs[i]:wait()
        assert.equals("ok", env.status)
        assert.equals(hs[i].id, env.execution_id)
        ids[env.execution_id] = true
      end
      local n = 0
      for _ in pairs(ids) do n = n + 1 end
      assert.equals(5, n)
    end)

    it("runs different tools side by side", function()
      local a = engine:submit("wait", { ms = 30 })
      local b = engine:submit("echo", { v = 1 })
      assert.same({ v = 1 }, b:wait().output)
      assert.equals("ok", a:wait().status)
    end)
  end)

  describe("JSON across the boundary", function()
    it("keeps [] apart from {} through execute_json", function()
      local text, ok = engine:execute_json("echo", '{"list":[],"obj":{},"nested":{"l":[[]]}}')
      assert.is_true(ok)
      assert.truthy(text:find('"list":[]', 1, true), text)
      assert.truthy(text:find('"obj":{}', 1, true), text)
      assert.truthy(text:find('"l":[[]]', 1, true), text)
      local env = H.decode(text)
      assert.equals(json.array_mt, getmetatable(env.output.list))
    end)

    it("keeps integers exact up to 2^53", function()
      local text = engine:execute_json("echo",
        '{"max":9007199254740992,"below":9007199254740991,"neg":-9007199254740992}')
      assert.truthy(text:find('"max":9007199254740992', 1, true), text)
      assert.truthy(text:find('"below":9007199254740991', 1, true), text)
      assert.truthy(text:find('"neg":-9007199254740992', 1, true), text)
      local env = H.decode(text)
      assert.equals(2 ^ 53, env.output.max)
      assert.equals(2 ^ 53 - 1, env.output.below)
    end)

    it("refuses invalid UTF-8 in the params, naming it", function()
      local text, err = engine:execute_json("echo", '{"s":"\255\254"}')
      assert.is_nil(text)
      assert.truthy(err:find("UTF-8", 1, true), err)
      assert.truthy(err:find("params", 1, true), err)
    end)

    it("refuses params nested 200 deep", function()
      local deep = '{"a":' .. ("["):rep(200) .. ("]"):rep(200) .. "}"
      local text, err = engine:execute_json("echo", deep)
      assert.is_nil(text)
      assert.truthy(err:find("nesting", 1, true), err)
    end)

    it("passes the caller as JSON too", function()
      local text, ok = engine:execute_json("needs_read", "{}", '{"principal":"dan","capabilities":["fs.*"]}')
      assert.is_true(ok)
      text, ok = engine:execute_json("needs_read", "{}", '{"principal":"dan","capabilities":[]}')
      assert.is_false(ok)
      assert.equals("unauthorized", H.decode(text).error.kind)
    end)
  end)

  describe("close", function()
    it("cancels what runs, refuses new calls and leaves nothing running", function()
      local e = H.open_engine(dir)
      local spin = e:submit("spin", { how = "loop" }, nil)
      local h = submit_running(e, 60000)
      e:close()
      assert.is_true(h.done)
      fails(h.envelope, "cancelled")
      assert.is_true(spin.done)
      assert.equals("error", spin.envelope.status)
      assert.has_error(function() e:submit("echo", {}) end)
      e:close()   -- twice is fine
      -- nothing left spinning: the process uses (almost) no CPU while idle
      local c0 = os.clock()
      os.execute("sleep 0.3")
      assert.is_true(os.clock() - c0 < 0.15, "a tool thread is still running after close")
      -- and no child process is left behind
      local pid = H.read_file("/proc/self/stat"):match("^(%d+)")
      -- (env -u: in the sanitizer build LD_PRELOAD holds libasan, and ps
      -- hangs under it)
      local p = io.popen("env -u LD_PRELOAD ps -o comm= --ppid " .. pid)
      local left = {}
      for comm in p:lines() do
        if comm ~= "ps" and comm ~= "sh" then left[#left + 1] = comm end
      end
      p:close()
      assert.same({}, left)
    end)
  end)
end)
