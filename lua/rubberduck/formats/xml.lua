-- rubberduck.formats.xml — XML 1.0 with a documented, reversible mapping.
--
--   <?xml version="1.0" encoding="UTF-8"?>
--   <result type="object">
--     <name>duck</name>                         a string: no type attribute
--     <count type="number">3</count>            number, in JSON's notation
--     <ok type="boolean">true</ok>
--     <none type="null"/>
--     <tags type="array">                       an array: one <item> per element
--       <item>a</item>
--     </tags>
--     <item key="not a name">x</item>           a key that is not an XML name
--     <blob encoding="base64">AQID</blob>       bytes XML cannot carry
--   </result>
--
-- The document element is <result>, whatever the value. An object's
-- members are its child elements, named by their key when the key is a
-- safe XML name (ASCII: a letter or '_' first, then letters, digits, '_',
-- '-', '.'; not starting with "xml" in any case), otherwise
-- <item key="KEY">. Order: keys sorted by their bytes. An array's elements
-- are <item> children in order. Whitespace between child elements of an
-- object or array is indentation and carries nothing.
--
-- Text: & < > are escaped in text, & < > " in attributes; a carriage
-- return is written &#13; (and tab, newline &#9; &#10; in attributes) so a
-- parser's newline normalization cannot change the value. A string that is
-- not valid UTF-8, or that holds a character XML 1.0 cannot carry (C0
-- controls other than tab, newline and carriage return; U+FFFE, U+FFFF),
-- is written as the base64 of its bytes with encoding="base64"; a key of
-- that kind is written key="BASE64" key-encoding="base64".
local json = require "rubberduck.json"

local M = {}

local concat, sort, rep, find, gsub = table.concat, table.sort, string.rep, string.find, string.gsub
local utf8_valid = json.utf8_valid
local array_mt, null = json.array_mt, json.null

local base64
local function b64(s)
  base64 = base64 or require("rubberduck.core").results.base64
  return base64(s)
end

-- Characters XML 1.0 cannot carry (besides invalid UTF-8).
local function unrepresentable(s)
  return find(s, "[%z\1-\8\11\12\14-\31]") or find(s, "\239\191[\190\191]")
end

local TEXT = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ["\r"] = "&#13;" }
local ATTR = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;",
               ["\r"] = "&#13;", ["\n"] = "&#10;", ["\t"] = "&#9;" }

local function text(s) return (gsub(s, "[&<>\r]", TEXT)) end
local function attr(s) return (gsub(s, '[&<>"\r\n\t]', ATTR)) end

local function is_name(k)
  return find(k, "^[A-Za-z_][A-Za-z0-9_.-]*$") ~= nil and not find(k, "^[Xx][Mm][Ll]")
end
M.is_name = is_name

-- Opening "<name" and closing "</name>\n" of the element for a key (nil:
-- an array item), memoized: keys repeat across a result.
local opens, closes, ncache = {}, {}, 0
local function tags(key)
  if key == nil then return "<item", "</item>\n" end
  local o = opens[key]
  if o then return o, closes[key] end
  if is_name(key) then
    o = "<" .. key
  elseif utf8_valid(key) and not unrepresentable(key) then
    o = '<item key="' .. attr(key) .. '"'
  else
    o = '<item key="' .. b64(key) .. '" key-encoding="base64"'
  end
  local c = is_name(key) and ("</" .. key .. ">\n") or "</item>\n"
  if ncache > 10000 then opens, closes, ncache = {}, {}, 0 end
  opens[key], closes[key], ncache = o, c, ncache + 1
  return o, c
end

local floor, sformat, encode = math.floor, string.format, json.encode

local function number(v)
  if floor(v) == v and v > -9007199254740992 and v < 9007199254740992 then
    return sformat("%d", v)
  end
  return encode(v)
end

local function node(v, key, indent, out)
  local n = #out
  local o, c = tags(key)
  local tv = type(v)
  if tv == "string" then
    if v == "" then
      out[n + 1], out[n + 2], out[n + 3] = indent, o, "/>\n"
    elseif not find(v, "[%c&<>\128-\255]") then         -- printable ASCII, nothing to escape
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = indent, o, ">", v, c
    elseif not utf8_valid(v) or unrepresentable(v) then
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = indent, o, ' encoding="base64">', b64(v), c
    else
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = indent, o, ">", text(v), c
    end
  elseif tv == "number" then
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = indent, o, ' type="number">', number(v), c
  elseif tv == "boolean" then
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = indent, o, ' type="boolean">',
      v and "true" or "false", c
  elseif tv == "table" then
    local isarr = getmetatable(v) == array_mt
    local inner = indent .. "  "
    if isarr then
      if #v == 0 then
        out[n + 1], out[n + 2], out[n + 3] = indent, o, ' type="array"/>\n'
        return
      end
      out[n + 1], out[n + 2], out[n + 3] = indent, o, ' type="array">\n'
      for i = 1, #v do node(v[i], nil, inner, out) end
    else
      local keys, k = {}, 0
      for key2 in pairs(v) do k = k + 1; keys[k] = key2 end
      if k == 0 then
        out[n + 1], out[n + 2], out[n + 3] = indent, o, ' type="object"/>\n'
        return
      end
      sort(keys)
      out[n + 1], out[n + 2], out[n + 3] = indent, o, ' type="object">\n'
      for i = 1, k do node(v[keys[i]], keys[i], inner, out) end
    end
    n = #out
    out[n + 1], out[n + 2] = indent, c
  elseif v == nil or v == null then
    out[n + 1], out[n + 2], out[n + 3] = indent, o, ' type="null"/>\n'
  else
    error("xml: a value of type " .. tv .. " (normalize the result first)")
  end
end

function M.render(value)
  local out = { '<?xml version="1.0" encoding="UTF-8"?>\n' }
  -- the document element: a <result> whatever the value
  local body = {}
  node(value, "result", "", body)
  out[2] = concat(body)
  return concat(out)
end

return M
