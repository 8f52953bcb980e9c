-- rubberduck.formats.plain — readable text.
--
-- A string is written as it is (its bytes unchanged), a number or boolean
-- as Lua's tostring, null and nothing as the empty text. A table is one
-- line per key, keys sorted (numbers first) and padded to the widest, the
-- value after two spaces; a nested table's lines follow its key, indented
-- by two spaces. Array elements are keyed by their position (1, 2, ...).
local json = require "rubberduck.json"

local M = {}

local function scalar(v)
  if v == json.null or v == nil then return "null" end
  return tostring(v)
end

local function lines(v, indent, out)
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  local width = 0
  for _, k in ipairs(keys) do
    if #tostring(k) > width then width = #tostring(k) end
  end
  for _, k in ipairs(keys) do
    local val = v[k]
    local label = tostring(k) .. string.rep(" ", width - #tostring(k))
    if type(val) == "table" then
      out[#out + 1] = indent .. label .. ":"
      lines(val, indent .. "  ", out)
    else
      out[#out + 1] = indent .. label .. "  " .. scalar(val)
    end
  end
  return out
end

function M.render(value)
  if type(value) == "string" then return value end
  if value == nil or value == json.null then return "" end
  if type(value) ~= "table" then return tostring(value) end
  return table.concat(lines(value, "", {}), "\n")
end

return M
