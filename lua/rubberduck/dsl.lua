-- rubberduck.dsl — the tool definition language: its fields, their types
-- and defaults, and the normalization of a definition.
--
-- This module runs inside a tool's own Lua state (toolstate.lua), never in
-- the engine's host state: it checks data that untrusted code produced.
-- Only raw access is used on that data (rawget/next), so a hostile
-- metatable on a definition table runs nothing here.
--
-- normalize(raw, file, json) -> def, functions | nil, problems
--   def        the normalized definition: plain data (the shape of
--              schemas/tool.schema.json), safe to copy to the host
--   functions  { handler = f, constraints = { f, ... } }
--   problems   { "file: field.path: reason", ... } (every problem found)
local M = {}

M.LEVELS = { "strict", "balanced", "relaxed", "none" }
M.FORMATS = { "json", "xml", "yaml", "binary", "plain" }
M.NAME_PATTERN = "^[a-z][a-z0-9_]*$"
-- output.redact = true: these keys (case-insensitive; * matches any run of
-- characters) and these patterns (PCRE2, on string values) are redacted.
M.REDACT_DEFAULTS = {
  keys = { "*password*", "*passwd*", "*secret*", "*token*", "*api_key*", "*apikey*",
           "*private_key*", "authorization", "cookie", "set-cookie" },
  patterns = { "[Bb]earer\\s+[A-Za-z0-9._~+/=-]+",
               "eyJ[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+" },
  replacement = "[REDACTED]",
}
M.MAX_NAME = 64

M.DEFAULTS = {
  level = "balanced",
  version = "0.0.0",
  max_file_size = 10485760,   -- bytes a tool may write to one file
  max_memory = 67108864,      -- bytes of Lua heap the tool may use
  max_cpu = 5000,             -- ms of CPU per attempt
  max_output = 16777216,      -- bytes of result
  timeout = 30000,            -- ms wall clock per attempt
  retries = 0,                -- extra attempts after a retryable failure
  concurrency = 4,            -- calls of this tool that may run at once
  -- wait before attempt n+1: min(max, initial * factor^(n-1)) ms, +-25% jitter
  backoff = { initial = 100, max = 5000, factor = 2 },
  format = "json",
  cache_ttl = 0,
}

-- JSON Schema keywords whose value is an array (marked so that an empty
-- one encodes as []), and those whose value is a schema or a map of them.
local ARRAY_KEYWORDS = { required = true, enum = true, allOf = true, anyOf = true,
  oneOf = true, prefixItems = true, examples = true }
local SCHEMA_KEYWORDS = { items = true, additionalProperties = true, contains = true,
  propertyNames = true, ["not"] = true, ["if"] = true, ["then"] = true, ["else"] = true,
  unevaluatedItems = true, unevaluatedProperties = true, additionalItems = true }
local SCHEMA_MAP_KEYWORDS = { properties = true, patternProperties = true, ["$defs"] = true,
  definitions = true, dependentSchemas = true }
local SCHEMA_LIST_KEYWORDS = { allOf = true, anyOf = true, oneOf = true, prefixItems = true }

local function quote(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

local function is_seq(t)
  local n = 0
  for k in next, t do
    if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then return false end
    n = n + 1
  end
  return n == #t
end

-- A checker collects problems with their field paths.
local Checker = {}
Checker.__index = Checker

local function checker(file)
  return setmetatable({ file = file, problems = {} }, Checker)
end

-- For other definition languages checked the same way (policydef.lua).
M.Checker, M.quote, M.is_seq = Checker, quote, is_seq

function Checker:fail(path, fmt, ...)
  self.problems[#self.problems + 1] =
    string.format("%s: %s: " .. fmt, self.file, path, ...)
end

function Checker:type(path, v, want)
  if type(v) ~= want then
    self:fail(path, "expected %s, got %s", want, type(v) == "nil" and "nothing" or type(v))
    return false
  end
  return true
end

function Checker:fields(path, t, allowed)
  for k in next, t do
    if type(k) ~= "string" then
      self:fail(path, "unexpected key %s (keys are field names)", quote(k))
    elseif not allowed[k] then
      local names = {}
      for n in next, allowed do names[#names + 1] = n end
      table.sort(names)
      self:fail(path == "" and k or path .. "." .. k,
        "unknown field (expected one of %s)", table.concat(names, ", "))
    end
  end
end

function Checker:string_list(path, v, json)
  if v == nil then return json.array({}) end
  if not self:type(path, v, "table") then return json.array({}) end
  if not is_seq(v) then self:fail(path, "expected a list of strings"); return json.array({}) end
  local out = json.array({})
  for i = 1, #v do
    if type(v[i]) ~= "string" then
      self:fail(path .. "[" .. i .. "]", "expected string, got %s", type(v[i]))
    else
      out[#out + 1] = v[i]
    end
  end
  return out
end

function Checker:number(path, v, dflt, opts)
  if v == nil then return dflt end
  if type(v) ~= "number" or v ~= v then
    self:fail(path, "expected a number, got %s", quote(v))
    return dflt
  end
  if opts.integer and v % 1 ~= 0 then self:fail(path, "expected a whole number, got %s", v) end
  if opts.min and v < opts.min then self:fail(path, "must be >= %s, got %s", opts.min, v) end
  if opts.positive and v <= 0 then self:fail(path, "must be > 0, got %s", v) end
  return v
end

function Checker:enum(path, v, choices, dflt)
  if v == nil then return dflt end
  for _, c in ipairs(choices) do if v == c then return v end end
  self:fail(path, "expected one of %s, got %s", table.concat(choices, ", "), quote(v))
  return dflt
end

-- Copy a JSON Schema given as Lua tables into plain data with array
-- markers on array-valued keywords. Functions or cycles are problems.
function Checker:schema(path, s, json, depth, seen)
  depth = depth or 0
  seen = seen or {}
  if depth > 64 then self:fail(path, "schema nested too deeply"); return {} end
  local tv = type(s)
  if tv == "boolean" then return s end
  if tv ~= "table" then
    self:fail(path, "expected a schema (table or boolean), got %s", tv)
    return {}
  end
  if seen[s] then self:fail(path, "schema contains a cycle"); return {} end
  seen[s] = true
  local out = {}
  local seq = next(s) ~= nil and is_seq(s)
  if seq then out = json.array({}) end
  for k, v in next, s do
    local kp = path .. (type(k) == "number" and ("[" .. k .. "]") or ("." .. tostring(k)))
    local tk = type(k)
    if tk ~= "string" and not seq then
      self:fail(kp, "schema keys must be strings")
    elseif type(v) == "function" or type(v) == "thread" or type(v) == "userdata" and v ~= json.null then
      self:fail(kp, "a schema holds data only, got %s", type(v))
    elseif tk == "string" and SCHEMA_MAP_KEYWORDS[k] and type(v) == "table" then
      local m = {}
      for name, sub in next, v do
        m[name] = self:schema(kp .. "." .. tostring(name), sub, json, depth + 1, seen)
      end
      out[k] = m
    elseif tk == "string" and (SCHEMA_KEYWORDS[k] or SCHEMA_LIST_KEYWORDS[k]) and type(v) == "table" then
      local sub = self:schema(kp, v, json, depth + 1, seen)
      if SCHEMA_LIST_KEYWORDS[k] and getmetatable(sub) ~= json.array_mt then
        sub = json.array(sub)
      end
      out[k] = sub
    elseif type(v) == "table" then
      local sub = self:schema(kp, v, json, depth + 1, seen)
      if tk == "string" and ARRAY_KEYWORDS[k] and getmetatable(sub) ~= json.array_mt then
        if next(sub) == nil then sub = json.array(sub) end
      end
      out[k] = sub
    else
      out[k] = v
    end
  end
  seen[s] = nil
  return out
end

local FIELDS = {
  top = { metadata = true, parameters = true, constraints = true, capabilities = true,
          roles = true, requires = true, security = true, execution = true, output = true },
  require = { when = true, capabilities = true, roles = true },
  metadata = { name = true, description = true, version = true, tags = true,
               examples = true, author = true, license = true },
  security = { level = true, allowed_paths = true, dangerous_functions = true,
               max_file_size = true, max_memory = true, max_cpu = true, max_output = true },
  execution = { timeout = true, retries = true, concurrency = true, backoff = true,
                handler = true },
  backoff = { initial = true, max = true, factor = true },
  output = { format = true, schema = true, cache_ttl = true, redact = true, truncate = true },
  redact = { keys = true, patterns = true, replacement = true },
  example = { params = true, output = true, error = true, description = true },
}

local function block(c, raw, name)
  local v = rawget(raw, name)
  if v == nil then return {} end
  if not c:type(name, v, "table") then return {} end
  c:fields(name, v, FIELDS[name])
  return v
end

-- requires: needs that depend on the params, as data (the authorizer
-- reads them; see authorizer.lua):
--   requires = {
--     { when = { action = "write" }, capabilities = { "fs.write" } },
--     { when = { action = { "delete", "truncate" } }, capabilities = { "fs.delete" }, roles = { "admin" } },
--   }
-- An entry applies when every parameter it names has one of the listed
-- values (strings, numbers, booleans); each `when` key must be a declared
-- parameter (parameters.properties). Normalized: when values are lists.
function M.requires(c, req, params, json)
  local out = json.array({})
  if req == nil then return out end
  if not c:type("requires", req, "table") then return out end
  if not is_seq(req) then
    c:fail("requires", "expected a list of { when = {...}, capabilities = {...}, roles = {...} }")
    return out
  end
  local props = type(params) == "table" and rawget(params, "properties") or nil
  for i = 1, #req do
    local p = "requires[" .. i .. "]"
    local r = req[i]
    if c:type(p, r, "table") then
      c:fields(p, r, FIELDS.require)
      local nr = { when = {},
        capabilities = c:string_list(p .. ".capabilities", rawget(r, "capabilities"), json),
        roles = c:string_list(p .. ".roles", rawget(r, "roles"), json) }
      if #nr.capabilities == 0 and #nr.roles == 0 then
        c:fail(p, "requires nothing (give capabilities or roles)")
      end
      local when = rawget(r, "when")
      if when == nil then
        c:fail(p .. ".when", "missing (the params this requirement depends on; " ..
          "needs that hold for every call go in capabilities/roles)")
      elseif c:type(p .. ".when", when, "table") then
        if next(when) == nil then c:fail(p .. ".when", "empty (name at least one parameter)") end
        for k, v in next, when do
          local wp = p .. ".when." .. tostring(k)
          if type(k) ~= "string" then
            c:fail(p .. ".when", "keys are parameter names, got %s", quote(k))
          else
            if type(props) ~= "table" or rawget(props, k) == nil then
              c:fail(wp, "no parameter named %s in parameters.properties", quote(k))
            end
            local function scalar(x)
              local tx = type(x)
              return tx == "string" or tx == "boolean" or (tx == "number" and x == x)
            end
            if scalar(v) then
              nr.when[k] = json.array({ v })
            elseif type(v) == "table" and is_seq(v) and #v > 0 then
              local list = json.array({})
              for j = 1, #v do
                if scalar(v[j]) then list[#list + 1] = v[j]
                else c:fail(wp .. "[" .. j .. "]", "expected a string, number or boolean, got %s", type(v[j])) end
              end
              nr.when[k] = list
            else
              c:fail(wp, "expected a value (string, number, boolean) or a non-empty list of them, got %s", type(v))
            end
          end
        end
      end
      out[#out + 1] = nr
    end
  end
  return out
end

-- output.redact (and a caller's redact option) in normalized form
-- { keys = [...], patterns = [...], replacement = "..." }. Accepts true (the
-- defaults), a list of key names, or a table with keys/patterns/replacement.
-- c is a checker (problems go into it); patterns are compiled on the host.
function M.redact_spec(c, path, v, json)
  local D = M.REDACT_DEFAULTS
  if v == true then
    return { keys = json.array({ unpack(D.keys) }), patterns = json.array({ unpack(D.patterns) }),
             replacement = D.replacement }
  end
  if type(v) ~= "table" then
    c:fail(path, "expected true, a list of key names or { keys =, patterns =, replacement = }, got %s",
      quote(v))
    return nil
  end
  if next(v) ~= nil and is_seq(v) then
    return { keys = c:string_list(path, v, json), patterns = json.array({}), replacement = D.replacement }
  end
  c:fields(path, v, FIELDS.redact)
  local r = { keys = c:string_list(path .. ".keys", rawget(v, "keys"), json),
              patterns = c:string_list(path .. ".patterns", rawget(v, "patterns"), json),
              replacement = D.replacement }
  local rep = rawget(v, "replacement")
  if rep ~= nil and c:type(path .. ".replacement", rep, "string") then r.replacement = rep end
  return r
end

M.checker = checker

function M.normalize(raw, file, json)
  local c = checker(file or "?")
  if type(raw) ~= "table" then
    c:fail("(definition)", "expected a table, got %s", type(raw))
    return nil, c.problems
  end
  c:fields("", raw, FIELDS.top)

  local def, fns = {}, { constraints = {} }

  -- metadata
  local md = block(c, raw, "metadata")
  if rawget(raw, "metadata") == nil then c:fail("metadata", "missing (a tool needs metadata.name and metadata.description)") end
  local meta = {}
  local name = rawget(md, "name")
  if name == nil then
    c:fail("metadata.name", "missing")
  elseif c:type("metadata.name", name, "string") then
    if #name > M.MAX_NAME or not name:match(M.NAME_PATTERN) then
      c:fail("metadata.name", "must match [a-z][a-z0-9_]* and be at most %d characters, got %s", M.MAX_NAME, quote(name))
    end
  end
  meta.name = name
  local desc = rawget(md, "description")
  if desc == nil then
    c:fail("metadata.description", "missing")
  elseif c:type("metadata.description", desc, "string") and desc:match("^%s*$") then
    c:fail("metadata.description", "must not be empty")
  end
  meta.description = desc
  local version = rawget(md, "version")
  if version ~= nil and c:type("metadata.version", version, "string") then meta.version = version
  else meta.version = M.DEFAULTS.version end
  meta.tags = c:string_list("metadata.tags", rawget(md, "tags"), json)
  for _, k in ipairs({ "author", "license" }) do
    local v = rawget(md, k)
    if v ~= nil and c:type("metadata." .. k, v, "string") then meta[k] = v end
  end
  meta.examples = json.array({})
  local ex = rawget(md, "examples")
  if ex ~= nil and c:type("metadata.examples", ex, "table") then
    for i = 1, #ex do
      local p = "metadata.examples[" .. i .. "]"
      local e = ex[i]
      if c:type(p, e, "table") then
        c:fields(p, e, FIELDS.example)
        local params = rawget(e, "params")
        local ne = { description = rawget(e, "description") }
        if ne.description ~= nil then c:type(p .. ".description", ne.description, "string") end
        if params ~= nil and c:type(p .. ".params", params, "table") then
          ne.params = c:schema(p .. ".params", params, json)
        else
          ne.params = {}
        end
        if rawget(e, "output") ~= nil then ne.output = c:schema(p .. ".output", { v = rawget(e, "output") }, json).v end
        local err = rawget(e, "error")
        if err ~= nil and c:type(p .. ".error", err, "string") then ne.error = err end
        meta.examples[#meta.examples + 1] = ne
      end
    end
  end
  def.metadata = meta

  -- parameters
  local params = rawget(raw, "parameters")
  if params == nil then
    def.parameters = { type = "object" }
  else
    def.parameters = c:schema("parameters", params, json)
    if type(def.parameters) == "table" then
      local t = def.parameters.type
      if t ~= nil and t ~= "object" then
        c:fail("parameters.type", "the parameters of a tool are an object, got %s", quote(t))
      end
    end
  end

  -- constraints
  local cons = rawget(raw, "constraints")
  if cons ~= nil and c:type("constraints", cons, "table") then
    if not is_seq(cons) then c:fail("constraints", "expected a list of functions") end
    for i = 1, #cons do
      if c:type("constraints[" .. i .. "]", cons[i], "function") then
        fns.constraints[#fns.constraints + 1] = cons[i]
      end
    end
  end
  def.constraints = #fns.constraints

  def.capabilities = c:string_list("capabilities", rawget(raw, "capabilities"), json)
  def.roles = c:string_list("roles", rawget(raw, "roles"), json)
  def.requires = M.requires(c, rawget(raw, "requires"), def.parameters, json)

  -- security
  local sec = block(c, raw, "security")
  local D = M.DEFAULTS
  local s = {}
  s.level = c:enum("security.level", rawget(sec, "level"), M.LEVELS, D.level)
  s.allowed_paths = c:string_list("security.allowed_paths", rawget(sec, "allowed_paths"), json)
  for i, p in ipairs(s.allowed_paths) do
    if p:sub(1, 1) ~= "/" then c:fail("security.allowed_paths[" .. i .. "]", "must be an absolute path, got %s", quote(p)) end
    if p:find("\0", 1, true) then c:fail("security.allowed_paths[" .. i .. "]", "must not contain a NUL byte") end
  end
  s.dangerous_functions = c:string_list("security.dangerous_functions", rawget(sec, "dangerous_functions"), json)
  s.max_file_size = c:number("security.max_file_size", rawget(sec, "max_file_size"), D.max_file_size, { integer = true, min = 0 })
  s.max_memory = c:number("security.max_memory", rawget(sec, "max_memory"), D.max_memory, { integer = true, positive = true })
  s.max_cpu = c:number("security.max_cpu", rawget(sec, "max_cpu"), D.max_cpu, { positive = true })
  s.max_output = c:number("security.max_output", rawget(sec, "max_output"), D.max_output, { integer = true, positive = true })
  def.security = s

  -- execution
  local exe = block(c, raw, "execution")
  local e = {}
  e.timeout = c:number("execution.timeout", rawget(exe, "timeout"), D.timeout, { positive = true })
  e.retries = c:number("execution.retries", rawget(exe, "retries"), D.retries, { integer = true, min = 0 })
  if e.retries > 10 then c:fail("execution.retries", "at most 10, got %s", e.retries) end
  e.concurrency = c:number("execution.concurrency", rawget(exe, "concurrency"), D.concurrency,
    { integer = true, positive = true })
  if e.concurrency > 256 then c:fail("execution.concurrency", "at most 256, got %s", e.concurrency) end
  local bo = rawget(exe, "backoff")
  local b = {}
  if bo ~= nil and c:type("execution.backoff", bo, "table") then
    c:fields("execution.backoff", bo, FIELDS.backoff)
  else
    bo = {}
  end
  local DB = D.backoff
  b.initial = c:number("execution.backoff.initial", rawget(bo, "initial"), DB.initial, { min = 0 })
  b.max = c:number("execution.backoff.max", rawget(bo, "max"), math.max(DB.max, b.initial), { min = 0 })
  b.factor = c:number("execution.backoff.factor", rawget(bo, "factor"), DB.factor, { min = 1 })
  if b.max < b.initial then
    c:fail("execution.backoff.max", "must be >= backoff.initial (%s), got %s", b.initial, b.max)
  end
  e.backoff = b
  local handler = rawget(exe, "handler")
  if handler == nil then
    c:fail("execution.handler", "missing (a tool needs a handler function)")
  else
    c:type("execution.handler", handler, "function")
  end
  fns.handler = handler
  def.execution = e

  -- output
  local out = block(c, raw, "output")
  local o = {}
  o.format = c:enum("output.format", rawget(out, "format"), M.FORMATS, D.format)
  local os_ = rawget(out, "schema")
  if os_ ~= nil then o.schema = c:schema("output.schema", os_, json) end
  o.cache_ttl = c:number("output.cache_ttl", rawget(out, "cache_ttl"), D.cache_ttl, { min = 0 })
  local red = rawget(out, "redact")
  if red ~= nil then o.redact = M.redact_spec(c, "output.redact", red, json) end
  o.truncate = c:number("output.truncate", rawget(out, "truncate"), nil, { integer = true, positive = true })
  def.output = o

  if #c.problems > 0 then return nil, c.problems end
  return def, fns
end

return M
