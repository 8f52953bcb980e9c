-- rubberduck.policystate — the bootstrap of the Lua state a policy file is
-- evaluated in (core.lstate with boot = "rubberduck.policystate").
--
-- A policy file is code, so it never runs in the engine's host state: the
-- authorizer makes a state of its own for it, under a CPU, wall-clock and
-- memory budget (the same mechanism as a tool definition, see
-- registry.lua), calls `load` once, copies the normalized policy (plain
-- data) back and closes the state. The file sees the same restricted
-- environment as tool code (rubberduck.env), without fs and without tool().
--
--   load{ source =, chunkname =, file = }
--     -> { ok = true, policy = <normalized> } | { ok = false, problems = {...} }
local toolcore = require "rubberduck.toolcore"
local envdata = require "rubberduck.env"
local policydef = require "rubberduck.policydef"

local json = toolcore.json
local type, pcall, rawget, tostring, pairs, ipairs = type, pcall, rawget, tostring, pairs, ipairs
local setfenv, loadstring, getmetatable = setfenv, loadstring, getmetatable
local G = _G

string.dump = nil

local M = {}

local function make_env()
  local env = {}
  for _, name in ipairs(envdata.allow.globals) do env[name] = G[name] end
  for lib, names in pairs(envdata.allow.libs) do
    local t = {}
    for _, n in ipairs(names) do t[n] = G[lib][n] end
    env[lib] = t
  end
  env.getmetatable = function(v)
    if type(v) ~= "table" then return nil end
    return getmetatable(v)
  end
  env.print = function() end
  env._G = env
  return env
end

local function error_text(e)
  if type(e) == "string" then return #e > 2048 and e:sub(1, 2048) .. "... (cut)" or e end
  if type(e) == "table" and type(rawget(e, "message")) == "string" then return rawget(e, "message") end
  return "error object of type " .. type(e)
end

function M.load(arg)
  local file = arg.file or "?"
  if type(arg.source) ~= "string" then
    return { ok = false, problems = json.array({ file .. ": (file): no source" }) }
  end
  if arg.source:find("^\27") then
    return { ok = false, problems = json.array({ file .. ": (file): precompiled bytecode is refused" }) }
  end
  local chunk, perr = loadstring(arg.source, arg.chunkname)
  if not chunk then
    return { ok = false, problems = json.array({ file .. ": (syntax): " .. tostring(perr) }) }
  end
  setfenv(chunk, make_env())
  local ok, raw = pcall(chunk)
  if not ok then
    return { ok = false, problems = json.array({ file .. ": (load): " .. error_text(raw) }) }
  end
  local fine, pol, problems = pcall(policydef.normalize, raw, file, json)
  if not fine then
    return { ok = false, problems = json.array({ file .. ": (policy): " .. error_text(pol) }) }
  end
  if not pol then return { ok = false, problems = json.array(problems) } end
  return { ok = true, policy = pol }
end

return M
