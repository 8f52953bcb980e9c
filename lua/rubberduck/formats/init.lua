-- rubberduck.formats — the output formats of a result (DESIGN.md, stage 4).
--
--   formats.list                        { "json", "xml", "yaml", "binary", "plain" }
--   formats.render(value, format [, opts]) -> text | nil, message
--       value: a normalized result (rubberduck.results: arrays marked,
--              objects without a marker, strings as the handler's bytes)
--       opts.canonical (json): sorted keys, no insignificant whitespace
--   formats.check(value, format) -> true | nil, message
--       whether `value` can be shown in `format` (only binary can refuse)
--
-- Each format is one module (formats/json.lua, ...) with render(value, opts).
local M = {}

M.list = { "json", "xml", "yaml", "binary", "plain" }
M.known = {}
for _, f in ipairs(M.list) do M.known[f] = true end

local mods = {}
local function module(format)
  local m = mods[format]
  if not m then
    m = require("rubberduck.formats." .. format)
    mods[format] = m
  end
  return m
end

function M.check(value, format)
  if not M.known[format] then
    return nil, "format: expected one of " .. table.concat(M.list, ", ") .. ", got " .. tostring(format)
  end
  local m = module(format)
  if m.check then return m.check(value) end
  return true
end

function M.render(value, format, opts)
  local ok, err = M.check(value, format)
  if not ok then return nil, err end
  return module(format).render(value, opts or {})
end

return M
