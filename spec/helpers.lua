-- spec/helpers.lua — shared helpers of the busted specs.
--
--   local H = require "helpers"
--   local dir = H.tmpdir()                    -- a fresh empty directory
--   local path = H.write_tool(dir, "x", src)  -- dir/x.lua (or the name as given if it ends in .lua)
--   local src = H.tool_source{ name = "x", level = "relaxed", handler = "function(p) return p end" }
--   local out, err, code = H.run_rduck({ "run", "echo" }, stdin_text, { cwd = dir })
--   local engine = H.open_engine(dir)         -- rd.open{ tools = dir, data_dir = <tmp> }
--   H.decode(text), H.encode(value)           -- rubberduck.json
--   H.rm_rf(dir)
--
-- Environment (set by ctest, see CMakeLists.txt): RDUCK (the binary),
-- RD_SOURCE_DIR (the repository), RD_BUILD_DIR (the build directory).
local M = {}

M.source_dir = os.getenv("RD_SOURCE_DIR") or "."
M.build_dir = os.getenv("RD_BUILD_DIR")
M.rduck = os.getenv("RDUCK") or ((M.build_dir or "build") .. "/rduck")
-- Absolute paths: commands may run from another directory.
local function absolute(p)
  if p:sub(1, 1) == "/" then return p end
  return (os.getenv("PWD") or ".") .. "/" .. p
end
M.source_dir = absolute(M.source_dir)
M.rduck = absolute(M.rduck)

local json_mod
local function json()
  json_mod = json_mod or require("rubberduck.json")
  return json_mod
end

function M.json() return json() end

-- Decode JSON text; raises (with the text) on failure so a spec sees why.
function M.decode(text)
  local v, err = json().decode(text)
  if v == nil and text ~= "null" then
    error("helpers.decode: " .. tostring(err) .. " in: " .. tostring(text), 2)
  end
  return v
end

function M.encode(v, opts)
  local s, err = json().encode(v, opts)
  if not s then error("helpers.encode: " .. tostring(err), 2) end
  return s
end

-- Single-quote a string for /bin/sh.
function M.shell_quote(s)
  s = tostring(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
local q = M.shell_quote

local created = {}

-- A fresh empty directory under $TMPDIR (removed by M.cleanup()).
function M.tmpdir()
  local name = os.tmpname()     -- creates an empty file: take its unique name
  os.remove(name)
  local dir = name .. ".d"
  local ok = os.execute("mkdir -p " .. q(dir))
  assert(ok == 0 or ok == true, "helpers.tmpdir: mkdir " .. dir .. " failed")
  created[#created + 1] = dir
  return dir
end

function M.rm_rf(path)
  if path and path ~= "" and path ~= "/" then os.execute("rm -rf " .. q(path)) end
end

-- Remove every directory tmpdir() made (call from teardown/lazy_teardown).
function M.cleanup()
  for _, d in ipairs(created) do M.rm_rf(d) end
  created = {}
end

function M.write_file(path, content)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  f:close()
  return path
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Write a tool file: dir/name.lua (name may already end in .lua).
function M.write_tool(dir, name, source)
  local file = name:match("%.lua$") and name or (name .. ".lua")
  return M.write_file(dir .. "/" .. file, source)
end

-- Build the source of a tool from pieces (all Lua source text):
--   name, description, level ("relaxed" by default; false: no security.level),
--   handler (function text), parameters, security (extra fields, text),
--   execution (extra fields), output, top (extra top-level fields), prelude.
function M.tool_source(o)
  local parts = {}
  if o.prelude then parts[#parts + 1] = o.prelude end
  parts[#parts + 1] = "return tool {"
  parts[#parts + 1] = string.format("  metadata = { name = %q, description = %q },",
    o.name or "t", o.description or "a test tool")
  if o.parameters then parts[#parts + 1] = "  parameters = " .. o.parameters .. "," end
  if o.top then parts[#parts + 1] = "  " .. o.top .. "," end
  local sec = {}
  local level = o.level
  if level == nil then level = "relaxed" end
  if level then sec[#sec + 1] = string.format("level = %q", level) end
  if o.security then sec[#sec + 1] = o.security end
  if #sec > 0 then parts[#parts + 1] = "  security = { " .. table.concat(sec, ", ") .. " }," end
  local exe = {}
  if o.execution then exe[#exe + 1] = o.execution end
  exe[#exe + 1] = "handler = " .. (o.handler or "function(p) return { ok = true } end")
  parts[#parts + 1] = "  execution = { " .. table.concat(exe, ", ") .. " },"
  if o.output then parts[#parts + 1] = "  output = " .. o.output .. "," end
  parts[#parts + 1] = "}"
  return table.concat(parts, "\n") .. "\n"
end

-- Run the rduck binary. args: list of strings (each quoted for the shell).
-- stdin: text fed on standard input (nil: /dev/null).
-- opts: { cwd = DIR (default RD_SOURCE_DIR), env = { NAME = value },
--         timeout = seconds (a guard against hangs: exit code 124 when it
--         fires, see timeout(1)) }.
-- Returns stdout, stderr, exit_code.
function M.run_rduck(args, stdin, opts)
  return M.run_command(M.rduck, args, stdin, opts)
end

-- Run `program` with `args` (same stdin/opts/results as run_rduck).
function M.run_command(program, args, stdin, opts)
  opts = opts or {}
  local base = os.tmpname()
  local out, err, inp = base .. ".out", base .. ".err", base .. ".in"
  local input = "/dev/null"
  if stdin ~= nil then
    M.write_file(inp, stdin)
    input = inp
  end
  local cmd = {}
  cmd[#cmd + 1] = "cd " .. q(opts.cwd or M.source_dir) .. " &&"
  for k, v in pairs(opts.env or {}) do cmd[#cmd + 1] = k .. "=" .. q(v) end
  if opts.timeout then cmd[#cmd + 1] = "timeout -k 2 " .. tostring(opts.timeout) end
  cmd[#cmd + 1] = q(program)
  for _, a in ipairs(args) do cmd[#cmd + 1] = q(a) end
  local line = "(" .. table.concat(cmd, " ") .. ") <" .. q(input) .. " >" .. q(out) ..
    " 2>" .. q(err) .. "; echo $?"
  local p = assert(io.popen(line, "r"))
  local status = p:read("*a")
  p:close()
  local stdout_text, stderr_text = M.read_file(out) or "", M.read_file(err) or ""
  os.remove(out); os.remove(err); os.remove(inp); os.remove(base)
  return stdout_text, stderr_text, tonumber(status:match("(%d+)"))
end

-- Run a Lua script in a child luajit (same LUA_PATH/LUA_CPATH as this
-- process): for what could hang or crash the spec's own process.
-- Returns stdout, stderr, exit_code (124 when opts.timeout fired).
function M.run_lua(source, opts)
  local path = os.tmpname()
  M.write_file(path, source)
  local o = { cwd = M.source_dir }
  for k, v in pairs(opts or {}) do o[k] = v end
  local out, err, code = M.run_command("luajit", { path }, nil, o)
  os.remove(path)
  return out, err, code
end

-- Open an engine on a tools directory (or nil), with a throwaway data dir.
function M.open_engine(tools_dir, opts)
  local rd = require("rubberduck")
  local o = { tools = tools_dir, data_dir = M.tmpdir() }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(rd.open(o))
end

-- Does `list` (of strings) hold an element equal to `s`?
function M.contains(list, s)
  for _, v in ipairs(list or {}) do if v == s then return true end end
  return false
end

-- The elements of `list` that contain `needle` (plain find).
function M.matching(list, needle)
  local out = {}
  for _, v in ipairs(list or {}) do
    if type(v) == "string" and v:find(needle, 1, true) then out[#out + 1] = v end
  end
  return out
end

-- Is `s` a ULID (26 Crockford base-32 characters)?
function M.is_ulid(s)
  return type(s) == "string" and #s == 26 and s:match("^[0-9A-HJKMNP-TV-Z]+$") ~= nil
end

return M
