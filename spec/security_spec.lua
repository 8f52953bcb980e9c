-- security_spec.lua — hostile tools, as data.
--
-- Every case below is one hostile tool (a handler and what it needs) and the
-- exact error kind it must end in at each security level (DESIGN.md,
-- "Security levels" and "Result envelope"). The runner, for each level that
-- registry.RUNNABLE lists *when the spec runs*, writes the tool with that
-- level, opens an engine, executes it as an unprivileged caller, and checks:
--   * the envelope's status / error.kind is exactly the expected one;
--   * the envelope can be encoded as JSON (the result contract);
--   * no error message leaks a denied path or file contents;
--   * a sandbox_violation emits exactly one "security.violation" event naming
--     the tool, the caller's principal and the kind, and nothing else does;
--   * afterwards the same engine still serves a trivial echo tool.
-- Levels not runnable in this build are registered as pending, so the count
-- is visible and the cases start running when the level lands.
--
-- Cases marked `isolate` are known to leave a thread running forever in the
-- engine process (C code the instruction hook cannot interrupt) or to crash
-- it; at the in-process levels (relaxed, none) they run in a child luajit
-- with a guard, so this spec can neither hang nor die. Findings are written
-- next to the case as BUG notes.
--
-- At level none DESIGN.md guarantees only the deadline; the engine still
-- arms the instruction hook and the heap cap there, so plain loops and bombs
-- expect cpu_limit / memory_limit at none too, and only what escapes the
-- hook through none's own powers (jit.on, a __gc finalizer) expects timeout.
--
-- The hostile tools are generated here (tool_source), not kept as fixtures.
--
-- Names of dangerous functions are spelled in pieces ("load" .. "string"):
-- DESIGN.md refuses at load a tool whose source *names* one, and these
-- cases test what happens at run time.
local H = require "helpers"
local json = require "rubberduck.json"
local registry = require "rubberduck.registry"

local LEVELS = { "strict", "balanced", "relaxed", "none" }
local CALLER = { principal = "mallory", roles = { "intruder" } }
local MB = 1024 * 1024
-- Budgets of every hostile tool unless a case says otherwise.
local BASE = { max_cpu = 100, max_memory = 16 * MB, max_output = 64 * 1024, max_file_size = MB }
local TIMEOUT = 1500           -- ms, execution.timeout
local GUARD_MS = 5000          -- past its timeout, a call that has not answered is "hung"
local CHILD_GUARD_S = 20       -- seconds, for isolated cases
-- Never in an error message.
local SECRETS = { "/etc/passwd", "root:x:0", "TOPSECRET" }

local FRESH = { strict = true, balanced = true }   -- a fresh Lua state per execution

local function all(kind) return { strict = kind, balanced = kind, relaxed = kind, none = kind } end
-- strict, balanced and relaxed (the restricted environment) vs none.
local function restricted(kind, none_kind)
  return { strict = kind, balanced = kind, relaxed = kind, none = none_kind }
end

local function msg_has(r, text)
  local m = r.env.error ~= json.null and r.env.error.message or ""
  assert.is_truthy(m:find(text, 1, true), ("message %q does not contain %q"):format(m, text))
end

-- At the restricted levels the name is absent: calling it fails with
-- "attempt to call ... (a nil value)"; at none it works.
local function absent_at_restricted(none_check)
  return function(r, level)
    if level == "none" then
      if none_check then none_check(r.env.output) end
    else
      msg_has(r, "nil value")
    end
  end
end

local function q(s) return H.shell_quote(s) end
local function sh(cmd) local ok = os.execute(cmd) assert(ok == 0 or ok == true, cmd) end

-- ---- the cases ------------------------------------------------------------------------------

local GROUPS = {}
-- defaults: { security = {...}, timeout = ms, isolate = bool } for every case of the group.
local function group(name, cases, defaults)
  for _, c in ipairs(cases) do
    if defaults then
      local sec = {}
      for k, v in pairs(defaults.security or {}) do sec[k] = v end
      for k, v in pairs(c.security or {}) do sec[k] = v end
      c.security = sec
      c.timeout = c.timeout or defaults.timeout
      if c.isolate == nil then c.isolate = defaults.isolate end
    end
  end
  GROUPS[#GROUPS + 1] = { name = name, cases = cases }
end

group("environment escapes", {
  { id = "getfenv_absent",
    handler = [[function()
      local f = _G["get" .. "fenv"]
      local env = f(0)
      return { has_io = rawget(env, "io") ~= nil }
    end]],
    expect = restricted("tool_error", "ok"),
    check = absent_at_restricted(function(out) assert.is_true(out.has_io) end) },

  { id = "setfenv_absent",
    handler = [[function()
      local f = _G["set" .. "fenv"]
      f(1, {})
      return { replaced = true }
    end]],
    expect = restricted("tool_error", "ok"), check = absent_at_restricted() },

  { id = "loadstring_absent",
    handler = [[function()
      local f = _G["load" .. "string"]
      return { v = f("return 6 * 7")() }
    end]],
    expect = restricted("tool_error", "ok"),
    check = absent_at_restricted(function(out) assert.equal(42, out.v) end) },

  { id = "load_absent",
    handler = [[function()
      local f = _G["lo" .. "ad"]
      return { v = f("return 6 * 7")() }
    end]],
    expect = restricted("tool_error", "ok"),
    check = absent_at_restricted(function(out) assert.equal(42, out.v) end) },

  { id = "loadfile_dofile_absent",
    handler = [[function()
      local lf, df = _G["load" .. "file"], _G["do" .. "file"]
      return { lf = type(lf("/dev/null")), df = select("#", df("/dev/null")) }
    end]],
    expect = restricted("tool_error", "ok"),
    check = absent_at_restricted(function(out) assert.same({ lf = "function", df = 0 }, out) end) },

  { id = "require_absent",
    handler = [[function()
      local r = _G["req" .. "uire"]
      local os_ = r("os")
      return { t = type(os_["exe" .. "cute"]) }
    end]],
    expect = restricted("tool_error", "ok"),
    check = absent_at_restricted(function(out) assert.equal("function", out.t) end) },

  { id = "string_dump_absent",
    handler = [[function()
      local d = string["du" .. "mp"] or ("")["du" .. "mp"]
      return { n = #d(function() return 1 end) }
    end]],
    expect = restricted("tool_error", "ok"),
    check = absent_at_restricted(function(out) assert.is_true(out.n > 0) end) },

  { id = "string_metatable_hidden",
    handler = [[function()
      local mt = getmetatable("")
      return { t = type(mt.__index) }
    end]],
    expect = restricted("tool_error", "ok"),
    check = function(r, level)
      if level == "none" then assert.equal("table", r.env.output.t) else msg_has(r, "nil value") end
    end },

  { id = "string_metatable_poison",
    -- Poisons whatever string machinery it can reach; ANOTHER tool, called
    -- next on the same engine, must see clean strings at every level.
    handler = [[function()
      local mt = getmetatable("")          -- reachable only at level none
      if mt then mt.__index = function() return function() return "PWNED" end end end
      string.upper = function() return "PWNED" end
      string.lower = function() return "pwned" end
      rawset(string, "rep", function() return "PWNED" end)
      return { poisoned = true }
    end]],
    tools = { victim = [[function()
      return { a = ("abc"):upper(), b = string.upper("abc"), c = ("ABC"):lower(),
               d = string.lower("ABC"), e = ("ab"):rep(2), f = string.rep("ab", 2) }
    end]] },
    calls = {
      { expect = all("ok") },
      { tool = "victim", expect = all("ok"), check = function(r)
        assert.same({ a = "ABC", b = "ABC", c = "abc", d = "abc", e = "abab", f = "abab" }, r.env.output)
      end },
    } },

  { id = "rawget_probe",
    handler = [[function()
      local found = {}
      for _, n in ipairs({ "io", "debug", "ffi", "jit", "package", "new" .. "proxy", "gcinfo",
                           "module", "load" .. "string", "req" .. "uire", "get" .. "fenv" }) do
        if rawget(_G, n) ~= nil then found[#found + 1] = n end
      end
      local os_ = rawget(_G, "os")
      for _, n in ipairs({ "exe" .. "cute", "exit", "getenv", "remove", "rename", "tmpname", "setlocale" }) do
        if os_ and rawget(os_, n) ~= nil then found[#found + 1] = "os." .. n end
      end
      local str = rawget(_G, "string")
      if str and rawget(str, "du" .. "mp") ~= nil then found[#found + 1] = "string.dump" end
      return { n = #found, found = table.concat(found, " ") }
    end]],
    expect = all("ok"),
    check = function(r, level)
      local out = r.env.output
      if level == "none" then
        for _, n in ipairs({ "io", "debug", "jit", "package", "os.execute" }) do
          assert.is_truthy((" " .. out.found .. " "):find(" " .. n .. " ", 1, true), n .. " at none")
        end
      else
        assert.equal("", out.found)
      end
    end },

  { id = "coroutine_globals",
    -- Look for the real globals through coroutines and error objects.
    handler = [[function()
      local found = {}
      local co = coroutine.create(function() return rawget(_G, "io"), rawget(_G, "debug") end)
      local _, io_, dbg = coroutine.resume(co)
      if io_ ~= nil then found[#found + 1] = "io via coroutine" end
      if dbg ~= nil then found[#found + 1] = "debug via coroutine" end
      local w = coroutine.wrap(function() coroutine.yield(rawget(_G, "package")) end)
      if w() ~= nil then found[#found + 1] = "package via wrap" end
      local _, e = coroutine.resume(coroutine.create(function() error({ env = _G }) end))
      if type(e) == "table" and rawget(e.env, "io") ~= nil then found[#found + 1] = "io via error" end
      local main = coroutine.running()
      if main ~= nil and type(main) ~= "thread" then found[#found + 1] = "odd running()" end
      return { n = #found }
    end]],
    expect = all("ok"),
    check = function(r, level)
      if level == "none" then assert.is_true(r.env.output.n > 0) else assert.equal(0, r.env.output.n) end
    end },

  { id = "collectgarbage_collect",
    handler = [[function()
      local c = collectgarbage("count")
      collectgarbage("collect")
      return { counted = c > 0 }
    end]],
    expect = restricted("tool_error", "ok"),
    check = function(r, level) if level ~= "none" then msg_has(r, "collectgarbage") end end },

  { id = "collectgarbage_stop",
    handler = [[function() collectgarbage("stop") return { stopped = true } end]],
    expect = restricted("tool_error", "ok") },

  { id = "io_open_passwd",
    handler = [[function()
      local f = io.open("/etc/passwd")
      return { n = #f:read("*a") }
    end]],
    expect = restricted("tool_error", "ok"),
    check = function(r, level) if level ~= "none" then msg_has(r, "nil value") end end },

  { id = "os_execute_absent",
    handler = [[function()
      local ex = os["exe" .. "cute"]
      return { rc = ex("true") }
    end]],
    expect = restricted("tool_error", "ok"), check = absent_at_restricted() },
})

group("endless work", {
  { id = "while_true", handler = [[function() while true do end end]], expect = all("cpu_limit") },
  { id = "repeat_until_false", handler = [[function() repeat until false end]], expect = all("cpu_limit") },
  { id = "for_to_math_huge", handler = [[function() for i = 1, math.huge do end end]], expect = all("cpu_limit") },
  { id = "hot_numeric_loop",
    -- what the JIT would compile into a trace no count hook sees (tool states run with the JIT off)
    handler = [[function()
      local x = 0
      for i = 1, 1e15 do x = (x + i * 7) % 1000003 end
      return { x = x }
    end]],
    expect = all("cpu_limit") },

  { id = "jit_switched_on",
    -- At none the tool has `jit` and turns the compiler back on: compiled
    -- loops never fire the count hook, so only the deadline ends it; the
    -- thread's CPU clock then shows the budget spent: `cpu_limit`, not a
    -- hang. (The engine answers, but the call thread stays busy forever:
    -- isolated.)
    isolate = true, timeout = 1500, -- ample: the budget (50 ms of CPU) must be spent first on a loaded machine
    handler = [[function()
      local j = rawget(_G, "jit")
      if j then j.on() end
      local x = 0
      for i = 1, 1e15 do x = (x + i * 7) % 1000003 end
      return { x = x }
    end]],
    expect = all("cpu_limit") },

  { id = "pcall_loop_repeated",
    handler = [[function() while true do pcall(function() while true do end end) end end]],
    expect = all("cpu_limit") },

  { id = "pcall_swallow_then_return",
    handler = [[function()
      for i = 1, 50 do pcall(function() while true do end end) end
      return { survived = true }
    end]],
    expect = all("cpu_limit") },

  { id = "xpcall_looping_handler",
    -- The hook raises the breach from inside the hook, and LuaJIT runs the
    -- xpcall message handler with the hook still marked active: a loop there
    -- never sees the hook again. Restricted tools get an xpcall that runs
    -- the handler after unwinding (toolstate.lua). BUG at none: define()
    -- copies the raw xpcall over it, so the CPU budget is bypassed, the call
    -- is answered `timeout` by the overdue timer and its thread spins forever.
    isolate = true, timeout = 1500, -- ample: the budget (50 ms of CPU) must be spent first on a loaded machine
    handler = [[function()
      return { xpcall(function() while true do end end, function(e) while true do end end) }
    end]],
    expect = all("cpu_limit") },

  { id = "xpcall_swallowing_handler",
    handler = [[function()
      local ok = xpcall(function() while true do end end, function(e) return "swallowed" end)
      return { ok = ok }
    end]],
    expect = all("cpu_limit") },

  { id = "coroutine_wrap_loop",
    handler = [[function() coroutine.wrap(function() while true do end end)() end]],
    expect = all("cpu_limit") },

  { id = "coroutine_resumed_forever",
    handler = [[function()
      local co = coroutine.wrap(function() while true do coroutine.yield() end end)
      while true do co() end
    end]],
    expect = all("cpu_limit") },

  { id = "gsub_callback_loop",
    handler = [[function() return { ("abc"):gsub(".", function() while true do end end) } end]],
    expect = all("cpu_limit") },

  { id = "sort_comparator_loop",
    handler = [[function()
      local t = { 3, 1, 2 }
      table.sort(t, function() while true do end end)
      return t
    end]],
    expect = all("cpu_limit") },

  { id = "index_metamethod_loop",
    handler = [[function()
      local t = setmetatable({}, { __index = function() while true do end end })
      return { t.x }
    end]],
    expect = all("cpu_limit") },

  { id = "error_object_looping_tostring",
    handler = [[function()
      error(setmetatable({}, { __tostring = function() while true do end end }))
    end]],
    expect = all("tool_error"),
    check = function(r) assert.equal("error object without a message", r.env.error.message) end },

  { id = "tostring_looping_metamethod",
    handler = [[function()
      return { s = tostring(setmetatable({}, { __tostring = function() while true do end end })) }
    end]],
    expect = all("cpu_limit") },

  { id = "gc_finalizer_loop",
    -- newproxy is absent at the restricted levels (no way to get a __gc);
    -- at none it exists, and LuaJIT runs finalizers with hooks disabled: the
    -- loop can only be ended by the deadline; its CPU clock then shows the
    -- budget spent: `cpu_limit`, not a hang.
    isolate = true, timeout = 1500, -- ample: the budget (50 ms of CPU) must be spent first on a loaded machine
    handler = [[function()
      local np = rawget(_G, "new" .. "proxy")
      if not np then error("newproxy is absent", 0) end
      local p = np(true)
      getmetatable(p).__gc = function() while true do end end
      p = nil
      collectgarbage("collect")
      return { collected = true }
    end]],
    expect = restricted("tool_error", "cpu_limit"),
    check = function(r, level)
      if level ~= "none" then assert.equal("newproxy is absent", r.env.error.message) end
    end },

  { id = "sleep_past_timeout", timeout = 300,
    handler = [[function(p, ctx) ctx.sleep(10000) return { woke = true } end]],
    expect = all("timeout") },

  { id = "sleep_swallowed_by_pcall", timeout = 300,
    handler = [[function(p, ctx) while true do pcall(ctx.sleep, 10000) end end]],
    expect = all("timeout") },

  { id = "deadline_rewritten", timeout = 300,
    handler = [[function(p, ctx)
      ctx.deadline = math.huge
      while true do ctx.sleep(20) end
    end]],
    expect = all("timeout") },

  { id = "constraint_loops",
    top = "constraints = { function(p) while true do end end }",
    handler = [[function() return { reached = true } end]],
    expect = all("cpu_limit") },
}, { security = { max_cpu = 50 } })

-- Pattern matches run in C (core/sandbox/pattern.c), where no instruction
-- hook fires; the matcher polls the tool state every few thousand steps, so
-- a backtracking pattern ends like a Lua loop: the breach is recorded on the
-- call's own thread, which then stops. At relaxed and none the message
-- tells which way the call ended: the breach's own text ("CPU budget of 50
-- ms spent", "deadline of 300 ms passed"), not the engine's answer for a call it had to
-- abandon at its deadline ("... the call's state was discarded"), which
-- would mean the thread is still burning its CPU.
local PATHOLOGICAL = [[local s = string.rep("a", 40)
      local p = string.rep("a*", 40) .. "b"]]
local function ended_on_its_thread(text)
  return function(r, level)
    if level == "relaxed" or level == "none" then
      assert.equal(text, r.env.error.message)
    end
  end
end

group("pathological patterns", {
  { id = "pattern_find",
    handler = [[function()
      ]] .. PATHOLOGICAL .. [[
      return { s:find(p) }
    end]],
    expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },

  { id = "pattern_match_method",
    handler = [[function()
      ]] .. PATHOLOGICAL .. [[
      return { s:match(p) }
    end]],
    expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },

  { id = "pattern_gmatch",
    handler = [[function()
      ]] .. PATHOLOGICAL .. [[
      local n = 0
      for _ in string.gmatch(s, p) do n = n + 1 end
      return { n = n }
    end]],
    expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },

  { id = "pattern_gsub",
    handler = [[function()
      ]] .. PATHOLOGICAL .. [[
      return { string.gsub(s, p, "x") }
    end]],
    expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },

  { id = "pattern_deep_nesting",
    -- captures and optional items nested 32 deep, on a long subject
    handler = [[function()
      local s = string.rep("a", 5000)
      return { s:find(string.rep("(a?)", 32) .. string.rep("a-", 30) .. "$b") }
    end]],
    expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },

  { id = "pattern_long_set",
    -- each test of a byte against a set of 100 000 bytes is one step of the
    -- matcher but a long scan: the scans count too
    handler = [[function()
      local s = string.rep("b", 100000)
      return { s:find("[" .. string.rep("a", 100000) .. "b]*c") }
    end]],
    expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },

  { id = "gsub_empty_captures",
    -- a replacement of 100 000 empty captures at each of 100 001 matches
    -- adds nothing to the result (no allocation) and takes long
    handler = [[function()
      local s = string.rep("b", 100000)
      return { n = #string.gsub(s, "(a*)", string.rep("%1", 100000)) }
    end]],
    expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },

  { id = "pattern_swallowed_by_pcall",
    handler = [[function()
      ]] .. PATHOLOGICAL .. [[
      local n = 0
      while true do
        local ok = pcall(string.find, s, p)
        n = n + 1
      end
    end]],
    expect = all("cpu_limit") },

  { id = "pattern_past_deadline", security = { max_cpu = 60000 }, timeout = 300,
    handler = [[function()
      ]] .. PATHOLOGICAL .. [[
      return { s:find(p) }
    end]],
    expect = all("timeout"), check = ended_on_its_thread("deadline of 300 ms passed") },

  { id = "pattern_again_after_breach",
    -- the same tool twice: after the first call's breach the second one
    -- runs and ends the same way
    handler = [[function()
      ]] .. PATHOLOGICAL .. [[
      return { s:find(p) }
    end]],
    calls = {
      { expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },
      { expect = all("cpu_limit"), check = ended_on_its_thread("CPU budget of 50 ms spent") },
    } },

  { id = "pattern_too_complex",
    handler = [[function()
      return { ("a"):rep(1000):find(("a?"):rep(500)) }
    end]],
    expect = all("tool_error"),
    check = function(r) msg_has(r, "pattern too complex") end },
}, { security = { max_cpu = 50 }, timeout = 1500 })

group("memory bombs", {
  { id = "string_rep_1e9", handler = [[function() return { n = #string.rep("x", 1e9) } end]],
    expect = all("memory_limit") },

  { id = "string_rep_2e31",
    -- LuaJIT refuses a string this long before the allocator sees it; the
    -- checked string.rep records it as a memory breach
    handler = [[function() return { n = #("x"):rep(2^31) } end]],
    expect = all("memory_limit") },

  { id = "string_rep_past_max_string",
    handler = [[function() return { n = #string.rep("xy", 2^30, ",") } end]],
    expect = all("memory_limit") },

  { id = "string_rep_2e31_swallowed",
    handler = [[function()
      local ok = pcall(string.rep, "x", 2^31 - 1)
      return { ok = ok }
    end]],
    expect = all("memory_limit") },

  { id = "table_concat_past_max_string",
    handler = [[function()
      local t, s = {}, ("x"):rep(1024 * 1024)
      for i = 1, 3000 do t[i] = s end
      local ok = pcall(table.concat, t)
      return { ok = ok }
    end]],
    expect = all("memory_limit") },

  { id = "table_growth",
    handler = [[function()
      local t = {}
      for i = 1, 1e9 do t[i] = { i } end
      return { n = #t }
    end]],
    expect = all("memory_limit") },

  { id = "concat_doubling",
    handler = [[function()
      local s = "x"
      for i = 1, 64 do s = s .. s end
      return { n = #s }
    end]],
    expect = all("memory_limit") },

  { id = "bomb_swallowed_by_pcall",
    handler = [[function()
      local ok = pcall(string.rep, "x", 1e9)
      return { swallowed = not ok }
    end]],
    expect = all("memory_limit") },

  { id = "bomb_loop_in_pcall",
    handler = [[function()
      for i = 1, 10 do pcall(function() local t = {} while true do t[#t + 1] = {} end end) end
      return { survived = true }
    end]],
    expect = all("memory_limit") },

  { id = "bomb_in_coroutine",
    handler = [[function()
      coroutine.wrap(function()
        local t = {}
        while true do t[#t + 1] = ("x"):rep(64) .. #t end
      end)()
    end]],
    expect = all("memory_limit") },

  { id = "deep_result_nesting",
    handler = [[function()
      local t = {}
      local c = t
      for i = 1, 1e5 do c.x = {} c = c.x end
      return t
    end]],
    expect = all("invalid_output") },

  { id = "json_decode_nesting_bomb",
    handler = [[function()
      local v = json.decode(string.rep("[", 1e6))
      return { refused = v == nil }
    end]],
    expect = all("ok"),
    check = function(r) assert.is_true(r.env.output.refused) end },
}, { security = { max_cpu = 2000 }, timeout = 5000 })   -- the memory cap must come first

group("stack exhaustion", {
  { id = "deep_recursion",
    handler = [[function()
      local function f() return f() + 1 end
      return { f() }
    end]],
    expect = all("tool_error"), check = function(r) msg_has(r, "stack overflow") end },

  { id = "coroutine_nesting_100000",
    -- Each level is a lua_resume on the C stack: with 8 MB of C stack the
    -- 16 MB heap cap is reached first. (Crashes with 1 MB call-thread stacks.)
    handler = [[function()
      local function f(n)
        if n == 0 then return 0 end
        return coroutine.wrap(function() return f(n - 1) + 1 end)()
      end
      return { depth = f(100000) }
    end]],
    expect = all("memory_limit") },

  { id = "gsub_callback_recursion",
    -- BUG (C stack): every level is a C string.gsub (with an 8 KB
    -- luaL_Buffer on the C stack) calling back into Lua; LuaJIT has no C
    -- call depth limit, so the thread's C stack overflows before the Lua
    -- stack does: SIGSEGV, the whole engine process dies.
    handler = [[function()
      local function g(s) return (s:gsub(".", function(c) return g(c) end)) end
      return { g("x") }
    end]],
    expect = all("tool_error") },

  { id = "gsub_index_recursion",
    -- BUG: the same C-stack crash through a replacement table's __index.
    handler = [[function()
      local t
      t = setmetatable({}, { __index = function(_, k) return (("x"):gsub(".", t)) end })
      return { ("x"):gsub(".", t) }
    end]],
    expect = all("tool_error") },

  { id = "nested_pcall",
    handler = [[function()
      local function f(n)
        local ok, v = pcall(f, n + 1)
        if not ok then error(v, 0) end
        return v
      end
      return { f(1) }
    end]],
    expect = all("tool_error"), check = function(r) msg_has(r, "stack overflow") end },

  { id = "sort_recursion",
    handler = [[function()
      local function s()
        local t = { 2, 1, 3 }
        table.sort(t, function(a, b) s() return a < b end)
      end
      s()
    end]],
    expect = all("tool_error") },

  { id = "tostring_recursion",
    handler = [[function()
      local t
      t = setmetatable({}, { __tostring = function() return "(" .. tostring(t) .. ")" end })
      return { s = tostring(t) }
    end]],
    expect = all("tool_error") },

  { id = "unpack_flood",
    handler = [[function() return { n = select("#", unpack({}, 1, 1e7)) } end]],
    expect = all("tool_error") },
}, { security = { max_cpu = 2000 }, timeout = 5000,   -- the stack must run out first
     isolate = true })   -- C recursion can take the whole engine process down

group("output floods", {
  { id = "result_100mb_string",
    security = { max_memory = 256 * MB, max_cpu = 3000 }, timeout = 6000,
    handler = [[function() return { s = string.rep("x", 100 * 1024 * 1024) } end]],
    expect = all("output_limit") },

  { id = "result_million_keys",
    security = { max_memory = 64 * MB, max_cpu = 2000 }, timeout = 5000,
    handler = [[function()
      local t = {}
      for i = 1, 1e6 do t[i] = true end
      return t
    end]],
    expect = all("output_limit") },

  { id = "print_flood",
    -- print goes to ctx.log. Decision: the call succeeds, and what the
    -- engine keeps and publishes of one execution's log is bounded (here by
    -- max_output). BUG: every line is kept in the handle (h.logs) and
    -- emitted as an event: 20 MB here, gigabytes at the default budgets.
    security = { max_cpu = 5000 }, timeout = 10000,
    handler = [[function()
      local line = ("p"):rep(1000)
      for i = 1, 20000 do print(line) end
      return { printed = 20000 }
    end]],
    expect = all("ok"),
    check = function(r)
      assert.is_true(r.log_bytes <= BASE.max_output + 4096,
        ("the engine took %d bytes of log from one execution (max_output %d)"):format(r.log_bytes, BASE.max_output))
    end },

  { id = "progress_flood",
    security = { max_cpu = 5000 }, timeout = 10000,
    handler = [[function(p, ctx)
      for i = 1, 20000 do ctx.progress(i, 20000, "step") end
      return { done = true }
    end]],
    expect = all("ok") },

  { id = "log_line_huge",
    handler = [[function(p, ctx)
      ctx.log("info", string.rep("x", 2 * 1024 * 1024))
      return { logged = true }
    end]],
    expect = all("ok"),
    check = function(r) assert.is_true(r.log_max <= 4096, "a log line of " .. r.log_max .. " bytes") end },

  { id = "error_message_flood",
    -- BUG: the error message is copied out whole (toolstate.lua error_text;
    -- l_lstate.c copies the status without a limit): 4 MB of message with
    -- max_output = 64 KB.
    handler = [[function() error(string.rep("e", 4 * 1024 * 1024), 0) end]],
    expect = all("tool_error"),
    check = function(r)
      assert.is_true(#r.env.error.message <= BASE.max_output,
        "error message of " .. #r.env.error.message .. " bytes")
    end },

  { id = "error_return_flood",
    handler = [[function() return nil, string.rep("e", 4 * 1024 * 1024) end]],
    expect = all("tool_error"),
    check = function(r)
      assert.is_true(#r.env.error.message <= BASE.max_output,
        "error message of " .. #r.env.error.message .. " bytes")
    end },
})

group("hostile results", {
  { id = "function_in_result", handler = [[function() return { f = print } end]],
    expect = all("invalid_output") },
  { id = "cyclic_result", handler = [[function() local t = {} t.self = { t } return t end]],
    expect = all("invalid_output") },
  { id = "coroutine_in_result",
    handler = [[function() return { co = coroutine.create(function() end) } end]],
    expect = all("invalid_output") },
  { id = "userdata_in_result",
    handler = [[function()
      local np = rawget(_G, "new" .. "proxy")
      if not np then error("newproxy is absent", 0) end
      return { u = np() }
    end]],
    expect = restricted("tool_error", "invalid_output") },
  { id = "nan_in_result", handler = [[function() return { x = 0 / 0 } end]],
    expect = all("invalid_output") },
  { id = "infinity_in_result", handler = [[function() return { x = math.huge, y = -math.huge } end]],
    expect = all("invalid_output") },
  { id = "non_finite_key", handler = [[function() return { [math.huge] = 1 } end]],
    expect = all("invalid_output") },
  { id = "table_key", handler = [[function() return { [{}] = 1 } end]],
    expect = all("invalid_output") },

  { id = "metamethods_dropped",
    -- copied raw: only the raw fields leave, no metamethod runs
    handler = [[function()
      local mt = {
        __index = function(t, k) return "IDX:" .. tostring(k) end,
        __pairs = function() error("__pairs ran") end,
        __len = function() return 99 end,
        __tostring = function() return "TS" end,
        __newindex = function() error("__newindex ran") end,
        __metatable = "locked",
      }
      return setmetatable({ a = 1, nested = setmetatable({ b = 2 }, mt) }, mt)
    end]],
    expect = all("ok"),
    check = function(r)
      local out = r.env.output
      local keys = {}
      for k in pairs(out) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "a", "nested" }, keys)
      assert.equal(1, out.a)
      assert.is_nil(rawget(out, "zzz"))
      assert.is_nil(out.zzz)                -- no __index came along
      assert.same({ b = 2 }, out.nested)
      assert.is_nil(out.nested.zzz)
      local mt = getmetatable(out)
      assert.is_true(mt == nil or mt.__index == nil)
    end },

  { id = "error_tostring_not_called",
    handler = [[function()
      error(setmetatable({}, { __tostring = function() return "FROM_METAMETHOD" end }))
    end]],
    expect = all("tool_error"),
    check = function(r)
      assert.is_falsy(r.env.error.message:find("FROM_METAMETHOD", 1, true))
      assert.equal("error object without a message", r.env.error.message)
    end },

  { id = "error_raw_message_only",
    handler = [[function()
      error(setmetatable({ message = "raw message" }, {
        __index = function() return "FROM_INDEX" end,
        __tostring = function() return "FROM_TOSTRING" end,
      }))
    end]],
    expect = all("tool_error"),
    check = function(r) assert.equal("raw message", r.env.error.message) end },

  { id = "invalid_utf8_output",
    -- Bytes that are not UTF-8 are carried as binary (issue 8): base64 in
    -- the envelope, their pointer in metadata.binary_paths, never corrupted.
    handler = [[function() return { s = "\255\254 not UTF-8" } end]],
    expect = all("ok"), check = function(r)
      assert.equal("//4gbm90IFVURi04", r.env.output.s)
      assert.equal("/s", r.env.metadata.binary_paths[1])
    end },

  { id = "invalid_utf8_error",
    -- BUG: same, through the error message (the runner checks that every
    -- envelope encodes as JSON).
    handler = [[function() error("\255\254 not UTF-8", 0) end]],
    expect = all("tool_error") },
})

-- fs cases: allowed_paths = { ROOT } (BASE/root), with ROOT/ok.txt; a
-- sibling directory BASE/outside holds files the tool must not touch.
local function fs_setup(ctx)
  H.write_file(ctx.root .. "/ok.txt", "fine")
  H.write_file(ctx.outside .. "/victim.txt", "TOPSECRET victim")
end

group("filesystem", {
  { id = "fs_read_etc_passwd", handler = [[function() return { s = fs.read("/etc/passwd") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_relative_dotdot",
    handler = [[function() return { s = fs.read("../../../../../../../../etc/passwd") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_absolute_dotdot",
    handler = [[function(p) return { s = fs.read(p.root .. "/../../../../../../../etc/passwd") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_absolute_outside",
    handler = [[function(p) return { s = fs.read(p.outside .. "/victim.txt") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_symlink_absolute",
    setup = function(ctx) sh("ln -s /etc/passwd " .. q(ctx.root .. "/passwd_link")) end,
    handler = [[function() return { s = fs.read("passwd_link") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_symlink_relative_escape",
    setup = function(ctx) sh("ln -s ../outside/victim.txt " .. q(ctx.root .. "/up")) end,
    handler = [[function() return { s = fs.read("up") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_magic_link",
    setup = function(ctx) sh("ln -s /proc/self/root " .. q(ctx.root .. "/proc_root")) end,
    handler = [[function() return { s = fs.read("proc_root/etc/passwd") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_dir_swapped_for_symlink",
    -- call 1 uses ROOT/d as a directory; between the calls it becomes a
    -- symlink to /etc; call 2 must not follow it.
    handler = [[function(p)
      if p.step == 1 then
        assert(fs.mkdir("d", { parents = true }))
        assert(fs.write("d/f.txt", "inside"))
        return { s = fs.read("d/f.txt") }
      end
      return { s = fs.read("d/passwd") }
    end]],
    calls = {
      { params = { step = 1 }, expect = all("ok"),
        check = function(r) assert.equal("inside", r.env.output.s) end },
      { params = { step = 2 }, expect = all("sandbox_violation"),
        before = function(ctx) sh(("rm -rf %s && ln -s /etc %s"):format(q(ctx.root .. "/d"), q(ctx.root .. "/d"))) end },
    } },

  { id = "fs_nul_in_path",
    handler = [[function() return { s = fs.read("ok.txt\0/../../../../../etc/passwd") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_prefix_confusion",
    security = { allowed_paths = { "$ROOT/a" } },
    setup = function(ctx)
      sh("mkdir -p " .. q(ctx.root .. "/a") .. " " .. q(ctx.root .. "/a-evil"))
      H.write_file(ctx.root .. "/a-evil/secret.txt", "TOPSECRET prefix")
    end,
    handler = [[function(p) return { s = fs.read(p.root .. "/a-evil/secret.txt") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_write_past_max_file_size",
    security = { max_file_size = 1024 },
    handler = [[function() assert(fs.write("big.txt", string.rep("x", 4096))) return { wrote = true } end]],
    expect = all("tool_error"),
    check = function(r, _, ctx)
      msg_has(r, "max_file_size")
      assert.is_nil(H.read_file(ctx.root .. "/big.txt"), "the oversized file was written")
    end },

  { id = "fs_append_past_max_file_size",
    security = { max_file_size = 1024 },
    handler = [[function()
      assert(fs.write("small.txt", string.rep("x", 1000)))
      local ok = fs.write("small.txt", string.rep("y", 100), { append = true })
      return { append_refused = ok == nil }
    end]],
    expect = all("ok"),
    check = function(r, _, ctx)
      assert.is_true(r.env.output.append_refused)
      assert.equal(1000, #H.read_file(ctx.root .. "/small.txt"))
    end },

  { id = "fs_without_allowed_paths",
    -- BUG (toolstate.lua make_env): without allowed_paths, fs.* is a Lua stub
    -- that raises a plain error: tool_error, swallowable by pcall, no
    -- security.violation event. Every path is outside allowed_paths here.
    security = { allowed_paths = false },
    handler = [[function() return { s = fs.read("/etc/passwd") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_violation_swallowed",
    handler = [[function()
      local ok = pcall(fs.read, "/etc/passwd")
      return { swallowed = not ok }
    end]],
    expect = all("sandbox_violation") },

  { id = "fs_exists_outside",
    handler = [[function() return { e = fs.exists("/etc/passwd") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_list_root",
    handler = [[function() return { l = fs.list("/") } end]],
    expect = all("sandbox_violation") },

  { id = "fs_remove_outside",
    handler = [[function(p) return { r = fs.remove(p.root .. "/../outside/victim.txt") } end]],
    expect = all("sandbox_violation"),
    check = function(_, _, ctx) assert.is_truthy(H.read_file(ctx.outside .. "/victim.txt")) end },

  { id = "fs_mkdir_escape",
    handler = [[function() return { r = fs.mkdir("../escaped", { parents = true }) } end]],
    expect = all("sandbox_violation"),
    check = function(_, _, ctx) assert.is_falsy(os.rename(ctx.base .. "/escaped", ctx.base .. "/escaped")) end },

  { id = "fs_write_through_symlink",
    setup = function(ctx) sh("ln -s ../outside/victim.txt " .. q(ctx.root .. "/w")) end,
    handler = [[function() return { r = fs.write("w", "pwned") } end]],
    expect = all("sandbox_violation"),
    check = function(_, _, ctx) assert.equal("TOPSECRET victim", H.read_file(ctx.outside .. "/victim.txt")) end },
})

group("persistence across executions", {
  { id = "global_persistence",
    -- relaxed and none keep one state per tool (core/README.md, "States"):
    -- a global survives to the next call, whoever makes it; strict and
    -- balanced run each call in a fresh state.
    handler = [[function() counter = (counter or 0) + 1 return { n = counter } end]],
    calls = {
      { expect = all("ok") },
      { expect = all("ok"), check = function(r, level)
        assert.equal(FRESH[level] and 1 or 2, r.env.output.n)
      end },
    } },

  { id = "upvalue_persistence",
    prelude = "local n = 0",
    handler = [[function() n = n + 1 return { n = n } end]],
    calls = {
      { expect = all("ok") },
      { expect = all("ok"), check = function(r, level)
        assert.equal(FRESH[level] and 1 or 2, r.env.output.n)
      end },
    } },

  { id = "breach_discards_state",
    -- after a breach the per-tool state is thrown away (README: "A state is
    -- discarded after any breach"): the marker of call 1 is gone at every level.
    handler = [[function(p)
      if p.step == 1 then marker = "set" return { marker = marker } end
      if p.step == 2 then while true do end end
      return { marker = marker or "gone" }
    end]],
    calls = {
      { params = { step = 1 }, expect = all("ok") },
      { params = { step = 2 }, expect = all("cpu_limit") },
      { params = { step = 3 }, expect = all("ok"),
        check = function(r) assert.equal("gone", r.env.output.marker) end },
    } },

  { id = "stdlib_poisoning",
    handler = [[function(p)
      if p.step == 1 then
        string.upper = function() return "PWNED" end
        math.floor = function() return -1 end
        table.concat = function() return "PWNED" end
        setmetatable(_G, { __index = function() return "PWNED" end })
        return { poisoned = true }
      end
      return { up = string.upper("a"), mup = ("a"):upper(), fl = math.floor(1.5),
               cc = table.concat({ "a", "b" }), ghost = tostring(_G.ghost_value) }
    end]],
    calls = {
      { params = { step = 1 }, expect = all("ok") },
      { params = { step = 2 }, expect = all("ok"), check = function(r, level)
        local want
        if FRESH[level] then
          want = { up = "A", mup = "A", fl = 1, cc = "ab", ghost = "nil" }
        elseif level == "relaxed" then
          -- the tool's own environment persists; the string methods are
          -- the state's real library, which the tool cannot reach
          want = { up = "PWNED", mup = "A", fl = -1, cc = "PWNED", ghost = "PWNED" }
        else
          want = { up = "PWNED", mup = "PWNED", fl = -1, cc = "PWNED", ghost = "PWNED" }
        end
        assert.same(want, r.env.output)
      end },
    } },
})

-- ---- running one case -------------------------------------------------------------------------

-- Executes the calls of a plan on a fresh engine and gathers what happened.
-- The same code runs here and in a child luajit (isolated cases), so it is
-- kept as source text.
local COLLECT_SRC = [==[
local H = require "helpers"
local json = require "rubberduck.json"
-- engine: a shared engine to use (nil: open one on plan.dir).
return function(plan, hooks, engine)
  local res = { calls = {}, problems = {} }
  local shared = engine ~= nil
  engine = engine or H.open_engine(plan.dir, { data_dir = plan.data_dir })
  res.engine = engine
  for i, p in ipairs(engine.problems) do res.problems[i] = p end
  local subs = {}
  local by_exec = {}
  local function bucket(id)
    local b = by_exec[id or "?"]
    if not b then
      b = { violations = {}, log_bytes = 0, log_lines = 0, log_max = 0, progress = 0 }
      by_exec[id or "?"] = b
    end
    return b
  end
  subs[#subs + 1] = engine:subscribe("security.violation", function(ev)
    local m = ev.metadata
    local v = bucket(m.execution_id).violations
    v[#v + 1] = { tool = m.tool, principal = m.principal, kind = m.kind, execution_id = m.execution_id }
  end)
  subs[#subs + 1] = engine:subscribe("execution.log", function(ev)
    local b = bucket(ev.metadata.execution_id)
    local n = #(ev.metadata.message or "")
    b.log_bytes, b.log_lines = b.log_bytes + n, b.log_lines + 1
    if n > b.log_max then b.log_max = n end
  end)
  subs[#subs + 1] = engine:subscribe("execution.progress", function(ev)
    local b = bucket(ev.metadata.execution_id)
    b.progress = b.progress + 1
  end)
  local function call(tool, params)
    local h = engine:submit(tool, params, plan.caller)
    local env = h:wait(plan.guard_ms)
    if not env then return nil end
    local r = bucket(h.id)
    r.env = env
    local text, err = json.encode(env)
    if not text then r.encode_error = tostring(err) end
    return r
  end
  for i, c in ipairs(plan.calls) do
    if hooks and hooks[i] then hooks[i]() end
    local r = call(c.tool, c.params)
    if not r then res.hung = "call " .. i break end
    res.calls[i] = r
  end
  if not res.hung then
    local r = call("echo", { ping = "pong" })
    if r then res.echo = r.env else res.hung = "echo" end
  end
  if shared then for _, id in ipairs(subs) do engine:unsubscribe(id) end end
  return res
end
]==]

local collect = assert(loadstring(COLLECT_SRC, "=collect"))()

local CHILD_SRC = [==[
io.stdout:setvbuf("no")
local json = require "rubberduck.json"
local collect = assert(loadstring(%q, "=collect"))()
local plan = assert(json.decode(%q))
local ok, res = pcall(collect, plan)
if not ok then io.write("@@ERROR ", tostring(res), "\n") os.exit(3) end
res.engine = nil
for _, r in ipairs(res.calls) do
  if r.encode_error then
    local e = r.env.error
    r.env = { status = r.env.status, output = json.null,
              error = e ~= json.null and { kind = e.kind, message = "(not encodable)" } or json.null }
  end
end
io.write("@@RESULT ", assert(json.encode(res)), "\n")
-- Never close, never exit(): a pool thread may still be running tool code,
-- and libuv's destructor joins its threads at exit. Leave at once.
local ffi = require "ffi"
ffi.cdef "void _exit(int status);"
ffi.C._exit(0)
]==]

local function lua_value(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" then return string.format("%.17g", v) end
  if t == "boolean" then return tostring(v) end
  local parts = {}
  for i, x in ipairs(v) do parts[i] = lua_value(x) end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

local function tool_source(name, handler, c, level, ctx)
  local fields = {}
  for k, v in pairs(BASE) do fields[k] = v end
  fields.allowed_paths = { ctx.root }
  for k, v in pairs(c.security or {}) do fields[k] = v end
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  local sec = { ("level = %q"):format(level) }
  for _, k in ipairs(keys) do
    local v = fields[k]
    if v ~= false then
      if k == "allowed_paths" then
        local paths = {}
        for i, p in ipairs(v) do paths[i] = (p:gsub("%$ROOT", ctx.root)) end
        v = paths
      end
      sec[#sec + 1] = k .. " = " .. lua_value(v)
    end
  end
  local lines = {
    c.prelude or "",
    "return tool {",
    ("  metadata = { name = %q, description = %q },"):format(name, "hostile tool " .. name),
    c.top and ("  " .. c.top .. ",") or "",
    "  security = { " .. table.concat(sec, ", ") .. " },",
    ("  execution = { timeout = %d, handler = %s },"):format(c.timeout or TIMEOUT, handler),
    "}",
  }
  return table.concat(lines, "\n") .. "\n"
end

local function calls_of(c)
  return c.calls or { { expect = c.expect, check = c.check } }
end

-- Directories of one run: BASE/{tools,root,outside,data}.
local function make_ctx()
  local base = H.tmpdir()
  local ctx = { base = base, dir = base .. "/tools", root = base .. "/root",
                outside = base .. "/outside", data = base .. "/data" }
  sh("mkdir -p " .. q(ctx.dir) .. " " .. q(ctx.root) .. " " .. q(ctx.outside) .. " " .. q(ctx.data))
  return ctx
end

local function describe_env(env)
  if type(env) ~= "table" then return tostring(env) end
  if env.status == "ok" then return "ok: " .. tostring((json.encode(env.output))):sub(1, 200) end
  local e = env.error ~= json.null and env.error or {}
  return ("%s: %s"):format(tostring(e.kind), tostring(e.message):sub(1, 300))
end

local function run_child(plan)
  local src = CHILD_SRC:format(COLLECT_SRC, assert(json.encode(plan)))
  local out, err, code = H.run_lua(src, { timeout = CHILD_GUARD_S })
  local line = out:match("@@RESULT ([^\n]*)")
  assert(code ~= 124, "the engine process hung past the guard (" .. CHILD_GUARD_S .. " s)")
  assert(line, ("the engine process died (exit %s%s); stderr: %s"):format(tostring(code),
    code == 139 and ", SIGSEGV" or (code == 134 and ", SIGABRT" or ""), err:sub(1, 500)))
  return assert(json.decode(line))
end

local function write_tools(dir, c, level, ctx)
  H.write_tool(dir, c.id, tool_source(c.id, c.handler, c, level, ctx))
  for name, handler in pairs(c.tools or {}) do
    H.write_tool(dir, name, tool_source(name, handler, c, level, ctx))
  end
end

local function write_echo(dir, level, ctx)
  H.write_tool(dir, "echo", tool_source("echo", "function(p) return p end", {}, level, ctx))
end

-- Worker levels (strict, balanced) are isolated by their own processes.
local function isolated(c, level)
  return c.isolate and not (registry.REMOTE or {})[level]
end

-- The directories and files of one case (before any engine opens).
local function prepare_case(c, level)
  local ctx = make_ctx()
  fs_setup(ctx)
  if c.setup then c.setup(ctx) end
  if isolated(c, level) then
    write_tools(ctx.dir, c, level, ctx)
    write_echo(ctx.dir, level, ctx)
  end
  return ctx
end

-- Run case c at `level`: in a child (isolated), or on the shared engine S.
local function run_case(c, level, ctx, S)
  local calls = calls_of(c)
  local plan = { dir = ctx.dir, data_dir = ctx.data, caller = CALLER, calls = {},
                 guard_ms = (c.timeout or TIMEOUT) + GUARD_MS }
  local hooks = {}
  for i, call in ipairs(calls) do
    local params = { root = ctx.root, outside = ctx.outside }
    for k, v in pairs(call.params or c.params or {}) do params[k] = v end
    plan.calls[i] = { tool = call.tool or c.id, params = params }
    if call.before then hooks[i] = function() call.before(ctx) end end
  end

  local res
  if isolated(c, level) then
    assert(next(hooks) == nil, "an isolated case cannot have before hooks")
    res = run_child(plan)
  else
    assert(S.engine, "the shared engine did not open")
    res = collect(plan, hooks, S.engine)
    -- An engine with a call still running on a thread, or hung, is not
    -- closed at the end (leaked rather than risk a hang).
    for _, r in ipairs(res.calls) do
      local e = r.env.error
      if e ~= json.null and tostring(e.message):find("did not stop", 1, true) then S.leak = c.id end
    end
    if res.hung then S.leak = c.id end
    -- only this case's load problems
    local mine = {}
    for _, p in ipairs(res.problems) do
      for _, call in ipairs(plan.calls) do
        if p:find("/" .. call.tool .. ".lua", 1, true) then mine[#mine + 1] = p break end
      end
    end
    res.problems = mine
  end

  assert.same({}, res.problems, "the hostile tool did not load")
  assert.is_nil(res.hung, "no answer within " .. plan.guard_ms .. " ms: " .. tostring(res.hung))
  for i, call in ipairs(calls) do
    local r = res.calls[i]
    local env = r.env
    local want = call.expect[level]
    local label = ("call %d (%s): "):format(i, plan.calls[i].tool)
    if want == "ok" then
      assert.equal("ok", env.status, label .. "expected ok, got " .. describe_env(env))
    else
      assert.equal("error", env.status, label .. "expected " .. want .. ", got " .. describe_env(env))
      assert.equal(want, env.error.kind, label .. "expected " .. want .. ", got " .. describe_env(env))
      assert.is_string(env.error.message)
      for _, s in ipairs(SECRETS) do
        assert.is_falsy(env.error.message:find(s, 1, true), label .. "the error message leaks " .. s)
      end
    end
    assert.is_nil(r.encode_error, label .. "the envelope cannot be encoded as JSON: " .. tostring(r.encode_error))
    local v = r.violations or {}
    if want == "sandbox_violation" then
      assert.equal(1, #v, label .. "expected one security.violation event, got " .. #v)
      assert.same({ tool = plan.calls[i].tool, principal = CALLER.principal, kind = "sandbox_violation" },
        { tool = v[1].tool, principal = v[1].principal, kind = v[1].kind })
      assert.equal(env.execution_id, v[1].execution_id)
    else
      assert.equal(0, #v, label .. "a security.violation event for a " .. want)
    end
    if call.check then call.check(r, level, ctx) end
  end
  assert.is_table(res.echo, "the engine does not serve the echo tool any more")
  assert.equal("ok", res.echo.status, "echo after the case: " .. describe_env(res.echo))
  assert.same({ ping = "pong" }, res.echo.output)
end

-- ---- the suite --------------------------------------------------------------------------------

-- For each group and runnable level, one engine serves every case of the
-- group that runs in-process: it opens with all of their tools (each with
-- its own allowed directory), and after every case it must still serve the
-- echo tool, so a case that damages the engine shows up at once and in the
-- cases after it.
describe("security: hostile tools", function()
  teardown(function() H.cleanup() end)

  local total = 0
  for _, g in ipairs(GROUPS) do total = total + #g.cases end

  it("has at least 40 hostile tools", function()
    assert.is_true(total >= 40, total .. " cases")
  end)

  for _, g in ipairs(GROUPS) do
    describe(g.name, function()
      for _, level in ipairs(LEVELS) do
        local cases = {}
        for _, c in ipairs(g.cases) do
          if calls_of(c)[1].expect[level] ~= nil then cases[#cases + 1] = c end
        end
        if not registry.RUNNABLE[level] then
          for _, c in ipairs(cases) do
            pending(("[%s] %s -> %s (level %s is not runnable in this build)"):format(
              level, c.id, calls_of(c)[1].expect[level], level))
          end
        else
          describe("[" .. level .. "]", function()
            local S = { ctx = {} }
            setup(function()
              local base = H.tmpdir()
              local dir, data = base .. "/tools", base .. "/data"
              sh("mkdir -p " .. q(dir) .. " " .. q(data))
              local any = false
              for _, c in ipairs(cases) do
                local ctx = prepare_case(c, level)
                S.ctx[c.id] = ctx
                if not isolated(c, level) then
                  write_tools(dir, c, level, ctx)
                  any = true
                end
              end
              if any then
                write_echo(dir, level, { root = base })
                S.engine = H.open_engine(dir, { data_dir = data })
              end
            end)
            teardown(function()
              if S.engine and not S.leak then S.engine:close() end
            end)
            for _, c in ipairs(cases) do
              it(("%s -> %s"):format(c.id, calls_of(c)[1].expect[level]), function()
                run_case(c, level, S.ctx[c.id], S)
              end)
            end
          end)
        end
      end
    end)
  end
end)

describe("security: telemetry", function()
  teardown(function() H.cleanup() end)

  for _, level in ipairs(LEVELS) do
    if not registry.RUNNABLE[level] then
      pending(("[%s] a violation emits security.violation (level not runnable)"):format(level))
    else
      it(("[%s] a violation emits security.violation naming tool, principal and kind; other breaches do not")
          :format(level), function()
        local ctx = make_ctx()
        local c = { id = "x" }
        H.write_tool(ctx.dir, "snoop", tool_source("snoop",
          [[function() return { s = fs.read("/etc/passwd") } end]], c, level, ctx))
        H.write_tool(ctx.dir, "spin", tool_source("spin", [[function() while true do end end]], c, level, ctx))
        local engine = H.open_engine(ctx.dir, { data_dir = ctx.data })
        local seen = {}
        engine:subscribe("security.violation", function(ev) seen[#seen + 1] = ev end)
        local env = engine:execute("snoop", {}, { principal = "eve", roles = { "intruder" } })
        local spin = engine:execute("spin", {}, { principal = "eve" })
        engine:close()
        assert.equal("sandbox_violation", env.error.kind)
        assert.equal("cpu_limit", spin.error.kind)
        assert.equal(1, #seen)
        assert.equal("security.violation", seen[1].name)
        local m = seen[1].metadata
        assert.equal("snoop", m.tool)
        assert.equal("eve", m.principal)
        assert.equal("sandbox_violation", m.kind)
        assert.equal(env.execution_id, m.execution_id)
      end)
    end
  end
end)

describe("security: the engine outlives its tools", function()
  teardown(function() H.cleanup() end)

  for _, level in ipairs(LEVELS) do
    if not registry.RUNNABLE[level] then
      pending(("[%s] a looping tool does not hold up another tool (level not runnable)"):format(level))
    else
      it(("[%s] a looping tool does not hold up another tool's call"):format(level), function()
        local ctx = make_ctx()
        H.write_tool(ctx.dir, "hog", tool_source("hog", [[function() while true do end end]],
          { id = "hog", security = { max_cpu = 10000 }, timeout = 20000 }, level, ctx))
        H.write_tool(ctx.dir, "echo", tool_source("echo", "function(p) return p end", { id = "echo" }, level, ctx))
        local engine = H.open_engine(ctx.dir, { data_dir = ctx.data })
        local hog = engine:submit("hog", {}, CALLER)
        local env = engine:execute("echo", { x = 1 }, CALLER)
        local stage = hog:stage()
        hog:cancel()
        local henv = hog:wait(GUARD_MS)
        engine:close()
        assert.equal("ok", env.status, describe_env(env))
        assert.same({ x = 1 }, env.output)
        assert.not_equal("done", stage)
        assert.equal("cancelled", henv and henv.error.kind)
      end)
    end
  end

  -- Found by the independent red-team: a strict worker that spends its CPU
  -- budget in C (no hook fires) is killed; the exit report of its tool's
  -- template ends the call, the tool state and its template are closed
  -- from that report, and the engine then aborted on the template's
  -- closed socket (uv_poll_stop on a closing handle, l_worker.c). In a
  -- child: the bug kills the process.
  if registry.RUNNABLE.strict then
    it("[strict] survives a worker killed for CPU spent in C code", function()
      local ctx = make_ctx()
      H.write_tool(ctx.dir, "stuck", tool_source("stuck", [[function()
        local s = string.rep("a", 40)
        return { s:find(("a?"):rep(40) .. ("a"):rep(40) .. "b") }
      end]], { id = "stuck", security = { max_cpu = 200 }, timeout = 3000 }, "strict", ctx))
      H.write_tool(ctx.dir, "echo", tool_source("echo", "function(p) return p end", { id = "echo" }, "strict", ctx))
      local out, err, code = H.run_lua(([==[
io.stdout:setvbuf("no")
local H = require "helpers"
local engine = H.open_engine(%q, { data_dir = %q })
local env = engine:execute("stuck", {})
io.write("stuck ", env.status == "ok" and "ok" or env.error.kind, "\n")
env = engine:execute("echo", { x = 1 })
io.write("echo ", env.status, "\n")
engine:close()
io.write("closed\n")
]==]):format(ctx.dir, ctx.data), { timeout = 20 })
      assert.equal("stuck cpu_limit\necho ok\nclosed\n", out,
        ("exit %s, stderr: %s"):format(tostring(code), err:sub(1, 300)))
    end)
  end

  -- A pathological pattern's call must not only be answered: its thread
  -- must stop. (Before core/sandbox/pattern.c, the call was answered at
  -- its deadline and the thread went on matching for hours.) In a child,
  -- after each call is answered, the engine process sleeps for a second:
  -- its CPU time (every thread's) must not grow by more than a fraction of
  -- it; a thread still matching would add about the whole second. The
  -- deadline (300 ms + the engine's grace) answers the call either way.
  for _, level in ipairs({ "relaxed", "none" }) do
    describe("[" .. level .. "] pathological patterns stop their thread", function()
      local HANDLERS = {
        find = [[function() return { ("a"):rep(40):find(("a*"):rep(40) .. "b") } end]],
        gmatch = [[function()
          for _ in ("a"):rep(40):gmatch(("a*"):rep(40) .. "b") do end
          return {}
        end]],
        long_set = [[function()
          return { ("b"):rep(100000):find("[" .. ("a"):rep(100000) .. "b]*c") }
        end]],
        empty_captures = [[function()
          return { #string.gsub(("b"):rep(100000), "(a*)", ("%1"):rep(100000)) }
        end]],
      }
      local NAMES = { "find", "gmatch", "long_set", "empty_captures" }
      local out, err, code
      setup(function()
        if not registry.RUNNABLE[level] then return end
        local ctx = make_ctx()
        for _, name in ipairs(NAMES) do
          H.write_tool(ctx.dir, name, tool_source(name, HANDLERS[name],
            { id = name, security = { max_cpu = 50 }, timeout = 300 }, level, ctx))
        end
        H.write_tool(ctx.dir, "echo", tool_source("echo", "function(p) return p end", { id = "echo" }, level, ctx))
        local src = ([==[
io.stdout:setvbuf("no")
local H = require "helpers"
local ffi = require "ffi"
ffi.cdef "int poll(void *fds, unsigned long n, int timeout); void _exit(int status);"
local engine = H.open_engine(%q, { data_dir = %q })
for _, name in ipairs({ %s }) do
  local env = engine:execute(name, {})
  local c0 = os.clock()
  ffi.C.poll(nil, 0, 1000)
  io.write(name, " ", env.status == "ok" and "ok" or env.error.kind, " ", ("%%.3f"):format(os.clock() - c0), "\n")
end
local env = engine:execute("echo", { x = 1 })
io.write("echo ", env.status, "\n")
ffi.C._exit(0)
]==]):format(ctx.dir, ctx.data, '"' .. table.concat(NAMES, '", "') .. '"')
        out, err, code = H.run_lua(src, { timeout = 60 })
      end)

      if not registry.RUNNABLE[level] then
        pending("[" .. level .. "] (level not runnable)")
        return
      end

      for _, name in ipairs(NAMES) do
        it(name .. ": cpu_limit, then the process is idle", function()
          local kind, burn = out:match(name .. " (%S+) (%S+)\n")
          assert.is_truthy(kind, ("no line for %s (exit %s): %s %s"):format(name, tostring(code), out, err:sub(1, 300)))
          assert.equal("cpu_limit", kind)
          assert.is_true(tonumber(burn) < 0.2,
            ("%s: the process used %s s of CPU while idle for 1 s: a thread is still matching"):format(name, burn))
        end)
      end

      it("the engine still serves", function()
        assert.equal("ok", out:match("echo (%S+)"), out)
      end)
    end)
  end

  -- A call stuck in C (a looping __gc at none; a backtracking pattern no
  -- longer, see above, but it still serves here) is answered at its
  -- deadline while its thread runs on. That thread must not
  -- starve later calls of a thread, nor make engine:close() or the process
  -- exit wait for it. Run in a child with a guard.
  describe("after calls stuck in C code at level relaxed", function()
    local out, code
    setup(function()
      if not registry.RUNNABLE.relaxed then return end
      local ctx = make_ctx()
      local pattern = [[function()
        local s = string.rep("a", 30) .. "b"
        return { s:find(("a*"):rep(20) .. "c") }
      end]]
      for i = 1, 4 do
        H.write_tool(ctx.dir, "stuck" .. i, tool_source("stuck" .. i, pattern,
          { id = "stuck", timeout = 300 }, "relaxed", ctx))
      end
      H.write_tool(ctx.dir, "echo", tool_source("echo", "function(p) return p end", { id = "echo" }, "relaxed", ctx))
      local src = ([==[
io.stdout:setvbuf("no")
local H = require "helpers"
local engine = H.open_engine(%q, { data_dir = %q })
local hs = {}
for i = 1, 4 do hs[i] = engine:submit("stuck" .. i, {}) end
for i = 1, 4 do
  local env = hs[i]:wait(10000)
  io.write("stuck ", env and env.error.kind or "hung", "\n")
end
local env = engine:submit("echo", { x = 1 }):wait(3000)
io.write("echo ", env and env.status or "hung", "\n")
if env and env.status ~= "ok" then io.write("echo error: ", env.error.kind, ": ", env.error.message, "\n") end
engine:close()
io.write("closed\n")
local ffi = require "ffi"
ffi.cdef "void _exit(int status);"
ffi.C._exit(0)
]==]):format(ctx.dir, ctx.data)
      out, _, code = H.run_lua(src, { timeout = 12, env = { UV_THREADPOOL_SIZE = "4" } })
    end)

    if not registry.RUNNABLE.relaxed then
      pending("[relaxed] stuck calls (level not runnable)")
      return
    end

    it("each stuck call is answered (its kind: see pattern_find)", function()
      local n = 0
      for kind in out:gmatch("stuck (%S+)") do
        n = n + 1
        assert.not_equal("hung", kind)
      end
      assert.equal(4, n, out)
    end)

    it("the engine still serves another tool afterwards", function()
      assert.equal("ok", out:match("echo (%S+)"), "echo after 4 stuck calls: " .. out)
    end)

    it("engine:close() returns afterwards", function()
      assert.is_truthy(out:find("closed", 1, true), "engine:close() hung (child exit " .. tostring(code) .. ")")
    end)
  end)
end)
