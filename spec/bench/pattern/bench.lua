-- spec/bench/pattern/bench.lua — see run. Prints one row per pattern: ns per
-- call for LuaJIT's function and ours, and the ratio (ours / LuaJIT's).
local core = require "rubberduck.core"
jit.off() -- tool states run with the JIT off (lstate.c)

local P = core.pattern
local J = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }
local TIME = tonumber(os.getenv("RD_BENCH_TIME") or "0.1")
local REPS = tonumber(os.getenv("RD_BENCH_REPS") or "9")

local text = ("The quick brown fox jumps over the lazy dog 12345 times; "):rep(8) .. "needle!"
local spaced = "  hello   world  foo \t bar   baz  qux   "
local order = "order 2024-11-27 #12345 item 678 qty 9"

-- each case: name, function(lib) -> a closure doing one call
local CASES = {
  { "find plain (467 B, at end)", function(S) local f = S.find return function() return f(text, "needle", 1, true) end end },
  { "find no specials", function(S) local f = S.find return function() return f(text, "lazy dog 1") end end },
  { "find %d%d%d%d%-%d%d", function(S) local f = S.find return function() return f(order, "%d%d%d%d%-%d%d") end end },
  { "match (%d+) captures", function(S) local f = S.match return function() return f(order, "#(%d+)%D+(%d+)") end end },
  { "match trim ^%s*(.-)%s*$", function(S) local f = S.match return function() return f(spaced, "^%s*(.-)%s*$") end end },
  { "match key=value", function(S) local f = S.match return function() return f("name = duck", "^(%w+)%s*=%s*(%w+)$") end end },
  { "gsub %s+ -> ' '", function(S) local f = S.gsub return function() return f(spaced, "%s+", " ") end end },
  { "gsub %a+ -> function", function(S) local f = S.gsub local up = string.upper
      return function() return f("hello big world", "%a+", up) end end },
  { "gmatch %a+ (words of 467 B)", function(S) local f = S.gmatch
      return function() local n = 0 for _ in f(text, "%a+") do n = n + 1 end return n end end },
}

local function round(fn)
  local n, t0 = 0, os.clock()
  local batch = 200
  repeat
    for _ = 1, batch do fn() end
    n = n + batch
  until os.clock() - t0 >= TIME
  return (os.clock() - t0) / n * 1e9
end

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

io.write(("%-32s %12s %12s %8s %s\n"):format("pattern", "LuaJIT ns", "ours ns", "ratio", "(spread ours: min-max ns)"))
for _, c in ipairs(CASES) do
  local fj, fp = c[2](J), c[2](P)
  assert(select("#", fj()) == select("#", fp()) and tostring(fj()) == tostring(fp()), c[1] .. ": results differ")
  round(fj) round(fp) -- warm-up
  local tj, tp = {}, {}
  for r = 1, REPS do
    if r % 2 == 1 then tj[r] = round(fj) tp[r] = round(fp)
    else tp[r] = round(fp) tj[r] = round(fj) end
  end
  local mj, mp = median(tj), median(tp)
  io.write(("%-32s %12.1f %12.1f %8.2f (%.0f-%.0f)\n"):format(c[1], mj, mp, mp / mj, tp[1], tp[#tp]))
end
