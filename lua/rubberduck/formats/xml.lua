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

-- Opening of an element for `key` (nil: an array item), plus attributes.
local function open(out, indent, key, attrs)
  out[#out + 1] = indent
  if key == nil then
    out[#out + 1] = "<item"
  elseif is_name(key) then
    out[#out + 1] = "<" .. key
  elseif utf8_valid(key) and not unrepresentable(key) then
    out[#out + 1] = '<item key="' .. attr(key) .. '"'
  else
    out[#out + 1] = '<item key="' .. b64(key) .. '" key-encoding="base64"'
  end
  if attrs then out[#out + 1] = attrs end
end

local function close_name(key)
  if key ~= nil and is_name(key) then return key end
  return "item"
end

local function node(v, key, indent, out)
  local tv = type(v)
  if tv == "table" then
    local isarr = getmetatable(v) == array_mt
    open(out, indent, key, isarr and ' type="array"' or ' type="object"')
    local inner = indent .. "  "
    local n = 0
    if isarr then
      if #v > 0 then out[#out + 1] = ">\n" end
      for i = 1, #v do
        node(v[i], nil, inner, out)
        n = n + 1
      end
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      sort(keys)
      if #keys > 0 then out[#out + 1] = ">\n" end
      for _, k in ipairs(keys) do node(v[k], k, inner, out) end
      n = #keys
    end
    if n == 0 then
      out[#out + 1] = "/>\n"
    else
      out[#out + 1] = indent .. "</" .. close_name(key) .. ">\n"
    end
    return
  end
  if tv == "string" then
    if v == "" then
      open(out, indent, key)
      out[#out + 1] = "/>\n"
      return
    end
    if not utf8_valid(v) or unrepresentable(v) then
      open(out, indent, key, ' encoding="base64"')
      out[#out + 1] = ">" .. b64(v)
    else
      open(out, indent, key)
      out[#out + 1] = ">" .. text(v)
    end
  elseif tv == "number" then
    open(out, indent, key, ' type="number"')
    out[#out + 1] = ">" .. json.encode(v)
  elseif tv == "boolean" then
    open(out, indent, key, ' type="boolean"')
    out[#out + 1] = ">" .. tostring(v)
  elseif v == nil or v == null then
    open(out, indent, key, ' type="null"')
    out[#out + 1] = "/>\n"
    return
  else
    error("xml: a value of type " .. tv .. " (normalize the result first)")
  end
  out[#out + 1] = "</" .. close_name(key) .. ">\n"
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
