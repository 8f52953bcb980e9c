-- hostile_load_spec.lua — a tool file is untrusted code: its top level runs
-- in a restricted environment under a CPU and memory budget
-- (lua/rubberduck/registry.lua, toolstate.lua, env.lua). Whatever it does,
-- the load ends in a refusal (or a harmless success), never a hang or a
-- crash, and the engine keeps working afterwards.

local H = require "helpers"
local registry = require "rubberduck.registry"
local envdata = require "rubberduck.env"

local CPU_LINE = ": (load): top-level code spent its CPU budget (" .. registry.DEFINE_CPU_MS ..
  " ms) while loading"
local MEM_LINE = ": (load): top-level code reached the memory cap (" .. registry.DEFINE_MEMORY ..
  " bytes) while loading"

describe("hostile top-level code", function()
  local engine, dir
  local n = 0

  setup(function()
    dir = H.tmpdir()
    local good = H.tmpdir()
    H.write_tool(good, "good", H.tool_source{ name = "good",
      handler = "function(p) return { fine = true } end" })
    engine = H.open_engine(good)
    assert.same({}, engine.problems)
  end)

  teardown(function()
    if engine then engine:close() end
    H.cleanup()
  end)

  -- A tool file whose top level runs `prelude` before returning a good tool.
  local function hostile(prelude, name)
    n = n + 1
    name = name or ("h" .. n)
    return H.write_tool(dir, name, H.tool_source{ name = name, prelude = prelude })
  end

  local function load(path)
    local ok, problems = engine:load_tools(nil, { path })
    return ok, problems
  end

  -- The engine still runs a good tool after whatever happened.
  local function engine_works()
    local env = engine:execute("good", {})
    assert.equals("ok", env.status)
    assert.same({ fine = true }, env.output)
  end

  local function refused_with(prelude, line_suffix)
    local path = hostile(prelude)
    local ok, probs = load(path)
    assert.is_false(ok)
    assert.same({ path .. line_suffix }, probs)
    engine_works()
  end

  local function refused(prelude)
    local path = hostile(prelude)
    local ok, probs = load(path)
    assert.is_false(ok)
    assert.equals(1, #probs)
    assert.equals(path .. ": (load): ", probs[1]:sub(1, #path + 10), probs[1])
    engine_works()
    return probs[1], path
  end

  describe("endless work is cut by the CPU budget", function()
    it("while true do end", function() refused_with("while true do end", CPU_LINE) end)
    it("repeat until false", function() refused_with("repeat until false", CPU_LINE) end)
    it("a tail-recursive function", function()
      refused_with("local function f() return f() end f()", CPU_LINE)
    end)
    it("an infinite loop inside pcall", function()
      refused_with("pcall(function() while true do end end)", CPU_LINE)
    end)
    it("pcall in a loop, swallowing every breach", function()
      refused_with("while true do pcall(function() while true do end end) end", CPU_LINE)
    end)
    it("an infinite loop inside xpcall with a returning handler", function()
      refused_with("xpcall(function() while true do end end, function(e) return e end)", CPU_LINE)
    end)
    it("an infinite loop inside coroutine.wrap", function()
      refused_with("coroutine.wrap(function() while true do end end)()", CPU_LINE)
    end)
    it("an infinite loop inside coroutine.resume", function()
      refused_with("coroutine.resume(coroutine.create(function() while true do end end))", CPU_LINE)
    end)
    it("a coroutine that yields forever, resumed forever", function()
      refused_with([[
local co = coroutine.wrap(function() while true do coroutine.yield() end end)
while true do co() end]], CPU_LINE)
    end)
    it("a string.gsub callback that loops", function()
      refused_with("string.gsub(string.rep('a', 10), 'a', function() while true do end end)", CPU_LINE)
    end)
    it("a table.sort comparator that loops", function()
      refused_with("local t = {3, 1, 2} table.sort(t, function(a, b) while true do end end)", CPU_LINE)
    end)
    it("a __index metamethod that loops", function()
      refused_with("local t = setmetatable({}, { __index = function() while true do end end }) local _ = t.x",
        CPU_LINE)
    end)

    it("a looping xpcall message handler", function()
      -- BUG: the instruction hook raises the breach from inside the hook;
      -- LuaJIT keeps the hook marked active until unwinding reaches a pcall
      -- frame, and an xpcall message handler runs *before* that, so a loop in
      -- the handler never sees the hook again: the CPU budget and the load
      -- deadline are bypassed and the load (a synchronous st:call on the loop
      -- thread) never returns. Run in a child with a guard: 124 = hung.
      -- Fix (lua/rubberduck/toolstate.lua make_env): give tools an xpcall
      -- whose message handler does not run while a breach is pending, e.g.
      --   env.xpcall = function(f, h, ...)
      --     return xpcall(f, function(e)
      --       if toolcore.breached() then return e end   -- new C query
      --       return h(e)
      --     end, ...)
      --   end
      -- or run the handler after unwinding (pcall, then h(err)).
      local path = hostile("xpcall(function() while true do end end, function(e) while true do end end)")
      local _, err, code = H.run_rduck({ "check", path }, nil, { timeout = 5 })
      assert.are_not.equal(124, code, "rduck check hung on a looping xpcall message handler")
      assert.equals(2, code)
      assert.truthy(err:find(path .. CPU_LINE, 1, true), err)
    end)

    it("a catastrophic pattern match (C code, no instruction hook)", function()
      -- BUG: string.find/match/gmatch/gsub run the pattern matcher in C,
      -- where the count hook never fires; a backtracking pattern runs for
      -- hours. At load, registry.evaluate uses the synchronous st:call,
      -- which has no overdue timer (DEFINE_TIMEOUT_MS is only checked by the
      -- hook), so the loader blocks until the match ends. Child + guard.
      -- Fix: evaluate definitions with st:start + an overdue timer (as
      -- executions do), abandoning the state at the deadline; and give tools
      -- pattern functions with a step budget (lua_sandbox-style matcher that
      -- checks the breach flag / deadline every N steps).
      local path = hostile("string.find(string.rep('a', 40), string.rep('a-', 20) .. 'b')")
      local _, err, code = H.run_rduck({ "check", path }, nil, { timeout = 5 })
      assert.are_not.equal(124, code, "rduck check hung on a backtracking pattern")
      assert.equals(2, code)
      assert.truthy(err:find(path .. ": (load): ", 1, true), err)
    end)
  end)

  describe("endless recursion and memory", function()
    it("non-tail infinite recursion", function()
      local line = refused("local function f() return 1 + f() end f()")
      assert.truthy(line:find("stack overflow", 1, true), line)
    end)
    it("string.rep 1e9", function() refused_with("local s = string.rep('x', 1e9)", MEM_LINE) end)
    it("table growth", function()
      -- 64 MiB of 4 KiB strings: the memory cap or the CPU budget, whichever
      -- the machine reaches first, refuses it
      local path = hostile("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 4096) .. i end")
      local ok, probs = load(path)
      assert.is_false(ok)
      assert.equals(1, #probs)
      assert.truthy(probs[1] == path .. MEM_LINE or probs[1] == path .. CPU_LINE, probs[1])
      engine_works()
    end)
    it("string doubling", function()
      refused_with("local t, s = {}, 'x' for i = 1, 100 do s = s .. s; t[i] = s end", MEM_LINE)
    end)
    it("a memory bomb inside pcall", function()
      refused_with("pcall(string.rep, 'x', 1e9)", MEM_LINE)
      -- the memory cap or the CPU budget, whichever comes first
      local path = hostile("for i = 1, 10 do pcall(function() local t = {} " ..
        "while true do t[#t + 1] = string.rep('x', 4096) .. #t end end) end")
      local ok, probs = load(path)
      assert.is_false(ok)
      assert.truthy(probs[1] == path .. MEM_LINE or probs[1] == path .. CPU_LINE, probs[1])
      engine_works()
    end)
    it("an error object whose __tostring loops", function()
      refused_with("error(setmetatable({}, { __tostring = function() while true do end end }))",
        ": (load): error object without a message")
    end)
  end)

  describe("what the environment leaves out", function()
    -- Names are given as path segments so that no source below *names* a
    -- dangerous function: DESIGN.md refuses a tool that names one.
    local ABSENT = {
      { "io" }, { "debug" }, { "require" }, { "load" }, { "loadstring" }, { "loadfile" },
      { "dofile" }, { "getfenv" }, { "setfenv" }, { "newproxy" }, { "jit" }, { "ffi" },
      { "package" }, { "module" }, { "gcinfo" }, { "string", "dump" }, { "os", "execute" },
      { "os", "exit" }, { "os", "getenv" }, { "os", "remove" }, { "os", "rename" },
      { "os", "tmpname" }, { "os", "setlocale" },
    }

    it("has none of io, os.execute, debug, require, load, ... at top level", function()
      local list = {}
      for _, p in ipairs(ABSENT) do
        local q = {}
        for i, s in ipairs(p) do q[i] = string.format("%q", s) end
        list[#list + 1] = "{ " .. table.concat(q, ", ") .. " }"
      end
      local path = H.write_tool(dir, "absent", ([[
local absent = { %s }
local checked = 0
for _, p in ipairs(absent) do
  local v = _G
  for _, k in ipairs(p) do
    if type(v) ~= "table" then v = nil break end
    v = v[k]
  end
  if v ~= nil then error("leak: " .. table.concat(p, ".")) end
  if rawget(_G, p[1]) ~= nil and #p == 1 then error("leak (raw): " .. p[1]) end
  checked = checked + 1
end
if (""):len() ~= 0 or ("")["du" .. "mp"] ~= nil then error("leak: the string metatable") end
return tool {
  metadata = { name = "absent", description = "checked " .. checked .. " names" },
  security = { level = "relaxed" },
  execution = { handler = function() return {} end },
}]]):format(table.concat(list, ", ")))
      local ok, probs = load(path)
      assert.same({}, probs)
      assert.is_true(ok)
      assert.equals("checked " .. #ABSENT .. " names", engine:tool("absent").metadata.description)
      engine_works()
    end)

    it("refuses a top-level call of os.execute, naming the attempt", function()
      local line = refused('os.execute("true")')
      assert.truthy(line:find("execute", 1, true), line)
    end)

    it("refuses top-level calls of require, loadstring, setfenv, naming each", function()
      for _, case in ipairs({
        { 'require("os")', "require" },
        { 'loadstring("return 1")', "loadstring" },
        { 'setfenv(1, {})', "setfenv" },
        { 'debug.getinfo(1)', "debug" },
        { 'io.open("/etc/passwd")', "io" },
      }) do
        local line = refused(case[1])
        assert.truthy(line:find(case[2], 1, true), line)
      end
    end)

    it("hides the string metatable: getmetatable('') is nil", function()
      local path = hostile([[
if getmetatable("") ~= nil then error("leak: string metatable") end
if getmetatable(1) ~= nil or getmetatable(print) ~= nil then error("leak: other metatables") end
local mt = {}
if getmetatable(setmetatable({}, mt)) ~= mt then error("tables keep theirs") end]])
      local ok, probs = load(path)
      assert.same({}, probs)
      assert.is_true(ok)
    end)

    it("refuses collectgarbage('collect') but allows 'count'", function()
      local path = hostile("collectgarbage('collect')")
      local ok, probs = load(path)
      assert.is_false(ok)
      assert.same({ path .. ": (load): " .. path .. ':1: collectgarbage: only "count" is available to tools' },
        probs)
      for _, opt in ipairs({ "stop", "step", "setpause" }) do
        refused("collectgarbage(" .. string.format("%q", opt) .. ")")
      end
      path = hostile("assert(type(collectgarbage('count')) == 'number')")
      ok, probs = load(path)
      assert.same({}, probs)
      engine_works()
    end)

    it("gives tools exactly the globals env.lua lists", function()
      -- The fixture is rubberduck.env itself (plus the engine APIs): a new
      -- global must show up there, in review.
      H.write_tool(dir, "globals", H.tool_source{ name = "globals", handler = [[function()
        local out = {}
        for k, v in pairs(_G) do
          if type(v) == "table" and k ~= "_G" and next(v) ~= nil then
            for kk in pairs(v) do out[#out + 1] = k .. "." .. tostring(kk) end
          else
            out[#out + 1] = k
          end
        end
        table.sort(out)
        return { names = out }
      end]] })
      local ok, probs = load(dir .. "/globals.lua")
      assert.same({}, probs)
      local env = engine:execute("globals", {})
      assert.equals("ok", env.status)
      local want = { "_G", "tool" }
      for _, f in ipairs({ "exists", "list", "mkdir", "read", "remove", "stat", "write" }) do
        want[#want + 1] = "fs." .. f   -- without allowed_paths, each refuses every path
      end
      for _, g in ipairs(envdata.allow.globals) do
        if _G[g] ~= nil then want[#want + 1] = g end   -- rawlen is not in LuaJIT
      end
      for _, g in ipairs(envdata.allow.wrapped) do want[#want + 1] = g end
      for lib, names in pairs(envdata.allow.libs) do
        for _, f in ipairs(names) do want[#want + 1] = lib .. "." .. f end
      end
      for _, f in ipairs({ "encode", "decode", "null", "array", "object", "is_array" }) do
        want[#want + 1] = "json." .. f
      end
      table.sort(want)
      assert.same(want, env.output.names)
      -- and nothing on the deny list is among them
      for _, d in ipairs(envdata.deny) do
        assert.is_false(H.contains(env.output.names, d), d)
      end
    end)
  end)

  describe("dangerous functions named in the source (DESIGN.md, Security levels)", function()
    it("refuses a relaxed tool whose handler names os.execute", function()
      -- BUG: DESIGN.md says "a tool that names one is refused at load" and
      -- env.lua keeps the list (M.dangerous, plus security.dangerous_functions),
      -- but nothing uses it: this tool loads, and only fails when called.
      -- Fix: in toolstate.define (or registry.evaluate), for levels other than
      -- none, scan the source for each name of env.dangerous plus
      -- def.security.dangerous_functions (as an identifier path, e.g.
      -- "os%.execute" not preceded by [%w_.]) and refuse with
      -- "file: security.dangerous_functions: names os.execute (line N)".
      local path = H.write_tool(dir, "names_exec", H.tool_source{ name = "names_exec",
        handler = 'function() return { r = os.execute("true") } end' })
      local ok, probs = load(path)
      assert.is_false(ok, "a tool naming os.execute was loaded")
      assert.equals(1, #probs)
      assert.truthy(probs[1]:find("os.execute", 1, true), probs[1])
      engine_works()
    end)

    it("refuses a tool that names one of its own dangerous_functions", function()
      -- BUG: same as above, for the tool's own list.
      local path = H.write_tool(dir, "names_rep", H.tool_source{ name = "names_rep",
        security = 'dangerous_functions = { "string.rep" }',
        handler = 'function() return { s = string.rep("x", 3) } end' })
      local ok, probs = load(path)
      assert.is_false(ok, "a tool naming its own dangerous function was loaded")
      assert.truthy((probs[1] or ""):find("string.rep", 1, true), probs[1])
    end)
  end)

  it("leaves the engine working after all of the above", function()
    engine_works()
    -- and a tool loaded after the hostile ones runs too
    local path = H.write_tool(dir, "late", H.tool_source{ name = "late",
      handler = "function() return { late = true } end" })
    assert.is_true((load(path)))
    assert.same({ late = true }, engine:execute("late", {}).output)
  end)
end)
