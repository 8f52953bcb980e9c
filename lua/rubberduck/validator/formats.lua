-- rubberduck.validator.formats — checkers for the JSON Schema "format"
-- keyword. Each checker takes a string and returns true when it is valid;
-- non-strings are not checked by the caller. No allocation.
--
-- The hot formats (date, time, date-time, duration, email, hostname, ipv4,
-- uuid, uri) are single PCRE2 regexes called through the FFI when libpcre2-8
-- loads (see the end of this file), each accepting exactly what its Lua
-- checker below accepts; the Lua checkers (byte loops, no captures) are the
-- fallback, and decide the rare cases the regexes leave to them.

local regex = require "rubberduck.validator.regex"

local M = {}

local tonumber, byte, match, find, sub = tonumber, string.byte, string.match, string.find, string.sub

local function leap(y) return (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0 end
local mdays = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- The hot checkers below are byte loops (string.byte and comparisons), which
-- LuaJIT compiles to straight machine code: no captures, no substrings.

-- the value of the two decimal digits at i, i + 1 of s, or -1
local function dig2(s, i)
  local a, b = byte(s, i), byte(s, i + 1)
  if a == nil or b == nil or a < 48 or a > 57 or b < 48 or b > 57 then return -1 end
  return (a - 48) * 10 + (b - 48)
end

-- full-date at s[i .. i + 9] (RFC 3339)
local function date_at(s, i)
  local y1, y2 = dig2(s, i), dig2(s, i + 2)
  if y1 < 0 or y2 < 0 or byte(s, i + 4) ~= 45 or byte(s, i + 7) ~= 45 then return false end
  local m, d = dig2(s, i + 5), dig2(s, i + 8)
  if m < 1 or m > 12 or d < 1 then return false end
  if d <= 28 then return true end
  local max = mdays[m]
  if m == 2 and leap(y1 * 100 + y2) then max = 29 end
  return d <= max
end

local function date(s)
  return #s == 10 and date_at(s, 1)
end

-- full-time from s[i] to the end of s (RFC 3339, leap second only at
-- 23:59:60 UTC)
local function time_at(s, i)
  local n = #s
  local h, mi, se = dig2(s, i), dig2(s, i + 3), dig2(s, i + 6)
  if h < 0 or mi < 0 or se < 0 or byte(s, i + 2) ~= 58 or byte(s, i + 5) ~= 58 then return false end
  local j = i + 8
  local c = byte(s, j)
  if c == 46 then -- fraction: at least one digit
    j = j + 1
    c = byte(s, j)
    if c == nil or c < 48 or c > 57 then return false end
    repeat j = j + 1; c = byte(s, j) until c == nil or c < 48 or c > 57
  end
  local oh, om = 0, 0
  if c == 90 or c == 122 then -- Z z
    if j ~= n then return false end
  elseif c == 43 or c == 45 then -- + -
    if j + 5 ~= n or byte(s, j + 3) ~= 58 then return false end
    local a, b = dig2(s, j + 1), dig2(s, j + 4)
    if a < 0 or b < 0 or a > 23 or b > 59 then return false end
    if c == 43 then oh, om = -a, -b else oh, om = a, b end
  else
    return false
  end
  if h > 23 or mi > 59 or se > 60 then return false end
  if se == 60 then
    local total = (h * 60 + mi + oh * 60 + om) % 1440
    if total ~= 23 * 60 + 59 then return false end
  end
  return true
end

local function time(s) return (time_at(s, 1)) end

local function date_time(s)
  local t = byte(s, 11)
  return (t == 84 or t == 116) and date_at(s, 1) and time_at(s, 12)
end

-- ISO 8601 duration as RFC 3339 appendix A: PnW, or PnYnMnD with an optional
-- TnHnMnS part, units in order, at least one
local DUNIT = { [89] = 1, [77] = 2, [68] = 3 } -- Y M D
local TUNIT = { [72] = 1, [77] = 2, [83] = 3 } -- H M S
local function is_alpha(c) return c ~= nil and ((c >= 65 and c <= 90) or (c >= 97 and c <= 122)) end
local function duration(s)
  local n = #s
  if n < 2 or byte(s, 1) ~= 80 then return false end -- P
  local i, c = 2, byte(s, 2)
  local units, last = DUNIT, 0
  -- PnW
  if c >= 48 and c <= 57 and byte(s, n) == 87 then
    local j = 3
    while j < n do
      local b = byte(s, j)
      if b < 48 or b > 57 then break end
      j = j + 1
    end
    if j == n then return true end
  end
  while i <= n do
    c = byte(s, i)
    if c == 84 and units == DUNIT then -- T
      if i == n then return false end
      units, last = TUNIT, 0
      i = i + 1
      c = byte(s, i)
    end
    if c < 48 or c > 57 then return false end
    repeat i = i + 1; c = byte(s, i) until c == nil or c < 48 or c > 57
    if not is_alpha(c) then return false end
    local idx = units[c]
    if not idx or idx <= last then return false end
    last = idx
    i = i + 1
  end
  return true
end

-- dotted quad, no leading zeros, each part <= 255; from i to j of s
local function ipv4_at(s, i, j)
  local parts = 0
  while true do
    local c = byte(s, i)
    if c == nil or i > j or c < 48 or c > 57 then return false end
    local v, len = c - 48, 1
    i = i + 1
    c = byte(s, i)
    while i <= j and c >= 48 and c <= 57 do
      if len == 3 or v == 0 then return false end -- too long, or a leading zero
      v = v * 10 + c - 48
      len = len + 1
      i = i + 1
      c = byte(s, i)
    end
    if v > 255 then return false end
    parts = parts + 1
    if i > j then return parts == 4 end
    if c ~= 46 or parts == 4 then return false end
    i = i + 1
  end
end

local function ipv4(s) return ipv4_at(s, 1, #s) end

local function ipv6(s)
  if find(s, "[^%x:.]") then return false end
  local head, tail = s, nil
  local i = find(s, "::", 1, true)
  if i then
    head, tail = sub(s, 1, i - 1), sub(s, i + 2)
    if find(tail, "::", 1, true) then return false end
  end
  local groups = 0
  local function part(p, last)
    if p == "" then return true end
    local n = 0
    for g in (p .. ":"):gmatch("([^:]*):") do
      n = n + 1
      if g == "" then return false end
      if find(g, ".", 1, true) then
        if not last or not ipv4(g) then return false end
        groups = groups + 2
        if not match(p, "[%d.]+$") or sub(p, -#g) ~= g then return false end
      else
        if #g > 4 then return false end
        groups = groups + 1
      end
    end
    return true
  end
  if tail then
    if not part(head, false) or not part(tail, true) then return false end
    return groups <= 7
  end
  if not part(head, true) then return false end
  return groups == 8
end

-- ASCII letters and digits
local ALNUM = {}
for c = 48, 57 do ALNUM[c] = true end
for c = 65, 90 do ALNUM[c] = true end
for c = 97, 122 do ALNUM[c] = true end

-- dot-separated labels of [A-Za-z0-9-] of 1..63 characters, not starting or
-- ending with "-", "--" at 3..4 only in "xn--" labels; from i to j of s
local function hostname_at(s, i, j)
  if j < i or j - i >= 253 then return false end
  if byte(s, j) == 46 then j = j - 1 end -- a final dot
  if j < i then return false end
  local start = i
  while true do
    local c = byte(s, i)
    if i > j or c == 46 then
      local len = i - start
      if len == 0 or len > 63 or byte(s, i - 1) == 45 then return false end
      if len >= 4 and byte(s, start + 2) == 45 and byte(s, start + 3) == 45 then
        local a, b = byte(s, start), byte(s, start + 1)
        if not ((a == 120 or a == 88) and (b == 110 or b == 78)) then return false end
      end
      if i > j then return true end
      start = i + 1
    elseif not ALNUM[c] and (c ~= 45 or i == start) then
      return false
    end
    i = i + 1
  end
end

local function hostname(s) return hostname_at(s, 1, #s) end

-- characters of an unquoted local part: [A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]
local ATEXT = {}
for c in pairs(ALNUM) do ATEXT[c] = true end
for c in ("!#$%&'*+/=?^_`{|}~.-"):gmatch(".") do ATEXT[c:byte()] = true end

local function email(s)
  local n = #s
  local at = nil
  for i = 1, n do
    if byte(s, i) == 64 then
      if at then return false end
      at = i
    end
  end
  if not at or at == 1 or at == n then return false end
  if byte(s, 1) == 34 and at > 2 and byte(s, at - 1) == 34 then
    -- quoted local part
  else
    if byte(s, 1) == 46 or byte(s, at - 1) == 46 then return false end
    local prev = 0
    for i = 1, at - 1 do
      local c = byte(s, i)
      if not ATEXT[c] or (c == 46 and prev == 46) then return false end
      prev = c
    end
  end
  if byte(s, at + 1) == 91 and byte(s, n) == 93 then -- [literal]
    local lit = sub(s, at + 2, n - 1)
    if sub(lit, 1, 5) == "IPv6:" then return ipv6(sub(lit, 6)) end
    return ipv4(lit)
  end
  return hostname_at(s, at + 1, n)
end

local HEX = {}
for c = 48, 57 do HEX[c] = true end
for c = 65, 70 do HEX[c] = true end
for c = 97, 102 do HEX[c] = true end

local function uuid(s)
  if #s ~= 36 then return false end
  for i = 1, 36 do
    local c = byte(s, i)
    if i == 9 or i == 14 or i == 19 or i == 24 then
      if c ~= 45 then return false end
    elseif not HEX[c] then
      return false
    end
  end
  return true
end

local function json_pointer(s)
  if s == "" then return true end
  if sub(s, 1, 1) ~= "/" then return false end
  local i = 1
  while true do
    i = find(s, "~", i, true)
    if not i then return true end
    local c = sub(s, i + 1, i + 1)
    if c ~= "0" and c ~= "1" then return false end
    i = i + 2
  end
end

local function relative_json_pointer(s)
  local n, rest = match(s, "^(%d+)(.*)$")
  if not n or (#n > 1 and sub(n, 1, 1) == "0") then return false end
  if rest == "#" then return true end
  return json_pointer(rest)
end

-- URI per RFC 3986 (ASCII only)
local URIC = {}
for c in pairs(ALNUM) do URIC[c] = true end
for c in ("-._~:/?#[]@!$&'()*+,;=%"):gmatch(".") do URIC[c:byte()] = true end

-- the end of a scheme "[A-Za-z][A-Za-z0-9+.-]*" at the start of s followed
-- by ":", i.e. the position of that ":", or nil
local function scheme_end(s)
  local c = byte(s, 1)
  if c == nil or not ((c >= 65 and c <= 90) or (c >= 97 and c <= 122)) then return nil end
  local i = 2
  while true do
    c = byte(s, i)
    if c == 58 then return i end
    if c == nil or not (ALNUM[c] or c == 43 or c == 46 or c == 45) then return nil end
    i = i + 1
  end
end

local function uri_ref_at(s, colon)
  local n = #s
  local hash = false
  for i = 1, n do
    local c = byte(s, i)
    if not URIC[c] then return false end
    if c == 37 then
      if not HEX[byte(s, i + 1)] or not HEX[byte(s, i + 2)] then return false end
    elseif c == 35 then
      if hash then return false end
      hash = true
    end
  end
  -- the authority: after "scheme://" or a leading "//"
  local a
  if colon and byte(s, colon + 1) == 47 and byte(s, colon + 2) == 47 then a = colon + 3
  elseif byte(s, 1) == 47 and byte(s, 2) == 47 then a = 3 end
  if a then
    local e = a
    local at = nil
    while e <= n do
      local c = byte(s, e)
      if c == 47 or c == 63 or c == 35 then break end
      if c == 64 and not at then at = e end
      e = e + 1
    end
    -- the host: after the first "@" of the authority
    local h = at and at + 1 or a
    local open, close = false, false
    for i = h, e - 1 do
      local c = byte(s, i)
      if c == 91 then open = true elseif c == 93 then close = true end
    end
    if open then
      if byte(s, h) ~= 91 then return false end
      local i = h + 1
      while i < e and byte(s, i) ~= 93 do i = i + 1 end
      if i >= e then return false end
    elseif close then
      return false
    end
  end
  return true
end

local function uri_reference(s)
  return uri_ref_at(s, scheme_end(s))
end

local function uri(s)
  local colon = scheme_end(s)
  if not colon then return false end
  return uri_ref_at(s, colon)
end

local function iri_reference(s)
  if find(s, "[%z\1-\32\"<>\\^`{|}]") then return false end
  return true
end

local function iri(s)
  if not match(s, "^[%a][%w+.-]*:") then return false end
  local auth = match(s, "^[%a][%w+.-]*://([^/?#]*)")
  if auth and match(auth, ":.*:") and not find(auth, "[", 1, true) then return false end
  return iri_reference(s)
end

local function uri_template(s)
  local depth = 0
  for i = 1, #s do
    local c = byte(s, i)
    if c == 123 then depth = depth + 1; if depth > 1 then return false end
    elseif c == 125 then depth = depth - 1; if depth < 0 then return false end end
  end
  return depth == 0
end

local function regex_format(s) return regex.check(s) ~= nil end

local function idn_hostname(s)
  if not find(s, "[\128-\255]") then return hostname(s) end
  if #s > 253 then return false end
  for label in (s .. "."):gmatch("([^.]*)%.") do
    if #label == 0 then return false end
    if sub(label, 1, 1) == "-" or sub(label, -1) == "-" then return false end
  end
  return true
end

local function idn_email(s)
  local l, d = match(s, "^(.+)@(.+)$")
  return l ~= nil and not find(l, "@", 1, true) and idn_hostname(d)
end

-----------------------------------------------------------------------------
-- The same checks as single PCRE2 regexes (JIT compiled, called through the
-- FFI): a match is one C call inside the trace, where the byte loops above
-- would each need traces of their own. Each regex accepts exactly what the
-- Lua checker accepts; the Lua checker stays for the cases a regex leaves
-- out (an email domain literal), for match errors (rc < -1, e.g. a JIT stack
-- overflow), and when the FFI binding is not available.

-- ASCII only, byte semantics; \z (not $) so a final newline never matches
-- a hostname label: 1..63 of [A-Za-z0-9-], no "-" at either end, "--" at
-- 3..4 only after "xn" (any case)
local LABEL = "(?!(?![xX][nN])[A-Za-z0-9-]{2}--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
local HOST = LABEL .. "(?:\\." .. LABEL .. ")*+\\.?\\z"
local ATOM = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]++"
local URIC = "[A-Za-z0-9\\-._~:/?\\[\\]@!$&'()*+,;=]"
local PCT = "%[0-9A-Fa-f]{2}"
local RX = {
  duration = "^P(?!\\z)(?:\\d++W|(?:\\d++Y)?(?:\\d++M)?(?:\\d++D)?(?:T(?!\\z)(?:\\d++H)?(?:\\d++M)?(?:\\d++S)?)?)\\z",
  ipv4 = "^(?:(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)\\.){3}(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)\\z",
  uuid = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\z",
  hostname = "(?s)^(?=.{1,253}\\z)" .. HOST,
  -- local part: quoted (at least two characters) or dot-atom
  email = "(?s)^(?:\"[^@]*+(?<=\")(?<!^\")|" .. ATOM .. "(?:\\." .. ATOM .. ")*+)@(?=[^@]{1,253}\\z)" .. HOST,
  -- scheme, then every character allowed, "%" only before two hex digits
  -- and at most one "#"; after "//" the host (after the first "@" of the
  -- authority) has brackets only as a leading "[...]"
  uri = "(?s)^[A-Za-z][A-Za-z0-9+.-]*+:"
    .. "(?=(?:" .. URIC .. "|" .. PCT .. ")*+(?:#(?:" .. URIC .. "|" .. PCT .. ")*+)?\\z)"
    .. "(?://(?:[^/?#@]*+@|(?=[^/?#@]*+(?:[/?#]|\\z)))"
    .. "(?:\\[[^\\]/?#]*+\\][^/?#]*+|[^/?#\\[\\]]*+)(?=[/?#]|\\z)|(?!//))",
}

-- dates and times: the regex checks the syntax, month lengths (February up
-- to 29) and ranges; the Lua checker decides the rare cases a regex does not:
-- February 29 (a leap year?) and second 60 (23:59:60 UTC?)
local DATE = "\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|02-(?:0[1-9]|1\\d|2\\d))"
local TIME = "(?:[01]\\d|2[0-3]):[0-5]\\d:(?:[0-5]\\d|60)(?:\\.\\d++)?(?:[Zz]|[+-](?:[01]\\d|2[0-3]):[0-5]\\d)"
RX.date = "^" .. DATE .. "\\z"
RX.time = "^" .. TIME .. "\\z"
RX["date-time"] = "^" .. DATE .. "[Tt]" .. TIME .. "\\z"
-- after a match: does the Lua checker have to decide? (Feb 29 at byte d of
-- the date, second 60 at byte t)
local function feb29(s, d)
  return byte(s, d + 5) == 48 and byte(s, d + 6) == 50 and byte(s, d + 8) == 50 and byte(s, d + 9) == 57
end
local RECHECK = {
  date = function(s) return feb29(s, 1) end,
  time = function(s) return byte(s, 7) == 54 end,
  ["date-time"] = function(s) return byte(s, 18) == 54 or feb29(s, 1) end,
}

local slow = { duration = duration, ipv4 = ipv4, uuid = uuid, hostname = hostname, email = email, uri = uri,
               date = date, time = time, ["date-time"] = date_time }
M.slow = slow

for name, rx in pairs(RX) do
  local rc = regex.raw(rx)
  if rc then
    local lua = slow[name]
    if name == "email" then
      -- a domain literal ([IPv4] or [IPv6:...]) goes to the Lua checker
      M[name] = function(s)
        local r = rc(s)
        if r >= 0 then return true end
        if r == -1 and byte(s, #s) ~= 93 then return false end
        return (lua(s))
      end
    elseif RECHECK[name] then
      local recheck = RECHECK[name]
      M[name] = function(s)
        local r = rc(s)
        if r == -1 then return false end
        if r >= 0 and not recheck(s) then return true end
        return (lua(s))
      end
    else
      M[name] = function(s)
        local r = rc(s)
        if r >= 0 then return true end
        if r == -1 then return false end
        return (lua(s))
      end
    end
  end
end

-----------------------------------------------------------------------------
-- Faster still: the same checks in C (core/format.c, a transcription of the
-- Lua checkers above), called through the FFI when the C core is there
-- (`rubberduck.core`, from core.so on package.cpath or preloaded by the
-- rduck binary), which hands them over as function pointers (core.format):
-- a uuid or a date costs a tenth of a regex match. The regexes above remain
-- for a validator used without the C core.

local function c_formats()
  local okf, ffi = pcall(require, "ffi")
  if not okf then return nil end
  local okc, core = pcall(require, "rubberduck.core")
  if not okc or type(core) ~= "table" or type(core.format) ~= "table" then return nil end
  local fns = {}
  for _, n in ipairs { "date", "time", "date_time", "duration", "ipv4", "hostname", "uuid", "uri", "email" } do
    local p = core.format[n]
    if type(p) ~= "userdata" then return nil end
    fns[n] = ffi.cast("int (*)(const char *, size_t)", p)
  end
  return fns
end

local C = c_formats()
M.c = C ~= nil
if C then
  local function wrap(fn) return function(s) return fn(s, #s) == 1 end end
  M.duration, M.ipv4, M.uuid, M.hostname, M.uri =
    wrap(C.duration), wrap(C.ipv4), wrap(C.uuid), wrap(C.hostname), wrap(C.uri)
  M.date, M.time, M["date-time"] = wrap(C.date), wrap(C.time), wrap(C.date_time)
  local c_email, lua_email = C.email, slow.email
  M.email = function(s)
    local r = c_email(s, #s)
    if r == 2 then return (lua_email(s)) end   -- a domain literal
    return r == 1
  end
end

duration, ipv4, uuid, hostname, email, uri =
  M.duration or duration, M.ipv4 or ipv4, M.uuid or uuid, M.hostname or hostname, M.email or email, M.uri or uri
date, time, date_time = M.date or date, M.time or time, M["date-time"] or date_time

M.checkers = {
  ["date-time"] = date_time, date = date, time = time, duration = duration,
  email = email, ["idn-email"] = idn_email,
  hostname = hostname, ["idn-hostname"] = idn_hostname,
  ipv4 = ipv4, ipv6 = ipv6,
  uri = uri, ["uri-reference"] = uri_reference, iri = iri, ["iri-reference"] = iri_reference,
  ["uri-template"] = uri_template,
  uuid = uuid, ["json-pointer"] = json_pointer, ["relative-json-pointer"] = relative_json_pointer,
  regex = regex_format,
}

return M
