-- json_spec.lua — core.json, the Lua binding of the C JSON codec: round
-- trips, [] versus {}, exact integers, malformed input with positions,
-- UTF-8, depth limits, encode errors with JSON pointers, canonical and
-- pretty output, misuse raising, large input.

local json = require("rubberduck.core").json

local function decode_err(text, opts)
  local v, err = json.decode(text, opts)
  assert.is_nil(v)
  assert.is_string(err)
  return err
end

local function encode_err(value, opts)
  local s, err = json.encode(value, opts)
  assert.is_nil(s)
  assert.is_string(err)
  return err
end

local function has(haystack, needle)
  if not haystack:find(needle, 1, true) then
    error(("expected %q in %q"):format(needle, haystack), 2)
  end
end

local sorted = { sort_keys = true }

local function rt(text, opts)
  local v, err = json.decode(text)
  assert(v ~= nil, err)
  return assert(json.encode(v, opts or sorted))
end

describe("core.json", function()
  describe("round trips", function()
    it("keeps every JSON type", function()
      for _, text in ipairs({ "null", "true", "false", "0", "-3", "2.5", '"s"', "[]", "{}",
                              '[1,"a",null,true,false,{"k":[]}]',
                              '{"a":{"b":[{"c":null}]}}' }) do
        assert.equal(text, rt(text))
      end
    end)

    it("keeps [] apart from {}, nested too", function()
      assert.equal('{"a":[],"b":{}}', rt('{"a":[],"b":{}}'))
      assert.equal('[[],{},[[]],[{}],{"x":{"y":[]}}]', rt('[[],{},[[]],[{}],{"x":{"y":[]}}]'))
      local v = json.decode('{"a":[],"b":{}}')
      assert.equal(json.array_mt, getmetatable(v.a))
      assert.is_nil(getmetatable(v.b))
      assert.is_nil(getmetatable(v))
      assert.equal("array", getmetatable(v.a).__jsontype)
      assert.equal("object", json.object_mt.__jsontype)
    end)

    it("decodes values to Lua", function()
      local v = json.decode('{"s":"x\\u00e9\\ud83d\\ude00\\n","n":-1.5e2,"t":true,"f":false,"z":null,"a":[1,2]}')
      assert.equal("x\195\169\240\159\152\128\n", v.s)
      assert.equal(-150, v.n)
      assert.is_true(v.t)
      assert.is_false(v.f)
      assert.equal(json.null, v.z)
      assert.equal("userdata", type(json.null))
      assert.same({ 1, 2 }, setmetatable(v.a, nil))
      assert.equal(json.null, json.decode("null"))
      assert.equal("a\0b", json.decode('"a\\u0000b"'))
    end)

    it("lets the last of duplicate keys win", function()
      assert.equal(2, json.decode('{"a":1,"a":2}').a)
    end)

    -- objects whose first key was seen before are made at the size of the
    -- last such object: repeated, shrinking, growing and nested shapes
    it("decodes repeated and changing object shapes the same", function()
      for _ = 1, 3 do
        assert.equal('{"b":2,"id":1}', rt('{"id":1,"b":2}', sorted))
        assert.equal('{"id":1}', rt('{"id":1}', sorted))
        assert.equal('{"b":2,"c":3,"d":4,"e":5,"f":6,"id":1}', rt('{"id":1,"b":2,"c":3,"d":4,"e":5,"f":6}', sorted))
        assert.equal('{"id":3,"x":2}', rt('{"id":1,"x":2,"id":3}', sorted))
        assert.equal('{"id":{"id":{"id":[{"id":{}}]}},"z":1}', rt('{"id":{"id":{"id":[{"id":{}}]}},"z":1}', sorted))
        local keys = {}
        for i = 1, 300 do keys[i] = ('"k%d":%d'):format(i, i) end
        local big = json.decode('{"id":0,' .. table.concat(keys, ",") .. "}")
        local n = 0
        for _ in pairs(big) do n = n + 1 end
        assert.equal(301, n)
        assert.equal(300, big.k300)
      end
    end)
  end)

  describe("numbers", function()
    it("writes integers exactly up to 2^53", function()
      assert.equal("9007199254740992", json.encode(2 ^ 53))
      assert.equal("-9007199254740992", json.encode(-(2 ^ 53)))
      assert.equal("9007199254740991", json.encode(9007199254740991))
      assert.equal("1000000000000000", json.encode(1e15))
      assert.equal("0", json.encode(-0.0))
      assert.equal(2 ^ 53, json.decode("9007199254740992"))
      assert.equal(-(2 ^ 53), json.decode("-9007199254740992"))
      assert.equal(9007199254740991, json.decode("9007199254740991"))
      assert.equal("[9007199254740992,-9007199254740992,9007199254740991]",
                   rt("[9007199254740992,-9007199254740992,9007199254740991]"))
    end)

    it("round-trips doubles", function()
      for _, x in ipairs({ 0.1, 1e300, 5e-324, 123.456, 1 / 3, -2.5e-8, 1.7976931348623157e308 }) do
        assert.equal(x, json.decode(json.encode(x)))
      end
      assert.equal("0.1", json.encode(0.1))
      assert.equal("1e+300", json.encode(1e300))
      assert.equal("123.456", json.encode(123.456))
      assert.equal(5e-324, json.decode("5e-324"))
      assert.equal(0.1, json.decode("0.1"))
    end)

    it("refuses NaN and infinities", function()
      assert.equal("cannot encode value at the root: NaN", encode_err(0 / 0))
      assert.equal("cannot encode value at /x: infinity", encode_err({ x = math.huge }))
      assert.equal("cannot encode value at /0: -infinity", encode_err({ -math.huge }))
      has(decode_err("1e400"), "(byte 0): number out of range")
    end)
  end)

  describe("malformed input", function()
    local cases = {
      { "", "line 1, column 1 (byte 0): expected a value, got end of input" },
      { "  ", "line 1, column 3 (byte 2): expected a value, got end of input" },
      { "[1,2,]", "(byte 5): expected a value after ',' (no trailing commas), got ']'" },
      { '{"a":1,}', "(byte 7): expected a string key after ',' (no trailing commas), got '}'" },
      { "[1 /* c */]", "(byte 3): expected ',' or ']' after an array element, got '/' (comments are not allowed)" },
      { "// c\n1", "(byte 0): expected a value, got '/' (comments are not allowed)" },
      { "01", "(byte 0): leading zeros are not allowed in numbers" },
      { "[-012]", "(byte 1): leading zeros are not allowed in numbers" },
      { "NaN", "(byte 0): expected a value, got 'N' (NaN and Infinity are not JSON numbers)" },
      { "Infinity", "expected a value, got 'I' (NaN and Infinity are not JSON numbers)" },
      { "-Infinity", "(byte 1): expected a digit after '-', got 'I' (NaN and Infinity" },
      { "'x'", "(byte 0): expected a value, got ''' (strings take double quotes)" },
      { "{'a':1}", "(byte 1): expected a string key or '}', got ''' (strings take double quotes)" },
      { '"a\tb"', "(byte 2): unescaped control character U+0009 in string" },
      { '"\\a"', "(byte 1): invalid escape '\\a' in string" },
      { '"\\u00"', "(byte 1): expected 4 hex digits after \\u" },
      { '"\\ud83d"', "(byte 1): lone surrogate \\uD83D in string" },
      { '"\\ude00"', "(byte 1): lone surrogate \\uDE00 in string" },
      { '"abc', "(byte 0): unterminated string" },
      { "1.", "(byte 2): expected a digit after the decimal point, got end of input" },
      { "1e+", "(byte 3): expected a digit in the exponent, got end of input" },
      { "[1 2]", "(byte 3): expected ',' or ']' after an array element, got '2'" },
      { '{"a" 1}', "(byte 5): expected ':' after an object key, got '1'" },
      { '{"a":1 "b":2}', "(byte 7): expected ',' or '}' after an object member, got '\"'" },
      { "[1] [2]", "(byte 4): expected the end of input after the value, got '['" },
      { "truex", "(byte 4): expected the end of input after the value, got 'x'" },
      { "nul", "(byte 0): expected a value, got 'n'" },
      { "{\n  \"a\": [1,\n   x]}", "line 3, column 4 (byte 16): expected a value, got 'x'" },
    }
    for _, c in ipairs(cases) do
      it(("refuses %q"):format(c[1]), function()
        local err = decode_err(c[1])
        has(err, "invalid JSON at line ")
        has(err, c[2])
      end)
    end
  end)

  describe("UTF-8", function()
    local bad = {
      { "\192\128", 0, "overlong C0 80" },
      { "ab\237\160\128", 2, "surrogate ED A0 80" },
      { "\245\128\128\128", 0, "F5+" },
      { "\244\144\128\128", 0, "above U+10FFFF" },
      { "abc\226\130", 3, "truncated 3-byte" },
      { "\240\159\152", 0, "truncated 4-byte" },
      { "\128", 0, "lone continuation" },
      { "\255", 0, "FF" },
    }
    for _, c in ipairs(bad) do
      it("refuses " .. c[3] .. " everywhere", function()
        local ok, off = json.utf8_valid(c[1])
        assert.is_false(ok)
        assert.equal(c[2], off)
        has(decode_err('"' .. c[1] .. '"'), ("(byte %d): invalid UTF-8 in string"):format(c[2] + 1))
        assert.equal(("cannot encode value at /k/0: invalid UTF-8 in string at byte %d"):format(c[2]),
                     encode_err({ k = { c[1] } }))
      end)
    end

    it("accepts valid UTF-8 as-is", function()
      local s = "\195\169 \226\130\172 \240\159\152\128 \244\143\191\191"
      assert.is_true(json.utf8_valid(s))
      assert.equal('"' .. s .. '"', json.encode(s))
      assert.equal(s, json.decode('"' .. s .. '"'))
    end)

    it("escapes minimally, and U+2028/U+2029", function()
      assert.equal([["q\" b\\ s/ \n\t\r\b\f\u0001\u001f \u2028\u2029"]],
                   json.encode("q\" b\\ s/ \n\t\r\b\f\1\31 \226\128\168\226\128\169"))
    end)

    it("names a bad key", function()
      assert.equal("cannot encode value at /a: invalid UTF-8 in object key at byte 0",
                   encode_err({ a = { ["\255"] = 1 } }))
    end)
  end)

  describe("depth", function()
    it("allows 128 levels and refuses 129", function()
      local ok = ("["):rep(128) .. ("]"):rep(128)
      assert.equal(ok, rt(ok))
      has(decode_err(("["):rep(129) .. ("]"):rep(129)), "(byte 128): nesting deeper than 128 levels")
      local t = {}
      for _ = 1, 127 do t = { t } end
      assert.is_string(json.encode(t))
      has(encode_err({ t }), ": table nested deeper than 128 levels")
    end)

    it("refuses 100000 levels cleanly", function()
      has(decode_err(("["):rep(100000)), "nesting deeper than 128 levels")
      has(decode_err(('{"a":'):rep(100000)), "nesting deeper than 128 levels")
      has(decode_err(("["):rep(100000), { max_depth = 1000 }), "nesting deeper than 1000 levels")
    end)

    it("takes max_depth", function()
      assert.is_table(json.decode("[[1]]", { max_depth = 2 }))
      has(decode_err("[[[1]]]", { max_depth = 2 }), "nesting deeper than 2 levels")
      assert.equal("cannot encode value at /0/0: table nested deeper than 2 levels",
                   encode_err({ { { 1 } } }, { max_depth = 2 }))
      local deep = ("["):rep(600) .. ("]"):rep(600)
      assert.equal(deep, json.encode(json.decode(deep, { max_depth = 600 }), { max_depth = 600 }))
    end)
  end)

  describe("encode errors", function()
    it("name the JSON pointer", function()
      assert.equal("cannot encode value at /a/2: function", encode_err({ a = { 1, 2, print } }))
      assert.equal("cannot encode value at the root: function", encode_err(print))
      assert.equal("cannot encode value at /c: thread", encode_err({ c = coroutine.create(print) }))
      assert.equal("cannot encode value at /u: userdata", encode_err({ u = io.stdout }))
      assert.equal("cannot encode value at /a~1b/~0: function", encode_err({ ["a/b"] = { ["~"] = print } }))
    end)

    it("report cycles", function()
      local t = { x = {} }
      t.x.y = { t }
      assert.equal("cannot encode value at /x/y/0: cycle", encode_err(t))
      local shared = { 1 }
      assert.equal('{"a":[1],"b":[1]}', json.encode({ a = shared, b = shared }, sorted))
    end)

    it("refuse mixed and sparse tables and odd keys", function()
      assert.equal("cannot encode value at /m: table mixes array and object keys",
                   encode_err({ m = { 1, 2, x = 3 } }))
      assert.equal("cannot encode value at /s: sparse array (2 elements, largest index 3)",
                   encode_err({ s = { 1, nil, 3 } }))
      assert.equal("cannot encode value at the root: table key 0 is neither a string nor an array index",
                   encode_err({ [0] = 1 }))
      assert.equal("cannot encode value at the root: table key of type boolean",
                   encode_err({ [true] = 1 }))
    end)
  end)

  describe("tables", function()
    it("follow the encoder's rules", function()
      assert.equal("{}", json.encode({}))
      assert.equal("[]", json.encode(json.array()))
      assert.equal("{}", json.encode(json.object()))
      assert.equal("[1,2]", json.encode({ 1, 2 }))
      assert.equal('{"1":"a","2":"b"}', json.encode(json.object({ "a", "b" }), sorted))
      assert.equal("[null,true]", json.encode({ json.null, true }))
      assert.equal("[]", json.encode(setmetatable({}, { __jsontype = "array" })))
      assert.equal("null", json.encode(nil))
    end)

    it("is_array applies the same rule", function()
      assert.is_true(json.is_array({ 1, 2 }))
      assert.is_true(json.is_array(json.array()))
      assert.is_true(json.is_array(json.decode("[]")))
      assert.is_false(json.is_array({}))
      assert.is_false(json.is_array(json.decode("{}")))
      assert.is_false(json.is_array(json.object({ 1 })))
      assert.is_false(json.is_array({ 1, nil, 3 }))
      assert.is_false(json.is_array({ 1, x = 2 }))
      assert.is_false(json.is_array("s"))
    end)

    it("array() and object() mark tables", function()
      local t = {}
      assert.equal(t, json.array(t))
      assert.equal(json.array_mt, getmetatable(t))
      assert.equal(json.object_mt, getmetatable(json.object()))
    end)
  end)

  describe("options", function()
    it("sort_keys writes keys in byte order", function()
      assert.equal('{"":6,"B":3,"a":2,"aa":5,"b":1}',
                   json.encode({ b = 1, a = 2, B = 3, aa = 5, [""] = 6 }, sorted))
    end)

    it("sort_keys sorts objects of many keys, nested in one another", function()
      -- more keys than the encoder gathers before it takes the heap, with
      -- sorted objects inside, whose keys are gathered after their parent's
      local t, want = {}, {}
      for i = 1, 100 do
        local k = ("k%03d"):format(101 - i)
        t[k] = { ["z" .. i] = i, a = i }
      end
      for i = 1, 100 do
        local n = 101 - i
        want[i] = ('"k%03d":{"a":%d,"z%d":%d}'):format(i, n, n, n)
      end
      assert.equal("{" .. table.concat(want, ",") .. "}", json.encode(t, sorted))
    end)

    it("pretty indents by two spaces", function()
      local want = table.concat({
        "{",
        '  "a": [',
        "    1,",
        "    [],",
        "    {",
        '      "k": "v"',
        "    }",
        "  ],",
        '  "b": {},',
        '  "c": null',
        "}",
      }, "\n")
      assert.equal(want, json.encode({ c = json.null, b = {}, a = { 1, json.array(), { k = "v" } } },
                                     { pretty = true, sort_keys = true }))
      assert.equal("[]", json.encode(json.array(), { pretty = true }))
    end)
  end)

  describe("misuse", function()
    it("raises on wrong argument types", function()
      assert.has_error(function() json.decode(42) end)
      assert.has_error(function() json.decode() end)
      assert.has_error(function() json.decode("1", 5) end)
      assert.has_error(function() json.decode("1", { max_depth = 0 }) end)
      assert.has_error(function() json.decode("1", { max_depth = 1.5 }) end)
      assert.has_error(function() json.encode() end)
      assert.has_error(function() json.encode(1, { pretty = 1 }) end)
      assert.has_error(function() json.array("x") end)
      assert.has_error(function() json.utf8_valid(1) end)
    end)
  end)

  describe("size", function()
    it("handles a few MB", function()
      local items = {}
      for i = 1, 50000 do
        items[i] = { id = i, name = "item " .. i .. " \195\169", price = i + 0.25,
                     tags = { "a", "b" }, none = json.null, empty = json.array() }
      end
      local text = assert(json.encode(items, sorted))
      assert.is_true(#text > 3 * 1024 * 1024)
      local back = assert(json.decode(text))
      assert.equal(50000, #back)
      assert.equal("item 50000 \195\169", back[50000].name)
      assert.equal(text, json.encode(back, sorted))
      local big = ("x\"\\\226\130\172"):rep(500000)
      assert.equal(big, json.decode(json.encode(big)))
    end)
  end)
end)
