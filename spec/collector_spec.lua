-- collector_spec.lua — the garbage collector of an in-process tool state
-- (l_lstate.c, run): it runs only on the call's thread while the call's
-- limits are armed, keeps a pause between collections, and never lets the
-- garbage of earlier calls make a call breach its memory cap.

local H = require "helpers"

local OP = { principal = "gc", capabilities = { "*" } }

-- Each call leaves about 64 KiB of garbage behind: tables (strings of the
-- same text would be the same object from one call to the next).
local LITTER = [[function(p)
  local t = {}
  for i = 1, 256 do
    local u = {}
    for j = 1, 24 do u[j] = i + j end
    t[i] = u
  end
  return { n = #t }
end]]

describe("a tool state's collector", function()
  teardown(function() H.cleanup() end)

  for _, level in ipairs({ "relaxed", "none" }) do
    it("collects what calls leave behind at " .. level .. " (300 calls, 64 KiB each, a 1 MiB cap)", function()
      local dir = H.tmpdir()
      H.write_tool(dir, "litter", H.tool_source{ name = "litter", level = level, handler = LITTER,
        security = "max_memory = 1024 * 1024" })
      local engine = H.open_engine(dir, { store = false })
      assert.same({}, engine.problems)
      local t = engine.registry:get("litter")
      local base
      for i = 1, 300 do
        local env = engine:execute("litter", {}, OP)
        if env.status ~= "ok" then error(("call %d: %s: %s"):format(i, env.error.kind, env.error.message)) end
        assert.equal(256, env.output.n)
        if i == 1 then base = t.idle[1]:heap() end
      end
      -- 300 calls made about 19 MiB of garbage; the state holds at most
      -- what one pause lets grow on top of what it needs
      local heap = t.idle[1]:heap()
      assert.is_true(heap < base + 1024 * 1024, ("heap %d bytes, %d after the first call"):format(heap, base))
      engine:close()
    end)
  end

  it("runs a finalizer left behind by an earlier call inside a later call's limits, never on the loop thread", function()
    -- Level none has newproxy: a call leaves an object whose finalizer
    -- loops. The loop thread copies large params into the state afterwards
    -- (allocations that, were the collector not stopped there, would step
    -- it and run the finalizer on the loop thread: the engine would hang,
    -- and the child's timeout would fire). A later call's collection runs
    -- it on the call's thread: that call ends in a limit, and the engine
    -- serves on.
    local dir = H.tmpdir()
    H.write_tool(dir, "trap", H.tool_source{ name = "trap", level = "none",
      parameters = [[{ type = "object", properties = { plant = { type = "boolean" },
        blob = { type = "array", items = { type = "string" } } } }]],
      execution = "timeout = 2000",
      handler = [[function(p)
        if p.plant then
          local q = newproxy(true)
          getmetatable(q).__gc = function() while true do end end
          q = nil
        end
        local t = {}
        for i = 1, 256 do t[i] = { i, i, i, i, i, i, i, i } end
        return { ok = true }
      end]] })
    local out, err, code = H.run_lua(([[
      package.path = %q
      package.cpath = %q
      local rd = require "rubberduck"
      local engine = assert(rd.open({ tools = %q, store = false }))
      local OP = { principal = "gc", capabilities = { "*" } }
      assert(engine:execute("trap", { plant = true }, OP).status == "ok")
      local blob = {}
      for i = 1, 2000 do blob[i] = ("z"):rep(100) .. i end
      local kinds = {}
      for i = 1, 200 do
        local env = engine:execute("trap", { blob = blob }, OP)
        if env.status ~= "ok" then kinds[#kinds + 1] = env.error.kind break end
      end
      print("breached:", kinds[1])
      local env = engine:execute("trap", {}, OP)
      print("after:", env.status)
      engine:close()
    ]]):format(package.path, package.cpath, dir), { timeout = 120 })
    assert.equal(0, code, "exit " .. tostring(code) .. ": " .. err)
    local kind = out:match("breached:%s+(%S+)")
    assert.is_truthy(kind == "cpu_limit" or kind == "timeout", out)
    assert.is_truthy(out:match("after:%s+ok"), out)
  end)
end)
