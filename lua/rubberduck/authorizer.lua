-- rubberduck.authorizer — may this caller run this tool, with these
-- parameters, from this entry point, now?
--
-- One authorizer per engine (engine.auth). It holds:
--   * the policy (policydef.lua: roles with capabilities and inheritance,
--     principals, declarative rules), loaded from a Lua file evaluated in
--     a Lua state of its own under a CPU/time/memory budget, never in the
--     host state; a reload is atomic (a bad file leaves the old policy);
--   * the engine's token key (the data directory's token.key), to turn a
--     signed capability token into a caller (token.lua);
--   * the decision cache.
--
-- A caller is { principal =, roles = {...}, capabilities = {...} } or
-- { token = "rd1...." }; other fields (trace ids) are kept if they are
-- plain data. caller(c) normalizes it once per call (or refuses it);
-- check(def, caller, params, entry) decides:
--   1. a caller without identity is refused when a policy says so
--      (`anonymous = "deny"`, the default of a policy; without a policy
--      the engine runs as before: grants are exactly what the caller says);
--   2. every capability (and role) the tool needs must be held: the tool's
--      `capabilities` and `roles`, plus those of each `requires` entry
--      whose `when` matches the params. Held = the caller's own, those of
--      its roles and of its principal in the policy, roles expanded through
--      `inherits`; a token's attenuation blocks bound all of it (a token's
--      caller gets what the token states, not its principal's entry);
--   3. the policy's rules that apply to the tool, in order: a rule whose
--      `when` matches (and whose `except` does not) refuses the call if it
--      is `deny = true` or its `require` does not hold.
-- Denials name only what was missing or the rule and condition that
-- refused, never the caller's other grants or other principals.
--
-- Decisions are cached, keyed by everything the decision read: the
-- caller's key (principal, roles, capabilities, token id and bounds), the
-- tool definition (name, version, identity), the entry point, the value of
-- every parameter the tool's requirements or the applicable rules name,
-- and the minute when an applicable rule reads the time. Entries live
-- `cache_ttl` seconds; a policy (re)load empties the cache.
local core = require "rubberduck.core"
local json = require "rubberduck.json"
local token = require "rubberduck.token"

local type, pairs, ipairs, next, rawget, tostring = type, pairs, ipairs, next, rawget, tostring
local format, concat, sort, floor = string.format, table.concat, table.sort, math.floor
-- The cache's clock: through the FFI where it can be (a compiled trace
-- calls it without leaving the JIT), else the core's C function.
local mono_ms = core.mono_ms
do
  local ok, ffi = pcall(require, "ffi")
  if ok then
    local fine = pcall(ffi.cdef, [[
      typedef struct { long rd_auth_sec; long rd_auth_nsec; } rd_auth_timespec;
      int clock_gettime(int clk, rd_auth_timespec *ts);
    ]])
    if fine then
      local ts = ffi.new("rd_auth_timespec")
      local C = ffi.C
      local CLOCK_MONOTONIC = 1
      if C.clock_gettime(CLOCK_MONOTONIC, ts) == 0 then
        mono_ms = function()
          C.clock_gettime(CLOCK_MONOTONIC, ts)
          return tonumber(ts.rd_auth_sec) * 1000 + tonumber(ts.rd_auth_nsec) / 1e6
        end
      end
    end
  end
end

local M = {}

M.ENTRIES = { "cli", "repl", "lua", "c", "http", "console" }
local ENTRY_SET = {}
for _, e in ipairs(M.ENTRIES) do ENTRY_SET[e] = true end
M.MAX_LIST = 1024            -- roles / capabilities a caller may carry
M.MAX_NAME = 256             -- bytes of a principal, role or capability
M.MAX_EXTRA = 64 * 1024      -- bytes of a caller's other fields, as JSON
M.CACHE_TTL = 60             -- seconds, when no policy says otherwise
M.CACHE_MAX = 100000         -- entries; past it the cache starts over
M.TOKEN_CACHE_MAX = 10000    -- verified tokens kept (by their text)
M.POLICY_CPU_MS = 250
M.POLICY_TIMEOUT_MS = 2000
M.POLICY_MEMORY = 32 * 1024 * 1024
-- Callers this module made (weak): check() trusts only these, and
-- normalizes anything else first.
local NORMALIZED = setmetatable({}, { __mode = "k" })
-- Fields of a caller the engine sets itself.
local RESERVED = { token_id = true, bounds = true, anonymous = true, key = true }

-- Does the held capability `held` cover `need`? "fs.*" covers "fs.read"
-- and "fs.read.big"; "*" covers everything.
local function covers(held, need)
  if held == need or held == "*" then return true end
  if held:sub(-2) == ".*" then
    local prefix = held:sub(1, -2) -- keeps the dot
    return need:sub(1, #prefix) == prefix
  end
  return false
end
M.covers = covers

-- ---- callers ----------------------------------------------------------------------

-- A list of names from a caller: nil | json.null | a sequence of strings.
-- Counts at most MAX_LIST + 1 keys, so a huge table costs little.
local function name_list(v, what)
  if v == nil or v == json.null then return json.array({}) end
  if type(v) ~= "table" then return nil, what .. " must be a list of strings, got " .. type(v) end
  local n = 0
  for k in next, v do
    n = n + 1
    if n > M.MAX_LIST then return nil, what .. " has more than " .. M.MAX_LIST .. " entries" end
    if type(k) ~= "number" or k < 1 or k % 1 ~= 0 or k > M.MAX_LIST then
      return nil, what .. " must be a list of strings"
    end
  end
  local out = json.array({})
  for i = 1, n do
    local s = rawget(v, i)
    if type(s) ~= "string" then
      return nil, format("%s[%d] must be a string, got %s", what, i, s == nil and "a hole" or type(s))
    end
    if s == "" or #s > M.MAX_NAME then
      return nil, format("%s[%d] must be 1 to %d bytes", what, i, M.MAX_NAME)
    end
    out[i] = s
  end
  return out
end

local function lp(s) return #s .. ":" .. s end

local function sorted_key(list)
  local n = #list
  if n == 0 then return "" end
  if n == 1 then return lp(list[1]) end
  local c = {}
  for i, s in ipairs(list) do c[i] = s end
  sort(c)
  local parts = {}
  local last
  for _, s in ipairs(c) do
    if s ~= last then parts[#parts + 1] = lp(s) end
    last = s
  end
  return concat(parts, ",")
end

-- The cache key of a caller: everything about it a decision may read.
local function caller_key(c)
  local head = lp(c.principal) .. ";" .. (c.anonymous and "A" or "P") .. ";" ..
    sorted_key(c.roles) .. ";" .. sorted_key(c.capabilities) .. ";" ..
    (c.token_id and lp(c.token_id) or "-")
  if not c.bounds or #c.bounds == 0 then return head end
  local parts = { head }
  for _, b in ipairs(c.bounds or {}) do
    parts[#parts + 1] = "[" .. (b.capabilities and sorted_key(b.capabilities) or "*") .. "|" ..
      (b.roles and sorted_key(b.roles) or "*") .. "]"
  end
  return concat(parts, ";")
end

-- Normalize what a caller passed (no token). Returns caller | nil, reason.
function M.caller(c)
  if c == nil or c == json.null then c = {} end
  if type(c) ~= "table" then return nil, "caller must be a table, got " .. type(c) end
  local out = {}
  local extra = 0
  for k, v in next, c do
    if type(k) ~= "string" then return nil, "caller keys must be strings, got " .. type(k) end
    if RESERVED[k] then return nil, "caller." .. k .. " is set by the engine, not by a caller" end
    if k == "token" then return nil, "caller.token: a token is verified by the engine (engine.auth:caller)" end
    if k ~= "principal" and k ~= "roles" and k ~= "capabilities" then
      extra = extra + 1
      if extra > 64 then return nil, "caller has more than 64 fields" end
      local tv = type(v)
      if tv == "table" then
        local s, err = json.encode(v)
        if not s then return nil, "caller." .. k .. ": not plain data (" .. tostring(err) .. ")" end
        if #s > M.MAX_EXTRA then return nil, "caller." .. k .. ": larger than " .. M.MAX_EXTRA .. " bytes" end
      elseif not (tv == "string" or tv == "number" or tv == "boolean" or v == json.null) then
        return nil, "caller." .. k .. ": not plain data (" .. tv .. ")"
      end
      out[k] = v
    end
  end
  local p = rawget(c, "principal")
  if p == nil or p == json.null then
    out.principal = "anonymous"
    out.anonymous = true
  elseif type(p) ~= "string" or p == "" or #p > M.MAX_NAME then
    return nil, "caller.principal must be a non-empty string of at most " .. M.MAX_NAME .. " bytes"
  else
    out.principal = p
    out.anonymous = p == "anonymous" or nil
  end
  local err
  out.roles, err = name_list(rawget(c, "roles"), "caller.roles")
  if not out.roles then return nil, err end
  out.capabilities, err = name_list(rawget(c, "capabilities"), "caller.capabilities")
  if not out.capabilities then return nil, err end
  out.key = caller_key(out)
  NORMALIZED[out] = true
  return out
end

-- ---- policy loading -----------------------------------------------------------------

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  if not s then return nil, "cannot read" end
  return s
end

-- Evaluate a policy file in a state of its own. Returns policy | nil, problems.
function M.load_policy_file(engine, file)
  if type(file) ~= "string" or file == "" then return nil, { "policy: expected a file name" } end
  local source, rerr = read_file(file)
  if not source then return nil, { file .. ": (file): " .. tostring(rerr) } end
  local ok, st = pcall(core.lstate.new, engine.loop, { max_memory = M.POLICY_MEMORY, jit = false,
    lua_path = engine.lua_path, boot = "rubberduck.policystate" })
  if not ok then return nil, { file .. ": (engine): " .. tostring(st) } end
  local done, r = false, nil
  local started, serr = st:start("load", { source = source, chunkname = "@" .. file, file = file },
    { cpu_ms = M.POLICY_CPU_MS, timeout_ms = M.POLICY_TIMEOUT_MS },
    function(...) done, r = true, { ... } end)
  if not started then
    st:close()
    return nil, { file .. ": (engine): " .. tostring(serr) }
  end
  while not done do engine.loop:run("once") end
  st:close()
  local good, res, msg = r[1], r[2], r[3]
  if not good then
    local why = ({
      cpu_limit = "the policy spent its CPU budget (" .. M.POLICY_CPU_MS .. " ms) while loading",
      timeout = "the policy ran past the load deadline (" .. M.POLICY_TIMEOUT_MS .. " ms)",
      memory_limit = "the policy reached the memory cap (" .. M.POLICY_MEMORY .. " bytes) while loading",
      invalid_output = "the policy holds values that are not data: " .. tostring(msg),
    })[res] or tostring(msg)
    return nil, { file .. ": (load): " .. why }
  end
  if not res.ok then return nil, res.problems end
  return M.compile(res.policy, file)
end

-- From the normalized policy to what decisions read: each role's closure
-- (itself and every role it inherits, transitively).
function M.compile(pol, file)
  local closure = {}
  for name in pairs(pol.roles) do
    local set, stack = {}, { name }
    while #stack > 0 do
      local r = table.remove(stack)
      if not set[r] then
        set[r] = true
        for _, p in ipairs(pol.roles[r] and pol.roles[r].inherits or {}) do stack[#stack + 1] = p end
      end
    end
    closure[name] = set
  end
  pol.closure = closure
  for _, rule in ipairs(pol.rules) do
    for _, c in ipairs({ rule.when or false, rule.require or false, rule.except or false }) do
      if c and c.params then
        local names = {}
        for k in pairs(c.params) do names[#names + 1] = k end
        sort(names)
        c.param_names = names
      end
    end
  end
  pol.file = file
  return pol
end

-- ---- the authorizer ---------------------------------------------------------------

local Auth = {}
Auth.__index = Auth

-- opts: data_dir (the token key's directory), audience (this engine's
-- name for token audiences), emit (function(name, measurements, metadata)).
function M.new(opts)
  opts = opts or {}
  local self = setmetatable({
    data_dir = opts.data_dir or "./.rduck",
    audience = opts.audience,
    emit = opts.emit or function() end,
    now = core.now,          -- wall clock (seconds) for time-of-day rules and tokens
    policy = nil,
    generation = 0,
    tokens = {}, ntokens = 0,
    hits = 0, misses = 0,
  }, Auth)
  self:clear_cache()
  return self
end

function Auth:clear_cache()
  self.cache = {}
  self.entries = 0
  self.plans = setmetatable({}, { __mode = "k" })
  self.grants = {}
  self.ngrants = 0
end

function Auth:ttl_ms()
  local ttl = self.policy and self.policy.cache_ttl or M.CACHE_TTL
  return ttl * 1000
end

-- Put a compiled policy in force (atomic: one assignment), empty the cache.
function Auth:set_policy(pol)
  self.policy = pol
  self.generation = self.generation + 1
  self:clear_cache()
end

-- Load (or reload) a policy file. On failure the policy in force stays.
-- Returns true | nil, problems.
function Auth:load(engine, file)
  file = file or (self.policy and self.policy.file)
  local pol, problems = M.load_policy_file(engine, file)
  if not pol then
    self.emit("policy.reload_failed", nil, { file = tostring(file), reason = problems[1],
      problems = #problems })
    return nil, problems
  end
  self:set_policy(pol)
  local nroles, nprincipals = 0, 0
  for _ in pairs(pol.roles) do nroles = nroles + 1 end
  for _ in pairs(pol.principals) do nprincipals = nprincipals + 1 end
  self.emit("policy.loaded", { roles = nroles, principals = nprincipals, rules = #pol.rules },
    { file = file, generation = tostring(self.generation) })
  return true
end

function Auth:stats()
  return { hits = self.hits, misses = self.misses, entries = self.entries,
    generation = self.generation, policy = self.policy and self.policy.file or json.null }
end

-- The engine's token key (loaded once; created on first use when `create`).
function Auth:key(create)
  if self.signkey then return self.signkey end
  local k, err, code = core.sign.key_load(self.data_dir, create)
  if not k then return nil, err, code end
  self.signkey = k
  return k
end

-- Normalize a caller, verifying its token if it has one. Returns caller |
-- nil, reason (the engine refuses the call as unauthorized).
-- The last caller table normalized without a token, flattened:
-- key, value, ... with a list value as key, LIST, length, elements. An
-- embedder that passes one caller table for many calls gets the same
-- normalized caller back while that table is unchanged (normalizing costs
-- more than the rest of a cached authorization). Tables that hold other
-- tables (custom fields) are not remembered.
local LIST = {}

local function flatten(c, into)
  local n = 0
  for k, v in next, c do
    into[n + 1] = k
    if type(v) == "table" then
      if k ~= "roles" and k ~= "capabilities" then return nil end
      local len = #v
      into[n + 2], into[n + 3] = LIST, len
      n = n + 3
      for j = 1, len do into[n + j] = rawget(v, j) end
      n = n + len
    else
      into[n + 2] = v
      n = n + 2
    end
  end
  return n
end

-- Is c still what `flat` (n entries) holds? Any key added, removed or
-- changed, in c or its lists, is a difference.
local function unchanged(c, flat, n)
  local i = 0
  for k, v in next, c do
    if flat[i + 1] ~= k then return false end
    if type(v) == "table" then
      if flat[i + 2] ~= LIST then return false end
      local len = flat[i + 3]
      local count = 0
      for _ in next, v do count = count + 1 end
      if count ~= len then return false end
      i = i + 3
      for j = 1, len do if rawget(v, j) ~= flat[i + j] then return false end end
      i = i + len
    else
      if flat[i + 2] ~= v then return false end
      i = i + 2
    end
  end
  return i == n
end

function Auth:caller(c)
  local last = self.last_caller
  if last and c == last.input and unchanged(c, last.flat, last.n) then return last.out end
  if type(c) == "table" and rawget(c, "token") ~= nil then
    local t = rawget(c, "token")
    for _, k in ipairs({ "principal", "roles", "capabilities" }) do
      if rawget(c, k) ~= nil then
        return nil, "caller." .. k .. ": a token defines the caller; do not add principal, roles or capabilities"
      end
    end
    if type(t) ~= "string" then return nil, "token refused: malformed: a token is a string, got " .. type(t) end
    local key, kerr, code = self:key(false)
    if not key then
      return nil, "token refused: " .. (code == "not_found"
        and ("this engine has no token key (" .. self.data_dir .. "/token.key): it issued no tokens")
        or kerr)
    end
    -- Signatures are checked once per token string (the claims they
    -- yield depend on nothing else); time and audience at every use.
    local claims, why = self.tokens[t], nil
    if not claims then
      claims, why = token.verify_signed(t, key:public())
      if not claims then return nil, "token refused: " .. why end
      if self.ntokens >= M.TOKEN_CACHE_MAX then self.tokens, self.ntokens = {}, 0 end
      self.tokens[t] = claims
      self.ntokens = self.ntokens + 1
    end
    claims, why = token.check_claims(claims, { now = self.now(), audience = self.audience })
    if not claims then return nil, "token refused: " .. why end
    local base = {}
    for k, v in next, c do if k ~= "token" then base[k] = v end end
    base.principal, base.roles, base.capabilities = claims.principal, claims.roles, claims.capabilities
    local out, err = M.caller(base)
    if not out then return nil, err end
    out.token_id = claims.token_id
    out.token_expires = claims.exp
    if #claims.bounds > 0 then out.bounds = claims.bounds end
    out.anonymous = nil
    out.key = caller_key(out)
    NORMALIZED[out] = true
    return out
  end
  local out, err = M.caller(c)
  if out and type(c) == "table" then
    last = last or { flat = {} }
    local n = flatten(c, last.flat)
    if n then
      last.input, last.out, last.n = c, out, n
      self.last_caller = last
    else
      self.last_caller = nil
    end
  end
  return out, err
end

-- ---- decisions --------------------------------------------------------------------

local function tool_matches(patterns, name)
  if not patterns then return true end
  for _, p in ipairs(patterns) do
    if p == name then return true end
    if p:find("*", 1, true) then
      local lua_pat = "^" .. p:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".*") .. "$"
      if name:match(lua_pat) then return true end
    end
  end
  return false
end
M.tool_matches = tool_matches

local function cond_params(cond, into)
  if cond and cond.params then for k in pairs(cond.params) do into[k] = true end end
end

-- What deciding about `def` reads, under the current policy: the params
-- its requirements and rules name, whether a rule reads the clock, and the
-- rules that apply to it.
function Auth:plan(def)
  local plan = self.plans[def]
  if plan then return plan end
  local names, rules, time = {}, {}, false
  for _, r in ipairs(def.requires or {}) do
    for k in pairs(r.when) do names[k] = true end
  end
  local pol = self.policy
  if pol then
    for _, rule in ipairs(pol.rules) do
      if tool_matches(rule.tools, def.metadata.name) then
        rules[#rules + 1] = rule
        for _, c in ipairs({ rule.when or false, rule.require or false, rule.except or false }) do
          if c then
            cond_params(c, names)
            if c.hours then time = true end
          end
        end
      end
    end
  end
  local params = {}
  for k in pairs(names) do params[#params + 1] = k end
  sort(params)
  plan = { params = params, rules = rules, time = time, name = def.metadata.name }
  self.plans[def] = plan
  return plan
end

-- What the caller holds under the policy: { roles = set, caps = list }.
function Auth:held(caller)
  local g = self.grants[caller.key]
  if g then return g end
  local pol = self.policy
  local roles, caps = {}, {}
  local direct = {}
  for _, r in ipairs(caller.roles) do direct[#direct + 1] = r end
  for _, c in ipairs(caller.capabilities) do caps[#caps + 1] = c end
  -- A token states everything its holder gets: its principal's entry in
  -- the policy adds nothing to it (its roles still expand through the
  -- policy's roles).
  local pr = pol and not caller.anonymous and not caller.token_id and pol.principals[caller.principal]
  if pr then
    for _, r in ipairs(pr.roles) do direct[#direct + 1] = r end
    for _, c in ipairs(pr.capabilities) do caps[#caps + 1] = c end
  end
  for _, r in ipairs(direct) do
    local cl = pol and pol.closure[r]
    if cl then
      for x in pairs(cl) do roles[x] = true end
    else
      roles[r] = true   -- a role the policy does not define grants nothing but itself
    end
  end
  for _, b in ipairs(caller.bounds or {}) do
    if b.roles then
      local keep = {}
      for _, r in ipairs(b.roles) do keep[r] = true end
      for r in pairs(roles) do
        -- a kept role keeps what it inherits
        local ok = keep[r]
        if not ok and pol then
          for k in pairs(keep) do if pol.closure[k] and pol.closure[k][r] then ok = true; break end end
        end
        if not ok then roles[r] = nil end
      end
    end
  end
  if pol then
    for r in pairs(roles) do
      local def = pol.roles[r]
      if def then for _, c in ipairs(def.capabilities) do caps[#caps + 1] = c end end
    end
  end
  g = { roles = roles, caps = caps }
  if self.ngrants >= M.CACHE_MAX then self.grants, self.ngrants = {}, 0 end
  self.grants[caller.key] = g
  self.ngrants = self.ngrants + 1
  return g
end

local function holds_cap(g, bounds, need)
  local ok = false
  for _, h in ipairs(g.caps) do
    if covers(h, need) then ok = true; break end
  end
  if not ok then return false end
  for _, b in ipairs(bounds or {}) do
    if b.capabilities then
      local inb = false
      for _, h in ipairs(b.capabilities) do
        if covers(h, need) then inb = true; break end
      end
      if not inb then return false end
    end
  end
  return true
end

local function value_in(v, list)
  for _, x in ipairs(list) do if v == x then return true end end
  return false
end

local function show(v)
  if type(v) == "string" then return format("%q", v) end
  if v == nil then return "absent" end
  if type(v) == "table" then return "a " .. (json.is_array(v) and "list" or "object") end
  return tostring(v)
end

local function minute_of_day(now, tz)
  local t = os.date(tz == "local" and "*t" or "!*t", floor(now))
  return t.hour * 60 + t.min
end

-- Does `cond` hold? Returns true | false, why (a reason naming only the
-- condition, never the caller's grants).
local function holds(cond, caller, g, params, entry, now)
  if cond.principals and not value_in(caller.principal, cond.principals) then
    return false, "the caller is not one of the principals it names"
  end
  if cond.roles then
    local any = false
    for _, r in ipairs(cond.roles) do if g.roles[r] then any = true; break end end
    if not any then return false, "needs role " .. concat(cond.roles, " or ") end
  end
  if cond.capabilities then
    for _, c in ipairs(cond.capabilities) do
      if not holds_cap(g, caller.bounds, c) then return false, "needs capability " .. c end
    end
  end
  if cond.entry and not value_in(entry, cond.entry) then
    return false, format("entry point %s is not %s", tostring(entry), concat(cond.entry, " or "))
  end
  if cond.params then
    for _, k in ipairs(cond.param_names) do
      local v = params[k]
      if not value_in(v, cond.params[k]) then
        local want = {}
        for i, x in ipairs(cond.params[k]) do want[i] = show(x) end
        return false, format("params.%s is %s, not %s", k, show(v), concat(want, " or "))
      end
    end
  end
  if cond.hours then
    local h = cond.hours
    local m = minute_of_day(now or core.now(), h.tz)
    local inside
    if h.from < h.to then inside = m >= h.from and m < h.to else inside = m >= h.from or m < h.to end
    if not inside then
      return false, format("outside %s (now %02d:%02d)", h.text, floor(m / 60), m % 60)
    end
  end
  return true
end

-- Does the call match a `requires` entry's `when`?
local function req_matches(req, params)
  for k, vals in pairs(req.when) do
    if not value_in(params[k], vals) then return false end
  end
  return true
end

-- The capabilities and roles the call needs, missing from `g`: two lists,
-- or nil when nothing is missing. Allocates only on a denial.
local function missing(def, caller, g, params)
  local mc, mr
  local caps, roles = def.capabilities, def.roles
  if caps then
    for i = 1, #caps do
      if not holds_cap(g, caller.bounds, caps[i]) then
        mc = mc or json.array({})
        if not value_in(caps[i], mc) then mc[#mc + 1] = caps[i] end
      end
    end
  end
  if roles then
    for i = 1, #roles do
      if not g.roles[roles[i]] then
        mr = mr or json.array({})
        if not value_in(roles[i], mr) then mr[#mr + 1] = roles[i] end
      end
    end
  end
  local reqs = def.requires
  if reqs then
    for i = 1, #reqs do
      local req = reqs[i]
      if req_matches(req, params) then
        for _, c in ipairs(req.capabilities) do
          if not holds_cap(g, caller.bounds, c) then
            mc = mc or json.array({})
            if not value_in(c, mc) then mc[#mc + 1] = c end
          end
        end
        for _, r in ipairs(req.roles) do
          if not g.roles[r] then
            mr = mr or json.array({})
            if not value_in(r, mr) then mr[#mr + 1] = r end
          end
        end
      end
    end
  end
  if mc or mr then return mc or json.array({}), mr or json.array({}) end
  return nil
end

-- Decide without the cache. Returns allowed, message, details.
function Auth:decide(def, plan, caller, params, entry, now)
  local pol = self.policy
  if pol and caller.anonymous and pol.anonymous ~= "allow" then
    return false, format("%s may not run %s: the caller has no identity (the policy refuses anonymous callers)",
      caller.principal, def.metadata.name), { reason = "no identity" }
  end
  local g = self.grants[caller.key] or self:held(caller)
  local missing_caps, missing_roles = missing(def, caller, g, params)
  if missing_caps then
    local parts = {}
    if #missing_caps > 0 then parts[#parts + 1] = "capabilities " .. concat(missing_caps, ", ") end
    if #missing_roles > 0 then parts[#parts + 1] = "roles " .. concat(missing_roles, ", ") end
    return false, format("%s may not run %s: missing %s", caller.principal, def.metadata.name,
      concat(parts, " and ")), { missing_capabilities = missing_caps, missing_roles = missing_roles }
  end
  local rules = plan.rules
  for i = 1, #rules do
    local rule = rules[i]
    local applies = not rule.when or holds(rule.when, caller, g, params, entry, now)
    if applies and rule.except and holds(rule.except, caller, g, params, entry, now) then applies = false end
    if applies then
      local ok, why = true, nil
      if rule.deny then
        ok, why = false, "the rule denies this call"
      else
        ok, why = holds(rule.require, caller, g, params, entry, now)
      end
      if not ok then
        return false, format("%s may not run %s: rule %q refused: %s", caller.principal,
          def.metadata.name, rule.name, why), { rule = rule.name, reason = why }
      end
    end
  end
  return true
end

local NIL, NAN, TABLE = {}, {}, {}

local function child(n, k)
  local c = n[k]
  if not c then c = {}; n[k] = c end
  return c
end

-- Returns true | false, message, details. `params` are the validated
-- params; `entry` the entry point (cli, repl, lua, c, http, console).
local function copy_details(d)
  if type(d) ~= "table" then return d end
  local out = {}
  for k, v in pairs(d) do
    if type(v) == "table" then
      local c = json.array({})
      for i, x in ipairs(v) do c[i] = x end
      v = c
    end
    out[k] = v
  end
  return out
end

function Auth:check(def, caller, params, entry)
  if not NORMALIZED[caller] then
    local c, why = self:caller(caller)
    if not c then
      return false, "caller refused: " .. why, { reason = why }
    end
    caller = c
  end
  entry = entry or "lua"
  if not ENTRY_SET[entry] then
    local why = "unknown entry point " .. (type(entry) == "string" and format("%q", entry) or type(entry))
    return false, format("%s may not run %s: %s", caller.principal, tostring(def.metadata.name), why),
      { reason = why }
  end
  local plan = self.plans[def] or self:plan(def)
  params = type(params) == "table" and params or {}
  local now
  -- walk the cache without allocating
  local node = self.cache[caller.key]
  node = node and node[plan]
  node = node and node[entry]
  local ps = plan.params
  for i = 1, #ps do
    if not node then break end
    local v = params[ps[i]]
    if v == nil then v = NIL elseif type(v) == "table" then v = TABLE elseif v ~= v then v = NAN end
    node = node[v]
  end
  local bucket
  if plan.time then
    now = self.now()
    bucket = floor(now / 60)
    node = node and node[bucket]
  end
  local t = mono_ms()
  if node and node.expires > t then
    self.hits = self.hits + 1
    if node.allowed then return true end
    return false, node.message, copy_details(node.details)
  end
  self.misses = self.misses + 1
  if plan.time and not now then now = self.now() end
  local allowed, message, details = self:decide(def, plan, caller, params, entry, now)
  local ttl = self:ttl_ms()
  if ttl > 0 then
    if self.entries >= M.CACHE_MAX then self:clear_cache(); plan = self:plan(def) end
    local n = child(child(child(self.cache, caller.key), plan), entry)
    for i = 1, #ps do
      local v = params[ps[i]]
      if v == nil then v = NIL elseif type(v) == "table" then v = TABLE elseif v ~= v then v = NAN end
      n = child(n, v)
    end
    if bucket then n = child(n, bucket) end
    if n.expires == nil then self.entries = self.entries + 1 end
    n.allowed, n.message, n.details, n.expires = allowed, message, copy_details(details), t + ttl
  end
  return allowed, message, details
end

return M
