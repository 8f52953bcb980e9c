-- packed_spec.lua — st:execute's fast way gives what its slow way gives.
--
-- A tool state's first call (and any call whose caller is not the one the
-- state keeps) copies its arguments into the state on the loop thread
-- (rd__xcopy). Later calls with the kept caller are packed on the loop
-- thread (rd__xpack), made in the state by the call thread, and their
-- output is packed there and made in the host by the loop (l_lstate.c,
-- "the fast way"). Here each value and each failure goes both ways, and
-- must come out the same.

local H = require "helpers"
local rd = require "rubberduck"
local core = require "rubberduck.core"
local json = H.json()

local OP = { principal = "packer", capabilities = { "*" } }

-- A tool that answers with what `p.out` names: its params, or one of the
-- hostile outputs below.
local HANDLER = [[function(p)
  if p.out == "function" then return { ok = 1, f = function() end } end
  if p.out == "cycle" then local t = {} t.self = t return { t = t } end
  if p.out == "big" then return { s = string.rep("x", 5000) } end
  if p.out == "nan" then return { n = 0 / 0 } end
  if p.out == "deep" then local t = {} for _ = 1, 300 do t = { t } end return t end
  if p.out == "thread" then return { u = coroutine.create(function() end) } end
  return p
end]]

local function engine_with_tool(level)
  local dir = H.tmpdir()
  H.write_tool(dir, "echo", H.tool_source({ name = "echo", level = level, handler = HANDLER }))
  return H.open_engine(dir, { store = false }), dir
end

-- One st:execute on the tool's state, the loop run until its answer:
-- ok, status or kind, output or message.
local function call(engine, st, params, caller, max_output)
  local done, a, b, c
  local ok, err = pcall(st.execute, st, params, caller, "packed-spec", 1,
    core.now() * 1000 + 10000, 5000, 10000, max_output or 1024 * 1024,
    function(x, y, z) done, a, b, c = true, x, y, z end)
  if not ok then return "raised", err end
  assert(ok and err, err)
  while not done do engine.loop:run("once") end
  return a, b, c
end

-- The same arguments through the slow way (another caller table each time:
-- never the kept one) and the fast way (the kept one); the answers must be
-- equal, and equally marked.
local function both_ways(engine, params, max_output)
  local t, terr = engine.registry:get("echo")
  assert(t, tostring(terr))
  local st, serr = engine.registry:checkout(t, nil)
  assert(st, tostring(serr))
  local caller = engine.auth:caller(OP)
  local slow = { call(engine, st, params, { principal = "other", roles = {}, capabilities = {} }, max_output) }
  call(engine, st, {}, caller) -- now the state keeps `caller`
  local fast = { call(engine, st, params, caller, max_output) }
  engine.registry:checkin(t, st)
  return slow, fast
end

local function same(slow, fast)
  assert.equal(slow[1], fast[1])
  if type(slow[2]) == "table" then
    assert.same(slow[2], fast[2])
  else
    assert.equal(slow[2], fast[2])
  end
  if type(slow[3]) == "table" then
    assert.equal(json.canonical(slow[3]), json.canonical(fast[3]))
    assert.same(slow[3], fast[3])
  else
    assert.equal(slow[3], fast[3])
  end
end

for _, level in ipairs({ "relaxed", "none" }) do
  describe("st:execute's fast way at " .. level, function()
    local engine, dir
    setup(function() engine, dir = engine_with_tool(level) end)
    teardown(function() engine:close(); H.rm_rf(dir) end)

    it("gives the tool the same params and the host the same output as the slow way", function()
      local values = {
        {},
        { a = 1, b = "two", c = true, d = false },
        { list = { 1, 2, 3, "x", { y = 1 } }, nested = { a = { b = { c = { d = "deep" } } } } },
        { bin = "a\0b\255\254", empty = "", big = 2 ^ 53, tiny = 1e-300, neg = -1.5 },
        { null = json.null, arr = json.decode("[]"), obj = json.decode("{}"),
          marked = json.decode('{"x":[1,{"y":[]}],"z":{}}') },
        { [1] = "one", [2] = "two", [10] = "ten", [2.5] = "half", [-3] = "minus" },
        { s = string.rep("y", 3000), many = (function() local t = {} for i = 1, 200 do t[i] = i end return t end)() },
      }
      for i, v in ipairs(values) do
        local slow, fast = both_ways(engine, v)
        assert.equal(true, fast[1], "value " .. i .. ": " .. tostring(fast[3]))
        same(slow, fast)
        -- the markers came back: an empty array stays an array
        if v.arr then
          assert.equal("[]", json.encode(fast[3].arr))
          assert.equal("{}", json.encode(fast[3].obj))
          assert.equal(json.canonical(v.marked), json.canonical(fast[3].marked))
          assert.equal(json.null, fast[3].null)
        end
      end
    end)

    it("fails the same way: bad params raise, bad output ends the call", function()
      -- params that are not plain data: st:execute raises with the pointer
      for _, bad in ipairs({ { f = print }, { n = 0 / 0 }, { [true] = 1 }, { u = io.stdout } }) do
        local slow, fast = both_ways(engine, bad)
        assert.equal("raised", slow[1])
        same(slow, fast)
        assert.truthy(fast[2]:find("params: /", 1, true), fast[2])
      end
      local cyc = {}
      cyc.self = cyc
      local slow, fast = both_ways(engine, { c = cyc })
      same(slow, fast)
      assert.truthy(fast[2]:find("/c/self: cycle", 1, true), fast[2])
      -- output that is not plain data, too large, too deep
      for _, out in ipairs({ "function", "cycle", "nan", "deep", "thread" }) do
        slow, fast = both_ways(engine, { out = out })
        same(slow, fast)
        assert.equal(false, fast[1], out)
        assert.equal("invalid_output", fast[2], out)
      end
      slow, fast = both_ways(engine, { out = "big" }, 1000)
      same(slow, fast)
      assert.equal(false, fast[1])
      assert.equal("output_limit", fast[2])
      -- and the state serves on
      slow, fast = both_ways(engine, { ok = 1 })
      same(slow, fast)
      assert.equal(true, fast[1])
    end)

    it("goes through the pipeline: envelopes of calls after the first are the same", function()
      local first = engine:execute("echo", { k = "v", n = { 1, 2 } }, OP)
      for _ = 1, 3 do
        local env = engine:execute("echo", { k = "v", n = { 1, 2 } }, OP)
        assert.equal("ok", env.status)
        assert.same(first.output, env.output)
      end
      local bad = engine:execute("echo", { out = "function" }, OP)
      assert.equal("error", bad.status)
      assert.equal("invalid_output", bad.error.kind)
    end)
  end)
end
