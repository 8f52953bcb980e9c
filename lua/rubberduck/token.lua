-- rubberduck.token — signed capability tokens (Ed25519, libsodium through
-- rubberduck.core.sign), with offline attenuation by the holder.
--
-- Format: "rd1." P1 "." S1 [ "." P2 "." S2 ... ] "." PROOF, each part
-- base64url without padding.
--   Pi     block i's payload, JSON. Block 1 (the authority, signed by the
--          engine's key of the data directory): { v = 1, id, kid, sub
--          (principal), roles, caps, iat, nbf, exp, aud?, nk }. Later blocks
--          (attenuations, signed by their holder): { caps?, roles?, nbf?,
--          exp?, aud?, nk }.
--   Si     Ed25519 signature of "rduck-token-v1\0" .. i .. "\0" .. S(i-1) .. Pi,
--          by the engine's key for i = 1, else by the key whose public half
--          is block i-1's `nk`. Each signature covers the one before it, so
--          blocks cannot be reordered, dropped from the middle or spliced.
--   PROOF  the 32-byte seed of the key whose public half is the last
--          block's `nk`: it lets the holder append a block (sign it, and
--          put a fresh `nk` in it), and its absence or mismatch shows a
--          token cut short (a dropped last block cannot be re-proved:
--          the earlier seed is not in the token any more).
-- (The chaining follows Biscuit's design: https://www.biscuitsec.org/docs/reference/specifications/)
--
-- Every later block must narrow: its caps covered by the previous bound
-- (checked where the bound is known offline: when block 1 names roles, the
-- roles' capabilities are in the engine's policy, so the block is a bound
-- the authorizer intersects with), its roles a subset, its exp not later,
-- its nbf not earlier, its aud a subset. A token is refused, with the
-- reason, when any of that fails; error texts start with the class:
-- malformed, tampered, foreign key, truncated, widened, expired, not yet
-- valid, audience.
local core = require "rubberduck.core"
local json = require "rubberduck.json"

local sign = core.sign
local b64e, b64d = sign.b64encode, sign.b64decode
local floor, format, concat = math.floor, string.format, table.concat

local M = {}

M.PREFIX = "rd1"
M.MAX_LENGTH = 16384
M.MAX_BLOCKS = 16
M.MAX_TTL = 366 * 86400
local DOMAIN = "rduck-token-v1\0"

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", floor(t)) end

-- "90s", "10m", "1h", "7d" or plain seconds -> seconds | nil, message
function M.parse_duration(s)
  if type(s) == "number" then s = tostring(s) end
  if type(s) ~= "string" then return nil, "expected a duration such as 90s, 10m, 1h, 7d" end
  local n, unit = s:match("^(%d+%.?%d*)([smhd]?)$")
  n = tonumber(n)
  if not n or n <= 0 then return nil, "expected a duration such as 90s, 10m, 1h, 7d, got " .. s end
  local secs = n * (({ s = 1, m = 60, h = 3600, d = 86400 })[unit] or 1)
  if secs > M.MAX_TTL then return nil, "at most 366d, got " .. s end
  return secs
end

local function kid_of(pk) return b64e(pk:sub(1, 8)) end
M.kid_of = kid_of

local function message(i, prev_sig, payload)
  return DOMAIN .. i .. "\0" .. prev_sig .. payload
end

local function covers(held, need)
  if held == need or held == "*" then return true end
  if held:sub(-2) == ".*" then
    local prefix = held:sub(1, -2)
    return need:sub(1, #prefix) == prefix
  end
  return false
end
M.covers = covers

local function covered_by_any(list, need)
  for _, h in ipairs(list) do if covers(h, need) then return true end end
  return false
end

local function in_list(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

local function string_list(v, what)
  if v == nil then return nil end
  if type(v) ~= "table" then return nil, what .. " must be a list of strings" end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v or n > 1024 then return nil, what .. " must be a list of at most 1024 strings" end
  local out = json.array({})
  for i = 1, #v do
    if type(v[i]) ~= "string" or v[i] == "" or #v[i] > 256 then
      return nil, what .. "[" .. i .. "] must be a non-empty string"
    end
    out[i] = v[i]
  end
  return out
end

-- Split a token into blocks (payload tables, raw parts) and its proof.
-- Checks the structure only. Returns t | nil, reason.
function M.decode(token)
  if type(token) ~= "string" then return nil, "malformed: a token is a string, got " .. type(token) end
  if #token > M.MAX_LENGTH then return nil, "malformed: longer than " .. M.MAX_LENGTH .. " bytes" end
  local parts = {}
  for p in (token .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = p end
  if parts[1] ~= M.PREFIX then return nil, "malformed: not a RubberDuck token (expected rd1.…)" end
  local n = #parts - 2
  if n < 2 or n % 2 ~= 0 then
    return nil, "malformed: expected rd1.PAYLOAD.SIGNATURE[.PAYLOAD.SIGNATURE…].PROOF, got " ..
      #parts .. " parts (truncated?)"
  end
  if n / 2 > M.MAX_BLOCKS then return nil, "malformed: more than " .. M.MAX_BLOCKS .. " blocks" end
  local t = { blocks = {} }
  for i = 1, n / 2 do
    local raw, sig = b64d(parts[2 * i]), b64d(parts[2 * i + 1])
    if not raw then return nil, format("malformed: block %d's payload is not base64url", i) end
    if not sig or #sig ~= sign.BYTES then
      return nil, format("malformed: block %d's signature is not a %d-byte base64url value", i, sign.BYTES)
    end
    local p, err = json.decode(raw)
    if type(p) ~= "table" or json.is_array(p) and next(p) ~= nil then
      return nil, format("malformed: block %d's payload is not a JSON object%s", i, err and (": " .. err) or "")
    end
    t.blocks[i] = { payload = p, raw = raw, sig = sig }
  end
  local proof = b64d(parts[#parts])
  if not proof or #proof ~= 32 then return nil, "malformed: the proof is not a 32-byte base64url value" end
  t.proof = proof
  return t
end

local function num(p, k, i, required)
  local v = p[k]
  if v == nil and not required then return nil end
  if type(v) ~= "number" or v ~= v or v < 0 or v > 1e11 then
    return nil, format("malformed: block %d: %s must be a time (seconds since the epoch)", i, k)
  end
  return v
end

-- Check block fields and the narrowing of every block; fills t.claims.
-- Needs no key: the holder runs it before appending a block, the engine
-- after checking the signatures.
local function check_chain(t)
  local b1 = t.blocks[1].payload
  if b1.v ~= 1 then return nil, "malformed: block 1: unknown version " .. tostring(b1.v) end
  if type(b1.id) ~= "string" or b1.id == "" or #b1.id > 64 then return nil, "malformed: block 1: no token id" end
  if type(b1.sub) ~= "string" or b1.sub == "" or #b1.sub > 256 then
    return nil, "malformed: block 1: sub (the principal) must be a non-empty string"
  end
  local caps, err = string_list(b1.caps or json.array({}), "caps")
  if not caps then return nil, "malformed: block 1: " .. err end
  local roles
  roles, err = string_list(b1.roles or json.array({}), "roles")
  if not roles then return nil, "malformed: block 1: " .. err end
  local exp, nbf, aud
  exp, err = num(b1, "exp", 1, true)
  if not exp then return nil, err end
  nbf, err = num(b1, "nbf", 1, true)
  if not nbf then return nil, err end
  if b1.aud ~= nil then
    aud, err = string_list(b1.aud, "aud")
    if not aud then return nil, "malformed: block 1: " .. err end
  end
  local claims = { principal = b1.sub, roles = roles, capabilities = caps, id = b1.id,
    kid = b1.kid, bounds = {}, nbf = nbf, exp = exp, aud = aud, blocks = #t.blocks,
    iat = b1.iat }
  -- The bound known offline: block 1's caps, unless its roles add more.
  local bound = #roles == 0 and caps or nil
  local cur_roles = roles
  for i = 2, #t.blocks do
    local p = t.blocks[i].payload
    for _, k in ipairs({ "sub", "id", "v", "kid", "iat" }) do
      if p[k] ~= nil then return nil, format("widened: block %d sets %s, which only block 1 may", i, k) end
    end
    local b = {}
    if p.caps ~= nil then
      local c
      c, err = string_list(p.caps, "caps")
      if not c then return nil, format("malformed: block %d: %s", i, err) end
      if bound then
        for _, need in ipairs(c) do
          if not covered_by_any(bound, need) then
            return nil, format("widened: block %d grants capability %s, beyond block %d", i, need, i - 1)
          end
        end
      end
      bound = c
      b.capabilities = c
    end
    if p.roles ~= nil then
      local r
      r, err = string_list(p.roles, "roles")
      if not r then return nil, format("malformed: block %d: %s", i, err) end
      for _, role in ipairs(r) do
        if not in_list(cur_roles, role) then
          return nil, format("widened: block %d adds role %s, beyond block %d", i, role, i - 1)
        end
      end
      cur_roles = r
      b.roles = r
    end
    local e, nb
    e, err = num(p, "exp", i)
    if err then return nil, err end
    if e then
      if e > claims.exp then return nil, format("widened: block %d expires after block %d", i, i - 1) end
      claims.exp = e
    end
    nb, err = num(p, "nbf", i)
    if err then return nil, err end
    if nb then
      if nb < claims.nbf then return nil, format("widened: block %d starts before block %d", i, i - 1) end
      claims.nbf = nb
    end
    if p.aud ~= nil then
      local a
      a, err = string_list(p.aud, "aud")
      if not a then return nil, format("malformed: block %d: %s", i, err) end
      if claims.aud then
        for _, x in ipairs(a) do
          if not in_list(claims.aud, x) then
            return nil, format("widened: block %d adds audience %s, beyond block %d", i, x, i - 1)
          end
        end
      end
      claims.aud = a
    end
    if b.capabilities or b.roles then claims.bounds[#claims.bounds + 1] = b end
  end
  claims.roles = cur_roles
  claims.bound = bound
  claims.token_id = #t.blocks == 1 and b1.id or (b1.id .. "." .. #t.blocks)
  t.claims = claims
  return t
end

local function next_key(p, i)
  local nk = type(p.nk) == "string" and b64d(p.nk)
  if not nk or #nk ~= 32 then return nil, format("malformed: block %d: nk is not a 32-byte key", i) end
  return nk
end

-- Signatures of blocks 2.. and the proof: what a holder can check alone.
local function check_links(t)
  for i = 2, #t.blocks do
    local pk, err = next_key(t.blocks[i - 1].payload, i - 1)
    if not pk then return nil, err end
    local b = t.blocks[i]
    if not sign.verify(b.sig, message(i, t.blocks[i - 1].sig, b.raw), pk) then
      return nil, format("tampered: block %d's signature does not verify", i)
    end
  end
  local last = t.blocks[#t.blocks]
  local pk, err = next_key(last.payload, #t.blocks)
  if not pk then return nil, err end
  local ppk = sign.seed_keypair(t.proof)
  if ppk ~= pk then
    return nil, "truncated: the proof does not match the last block (blocks were removed or the proof altered)"
  end
  return t
end

-- The signatures, the chain and the proof of a token against the engine's
-- public key `pk`: what does not change with time. Returns claims | nil,
-- reason. Claims are deterministic in (token, pk), so a caller may keep
-- them; check_claims() must still run at every use.
function M.verify_signed(token, pk)
  local t, err = M.decode(token)
  if not t then return nil, err end
  local b1 = t.blocks[1]
  if not sign.verify(b1.sig, message(1, "", b1.raw), pk) then
    local kid = b1.payload.kid
    if type(kid) == "string" and kid ~= kid_of(pk) then
      return nil, format("foreign key: signed by key %s, this engine trusts key %s", kid, kid_of(pk))
    end
    return nil, "tampered: block 1's signature does not verify"
  end
  t, err = check_links(t)
  if not t then return nil, err end
  t, err = check_chain(t)
  if not t then return nil, err end
  return t.claims
end

-- Time and audience. opts: now (seconds, default the clock), audience
-- (this engine's name, or nil). Returns claims | nil, reason.
function M.check_claims(c, opts)
  local now = opts.now or core.now()
  if now < c.nbf then return nil, "not yet valid: valid from " .. iso(c.nbf) end
  if now >= c.exp then return nil, "expired: at " .. iso(c.exp) end
  if c.aud then
    if not opts.audience then
      return nil, format("audience: the token is for %s; this engine has no audience name",
        concat(c.aud, ", "))
    elseif not in_list(c.aud, opts.audience) then
      return nil, format("audience: the token is for %s, not %s", concat(c.aud, ", "), opts.audience)
    end
  end
  return c
end

-- Verify a token: verify_signed, then check_claims. Returns claims | nil, reason.
function M.verify(token, pk, opts)
  local c, err = M.verify_signed(token, pk)
  if not c then return nil, err end
  return M.check_claims(c, opts or {})
end

local function new_block_key()
  local seed = sign.random(32)
  local pk = sign.seed_keypair(seed)
  return seed, pk
end

local function encode_payload(p)
  return assert(json.encode(p, { sort_keys = true }))
end

local function assemble(t)
  local parts = { M.PREFIX }
  for _, b in ipairs(t.blocks) do
    parts[#parts + 1] = b64e(b.raw)
    parts[#parts + 1] = b64e(b.sig)
  end
  parts[#parts + 1] = b64e(t.proof)
  return concat(parts, ".")
end

-- Issue a token with the engine's key (core.sign key userdata).
-- spec: { principal, capabilities = {...}, roles = {...}, ttl = seconds,
--         not_before = seconds from now (default 0), audience = {...} | "x",
--         now = seconds }. Returns token, claims | nil, message.
function M.issue(key, spec)
  if type(spec.principal) ~= "string" or spec.principal == "" or #spec.principal > 256 then
    return nil, "principal: expected a non-empty string"
  end
  local caps, err = string_list(spec.capabilities or {}, "capabilities")
  if not caps then return nil, err end
  local roles
  roles, err = string_list(spec.roles or {}, "roles")
  if not roles then return nil, err end
  local ttl = spec.ttl
  if type(ttl) ~= "number" or ttl <= 0 or ttl > M.MAX_TTL then return nil, "ttl: expected seconds in (0, 366d]" end
  local aud = spec.audience
  if type(aud) == "string" then aud = { aud } end
  if aud ~= nil then
    aud, err = string_list(aud, "audience")
    if not aud then return nil, err end
  end
  local now = floor(spec.now or core.now())
  local nbf = now + floor(spec.not_before or 0)
  local seed, nk = new_block_key()
  local p = { v = 1, id = b64e(sign.random(12)), kid = kid_of(key:public()), sub = spec.principal,
    caps = caps, roles = roles, iat = now, nbf = nbf, exp = nbf + ttl, aud = aud, nk = b64e(nk) }
  local raw = encode_payload(p)
  local t = { blocks = { { payload = p, raw = raw, sig = key:sign(message(1, "", raw)) } }, proof = seed }
  return assemble(t)
end

-- Attenuate offline: spec { capabilities = {...}?, roles = {...}?, ttl =
-- seconds?, audience = {...}|"x"?, now = seconds }. Refuses widening.
-- Returns token | nil, message.
function M.attenuate(token, spec)
  local t, err = M.decode(token)
  if not t then return nil, err end
  t, err = check_links(t)
  if not t then return nil, err end
  t, err = check_chain(t)
  if not t then return nil, err end
  local c = t.claims
  local p = {}
  if spec.capabilities ~= nil then
    p.caps, err = string_list(spec.capabilities, "capabilities")
    if not p.caps then return nil, err end
  end
  if spec.roles ~= nil then
    p.roles, err = string_list(spec.roles, "roles")
    if not p.roles then return nil, err end
  end
  local now = floor(spec.now or core.now())
  if spec.ttl ~= nil then
    if type(spec.ttl) ~= "number" or spec.ttl <= 0 then return nil, "ttl: expected seconds > 0" end
    p.exp = now + spec.ttl
    if p.exp > c.exp then
      return nil, "widened: the token expires at " .. iso(c.exp) .. "; an attenuated token cannot outlive it"
    end
  end
  if spec.audience ~= nil then
    local a = type(spec.audience) == "string" and { spec.audience } or spec.audience
    p.aud, err = string_list(a, "audience")
    if not p.aud then return nil, err end
  end
  if not (p.caps or p.roles or p.exp or p.aud) then
    return nil, "nothing to narrow: give capabilities, roles, a ttl or an audience"
  end
  local seed, nk = new_block_key()
  p.nk = b64e(nk)
  local raw = encode_payload(p)
  local _, sk = sign.seed_keypair(t.proof)
  local i = #t.blocks + 1
  t.blocks[i] = { payload = p, raw = raw, sig = sign.sign(message(i, t.blocks[i - 1].sig, raw), sk) }
  t.proof = seed
  -- The new chain must check (a widening block is refused here, before
  -- the holder hands it on).
  local ok
  ok, err = check_chain(t)
  if not ok then return nil, err end
  return assemble(t)
end

-- What a token says, for `rduck token inspect` (no verification of block
-- 1 without the key; `verified` says what was checked).
function M.inspect(token, pk, opts)
  local t, err = M.decode(token)
  if not t then return nil, err end
  local out = { blocks = json.array({}) }
  for i, b in ipairs(t.blocks) do
    local p = {}
    for k, v in pairs(b.payload) do p[k] = v end
    for _, k in ipairs({ "iat", "nbf", "exp" }) do
      if type(p[k]) == "number" then p[k .. "_iso"] = iso(p[k]) end
    end
    out.blocks[i] = p
  end
  local ok, why = check_links(t)
  if ok then ok, why = check_chain(t) end
  out.chain = ok and "ok" or why
  if ok then
    out.token_id = t.claims.token_id
    out.effective = { principal = t.claims.principal, roles = t.claims.roles,
      capabilities = t.claims.bound or json.null,
      expires = iso(t.claims.exp), valid_from = iso(t.claims.nbf) }
  end
  if pk then
    local c, verr = M.verify(token, pk, opts)
    out.verified = c and "ok" or verr
  else
    out.verified = "not checked (no signing key in the data directory)"
  end
  return out
end

return M
