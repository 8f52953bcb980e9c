-- sandbox_ctx_spec.lua — what the engine gives a tool (ctx.caller) cannot be
-- poisoned by one call for the next one, at the in-process levels.
--
-- A tool state keeps a copy of the caller from one call to the next
-- (l_lstate.c, st:execute): the engine sends the caller again only when it
-- is another table, and the tool state's bootstrap gives every call a
-- fresh copy of the one it keeps, which tool code never sees. These
-- hostile tools write into ctx.caller, set metatables on it, swap its
-- subtables, keep references to it and change it later: every next call
-- must see the caller as the engine gave it.

local H = require "helpers"

local json = H.json()

-- The caller of these calls: the engine normalizes it (roles and
-- capabilities become arrays, a key is added) and keeps the extra fields.
local CALLER = {
  principal = "alice", roles = { "reader", "writer" }, capabilities = { "*" },
  team = "blue", n = 5, flag = true, nested = { a = 1, list = { 1, 2, 3 } },
}
local OTHER = { principal = "bob", roles = { "reader" }, capabilities = { "*" } }

-- mode = "look" describes ctx.caller; the other modes attack it (and
-- describe it first). LAST, KEPT and PLANTED are the tool's own globals,
-- which persist from call to call at these levels.
local PROBE = [[function(p, ctx)
  local c = ctx.caller
  local function describe()
    local keys = {}
    for k in pairs(c) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local nested = type(c.nested) == "table" and c.nested or {}
    local list = type(nested.list) == "table" and nested.list or {}
    local nkeys = {}
    for k in pairs(nested) do nkeys[#nkeys + 1] = tostring(k) end
    table.sort(nkeys)
    return {
      keys = table.concat(keys, ","), principal = c.principal,
      roles = table.concat(c.roles, ","), nroles = #c.roles,
      caps = table.concat(c.capabilities, ","),
      probe = tostring(c.injected) .. "/" .. tostring(c.roles[9]) .. "/" .. tostring(nested.injected),
      mt = type(getmetatable(c)), roles_array = json.is_array(c.roles),
      caps_array = json.is_array(c.capabilities), nested_mt = type(getmetatable(nested)),
      team = c.team, n = c.n, flag = c.flag, a = nested.a, list = table.concat(list, ","),
      nested_keys = table.concat(nkeys, ","),
      marker = tostring(getmetatable(c.roles).__jsontype),
      marker_keys = (function()
        local k = {}
        for _, mt in ipairs({ getmetatable(json.array({})), getmetatable(json.object({})) }) do
          for name in pairs(mt) do k[#k + 1] = tostring(name) end
          k[#k + 1] = type(getmetatable(mt))
        end
        return table.concat(k, ",")
      end)(),
      encoded = json.encode({ c.roles, json.object({}) }),
      same = LAST == c,
    }
  end
  local seen = describe()
  local m = p.mode
  if m == "write" then
    c.principal = "admin"
    c.roles[1] = "root"
    c.capabilities[#c.capabilities + 1] = "evil"
    c.extra = "x"
    c.flag = false
    c.n = 6
    c.nested.a = 2
    c.nested.list[4] = 4
  elseif m == "add" then
    c.nested.extra = "x"
  elseif m == "add_top" then
    c.extra = { "x" }
  elseif m == "markers" then
    -- the markers are shared by every array and object of the state
    local amt = getmetatable(c.roles)
    amt.__index = function() return "injected" end
    amt.__newindex = function() end
    amt.__jsontype = "object"
    setmetatable(amt, { __index = function() return "meta" end })
    local omt = getmetatable(json.object({}))
    omt.__index = function() return "injected" end
    omt.__jsontype = nil
  elseif m == "clear" then
    for k in pairs(c) do rawset(c, k, nil) end
  elseif m == "metatables" then
    local inject = { __index = function() return "injected" end }
    setmetatable(c, inject)
    setmetatable(c.roles, inject)
    setmetatable(c.nested, inject)
  elseif m == "unmark" then
    setmetatable(c.roles, nil)
    setmetatable(c.capabilities, json.object({}) and getmetatable(json.object({})))
  elseif m == "swap" then
    -- subtables with the same data, but the tool's own (it keeps them)
    PLANTED = json.array({ "reader", "writer" })
    c.roles = PLANTED
    c.nested = { a = 1, list = { 1, 2, 3 } }
  elseif m == "swap_other" then
    c.roles = json.array({ "reader", "admin" })
    c.nested = { a = 1, list = { 1, 2, 3, 4 } }
  elseif m == "keep" then
    KEPT = c
  elseif m == "later" then
    -- change what an earlier call kept (and what it planted), not ctx
    KEPT.principal = "mallory"
    KEPT.roles[2] = "admin"
    if PLANTED then PLANTED[3] = "admin" end
  elseif m == "type" then
    c.n = "5"
    c.flag = 1
  elseif m == "raise" then
    c.principal = "admin"
    error("the tool failed")
  elseif m == "bomb" then
    c.principal = "admin"
    local t = {}
    for i = 1, 1e8 do t[i] = ("x"):rep(64) .. i end
  end
  LAST = c
  return seen
end]]

local function check_level(level)
  describe("at level " .. level, function()
    local engine

    setup(function()
      local dir = H.tmpdir()
      H.write_tool(dir, "probe", H.tool_source{ name = "probe", level = level, handler = PROBE, security = "max_memory = 8 * 1024 * 1024" })
      engine = H.open_engine(dir)
      assert.same({}, engine.problems)
    end)

    teardown(function()
      if engine then engine:close() end
    end)

    local function call(mode, caller)
      local env = engine:execute("probe", { mode = mode }, caller or CALLER)
      assert.equals("ok", env.status, env.error ~= json.null and env.error.message or "")
      return env.output
    end

    -- What a call sees when nothing was done to its caller.
    local PRISTINE = {
      keys = "capabilities,flag,key,n,nested,principal,roles,team", principal = "alice",
      roles = "reader,writer", nroles = 2, caps = "*", probe = "nil/nil/nil", mt = "nil",
      roles_array = true, caps_array = true, nested_mt = "nil",
      team = "blue", n = 5, flag = true, a = 1, list = "1,2,3", nested_keys = "a,list",
      marker = "array", marker_keys = "__jsontype,nil,__jsontype,nil",
      encoded = '[["reader","writer"],{}]',
    }

    local function pristine(out, msg)
      local o = {}
      for k, v in pairs(out) do if k ~= "same" then o[k] = v end end
      assert.same(PRISTINE, o, msg)
    end

    it("gives the same caller data to every call, each time in a table of its own", function()
      pristine(call("look"))
      local second = call("look")
      pristine(second)
      -- never the table a call before saw (and could have kept)
      assert.is_false(second.same)
    end)

    for _, attack in ipairs({ "write", "add", "add_top", "clear", "metatables", "unmark", "swap_other", "type", "markers" }) do
      it("does not let a call that does '" .. attack .. "' to ctx.caller reach the next call", function()
        call("look")
        pristine(call(attack), "the attacking call itself got the caller as given")
        local after = call("look")
        pristine(after, "the call after '" .. attack .. "'")
        if attack ~= "markers" then -- (the markers are put back; the caller was not touched)
          assert.is_false(after.same, "a new copy after '" .. attack .. "'")
        end
        pristine(call("look"))
      end)
    end

    it("does not let subtables swapped for equal ones be changed for later calls", function()
      call("look")
      pristine(call("swap"))
      pristine(call("look"))
      -- the planted table is the tool's: changing it in a later call
      -- must not change what the call after that sees
      pristine(call("keep"))
      call("later")
      local after = call("look")
      pristine(after, "after the kept and planted tables were changed")
      assert.is_false(after.same)
    end)

    it("gives the caller as given after calls that failed, with it or with another caller", function()
      call("look")
      local env = engine:execute("probe", { mode = "raise" }, CALLER)
      assert.equals("tool_error", env.error.kind)
      pristine(call("look"), "after a call that raised")
      env = engine:execute("probe", { mode = "bomb" }, CALLER)
      assert.equals("memory_limit", env.error.kind)
      pristine(call("look"), "after a call that breached its memory cap")
      env = engine:execute("probe", { mode = "raise" }, OTHER)
      assert.equals("tool_error", env.error.kind)
      pristine(call("look"), "after another caller's call that raised")
      env = engine:execute("probe", { mode = "bomb" }, OTHER)
      assert.equals("memory_limit", env.error.kind)
      pristine(call("look"), "after another caller's call that breached")
      local bob = call("look", OTHER)
      assert.equals("bob", bob.principal)
    end)

    it("gives another caller its own data, and the first one its own again", function()
      call("keep")
      local bob = call("look", OTHER)
      assert.equals("bob", bob.principal)
      assert.equals("reader", bob.roles)
      assert.equals("capabilities,key,principal,roles", bob.keys)
      assert.is_false(bob.same)
      call("later", OTHER) -- changes alice's table, kept by the tool
      pristine(call("look"), "alice after bob")
      local bob2 = call("look", OTHER)
      assert.equals("bob", bob2.principal)
      assert.equals("reader", bob2.roles)
    end)
  end)
end

describe("ctx.caller across calls", function()
  teardown(function() H.cleanup() end)
  check_level("relaxed")
  check_level("none")
end)
