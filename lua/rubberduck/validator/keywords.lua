-- rubberduck.validator.keywords — which keywords each draft defines, and the
-- ones a schema uses that its draft does not.
--
-- JSON Schema makes an unknown keyword an annotation, so a schema with
-- "minimun" or "requried" compiles and quietly checks less than its author
-- meant. unknown(schema, draft) finds such keywords, with the schema path
-- and the keyword probably meant (by edit distance, transpositions
-- counting one), so that tool loading can warn about them.
--
--   keywords.unknown(schema, draft, draft_of) -> { {path, keyword, suggestion, message}, ... }
--   keywords.suggest(word, draft) -> the known keyword closest to word, or nil
--   keywords.distance(a, b)       -> optimal string alignment distance
--
-- Not reported: keys starting with "x-" (the usual mark of a deliberate
-- extension), and keys inside values that are not schemas (enum, const,
-- default, examples, and the names under properties).

local runtime = require "rubberduck.validator.runtime"
local uri = require "rubberduck.validator.uri"

local type, pairs, ipairs, sort, format, byte, min = type, pairs, ipairs, table.sort, string.format, string.byte, math.min
local isarr = runtime.isarr

local M = {}

local function set(list)
  local s = {}
  for _, k in ipairs(list) do s[k] = true end
  return s
end

-- keywords common to both drafts
local COMMON = {
  "$id", "$schema", "$ref", "$comment",
  "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
  "maxLength", "minLength", "pattern", "items", "maxItems", "minItems", "uniqueItems", "contains",
  "maxProperties", "minProperties", "required", "properties", "patternProperties",
  "additionalProperties", "propertyNames", "if", "then", "else", "allOf", "anyOf", "oneOf", "not",
  "format", "contentEncoding", "contentMediaType",
  "title", "description", "default", "readOnly", "writeOnly", "examples",
  -- both places for definitions: a $ref reaches either by JSON pointer
  "$defs", "definitions",
}

local ONLY_2020 = {
  "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary", "$recursiveRef", "$recursiveAnchor",
  "prefixItems", "dependentRequired", "dependentSchemas", "unevaluatedItems", "unevaluatedProperties",
  "maxContains", "minContains", "contentSchema", "deprecated",
}

local ONLY_07 = { "additionalItems", "dependencies" }

local KNOWN = { ["2020-12"] = set(COMMON), ["07"] = set(COMMON) }
for _, k in ipairs(ONLY_2020) do KNOWN["2020-12"][k] = true end
for _, k in ipairs(ONLY_07) do KNOWN["07"][k] = true end
-- additionalItems is still honoured by 2019-09-style schemas under 2020-12
-- (the compiler reads it); it is not a typo worth a warning
KNOWN["2020-12"].additionalItems = true
M.KNOWN = KNOWN

local NAME = { ["2020-12"] = "draft 2020-12", ["07"] = "draft-07" }
local OTHER = { ["2020-12"] = "07", ["07"] = "2020-12" }

-- keyword -> how its value holds subschemas
local SUB_ONE = set { "additionalProperties", "propertyNames", "not", "if", "then", "else", "contains",
  "additionalItems", "unevaluatedProperties", "unevaluatedItems", "contentSchema" }
local SUB_MAP = set { "properties", "patternProperties", "definitions", "$defs", "dependentSchemas" }
local SUB_ARR = set { "allOf", "anyOf", "oneOf", "prefixItems" }

-- Optimal string alignment distance (Levenshtein plus adjacent
-- transpositions): "requried" is 1 from "required".
function M.distance(a, b)
  local la, lb = #a, #b
  if la == 0 then return lb end
  if lb == 0 then return la end
  local prev2, prev, cur = {}, {}, {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    cur[0] = i
    local ca = byte(a, i)
    for j = 1, lb do
      local cb = byte(b, j)
      local cost = ca == cb and 0 or 1
      local d = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if i > 1 and j > 1 and ca == byte(b, j - 1) and byte(a, i - 1) == cb then
        d = min(d, prev2[j - 2] + 1)
      end
      cur[j] = d
    end
    prev2, prev, cur = prev, cur, prev2
  end
  return prev[lb]
end

local sorted_known = {}
for d, s in pairs(KNOWN) do
  local l = {}
  for k in pairs(s) do l[#l + 1] = k end
  sort(l)
  sorted_known[d] = l
end

-- The known keyword of `draft` closest to `word`: the same but for case,
-- else the nearest within an edit distance of 1 (words up to 4 letters),
-- 2 (up to 8) or 3 (longer). nil if none.
function M.suggest(word, draft)
  local known = sorted_known[draft] or sorted_known["2020-12"]
  local lw = word:lower()
  for _, k in ipairs(known) do
    if k:lower() == lw then return k end
  end
  local best, bestd = nil, #word <= 4 and 1 or (#word <= 8 and 2 or 3)
  for _, k in ipairs(known) do
    if math.abs(#k - #word) <= bestd then
      local d = M.distance(lw, k:lower())
      if d < bestd or (d == bestd and best == nil) then best, bestd = k, d end
    end
  end
  return best
end

local function message(path, kw, draft, value)
  local head = (path == "" and "/" or path) .. ": unknown keyword " .. format("%q", kw)
  local other = OTHER[draft]
  if kw == "dependencies" and draft == "2020-12" then
    return head .. ' in draft 2020-12 (use "dependentRequired" for lists of names, "dependentSchemas" for schemas)', nil
  end
  if KNOWN[other][kw] then
    return format("%s in %s (it is a %s keyword)", head, NAME[draft], NAME[other]), nil
  end
  local s = M.suggest(kw, draft)
  if s then return format("%s (did you mean %q?)", head, s), s end
  if type(value) == "table" and not isarr(value) and (value.type ~= nil or value["$ref"] ~= nil) then
    return head .. ' (a property? property schemas go under "properties")', nil
  end
  return head .. " (ignored: unknown keywords are annotations)", nil
end

-- unknown(schema, draft, draft_of) -> list of findings, in schema order
-- (keys sorted). draft: "2020-12" | "07"; draft_of maps a $schema URI
-- (without fragment) to a draft, for subschemas that name their own.
function M.unknown(schema, draft, draft_of)
  local out, seen = {}, {}
  local function walk(node, path, d)
    if type(node) ~= "table" or isarr(node) or seen[node] then return end
    seen[node] = true
    if type(node["$schema"]) == "string" and draft_of then
      d = draft_of[(uri.split(node["$schema"]))] or d
    end
    local known = KNOWN[d]
    local keys = {}
    for k in pairs(node) do keys[#keys + 1] = k end
    sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      local v = node[k]
      local kp = path .. "/" .. uri.escape_token(tostring(k))
      if type(k) ~= "string" then
        -- not a keyword at all (a Lua table with number keys)
        out[#out + 1] = { path = path, keyword = tostring(k), message =
          format("%s: key %s is not a string (is this an array where a schema belongs?)", path == "" and "/" or path, tostring(k)) }
      elseif not known[k] then
        if k:sub(1, 2) ~= "x-" then
          local msg, s = message(path, k, d, v)
          out[#out + 1] = { path = path, keyword = k, suggestion = s, message = msg }
        end
      elseif SUB_ONE[k] then
        walk(v, kp, d)
      elseif SUB_MAP[k] then
        if type(v) == "table" then
          local names = {}
          for name in pairs(v) do names[#names + 1] = name end
          sort(names, function(a, b) return tostring(a) < tostring(b) end)
          for _, name in ipairs(names) do walk(v[name], kp .. "/" .. uri.escape_token(tostring(name)), d) end
        end
      elseif SUB_ARR[k] or (k == "items" and type(v) == "table" and isarr(v)) then
        if type(v) == "table" then
          for i, sub in ipairs(v) do walk(sub, kp .. "/" .. (i - 1), d) end
        end
      elseif k == "items" then
        walk(v, kp, d)
      elseif k == "dependencies" and type(v) == "table" then
        local names = {}
        for name in pairs(v) do names[#names + 1] = name end
        sort(names, function(a, b) return tostring(a) < tostring(b) end)
        for _, name in ipairs(names) do
          local sub = v[name]
          if type(sub) == "table" and not isarr(sub) then
            walk(sub, kp .. "/" .. uri.escape_token(tostring(name)), d)
          end
        end
      end
    end
  end
  walk(schema, "", draft)
  return out
end

return M
