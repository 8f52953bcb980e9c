-- rubberduck.toolstate — the bootstrap of a tool's own Lua state.
--
-- Loaded once, with the full standard library, when the engine makes a tool
-- state (core/lua/l_lstate.c). It captures what it needs in locals, strips
-- the state's real libraries of what no tool may reach (string.dump, ...),
-- and evaluates the untrusted tool file in a restricted environment built
-- from rubberduck.env. The engine then calls its functions by name:
--
--   define{ source =, chunkname =, file =, scanned = } -> result, nil
--       (scanned: the engine already ran the dangerous-function scan)
--       result = { ok = true, def = <normalized> } | { ok = false, problems = {...} }
--   execute{ params =, ctx = } -> status, output
--       status = { status = "ok" } | { status = "error", kind =, message =,
--                  retryable =, details = }
--
-- The C side runs these under the tool's limits and records breaches
-- itself, so nothing here needs to be trusted to report them.
local toolcore = require "rubberduck.toolcore"
local envdata = require "rubberduck.env"
local dsl = require "rubberduck.dsl"

local json = toolcore.json
local notify = toolcore.notify
local make_fs = toolcore.fs
local sleep = toolcore.sleep
local type, pairs, ipairs, next, pcall, rawget, tostring, select, error =
  type, pairs, ipairs, next, pcall, rawget, tostring, select, error
local setmetatable, getmetatable, setfenv, loadstring =
  setmetatable, getmetatable, setfenv, loadstring
local concat, sfind, ssub, format = table.concat, string.find, string.sub, string.format
local unpack = unpack
local collectgarbage = collectgarbage
local G = _G

-- What the tool gets at level none: everything, saved before stripping.
local full_string_dump = string.dump

-- Strip the state's real libraries: the string metatable's __index is the
-- real string table, so ("").dump must not exist there.
string.dump = nil

local M = {}

local tool_fns      -- { handler =, constraints = }
local tool_def      -- normalized definition (host copy is separate)
local tool_env      -- the environment the tool's code runs in
local made = setmetatable({}, { __mode = "k" })

local function deep_copy_lib(src, names)
  local t = {}
  for _, n in ipairs(names) do t[n] = src[n] end
  return t
end

local function log(level, ...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    parts[i] = type(v) == "string" and v or (type(v) == "number" or type(v) == "boolean") and tostring(v)
      or "<" .. type(v) .. ">"
  end
  notify("log", 0, 0, tostring(level) .. "\t" .. concat(parts, " "))
end

local function make_env()
  local env = {}
  for _, name in ipairs(envdata.allow.globals) do env[name] = G[name] end
  for lib, names in pairs(envdata.allow.libs) do env[lib] = deep_copy_lib(G[lib], names) end
  env.getmetatable = function(v)
    if type(v) ~= "table" then return nil end
    return getmetatable(v)
  end
  env.collectgarbage = function(opt)
    if opt == "count" then return collectgarbage("count") end
    error("collectgarbage: only \"count\" is available to tools", 2)
  end
  env.print = function(...) log("info", ...) end
  -- xpcall whose message handler runs after the error has unwound: LuaJIT
  -- runs a handler with hooks off when the error came from the count hook,
  -- so a looping handler would never be stopped.
  env.xpcall = function(f, handler, ...)
    local res = { pcall(f, ...) }
    if res[1] then return unpack(res, 1, table.maxn(res)) end
    return false, handler(res[2])
  end
  env.json = {
    encode = json.encode, decode = json.decode, null = json.null,
    array = json.array, object = json.object, is_array = json.is_array,
  }
  -- Without allowed_paths every fs call is a violation (the C table with
  -- no roots refuses every path), recorded like any other.
  env.fs = make_fs({}, 0)
  env.tool = function(t)
    if type(t) ~= "table" then error("tool: expected a table, got " .. type(t), 2) end
    made[t] = true
    return t
  end
  env._G = env
  return env
end

local MAX_MESSAGE = 4096
local utf8_valid = json.utf8_valid

-- An error message fit for the envelope: at most MAX_MESSAGE bytes, and
-- valid UTF-8 (bytes that are not are replaced by "?").
local function clean(m)
  if #m > MAX_MESSAGE then m = ssub(m, 1, MAX_MESSAGE) .. "... (cut)" end
  if not utf8_valid(m) then
    local out, i, n = {}, 1, #m
    while i <= n do
      local ok, bad = utf8_valid(ssub(m, i))
      if ok then out[#out + 1] = ssub(m, i); break end
      out[#out + 1] = ssub(m, i, i + bad - 1)
      out[#out + 1] = "?"
      i = i + bad + 1
    end
    m = concat(out)
  end
  return m
end

-- Turn an error value into text without running any of its metamethods.
local function error_text(e)
  local te = type(e)
  if te == "string" then return clean(e) end
  if te == "table" then
    local m = rawget(e, "message")
    if type(m) == "string" then return clean(m) end
    return "error object without a message"
  end
  if te == "number" or te == "boolean" or te == "nil" then return tostring(e) end
  return "error object of type " .. te
end

-- ---- dangerous functions: a token-level scan of the source --------------
--
-- Every dotted name the source uses (`os.execute`, `io . popen`,
-- `x:dump`) is collected with its line, skipping strings and comments, and
-- compared with the deny list. A name inside a string or a comment is not a
-- use; `my_loadstring` is not `loadstring`.

local function scan_names(src)
  local names = {}
  local i, n, line = 1, #src, 1
  local chain, chain_line, want_name = nil, nil, false
  local function flush()
    if chain then names[#names + 1] = { chain, chain_line } end
    chain, want_name = nil, false
  end
  local function long_bracket(at)
    local eq = src:match("^%[(=*)%[", at)
    if not eq then return nil end
    local close = "]" .. eq .. "]"
    local stop = sfind(src, close, at + 2 + #eq, true)
    local finish = stop and stop + #close - 1 or n
    local _, nl = ssub(src, at, finish):gsub("\n", "")
    line = line + nl
    return finish + 1
  end
  while i <= n do
    local c = ssub(src, i, i)
    if c == "\n" then
      line = line + 1
      i = i + 1
    elseif c:match("%s") then
      i = i + 1
    elseif ssub(src, i, i + 1) == "--" then
      flush()
      local j = long_bracket(i + 2)
      if j then i = j else
        local e = sfind(src, "\n", i, true)
        i = e or n + 1
      end
    elseif c == '"' or c == "'" then
      flush()
      local j = i + 1
      while j <= n do
        local d = ssub(src, j, j)
        if d == "\\" then j = j + 2
        elseif d == c then break
        else
          if d == "\n" then line = line + 1 end
          j = j + 1
        end
      end
      i = j + 1
    elseif c == "[" and src:match("^%[=*%[", i) then
      flush()
      i = long_bracket(i)
    elseif c:match("[%a_]") then
      local word = src:match("^[%a_][%w_]*", i)
      if want_name then
        chain = chain .. word
        want_name = false
      elseif src:match("^[%a_][%w_]*%s*=[^=]", i) then
        -- `name = value` (a table field or an assignment) defines, not uses
        flush()
      else
        flush()
        chain, chain_line = word, line
      end
      i = i + #word
    elseif ssub(src, i, i + 1) == ".." or ssub(src, i, i + 1) == "::" then
      flush()
      i = i + (ssub(src, i, i + 2) == "..." and 3 or 2)
    elseif (c == "." or c == ":") and not want_name then
      -- after `)`, `]` or a string, `:dump` starts a chain of its own
      if not chain then chain, chain_line = "", line end
      chain = chain .. c
      want_name = true
      i = i + 1
    elseif c:match("%d") then
      flush()
      i = i + #(src:match("^[%w_%.]+", i))
    else
      flush()
      i = i + 1
    end
  end
  flush()
  return names
end
M.scan_names = scan_names

-- Returns a list of problems ("file: security.dangerous_functions: ...").
local function dangerous_uses(src, file, extra)
  local deny = {}
  for _, f in ipairs(envdata.dangerous) do deny[f] = true end
  for _, f in ipairs(extra or {}) do deny[f] = true end
  local problems = {}
  for _, nl in ipairs(scan_names(src)) do
    local name, line = nl[1], nl[2]
    local hit = deny[name] and name
    if not hit and name:match("[:.]dump$") then hit = "string.dump" end
    if not hit then
      -- `os.execute(...)` inside a longer chain, e.g. `_G.os.execute`
      for f in pairs(deny) do
        if #name > #f and ssub(name, -#f - 1) == "." .. f then hit = f; break end
      end
    end
    if hit then
      problems[#problems + 1] = format("%s: security.dangerous_functions: line %d uses %s, " ..
        "which tools may not call", file, line, hit)
    end
  end
  return problems
end

function M.define(arg)
  local file = arg.file or "?"
  if sfind(arg.source, "^\27") then
    return { ok = false, problems = json.array({ file .. ": (file): precompiled bytecode is refused" }) }
  end
  local chunk, perr = loadstring(arg.source, arg.chunkname)
  if not chunk then
    return { ok = false, problems = json.array({ file .. ": (syntax): " .. tostring(perr) }) }
  end
  local env = make_env()
  setfenv(chunk, env)
  local ok, raw = pcall(chunk)
  if not ok then
    return { ok = false, problems = json.array({ file .. ": (load): " .. error_text(raw) }) }
  end
  if type(raw) ~= "table" or not made[raw] then
    return { ok = false, problems = json.array({
      file .. ": (file): does not return a tool (end the file with: return tool { ... })" }) }
  end
  local def, fns = dsl.normalize(raw, file, json)
  if not def then return { ok = false, problems = json.array(fns) } end

  -- A worker process gets sources the engine has scanned when it loaded
  -- them (arg.scanned): a scan per call would cost more than the call.
  local uses = arg.scanned and {} or dangerous_uses(arg.source, file, def.security.dangerous_functions)
  if #uses > 0 then
    if def.security.level ~= "none" then
      return { ok = false, problems = json.array(uses) }
    end
    def.warnings = json.array(uses)
  end

  local sec = def.security
  if #sec.allowed_paths > 0 then
    env.fs = make_fs(sec.allowed_paths, sec.max_file_size)
  end
  if sec.level == "none" then
    -- Trusted tool: the handler sees the whole standard library (print
    -- still goes to the log: stdout belongs to the embedding program).
    string.dump = full_string_dump
    for k, v in pairs(G) do
      -- print goes to the log; xpcall keeps the safe wrapper (a handler
      -- must stay stoppable at every level)
      if k ~= "print" and k ~= "_G" and k ~= "xpcall" then env[k] = v end
    end
  end
  tool_fns, tool_def, tool_env = fns, def, env
  return { ok = true, def = def }
end

local function fail(kind, message, extra)
  local s = { status = "error", kind = kind, message = message }
  if extra then for k, v in pairs(extra) do s[k] = v end end
  return s
end

-- ctx's functions: the same for every call (they hold nothing of one).
local function ctx_log(level, ...) log(level, ...) end
local function ctx_sleep(ms)
  if type(ms) ~= "number" or ms ~= ms then error("ctx.sleep: expected milliseconds", 2) end
  -- (toolcore's own check would name this file, with the engine's path)
  if ms > 3600e3 then error("ctx.sleep: at most one hour (3600000 ms)", 2) end
  sleep(ms)
end
-- done and total: numbers JSON can carry (NaN or an infinity made the
-- worker's note unencodable: the call ended as `internal`)
local function count(x)
  x = tonumber(x) or 0
  if x ~= x or x == math.huge or x == -math.huge then return 0 end
  return x
end
local function ctx_progress(done, total, message)
  notify("progress", count(done), count(total),
    message ~= nil and tostring(message) or "")
end

-- The status of a call that went well: one table for every call (only the
-- engine sees it, through a copy; tool code never gets hold of it).
local OK = { status = "ok" }

local function run_call(params, ctx)
  if not tool_fns then return fail("internal", "tool state has no tool") end
  ctx.log, ctx.sleep, ctx.progress = ctx_log, ctx_sleep, ctx_progress

  -- Custom constraints, after the schema (the host ran the schema).
  local failures
  for i, c in ipairs(tool_fns.constraints) do
    local ok, good, why = pcall(c, params)
    if not ok then
      failures = failures or json.array({})
      failures[#failures + 1] = { pointer = "", keyword = "constraints",
        schema_path = "constraints/" .. i, message = "constraint " .. i .. " raised: " .. error_text(good) }
    elseif not good then
      failures = failures or json.array({})
      failures[#failures + 1] = { pointer = "", keyword = "constraints",
        schema_path = "constraints/" .. i,
        message = type(why) == "string" and clean(why) or ("constraint " .. i .. " failed") }
    end
  end
  if failures then
    local msgs = {}
    for i, f in ipairs(failures) do msgs[i] = f.message end
    return fail("invalid_params", concat(msgs, "; "), { details = { errors = failures } })
  end

  local ok, res, err2 = pcall(tool_fns.handler, params, ctx)
  if not ok then
    local retryable = type(res) == "table" and rawget(res, "retryable") == true
    return fail("tool_error", error_text(res), { retryable = retryable })
  end
  if res == nil and err2 ~= nil then
    return fail("tool_error", error_text(err2))
  end
  return OK, res
end

function M.execute(arg)
  return run_call(arg.params, arg.ctx or {})
end

-- The caller of the calls so far (see execute_with): tool code never sees
-- this table, only copies of it.
local kept_caller

-- A fresh copy of plain data made by the engine (no cycles, only the JSON
-- markers as metatables): what a call does to its copy stays there.
local fresh = toolcore.fresh

-- The pipeline's call (l_lstate.c's st:execute): ctx is made here, on the
-- call's thread. `caller` is nil when the engine sends the same caller as
-- last time: kept_caller is then its copy. With `given`, the engine made
-- `caller` for this call alone (its fast way, from the caller it keeps
-- packed): it is used as it is. Returns true, output when the call went
-- well, else what execute returns.
function M.execute_with(params, caller, id, attempt, deadline, given)
  if not given then
    if caller ~= nil then kept_caller = caller end
    caller = fresh(kept_caller)
  end
  local status, res = run_call(params, { execution_id = id, tool = tool_def and tool_def.metadata.name,
    attempt = attempt, caller = caller, deadline = deadline })
  if status == OK then return true, res end
  return status, res
end

return M
