-- The bundled tools: every example in metadata.examples runs through the
-- pipeline and gives the expected output or error kind (as `rduck demo`
-- does), and each tool documents itself well enough to be used.
local rd = require "rubberduck"
local json = require "rubberduck.json"
local cli = require "rubberduck.cli"

local source_dir = os.getenv("RD_SOURCE_DIR") or "."

describe("bundled tools", function()
  local engine
  setup(function()
    engine = rd.open({ tools = source_dir .. "/tools" })
  end)
  teardown(function() engine:close() end)

  it("all load without a problem", function()
    assert.same({}, engine.problems)
    assert.is_true(#engine:tools() >= 6)
  end)

  it("each has a description, a version, and at least two examples", function()
    for _, d in ipairs(engine:tools()) do
      assert.is_true(#d.metadata.description > 10, d.metadata.name)
      assert.not_equal("0.0.0", d.metadata.version, d.metadata.name)
      assert.is_true(#d.metadata.examples >= 2, d.metadata.name)
    end
  end)

  it("each example gives its expected output or error", function()
    local n = 0
    for _, d in ipairs(engine:tools()) do
      for i, ex in ipairs(d.metadata.examples) do
        local env = engine:execute(d.metadata.name, ex.params, cli.OPERATOR)
        local label = d.metadata.name .. " example " .. i
        if ex.error then
          assert.equal("error", env.status, label)
          assert.equal(ex.error, env.error.kind, label .. ": " .. tostring(env.error.message))
        else
          assert.equal("ok", env.status, label .. ": " .. (env.error ~= json.null and env.error.message or ""))
          if ex.output ~= nil then
            assert.is_true(cli.same(env.output, ex.output),
              label .. ": got " .. json.encode(env.output) .. ", want " .. json.encode(ex.output))
          end
        end
        n = n + 1
      end
    end
    assert.is_true(n >= 12)
  end)

  it("covers the error kinds a user meets first", function()
    local kinds = {}
    for _, d in ipairs(engine:tools()) do
      for _, ex in ipairs(d.metadata.examples) do
        if ex.error then kinds[ex.error] = true end
      end
    end
    for _, k in ipairs({ "invalid_params", "timeout", "cpu_limit", "sandbox_violation" }) do
      assert.is_true(kinds[k] ~= nil, "no example shows " .. k)
    end
  end)

  it("json_query keeps an empty array an array across the JSON boundary", function()
    local env = engine:execute("json_query", { document = json.decode('{"list":[]}'), pointer = "/list" },
      cli.OPERATOR)
    assert.equal('{"found":true,"value":[]}', json.encode(env.output, { sort_keys = true }))
  end)
end)
