-- rubberduck.validator.uri — just enough RFC 3986 for JSON Schema:
-- split a URI, resolve a reference against a base (section 5.2), split off
-- the fragment, and decode/encode JSON Pointer fragments (RFC 6901).
-- Pure Lua, no I/O.

local M = {}

local sub, find, gsub, char = string.sub, string.find, string.gsub, string.char
local tonumber, concat = tonumber, table.concat

-- parse(s) -> { scheme, authority, path, query, fragment } (absent parts nil)
function M.parse(s)
  local t = {}
  local rest = s
  local i = find(rest, "#", 1, true)
  if i then t.fragment = sub(rest, i + 1); rest = sub(rest, 1, i - 1) end
  i = find(rest, "?", 1, true)
  if i then t.query = sub(rest, i + 1); rest = sub(rest, 1, i - 1) end
  local scheme, r = rest:match("^([%a][%w+.-]*):(.*)$")
  if scheme then t.scheme = scheme:lower(); rest = r end
  if sub(rest, 1, 2) == "//" then
    local j = find(rest, "/", 3, true)
    if j then t.authority = sub(rest, 3, j - 1); rest = sub(rest, j)
    else t.authority = sub(rest, 3); rest = "" end
  end
  t.path = rest
  return t
end

local function remove_dot_segments(path)
  local out = {}
  local input = path
  while input ~= "" do
    if sub(input, 1, 3) == "../" then input = sub(input, 4)
    elseif sub(input, 1, 2) == "./" then input = sub(input, 3)
    elseif sub(input, 1, 3) == "/./" then input = sub(input, 3)
    elseif input == "/." then input = "/"
    elseif sub(input, 1, 4) == "/../" then input = sub(input, 4); out[#out] = nil
    elseif input == "/.." then input = "/"; out[#out] = nil
    elseif input == "." or input == ".." then input = ""
    else
      local j = find(input, "/", 2, true)
      local seg
      if j then seg = sub(input, 1, j - 1); input = sub(input, j)
      else seg = input; input = "" end
      out[#out + 1] = seg
    end
  end
  return concat(out)
end

function M.format(t)
  local b = {}
  if t.scheme then b[#b + 1] = t.scheme .. ":" end
  if t.authority then b[#b + 1] = "//" .. t.authority end
  b[#b + 1] = t.path or ""
  if t.query then b[#b + 1] = "?" .. t.query end
  if t.fragment then b[#b + 1] = "#" .. t.fragment end
  return concat(b)
end

local function merge(base, rpath)
  if base.authority and (base.path == nil or base.path == "") then return "/" .. rpath end
  local bp = base.path or ""
  local j = bp:match("^.*()/")
  if j then return sub(bp, 1, j) .. rpath end
  return rpath
end

-- resolve(base, ref) -> absolute URI string (RFC 3986 5.2.2). base may be nil.
function M.resolve(base, ref)
  if base == nil or base == "" then return ref end
  local r, b = M.parse(ref), M.parse(base)
  local t = {}
  if r.scheme then
    t.scheme, t.authority, t.path, t.query = r.scheme, r.authority, remove_dot_segments(r.path), r.query
  else
    if r.authority then
      t.authority, t.path, t.query = r.authority, remove_dot_segments(r.path), r.query
    else
      if r.path == "" then
        t.path = b.path
        t.query = r.query or b.query
      else
        if sub(r.path, 1, 1) == "/" then t.path = remove_dot_segments(r.path)
        else t.path = remove_dot_segments(merge(b, r.path)) end
        t.query = r.query
      end
      t.authority = b.authority
    end
    t.scheme = b.scheme
  end
  -- "urn:" style bases have no hierarchical path: a bare fragment keeps the base
  if b.scheme and not b.authority and not r.scheme and r.path ~= "" and sub(b.path, 1, 1) ~= "/" then
    t.path = r.path
  end
  t.fragment = r.fragment
  return M.format(t)
end

-- split(uri) -> uri without fragment, fragment ("" when absent)
function M.split(u)
  local i = find(u, "#", 1, true)
  if not i then return u, "" end
  return sub(u, 1, i - 1), sub(u, i + 1)
end

local function pct_decode(s)
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end
M.pct_decode = pct_decode

-- pointer_tokens("/a~1b/0") -> { "a/b", "0" } or nil when not a pointer
function M.pointer_tokens(frag)
  frag = pct_decode(frag)
  if frag == "" then return {} end
  if sub(frag, 1, 1) ~= "/" then return nil end
  local toks = {}
  for seg in (sub(frag, 2) .. "/"):gmatch("(.-)/") do
    toks[#toks + 1] = (gsub(gsub(seg, "~1", "/"), "~0", "~"))
  end
  return toks
end

function M.escape_token(s)
  return (gsub(gsub(s, "~", "~0"), "/", "~1"))
end

return M
