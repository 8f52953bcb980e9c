-- rubberduck.policydef — the authorization policy language: its fields, and
-- the check and normalization of a policy that a policy file returned.
--
-- This module runs inside the policy's own Lua state (policystate.lua),
-- never in the engine's host state: it checks data that untrusted code
-- produced, with raw access only (rawget/next), so a hostile metatable
-- runs nothing here. The host gets plain data (the normalized policy).
--
-- A policy is data, rules included (see README "Authorization"):
--
--   return {
--     roles = {
--       admin  = { capabilities = { "*" } },             -- reach stated here, not in code
--       user   = { capabilities = { "execute", "fs.read", "fs.write" } },
--       ops    = { inherits = { "user" }, capabilities = { "net.*" } },
--     },
--     principals = { alice = { roles = { "admin" } }, bob = { roles = { "user" } } },
--     rules = {
--       { name = "shell from the console", tools = { "shell*" },
--         require = { entry = { "console" } }, except = { roles = { "admin" } } },
--       { name = "office hours for writes", tools = { "files" },
--         when = { params = { action = { "write", "delete" } } },
--         require = { hours = { from = "08:00", to = "18:00", tz = "utc" } } },
--       { name = "no deletes from http", when = { entry = { "http" }, params = { action = "delete" } },
--         deny = true },
--     },
--     anonymous = "deny",      -- a caller without a principal: "deny" (default) | "allow"
--     cache_ttl = 60,          -- seconds a decision stays cached (0: no cache)
--   }
--
-- normalize(raw, file, json) -> policy | nil, problems ("file: path: reason")
local M = {}

M.ENTRIES = { "cli", "repl", "lua", "c", "http", "console" }
M.NAME = "^[%w_%-%.:@]+$"
M.MAX_NAME = 128
M.MAX_ITEMS = 4096

local FIELDS = {
  top = { roles = true, principals = true, rules = true, anonymous = true, cache_ttl = true,
          description = true },
  role = { capabilities = true, inherits = true, description = true },
  principal = { roles = true, capabilities = true, description = true },
  rule = { name = true, description = true, tools = true, when = true, require = true,
           deny = true, except = true },
  cond = { principals = true, roles = true, entry = true, params = true, hours = true,
           capabilities = true },
  hours = { from = true, to = true, tz = true },
}

local dsl = require "rubberduck.dsl"
local quote, is_seq = dsl.quote, dsl.is_seq

-- A capability: "*", or dot-separated names, optionally ending in ".*".
function M.valid_capability(s)
  if s == "*" then return true end
  if #s == 0 or #s > M.MAX_NAME then return false end
  local body = s:sub(-2) == ".*" and s:sub(1, -3) or s
  for seg in (body .. "."):gmatch("([^.]*)%.") do
    if seg == "" or not seg:match("^[%w_%-:]+$") then return false end
  end
  return true
end

-- The tool DSL's checker (fail, type, fields, string_list) and more.
local Checker = setmetatable({}, { __index = dsl.Checker })
Checker.__index = Checker

function Checker:table(path, v)
  if type(v) ~= "table" then
    self:fail(path, "expected a table, got %s", v == nil and "nothing" or type(v))
    return false
  end
  return true
end

-- A list of strings, each checked by `valid` (a function or a pattern).
function Checker:names(path, v, json, valid, what)
  local out = json.array({})
  if v == nil then return out end
  if type(v) ~= "table" or not is_seq(v) then
    self:fail(path, "expected a list of strings (each %s), got %s", (what:match("^[aeiou]") and "an " or "a ") .. what, type(v) == "table" and "a map" or type(v))
    return out
  end
  if #v > M.MAX_ITEMS then self:fail(path, "more than %d entries", M.MAX_ITEMS); return out end
  for i = 1, #v do
    local s = v[i]
    local ok = type(s) == "string" and #s <= M.MAX_NAME
    if ok then
      if type(valid) == "function" then ok = valid(s) else ok = s:match(valid) ~= nil end
    end
    if not ok then
      self:fail(path .. "[" .. i .. "]", "expected %s, got %s", (what:match("^[aeiou]") and "an " or "a ") .. what,
        type(s) == "string" and quote(s) or type(s))
    else
      out[#out + 1] = s
    end
  end
  return out
end

-- A map name -> table, keys checked against M.NAME.
function Checker:map(path, v)
  if v == nil then return {} end
  if not self:table(path, v) then return {} end
  local out = {}
  for k, x in next, v do
    if type(k) ~= "string" or #k > M.MAX_NAME or not k:match(M.NAME) then
      self:fail(path, "bad name %s (letters, digits, _ - . : @)", quote(k))
    elseif self:table(path .. "." .. k, x) then
      out[k] = x
    end
  end
  return out
end

local function parse_clock(s)
  if type(s) ~= "string" then return nil end
  local h, m = s:match("^(%d%d?):(%d%d)$")
  h, m = tonumber(h), tonumber(m)
  if not h or h > 24 or m > 59 or (h == 24 and m ~= 0) then return nil end
  return h * 60 + m
end

local ENTRY_SET = {}
for _, e in ipairs(M.ENTRIES) do ENTRY_SET[e] = true end

function Checker:cond(path, c, json, roles)
  if not self:table(path, c) then return nil end
  self:fields(path, c, FIELDS.cond)
  local out = {}
  if rawget(c, "principals") ~= nil then
    out.principals = self:names(path .. ".principals", rawget(c, "principals"), json, M.NAME, "principal name")
  end
  if rawget(c, "roles") ~= nil then
    out.roles = self:names(path .. ".roles", rawget(c, "roles"), json, M.NAME, "role name")
    for i, r in ipairs(out.roles) do
      if not roles[r] then self:fail(path .. ".roles[" .. i .. "]", "no role named %s in roles", quote(r)) end
    end
  end
  if rawget(c, "capabilities") ~= nil then
    out.capabilities = self:names(path .. ".capabilities", rawget(c, "capabilities"), json,
      M.valid_capability, "capability")
  end
  if rawget(c, "entry") ~= nil then
    out.entry = self:names(path .. ".entry", rawget(c, "entry"), json, function(s) return ENTRY_SET[s] end,
      "entry point (" .. table.concat(M.ENTRIES, ", ") .. ")")
  end
  local params = rawget(c, "params")
  if params ~= nil and self:table(path .. ".params", params) then
    out.params = {}
    for k, v in next, params do
      local pp = path .. ".params." .. tostring(k)
      if type(k) ~= "string" or k == "" then
        self:fail(path .. ".params", "keys are parameter names, got %s", quote(k))
      else
        local tv = type(v)
        if tv == "string" or tv == "boolean" or (tv == "number" and v == v) then
          out.params[k] = json.array({ v })
        elseif tv == "table" and is_seq(v) and #v > 0 then
          local list = json.array({})
          for i = 1, #v do
            local x, tx = v[i], type(v[i])
            if tx == "string" or tx == "boolean" or (tx == "number" and x == x) then
              list[#list + 1] = x
            else
              self:fail(pp .. "[" .. i .. "]", "expected a string, number or boolean, got %s", tx)
            end
          end
          out.params[k] = list
        else
          self:fail(pp, "expected a value (string, number, boolean) or a non-empty list of them, got %s", tv)
        end
      end
    end
  end
  local hours = rawget(c, "hours")
  if hours ~= nil and self:table(path .. ".hours", hours) then
    self:fields(path .. ".hours", hours, FIELDS.hours)
    local from, to = parse_clock(rawget(hours, "from")), parse_clock(rawget(hours, "to"))
    if not from then self:fail(path .. ".hours.from", "expected \"HH:MM\", got %s", quote(rawget(hours, "from"))) end
    if not to then self:fail(path .. ".hours.to", "expected \"HH:MM\", got %s", quote(rawget(hours, "to"))) end
    local tz = rawget(hours, "tz")
    if tz == nil then tz = "utc" end
    if tz ~= "utc" and tz ~= "local" then self:fail(path .. ".hours.tz", "expected \"utc\" or \"local\", got %s", quote(tz)) end
    if from and to and from == to then self:fail(path .. ".hours", "from and to are the same time (an empty window)") end
    out.hours = { from = from, to = to, tz = tz, text = tostring(rawget(hours, "from")) .. "-" ..
      tostring(rawget(hours, "to")) .. " " .. (tz == "utc" and "UTC" or "local time") }
  end
  return out
end

-- Find an inheritance cycle; returns the cycle as "a -> b -> a" or nil.
local function find_cycle(roles)
  local state = {}  -- nil: unseen, 1: on the path, 2: done
  local path = {}
  local function visit(name)
    state[name] = 1
    path[#path + 1] = name
    local r = roles[name]
    for _, p in ipairs(r and r.inherits or {}) do
      if state[p] == 1 then
        local start
        for i, n in ipairs(path) do if n == p then start = i end end
        local cyc = {}
        for i = start, #path do cyc[#cyc + 1] = path[i] end
        cyc[#cyc + 1] = p
        return table.concat(cyc, " -> ")
      elseif state[p] == nil and roles[p] then
        local c = visit(p)
        if c then return c end
      end
    end
    path[#path] = nil
    state[name] = 2
    return nil
  end
  local names = {}
  for n in next, roles do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    if state[n] == nil then
      local c = visit(n)
      if c then return c, n end
    end
  end
end

local TOOL_PATTERN = "^[a-z0-9_*]+$"

function M.normalize(raw, file, json)
  local c = setmetatable({ file = file or "?", problems = {} }, Checker)
  if type(raw) ~= "table" then
    c:fail("(policy)", "the file must return a table, got %s", type(raw))
    return nil, c.problems
  end
  c:fields("", raw, FIELDS.top)
  local out = { roles = {}, principals = {}, rules = json.array({}) }

  local roles = c:map("roles", rawget(raw, "roles"))
  for name, r in next, roles do
    local p = "roles." .. name
    c:fields(p, r, FIELDS.role)
    out.roles[name] = {
      capabilities = c:names(p .. ".capabilities", rawget(r, "capabilities"), json, M.valid_capability, "capability"),
      inherits = c:names(p .. ".inherits", rawget(r, "inherits"), json, M.NAME, "role name"),
    }
  end
  for name, r in next, out.roles do
    for i, parent in ipairs(r.inherits) do
      if not out.roles[parent] then
        c:fail("roles." .. name .. ".inherits[" .. i .. "]", "no role named %s", quote(parent))
      end
    end
  end
  local cycle, at = find_cycle(out.roles)
  if cycle then c:fail("roles." .. at .. ".inherits", "inheritance cycle %s", cycle) end

  local principals = c:map("principals", rawget(raw, "principals"))
  for name, pr in next, principals do
    local p = "principals." .. name
    c:fields(p, pr, FIELDS.principal)
    local entry = {
      roles = c:names(p .. ".roles", rawget(pr, "roles"), json, M.NAME, "role name"),
      capabilities = c:names(p .. ".capabilities", rawget(pr, "capabilities"), json, M.valid_capability, "capability"),
    }
    for i, r in ipairs(entry.roles) do
      if not out.roles[r] then c:fail(p .. ".roles[" .. i .. "]", "no role named %s", quote(r)) end
    end
    out.principals[name] = entry
  end

  local rules = rawget(raw, "rules")
  if rules ~= nil and c:table("rules", rules) then
    if not is_seq(rules) then c:fail("rules", "expected a list of rules (they apply in order)") end
    local seen = {}
    for i = 1, math.min(#rules, M.MAX_ITEMS) do
      local p = "rules[" .. i .. "]"
      local r = rules[i]
      if c:table(p, r) then
        c:fields(p, r, FIELDS.rule)
        local nr = {}
        local name = rawget(r, "name")
        if type(name) ~= "string" or name == "" or #name > 200 then
          c:fail(p .. ".name", "expected a non-empty string naming the rule (denials quote it), got %s", quote(name))
        elseif seen[name] then
          c:fail(p .. ".name", "duplicate rule name %s (also rules[%d])", quote(name), seen[name])
        else
          seen[name] = i
        end
        nr.name = name
        if rawget(r, "tools") ~= nil then
          nr.tools = c:names(p .. ".tools", rawget(r, "tools"), json, TOOL_PATTERN, "tool name or pattern (a-z0-9_ and *)")
        end
        if rawget(r, "when") ~= nil then nr.when = c:cond(p .. ".when", rawget(r, "when"), json, out.roles) end
        if rawget(r, "except") ~= nil then nr.except = c:cond(p .. ".except", rawget(r, "except"), json, out.roles) end
        local deny, req = rawget(r, "deny"), rawget(r, "require")
        if deny ~= nil and deny ~= true then c:fail(p .. ".deny", "expected true, got %s", quote(deny)) end
        if deny == true and req ~= nil then
          c:fail(p, "give require or deny = true, not both")
        elseif deny == nil and req == nil then
          c:fail(p, "missing require (conditions a call must meet) or deny = true")
        end
        nr.deny = deny == true
        if req ~= nil then nr.require = c:cond(p .. ".require", req, json, out.roles) end
        out.rules[#out.rules + 1] = nr
      end
    end
    if #rules > M.MAX_ITEMS then c:fail("rules", "more than %d rules", M.MAX_ITEMS) end
  end

  local anon = rawget(raw, "anonymous")
  if anon == nil then anon = "deny" end
  if anon ~= "deny" and anon ~= "allow" then
    c:fail("anonymous", "expected \"deny\" or \"allow\", got %s", quote(anon))
  end
  out.anonymous = anon
  local ttl = rawget(raw, "cache_ttl")
  if ttl == nil then ttl = 60 end
  if type(ttl) ~= "number" or ttl ~= ttl or ttl < 0 or ttl > 86400 then
    c:fail("cache_ttl", "expected seconds from 0 to 86400, got %s", quote(ttl))
    ttl = 60
  end
  out.cache_ttl = ttl
  local d = rawget(raw, "description")
  if d ~= nil and type(d) ~= "string" then c:fail("description", "expected a string, got %s", type(d)) end

  if #c.problems > 0 then
    table.sort(c.problems)
    return nil, c.problems
  end
  return out
end

return M
