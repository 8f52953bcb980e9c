-- rubberduck.validator.runtime — what generated validators share: the JSON
-- data model (null sentinel, array/object markers), deep equality, unique
-- items, default copying, and everything on the error path (pointers,
-- messages, picking the anyOf/oneOf branch an instance aimed at). The hot
-- checks themselves are inlined by the compiler, not here.

local M = {}

local type, pairs, next, getmetatable, tostring = type, pairs, next, getmetatable, tostring
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
  if next(t) == nil then return false end
  return isarr_slow(t)
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

-- uniq(arr) -> nil when all items are distinct, else i, j (1-based) of a pair
function M.uniq(a)
  local n = #a
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
local function show(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == "string" then
    if #v > 60 then v = v:sub(1, 57) .. "..." end
    return format("%q", v):gsub("\\\n", "\\n")
  elseif t == "number" then
    if v ~= v then return "NaN" end
    if v == huge then return "Infinity" elseif v == -huge then return "-Infinity" end
    if v % 1 == 0 and v > -1e15 and v < 1e15 then return format("%d", v) end
    return format("%.17g", v)
  elseif t == "boolean" then return tostring(v)
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
      parts[#parts + 1] = format("%q", k) .. ":" .. show(v[k], depth + 1)
    end
    return "{" .. concat(parts, ",") .. "}"
  end
  return "<" .. t .. ">"
end
M.show = show

local function list(vs, sep)
  local out = {}
  for i = 1, #vs do out[i] = show(vs[i]) end
  return concat(out, sep or ", ")
end

local function plural(n, one, many) return n == 1 and one or many end

-- message per keyword: (a, b) are what the generated code passed
local MSG = {
  type = function(types, v) return "must be " .. types .. ", got " .. M.jtype(v) end,
  minimum = function(l, v) return "must be >= " .. show(l) .. ", got " .. show(v) end,
  maximum = function(l, v) return "must be <= " .. show(l) .. ", got " .. show(v) end,
  exclusiveMinimum = function(l, v) return "must be > " .. show(l) .. ", got " .. show(v) end,
  exclusiveMaximum = function(l, v) return "must be < " .. show(l) .. ", got " .. show(v) end,
  multipleOf = function(l, v) return "must be a multiple of " .. show(l) .. ", got " .. show(v) end,
  minLength = function(l, v)
    return "must be at least " .. l .. plural(l, " character", " characters") .. " long, got " .. M.ulen(v) end,
  maxLength = function(l, v)
    return "must be at most " .. l .. plural(l, " character", " characters") .. " long, got " .. M.ulen(v) end,
  pattern = function(p, v) return "must match pattern " .. show(p) .. ", got " .. show(v) end,
  format = function(f, v) return "must be a valid " .. f .. ", got " .. show(v) end,
  enum = function(vals) return "must be one of " .. list(vals) end,
  const = function(c) return "must be equal to " .. show(c) end,
  required = function(name) return "missing required property " .. show(name) end,
  dependentRequired = function(name, by)
    return "missing property " .. show(name) .. " (required when " .. show(by) .. " is present)" end,
  dependencies = function(name, by)
    return "missing property " .. show(name) .. " (required when " .. show(by) .. " is present)" end,
  minItems = function(l, n) return "must have at least " .. l .. plural(l, " item", " items") .. ", got " .. n end,
  maxItems = function(l, n) return "must have at most " .. l .. plural(l, " item", " items") .. ", got " .. n end,
  uniqueItems = function(i, j) return "items must be unique, items " .. (i - 1) .. " and " .. (j - 1) .. " are equal" end,
  contains = function(l, n)
    return "must contain at least " .. l .. plural(l, " item", " items") .. " matching \"contains\", got " .. n end,
  minContains = function(l, n)
    return "must contain at least " .. l .. plural(l, " item", " items") .. " matching \"contains\", got " .. n end,
  maxContains = function(l, n)
    return "must contain at most " .. l .. plural(l, " item", " items") .. " matching \"contains\", got " .. n end,
  minProperties = function(l, n) return "must have at least " .. l .. plural(l, " property", " properties") .. ", got " .. n end,
  maxProperties = function(l, n) return "must have at most " .. l .. plural(l, " property", " properties") .. ", got " .. n end,
  additionalProperties = function() return "additional property not allowed" end,
  unevaluatedProperties = function() return "unevaluated property not allowed" end,
  additionalItems = function() return "additional item not allowed" end,
  items = function() return "item not allowed" end,
  prefixItems = function() return "item not allowed" end,
  unevaluatedItems = function() return "unevaluated item not allowed" end,
  propertyNames = function(k) return "property name " .. show(k) .. " is not allowed" end,
  ["not"] = function() return "must not match the schema in \"not\"" end,
  anyOf = function(n) return "must match at least one of the " .. n .. " schemas in \"anyOf\"" end,
  oneOf = function(n, m)
    if m and m > 1 then return "must match exactly one schema in \"oneOf\", matched " .. m end
    return "must match exactly one of the " .. n .. " schemas in \"oneOf\", matched none"
  end,
  ["false"] = function() return "no value is allowed here (schema is false)" end,
}
M.MSG = MSG

local function pointer(P, d)
  if d == 0 then return "" end
  local parts = {}
  for i = 1, d do
    local s = P[i]
    if type(s) == "number" then s = tostring(s - 1)
    else s = tostring(s):gsub("~", "~0"):gsub("/", "~1") end
    parts[i] = s
  end
  return "/" .. concat(parts, "/")
end
M.pointer = pointer

function M.error(P, d, kw, sp, a, b)
  local ptr = pointer(P, d)
  local f = MSG[kw]
  local text = f and f(a, b) or ("fails \"" .. kw .. "\"")
  return { pointer = ptr, keyword = kw, schema_path = sp,
           message = (ptr == "" and "/" or ptr) .. ": " .. text }
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
