-- rubberduck.authorizer — may this caller run this tool?
--
-- A caller is { principal = "alice", roles = { ... }, capabilities = { ... },
-- ... } (other fields, such as trace ids, are kept and passed on). A tool
-- lists the capabilities it needs (`capabilities`) and optionally roles
-- (`roles`); every one must be held. A held capability "fs.*" covers
-- "fs.read" and "fs.read.big"; "*" covers everything.
--
-- Denials name only what is missing, never the caller's other grants.
local json = require "rubberduck.json"

local M = {}

local function string_list(v, what)
  if v == nil or v == json.null then return json.array({}) end
  if type(v) ~= "table" then return nil, what .. " must be a list of strings" end
  local out = json.array({})
  for i, s in ipairs(v) do
    if type(s) ~= "string" then return nil, what .. "[" .. i .. "] must be a string" end
    out[i] = s
  end
  for k in pairs(v) do
    if type(k) ~= "number" then return nil, what .. " must be a list of strings" end
  end
  return out
end

-- Normalize what a caller passed. Returns caller | nil, reason.
function M.caller(c)
  if c == nil or c == json.null then
    return { principal = "anonymous", roles = json.array({}), capabilities = json.array({}) }
  end
  if type(c) ~= "table" then return nil, "caller must be a table, got " .. type(c) end
  local out = {}
  for k, v in pairs(c) do
    if type(k) ~= "string" then return nil, "caller keys must be strings" end
    out[k] = v
  end
  local p = c.principal
  if p == nil or p == json.null then p = "anonymous" end
  if type(p) ~= "string" or p == "" then return nil, "caller.principal must be a non-empty string" end
  out.principal = p
  local err
  out.roles, err = string_list(c.roles, "caller.roles")
  if not out.roles then return nil, err end
  out.capabilities, err = string_list(c.capabilities, "caller.capabilities")
  if not out.capabilities then return nil, err end
  return out
end

-- Does the held capability `held` cover `need`?
function M.covers(held, need)
  if held == need or held == "*" then return true end
  if held:sub(-2) == ".*" then
    local prefix = held:sub(1, -2) -- keeps the dot
    return need:sub(1, #prefix) == prefix
  end
  return false
end

-- Returns true | false, message, details.
function M.check(def, caller)
  local missing_caps, missing_roles = json.array({}), json.array({})
  for _, need in ipairs(def.capabilities or {}) do
    local ok = false
    for _, held in ipairs(caller.capabilities) do
      if M.covers(held, need) then ok = true; break end
    end
    if not ok then missing_caps[#missing_caps + 1] = need end
  end
  for _, need in ipairs(def.roles or {}) do
    local ok = false
    for _, held in ipairs(caller.roles) do
      if held == need then ok = true; break end
    end
    if not ok then missing_roles[#missing_roles + 1] = need end
  end
  if #missing_caps == 0 and #missing_roles == 0 then return true end
  local parts = {}
  if #missing_caps > 0 then parts[#parts + 1] = "capabilities " .. table.concat(missing_caps, ", ") end
  if #missing_roles > 0 then parts[#parts + 1] = "roles " .. table.concat(missing_roles, ", ") end
  return false, string.format("%s may not run %s: missing %s", caller.principal,
      def.metadata.name, table.concat(parts, " and ")),
    { missing_capabilities = missing_caps, missing_roles = missing_roles }
end

return M
