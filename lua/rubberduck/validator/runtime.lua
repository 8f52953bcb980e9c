-- rubberduck.validator.runtime — what generated validators share: the JSON
-- data model (null sentinel, array/object markers), deep equality, unique
-- items, default copying, and everything on the error path (pointers,
-- messages, picking the anyOf/oneOf branch an instance aimed at). The hot
-- checks themselves are inlined by the compiler, not here.
--
-- Calls on paths a validator takes are written `return (f(x))`, never as
-- tail calls: LuaJIT counts the tail calls of a trace against its loop
-- unroll limit, and aborts long traces that make many of them.

local M = {}

local type, pairs, next, getmetatable, tostring, rawget = type, pairs, next, getmetatable, tostring, rawget
local huge, concat, format, ipairs, setmetatable = math.huge, table.concat, string.format, ipairs, setmetatable

-- The JSON null: any NULL light userdata compares equal to any other, so one
-- obtained from lua-cjson (or the core module) matches the codec's value.
local NULL
do
  local ok, core = pcall(require, "rubberduck.core")
  if ok and type(core) == "table" and type(core.json) == "table" and core.json.null ~= nil then
    NULL = core.json.null
  else
    local okc, cjson = pcall(require, "cjson")
    if okc and cjson.null ~= nil then NULL = cjson.null end
  end
end
M.NULL = NULL

M.REG = debug.getregistry()
M.ARRAY_MT_NAME = "rubberduck.json.array"
M.OBJECT_MT_NAME = "rubberduck.json.object"
-- marks arrays when the core module (and its registry metatable) is absent;
-- never put in the registry, so the core's own metatable is not shadowed
M.FALLBACK_ARRAY_MT = { __name = "rubberduck.validator.array" }

-- the metatable that marks a JSON array in this process
function M.array_mt()
  return M.REG[M.ARRAY_MT_NAME] or M.FALLBACK_ARRAY_MT
end

local function is_null(v)
  return v == NULL and v ~= nil
end
M.is_null = is_null

-- structural rule for a table without a marker: an array when non-empty
-- with keys exactly 1..n
local function isarr_slow(t)
  local n = #t
  if n == 0 then return false end
  for i = 1, n do if t[i] == nil then return false end end
  local c = 0
  for _ in pairs(t) do c = c + 1 end
  return c == n
end
M.isarr_slow = isarr_slow

local function isarr(t)
  local mt = getmetatable(t)
  if mt ~= nil then
    if mt == M.REG[M.ARRAY_MT_NAME] or mt == M.FALLBACK_ARRAY_MT then return true end
    if mt == M.REG[M.OBJECT_MT_NAME] then return false end
  end
  if rawget(t, 1) == nil then return false end -- also an empty table: an object
  return (isarr_slow(t))
end
M.isarr = isarr

function M.jtype(v)
  local t = type(v)
  if t == "table" then return isarr(v) and "array" or "object" end
  if t == "number" then
    if v % 1 == 0 then return "integer" end
    return "number"
  end
  if t == "userdata" and is_null(v) then return "null" end
  if t == "string" or t == "boolean" then return t end
  return t
end

-- nkeys(t): the number of keys of t. OpenResty's LuaJIT has table.nkeys,
-- which the trace compiler turns into one call, with no loop in the trace
do
  local ok, nk = pcall(require, "table.nkeys")
  if ok and type(nk) == "function" then
    M.nkeys = nk
  else
    M.nkeys = function(t)
      local n = 0
      for _ in next, t do n = n + 1 end
      return n
    end
  end
end

-- tnew(narr, nhash): a table with preallocated parts (table.new) when the
-- runtime has it
do
  local ok, tn = pcall(require, "table.new")
  M.tnew = ok and type(tn) == "function" and tn or function() return {} end
end

-- number of UTF-8 code points (bytes that are not continuation bytes)
local byte = string.byte
function M.ulen(s)
  local n = 0
  for i = 1, #s do
    local b = byte(s, i)
    if b < 128 or b >= 192 then n = n + 1 end
  end
  return n
end

local function deq(a, b)
  if a == b then return true end
  local ta, tb = type(a), type(b)
  if ta ~= "table" or tb ~= "table" then return false end
  local aa, ab = isarr(a), isarr(b)
  if aa ~= ab then return false end
  if aa then
    local n = #a
    if n ~= #b then return false end
    for i = 1, n do if not deq(a[i], b[i]) then return false end end
    return true
  end
  for k, x in pairs(a) do
    local y = b[k]
    if y == nil or not deq(x, y) then return false end
  end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
M.deq = deq

local function same(x, y)
  return x == y or (type(x) == "table" and type(y) == "table" and deq(x, y))
end

-- uniq(arr) -> nil when all items are distinct, else i, j (1-based) of a pair
-- (the first pair in the order i = 1..n-1, j = i+1..n)
function M.uniq(a)
  local n = #a
  if n <= 5 then
    -- written out: no loop for short arrays
    if n < 2 then return nil end
    local a1, a2, a3, a4, a5 = a[1], a[2], a[3], a[4], a[5]
    if same(a1, a2) then return 1, 2 end
    if n >= 3 and same(a1, a3) then return 1, 3 end
    if n >= 4 and same(a1, a4) then return 1, 4 end
    if n >= 5 and same(a1, a5) then return 1, 5 end
    if n >= 3 and same(a2, a3) then return 2, 3 end
    if n >= 4 and same(a2, a4) then return 2, 4 end
    if n >= 5 and same(a2, a5) then return 2, 5 end
    if n >= 4 and same(a3, a4) then return 3, 4 end
    if n >= 5 and same(a3, a5) then return 3, 5 end
    if n >= 5 and same(a4, a5) then return 4, 5 end
    return nil
  end
  local simple = true
  for i = 1, n do if type(a[i]) == "table" then simple = false; break end end
  if simple and n > 16 then
    local seen = {}
    for i = 1, n do
      local x = a[i]
      local k = x
      if type(x) == "number" then k = x else k = type(x) .. ":" .. tostring(x) end
      if seen[k] then return seen[k], i end
      seen[k] = i
    end
    return nil
  end
  for i = 1, n - 1 do
    local x = a[i]
    for j = i + 1, n do
      if deq(x, a[j]) then return i, j end
    end
  end
  return nil
end

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return setmetatable(t, getmetatable(v))
end
M.copy = copy

-- JSON text for values in messages (short)
local find, sub, gsub = string.find, string.sub, string.gsub

-- a string as a quoted JSON-ish literal: plain strings (no control bytes,
-- quotes or backslashes) are just wrapped; the rest go through %q
local needs_escape = require("rubberduck.validator.regex").raw('[\\x00-\\x1f"\\\\\\x7f]')
local function quote(v)
  if needs_escape then
    local r = needs_escape(v)
    if r == -1 then return '"' .. v .. '"' end
  else
    local plain = true
    for i = 1, #v do
      local c = byte(v, i)
      if c < 32 or c == 34 or c == 92 or c == 127 then plain = false; break end
    end
    if plain then return '"' .. v .. '"' end
  end
  return (gsub(format("%q", v), "\\\n", "\\n"))
end

local function show(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == "string" then
    if #v > 60 then v = sub(v, 1, 57) .. "..." end
    return (quote(v))
  elseif t == "number" then
    if v ~= v then return "NaN" end
    if v == huge then return "Infinity" elseif v == -huge then return "-Infinity" end
    if v % 1 == 0 and v > -1e15 and v < 1e15 then return (format("%d", v)) end
    return (format("%.17g", v))
  elseif t == "boolean" then return (tostring(v))
  elseif is_null(v) then return "null"
  elseif t == "table" then
    if depth > 1 then return isarr(v) and "[...]" or "{...}" end
    local parts = {}
    if isarr(v) then
      for i = 1, #v do
        if i > 5 then parts[#parts + 1] = "..."; break end
        parts[#parts + 1] = show(v[i], depth + 1)
      end
      return "[" .. concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for i, k in ipairs(keys) do
      if i > 5 then parts[#parts + 1] = "..."; break end
      parts[#parts + 1] = quote(k) .. ":" .. show(v[k], depth + 1)
    end
    return "{" .. concat(parts, ",") .. "}"
  end
  return "<" .. t .. ">"
end
M.show = show

local function list(vs, sep)
  local out = {}
  for i = 1, #vs do out[i] = show(vs[i]) end
  return (concat(out, sep or ", "))
end
M.list = list

local function plural(n, one, many) return n == 1 and one or many end

-- Messages. The compiler builds the part of each message that depends only
-- on the schema at compile time (M.text) and passes it to the generated
-- code as a literal; at run time only a suffix that depends on the instance
-- is appended, chosen by a small code (M.H_*).
M.H_SHOW, M.H_JTYPE, M.H_ULEN, M.H_NUM, M.H_UNIQ, M.H_PNAME = 1, 2, 3, 4, 5, 6

local TEXT = {
  type = function(types) return "must be " .. types .. ", got ", M.H_JTYPE end,
  minimum = function(l) return "must be >= " .. show(l) .. ", got ", M.H_SHOW end,
  maximum = function(l) return "must be <= " .. show(l) .. ", got ", M.H_SHOW end,
  exclusiveMinimum = function(l) return "must be > " .. show(l) .. ", got ", M.H_SHOW end,
  exclusiveMaximum = function(l) return "must be < " .. show(l) .. ", got ", M.H_SHOW end,
  multipleOf = function(l) return "must be a multiple of " .. show(l) .. ", got ", M.H_SHOW end,
  minLength = function(l)
    return "must be at least " .. l .. plural(l, " character", " characters") .. " long, got ", M.H_ULEN end,
  maxLength = function(l)
    return "must be at most " .. l .. plural(l, " character", " characters") .. " long, got ", M.H_ULEN end,
  pattern = function(p) return "must match pattern " .. show(p) .. ", got ", M.H_SHOW end,
  format = function(f) return "must be a valid " .. f .. ", got ", M.H_SHOW end,
  enum = function(vals) return "must be one of " .. list(vals) end,
  const = function(c) return "must be equal to " .. show(c) end,
  required = function(name) return "missing required property " .. show(name) end,
  dependentRequired = function(name, by)
    return "missing property " .. show(name) .. " (required when " .. show(by) .. " is present)" end,
  dependencies = function(name, by)
    return "missing property " .. show(name) .. " (required when " .. show(by) .. " is present)" end,
  minItems = function(l) return "must have at least " .. l .. plural(l, " item", " items") .. ", got ", M.H_NUM end,
  maxItems = function(l) return "must have at most " .. l .. plural(l, " item", " items") .. ", got ", M.H_NUM end,
  uniqueItems = function() return "items must be unique, items ", M.H_UNIQ end,
  contains = function(l)
    return "must contain at least " .. l .. plural(l, " item", " items") .. " matching \"contains\", got ", M.H_NUM end,
  minContains = function(l)
    return "must contain at least " .. l .. plural(l, " item", " items") .. " matching \"contains\", got ", M.H_NUM end,
  maxContains = function(l)
    return "must contain at most " .. l .. plural(l, " item", " items") .. " matching \"contains\", got ", M.H_NUM end,
  minProperties = function(l)
    return "must have at least " .. l .. plural(l, " property", " properties") .. ", got ", M.H_NUM end,
  maxProperties = function(l)
    return "must have at most " .. l .. plural(l, " property", " properties") .. ", got ", M.H_NUM end,
  additionalProperties = function() return "additional property not allowed" end,
  unevaluatedProperties = function() return "unevaluated property not allowed" end,
  additionalItems = function() return "additional item not allowed" end,
  items = function() return "item not allowed" end,
  prefixItems = function() return "item not allowed" end,
  unevaluatedItems = function() return "unevaluated item not allowed" end,
  propertyNames = function() return "property name ", M.H_PNAME end,
  ["not"] = function() return "must not match the schema in \"not\"" end,
  anyOf = function(n) return "must match at least one of the " .. n .. " schemas in \"anyOf\"" end,
  oneOf = function(n, multi)
    if multi then return "must match exactly one schema in \"oneOf\", matched ", M.H_NUM end
    return "must match exactly one of the " .. n .. " schemas in \"oneOf\", matched none"
  end,
  ["false"] = function() return "no value is allowed here (schema is false)" end,
}

-- text(kw, a, b) -> the compile-time part of the message, suffix code or nil
function M.text(kw, a, b)
  local f = TEXT[kw]
  if f then return f(a, b) end
  return "fails \"" .. kw .. "\""
end

-- a pointer token: array indices 0-based, ~ and / escaped (RFC 6901);
-- remembered (a bounded cache), since the same keys fail again and again
local TOK, NTOK = {}, 0
local function token(s)
  local t = TOK[s]
  if t ~= nil then return t end
  if type(s) == "number" then
    t = tostring(s - 1)
  else
    t = tostring(s)
    if find(t, "~", 1, true) then t = gsub(t, "~", "~0") end
    if find(t, "/", 1, true) then t = gsub(t, "/", "~1") end
  end
  if NTOK >= 4096 then TOK, NTOK = {}, 0 end
  NTOK = NTOK + 1
  TOK[s] = t
  return t
end

-- "/" .. token(s) for the top level, remembered like the tokens
local PTR1, NPTR1 = {}, 0
local function pointer(P, d)
  if d == 0 then return "" end
  if d == 1 then
    local s = P[1]
    local p = PTR1[s]
    if p == nil then
      p = "/" .. token(s)
      if NPTR1 >= 4096 then PTR1, NPTR1 = {}, 0 end
      NPTR1 = NPTR1 + 1
      PTR1[s] = p
    end
    return p
  end
  if d == 2 then return "/" .. token(P[1]) .. "/" .. token(P[2]) end
  if d == 3 then return "/" .. token(P[1]) .. "/" .. token(P[2]) .. "/" .. token(P[3]) end
  local p = "/" .. token(P[1]) .. "/" .. token(P[2]) .. "/" .. token(P[3]) .. "/" .. token(P[4])
  for i = 5, d do p = p .. "/" .. token(P[i]) end
  return p
end
M.pointer = pointer

-- error(P, d, kw, sp, text, how, a, b): the error record; text is the
-- compile-time part of the message, how (a M.H_* code or nil) appends what
-- depends on the instance (a, b)
-- (each message is built by one concatenation: one new string)
local MSG, NMSG = {}, 0
function M.error(P, d, kw, sp, text, how, a, b)
  local ptr = pointer(P, d)
  local head = d == 0 and "/" or ptr
  local msg
  if how == nil then
    -- the whole message depends on the pointer and the site: remembered
    local byhead = MSG[head]
    if byhead == nil then
      if NMSG >= 4096 then MSG, NMSG = {}, 0 end
      byhead = {}
      MSG[head] = byhead
    end
    msg = byhead[text]
    if msg == nil then
      msg = head .. ": " .. text
      NMSG = NMSG + 1
      byhead[text] = msg
    end
  elseif how == 1 then
    if type(a) == "string" and #a <= 60 and (needs_escape and needs_escape(a) == -1) then
      msg = head .. ": " .. text .. '"' .. a .. '"'
    else
      msg = head .. ": " .. text .. show(a)
    end
  elseif how == 2 then msg = head .. ": " .. text .. M.jtype(a)
  elseif how == 3 then msg = head .. ": " .. text .. M.ulen(a)
  elseif how == 4 then msg = head .. ": " .. text .. a
  elseif how == 5 then msg = head .. ": " .. text .. (a - 1) .. " and " .. (b - 1) .. " are equal"
  elseif how == 6 then msg = head .. ": " .. text .. show(a) .. " is not allowed"
  else msg = head .. ": " .. text end
  return { pointer = ptr, keyword = kw, schema_path = sp, message = msg }
end

-- the errors of a failed run that recorded none (cannot happen: a safety net)
function M.invalid()
  return { { pointer = "", keyword = "", schema_path = "", message = "/: invalid" } }
end

-- Which branch of an anyOf/oneOf did the instance evidently aim at?
-- disc[i] = { types = set|nil, consts = { {prop, value}... }, required = {...} }
-- Returns the branch index, or 0 when no branch stands out.
function M.pick(v, disc)
  local n = #disc
  if n == 1 then return 1 end
  local jt = M.jtype(v)
  local best, best_score, tie = 0, -huge, false
  for i = 1, n do
    local dd = disc[i]
    local score = 0
    if dd.types and not (dd.types[jt] or (jt == "integer" and dd.types.number)) then score = score - 1000 end
    if type(v) == "table" and jt == "object" then
      for _, c in ipairs(dd.consts) do
        local x = v[c[1]]
        if x ~= nil then
          if deq(x, c[2]) then score = score + 100 else score = score - 100 end
        end
      end
      for _, r in ipairs(dd.required) do
        if v[r] ~= nil then score = score + 1 end
      end
    elseif dd.value_consts then
      for _, c in ipairs(dd.value_consts) do
        if deq(v, c) then score = score + 100 end
      end
    end
    if score > best_score then best, best_score, tie = i, score, false
    elseif score == best_score then tie = true end
  end
  if tie then return 0 end
  return best
end

-- pattern tables: turn a list into a set
function M.set(list)
  local s = {}
  for i = 1, #list do s[list[i]] = true end
  return s
end

return M
