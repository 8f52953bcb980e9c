-- spec/validator_spec.lua — rubberduck.validator: API, messages, options,
-- data model, refused schemas, partial validation, generated code.
-- The official suite runs in spec/conformance_spec.lua.

local validator = require "rubberduck.validator"

local NULL = validator.null

local function compile(schema, opts) return assert(validator.compile(schema, opts)) end

local function messages(v, x)
  local ok, errs = v(x)
  if ok then return {} end
  local out = {}
  for i, e in ipairs(errs) do out[i] = e.message end
  return out
end

describe("rubberduck.validator", function()
  describe("API", function()
    it("returns true for a valid instance and false, errors otherwise", function()
      local v = compile { type = "object", required = { "path" } }
      assert.is_true(v { path = "/x" })
      local ok, errs = v {}
      assert.is_false(ok)
      assert.are.same({ {
        pointer = "", keyword = "required", schema_path = "/required",
        message = '/: missing required property "path"',
      } }, errs)
    end)

    it("accepts boolean schemas", function()
      assert.is_true(compile(true)(42))
      local ok, errs = compile(false)(42)
      assert.is_false(ok)
      assert.are.equal("false", errs[1].keyword)
    end)

    it("prints the generated code with the checks inline", function()
      local v = compile { properties = { age = { type = "integer", minimum = 18 } } }
      local src = v:source()
      assert.is_string(src)
      assert.truthy(src:find("if v < 18 then", 1, true))
      assert.truthy(src:find("-- /properties/age", 1, true))
      assert.truthy(loadstring(src))
    end)

    it("leaks no globals", function()
      local before = {}
      for k in pairs(_G) do before[k] = true end
      local v = compile { anyOf = { { type = "string", pattern = "^a" }, { type = "array", items = { const = 1 } } },
                          ["$defs"] = { x = { unevaluatedProperties = false } } }
      v("ab"); v { 1, 1 }; v { 2 }; v:partial {}
      for k in pairs(_G) do assert.is_true(before[k] ~= nil, "new global " .. tostring(k)) end
    end)
  end)

  describe("messages", function()
    local v = compile {
      type = "object",
      properties = {
        path = { type = "string" },
        user = { type = "object", properties = { age = { type = "integer", minimum = 18 } } },
        tags = { type = "array", items = { enum = { "a", "b" } } },
        name = { type = "string", minLength = 2, maxLength = 4, pattern = "^[a-z]+$" },
        n = { type = "number", exclusiveMaximum = 10, multipleOf = 3 },
      },
      required = { "path" },
      additionalProperties = false,
    }

    it("name the field and the limit", function()
      local ok, errs = v { path = "p", user = { age = 12 }, tags = { "a", "b", "a", "c" }, x = 1 }
      assert.is_false(ok)
      local by = {}
      for _, e in ipairs(errs) do by[e.pointer] = e end
      assert.are.equal("/user/age: must be >= 18, got 12", by["/user/age"].message)
      assert.are.equal("minimum", by["/user/age"].keyword)
      assert.are.equal("/properties/user/properties/age/minimum", by["/user/age"].schema_path)
      assert.are.equal('/tags/3: must be one of "a", "b"', by["/tags/3"].message)
      assert.are.equal("/x: additional property not allowed", by["/x"].message)
      assert.are.equal(3, #errs)
    end)

    it("for strings and numbers", function()
      assert.are.same({ "/name: must be at least 2 characters long, got 1" }, messages(v, { path = "p", name = "a" }))
      assert.are.same({ "/name: must be at most 4 characters long, got 5" }, messages(v, { path = "p", name = "abcde" }))
      assert.are.same({ '/name: must match pattern "^[a-z]+$", got "AB"' }, messages(v, { path = "p", name = "AB" }))
      assert.are.same({ "/n: must be < 10, got 11", "/n: must be a multiple of 3, got 11" },
        messages(v, { path = "p", n = 11 }))
      assert.are.same({ "/n: must be number, got string" }, messages(v, { path = "p", n = "1" }))
    end)

    it("count characters, not bytes", function()
      local w = compile { type = "string", maxLength = 2, minLength = 2 }
      assert.is_true(w("éé"))
      assert.is_false(w("ééé"))
      assert.is_false(w("é"))
    end)

    it("escape pointers", function()
      local w = compile { properties = { ["a/b~c"] = { type = "string" } } }
      local _, errs = w { ["a/b~c"] = 1 }
      assert.are.equal("/a~1b~0c", errs[1].pointer)
    end)
  end)

  describe("anyOf / oneOf", function()
    local shape = compile {
      oneOf = {
        { type = "object", properties = { kind = { const = "circle" }, r = { type = "number", minimum = 0 } },
          required = { "kind", "r" } },
        { type = "object", properties = { kind = { const = "rect" }, w = { type = "number" }, h = { type = "number" } },
          required = { "kind", "w", "h" } },
      },
    }

    it("report the branch the instance aimed at", function()
      assert.are.same({ "/r: must be >= 0, got -1" }, messages(shape, { kind = "circle", r = -1 }))
      assert.are.same({ '/: missing required property "h"' }, messages(shape, { kind = "rect", w = 1 }))
    end)

    it("say so when no branch stands out", function()
      assert.are.same({ '/: must match exactly one of the 2 schemas in "oneOf", matched none' },
        messages(shape, { kind = "triangle" }))
    end)

    it("report more than one match for oneOf", function()
      local w = compile { oneOf = { { type = "integer" }, { minimum = 2 } } }
      assert.are.same({ '/: must match exactly one schema in "oneOf", matched 2' }, messages(w, 3))
      assert.is_true(w(1))
    end)

    it("use the type as a discriminator", function()
      local w = compile { anyOf = { { type = "string", minLength = 3 }, { type = "integer", minimum = 10 } } }
      assert.are.same({ "/: must be >= 10, got 5" }, messages(w, 5))
      assert.are.same({ "/: must be at least 3 characters long, got 1" }, messages(w, "a"))
    end)
  end)

  describe("options", function()
    local schema = { properties = { a = { type = "string" }, b = { type = "string" }, c = { type = "string" } } }

    it("collect all errors by default, bounded by max_errors", function()
      local _, errs = compile(schema)({ a = 1, b = 2, c = 3 })
      assert.are.equal(3, #errs)
      _, errs = compile(schema, { max_errors = 2 })({ a = 1, b = 2, c = 3 })
      assert.are.equal(2, #errs)
    end)

    it("stop at the first error with all_errors = false", function()
      local _, errs = compile(schema, { all_errors = false })({ a = 1, b = 2, c = 3 })
      assert.are.equal(1, #errs)
    end)

    it("assert formats by default, or only annotate them", function()
      local s = { type = "string", format = "date-time" }
      assert.is_true(compile(s)("2024-02-29T12:00:00Z"))
      assert.are.same({ '/: must be a valid date-time, got "2023-02-29T12:00:00Z"' },
        messages(compile(s), "2023-02-29T12:00:00Z"))
      assert.is_true(compile(s, { formats = "annotate" })("yesterday"))
      assert.is_nil(validator.compile(s, { formats = "sometimes" }))
    end)

    it("fill defaults when asked, copying tables", function()
      local dflt = { "x" }
      local s = { properties = { max = { type = "integer", default = 65536 }, tags = { default = dflt },
                                 name = { type = "string" } } }
      local x = { name = "n" }
      assert.is_true(compile(s, { defaults = true })(x))
      assert.are.equal(65536, x.max)
      assert.are.same({ "x" }, x.tags)
      assert.are_not.equal(dflt, x.tags)
      local y = {}
      compile(s)(y)
      assert.is_nil(y.max)
    end)

    it("choose the draft by $schema, or by opts.draft", function()
      local s = { ["$schema"] = "http://json-schema.org/draft-07/schema#",
                  definitions = { s = { type = "string" } },
                  ["$ref"] = "#/definitions/s", minLength = 5 }
      assert.is_true(compile(s)("ab"))            -- draft-07: $ref overrides siblings
      s["$schema"] = nil
      assert.is_false(compile(s)("ab"))           -- 2020-12: siblings apply
      assert.is_true(compile(s, { draft = "07" })("ab"))
    end)
  end)

  describe("formats", function()
    local cases = {
      date = { { "2020-01-31", true }, { "2020-02-30", false }, { "2020-1-01", false } },
      time = { { "23:59:60Z", true }, { "12:00:00+01:00", true }, { "12:00:00", false } },
      duration = { { "P1DT2H", true }, { "PT", false }, { "P2W", true } },
      email = { { "a.b@example.com", true }, { "a..b@example.com", false }, { "nope", false } },
      hostname = { { "example.com", true }, { "-bad.com", false } },
      ipv4 = { { "192.168.0.1", true }, { "256.1.1.1", false }, { "01.1.1.1", false } },
      ipv6 = { { "::1", true }, { "2001:db8::8a2e:370:7334", true }, { "1:2:3", false }, { "::ffff:1.2.3.4", true } },
      uri = { { "https://example.com/a?b#c", true }, { "/relative", false }, { "http://exa mple.com", false } },
      ["uri-reference"] = { { "/relative#x", true }, { "\\\\bad", false } },
      uuid = { { "2eb8aa08-aa98-11ea-b4aa-73b441d16380", true }, { "2eb8aa08aa9811eab4aa73b441d16380", false } },
      ["json-pointer"] = { { "/a/~0/~1", true }, { "a", false }, { "/~2", false } },
      regex = { { "^[a-z]+$", true }, { "(", false } },
    }
    for name, list in pairs(cases) do
      it(name, function()
        local v = compile { format = name }
        for _, c in ipairs(list) do
          assert.are.equal(c[2], (v(c[1])), name .. " " .. c[1])
        end
        assert.is_true(v(42))   -- formats apply to strings only
      end)
    end
  end)

  describe("data model", function()
    it("treats the NULL light userdata as null", function()
      if NULL == nil then return pending("no null sentinel (neither rubberduck.core nor cjson)") end
      local v = compile { type = "null" }
      assert.is_true(v(NULL))
      assert.is_false(v(false))
      assert.is_true(compile { enum = { 1, NULL } }(NULL))
      assert.is_true(compile { const = NULL }(NULL))
    end)

    it("tells arrays from objects", function()
      local arr, obj = compile { type = "array" }, compile { type = "object" }
      assert.is_true(arr { 1, 2 })
      assert.is_false(arr {})                        -- empty unmarked table is an object
      assert.is_true(obj {})
      assert.is_true(arr(validator.array {}))        -- marked empty array
      assert.is_false(obj(validator.array {}))
      assert.is_false(arr { 1, 2, x = 3 })
      assert.is_false(arr { [2] = 1 })
    end)

    it("recognizes the registry array metatable", function()
      local reg = debug.getregistry()
      local saved = reg["rubberduck.json.array"]
      local mt = saved or {}
      reg["rubberduck.json.array"] = mt
      local ok, err = pcall(function()
        assert.is_true(compile { type = "array" }(setmetatable({}, mt)))
      end)
      reg["rubberduck.json.array"] = saved
      assert(ok, err)
    end)

    it("counts finite numbers without a fraction as integers", function()
      local v = compile { type = "integer" }
      assert.is_true(v(1.0))
      assert.is_false(v(1.5))
      assert.is_false(v(math.huge))
      assert.is_false(v(0 / 0))
    end)

    it("compares tables deeply in enum, const and uniqueItems", function()
      assert.is_true(compile { const = { a = { 1, 2 } } } { a = { 1, 2 } })
      assert.is_false(compile { const = { a = { 1, 2 } } } { a = { 2, 1 } })
      local u = compile { uniqueItems = true }
      assert.is_false(u { { a = 1 }, { a = 1 } })
      assert.are.same({ "/: items must be unique, items 0 and 2 are equal" }, messages(u, { 1, 2, 1 }))
    end)
  end)

  describe("refused schemas", function()
    local function refused(schema, opts)
      local v, err = validator.compile(schema, opts)
      assert.is_nil(v)
      return err
    end

    it("name the schema path of a wrong keyword", function()
      assert.are.equal("/properties/a/minimum: must be a number",
        refused { properties = { a = { minimum = "1" } } })
      assert.are.equal("/required: must be an array of strings", refused { required = "a" })
      assert.are.equal("/minLength: must be a non-negative integer", refused { minLength = -1 })
      assert.are.equal('/type: unknown type "text"', refused { type = "text" })
    end)

    it("refuse invalid regular expressions", function()
      assert.truthy(refused({ pattern = "(" }):find("^/pattern: invalid regular expression", 1))
      assert.truthy(refused({ patternProperties = { ["["] = true } }):find("^/patternProperties/%[: invalid"))
    end)

    it("refuse a $ref loop that never reaches a child instance", function()
      local err = refused { ["$defs"] = { a = { ["$ref"] = "#/$defs/b" }, b = { allOf = { { ["$ref"] = "#/$defs/a" } } } },
                            ["$ref"] = "#/$defs/a" }
      assert.truthy(err:find("infinite loop", 1, true))
      assert.truthy(validator.compile { properties = { next = { ["$ref"] = "#" } } })  -- recursion into children is fine
    end)

    it("refuse unresolvable and remote refs, naming them", function()
      assert.are.equal('/$ref: cannot resolve "urn:rubberduck:schema#/$defs/nope": no such location',
        refused { ["$ref"] = "#/$defs/nope" })
      local err = refused { properties = { a = { ["$ref"] = "https://example.com/x.json" } } }
      assert.are.equal('/properties/a/$ref: cannot resolve "https://example.com/x.json": not in the schema store (no network)', err)
    end)
  end)

  describe("unknown keywords", function()
    local typos = {
      type = "object",
      requried = { "age" },
      properties = {
        age = { type = "integer", minimun = 0, maxlength = 3 },
        tags = { type = "array", items = { type = "string", patern = "^a" } },
        ["x-y"] = { type = "string", enum = { { minimun = 1 } }, default = { requried = 1 } },
      },
      ["x-internal"] = true,
      whatever = 1,
    }

    it("are ignored by default, as the standard says (annotations)", function()
      local v = compile(typos)
      assert.are.same({}, v.warnings)
      assert.is_true(v { age = -5 })       -- "minimun" checks nothing
    end)

    it("are listed with warn: schema path, keyword, the keyword probably meant", function()
      local v = compile(typos, { unknown_keywords = "warn" })
      local got = {}
      for i, w in ipairs(v.warnings) do got[i] = w.message end
      assert.are.same({
        '/properties/age: unknown keyword "maxlength" (did you mean "maxLength"?)',
        '/properties/age: unknown keyword "minimun" (did you mean "minimum"?)',
        '/properties/tags/items: unknown keyword "patern" (did you mean "pattern"?)',
        '/: unknown keyword "requried" (did you mean "required"?)',
        '/: unknown keyword "whatever" (ignored: unknown keywords are annotations)',
      }, got)
      assert.are.same({ path = "/properties/age", keyword = "minimun", suggestion = "minimum",
        message = got[2] }, v.warnings[2])
      assert.is_nil(v.warnings[5].suggestion)
      assert.is_true(v { age = 1 })        -- the validator works as with ignore
    end)

    it("refuse the schema with error, naming the first", function()
      local v, err = validator.compile(typos, { unknown_keywords = "error" })
      assert.is_nil(v)
      assert.are.equal('/properties/age: unknown keyword "maxlength" (did you mean "maxLength"?)', err)
      assert.truthy(validator.compile({ type = "string" }, { unknown_keywords = "error" }))
      local _, oerr = validator.compile({}, { unknown_keywords = "loud" })
      assert.are.equal('opts.unknown_keywords must be "ignore", "warn" or "error"', oerr)
    end)

    it("know each draft's own keywords", function()
      local w = compile({ ["$schema"] = "http://json-schema.org/draft-07/schema#", prefixItems = {},
                          dependencies = { a = { "b" }, c = { minimun = 1 } }, additionalItems = false },
                        { unknown_keywords = "warn" }).warnings
      assert.are.same({
        '/dependencies/c: unknown keyword "minimun" (did you mean "minimum"?)',
        '/: unknown keyword "prefixItems" in draft-07 (it is a draft 2020-12 keyword)',
      }, { w[1].message, w[2].message })
      w = compile({ dependencies = { a = { "b" } }, unevaluatedProperties = false, ["$defs"] = { x = { tpye = "string" } } },
                  { unknown_keywords = "warn" }).warnings
      assert.are.same({
        '/$defs/x: unknown keyword "tpye" (did you mean "type"?)',
        '/: unknown keyword "dependencies" in draft 2020-12 (use "dependentRequired" for lists of names, "dependentSchemas" for schemas)',
      }, { w[1].message, w[2].message })
    end)

    it("point at a property schema written outside properties", function()
      local w = compile({ type = "object", name = { type = "string" } }, { unknown_keywords = "warn" }).warnings
      assert.are.equal('/: unknown keyword "name" (a property? property schemas go under "properties")', w[1].message)
    end)

    it("suggest by edit distance, a transposition counting one", function()
      local kw = require "rubberduck.validator.keywords"
      assert.are.equal(1, kw.distance("requried", "required"))
      assert.are.equal(3, kw.distance("additionalProperty", "additionalProperties"))
      assert.are.equal("additionalProperties", kw.suggest("additionalProperty", "2020-12"))
      assert.are.equal("enum", kw.suggest("enun", "2020-12"))
      assert.is_nil(kw.suggest("colour", "2020-12"))
      assert.is_nil(kw.suggest("ab", "2020-12"))
    end)
  end)

  describe("schema store", function()
    it("resolves refs to registered schemas by $id", function()
      local store = validator.new_store()
      assert(store:add { ["$id"] = "https://rubberduck.dev/schemas/port.json", type = "integer", minimum = 1, maximum = 65535 })
      local v = compile({ properties = { port = { ["$ref"] = "https://rubberduck.dev/schemas/port.json" } } }, { store = store })
      assert.is_true(v { port = 80 })
      assert.are.same({ "/port: must be <= 65535, got 70000" }, messages(v, { port = 70000 }))
    end)

    it("loads a directory of schema files by $id", function()
      local store = validator.new_store()
      assert.are.equal(2, assert(store:add_dir("spec/fixtures/validator")))
      local v = compile({ properties = {
        port = { ["$ref"] = "https://rubberduck.dev/test/port.schema.json" },
        tags = { ["$ref"] = "https://rubberduck.dev/test/tags.schema.json" },
      } }, { store = store })
      assert.is_true(v { port = 8080, tags = { "a" } })
      assert.are.same({ "/port: must be >= 1, got 0", "/tags/0: must be string, got integer" },
        messages(v, { port = 0, tags = { 1 } }))
      local _, err = store:add_dir("spec/fixtures/validator/nope")
      assert.truthy(err)
    end)

    it("validates against the bundled metaschemas offline", function()
      local v = compile { ["$ref"] = "https://json-schema.org/draft/2020-12/schema" }
      assert.is_true(v { type = "string", minLength = 1 })
      assert.is_false(v { minLength = -1 })
      local v7 = compile { ["$ref"] = "http://json-schema.org/draft-07/schema#" }
      assert.is_false(v7 { type = 12 })
    end)
  end)

  describe("partial", function()
    local v = compile {
      type = "object",
      properties = { path = { type = "string" }, n = { type = "integer" } },
      required = { "path", "n" },
    }

    it("reports missing required properties as pending", function()
      local r = v:partial { path = "/x" }
      assert.is_true(r.valid)
      assert.is_false(r.complete)
      assert.are.same({}, r.errors)
      assert.are.equal('/: missing required property "n"', r.pending[1].message)
    end)

    it("still reports errors in what is present", function()
      local r = v:partial { n = "x" }
      assert.is_false(r.valid)
      assert.are.equal(1, #r.errors)
      assert.are.equal(1, #r.pending)
    end)

    it("tells when the instance is complete", function()
      local r = v:partial { path = "/x", n = 1 }
      assert.is_true(r.valid and r.complete)
    end)

    local function msgs(list)
      local out = {}
      for i, e in ipairs(list) do out[i] = e.message end
      return out
    end

    local channel = compile {
      type = "object",
      properties = {
        channel = { oneOf = {
          { type = "object", properties = { kind = { const = "email" }, to = { type = "string" } },
            required = { "kind", "to" } },
          { type = "object", properties = { kind = { const = "sms" }, phone = { type = "string" } },
            required = { "kind", "phone" } },
        } },
        body = { anyOf = {
          { type = "string" },
          { type = "object", properties = { template = { type = "string" } }, required = { "template", "vars" } },
        } },
      },
      required = { "channel" },
    }

    it("keeps a oneOf branch possible while only required properties are missing", function()
      -- both branches lack required properties: not "matched more than one"
      local r = channel:partial { channel = {} }
      assert.is_true(r.valid)
      assert.is_false(r.complete)
      assert.are.same({}, r.errors)
      assert.are.same({ '/channel: missing required property "kind"', '/channel: missing required property "to"' },
        msgs(r.pending))
      assert.are.equal("/properties/channel/oneOf/0/required", r.pending[1].schema_path)
    end)

    it("reports the pendings of the branch the instance aims at", function()
      local r = channel:partial { channel = { kind = "sms" } }
      assert.is_true(r.valid)
      assert.are.same({ '/channel: missing required property "phone"' }, msgs(r.pending))
      r = channel:partial { channel = { kind = "sms", phone = "+4412" } }
      assert.is_true(r.valid and r.complete)
      assert.are.same({}, r.pending)
    end)

    it("still fails a union no branch of which can hold", function()
      local r = channel:partial { channel = { kind = "fax" } }
      assert.is_false(r.valid)
      assert.are.equal("oneOf", r.errors[1].keyword)
      r = channel:partial { channel = { kind = "sms", phone = 7 } }
      assert.is_false(r.valid)
      assert.are.same({ "/channel/phone: must be string, got integer" }, msgs(r.errors))
    end)

    it("settles anyOf with a complete branch and ignores the pendings of the others", function()
      local r = channel:partial { channel = { kind = "email", to = "a@b.c" }, body = "hello" }
      assert.is_true(r.valid and r.complete)
      assert.are.same({}, r.pending)
      r = channel:partial { channel = { kind = "email", to = "a@b.c" }, body = { template = "t" } }
      assert.is_true(r.valid)
      assert.is_false(r.complete)
      assert.are.same({ '/body: missing required property "vars"' }, msgs(r.pending))
    end)

    it("fails oneOf when more than one branch is complete", function()
      local both = compile { oneOf = { { type = "object" }, { required = { "a" } } } }
      local r = both:partial { a = 1 }
      assert.is_false(r.valid)
      assert.are.equal("oneOf", r.errors[1].keyword)
      r = both:partial {}
      assert.is_true(r.valid and r.complete)   -- only the first holds now
    end)

    it("reports minItems, minProperties and minContains as pending", function()
      local lists = compile {
        type = "object",
        properties = {
          tags = { type = "array", minItems = 2, maxItems = 3 },
          meta = { type = "object", minProperties = 1 },
          ids = { type = "array", contains = { type = "integer" }, minContains = 2 },
        },
      }
      local r = lists:partial { tags = { "a" }, meta = {}, ids = validator.array { "x" } }
      assert.is_true(r.valid)
      assert.is_false(r.complete)
      table.sort(r.pending, function(a, b) return a.pointer < b.pointer end)
      assert.are.same({
        "/ids: must contain at least 2 items matching \"contains\", got 0",
        "/meta: must have at least 1 property, got 0",
        "/tags: must have at least 2 items, got 1",
      }, msgs(r.pending))
      assert.are.same({ "minContains", "minProperties", "minItems" },
        { r.pending[1].keyword, r.pending[2].keyword, r.pending[3].keyword })
      -- upper bounds are errors at once; the full check is unchanged
      r = lists:partial { tags = { "a", "b", "c", "d" } }
      assert.is_false(r.valid)
      local ok, errs = lists { tags = { "a" } }
      assert.is_false(ok)
      assert.are.same({ "/tags: must have at least 2 items, got 1" }, msgs(errs))
    end)

    it("decides neither if/then/else nor not on pendings", function()
      local cond = compile {
        ["if"] = { required = { "card" } },
        ["then"] = { required = { "cvc" } },
        ["else"] = { properties = { card = false } },
        ["not"] = { required = { "banned" } },
      }
      local r = cond:partial {}
      assert.is_true(r.valid)
      assert.is_true(r.complete)            -- as it stands, {} passes
      r = cond:partial { card = "4111" }
      assert.is_true(r.valid)
      assert.are.same({ '/: missing required property "cvc"' }, msgs(r.pending))
      r = cond:partial { card = "4111", cvc = "123", banned = true }
      assert.is_false(r.valid)
      assert.are.equal("not", r.errors[1].keyword)
    end)
  end)

  describe("generated code", function()
    it("checks long arrays and objects as short ones (written-out steps, then a loop)", function()
      local v = compile { type = "array", items = { enum = { "a", "b" } } }
      for n = 0, 20 do
        local x = {}
        for i = 1, n do x[i] = (i % 7 == 0) and "z" or "a" end
        local want = {}
        for i = 7, n, 7 do want[#want + 1] = "/" .. (i - 1) .. ': must be one of "a", "b"' end
        assert.are.same(want, messages(v, n == 0 and validator.array {} or x))
      end
      local m = compile { type = "object", additionalProperties = { type = "integer" } }
      local c = compile { type = "object", properties = { a = { type = "integer" } }, additionalProperties = false }
      for n = 0, 20 do
        local x, y = {}, { a = 1 }
        for i = 1, n do x["k" .. i] = (i % 5 == 0) and "s" or i; y["k" .. i] = i end
        assert.are.equal(math.floor(n / 5), #messages(m, x))
        assert.are.equal(n, #messages(c, y))
      end
      assert.are.same({ "/b: additional property not allowed" }, messages(c, { a = 1, b = 2 }))
      assert.are.equal(1, #messages(c, { a = 1, [1] = 2 }))
    end)

    it("writes leaf subschemas inline, and looks at the keys only when there are unknown ones", function()
      local v = compile { type = "object", properties = { age = { type = "integer", minimum = 18 },
                                                          tags = { type = "array", items = { type = "string" } } },
                          additionalProperties = false }
      local src = v:source()
      assert.truthy(src:find("do -- /properties/age", 1, true))
      assert.truthy(src:find("if nkeys(v) ~= kc then", 1, true))
      assert.falsy(src:find("in pairs(v)", 1, true))
      assert.are.same({ "/age: must be >= 18, got 3", "/tags/1: must be string, got integer" },
        messages(v, { age = 3, tags = { "a", 1 } }))
    end)

    it("report the first equal pair of uniqueItems, short arrays or long", function()
      local u = compile { uniqueItems = true }
      assert.are.same({ "/: items must be unique, items 0 and 3 are equal" }, messages(u, { 1, 2, 2, 1 }))
      assert.are.same({ "/: items must be unique, items 1 and 4 are equal" }, messages(u, { 0, 1, 2, 3, 1, 2 }))
      assert.are.same({ "/: items must be unique, items 3 and 4 are equal" }, messages(u, { 1, 2, 3, { 4 }, { 4 } }))
      assert.is_true(u { 1, 2, 3, 4, 5, 6, 7 })
    end)

    it("count code points at the length limits", function()
      local v = compile { type = "string", minLength = 3, maxLength = 4 }
      assert.is_false(v("éé"))
      assert.is_true(v("ééé"))
      assert.is_true(v("éééé"))
      assert.is_false(v("ééééé"))
      assert.is_true(v("abcd"))
      assert.are.same({ "/: must be at least 3 characters long, got 2" }, messages(v, "aé"))
    end)

    it("builds deep and escaped pointers", function()
      local v = compile { items = { items = { properties = { ["a/b"] = { items = { items = { type = "null" } } } } } } }
      local _, errs = v { { { ["a/b"] = { { 1 } } } } }
      assert.are.equal("/0/0/a~1b/0/0", errs[1].pointer)
      assert.are.equal("/0/0/a~1b/0/0: must be null, got integer", errs[1].message)
    end)

    it("compiles schemas too big for written-out steps with loops and calls only", function()
      local pp = {}
      for i = 1, 400 do pp["^p" .. i .. "_[a-z]+$"] = { type = "string", minLength = 2, pattern = "^[a-z]+$" } end
      local v = compile { type = "object", patternProperties = pp, additionalProperties = false }
      assert.is_true(v { p1_ab = "xy", p400_z = "ab" })
      assert.are.same({ '/p7_q: must be at least 2 characters long, got 1', "/zz: additional property not allowed" },
        (function() local m = messages(v, { p7_q = "x", zz = 1 }); table.sort(m); return m end)())
    end)

    it("returns errors as plain tables", function()
      local _, errs = compile { type = "string" }(1)
      local n = 0
      for k, x in pairs(errs[1]) do n = n + 1; assert.is_string(x, k) end
      assert.are.equal(4, n)
      assert.is_nil(getmetatable(errs[1]))
    end)

    -- core/format.c is a transcription of the Lua checkers: both must give
    -- the same answer on every string, here seeds and thousands of
    -- mutations of them (bytes changed, inserted, deleted, cut)
    it("checks the hot formats in C exactly as the Lua checkers do", function()
      local formats = require "rubberduck.validator.formats"
      if not formats.c then return pending("the C core is not on package.cpath") end
      local seeds = {
        date = { "2020-01-31", "2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "2021-04-31", "2021-12-01" },
        time = { "23:59:60Z", "12:00:00+01:00", "00:00:00.123z", "23:59:60-00:00", "00:59:60+01:00", "12:00:00", "24:00:00Z" },
        ["date-time"] = { "1998-12-31T23:59:60Z", "2020-01-31t10:20:30.5+05:30", "2024-02-29T00:00:00-12:00", "2020-13-01T00:00:00Z" },
        duration = { "P1DT2H", "PT", "P2W", "P1Y2M3DT4H5M6S", "PT36H", "P1W2D", "P", "P1M1Y", "PT1S2M" },
        ipv4 = { "192.168.0.1", "256.1.1.1", "01.1.1.1", "0.0.0.0", "1.2.3", "1.2.3.4.5", "255.255.255.255" },
        hostname = { "example.com", "-bad.com", "xn--bcher-kva.example", "ab--cd.com", "a.b.", "a" .. ("b"):rep(62) .. ".c", ("a."):rep(126) .. "b" },
        uuid = { "2eb8aa08-aa98-11ea-b4aa-73b441d16380", "2EB8AA08-AA98-11EA-B4AA-73B441D16380", "2eb8aa08aa9811eab4aa73b441d16380" },
        uri = { "https://example.com/a?b#c", "/relative", "http://exa mple.com", "urn:isbn:0451450523", "http://[::1]:80/x",
                "http://u@[v1.x]/", "http://a]b/", "s://h%20x#f#g", "mailto:a@b.c", "x:", "http://u@h@[::1]/" },
        email = { "a.b@example.com", "a..b@example.com", "nope", "\"q x\"@example.com", "a@[127.0.0.1]", "a@[IPv6:::1]",
                  ".a@b.c", "a.@b.c", "a@b@c", "a@-b.c", "x+tag@sub.example.org" },
      }
      local alphabet = { "0", "1", "2", "5", "9", "-", ".", ":", "T", "Z", "z", "+", "@", "[", "]", "/", "?", "#",
                         "%", "a", "F", "x", "n", "W", "Y", "M", "D", "H", "S", "P", " ", "\0", "\n", "\195", "\"" }
      local seed = 12345
      local function rnd(n)
        seed = (seed * 1103515245 + 12345) % 2147483648
        return seed % n + 1
      end
      local checked = 0
      for name, list in pairs(seeds) do
        local fast, slow = formats.checkers[name], formats.slow[name]
        assert.is_function(fast, name)
        assert.is_function(slow, name)
        local function same(x)
          assert.are.equal(slow(x) and true or false, fast(x) and true or false, name .. " " .. ("%q"):format(x))
          checked = checked + 1
        end
        same("")
        for _, x in ipairs(list) do
          same(x)
          for _ = 1, 600 do
            local y, k = x, rnd(4)
            local i = rnd(#y + 1)
            if k == 1 then y = y:sub(1, i - 1) .. alphabet[rnd(#alphabet)] .. y:sub(i + 1)
            elseif k == 2 then y = y:sub(1, i - 1) .. alphabet[rnd(#alphabet)] .. y:sub(i)
            elseif k == 3 then y = y:sub(1, i - 1) .. y:sub(i + 1)
            else y = y:sub(1, i - 1) end
            same(y)
            for d = 0, 9 do   -- digits in every position: dates, times, quads
              local z = y:sub(1, i - 1) .. d .. y:sub(i + 1)
              same(z)
            end
          end
        end
      end
      assert.is_true(checked > 100000)
    end)

    it("checks formats with regexes and falls back to Lua for the rare cases", function()
      local v = compile { type = "object", properties = {
        d = { format = "date" }, t = { format = "date-time" }, e = { format = "email" } } }
      assert.is_true(v { d = "2024-02-29", t = "1998-12-31T23:59:60Z", e = "a@[127.0.0.1]" })
      assert.are.same({ '/d: must be a valid date, got "2023-02-29"' }, messages(v, { d = "2023-02-29" }))
      assert.are.same({ '/t: must be a valid date-time, got "1998-12-31T22:59:60Z"' },
        messages(v, { t = "1998-12-31T22:59:60Z" }))
      assert.is_true(v { e = "a@[IPv6:::1]" })
      assert.is_false(v { e = "a@[IPv6:zz]" })
      assert.is_false(v { d = "2024-02-29\n" })
    end)
  end)

  describe("speed", function()
    it("allocates nothing on the valid path", function()
      local v = compile {
        type = "object",
        properties = {
          path = { type = "string", minLength = 1, pattern = "^/" },
          n = { type = "integer", minimum = 1 },
          tags = { type = "array", items = { enum = { "a", "b" } } },
          kind = { oneOf = { { const = "x" }, { const = "y" } } },
        },
        required = { "path" },
        additionalProperties = false,
      }
      local x = { path = "/tmp", n = 3, tags = { "a", "b" }, kind = "y" }
      for _ = 1, 2000 do v(x) end
      collectgarbage("collect")
      collectgarbage("stop")
      local before = collectgarbage("count")
      for _ = 1, 200000 do v(x) end
      local grew = collectgarbage("count") - before
      collectgarbage("restart")
      -- a few KB of trace bookkeeping at most; one table per run would be > 6000 KB
      assert.is_true(grew < 256, "allocated " .. grew .. " KB")
    end)
  end)
end)
