-- rubberduck.validator.formats — checkers for the JSON Schema "format"
-- keyword. Each checker takes a string and returns true when it is valid;
-- non-strings are not checked by the caller. Pure Lua, no allocation for the
-- common ASCII cases beyond what string.match does.

local regex = require "rubberduck.validator.regex"

local M = {}

local tonumber, byte, match, find, sub = tonumber, string.byte, string.match, string.find, string.sub

local function leap(y) return (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0 end
local mdays = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function date(s)
  local y, m, d = match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
  if not y then return false end
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if m < 1 or m > 12 or d < 1 then return false end
  local max = mdays[m]
  if m == 2 and leap(y) then max = 29 end
  return d <= max
end

local function time(s)
  local h, mi, se, rest = match(s, "^(%d%d):(%d%d):(%d%d)(.*)$")
  if not h then return false end
  h, mi, se = tonumber(h), tonumber(mi), tonumber(se)
  local frac = match(rest, "^%.%d+")
  if frac then rest = sub(rest, #frac + 1) end
  local oh, om = 0, 0
  if rest == "Z" or rest == "z" then
    -- UTC
  else
    local sign, a, b = match(rest, "^([+-])(%d%d):(%d%d)$")
    if not sign then return false end
    a, b = tonumber(a), tonumber(b)
    if a > 23 or b > 59 then return false end
    if sign == "+" then oh, om = -a, -b else oh, om = a, b end
  end
  if h > 23 or mi > 59 or se > 60 then return false end
  if se == 60 then -- leap second: only at 23:59:60 UTC
    local total = (h * 60 + mi + oh * 60 + om) % 1440
    if total ~= 23 * 60 + 59 then return false end
  end
  return true
end

local function date_time(s)
  local d, t = match(s, "^(%d%d%d%d%-%d%d%-%d%d)[Tt](.*)$")
  return d ~= nil and date(d) and time(t)
end

-- ISO 8601 duration as RFC 3339 appendix A: PnW, or PnYnMnD with an optional
-- TnHnMnS part, units in order, at least one
local function units(part, order)
  local pos, last = 1, 0
  while pos <= #part do
    local _, unit, nxt = match(part, "^(%d+)(%a)()", pos)
    if not unit then return false end
    local idx = find(order, unit, 1, true)
    if not idx or idx <= last then return false end
    last, pos = idx, nxt
  end
  return true
end

local function duration(s)
  local rest = match(s, "^P(.+)$")
  if not rest then return false end
  if match(rest, "^%d+W$") then return true end
  local dpart, tpart = match(rest, "^([^T]*)T(.*)$")
  if not dpart then dpart = rest end
  if tpart == "" then return false end
  return units(dpart, "YMD") and (tpart == nil or units(tpart, "HMS"))
end

local function ipv4(s)
  local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, p in ipairs { a, b, c, d } do
    if #p > 3 or (#p > 1 and sub(p, 1, 1) == "0") or tonumber(p) > 255 then return false end
  end
  return true
end

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

local function hostname(s)
  if #s == 0 or #s > 253 then return false end
  if sub(s, -1) == "." then s = sub(s, 1, -2) end
  for label in (s .. "."):gmatch("([^.]*)%.") do
    if #label == 0 or #label > 63 then return false end
    if not match(label, "^[%w][%w-]*$") then return false end
    if sub(label, -1) == "-" then return false end
    if sub(label, 3, 4) == "--" and sub(label, 1, 2):lower() ~= "xn" then return false end
  end
  return true
end

local function email(s)
  local l, d = match(s, "^(.+)@(.+)$")
  if not l or find(l, "@", 1, true) then return false end
  if match(l, '^".*"$') then
    -- quoted local part
  else
    if sub(l, 1, 1) == "." or sub(l, -1) == "." or find(l, "..", 1, true) then return false end
    if find(l, "[^%w!#$%%&'*+/=?^_`{|}~.-]") then return false end
  end
  local lit = match(d, "^%[(.*)%]$")
  if lit then
    local v6 = match(lit, "^IPv6:(.*)$")
    if v6 then return ipv6(v6) end
    return ipv4(lit)
  end
  return hostname(d)
end

local function uuid(s)
  return match(s, "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil
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
local uri_chars = "^[%w%-%._~:/%?#%[%]@!%$&'%(%)%*%+,;=%%]*$"
local function pct_ok(s)
  local i = 1
  while true do
    i = find(s, "%", i, true)
    if not i then return true end
    if not match(sub(s, i + 1, i + 2), "^%x%x$") then return false end
    i = i + 3
  end
end

local function uri_reference(s)
  if not match(s, uri_chars) or not pct_ok(s) then return false end
  local frag = match(s, "#(.*)$")
  if frag and find(frag, "#", 1, true) then return false end
  local auth = match(s, "^[%a][%w+.-]*://([^/?#]*)") or match(s, "^//([^/?#]*)")
  if auth then
    local host = match(auth, "@(.*)$") or auth
    if find(host, "[", 1, true) then
      local lit = match(host, "^%[([^%]]*)%]") ; if not lit then return false end
    elseif find(host, "[%[%]]") then return false end
  end
  return true
end

local function uri(s)
  if not match(s, "^[%a][%w+.-]*:") then return false end
  return uri_reference(s)
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

local function regex_format(s) return regex.compile(s) ~= nil end

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
