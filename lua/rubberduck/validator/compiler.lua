-- rubberduck.validator.compiler — turns a JSON Schema (draft 2020-12 or
-- draft-07) into Lua source: one local function per subschema, the checks
-- inline in it, errors recorded through E() only on the failure path.
--
-- Shape of the generated chunk (see Validator:source()):
--   * s<N>(v, d) validates v at instance depth d (the path is kept in the
--     stack P[1..d], so the valid path builds no strings);
--   * t<N>(v, d, ev) is the same schema in "tracking" form, marking the
--     properties/items it evaluated in ev (only generated for schemas that
--     unevaluatedProperties/unevaluatedItems depend on);
--   * M > 0 while a branch is tried whose errors nobody wants (anyOf, oneOf,
--     not, if, contains): failing checks then return false at once;
--   * STOP is set once no more errors are wanted (first-error mode, or the
--     bound on all errors was reached).
--
-- Written for LuaJIT's trace compiler, with every schema of a process live:
--   * leaf subschemas (type, enum, bounds, pattern, format...) are written
--     inline in their parent's function (a do ... end block), and store
--     their path segment only when they fail;
--   * the first UNROLL items of an array and keys of an object are checked
--     by written-out steps, so small instances take a path without loops;
--     additionalProperties: false counts the declared properties present
--     and compares with nkeys(v), looking at the keys only when they differ;
--   * messages are built at compile time (runtime.text) but for the part
--     that depends on the instance; the anyOf/oneOf branch an instance aimed
--     at is scored by written-out code;
--   * each validator has its own entry point (the __call of its metatable).

local uri = require "rubberduck.validator.uri"
local regex = require "rubberduck.validator.regex"
local formats = require "rubberduck.validator.formats"
local runtime = require "rubberduck.validator.runtime"
local metaschemas = require "rubberduck.validator.metaschemas"

local M = {}

local type, pairs, ipairs, tostring, format, concat = type, pairs, ipairs, tostring, string.format, table.concat
local sort, huge, next, tonumber = table.sort, math.huge, next, tonumber

local NULL = runtime.NULL
local isarr, is_null = runtime.isarr, runtime.is_null

local D2020, D07 = "2020-12", "07"
M.D2020, M.D07 = D2020, D07

local DRAFT_OF = {
  ["https://json-schema.org/draft/2020-12/schema"] = D2020,
  ["https://json-schema.org/draft/2019-09/schema"] = D2020,
  ["http://json-schema.org/draft-07/schema"] = D07,
  ["http://json-schema.org/draft-06/schema"] = D07,
  ["http://json-schema.org/draft-04/schema"] = D07,
}
M.DRAFT_OF = DRAFT_OF

local VOCAB = "https://json-schema.org/draft/2020-12/vocab/"
-- keywords of the 2020-12 vocabularies that can be switched off by $vocabulary
local KW_VOCAB = {
  type = "validation", enum = "validation", const = "validation", multipleOf = "validation",
  maximum = "validation", exclusiveMaximum = "validation", minimum = "validation",
  exclusiveMinimum = "validation", maxLength = "validation", minLength = "validation",
  pattern = "validation", maxItems = "validation", minItems = "validation",
  uniqueItems = "validation", maxContains = "validation", minContains = "validation",
  maxProperties = "validation", minProperties = "validation", required = "validation",
  dependentRequired = "validation",
  prefixItems = "applicator", items = "applicator", contains = "applicator",
  additionalProperties = "applicator", properties = "applicator", patternProperties = "applicator",
  dependentSchemas = "applicator", propertyNames = "applicator", ["if"] = "applicator",
  ["then"] = "applicator", ["else"] = "applicator", allOf = "applicator", anyOf = "applicator",
  oneOf = "applicator", ["not"] = "applicator",
  unevaluatedItems = "unevaluated", unevaluatedProperties = "unevaluated",
  format = "format",
}

-- keywords whose value is a schema / a map of schemas / an array of schemas
local SUB_ONE = { "additionalProperties", "propertyNames", "not", "if", "then", "else", "contains",
  "additionalItems", "unevaluatedProperties", "unevaluatedItems", "contentSchema" }
local SUB_MAP = { "properties", "patternProperties", "definitions", "$defs", "dependentSchemas" }
local SUB_ARR = { "allOf", "anyOf", "oneOf", "prefixItems" }

local function q(s) return (format("%q", s):gsub("\\\n", "\\n")) end
local function esc(tok) return uri.escape_token(tostring(tok)) end
-- text safe inside a "--" comment of the generated code
local function comment(s)
  return (tostring(s):gsub("%c", function(c) return format("\\%d", c:byte()) end))
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

-- a raised compile error: caught by compile() and turned into nil, message
local CompileError = {}
local function fail(path, msg)
  error(setmetatable({ path = path, msg = msg }, CompileError), 0)
end

local function is_schema(s) return type(s) == "boolean" or (type(s) == "table" and not isarr(s)) end
local function is_int(n) return type(n) == "number" and n % 1 == 0 end

-----------------------------------------------------------------------------
-- Compiler state

local C = {}
C.__index = C

function M.new(opts, store)
  local self = setmetatable({
    opts = opts, store = store,
    resources = {},   -- uri -> { root, draft, vocab }
    anchors = {},     -- "uri#name" -> node
    dyn = {},         -- uri -> { name -> node }
    info = setmetatable({}, { __mode = "k" }), -- node -> { base, res, path, draft }
    fns = {},         -- key -> fn record
    order = {},       -- fn records in creation order
    queue = {},
    K = {}, Kdesc = {},
    nfn = 0,
    dyn_names = {},
  }, C)
  return self
end

-- where a node is, for messages: the pointer inside the root resource, or
-- the absolute URI for nodes of other resources
function C:loc(node, suffix)
  local inf = self.info[node]
  local p = inf and inf.path or ""
  if suffix then p = p .. "/" .. esc(suffix) end
  if inf and inf.res ~= self.root_uri then return inf.res .. "#" .. p end
  return p
end

function C:draft_from(sch, default, path)
  if type(sch) ~= "table" or sch["$schema"] == nil then return default end
  local s = sch["$schema"]
  if type(s) ~= "string" then fail(path .. "/$schema", "must be a string") end
  local base = uri.split(s)
  local d = DRAFT_OF[base]
  if d then return d end
  -- a custom metaschema: its own draft and its $vocabulary
  local meta = self:lookup(base)
  if meta and meta.root and type(meta.root) == "table" then
    local d2 = meta.draft
    local voc = meta.root["$vocabulary"]
    if type(voc) == "table" then
      local vocab = {}
      for k, on in pairs(voc) do
        local name = k:match("^" .. VOCAB:gsub("%p", "%%%0") .. "(.*)$")
        if name and on then vocab[name] = true end
      end
      return d2, vocab
    end
    return d2
  end
  return default
end

-- index a resource: record base URI, path and draft of every subschema,
-- anchors, dynamic anchors and embedded resources
function C:index(root, base, draft, path_prefix)
  local vocab
  if self.force_draft and root == self.root_schema then vocab = nil
  else draft, vocab = self:draft_from(root, draft, path_prefix or "") end
  local function walk(node, base, ptr, draft, vocab, is_root)
    if type(node) ~= "table" or isarr(node) then return end
    if self.info[node] then return end
    if not is_root and node["$schema"] ~= nil and node["$id"] ~= nil then
      draft, vocab = self:draft_from(node, draft, ptr)
    end
    local id = node["$id"]
    if draft == D07 and node["$ref"] ~= nil then id = nil end
    if id ~= nil and type(id) ~= "string" then fail(ptr .. "/$id", "must be a string") end
    if id then
      if draft == D07 and id:sub(1, 1) == "#" then
        self.anchors[base .. id] = node
      else
        local full = uri.resolve(base, id)
        local nofrag, frag = uri.split(full)
        base = nofrag
        if not is_root or not self.resources[base] then
          self.resources[base] = { root = node, draft = draft, vocab = vocab }
        end
        if frag ~= "" and frag:sub(1, 1) ~= "/" then self.anchors[base .. "#" .. frag] = node end
        ptr = ""
      end
    end
    self.info[node] = { base = base, res = base, path = ptr, draft = draft, vocab = vocab }
    local a = node["$anchor"]
    if type(a) == "string" and draft ~= D07 then self.anchors[base .. "#" .. a] = node end
    local da = node["$dynamicAnchor"]
    if type(da) == "string" and draft ~= D07 then
      self.anchors[base .. "#" .. da] = self.anchors[base .. "#" .. da] or node
      self.dyn[base] = self.dyn[base] or {}
      self.dyn[base][da] = node
    end
    if node["$dynamicRef"] ~= nil and draft ~= D07 then self.has_dynref = true end
    for _, k in ipairs(SUB_ONE) do
      if node[k] ~= nil then walk(node[k], base, ptr .. "/" .. esc(k), draft, vocab) end
    end
    for _, k in ipairs(SUB_MAP) do
      local m = node[k]
      if type(m) == "table" then
        for name, sub in pairs(m) do walk(sub, base, ptr .. "/" .. esc(k) .. "/" .. esc(name), draft, vocab) end
      end
    end
    for _, k in ipairs(SUB_ARR) do
      local m = node[k]
      if type(m) == "table" then
        for i, sub in ipairs(m) do walk(sub, base, ptr .. "/" .. k .. "/" .. (i - 1), draft, vocab) end
      end
    end
    local items = node.items
    if type(items) == "table" then
      if isarr(items) then
        for i, sub in ipairs(items) do walk(sub, base, ptr .. "/items/" .. (i - 1), draft, vocab) end
      else
        walk(items, base, ptr .. "/items", draft, vocab)
      end
    end
    local deps = node.dependencies
    if type(deps) == "table" then
      for name, sub in pairs(deps) do
        if type(sub) ~= "table" or not isarr(sub) then walk(sub, base, ptr .. "/dependencies/" .. esc(name), draft, vocab) end
      end
    end
  end
  local nofrag = uri.split(base)
  if not self.resources[nofrag] then self.resources[nofrag] = { root = root, draft = draft, vocab = vocab } end
  if type(root) == "table" then
    walk(root, nofrag, path_prefix or "", draft, vocab, true)
    -- the root's own $id may have named it differently
    local inf = self.info[root]
    if inf and inf.res ~= nofrag then self.resources[nofrag] = self.resources[inf.res] end
  end
  return draft
end

-- find a resource by absolute URI (no fragment), loading it from the store
function C:lookup(u)
  local r = self.resources[u]
  if r then return r end
  local sch = self.store and self.store:get(u)
  if sch == nil then sch = metaschemas[u] end
  if sch == nil then return nil end
  self:index(sch, u, self.default_draft)
  return self.resources[u]
end

-- resolve a reference found in node -> target node, absolute URI, resource uri
function C:resolve(node, ref, path)
  local inf = self.info[node]
  local full = uri.resolve(inf and inf.base or self.root_uri, ref)
  local u, frag = uri.split(full)
  local res = self:lookup(u)
  if not res then fail(path, "cannot resolve " .. q(full) .. ": not in the schema store (no network)") end
  local target
  frag = uri.pct_decode(frag)
  if frag == "" then
    target = res.root
  elseif frag:sub(1, 1) == "/" then
    local toks = uri.pointer_tokens(frag)
    target = res.root
    local tpath = self.info[res.root] and self.info[res.root].path or ""
    for _, tok in ipairs(toks) do
      if type(target) ~= "table" then target = nil; break end
      if isarr(target) then
        local i = tonumber(tok)
        target = i and target[i + 1]
      else
        target = target[tok]
      end
      tpath = tpath .. "/" .. esc(tok)
      if type(target) == "table" and not self.info[target] then
        local pinf = self.info[res.root] or {}
        self.info[target] = { base = pinf.base or u, res = pinf.res or u, path = tpath,
                              draft = res.draft, vocab = res.vocab }
      end
    end
    if target == nil then fail(path, "cannot resolve " .. q(full) .. ": no such location") end
  else
    target = self.anchors[u .. "#" .. frag]
    if target == nil then fail(path, "cannot resolve " .. q(full) .. ": no such anchor") end
  end
  return target, u, frag
end

-----------------------------------------------------------------------------
-- Constants

function C:const(v, desc)
  local K = self.K
  K[#K + 1] = v
  self.Kdesc[#K] = desc
  return "K[" .. #K .. "]"
end

-- literal Lua for a scalar JSON value, or nil when it needs a constant
local function literal(v)
  local t = type(v)
  if t == "string" then return q(v) end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v ~= v or v == huge or v == -huge then return nil end
    if v % 1 == 0 and v > -1e15 and v < 1e15 then return format("%d", v) end
    return format("%.17g", v)
  end
  if is_null(v) then return "NULL" end
  return nil
end

-----------------------------------------------------------------------------
-- Functions

-- the function record for (node, track); generated later from the queue
function C:fn(node, track, path)
  local key = node
  if type(node) == "boolean" then key = tostring(node) .. "@" .. (path or "") end
  local recs = self.fns[key]
  if not recs then recs = {}; self.fns[key] = recs end
  local rec = recs[track and 2 or 1]
  if rec then return rec end
  self.nfn = self.nfn + 1
  local id = self.nfn
  local name = (track and "t" or "s") .. id
  if self.ftable then name = "F[" .. id .. "]" end
  rec = { node = node, track = track, name = name, id = id, path = path, inplace = {} }
  recs[track and 2 or 1] = rec
  self.order[#self.order + 1] = rec
  self.queue[#self.queue + 1] = rec
  return rec
end

-- loops over array items and object keys have their first UNROLL steps
-- written out, so that small instances take a path without loops: LuaJIT
-- cannot put an inner loop in a root trace (a trace that starts at a
-- function entry, as when the validator is called from interpreted code
-- right after a C function such as the JSON decoder)
local UNROLL = 8
M.UNROLL = UNROLL

-- the resource (for dynamic scope) a node belongs to
function C:res_of(node)
  local inf = type(node) == "table" and self.info[node]
  return inf and inf.res
end

-- Lua expression calling the function for sub on inst at depth dexpr
function C:call(sub, inst, dexpr, ev, path)
  if sub == true then return "true" end
  if sub == false then return "false" end
  local rec = self:fn(sub, ev ~= nil, path)
  local cur = self.cur
  cur.callees[rec.name] = true
  if inst == "v" then cur.rec.inplace[#cur.rec.inplace + 1] = rec end
  local args = inst .. ", " .. dexpr .. (ev and (", " .. ev) or "")
  local r = self:res_of(sub)
  if self.has_dynref and r and r ~= cur.res then
    return format("enter(%s, %s, %s)", q(r), rec.name, args)
  end
  return rec.name .. "(" .. args .. ")"
end

-----------------------------------------------------------------------------
-- Emission helpers

function C:line(s)
  local b = self.buf
  b[#b + 1] = string.rep("  ", self.ind) .. s
end
function C:open(s) self:line(s); self.ind = self.ind + 1 end
function C:close(s) self.ind = self.ind - 1; self:line(s or "end") end

-- this schema's own check failed: record an error at depth dexpr
-- targs: compile-time values the message is built from (runtime.text);
-- rargs: Lua expressions for the part that depends on the instance; seg:
-- the last path segment (P[dexpr]), when it is only set on failure (leaf
-- checks inline in their parent: no store on the valid path)
function C:fail(kw, targs, rargs, dexpr, seg)
  local sp = self:loc(self.cur.node, kw)
  local text, how = runtime.text(kw, targs and targs[1], targs and targs[2])
  self:line("if M > 0 then return false end")
  seg = seg or self.seg
  if seg then self:line(format("P[%s] = %s", dexpr or "d", seg)) end
  self:line(format("ok = false; if E(%s, %s, %s, %s%s) then return false end",
    dexpr or "d", q(kw), q(sp), q(text), how and (", " .. how .. ", " .. rargs) or ""))
end

-- a lower bound that more input may still meet (minItems, minProperties,
-- minContains): pending in partial mode, else a failure
function C:fail_or_pend(kw, targs, rargs)
  local sp = self:loc(self.cur.node, kw)
  local text, how = runtime.text(kw, targs and targs[1], targs and targs[2])
  self:open("if PARTIAL then")
  if self.seg then self:line(format("P[d] = %s", self.seg)) end
  self:line(format("pend(d, %s, %s, %s%s)", q(kw), q(sp), q(text), how and (", " .. how .. ", " .. rargs) or ""))
  self.ind = self.ind - 1
  self:open("else")
  self:fail(kw, targs, rargs)
  self:close()
end

-- a callee failed and recorded its own errors
function C:child_failed()
  self:line("if M > 0 or STOP then return false end")
  self:line("ok = false")
end

-- keywords a subschema may have and still be written inline in its
-- parent's function (checks on one value, and annotations)
local INLINE_OK = {
  type = true, enum = true, const = true, minimum = true, maximum = true, exclusiveMinimum = true,
  exclusiveMaximum = true, multipleOf = true, minLength = true, maxLength = true, pattern = true,
  format = true, title = true, description = true, default = true, examples = true,
  ["$comment"] = true, deprecated = true, readOnly = true, writeOnly = true,
}

function C:inlinable(sub)
  if self.noinline or type(sub) ~= "table" or sub == self.cur.node or not self.info[sub] then return false end
  for k in pairs(sub) do
    if not INLINE_OK[k] then return false end
  end
  return next(sub) ~= nil
end

-- apply sub to a child instance (or in place): emits the check. A leaf
-- subschema is written inline (no call); others get a function.
--   seg: the path segment of the child (an expression for P[d + 1]), nil
--   when applied in place
function C:apply(sub, inst, dexpr, kw, ev, path, seg)
  if sub == true then return end
  if sub == false then
    self:fail(kw, nil, nil, dexpr, seg)
    return
  end
  if ev == nil and self:inlinable(sub) then
    local outer = self.seg
    self.seg = seg
    self:gen({ node = sub, track = false, path = path }, inst, dexpr)
    self.seg = outer
    return
  end
  if seg then self:line(format("P[d + 1] = %s", seg)) end
  self:open("if not " .. self:call(sub, inst, dexpr, ev, path) .. " then")
  self:child_failed()
  self:close()
end

-----------------------------------------------------------------------------
-- Keyword checks at compile time

local function need(cond, path, msg) if not cond then fail(path, msg) end end

local function need_number(s, kw, path)
  if s[kw] ~= nil then need(type(s[kw]) == "number", path .. "/" .. kw, "must be a number") end
end
local function need_count(s, kw, path)
  if s[kw] ~= nil then
    need(is_int(s[kw]) and s[kw] >= 0, path .. "/" .. kw, "must be a non-negative integer")
  end
end
local function need_schema(v, path)
  need(is_schema(v), path, "must be a schema (an object or a boolean)")
end
local function need_map(s, kw, path)
  local m = s[kw]
  if m == nil then return end
  need(type(m) == "table" and (next(m) == nil or not isarr(m)), path .. "/" .. kw, "must be an object")
  for k, sub in pairs(m) do need_schema(sub, path .. "/" .. kw .. "/" .. esc(k)) end
end
local function need_array(s, kw, path, nonempty)
  local m = s[kw]
  if m == nil then return end
  need(type(m) == "table" and (isarr(m) or next(m) == nil), path .. "/" .. kw, "must be an array")
  if nonempty then need(#m > 0, path .. "/" .. kw, "must be a non-empty array") end
  for i, sub in ipairs(m) do need_schema(sub, path .. "/" .. kw .. "/" .. (i - 1)) end
end
local function need_strings(v, path)
  need(type(v) == "table" and (isarr(v) or next(v) == nil), path, "must be an array of strings")
  for i, x in ipairs(v) do need(type(x) == "string", path .. "/" .. (i - 1), "must be a string") end
end

local TYPES = { null = true, boolean = true, object = true, array = true, number = true, integer = true, string = true }

function C:check_keywords(s, path, draft)
  need_number(s, "minimum", path); need_number(s, "maximum", path)
  if draft ~= D07 or type(s.exclusiveMinimum) ~= "boolean" then need_number(s, "exclusiveMinimum", path) end
  if draft ~= D07 or type(s.exclusiveMaximum) ~= "boolean" then need_number(s, "exclusiveMaximum", path) end
  if s.multipleOf ~= nil then
    need(type(s.multipleOf) == "number" and s.multipleOf > 0, path .. "/multipleOf", "must be a number > 0")
  end
  for _, kw in ipairs { "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
                        "minContains", "maxContains" } do
    need_count(s, kw, path)
  end
  if s.type ~= nil then
    local t = s.type
    if type(t) == "string" then need(TYPES[t], path .. "/type", "unknown type " .. q(t))
    else
      need(type(t) == "table" and isarr(t), path .. "/type", "must be a type name or an array of type names")
      for i, x in ipairs(t) do need(TYPES[x], path .. "/type/" .. (i - 1), "unknown type " .. tostring(x)) end
    end
  end
  if s.required ~= nil then need_strings(s.required, path .. "/required") end
  if s.enum ~= nil then need(type(s.enum) == "table" and (isarr(s.enum) or next(s.enum) == nil), path .. "/enum", "must be an array") end
  if s.uniqueItems ~= nil then need(type(s.uniqueItems) == "boolean", path .. "/uniqueItems", "must be a boolean") end
  if s.pattern ~= nil then need(type(s.pattern) == "string", path .. "/pattern", "must be a string") end
  if s.format ~= nil then need(type(s.format) == "string", path .. "/format", "must be a string") end
  need_map(s, "properties", path); need_map(s, "patternProperties", path)
  need_map(s, "$defs", path); need_map(s, "definitions", path)
  need_array(s, "allOf", path, true); need_array(s, "anyOf", path, true); need_array(s, "oneOf", path, true)
  for _, kw in ipairs { "additionalProperties", "propertyNames", "not", "if", "then", "else", "contains",
                        "unevaluatedProperties", "unevaluatedItems", "additionalItems" } do
    if s[kw] ~= nil then need_schema(s[kw], path .. "/" .. kw) end
  end
  if draft == D07 then
    if s.items ~= nil and not is_schema(s.items) then need_array(s, "items", path) end
    if s.dependencies ~= nil then
      need(type(s.dependencies) == "table", path .. "/dependencies", "must be an object")
      for k, x in pairs(s.dependencies) do
        local p = path .. "/dependencies/" .. esc(k)
        if type(x) == "table" and isarr(x) then need_strings(x, p) else need_schema(x, p) end
      end
    end
  else
    if s.items ~= nil then need_schema(s.items, path .. "/items") end
    need_array(s, "prefixItems", path)
    need_map(s, "dependentSchemas", path)
    if s.dependentRequired ~= nil then
      need(type(s.dependentRequired) == "table", path .. "/dependentRequired", "must be an object")
      for k, x in pairs(s.dependentRequired) do need_strings(x, path .. "/dependentRequired/" .. esc(k)) end
    end
  end
  for _, kw in ipairs { "$ref", "$dynamicRef", "$anchor", "$dynamicAnchor" } do
    if s[kw] ~= nil then need(type(s[kw]) == "string", path .. "/" .. kw, "must be a string") end
  end
end

-----------------------------------------------------------------------------
-- Code generation for one schema

local TYPE_COND = {
  null = "v == NULL", boolean = 'tv == "boolean"', string = 'tv == "string"', number = 'tv == "number"',
  integer = '(tv == "number" and v % 1 == 0)', object = "obj", array = "arr",
}

-- discriminator summary of a branch, for picking the branch an instance aimed at
function C:discriminator(sub)
  local d = { consts = {}, required = {} }
  local seen = 0
  while type(sub) == "table" and seen < 8 do
    seen = seen + 1
    if sub.type ~= nil and not d.types then
      d.types = {}
      if type(sub.type) == "string" then d.types[sub.type] = true
      else for _, t in ipairs(sub.type) do d.types[t] = true end end
    end
    if type(sub.properties) == "table" then
      for k, ps in pairs(sub.properties) do
        if type(ps) == "table" then
          if ps.const ~= nil then d.consts[#d.consts + 1] = { k, ps.const }
          elseif type(ps.enum) == "table" and #ps.enum == 1 then d.consts[#d.consts + 1] = { k, ps.enum[1] } end
        end
      end
    end
    if type(sub.required) == "table" then
      for _, r in ipairs(sub.required) do d.required[#d.required + 1] = r end
    end
    if sub.const ~= nil then d.value_consts = { sub.const } end
    if type(sub["$ref"]) == "string" then
      local ok, target = pcall(self.resolve, self, sub, sub["$ref"], "")
      sub = ok and target or nil
    else
      sub = nil
    end
  end
  sort(d.consts, function(a, b) return a[1] < b[1] end)
  return d
end

-- gen(rec): the function for rec; gen(rec, inst, dexpr): rec.node's checks
-- inline, in a do ... end block of the current function, on the instance
-- inst at depth dexpr
function C:gen(rec, inst, dexpr)
  local node = rec.node
  local track = rec.track
  local inf = type(node) == "table" and self.info[node] or { path = rec.path or "", res = self.root_uri, draft = self.default_draft }
  if type(node) == "table" and not self.info[node] then
    self.info[node] = inf
  end
  local inline = inst ~= nil
  local outer_cur, outer_mark = self.cur, self.mark
  if inline then
    self.cur = { node = node, res = inf.res, callees = outer_cur.callees, rec = outer_cur.rec }
  else
    self.cur = { node = node, res = inf.res, callees = {}, rec = rec }
    self.buf, self.ind = {}, 1
  end
  local header = format("-- %s%s", self:loc(node) == "" and "#" or comment(self:loc(node)), track and " (tracking evaluated properties/items)" or "")
  if type(node) == "boolean" then
    self.ind = 0
    self:line(header)
    self:open(format("%s = function(v, d%s)", rec.name, track and ", ev" or ""))
    if node then self:line("return true")
    else
      self:line("if M > 0 then return false end")
      self:line(format("E(d, \"false\", %s, %s)", q(self:loc(node)), q(runtime.text("false"))))
      self:line("return false")
    end
    self:close()
    return self.buf
  end
  local draft = inf.draft or self.default_draft
  local vocab = inf.vocab
  local s = node
  local path = self:loc(node)
  self:check_keywords(s, path, draft)

  local function on(kw)
    if s[kw] == nil then return false end
    if vocab and draft == D2020 then
      local v = KW_VOCAB[kw]
      if v and v ~= "format" and not vocab[v] then return false end
    end
    return true
  end

  local refonly = draft == D07 and s["$ref"] ~= nil
  local uneval = draft == D2020 and not refonly and (on("unevaluatedProperties") or on("unevaluatedItems"))
  local mark = track or uneval     -- do we record evaluated properties/items here?
  local evx = mark and "ev" or nil -- tracking argument passed to in-place callees
  self.mark = mark

  if inline then
    self:open(format("do %s", header))
    self:line(format("local v, d = %s, %s", inst, dexpr))
  else
    self.ind = 0
    self:line(header)
    self:open(format("%s = function(v, d%s)", rec.name, track and ", evo" or ""))
    self:line("local ok = true")
  end
  if uneval then self:line("local ev = {}")
  elseif track then self:line("local ev = evo") end

  -- which parts of the data model does this schema need?
  local needs_tv, needs_kind = false, false
  local num_kw = not refonly and (on("minimum") or on("maximum") or on("exclusiveMinimum") or on("exclusiveMaximum") or on("multipleOf"))
  local str_kw = not refonly and (on("minLength") or on("maxLength") or on("pattern") or (s.format ~= nil and self.opts.formats == "assert" and formats.checkers[s.format] ~= nil))
  local arr_kw = not refonly and (on("minItems") or on("maxItems") or on("uniqueItems") or on("items") or on("prefixItems")
    or on("contains") or on("additionalItems") or on("unevaluatedItems"))
  local obj_kw = not refonly and (on("required") or on("minProperties") or on("maxProperties") or on("properties")
    or on("patternProperties") or on("additionalProperties") or on("propertyNames") or on("dependentRequired")
    or on("dependentSchemas") or on("dependencies") or on("unevaluatedProperties"))
  local type_kinds = false
  if not refonly and on("type") then
    local ts = type(s.type) == "string" and { s.type } or s.type
    for _, t in ipairs(ts) do if t == "object" or t == "array" then type_kinds = true end end
  end
  needs_tv = num_kw or str_kw or arr_kw or obj_kw or (not refonly and on("type"))
  needs_kind = arr_kw or obj_kw or type_kinds
  if needs_tv then self:line("local tv = type(v)") end
  if needs_kind then
    self:line('local arr = tv == "table" and isarr(v)')
    self:line('local obj = tv == "table" and not arr')
  end

  if refonly then
    self:apply(self:ref_target(s, "$ref", path), "v", "d", "$ref", evx)
  else
    -- type
    if on("type") then
      local ts = type(s.type) == "string" and { s.type } or s.type
      local conds, names = {}, {}
      for _, t in ipairs(ts) do
        conds[#conds + 1] = TYPE_COND[t]
        names[#names + 1] = t
      end
      if #conds > 0 then
        local cond = concat(conds, " or ")
        if #conds > 1 or cond:find(" ", 1, true) then cond = "(" .. cond .. ")" end
        self:open("if not " .. cond .. " then")
        self:fail("type", { concat(names, " or ") }, "v")
        self:close()
      end
    end
    -- enum / const
    if on("enum") then self:gen_enum(s.enum) end
    if on("const") then
      local lit = literal(s.const)
      if lit then self:open("if v ~= " .. lit .. " then")
      else self:open("if not deq(v, " .. self:const(s.const, "const") .. ") then") end
      self:fail("const", { s.const })
      self:close()
    end
    if num_kw then self:gen_number(s, on, draft) end
    if str_kw then self:gen_string(s, on) end
    if arr_kw then self:gen_array(s, on, draft, mark) end
    if obj_kw then self:gen_object(s, on, draft, mark) end
    -- in-place applicators
    if s["$ref"] ~= nil then
      self:apply(self:ref_target(s, "$ref", path), "v", "d", "$ref", evx)
    end
    if s["$dynamicRef"] ~= nil and draft == D2020 then self:gen_dynref(s, path, evx) end
    if on("allOf") then
      for i, sub in ipairs(s.allOf) do self:apply(sub, "v", "d", "allOf", evx, path .. "/allOf/" .. (i - 1)) end
    end
    if on("anyOf") then self:gen_anyof(s.anyOf, "anyOf", path, evx) end
    if on("oneOf") then self:gen_anyof(s.oneOf, "oneOf", path, evx) end
    if on("not") then self:gen_not(s["not"]) end
    if on("if") and (s["then"] ~= nil or s["else"] ~= nil or evx) then self:gen_if(s, evx) end
    if uneval then self:gen_uneval(s, on, track) end
  end
  if inline then
    self:close()
    self.cur, self.mark = outer_cur, outer_mark
    return
  end
  self:line("return ok")
  self:close()
  local n = 0
  for _ in pairs(self.cur.callees) do n = n + 1 end
  if n > 40 then self.too_many_upvalues = true end
  return self.buf
end

function C:ref_target(s, kw, path)
  local target = self:resolve(s, s[kw], path .. "/" .. esc(kw))
  return target
end

function C:gen_enum(enum)
  local lits, all_lit = {}, true
  for _, x in ipairs(enum) do
    local l = literal(x)
    if not l then all_lit = false; break end
    lits[#lits + 1] = l
  end
  local kconst
  if #enum == 0 then
    self:open("do")
  elseif all_lit and #lits <= 3 then
    local parts = {}
    for i, l in ipairs(lits) do parts[i] = "v ~= " .. l end
    self:open("if " .. concat(parts, " and ") .. " then")
  elseif all_lit then
    local set = {}
    for _, x in ipairs(enum) do set[x] = true end
    self:open("if not " .. self:const(set, "enum set") .. "[v] then")
  else
    kconst = self:const(enum, "enum values")
    self:open("local found = false")
    self.ind = self.ind - 1
    self:open("for i = 1, #" .. kconst .. " do")
    self:line("if deq(v, " .. kconst .. "[i]) then found = true; break end")
    self:close()
    self:open("if not found then")
  end
  self:fail("enum", { enum })
  self:close()
end

function C:gen_number(s, on, draft)
  self:open('if tv == "number" then')
  local function cmp(kw, op, lim)
    self:open(format("if v %s %s then", op, literal(lim) or self:const(lim, kw)))
    self:fail(kw, { lim }, "v")
    self:close()
  end
  if draft == D07 and type(s.exclusiveMinimum) == "boolean" then
    if on("minimum") then cmp(s.exclusiveMinimum and "exclusiveMinimum" or "minimum", s.exclusiveMinimum and "<=" or "<", s.minimum) end
  else
    if on("minimum") then cmp("minimum", "<", s.minimum) end
    if on("exclusiveMinimum") then cmp("exclusiveMinimum", "<=", s.exclusiveMinimum) end
  end
  if draft == D07 and type(s.exclusiveMaximum) == "boolean" then
    if on("maximum") then cmp(s.exclusiveMaximum and "exclusiveMaximum" or "maximum", s.exclusiveMaximum and ">=" or ">", s.maximum) end
  else
    if on("maximum") then cmp("maximum", ">", s.maximum) end
    if on("exclusiveMaximum") then cmp("exclusiveMaximum", ">=", s.exclusiveMaximum) end
  end
  if on("multipleOf") then
    local m = literal(s.multipleOf) or self:const(s.multipleOf, "multipleOf")
    if is_int(s.multipleOf) then
      self:open(format("if v %% %s ~= 0 then", m))
    else
      self:line(format("local q = v / %s", m))
      self:open("if q % 1 ~= 0 and not (abs(q - floor(q + 0.5)) < 1e-9) then")
    end
    self:fail("multipleOf", { s.multipleOf }, "v")
    self:close()
  end
  self:close()
end

function C:gen_string(s, on)
  self:open('if tv == "string" then')
  if on("minLength") or on("maxLength") then
    self:line("local n = #v")
    -- the code point count is needed only when the byte count does not
    -- decide; then a regex ("at least l code points", no loop in the trace)
    -- settles the valid case, and ulen() confirms a failure
    if on("minLength") then
      local l = s.minLength
      local rx = self:atleast(l)
      self:open(format("if n < %d or (n < %d and %sulen(v) < %d) then", l, l * 4,
        rx and format("%s(v) < 0 and ", rx) or "", l))
      self:fail("minLength", { l }, "v")
      self:close()
    end
    if on("maxLength") then
      local l = s.maxLength
      local rx = self:atleast(l + 1)
      self:open(format("if n > %d and %sulen(v) > %d then", l,
        rx and format("%s(v) ~= -1 and ", rx) or "", l))
      self:fail("maxLength", { l }, "v")
      self:close()
    end
  end
  if on("pattern") then
    local re, err = regex.compile(s.pattern)
    if not re then fail(self:loc(self.cur.node, "pattern"), err) end
    local k = self:const(re, "/" .. s.pattern .. "/")
    self:open(format("if not %s(v) then -- /%s/", k, comment(s.pattern)))
    self:fail("pattern", { s.pattern }, "v")
    self:close()
  end
  if s.format ~= nil and self.opts.formats == "assert" and formats.checkers[s.format] then
    local k = self:const(formats.checkers[s.format], "format " .. s.format)
    self:open(format("if not %s(v) then -- format %s", k, comment(s.format)))
    self:fail("format", { s.format }, "v")
    self:close()
  end
  self:close()
end

-- a constant holding rc(s) for "s has at least l code points" (as ulen
-- counts them: bytes that are not UTF-8 continuation bytes), or nil
function C:atleast(l)
  if l < 1 or l > 256 then return nil end
  self.atleast_k = self.atleast_k or {}
  if self.atleast_k[l] then return self.atleast_k[l] end
  local rc = regex.raw("^[\\x80-\\xbf]*+(?:[^\\x80-\\xbf][\\x80-\\xbf]*+){" .. l .. "}")
  local k = rc and self:const(rc, "at least " .. l .. " code points")
  self.atleast_k[l] = k
  return k
end

function C:gen_array(s, on, draft, mark)
  local path = self:loc(self.cur.node)
  self:open("if arr then")
  self:line("local n = #v")
  if on("minItems") then
    self:open(format("if n < %d then", s.minItems)); self:fail_or_pend("minItems", { s.minItems }, "n"); self:close()
  end
  if on("maxItems") then
    self:open(format("if n > %d then", s.maxItems)); self:fail("maxItems", { s.maxItems }, "n"); self:close()
  end
  if on("uniqueItems") and s.uniqueItems then
    self:open("if n > 1 then")
    self:line("local i, j = uniq(v)")
    self:open("if i then"); self:fail("uniqueItems", nil, "i, j"); self:close()
    self:close()
  end
  -- positional items and the rest
  local prefix, rest, rest_kw
  if draft == D07 then
    if type(s.items) == "table" and isarr(s.items) then
      prefix = s.items; rest = s.additionalItems; rest_kw = "additionalItems"
    elseif s.items ~= nil then
      rest = s.items; rest_kw = "items"
    end
  else
    if on("prefixItems") then prefix = s.prefixItems end
    if on("items") then rest = s.items; rest_kw = "items" end
  end
  local start = 1
  if prefix and #prefix > 0 then
    local pkw = draft == D07 and "items" or "prefixItems"
    for i, sub in ipairs(prefix) do
      if sub ~= true then
        self:open(format("if n >= %d then", i))
        self:apply(sub, "v[" .. i .. "]", "d + 1", pkw, nil, path .. "/" .. pkw .. "/" .. (i - 1), tostring(i))
        self:close()
      end
    end
    if mark then
      self:line(format("for i = 1, n < %d and n or %d do ev[i] = true end", #prefix, #prefix))
    end
    start = #prefix + 1
  end
  if rest ~= nil then
    if rest ~= true then
      -- nested, so that a short array costs one failed test
      local unroll = self.unroll or UNROLL
      for i = start, start + unroll - 1 do
        self:open(format("if n >= %d then", i))
        self:apply(rest, "v[" .. i .. "]", "d + 1", rest_kw, nil, path .. "/" .. rest_kw, tostring(i))
      end
      self:open(format("for i = %d, n do", start + unroll))
      self:apply(rest, "v[i]", "d + 1", rest_kw, nil, path .. "/" .. rest_kw, "i")
      self:close()
      for _ = 1, unroll do self:close() end
    end
    if mark then self:line(format("for i = %d, n do ev[i] = true end", start)) end
  end
  if on("contains") then
    local min, max = 1, nil
    if draft == D2020 then
      if on("minContains") then min = s.minContains end
      if on("maxContains") then max = s.maxContains end
    end
    local sub = s.contains
    self:line("local c = 0")
    if sub == true then
      self:line("c = n")
      if mark then self:line("for i = 1, n do ev[i] = true end") end
    elseif sub ~= false then
      self:line("M = M + 1")
      self:open("for i = 1, n do")
      self:line("P[d + 1] = i")
      self:open("if " .. self:call(sub, "v[i]", "d + 1", nil, path .. "/contains") .. " then")
      self:line("c = c + 1")
      if mark then self:line("ev[i] = true") end
      self:close()
      self:close()
      self:line("M = M - 1")
    end
    if min > 0 then
      self:open(format("if c < %d then", min))
      self:fail_or_pend(draft == D2020 and on("minContains") and "minContains" or "contains", { min }, "c")
      self:close()
    end
    if max then
      self:open(format("if c > %d then", max))
      self:fail("maxContains", { max }, "c")
      self:close()
    end
  end
  self:close()
end

function C:gen_object(s, on, draft, mark)
  local path = self:loc(self.cur.node)
  self:open("if obj then")
  if on("required") then
    for _, name in ipairs(s.required) do
      self:open(format("if v[%s] == nil then", q(name)))
      self:line(format("if PARTIAL then pend(d, \"required\", %s, %s) else", q(self:loc(self.cur.node, "required")),
        q(runtime.text("required", name))))
      self.ind = self.ind + 1
      self:fail("required", { name })
      self.ind = self.ind - 1
      self:line("end")
      self:close()
    end
  end
  if on("minProperties") or on("maxProperties") then
    self:line("local c = nkeys(v)")
    if on("minProperties") then
      self:open(format("if c < %d then", s.minProperties)); self:fail_or_pend("minProperties", { s.minProperties }, "c"); self:close()
    end
    if on("maxProperties") then
      self:open(format("if c > %d then", s.maxProperties)); self:fail("maxProperties", { s.maxProperties }, "c"); self:close()
    end
  end
  -- dependentRequired (2020-12) / dependencies (draft-07)
  local depreq, depsch = {}, {}
  if draft == D2020 then
    if on("dependentRequired") then for k, names in pairs(s.dependentRequired) do depreq[k] = names end end
    if on("dependentSchemas") then for k, sub in pairs(s.dependentSchemas) do depsch[k] = { sub, "dependentSchemas" } end end
  elseif type(s.dependencies) == "table" then
    for k, x in pairs(s.dependencies) do
      if type(x) == "table" and (isarr(x) or next(x) == nil and false) then depreq[k] = x
      else depsch[k] = { x, "dependencies" } end
    end
  end
  for _, k in ipairs(sorted_keys(depreq)) do
    if #depreq[k] > 0 then
      self:open(format("if v[%s] ~= nil then", q(k)))
      for _, name in ipairs(depreq[k]) do
        self:open(format("if v[%s] == nil then", q(name)))
        local dkw = draft == D07 and "dependencies" or "dependentRequired"
        self:line(format("if PARTIAL then pend(d, %s, %s, %s) else", q(dkw), q(self:loc(self.cur.node, dkw)),
          q(runtime.text("required", name))))
        self.ind = self.ind + 1
        self:fail(draft == D07 and "dependencies" or "dependentRequired", { name, k })
        self.ind = self.ind - 1
        self:line("end")
        self:close()
      end
      self:close()
    end
  end
  -- properties
  local props = on("properties") and s.properties or {}
  local pkeys = sorted_keys(props)
  local pats = on("patternProperties") and s.patternProperties or {}
  local patkeys = sorted_keys(pats)
  local addl, pnames
  if on("additionalProperties") then addl = s.additionalProperties end
  if on("propertyNames") then pnames = s.propertyNames end
  -- additionalProperties: false alone: count the declared properties
  -- present, and look at the keys only when the object has more keys than
  -- that (nkeys), so the valid path has no loop
  local counted = addl == false and #patkeys == 0 and (pnames == nil or pnames == true) and not mark
  if counted then self:line("local kc = 0") end
  local declared = false
  for _, k in ipairs(pkeys) do
    local sub = props[k]
    local has_default = self.opts.defaults and type(sub) == "table" and sub.default ~= nil
    if sub ~= true or mark or has_default then
      if not declared then self:line("local x"); declared = true end
      self:line(format("x = v[%s]", q(k)))
      if has_default then
        local lit = literal(sub.default)
        self:open("if x == nil and M == 0 then")
        self:line(format("x = %s; v[%s] = x", lit or ("copy(" .. self:const(sub.default, "default") .. ")"), q(k)))
        self:close()
      end
      self:open("if x ~= nil then")
      if counted then self:line("kc = kc + 1") end
      if mark then self:line(format("ev[%s] = true", q(k))) end
      if sub ~= true then
        self:apply(sub, "x", "d + 1", "properties", nil, path .. "/properties/" .. esc(k), q(k))
      end
      self:close()
    elseif counted then
      self:line(format("if v[%s] ~= nil then kc = kc + 1 end", q(k)))
    end
  end
  -- patternProperties / additionalProperties / propertyNames: one pass over
  -- the keys, its first UNROLL steps unrolled (next(v, k)) so that small
  -- objects need no loop
  if #patkeys > 0 or (addl ~= nil and (addl ~= true or mark)) or (pnames ~= nil and pnames ~= true) then
    local need_addl = addl ~= nil and (addl ~= true or mark)
    if counted then
      self:open("if nkeys(v) ~= kc then")
    else
      self:open("do")
    end
    self:line("local k, x = next(v)")
    local body_start = #self.buf
    local body_ind = self.ind
    self:open("if k ~= nil then")
    if pnames ~= nil and pnames ~= true then
      if pnames == false then
        self:fail("propertyNames", nil, "k", "d + 1", "k")
      else
        self:apply(pnames, "k", "d + 1", "propertyNames", nil, path .. "/propertyNames", "k")
      end
    end
    if need_addl and #patkeys > 0 then self:line("local known = false") end
    for _, pk in ipairs(patkeys) do
      local re, err = regex.compile(pk)
      if not re then fail(path .. "/patternProperties/" .. esc(pk), err) end
      local kre = self:const(re, "/" .. pk .. "/")
      self:open(format("if %s(k) then -- /%s/", kre, comment(pk)))
      if need_addl then self:line("known = true") end
      if mark then self:line("ev[k] = true") end
      if pats[pk] ~= true then
        self:apply(pats[pk], "x", "d + 1", "patternProperties", nil, path .. "/patternProperties/" .. esc(pk), "k")
      end
      self:close()
    end
    if need_addl then
      local cond
      if #pkeys == 0 then cond = "not known"
      elseif #pkeys <= 8 then
        local parts = {}
        for i, k in ipairs(pkeys) do parts[i] = "k ~= " .. q(k) end
        cond = "not known and " .. concat(parts, " and ")
      else
        local set = {}
        for _, k in ipairs(pkeys) do set[k] = true end
        cond = "not known and not " .. self:const(set, "properties") .. "[k]"
      end
      if #patkeys == 0 then
        cond = cond == "not known" and "true" or cond:gsub("^not known and ", "")
      end
      self:open("if " .. cond .. " then")
      if mark then self:line("ev[k] = true") end
      if addl ~= true then
        self:apply(addl, "x", "d + 1", "additionalProperties", nil, path .. "/additionalProperties", "k")
      end
      self:close()
    end
    do
      self:line("k, x = next(v, k)")
      self:close()
      -- the same body UNROLL - 1 more times, then as a loop for the rest
      local body = {}
      for i = body_start + 1, #self.buf do body[#body + 1] = self.buf[i] end
      for _ = 2, self.unroll or UNROLL do
        for _, l in ipairs(body) do self.buf[#self.buf + 1] = l end
      end
      local pad = string.rep("  ", body_ind)
      for i, l in ipairs(body) do
        if i == 1 then self.buf[#self.buf + 1] = pad .. "while k ~= nil do"
        else self.buf[#self.buf + 1] = l end
      end
      self:close()
    end
  end
  -- dependentSchemas / schema dependencies: in place
  for _, k in ipairs(sorted_keys(depsch)) do
    local sub, kw = depsch[k][1], depsch[k][2]
    if sub ~= true then
      self:open(format("if v[%s] ~= nil then", q(k)))
      self:apply(sub, "v", "d", kw, self.mark and "ev" or nil, path .. "/" .. kw .. "/" .. esc(k))
      self:close()
    end
  end
  self:close()
end

function C:gen_dynref(s, path, evx)
  local ref = s["$dynamicRef"]
  local target, u, frag = self:resolve(s, ref, path .. "/$dynamicRef")
  -- dynamic only when the fragment is a plain name that the static target's
  -- resource declares as a $dynamicAnchor
  local dynamic = frag ~= "" and frag:sub(1, 1) ~= "/" and self.dyn[u] and self.dyn[u][frag] ~= nil
  if not dynamic then
    self:apply(target, "v", "d", "$dynamicRef", evx)
    return
  end
  self.dyn_names[frag] = true
  if evx then self.dyn_track = true end
  local rec = self:fn(target, evx ~= nil)
  self.cur.callees[rec.name] = true
  self:line(format("local f, fr = dynamic(%s, %s)", evx and "DYNT" or "DYN", q(frag)))
  self:line(format("if not f then f, fr = %s, %s end", rec.name, q(self:res_of(target) or u)))
  self:open(format("if not enter(fr, f, v, d%s) then", evx and ", ev" or ""))
  self:child_failed()
  self:close()
end

function C:gen_not(sub)
  if sub == false then return end
  if sub == true then
    self:fail("not")
    return
  end
  self:line("M = M + 1")
  self:line("local pn = PN")
  self:line("local r = " .. self:call(sub, "v", "d", nil, self:loc(self.cur.node, "not")))
  self:line("M = M - 1")
  self:open("if r and PN == pn then")
  self:fail("not")
  self:close()
end

function C:gen_if(s, evx)
  local path = self:loc(self.cur.node)
  self:open("do")
  self:line("M = M + 1")
  self:line("local pn = PN")
  if evx then
    self:line("local t = {}")
    self:line("local c = " .. self:call(s["if"], "v", "d", "t", path .. "/if"))
    self:line("M = M - 1")
    self:line("if c then for k in pairs(t) do ev[k] = true end end")
  else
    self:line("local c = " .. self:call(s["if"], "v", "d", nil, path .. "/if"))
    self:line("M = M - 1")
  end
  -- partial mode: an "if" that holds only because of pendings decides
  -- nothing yet, so neither branch applies
  self:line("local open = c and PN ~= pn")
  if s["then"] ~= nil and s["then"] ~= true then
    self:open("if c and not open then")
    self:apply(s["then"], "v", "d", "then", evx, path .. "/then")
    self:close()
  end
  if s["else"] ~= nil and s["else"] ~= true then
    self:open("if not c and not open then")
    self:apply(s["else"], "v", "d", "else", evx, path .. "/else")
    self:close()
  end
  self:close()
end

-- anyOf / oneOf: try the branches muted; on failure re-run the branch the
-- instance aimed at (by const/required/type discriminators) to report it
function C:gen_anyof(list, kw, path, evx)
  local n = #list
  local disc = {}
  self:open("do")
  self:line("local m, first = 0, 0")
  -- partial mode: every branch is tried; one that passes with pendings is
  -- viable (pv[i]) but not complete. A complete branch settles anyOf, and
  -- counts for oneOf; with viable branches only, nothing is wrong yet, and
  -- the pendings of the branch aimed at are reported below.
  self:line("local pv")
  self:open("if PARTIAL then")
  self:line("M = M + 1")
  self:line("local pn, mc = PN, 0")
  self:line("pv = {}")
  for i, sub in ipairs(list) do
    local bp = path .. "/" .. kw .. "/" .. (i - 1)
    if evx then
      self:line("local t" .. i .. " = {}")
      self:open("if " .. self:call(sub, "v", "d", "t" .. i, bp) .. " then")
      self:line(format("for k in pairs(t%d) do ev[k] = true end", i))
    else
      self:open("if " .. self:call(sub, "v", "d", nil, bp) .. " then")
    end
    self:line(format("m = m + 1; if PN == pn then mc = mc + 1 else pv[%d] = true end", i))
    self:close()
    self:line("pn = PN")
  end
  self:line("M = M - 1")
  self:line(kw == "anyOf" and "if mc > 0 then pv = nil elseif m > 0 then m = 1 end"
    or "if mc > 0 then pv = nil; m = mc elseif m > 0 then m = 1 end")
  self.ind = self.ind - 1
  self:open("else")
  self:line("M = M + 1")
  for i, sub in ipairs(list) do
    local bp = path .. "/" .. kw .. "/" .. (i - 1)
    if evx then
      self:line("local t" .. i .. " = {}")
      self:open("if " .. self:call(sub, "v", "d", "t" .. i, bp) .. " then")
      self:line(format("for k in pairs(t%d) do ev[k] = true end", i))
    else
      local cond = self:call(sub, "v", "d", nil, bp)
      if kw == "anyOf" then
        self:open("if m == 0 and " .. cond .. " then")
      else
        self:open("if m < 2 and " .. cond .. " then")
      end
    end
    self:line(format("m = m + 1; if first == 0 then first = %d end", i))
    self:close()
  end
  self:line("M = M - 1")
  self:close()
  self:open(kw == "anyOf" and "if m == 0 then" or "if m ~= 1 then")
  self:line("if M > 0 then return false end")
  self:line("ok = false")
  for i, sub in ipairs(list) do disc[i] = self:discriminator(sub) end
  local sp = self:loc(self.cur.node, kw)
  self:open("if m == 0 then")
  self:gen_pick(disc, kw)
  for i, sub in ipairs(list) do
    self:open(format("%s b == %d then", i == 1 and "if" or "elseif", i))
    if sub == false then
      self:line(format("E(d, \"false\", %s, %s)", q(path .. "/" .. kw .. "/" .. (i - 1)), q(runtime.text("false"))))
    elseif sub ~= true then
      self:line(self:call(sub, "v", "d", nil, path .. "/" .. kw .. "/" .. (i - 1)))
    end
    self.ind = self.ind - 1
  end
  self:open("else")
  self:line(format("E(d, %s, %s, %s)", q(kw), q(sp), q(runtime.text(kw, n))))
  self:close()
  if kw == "oneOf" then
    self.ind = self.ind - 1
    self:open("else")
    self:line(format("E(d, %s, %s, %s, %d, m)", q(kw), q(sp), q((runtime.text(kw, n, true))), runtime.H_NUM))
  end
  self:close()
  self:line("if STOP then return false end")
  self:close()
  -- partial mode, viable branches only: report the pendings of the branch
  -- the instance aimed at (or of the first viable one), running it again
  -- unmuted (muted, the enclosing branch has counted them already)
  self:open("if pv and m > 0 and M == 0 then")
  self:gen_pick(disc, kw)
  self:line(format("if not pv[b] then for i = 1, %d do if pv[i] then b = i; break end end end", n))
  local chain = false
  for i, sub in ipairs(list) do
    if sub ~= true and sub ~= false then
      if chain then self.ind = self.ind - 1 end
      self:open(format("%s b == %d then", chain and "elseif" or "if", i))
      self:line(self:call(sub, "v", "d", evx and "{}" or nil, path .. "/" .. kw .. "/" .. (i - 1)))
      chain = true
    end
  end
  if chain then self:close() end
  self:close()
  self:close()
end

-- local b = the branch an instance aimed at (runtime.pick written out:
-- the same scores, no loops), 0 when no branch stands out
function C:gen_pick(disc, kw)
  local n = #disc
  if n == 1 then self:line("local b = 1"); return end
  if n > 16 then
    self:line("local b = pick(v, " .. self:const(disc, kw .. " discriminators") .. ")")
    return
  end
  self:line("local b = 0")
  self:open("do")
  self:line("local jt = jtype(v)")
  self:line('local isobj = jt == "object"')
  for i, dd in ipairs(disc) do
    local sc = "sc" .. i
    self:line(format("local %s = 0", sc))
    if dd.types then
      local conds = {}
      for t in pairs(dd.types) do conds[#conds + 1] = format("jt == %s", q(t)) end
      if dd.types.number and not dd.types.integer then conds[#conds + 1] = 'jt == "integer"' end
      sort(conds)
      if #conds == 0 then conds[1] = "false" end
      self:line(format("if not (%s) then %s = %s - 1000 end", concat(conds, " or "), sc, sc))
    end
    local objpart = #dd.consts > 0 or #dd.required > 0
    if objpart then
      self:open("if isobj then")
      for _, c in ipairs(dd.consts) do
        local lit = literal(c[2])
        local eq = lit and ("x == " .. lit) or ("deq(x, " .. self:const(c[2], "discriminator") .. ")")
        self:line(format("local x = v[%s]", q(c[1])))
        self:line(format("if x ~= nil then if %s then %s = %s + 100 else %s = %s - 100 end end", eq, sc, sc, sc, sc))
      end
      for _, r in ipairs(dd.required) do
        self:line(format("if v[%s] ~= nil then %s = %s + 1 end", q(r), sc, sc))
      end
    end
    if dd.value_consts then
      if objpart then self.ind = self.ind - 1; self:open("else")
      else self:open("if not isobj then") end
      for _, c in ipairs(dd.value_consts) do
        local lit = literal(c)
        local eq = lit and ("v == " .. lit) or ("deq(v, " .. self:const(c, "discriminator") .. ")")
        self:line(format("if %s then %s = %s + 100 end", eq, sc, sc))
      end
      self:close()
    elseif objpart then
      self:close()
    end
  end
  self:line("local best, bs, tie = 1, sc1, false")
  for i = 2, n do
    self:line(format("if sc%d > bs then best, bs, tie = %d, sc%d, false elseif sc%d == bs then tie = true end", i, i, i, i))
  end
  self:line("if not tie then b = best end")
  self:close()
end

function C:gen_uneval(s, on, track)
  local path = self:loc(self.cur.node)
  if on("unevaluatedItems") then
    local sub = s.unevaluatedItems
    self:open("if arr then")
    if sub ~= true then
      self:open("for i = 1, #v do")
      self:open("if not ev[i] then")
      self:apply(sub, "v[i]", "d + 1", "unevaluatedItems", nil, path .. "/unevaluatedItems", "i")
      self:close()
      self:close()
    end
    if track then self:line("for i = 1, #v do evo[i] = true end") end
    self:close()
  end
  if on("unevaluatedProperties") then
    local sub = s.unevaluatedProperties
    self:open("if obj then")
    if sub ~= true then
      self:open("for k, x in pairs(v) do")
      self:open("if not ev[k] then")
      self:apply(sub, "x", "d + 1", "unevaluatedProperties", nil, path .. "/unevaluatedProperties", "k")
      self:close()
      self:close()
    end
    if track then self:line("for k in pairs(v) do evo[k] = true end") end
    self:close()
  end
  if track then self:line("for k in pairs(ev) do evo[k] = true end") end
end

-----------------------------------------------------------------------------
-- The chunk

local PRELUDE = [==[
-- generated by rubberduck.validator from %s (draft %s)
local R, K = ...
local type, pairs, floor, abs = type, pairs, math.floor, math.abs
local NULL, REG = R.NULL, R.REG
local ulen, deq, uniq, copy, pick, isarr_slow, jtype = R.ulen, R.deq, R.uniq, R.copy, R.pick, R.isarr_slow, R.jtype
local getmetatable, next, rawget, nkeys = getmetatable, next, rawget, R.nkeys
local AMT, OMT          -- array / object marker metatables, looked up per run
local FAMT = R.FALLBACK_ARRAY_MT
local P = {}            -- instance path: P[1..d] (object keys, 1-based array indices)
local M = 0             -- > 0 while trying a branch whose errors are not reported
local STOP = false      -- set once no more errors are wanted
local PARTIAL = false   -- partial mode: missing required properties are pending
local ERRS, PEND, ALL, MAX = nil, nil, true, 100
local DS, DSn = {}, 0   -- dynamic scope: resources entered (for $dynamicRef)
local DYN, DYNT = {}, {}

local function isarr(t)
  local mt = getmetatable(t)
  if mt == nil then
    if rawget(t, 1) == nil then return false end
  elseif mt == AMT or mt == FAMT then return true
  elseif mt == OMT or rawget(t, 1) == nil then return false end
  return (isarr_slow(t))
end

local tnew = R.tnew
local rerror = R.error
local NE = 0            -- #ERRS
local function E(d, kw, sp, text, how, a, b)
  local errs = ERRS
  if not errs then errs = tnew(8, 0); ERRS = errs; NE = 0 end
  local n = NE + 1
  NE = n
  errs[n] = rerror(P, d, kw, sp, text, how, a, b)
  if not ALL or n >= MAX then STOP = true end
  return STOP
end

local PN = 0            -- partial mode: pendings met so far, muted ones too
local function pend(d, kw, sp, text, how, a)
  PN = PN + 1
  if M > 0 then return end
  local p = PEND
  if not p then p = {}; PEND = p end
  p[#p + 1] = R.error(P, d, kw, sp, text, how, a)
end

local function enter(rid, f, v, d, ev)
  DSn = DSn + 1; DS[DSn] = rid
  local r = f(v, d, ev)
  DSn = DSn - 1
  return r
end

local function dynamic(tab, name)
  for i = 1, DSn do
    local a = tab[DS[i]]
    local f = a and a[name]
    if f then return f, DS[i] end
  end
end
]==]

local FOOTER = [==[

-- run(v, all, max, partial) -> ok, errors, pending, pendings met (muted too)
local function run(v, all, max, partial)
  ALL, MAX, PARTIAL = all, max, partial
  ERRS, PEND, STOP, M, PN = nil, nil, false, 0, 0
  AMT, OMT = REG["rubberduck.json.array"], REG["rubberduck.json.object"]
%s
  local ok = %s(v, 0)
  local errs, pend = ERRS, PEND
  ERRS, PEND = nil, nil
  return ok, errs, pend, PN
end

-- validator(v) -> true | false, errors: this validator's own entry point
-- (its own bytecode, so its traces are its own)
local invalid = R.invalid
return run, function(self, v)
  local ok, errs = run(v, self._all, self._max, false)
  if ok then return true end
  return false, errs or invalid()
end
]==]

-- a cycle of in-place applications ($ref, allOf, ...) never reaches a
-- child instance: it would recurse forever, so the schema is refused
function C:check_cycles()
  local state = {}
  local function visit(rec, trail)
    if state[rec] == "done" then return end
    if state[rec] == "active" then
      fail(self:loc(rec.node), "infinite loop: applies itself to the same instance ("
        .. #trail .. " steps through $ref/in-place applicators)")
    end
    state[rec] = "active"
    trail[#trail + 1] = rec
    for _, nxt in ipairs(rec.inplace) do visit(nxt, trail) end
    trail[#trail] = nil
    state[rec] = "done"
  end
  for _, rec in ipairs(self.order) do visit(rec, {}) end
end

function C:generate(root)
  local root_rec = self:fn(root, false, "")
  -- drain the queue; dynamic anchors needed by $dynamicRef get functions too
  local chunks = {}
  local qi = 1
  while true do
    while qi <= #self.queue do
      local rec = self.queue[qi]; qi = qi + 1
      chunks[#chunks + 1] = concat(self:gen(rec), "\n")
    end
    local added = false
    for name in pairs(self.dyn_names) do
      for res, anchors in pairs(self.dyn) do
        local node = anchors[name]
        if node then
          for _, track in ipairs { false, true } do
            local key = node
            local recs = self.fns[key]
            if not (recs and recs[track and 2 or 1]) then
              -- tracking variants only when something tracks dynamically
              if not track or self.dyn_track then
                self:fn(node, track); added = true
              end
            end
          end
        end
      end
    end
    if not added and qi > #self.queue then break end
  end
  self:check_cycles()
  local out = {}
  out[1] = format(PRELUDE, self.root_uri, self.default_draft)
  if self.ftable then
    out[#out + 1] = "local F = {}"
  else
    local names = {}
    for _, rec in ipairs(self.order) do names[#names + 1] = rec.name end
    for i = 1, #names, 12 do
      out[#out + 1] = "local " .. concat(names, ", ", i, math.min(i + 11, #names))
    end
  end
  out[#out + 1] = ""
  out[#out + 1] = concat(chunks, "\n\n")
  -- dynamic anchor tables: resource -> name -> function
  local dl = {}
  for res, anchors in pairs(self.dyn) do
    for name, node in pairs(anchors) do
      local recs = self.fns[node]
      if recs and recs[1] then dl[#dl + 1] = format("DYN[%s] = DYN[%s] or {}; DYN[%s][%s] = %s", q(res), q(res), q(res), q(name), recs[1].name) end
      if recs and recs[2] then dl[#dl + 1] = format("DYNT[%s] = DYNT[%s] or {}; DYNT[%s][%s] = %s", q(res), q(res), q(res), q(name), recs[2].name) end
    end
  end
  sort(dl)
  if #dl > 0 then out[#out + 1] = "\n" .. concat(dl, "\n") end
  -- the dynamic scope starts at the root resource (only $dynamicRef reads it)
  local ds = self.has_dynref and format("  DSn = 1; DS[1] = %s", q(self:res_of(root) or self.root_uri))
    or "  -- (no $dynamicRef: no dynamic scope)"
  out[#out + 1] = format(FOOTER, ds, root_rec.name)
  return concat(out, "\n")
end

M.CompileError = CompileError
M.fail = fail

return M
