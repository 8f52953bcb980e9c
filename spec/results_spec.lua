-- spec/results_spec.lua — stage 4, the result processor (issue 8):
-- normalization at every security level, output schema, formats read back
-- by independent parsers (xmllint, Python's expat, PyYAML, Python's json),
-- enrichment, transformations, persistence hand-off, events.
local H = require "helpers"
local json = require "rubberduck.json"
local core = require "rubberduck.core"
local results = require "rubberduck.results"
local formats = require "rubberduck.formats"
local validator = require "rubberduck.validator"

local R = core.results
local LEVELS = { "strict", "balanced", "relaxed", "none" }
local CALLER = { principal = "alice", roles = json.array({}), capabilities = json.array({ "*" }) }

-- Deep equality that keeps [] apart from {} and compares numbers exactly.
local function same(a, b, path)
  path = path or ""
  if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " vs " .. type(b) end
  if type(a) ~= "table" then
    if a == b then return true end
    return false, path .. ": " .. tostring(a) .. " vs " .. tostring(b)
  end
  local aa = getmetatable(a) == json.array_mt or json.is_array(a)
  local ba = getmetatable(b) == json.array_mt or json.is_array(b)
  if aa ~= ba then return false, path .. ": array vs object" end
  for k, v in pairs(a) do
    local ok, why = same(v, b[k], path .. "/" .. tostring(k))
    if not ok then return false, why end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "/" .. tostring(k) .. ": missing" end
  end
  return true
end

local function assert_same(a, b, what)
  local ok, why = same(a, b)
  assert(ok, (what or "") .. ": " .. tostring(why))
end

-- An independent program (python3, xmllint), without the sanitizer build's
-- LD_PRELOAD of libasan (its leak report would be the program's, not ours).
local function external(prog, args)
  local a = { "-u", "LD_PRELOAD", prog }
  for _, x in ipairs(args) do a[#a + 1] = x end
  return H.run_command("env", a)
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

describe("results", function()
  local tmp
  lazy_setup(function() tmp = H.tmpdir() end)
  lazy_teardown(function() H.cleanup() end)

  -- ---- the in-place fast path gives what the copying path gives ---------------------
  describe("normalization in place (R.finish)", function()
    local function build()
      local cyc = { x = {} }
      cyc.x.back = cyc
      local shared = { 1, 2 }
      local deep = {}
      for _ = 1, 200 do deep = { deep } end
      return {
        { ok = true }, {}, json.array({}), json.object({}), { 1, 2, 3 }, { "a", { b = { 1, { c = json.null } } } },
        json.object({ a = json.array({}), b = json.object({}) }), { list = json.array({ 1, json.object({}) }) },
        "text", 42, 1.5, false, json.null, { s = "h\xc3\xa9" }, { two = shared, again = shared },
        -- the copying path decides these (binary strings, number keys in
        -- objects, holes, other metatables, invalid values)
        { b = "\xff\xfe" }, json.object({ [1] = "x", [2] = "y" }), { [1] = "a", [3] = "c" },
        setmetatable({ 1 }, { __index = {} }), { x = 0 / 0 }, { f = print }, { [true] = 1 },
        { ["\xff"] = 1 }, cyc, deep,
      }
    end

    it("normalizes in place exactly as the copy, or leaves the value to the copy", function()
      local originals, copies = build(), build()
      for i = 1, #originals do
        local raw, bins = R.normalize(originals[i])
        local fast, nbytes, digest, text = R.finish(copies[i], true)
        if fast then
          assert.is_table(bins)
          assert.equals(0, #bins, "case " .. i)
          local canonical = assert(json.canonical(raw))
          assert.equals(canonical, text, "case " .. i)
          assert.equals(#canonical, nbytes, "case " .. i)
          assert.equals(R.digest(canonical), digest, "case " .. i)
          -- the same shape, markers included, as the copy
          assert.same(raw, copies[i], "case " .. i)
          assert.is_true(same(raw, copies[i]), "case " .. i)
          if type(raw) == "table" then
            assert.equals(getmetatable(raw), getmetatable(copies[i]), "case " .. i)
          end
        else
          assert.is_false(fast)
          -- the copying path still gives its answer (an error or binary paths)
          assert.truthy(raw == nil or #bins > 0 or type(copies[i]) == "table", "case " .. i)
        end
      end
    end)

    it("takes the fast path for plain outputs, the copy for the rest", function()
      local v = build()
      for i = 1, 15 do assert.is_true((R.finish(v[i])), "plain case " .. i) end
      for i = 16, #v do assert.is_false((R.finish(v[i])), "copy case " .. i) end
    end)
  end)

  -- ---- 1 normalization, the same at every level ------------------------------------
  describe("normalization at every level", function()
    local engine
    local CASES = {
      fn       = [[function() return { a = { b = function() end } } end]],
      thread   = [[function() return { list = { 1, coroutine.create(function() end) } } end]],
      cycle    = [[function() local t = { x = {} }; t.x.back = t; return t end]],
      nan      = [[function() return { x = { 1, 0/0 } } end]],
      inf      = [[function() return { ["a/b~c"] = 1/0 } end]],
      deep_ok  = [[function() local t = {}; for i = 1, 127 do t = { t } end; return t end]],
      deep_bad = [[function() local t = {}; for i = 1, 128 do t = { t } end; return t end]],
      sparse   = [[function() return { s = { [1] = 1, [3] = 3 } } end]],
      mixed    = [[function() return { m = { 1, x = 2 } } end]],
      badkey   = [[function() return { ["k\255"] = 1 } end]],
      binary   = [[function() return { b = "\255\254\0", text = "ok", list = { "x", "\200" } } end]],
      bytes5   = [[function() return "\1\2\3\4\5" end]],
      bigint   = [[function() return { max = 2^53 - 1, min = -(2^53 - 1), big = 2^60, f = 0.1 } end]],
      empties  = [[function() return { a = json.array(), o = json.object(), e = {}, s = "" } end]],
      nilout   = [[function() return nil end]],
      long     = [[function() return string.rep("x", 10000) end]],
      unicode  = [[function() return { s = "日本語 Ελληνικά עברית русский 🦆" } end]],
      special  = [[function() return { s = "<&>\"'\\\n\r\t", ["key with space"] = "yes" } end]],
      numkeys  = [[function() return json.object({ [1] = "a", [2.5] = "b" }) end]],
      nested_pcall = [[function()
        local ok, e = pcall(function() error("inner failure", 0) end)
        error("outer: " .. tostring(e), 0)
      end]],
    }
    local names = {}
    lazy_setup(function()
      for case, handler in pairs(CASES) do
        names[#names + 1] = case
        for _, level in ipairs(LEVELS) do
          H.write_tool(tmp, case .. "_" .. level, H.tool_source{ name = case .. "_" .. level,
            level = level, handler = handler })
        end
      end
      table.sort(names)
      engine = H.open_engine(tmp)
      assert.same({}, engine.problems)
    end)
    lazy_teardown(function() if engine then engine:close() end end)

    local envs = {}
    local function env_of(case, level)
      local key = case .. "_" .. level
      envs[key] = envs[key] or engine:execute(key, {}, CALLER)
      return envs[key]
    end

    -- What must be the same at every level.
    local function essence(env)
      return { status = env.status, output = env.output, error = env.error ~= json.null and {
        kind = env.error.kind, message = env.error.message, details = env.error.details } or "none",
        binary_paths = env.metadata.binary_paths or "none",
        digest = env.metadata.output_digest or "none" }
    end

    it("gives the same envelope at strict, balanced, relaxed and none", function()
      for _, case in ipairs(names) do
        local ref = essence(env_of(case, "relaxed"))
        for _, level in ipairs(LEVELS) do
          assert_same(essence(env_of(case, level)), ref, case .. " at " .. level)
        end
      end
    end)

    local function invalid(case, pointer, reason)
      for _, level in ipairs(LEVELS) do
        local env = env_of(case, level)
        assert.equals("error", env.status, case .. " at " .. level)
        assert.equals("invalid_output", env.error.kind, case .. " at " .. level)
        local e = env.error.details.errors[1]
        assert.equals(pointer, e.pointer, case .. " at " .. level)
        assert.truthy(env.error.message:find(reason, 1, true), env.error.message)
        assert.is_string(json.encode(env))
      end
    end

    it("ends functions, threads, cycles, NaN and infinities in invalid_output with the pointer", function()
      invalid("fn", "/a/b", "function")
      invalid("thread", "/list/1", "thread")
      invalid("cycle", "/x/back", "cycle")
      invalid("nan", "/x/1", "NaN")
      invalid("inf", "/a~1b~0c", "infinite number")
    end)

    it("refuses nesting past 128 levels and keeps 128", function()
      invalid("deep_bad", string.rep("/0", 128), "nested deeper than the limit")
      for _, level in ipairs(LEVELS) do assert.equals("ok", env_of("deep_ok", level).status, level) end
    end)

    it("refuses sparse arrays, mixed tables and keys that are not UTF-8", function()
      invalid("sparse", "/s", "sparse array")
      invalid("mixed", "/m", "table mixes array and object keys")
      invalid("badkey", "/k?", "invalid UTF-8 in object key")
    end)

    it("carries strings that are not UTF-8 as binary (base64, flagged), never corrupted", function()
      for _, level in ipairs(LEVELS) do
        local env = env_of("binary", level)
        assert.equals("ok", env.status, level)
        assert.same({ "/b", "/list/1" }, { unpack(env.metadata.binary_paths) })
        assert.equals("base64", env.metadata.encoding)
        assert.equals(R.base64("\255\254\0"), env.output.b)
        assert.equals("ok", env.output.text)
        local raw = results.raw(env)
        assert.equals("\255\254\0", raw.b)
        assert.equals("\200", raw.list[2])
        assert.equals("x", raw.list[1])
        -- the envelope itself is left as it was
        assert.equals(R.base64("\255\254\0"), env.output.b)
      end
    end)

    it("keeps raw bytes \\1..\\5 (valid UTF-8) as text", function()
      for _, level in ipairs(LEVELS) do
        local env = env_of("bytes5", level)
        assert.equals("\1\2\3\4\5", env.output)
        assert.is_nil(env.metadata.binary_paths)
        assert.equals('"\\u0001\\u0002\\u0003\\u0004\\u0005"', json.encode(env.output))
      end
    end)

    it("keeps integers exact, [] apart from {}, nil as null, long and unicode strings", function()
      for _, level in ipairs(LEVELS) do
        local b = env_of("bigint", level).output
        assert.equals(2^53 - 1, b.max)
        assert.equals('{"big":1152921504606846976,"f":0.1,"max":9007199254740991,"min":-9007199254740991}',
          (json.encode(b, { canonical = true }):gsub("1%.152921504606847e%+18", "1152921504606846976")))
        local e = env_of("empties", level).output
        assert.equals('{"a":[],"e":{},"o":{},"s":""}', json.encode(e, { canonical = true }))
        local n = env_of("nilout", level)
        assert.equals("ok", n.status)
        assert.equals(json.null, n.output)
        assert.equals(10000, #env_of("long", level).output)
        assert.equals("日本語 Ελληνικά עברית русский 🦆", env_of("unicode", level).output.s)
        assert.equals("<&>\"'\\\n\r\t", env_of("special", level).output.s)
        assert.same({ ["1"] = "a", ["2.5"] = "b" }, env_of("numkeys", level).output)
      end
    end)

    it("reports a nested error raised from inside a pcall handler as tool_error", function()
      for _, level in ipairs(LEVELS) do
        local env = env_of("nested_pcall", level)
        assert.equals("tool_error", env.error.kind, level)
        assert.equals("outer: inner failure", env.error.message)
      end
    end)
  end)

  -- ---- 2 output schema --------------------------------------------------------------
  describe("output schema", function()
    it("ends a mismatch in invalid_output with the validator's errors", function()
      local dir = H.tmpdir()
      H.write_tool(dir, "typed", H.tool_source{ name = "typed",
        parameters = [[{ type = "object", properties = { bad = { type = "boolean" } } }]],
        output = [[{ schema = { type = "object", required = { "n" },
          properties = { n = { type = "integer" } } } }]],
        handler = [[function(p) if p.bad then return { n = "x" } end return { n = 1 } end]] })
      local e = H.open_engine(dir)
      assert.equals("ok", e:execute("typed", {}, CALLER).status)
      local env = e:execute("typed", { bad = true }, CALLER)
      assert.equals("invalid_output", env.error.kind)
      assert.truthy(env.error.message:find("output.schema", 1, true))
      assert.equals("/n", env.error.details.errors[1].pointer)
      assert.equals("type", env.error.details.errors[1].keyword)
      e:close()
    end)
  end)

  -- ---- 3 formats, read back by independent parsers ----------------------------------
  describe("formats", function()
    local function corpus()
      local deep = "leaf"
      for i = 1, 100 do deep = (i % 2 == 0) and { deep } or { k = deep } end
      local big = {}
      for i = 1, 10000 do big[i] = i * 1.5 end
      return {
        "plain text", "", "日本語 Ελληνικά עברית русский 🦆 ñ",
        "ctl \0\1\2\8\11\12\14\31\127 end", "cr\r\nlf\ttab", "U+FFFE \239\191\190 U+2028 \226\128\168",
        "yes", "no", "Yes", "ON", "off", "y", "n", "true", "False", "null", "Null", "~", "1e3", "0x10",
        "0o17", "1_000", "12:30", "+1", "-1", ".5", ".inf", "-.inf", ".NaN", "nan", "inf", " lead",
        "trail ", "#hash", "a: b", "- x", "[x]", "{x}", "*ref", "&anc", "!tag", "%dir", "@at", "`tick",
        "'single'", '"double"', "<tag>&amp;</tag>", "]]>", "multi\nline\n", "\255\254binary",
        "\1\2\3\4\5", 0, -0.5, 2^53 - 1, -(2^53 - 1), 2^60, 1e300, 5e-324, 0.1, 123.456, 1e22, 1e-7,
        true, false, json.null,
        json.array({}), {}, json.array({ json.array({}), {} }),
        { ["1abc"] = 1, ["has space"] = 2, xmlns = 3, ["a:b"] = 4, [""] = 5, ["ü"] = 6,
          ["<>&\"'"] = 7, ["ctl\1key"] = 8, item = 9, result = 10, ["x.y-z_"] = 11, XML = 12,
          ["\226\128\168"] = 13 },
        { list = { 1, "two", { three = 3 }, json.array({}), json.null, false },
          nested = { a = { b = { c = "d" } } }, yes = "no", ["null"] = json.null },
        deep,
        string.rep("large ✓ ", 131072),   -- 1 MiB
        big,
        { bin = "\128\129", key = { "\255" } },
        { [string.rep("k", 300)] = "a key longer than YAML's simple keys", del = "\127\194\133" },
      }
    end

    local cases
    lazy_setup(function()
      cases = {}
      for i, v in ipairs(corpus()) do
        local raw, bins = R.normalize(v)
        assert(raw ~= nil or v == nil, bins)
        cases[i] = { raw = raw, view = results.view(raw, bins), bins = bins }
      end
    end)

    local function parse_back(fmt, texts)
      local files = {}
      for i, t in ipairs(texts) do
        files[i] = tmp .. "/doc" .. i .. "." .. fmt
        write(files[i], t)
      end
      local out, err, code = external("python3",
        { H.source_dir .. "/spec/fixtures/results_parse.py", fmt, unpack(files) })
      assert.equals(0, code, err)
      return H.decode(out), files
    end

    for _, fmt in ipairs({ "json", "xml", "yaml" }) do
      it(fmt .. " reads back to the same value with an independent parser", function()
        local texts = {}
        for i, c in ipairs(cases) do
          texts[i] = assert(formats.render(c.raw, fmt))
        end
        local back, files = parse_back(fmt, texts)
        if fmt == "xml" then
          local _, err, code = external("xmllint", { "--noout", "--huge", unpack(files) })
          assert.equals(0, code, err)
        end
        for i, c in ipairs(cases) do
          if type(back[i]) == "table" and back[i]["$error"] then
            error(fmt .. " case " .. i .. ": " .. back[i]["$error"] .. "\n" .. texts[i]:sub(1, 300))
          end
          local got = back[i]
          if got == nil then got = json.null end
          assert_same(got, c.view, fmt .. " case " .. i)
        end
      end)
    end

    it("json canonical mode: sorted keys, no whitespace, equal to Python's form", function()
      local v = { b = 1, a = { z = json.array({}), y = {} }, ["é"] = "x", A = true }
      local text = formats.render(R.normalize(v), "json", { canonical = true })
      assert.equals('{"A":true,"a":{"y":{},"z":[]},"b":1,"é":"x"}', text)
      local out = external("python3", { "-c",
        "import json,sys; print(json.dumps(json.loads(sys.argv[1]), sort_keys=True, " ..
        "separators=(',',':'), ensure_ascii=False))", text })
      assert.equals(text .. "\n", out)
    end)

    it("yaml quotes strings that look like numbers, booleans or null", function()
      local y = formats.render(R.normalize({ a = "yes", b = "1e3", c = "null", d = "0x10", e = "plain" }), "yaml")
      assert.equals('a: "yes"\nb: "1e3"\nc: "null"\nd: "0x10"\ne: plain\n', y)
    end)

    it("xml maps names that are not XML names to <item key=...>", function()
      local x = formats.render(R.normalize({ ["1abc"] = "v", ok = 1 }), "xml")
      assert.truthy(x:find('<item key="1abc">v</item>', 1, true), x)
      assert.truthy(x:find('<ok type="number">1</ok>', 1, true), x)
    end)

    it("plain writes strings as they are and tables as aligned lines", function()
      assert.equals("héllo\1", formats.render("héllo\1", "plain"))
      assert.equals("a     1\nlong  x", formats.render(R.normalize({ a = 1, long = "x" }), "plain"))
    end)

    it("binary gives the raw bytes of a string and refuses anything else", function()
      assert.equals("\255\0\1", formats.render("\255\0\1", "binary"))
      local t, err = formats.render(R.normalize({ 1 }), "binary")
      assert.is_nil(t)
      assert.truthy(err:find("must be a string", 1, true))
    end)
  end)

  -- ---- the engine and the CLI, per format ------------------------------------------------
  describe("formats through the engine and rduck run", function()
    local dir, engine
    lazy_setup(function()
      dir = H.tmpdir()
      H.write_tool(dir, "shape", H.tool_source{ name = "shape",
        handler = [[function() return { name = "duck", n = 3, tags = { "a", "yes" }, none = json.null } end]] })
      H.write_tool(dir, "blob", H.tool_source{ name = "blob", level = "balanced",
        output = [[{ format = "binary" }]],
        handler = [[function() return "\137PNG\r\n\26\n\0\255" end]] })
      H.write_tool(dir, "vers", [[
return tool {
  metadata = { name = "vers", description = "d", version = "2.3.4" },
  security = { level = "relaxed" },
  execution = { handler = function() return { x = 1 } end },
}]])
      engine = H.open_engine(dir)
    end)
    lazy_teardown(function() engine:close() end)

    it("runs every format from rduck run --format", function()
      local out, err, code = H.run_rduck({ "run", "shape", "--tools", dir, "--format", "xml" })
      assert.equals(0, code, err)
      assert.truthy(out:find('<name>duck</name>', 1, true), out)
      out, err, code = H.run_rduck({ "run", "shape", "--tools", dir, "--format", "yaml" })
      assert.equals(0, code, err)
      assert.truthy(out:find('name: duck\n', 1, true), out)
      assert.truthy(out:find('- "yes"\n', 1, true), out)
      out, err, code = H.run_rduck({ "run", "shape", "--tools", dir, "--format", "plain" })
      assert.equals(0, code, err)
      assert.truthy(out:find("name  duck", 1, true), out)
      out, err, code = H.run_rduck({ "run", "shape", "--tools", dir, "--format", "json", "--canonical" })
      assert.equals(0, code, err)
      assert.equals('{"n":3,"name":"duck","none":null,"tags":["a","yes"]}\n', out)
      out, err, code = H.run_rduck({ "run", "blob", "--tools", dir })
      assert.equals(0, code, err)
      assert.equals("\137PNG\r\n\26\n\0\255", out)
      out, err, code = H.run_rduck({ "run", "shape", "--tools", dir, "--format", "binary" })
      assert.equals(1, code)
      assert.truthy(err:find("invalid_output", 1, true), err)
      out, err, code = H.run_rduck({ "run", "shape", "--tools", dir, "--format", "toml" })
      assert.equals(2, code)
      assert.truthy(err:find("expected one of json, xml, yaml, binary, plain", 1, true), err)
    end)

    it("takes --redact and --truncate from the command line", function()
      local out, err, code = H.run_rduck({ "run", "shape", "--tools", dir, "--format", "json",
        "--canonical", "--redact", "NAME,none", "--truncate", "1" })
      assert.equals(0, code, err)
      assert.equals('{"n":3,"name":"[REDACTED]","none":"[REDACTED]","tags":["a",' ..
        '"y [truncated: 3 bytes in all]"]}\n', out)
      _, err, code = H.run_rduck({ "run", "shape", "--tools", dir, "--truncate", "x" })
      assert.equals(2, code)
      assert.truthy(err:find("--truncate: expected a whole number", 1, true), err)
    end)

    it("--json prints the envelope: output the JSON value, metadata.format the format", function()
      local out, err, code = H.run_rduck({ "run", "blob", "--tools", dir, "--json" })
      assert.equals(0, code, err)
      local env = H.decode(out)
      assert.equals("binary", env.metadata.format)
      assert.equals("base64", env.metadata.encoding)
      assert.same({ "" }, { unpack(env.metadata.binary_paths) })
      assert.equals("\137PNG\r\n\26\n\0\255", R.unbase64(env.output))
      out = H.run_rduck({ "run", "shape", "--tools", dir, "--json", "--format", "yaml" })
      env = H.decode(out)
      assert.equals("yaml", env.metadata.format)
      assert.equals("duck", env.output.name)
      assert.equals('name: duck', results.render(env):match("name: duck"))
    end)

    -- ---- 4 enrichment ----
    it("adds tool_version, principal, output_bytes and a BLAKE2b digest of the canonical output", function()
      local env = engine:execute("vers", {}, CALLER)
      local m = env.metadata
      assert.equals("2.3.4", m.tool_version)
      assert.equals("alice", m.principal)
      local canonical = json.encode(env.output, { canonical = true })
      assert.equals('{"x":1}', canonical)
      assert.equals(#canonical, m.output_bytes)
      local out = external("python3", { "-c",
        "import hashlib,sys; print(hashlib.blake2b(sys.argv[1].encode(), digest_size=32).hexdigest())",
        canonical })
      assert.equals(out, m.output_digest .. "\n")
      local schema = H.decode(H.read_file(H.source_dir .. "/schemas/result.schema.json"))
      local v = assert(validator.compile(schema))
      for _, e in ipairs({ env, engine:execute("blob", {}, CALLER), engine:execute("nope", {}, CALLER) }) do
        local ok, errs = v(H.decode(json.encode(e)))
        assert(ok, errs and errs[1] and errs[1].message)
      end
    end)
  end)

  -- ---- 5 transformations ----------------------------------------------------------------
  describe("transformations", function()
    local dir, engine
    lazy_setup(function()
      dir = H.tmpdir()
      H.write_tool(dir, "secrets", H.tool_source{ name = "secrets", level = "strict",
        output = [[{ redact = true }]],
        handler = [[function() return { user = "bob", password = "hunter2", API_TOKEN = "abc",
          nested = { { client_secret = { deep = 1 } } }, note = "auth: Bearer abc.def-123 ok",
          count = 3 } end]] })
      H.write_tool(dir, "keys", H.tool_source{ name = "keys",
        output = [[{ redact = { keys = { "pin", "card*" }, patterns = { "\\d{4}-\\d{4}" },
          replacement = "***" } }]],
        handler = [[function() return { pin = 1234, card_no = "x", memo = "call 1234-5678 now", pinned = "keep" } end]] })
      H.write_tool(dir, "long", H.tool_source{ name = "long", output = [[{ truncate = 10 }]],
        handler = [[function() return { s = string.rep("é", 20), short = "abc", b = string.rep("\255", 30) } end]] })
      H.write_tool(dir, "free", H.tool_source{ name = "free",
        handler = [[function() return { text = string.rep("z", 100), token = "t0k" } end]] })
      engine = H.open_engine(dir)
      assert.same({}, engine.problems)
    end)
    lazy_teardown(function() engine:close() end)

    it("redacts default keys and patterns (true), in a sandboxed worker too", function()
      local env = engine:execute("secrets", {}, CALLER)
      assert.equals("ok", env.status)
      local o = env.output
      assert.equals("bob", o.user)
      assert.equals("[REDACTED]", o.password)
      assert.equals("[REDACTED]", o.API_TOKEN)
      assert.equals("[REDACTED]", o.nested[1].client_secret)
      assert.equals("auth: [REDACTED] ok", o.note)
      assert.equals(3, o.count)
      assert.equals(4, env.metadata.redacted)
      assert.falsy(json.encode(env):find("hunter2", 1, true))
    end)

    it("redacts the tool's own keys, globs and patterns with its replacement", function()
      local o = engine:execute("keys", {}, CALLER).output
      assert.same({ pin = "***", card_no = "***", memo = "call *** now", pinned = "keep" }, o)
    end)

    it("lets the caller add redaction and truncation", function()
      local env = engine:execute("free", {}, CALLER, { redact = { "token" }, truncate = 5 })
      assert.equals("[REDACTED]", env.output.token)
      assert.equals("zzzzz [truncated: 100 bytes in all]", env.output.text)
      assert.same({ pointer = "/text", original_bytes = 100 }, env.metadata.truncated[1])
      local plain = engine:execute("free", {}, CALLER)
      assert.equals("t0k", plain.output.token)
      local bad = engine:execute("free", {}, CALLER, { redact = { patterns = { "(" } } })
      assert.equals("invalid_params", bad.error.kind)
      assert.truthy(bad.error.message:find("redact.patterns[1]", 1, true), bad.error.message)
      bad = engine:execute("free", {}, CALLER, { truncate = 0 })
      assert.equals("invalid_params", bad.error.kind)
      bad = engine:execute("free", {}, CALLER, { format = "toml" })
      assert.equals("invalid_params", bad.error.kind)
      assert.equals("json", bad.metadata.format)
      assert.equals(0, bad.metadata.attempts)   -- refused before the tool ran
    end)

    it("truncates at a character boundary with a marker and the original size", function()
      local env = engine:execute("long", {}, CALLER)
      assert.equals("ééééé [truncated: 40 bytes in all]", env.output.s)
      assert.equals("abc", env.output.short)
      assert.equals(string.rep("\255", 10), results.raw(env).b)
      local t = {}
      for _, e in ipairs(env.metadata.truncated) do t[e.pointer] = e.original_bytes end
      assert.same({ ["/s"] = 40, ["/b"] = 30 }, t)
    end)

    it("refuses bad output.redact / output.truncate at load, naming the field", function()
      local d = H.tmpdir()
      H.write_tool(d, "b1", H.tool_source{ name = "b1", output = [[{ truncate = -1 }]] })
      H.write_tool(d, "b2", H.tool_source{ name = "b2", output = [[{ redact = 5 }]] })
      H.write_tool(d, "b3", H.tool_source{ name = "b3", output = [[{ redact = { patterns = { "[" } } }]] })
      local e = H.open_engine(d)
      local all = table.concat(e.problems, "\n")
      assert.truthy(all:find("output.truncate: must be > 0", 1, true), all)
      assert.truthy(all:find("output.redact: expected true", 1, true), all)
      assert.truthy(all:find("output.redact.patterns[1]", 1, true), all)
      e:close()
    end)

    it("compresses with zstd and reads it back; corrupt or oversized frames are refused", function()
      local s = string.rep("compressible result ", 50000)
      local z = R.compress(s)
      assert.is_true(#z < #s / 50)
      assert.equals(s, R.decompress(z))
      local none, err = R.decompress("not zstd")
      assert.is_nil(none)
      assert.truthy(err:find("not a zstd frame", 1, true))
      none, err = R.decompress(z, 1000)
      assert.is_nil(none)
      assert.truthy(err:find("more than 1000", 1, true), err)
      none, err = R.decompress(z:sub(1, #z - 5))
      assert.is_nil(none)
      assert.is_string(err)
    end)

    it("hands large outputs, compressed, to engine.persist (the store's hook)", function()
      local old = engine.persist_threshold
      engine.persist_threshold = 50
      local seen
      engine.persist = function(id, bytes, meta) seen = { id = id, bytes = bytes, meta = meta }; return true end
      local env = engine:execute("free", {}, CALLER)
      assert.equals(env.execution_id, seen.id)
      assert.equals("zstd", seen.meta.encoding)
      local text = results.unpack_persisted(seen.bytes)
      assert.equals(json.encode(env.output, { canonical = true }), text)
      assert.equals(env.metadata.output_digest, R.digest(text))
      assert.equals(env.execution_id, env.metadata.persisted.ref)
      engine.persist = function() error("disk full") end
      env = engine:execute("free", {}, CALLER)
      assert.equals("ok", env.status)
      assert.truthy(env.metadata.persisted.error:find("disk full", 1, true))
      engine.persist = nil
      engine.persist_threshold = old
    end)
  end)

  -- ---- 7 events ---------------------------------------------------------------------------
  describe("events", function()
    it("sends tool.result.processed with the envelope's metadata; a raising subscriber breaks nothing", function()
      local dir = H.tmpdir()
      H.write_tool(dir, "ev", H.tool_source{ name = "ev", handler = [[function() return { a = 1 } end]] })
      local e = H.open_engine(dir)
      local got = {}
      e:subscribe("tool.result.", function(ev) got[#got + 1] = ev end)
      e:subscribe("tool.result.processed", function() error("subscriber bug") end)
      local before = e.bus:errors()
      local env = e:execute("ev", {}, CALLER)
      assert.equals("ok", env.status)
      assert.equals(1, #got)
      local ev = got[1]
      assert.equals("tool.result.processed", ev.name)
      assert.equals(env.execution_id, ev.metadata.execution_id)
      assert.equals("ev", ev.metadata.tool)
      assert.equals("ok", ev.metadata.status)
      assert.equals("json", ev.metadata.format)
      assert.equals("alice", ev.metadata.principal)
      assert.equals(env.metadata.output_digest, ev.metadata.output_digest)
      assert.equals(env.metadata.output_bytes, ev.measurements.output_bytes)
      assert.equals(before + 1, e.bus:errors())
      -- errors are processed too
      local env2 = e:execute("ev", { unexpected = true }, CALLER)
      assert.equals("ok", env2.status)
      env2 = e:execute("missing", {}, CALLER)
      assert.equals("not_found", got[#got].metadata.kind)
      -- the cache's hit event carries the same metadata
      local n = #got
      results.emit(e, env, "tool.result.cached")
      assert.equals(n + 1, #got)
      assert.equals("tool.result.cached", got[#got].name)
      assert.equals(env.metadata.output_digest, got[#got].metadata.output_digest)
      e:close()
    end)
  end)

  describe("persistence in the store", function()
    local dir, data
    local persist = require "rubberduck.persist"
    lazy_setup(function()
      dir = H.tmpdir()
      H.write_tool(dir, "rows", H.tool_source{ name = "rows", level = "balanced",
        parameters = [[{ type = "object", properties = { n = { type = "integer" } } }]],
        handler = [[function(p)
          local t = {}
          for i = 1, p.n do t[i] = { i = i, s = "row " .. i } end
          return { rows = t, raw = "\255\254\0" }
        end]] })
      H.write_tool(dir, "memo", H.tool_source{ name = "memo", output = "{ cache_ttl = 60 }",
        parameters = [[{ type = "object", properties = { x = { type = "integer" } } }]],
        handler = "function(p) return { x = p.x, s = 'memo' } end" })
    end)
    before_each(function() data = H.tmpdir() end)

    it("keeps outputs above the threshold by execution id; reading back checks the digest", function()
      local e = H.open_engine(dir, { data_dir = data, results = { threshold = 2000 } })
      local small = e:execute("rows", { n = 2 }, CALLER)
      assert.equals("ok", small.status)
      assert.is_nil(small.metadata.persisted)
      local env = e:execute("rows", { n = 500 }, CALLER)
      assert.equals("ok", env.status)
      local p = env.metadata.persisted
      assert.equals("results/" .. env.execution_id, p.ref)
      assert.equals("zstd", p.encoding)
      assert.is_false(p.encrypted)
      assert.is_true(p.stored_bytes < env.metadata.output_bytes)
      local text, head = persist.get(e.store, env.execution_id, data)
      assert.truthy(text, head)
      assert.equals(assert(json.encode(env.output, { canonical = true })), text)
      assert.equals(env.metadata.output_digest, R.digest(text))
      assert.same({ "/raw" }, head.binary_paths)
      -- a damaged record is an error, never a wrong answer
      local raw = e.store:get("results", env.execution_id)
      local bad = raw:sub(1, #raw - 40) .. string.char((raw:byte(#raw - 39) + 1) % 256) .. raw:sub(#raw - 38)
      assert.is_true(e.store:put("results", env.execution_id, bad))
      local none, why = persist.get(e.store, env.execution_id, data)
      assert.is_nil(none)
      assert.truthy(why:find("damaged", 1, true), why)
      e:close()
    end)

    it("encrypts at rest with a 0600 key; a record moved to another id or edited does not open", function()
      local e = H.open_engine(dir, { data_dir = data, results = { threshold = 100, encrypt = true } })
      local env = e:execute("rows", { n = 50 }, CALLER)
      assert.equals("ok", env.status)
      assert.is_true(env.metadata.persisted.encrypted)
      local out = H.run_command("stat", { "-c", "%a", data .. "/results.key" })
      assert.equals("600", out:match("%d+"))
      local raw = e.store:get("results", env.execution_id)
      assert.is_nil(raw:find("row 49", 1, true))
      local text = assert(persist.get(e.store, env.execution_id, data))
      assert.truthy(text:find("row 49", 1, true))
      -- the same bytes under another id: the id is authenticated
      assert.is_true(e.store:put("results", "01ARZ3NDEKTSV4RRFFQ69G5FAV", raw))
      local none, why = persist.get(e.store, "01ARZ3NDEKTSV4RRFFQ69G5FAV", data)
      assert.is_nil(none)
      assert.truthy(why:find("does not verify", 1, true), why)
      e:close()
      -- without the key, a clear error
      os.remove(data .. "/results.key")
      local e2 = H.open_engine(dir, { data_dir = data })
      none, why = persist.get(e2.store, env.execution_id, data)
      assert.is_nil(none)
      assert.truthy(why:find("key is unavailable", 1, true), why)
      e2:close()
    end)

    it("refuses to open with a results key others can read", function()
      H.write_file(data .. "/results.key", string.rep("k", 32))
      os.execute("chmod 644 " .. H.shell_quote(data .. "/results.key"))
      local rd = require "rubberduck"
      local e, err = rd.open({ tools = dir, data_dir = data, results = { encrypt = true } })
      assert.is_nil(e)
      assert.truthy(err:find("0644", 1, true), err)
    end)

    it("rduck result get prints a persisted result in any format, and refuses an unknown id", function()
      local e = H.open_engine(dir, { data_dir = data, results = { threshold = 1000 } })
      local env = e:execute("rows", { n = 100 }, CALLER)
      e:close()
      local out, err, code = H.run_rduck({ "result", "get", env.execution_id, "--data", data,
        "--canonical" })
      assert.equals(0, code, err)
      assert.equals(assert(json.encode(env.output, { canonical = true })) .. "\n", out)
      out, err, code = H.run_rduck({ "result", "get", env.execution_id, "--data", data,
        "--format", "yaml" })
      assert.equals(0, code, err)
      assert.truthy(out:find("s: row 100", 1, true), out)
      out, err, code = H.run_rduck({ "result", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--data", data })
      assert.equals(1, code)
      assert.truthy(err:find("no persisted result", 1, true), err)
      out, err, code = H.run_rduck({ "result", "get", env.execution_id, "--data", data,
        "--format", "toml" })
      assert.equals(2, code)
      assert.truthy(err:find("--format", 1, true), err)
    end)

    it("serves a cache hit with tool.result.cached carrying the envelope's metadata", function()
      local e = H.open_engine(dir, { data_dir = data })
      local got = {}
      e:subscribe("tool.result.", function(ev) got[#got + 1] = ev end)
      local a = e:execute("memo", { x = 1 }, CALLER)
      local b = e:execute("memo", { x = 1 }, CALLER)
      assert.is_false(a.metadata.cached)
      assert.is_true(b.metadata.cached)
      assert.equals(a.metadata.output_digest, b.metadata.output_digest)
      local names = {}
      for _, ev in ipairs(got) do names[#names + 1] = ev.name end
      assert.same({ "tool.result.processed", "tool.result.processed", "tool.result.cached" }, names)
      assert.equals(b.execution_id, got[3].metadata.execution_id)
      assert.equals(b.metadata.output_digest, got[3].metadata.output_digest)
      e:close()
    end)
  end)
end)
