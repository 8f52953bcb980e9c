-- spec/bench/results/bench.lua — results formatted per second, per format,
-- on a small result and a large (1 MB of canonical JSON) one, with
-- lua-cjson's own encode of the same value in the same run as the floor
-- for JSON. Also the whole processor step (normalize, canonical JSON,
-- BLAKE2b digest). Prints one line per (size, format).
--   luajit bench.lua [SECONDS_PER_CASE]
local core = require "rubberduck.core"
local json = require "rubberduck.json"
local formats = require "rubberduck.formats"
local cjson = require "cjson"

local R = core.results
local budget = tonumber(arg[1]) or 1.0

local function small()
  return { name = "read_file", path = "/workspace/notes.txt", size = 1834, ok = true,
    tags = { "fs", "text" }, mtime = 1764187433.25, owner = json.null,
    content = "Hello, duck. Ünïcödé and \"quotes\" and <angle> & ampersand." }
end

local function large()
  local items = {}
  for i = 1, 4700 do
    items[i] = { id = i, name = "item number " .. i, price = i * 0.25, active = i % 3 == 0,
      tags = { "alpha", "beta", tostring(i % 17) }, note = "yes", description = string.rep("lorem ipsum ", 10) }
  end
  return { count = #items, items = items }
end

local function rate(fn)
  for _ = 1, 3 do fn() end
  local n, t0 = 0, core.mono_ms()
  local deadline = t0 + budget * 1000
  repeat
    fn()
    n = n + 1
  until core.mono_ms() >= deadline
  return n / ((core.mono_ms() - t0) / 1000)
end

print(string.format("%-6s %-10s %14s %12s", "size", "format", "results_per_s", "bytes"))
for _, case in ipairs({ { "small", small() }, { "1MB", large() } }) do
  local label, value = case[1], case[2]
  local norm = assert(R.normalize(value))
  local canonical = json.encode(norm, { canonical = true })
  local rows = {}
  for _, fmt in ipairs({ "json", "xml", "yaml", "plain" }) do
    local text = assert(formats.render(norm, fmt))
    rows[#rows + 1] = { fmt, rate(function() formats.render(norm, fmt) end), #text }
  end
  rows[#rows + 1] = { "json-canon", rate(function() json.encode(norm, { canonical = true }) end), #canonical }
  local str = canonical
  rows[#rows + 1] = { "binary", rate(function() formats.render(str, "binary") end), #str }
  rows[#rows + 1] = { "process", rate(function()
    local v = R.normalize(value)
    R.digest(json.encode(v, { canonical = true }))
  end), #canonical }
  local ctext = cjson.encode(value)
  rows[#rows + 1] = { "cjson", rate(function() cjson.encode(value) end), #ctext }
  for _, r in ipairs(rows) do
    print(string.format("%-6s %-10s %14.0f %12d", label, r[1], r[2], r[3]))
  end
end
print("(json: pretty, sorted keys; json-canon: canonical; process: normalize + canonical JSON +")
print(" BLAKE2b; cjson: lua-cjson 2.1 encode of the same value, unsorted, no UTF-8 checks — the floor)")
