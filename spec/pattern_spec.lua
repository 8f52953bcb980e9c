-- pattern_spec.lua — our string.find / match / gmatch / gsub (core/sandbox/
-- pattern.c, installed in every tool state) against LuaJIT's own.
--
-- The host state running this spec keeps LuaJIT's originals (only tool
-- states get ours); core.pattern exposes ours here. Every case runs through
-- both and must give the same results: values, captures, positions, gsub
-- strings and counts, and the same error (message without its position
-- prefix) or none.
local core = require "rubberduck.core"

local P = core.pattern
local L = { find = string.find, match = string.match, gmatch = string.gmatch,
            gsub = string.gsub, rep = string.rep, concat = table.concat }

local unpack = unpack or table.unpack

-- Run f(...) protected; a printable record of what came out.
local function outcome(f, ...)
  local r = { pcall(f, ...) }
  if not r[1] then
    local msg = tostring(r[2]):gsub("^[^:]*:%d+: ", "")
    return "error: " .. msg
  end
  local parts = {}
  for i = 2, #r do
    parts[#parts + 1] = type(r[i]) == "function" and "function" or type(r[i]) .. ":" .. tostring(r[i])
  end
  -- trailing nils count too (select('#'))
  return table.concat(parts, "|") .. " #" .. (select("#", unpack(r)) - 1)
end

local function gmatch_all(gm, s, p)
  local out = {}
  local it = gm(s, p)
  for _ = 1, 1000 do
    local r = { it() }
    if r[1] == nil then break end
    for i = 1, #r do r[i] = type(r[i]) .. ":" .. tostring(r[i]) end
    out[#out + 1] = table.concat(r, ",")
  end
  return table.concat(out, ";")
end

local cases_run = 0

-- Compare one (subject, pattern, init) through all four functions.
local function same(s, p, init, repl, n)
  cases_run = cases_run + 1
  local where = ("subject %q pattern %q init %s"):format(s, p, tostring(init))
  assert.equal(outcome(L.find, s, p, init), outcome(P.find, s, p, init), "find " .. where)
  assert.equal(outcome(L.find, s, p, init, true), outcome(P.find, s, p, init, true), "plain find " .. where)
  assert.equal(outcome(L.match, s, p, init), outcome(P.match, s, p, init), "match " .. where)
  assert.equal(outcome(gmatch_all, L.gmatch, s, p), outcome(gmatch_all, P.gmatch, s, p), "gmatch " .. where)
  repl = repl or "<%0>"
  assert.equal(outcome(L.gsub, s, p, repl, n), outcome(P.gsub, s, p, repl, n),
    "gsub " .. where .. " repl " .. tostring(repl) .. " n " .. tostring(n))
end

local HAND = {
  -- subject, pattern
  { "hello world", "o" }, { "hello world", "l+" }, { "hello world", "(o)(r?)" },
  { "hello world", "^h" }, { "hello world", "^w" }, { "hello world", "d$" },
  { "hello world", "o$" }, { "hello$", "$" }, { "a$b", "a$b" }, { "a$b", "$b" },
  { "abc", "" }, { "", "" }, { "", "a*" }, { "", "^$" }, { "abc", "^" }, { "abc", "$" },
  { "abc", "%a*" }, { "abc", "%a-" }, { "abc", "a-b" }, { "aaab", "a-b" }, { "aaab", "a*b" },
  { "aaab", "a+b" }, { "aaab", "a?b" }, { "b", "a?b" }, { "ab", "a?a?b" },
  { "  x  y ", "%s+" }, { "  x  y ", "%S+" }, { "a1b22c333", "%d+" }, { "a1b22c333", "(%a)(%d+)" },
  { "THE (quick) fox", "%((%a+)%)" }, { "f(a(b)c)d", "%b()" }, { "f(a(b)c", "%b()" },
  { "[[x]]", "%b[]" }, { "xx", "%bxx" }, { "THE (quick) fox", "%f[%a]%a+" },
  { "THE (quick) fox", "%f[%A]" }, { "hello", "%f[%l]" }, { "a.b.c", "%." }, { "a.b.c", "." },
  { "a.b.c", "[.]" }, { "a-b", "[a-]" }, { "a-b", "[-b]" }, { "a]b", "[]]" }, { "a]b", "[^]]" },
  { "a^b", "[%^]" }, { "a^b", "[b^]" }, { "abc", "[^a]" }, { "abc", "[a-c]+" }, { "Abc", "[%u%d]" },
  { "x%y", "%%" }, { "x%y", "[%%]" }, { "hello", "(l)(l)" }, { "hello", "(l)%1" },
  { "hello hello", "(h%a+) %1" }, { "abab", "(ab)%1" }, { "abc", "()" }, { "abc", "()b()" },
  { "abc", "(()b)" }, { "hello", "((l)(l))" }, { "a\0b", "%z" }, { "a\0b", "[%z]" },
  { "a\0b", "a\0b" }, { "xa\0b", "\0b" }, { "xa\0b", "\0%a" }, { "\0\0", "%Z" },
  { "aaa", "a-$" }, { "aaa", "^a-$" }, { "key = value", "(%w+)%s*=%s*(%w+)" },
  { "2024-01-02", "(%d+)-(%d+)-(%d+)" }, { "café", "%a+" }, { "\200\201", "[\200-\210]+" },
  { "tab\tnl\n", "%c" }, { "x!y?", "%p" }, { "0x1F", "%x+" }, { "ab", "%g+" }, { "a b", "%G" },
  -- errors
  { "abc", "%" }, { "abc", "[a" }, { "abc", "[a%" }, { "abc", "[" }, { "abc", "[^" },
  { "abc", "%b" }, { "abc", "%ba" }, { "abc", "%f" }, { "abc", "%fa" }, { "abc", "%1" },
  { "abc", "(a%1)" }, { "abc", "(a" }, { "abc", "a)" }, { "abc", ")" }, { "abc", "%0" },
  { "abc", "(a)%2" }, { "abc", ("("):rep(33) }, { "abc", ("()"):rep(33) },
  { ("a"):rep(300), ("a?"):rep(199) }, { ("a"):rep(300), ("a?"):rep(200) },
  { ("a"):rep(300), ("a*"):rep(199) }, { ("a"):rep(300), ("a*"):rep(200) },
  { ("a"):rep(300), ("a-"):rep(200) .. "$" }, { ("a"):rep(300), ("(a)"):rep(32) },
  { ("a"):rep(10), ("(a)"):rep(10) .. "%9%9" },
  -- plain searches: short and long needles (over 16 bytes), near misses
  { ("ab"):rep(30) .. "c", ("ab"):rep(10) .. "c" }, { ("ab"):rep(30), ("ab"):rep(10) .. "c" },
  { ("x"):rep(40) .. "needle in a haystack!", "needle in a haystack" },
  { ("aab"):rep(20), "aabaab" }, { "abc", "abcd" }, { "abc", "abc" }, { "a", "b" },
}

local INITS = { nil, 1, 2, 0, -1, -2, -100, 3, 4, 5, 100, 1.5, -1.5, "2",
                2 ^ 31, 2 ^ 31 + 3, 2 ^ 32 + 2, -2 ^ 31 - 1, 1e10, 2 ^ 53, 1 / 0, -1 / 0, 0 / 0 }

describe("our pattern functions give LuaJIT's results", function()
  it("on hand-picked cases, at every init", function()
    for _, c in ipairs(HAND) do
      for i = 1, #INITS + 1 do same(c[1], c[2], INITS[i]) end
    end
  end)

  it("on gsub replacements and counts", function()
    local REPLS = { "x", "", "%0", "%1", "%2", "[%1|%0]", "%%", "%a", "x%", 5, 1.5,
                    { hello = "HI", l = false, o = 7 }, { x = {} },
                    function(a, b) return b or a:upper() end,
                    function() return nil end, function() return false end,
                    function() return {} end, function(...) return select("#", ...) end, true, nil }
    local NS = { nil, 0, 1, 2, -1, 1.5, 2 ^ 32 + 1, 2 ^ 31, -2 ^ 31 - 1, -2 ^ 32 + 2, 2 ^ 53, 1e10, "1" }
    for _, c in ipairs(HAND) do
      for ri = 1, #REPLS + 1 do
        for ni = 1, #NS + 1 do
          cases_run = cases_run + 1
          local r, n = REPLS[ri], NS[ni]
          assert.equal(outcome(L.gsub, c[1], c[2], r, n), outcome(P.gsub, c[1], c[2], r, n),
            ("gsub %q %q %s %s"):format(c[1], c[2], tostring(r), tostring(n)))
        end
      end
    end
  end)

  it("on bad arguments", function()
    local ARGS = {
      {}, { "a" }, { nil, "a" }, { {}, "a" }, { "a", {} }, { "abc", "b", {} }, { "abc", "b", "x" },
      { 123, 2 }, { 12.5, "%." }, { "abc", 98 }, { true, "a" },
    }
    for _, a in ipairs(ARGS) do
      for _, f in ipairs({ "find", "match", "gmatch", "gsub" }) do
        cases_run = cases_run + 1
        local n = select("#", unpack(a))
        n = math.max(n, #a)
        assert.equal(outcome(L[f], unpack(a, 1, n)), outcome(P[f], unpack(a, 1, n)), f)
      end
    end
    assert.equal(outcome(L.gsub, "abc", "a"), outcome(P.gsub, "abc", "a"))
  end)

  it("on thousands of random patterns, subjects and inits", function()
    math.randomseed(20261127)
    local ATOMS = { "a", "b", "c", ".", "%a", "%d", "%s", "%w", "%A", "%p", "%x", "[ab]", "[^a]",
                    "[a-c]", "[%d_]", "%%", "%.", "x", "1", " ", "(", ")", "()", "%1", "%2",
                    "%b()", "%bab", "%f[%w]", "%f[^a]", "$", "^", "[", "]", "-", "%z" }
    local QUANTS = { "", "", "", "*", "+", "-", "?" }
    local CHARS = { "a", "b", "c", "1", "2", " ", "(", ")", "x", "_", ".", "%", "\0", "A", "-" }
    local function rnd_subject()
      local t = {}
      for i = 1, math.random(0, 14) do t[i] = CHARS[math.random(#CHARS)] end
      return table.concat(t)
    end
    local function rnd_pattern()
      local t = {}
      if math.random(6) == 1 then t[1] = "^" end
      for _ = 1, math.random(0, 6) do
        local a = ATOMS[math.random(#ATOMS)]
        if not a:find("^[%(%)%%]%d?$") and #a <= 4 then a = a .. QUANTS[math.random(#QUANTS)] end
        t[#t + 1] = a
      end
      if math.random(8) == 1 then t[#t + 1] = "$" end
      return table.concat(t)
    end
    for _ = 1, 4000 do
      local init = math.random(4) == 1 and math.random(-16, 16) or nil
      same(rnd_subject(), rnd_pattern(), init, math.random(2) == 1 and "<%0%1>" or nil,
           math.random(4) == 1 and math.random(0, 3) or nil)
    end
    assert.is_true(cases_run > 4000)
  end)

  it("string.rep and table.concat keep LuaJIT's results below the size limits", function()
    local REPS = { { "ab", 3 }, { "ab", 3, "," }, { "", 5 }, { "x", 0 }, { "x", -1 }, { "x", 2.7 },
                   { "x", "3" }, { 12, 2 }, { "x", 0 / 0 }, { "x", -2 ^ 31 }, { "x", -1e10 },
                   { "", 2 ^ 31 }, {}, { "x" }, { "x", {} }, { "x", 2, {} } }
    for _, a in ipairs(REPS) do
      assert.equal(outcome(L.rep, unpack(a, 1, 3)), outcome(P.rep, unpack(a, 1, 3)))
    end
    local CONCATS = { { { "a", "b", 3 } }, { { "a", "b", 3 }, "," }, { { "a", "b", 3 }, ",", 2 },
                      { { "a", "b", 3 }, ",", 2, 3 }, { { "a", "b" }, ",", 3 }, { { 1, 2 }, ",", 1, 3 },
                      { { {} } }, { { "a", true } }, { {}, "," }, { nil }, { "x" }, { { "a" }, {} },
                      { { "a", "b" }, ",", "1", "2" }, { { 1.5, -0.0, 1e300 }, " " } }
    for _, a in ipairs(CONCATS) do
      assert.equal(outcome(L.concat, unpack(a, 1, 4)), outcome(P.concat, unpack(a, 1, 4)))
    end
  end)
end)

describe("our pattern matcher on hostile patterns outside a tool state", function()
  it("bounds its recursion (pattern too complex) instead of overflowing the C stack", function()
    local s = ("a"):rep(100000)
    assert.equal("error: pattern too complex", outcome(P.match, s, ("a?"):rep(1000)))
    assert.equal("error: pattern too complex", outcome(P.match, s, ("(a)"):rep(30) .. ("a*"):rep(500)))
  end)
end)
