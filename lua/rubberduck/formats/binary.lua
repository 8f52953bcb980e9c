-- rubberduck.formats.binary — the output's raw bytes, unchanged.
--
-- Only a string output has bytes to give; any other value is refused (ask
-- for json, xml, yaml or plain instead). In a JSON envelope the bytes are
-- the base64 of the output, with metadata.encoding = "base64".
local M = {}

function M.check(value)
  if type(value) ~= "string" then
    local what = type(value) == "table" and "a table" or (value == nil and "nothing" or type(value))
    if type(value) == "userdata" then what = "null" end
    return nil, "format binary: the output must be a string of bytes, got " .. what
  end
  return true
end

function M.render(value)
  return value
end

return M
