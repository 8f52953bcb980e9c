-- What tool code can see. The environment is built from data
-- (lua/rubberduck/env.lua); this spec lists every global and library field
-- a relaxed tool can reach and compares it with a fixture, so a new global
-- shows up in review.
local rd = require "rubberduck"
local json = require "rubberduck.json"
local cli = require "rubberduck.cli"

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'") == 0)
  return p
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local LISTER = [[
return tool {
  metadata = { name = "lister", description = "lists its environment" },
  security = { level = "%s" },
  execution = { handler = function()
    local out = {}
    for k, v in pairs(_G) do
      if type(v) == "table" and k ~= "_G" then
        out[#out + 1] = k
        for f in pairs(v) do out[#out + 1] = k .. "." .. tostring(f) end
      else
        out[#out + 1] = k
      end
    end
    table.sort(out)
    return out
  end },
}
]]

describe("tool environment", function()
  local dir, engine
  setup(function()
    dir = tmpdir()
    write(dir .. "/lister.lua", LISTER:format("relaxed"))
    for _, level in ipairs({ "strict", "balanced" }) do
      write(dir .. "/lister_" .. level .. ".lua",
        LISTER:format(level):gsub('name = "lister"', 'name = "lister_' .. level .. '"'))
    end
    engine = rd.open({ tools = dir })
  end)
  teardown(function()
    engine:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function fixture()
    local f = assert(io.open((os.getenv("RD_SOURCE_DIR") or ".") .. "/spec/fixtures/env_relaxed.txt"))
    local want = {}
    for line in f:lines() do
      if line ~= "" and not line:match("^#") then want[#want + 1] = line end
    end
    f:close()
    return want
  end

  it("at relaxed is exactly the fixture", function()
    local env = engine:execute("lister", {}, cli.OPERATOR)
    assert.equal("ok", env.status)
    assert.same(fixture(), env.output)
  end)

  it("at strict and balanced, in a worker process, is the same", function()
    for _, level in ipairs({ "strict", "balanced" }) do
      local env = engine:execute("lister_" .. level, {}, cli.OPERATOR)
      assert.equal("ok", env.status, level)
      assert.equal(level, env.metadata.security_level)
      assert.same(fixture(), env.output)
    end
  end)

  it("refuses a tool whose source names a dangerous function", function()
    write(dir .. "/dumper.lua", [[
return tool {
  metadata = { name = "dumper", description = "uses string.dump" },
  security = { level = "relaxed" },
  execution = { handler = function() return { b = ("").dump(print) } end },
}]])
    local ok, probs = engine:load_tools(dir)
    assert.is_false(ok)
    local found = false
    for _, p in ipairs(probs) do
      if p:find("dumper.lua: security.dangerous_functions: line 4 uses string.dump", 1, true) then found = true end
    end
    assert.is_true(found, table.concat(probs, "\n"))
    os.remove(dir .. "/dumper.lua")
  end)

  it("hides the string metatable and string.dump", function()
    write(dir .. "/probe.lua", [[
return tool {
  metadata = { name = "probe", description = "probes escapes" },
  security = { level = "relaxed" },
  execution = { handler = function()
    return {
      string_mt = getmetatable("") == nil,
      -- spelled so the load-time scan does not refuse the tool: this
      -- checks that string.dump is absent at run time too
      dump = ("")[("du" .. "mp")] == nil,
      gc = (pcall(collectgarbage, "collect")) == false,
      count = type(collectgarbage("count")) == "number",
    }
  end },
}]])
    engine:load_tools(dir)
    local env = engine:execute("probe", {}, cli.OPERATOR)
    assert.same({ string_mt = true, dump = true, gc = true, count = true }, env.output)
  end)
end)
