-- dsl_spec.lua — the tool definition language (lua/rubberduck/dsl.lua, run
-- through the registry and the tool state): every wrong definition is
-- refused at load with one exact "file: field.path: reason" line per
-- problem, and a good one is normalized with its documented defaults.

local H = require "helpers"

describe("tool definitions", function()
  local engine, dir, json
  local n = 0

  setup(function()
    json = H.json()
    dir = H.tmpdir()
    engine = H.open_engine(nil)
  end)

  teardown(function()
    if engine then engine:close() end
    H.cleanup()
  end)

  -- Write `source` to a fresh file and load it. Returns problems, path, ok.
  -- (`name` must be a string: a gsub's count passed along is ignored.)
  local function load(source, name)
    n = n + 1
    if type(name) ~= "string" then name = nil end
    local path = H.write_tool(dir, name or ("t" .. n), source)
    local ok, problems = engine:load_tools(nil, { path })
    return problems, path, ok
  end

  -- The source of a good relaxed tool with `fields` (Lua text) spliced in.
  local function tool_with(fields, name)
    return ([[
return tool {
  metadata = { name = %q, description = "d" },
  security = { level = "relaxed" },
  execution = { handler = function() return {} end },
  %s
}]]):format(name or ("x" .. n + 1), fields or "")
  end

  -- Assert `problems` holds exactly the line `want` (shows all on failure).
  local function has_line(problems, want)
    for _, p in ipairs(problems) do if p == want then return end end
    error(("expected the line\n  %s\namong the problems:\n  %s"):format(
      want, table.concat(problems, "\n  ")), 2)
  end

  local FIELDS_TOP = "capabilities, constraints, execution, metadata, output, parameters, requires, roles, security"

  it("refuses an unknown top-level field", function()
    local probs, f = load(tool_with("bogus = 1"))
    has_line(probs, f .. ": bogus: unknown field (expected one of " .. FIELDS_TOP .. ")")
  end)

  it("refuses unknown nested fields with their full path", function()
    local probs, f = load([[
return tool {
  metadata = { name = "nested", description = "d", nmae = "x" },
  security = { level = "relaxed", foo = 2 },
  execution = { handler = function() end, tiemout = 5 },
  output = { fromat = "json" },
}]])
    has_line(probs, f .. ": metadata.nmae: unknown field (expected one of author, description, " ..
      "examples, license, name, tags, version)")
    has_line(probs, f .. ": security.foo: unknown field (expected one of allowed_paths, " ..
      "dangerous_functions, level, max_cpu, max_file_size, max_memory, max_output)")
    has_line(probs, f .. ": execution.tiemout: unknown field (expected one of backoff, concurrency, handler, retries, timeout)")
    has_line(probs, f .. ": output.fromat: unknown field (expected one of cache_ttl, format, redact, schema, truncate)")
    assert.equals(4, #probs)
    assert.is_nil(engine:tool("nested"))
  end)

  it("refuses wrong types", function()
    local probs, f = load([[
return tool {
  metadata = { name = 42, description = true, version = 1, tags = "fs" },
  security = { level = "relaxed", max_memory = "big", max_cpu = {} },
  execution = { handler = "function() end", timeout = "1s" },
}]])
    has_line(probs, f .. ": metadata.name: expected string, got number")
    has_line(probs, f .. ": metadata.description: expected string, got boolean")
    has_line(probs, f .. ": metadata.version: expected string, got number")
    has_line(probs, f .. ": metadata.tags: expected table, got string")
    has_line(probs, f .. ": security.max_memory: expected a number, got \"big\"")
    assert.equals(1, #H.matching(probs, f .. ": security.max_cpu: expected a number, got table"))
    has_line(probs, f .. ": execution.handler: expected function, got string")
    has_line(probs, f .. ": execution.timeout: expected a number, got \"1s\"")
  end)

  it("refuses a block that is not a table, and list items of the wrong type", function()
    local probs, f = load([[
return tool {
  metadata = { name = "blocks", description = "d", tags = { "ok", 2 } },
  security = "relaxed",
  capabilities = { "fs.read", false },
  execution = { handler = function() end },
}]])
    has_line(probs, f .. ": security: expected table, got string")
    has_line(probs, f .. ": metadata.tags[2]: expected string, got number")
    has_line(probs, f .. ": capabilities[2]: expected string, got boolean")
  end)

  it("refuses a misspelled security level", function()
    local probs, f = load(tool_with():gsub('"relaxed"', '"strcit"'))
    has_line(probs, f .. ': security.level: expected one of strict, balanced, relaxed, none, got "strcit"')
    assert.equals(1, #probs)
  end)

  it("refuses bad tool names", function()
    local cases = { "Bad-Name", "9lives", "", "with space", "_x", ("a"):rep(65) }
    for _, name in ipairs(cases) do
      local probs, f = load(tool_with(nil, name))
      has_line(probs, ("%s: metadata.name: must match [a-z][a-z0-9_]* and be at most 64 characters, got %q")
        :format(f, name))
    end
    -- 64 characters is still fine
    local probs = load(tool_with(nil, ("b"):rep(64)))
    assert.same({}, probs)
  end)

  it("refuses an empty or blank description", function()
    for _, d in ipairs({ '""', '"   "', '"\\n\\t"' }) do
      local probs, f = load(([[
return tool {
  metadata = { name = "nodesc", description = %s },
  security = { level = "relaxed" },
  execution = { handler = function() end },
}]]):format(d))
      has_line(probs, f .. ": metadata.description: must not be empty")
    end
  end)

  it("refuses a tool without a handler", function()
    local probs, f = load([[
return tool {
  metadata = { name = "nohandler", description = "d" },
  security = { level = "relaxed" },
  execution = { timeout = 100 },
}]])
    has_line(probs, f .. ": execution.handler: missing (a tool needs a handler function)")
    -- no execution block at all: the same line
    probs, f = load([[return tool { metadata = { name = "noexec", description = "d" },
      security = { level = "relaxed" } }]])
    has_line(probs, f .. ": execution.handler: missing (a tool needs a handler function)")
  end)

  it("refuses a tool without metadata, naming what is needed", function()
    local probs, f = load([[
return tool { security = { level = "relaxed" }, execution = { handler = function() end } }]])
    has_line(probs, f .. ": metadata: missing (a tool needs metadata.name and metadata.description)")
    has_line(probs, f .. ": metadata.name: missing")
    has_line(probs, f .. ": metadata.description: missing")
  end)

  it("refuses constraints that are not functions", function()
    local probs, f = load(tool_with('constraints = { function() return true end, "p.x > 0", 3 }'))
    has_line(probs, f .. ": constraints[2]: expected function, got string")
    has_line(probs, f .. ": constraints[3]: expected function, got number")
    probs, f = load(tool_with("constraints = function() return true end"))
    has_line(probs, f .. ": constraints: expected table, got function")
    probs, f = load(tool_with("constraints = { check = function() return true end }"))
    has_line(probs, f .. ": constraints: expected a list of functions")
  end)

  it("refuses relative allowed_paths", function()
    local probs, f = load(tool_with():gsub('level = "relaxed"',
      'level = "relaxed", allowed_paths = { "/tmp", "tmp", "./x" }'))
    has_line(probs, f .. ': security.allowed_paths[2]: must be an absolute path, got "tmp"')
    has_line(probs, f .. ': security.allowed_paths[3]: must be an absolute path, got "./x"')
    assert.equals(2, #probs)
  end)

  it("limits retries to 0..10 whole numbers", function()
    local probs, f = load(tool_with():gsub("execution = {", "execution = { retries = 11,"))
    has_line(probs, f .. ": execution.retries: at most 10, got 11")
    probs, f = load(tool_with():gsub("execution = {", "execution = { retries = -1,"))
    has_line(probs, f .. ": execution.retries: must be >= 0, got -1")
    probs, f = load(tool_with():gsub("execution = {", "execution = { retries = 1.5,"))
    has_line(probs, f .. ": execution.retries: expected a whole number, got 1.5")
    probs = load(tool_with(nil, "ten_retries"):gsub("execution = {", "execution = { retries = 10,"))
    assert.same({}, probs)
  end)

  it("refuses limits that are not positive", function()
    local probs, f = load(tool_with():gsub('level = "relaxed"',
      'level = "relaxed", max_memory = 0, max_cpu = -5'))
    has_line(probs, f .. ": security.max_memory: must be > 0, got 0")
    has_line(probs, f .. ": security.max_cpu: must be > 0, got -5")
    probs, f = load(tool_with():gsub("execution = {", "execution = { timeout = 0,"))
    has_line(probs, f .. ": execution.timeout: must be > 0, got 0")
  end)

  it("refuses an unknown output format", function()
    local probs, f = load(tool_with('output = { format = "csv" }'))
    has_line(probs, f .. ': output.format: expected one of json, xml, yaml, binary, plain, got "csv"')
  end)

  it("refuses parameters that are not an object schema, or hold functions", function()
    local probs, f = load(tool_with('parameters = { type = "array" }'))
    has_line(probs, f .. ': parameters.type: the parameters of a tool are an object, got "array"')
    probs, f = load(tool_with('parameters = { type = "object", properties = { x = { default = function() end } } }'))
    has_line(probs, f .. ": parameters.properties.x.default: a schema holds data only, got function")
  end)

  it("reports a schema the validator cannot compile, with the field", function()
    local probs, f = load(tool_with('parameters = { type = "object", properties = { x = { type = "integr" } } }'))
    assert.equals(1, #probs)
    assert.truthy(probs[1]:find(f .. ": parameters: ", 1, true), probs[1])
  end)

  it("reports every problem of a definition at once", function()
    local probs, f = load([[
return tool {
  metadata = { name = "Many" },
  bogus = 1,
  security = { level = "strcit" },
  execution = { retries = 11, handler = 3 },
  output = { format = "csv" },
}]])
    has_line(probs, f .. ": bogus: unknown field (expected one of " .. FIELDS_TOP .. ")")
    has_line(probs, f .. ": metadata.description: missing")
    has_line(probs, f .. ': metadata.name: must match [a-z][a-z0-9_]* and be at most 64 characters, got "Many"')
    has_line(probs, f .. ': security.level: expected one of strict, balanced, relaxed, none, got "strcit"')
    has_line(probs, f .. ": execution.retries: at most 10, got 11")
    has_line(probs, f .. ": execution.handler: expected function, got number")
    has_line(probs, f .. ': output.format: expected one of json, xml, yaml, binary, plain, got "csv"')
    assert.equals(7, #probs)
  end)

  it("refuses a file that does not return a tool", function()
    local want = ": (file): does not return a tool (end the file with: return tool { ... })"
    for _, src in ipairs({
      "return 42",
      "return {}",
      "return { metadata = { name = 'plain', description = 'd' }, execution = { handler = function() end } }",
      "local x = tool { metadata = { name = 'lost', description = 'd' } }",
      "return nil",
      "",
    }) do
      local probs, f = load(src)
      assert.same({ f .. want }, probs)
    end
  end)

  it("refuses a file with a syntax error, naming the line", function()
    local probs, f = load("return tool {\n  metadata = { name = 'x' \n")
    assert.equals(1, #probs)
    local prefix = f .. ": (syntax): " .. f .. ":"
    assert.equals(prefix, probs[1]:sub(1, #prefix), probs[1])
    assert.truthy(probs[1]:find("<eof>", 1, true), probs[1])
  end)

  it("refuses a file whose top level raises, with the message", function()
    local probs, f = load("local x = 1\nerror('top level says no')\n")
    assert.same({ f .. ": (load): " .. f .. ":2: top level says no" }, probs)
    probs, f = load("error({ message = 'a table error' })")
    assert.same({ f .. ": (load): a table error" }, probs)
  end)

  it("refuses a duplicate tool name in a directory and keeps the first", function()
    local d = H.tmpdir()
    local a = H.write_tool(d, "a_first", tool_with(nil, "dup"):gsub('description = "d"', 'description = "first"'))
    local b = H.write_tool(d, "b_second", tool_with(nil, "dup"):gsub('description = "d"', 'description = "second"'))
    local e = H.open_engine(d)
    assert.same({ ('%s: metadata.name: duplicate tool name "dup" (also in %s)'):format(b, a) }, e.problems)
    assert.equals("first", e:tool("dup").metadata.description)
    assert.equals("ok", e:execute("dup", {}).status)
    assert.equals(1, #e:tools())
    e:close()
  end)

  it("keeps the loaded tool when a reload of its file fails", function()
    local path = H.write_tool(dir, "keeper", tool_with(nil, "keeper"))
    local ok = engine:load_tools(nil, { path })
    assert.is_true(ok)
    H.write_file(path, "return tool { metadata = { name = 'keeper' } ")
    local ok2, probs = engine:load_tools(nil, { path })
    assert.is_false(ok2)
    assert.equals(1, #probs)
    assert.equals("ok", engine:execute("keeper", {}).status)
  end)

  it("refuses precompiled bytecode", function()
    local bc = string.dump(function() return 42 end)
    local probs, f = load(bc)
    assert.same({ f .. ": (file): precompiled bytecode is refused" }, probs)
    -- hidden behind a shebang line or a BOM: still refused, never run
    for _, prefix in ipairs({ "#!/usr/bin/env rduck\n", "\239\187\191" }) do
      probs, f = load(prefix .. bc)
      assert.equals(1, #probs)
      assert.equals(f .. ": ", probs[1]:sub(1, #f + 2))
    end
  end)

  it("defaults to level balanced, refused at load while the process sandbox is missing", function()
    local registry = require "rubberduck.registry"
    local probs, f = load([[
return tool {
  metadata = { name = "defaulted", description = "d" },
  execution = { handler = function() return {} end },
}]])
    if registry.RUNNABLE.balanced then
      -- the worker processes exist in this build: the default level loads
      assert.same({}, probs)
      assert.equals("balanced", engine:tool("defaulted").security.level)
      return
    end
    assert.equals(1, #probs)
    local want = f .. ': security.level: "balanced" needs the '
    assert.equals(want, probs[1]:sub(1, #want), probs[1])
    assert.is_nil(engine:tool("defaulted"))
    probs, f = load(tool_with(nil, "strictly"):gsub('"relaxed"', '"strict"'))
    want = f .. ': security.level: "strict" needs the '
    assert.equals(1, #probs)
    assert.equals(want, probs[1]:sub(1, #want), probs[1])
  end)

  describe("a relaxed tool with only the required fields", function()
    local def

    setup(function()
      local probs = load([[
return tool {
  metadata = { name = "minimal", description = "the least a tool says" },
  security = { level = "relaxed" },
  execution = { handler = function() return {} end },
}]])
      assert.same({}, probs)
      def = engine:tool("minimal")
    end)

    it("gets the documented defaults", function()
      assert.equals("minimal", def.metadata.name)
      assert.equals("0.0.0", def.metadata.version)
      assert.equals(0, def.execution.retries)
      assert.equals(30000, def.execution.timeout)
      assert.equals("json", def.output.format)
      assert.equals(0, def.output.cache_ttl)
      assert.equals("relaxed", def.security.level)
      assert.equals(67108864, def.security.max_memory)
      assert.equals(10485760, def.security.max_file_size)
      assert.is_number(def.security.max_cpu)
      assert.is_number(def.security.max_output)
      assert.same({ type = "object" }, def.parameters)
      assert.is_nil(def.execution.handler)   -- plain data: no functions
    end)

    it("encodes its empty lists as JSON arrays", function()
      local enc = H.encode
      assert.equals("[]", enc(def.metadata.tags))
      assert.equals("[]", enc(def.metadata.examples))
      assert.equals("[]", enc(def.capabilities))
      assert.equals("[]", enc(def.roles))
      assert.equals("[]", enc(def.security.allowed_paths))
      assert.equals("[]", enc(def.security.dangerous_functions))
      local text = enc(def, { sort_keys = true })
      assert.truthy(text:find('"tags":[]', 1, true), text)
      -- and through engine:tools_json(), as `rduck tools --json` prints them
      local all = H.decode(engine:tools_json())
      local found
      for _, d in ipairs(all) do if d.metadata.name == "minimal" then found = d end end
      assert.is_table(found)
      assert.equals("[]", enc(found.metadata.tags))
    end)

    it("keeps given fields next to the defaults", function()
      local probs = load([[
return tool {
  metadata = { name = "given", description = "d", version = "2.1.0", tags = { "a", "b" } },
  capabilities = { "fs.read" },
  security = { level = "none", max_cpu = 100 },
  execution = { retries = 3, timeout = 250, handler = function() return {} end },
  output = { format = "plain", cache_ttl = 5 },
}]])
      assert.same({}, probs)
      local g = engine:tool("given")
      assert.equals("2.1.0", g.metadata.version)
      assert.same({ "a", "b" }, g.metadata.tags)
      assert.same({ "fs.read" }, g.capabilities)
      assert.equals("none", g.security.level)
      assert.equals(100, g.security.max_cpu)
      assert.equals(3, g.execution.retries)
      assert.equals(250, g.execution.timeout)
      assert.equals("plain", g.output.format)
      assert.equals(5, g.output.cache_ttl)
    end)
  end)

  it("ignores a hostile metatable on the definition table", function()
    -- The normalizer reads fields raw: __index / __pairs never run.
    local probs, f = load([[
return tool(setmetatable({}, {
  __index = function() while true do end end,
  __pairs = function() while true do end end,
}))]])
    has_line(probs, f .. ": metadata: missing (a tool needs metadata.name and metadata.description)")
  end)
end)
