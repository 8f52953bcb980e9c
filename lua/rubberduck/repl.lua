-- rubberduck.repl — `rduck repl`: a LuaJIT prompt with the engine loaded.
--
-- On a terminal it uses libedit (line editing, history in ~/.rduck_history);
-- from a pipe it reads lines as they come, so scripts and specs can drive
-- it. Each input is tried first as an expression (`return <input>`), then
-- as a statement; an incomplete statement continues on the next line.
local rd = require "rubberduck"
local json = require "rubberduck.json"
local core = require "rubberduck.core"

local M = {}

local function show(v)
  if type(v) == "table" then
    local s = json.encode(v, { pretty = true, sort_keys = true })
    if s then return s end
  end
  if v == json.null then return "null" end
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end
M.show = show

function M.run(opts, cli)
  local native = require "rubberduck.cli.native"
  local interactive = native.isatty(0)
  local tools_dir = opts.tools or (core.listdir("tools") and "tools") or nil
  local engine, oerr = rd.open({ tools = tools_dir, data_dir = opts.data, entry = "repl",
    policy = opts.policy })
  if not engine then
    io.stderr:write("rduck repl: ", oerr, "\n")
    return 2
  end
  local out = io.stdout

  local function report_problems()
    for _, p in ipairs(engine.problems) do io.stderr:write(p, "\n") end
  end
  report_problems()

  local env = setmetatable({}, { __index = _G })
  env.engine = engine
  env.json = json
  env.tools = function()
    local list = {}
    for _, d in ipairs(engine:tools()) do
      list[#list + 1] = string.format("%-16s %-8s %s", d.metadata.name, d.security.level,
        d.metadata.description)
    end
    out:write(table.concat(list, "\n"), "\n")
    return #list
  end
  env.run = function(name, params, caller)
    local e = engine:execute(name, params or {}, caller or cli.OPERATOR, { entry = "repl" })
    return e
  end
  env.reload = function()
    engine.registry:close()
    engine.problems = {}
    local new = assert(rd.open({ tools = tools_dir, data_dir = opts.data, entry = "repl" }))
    engine:close()
    engine = new
    env.engine = engine
    report_problems()
    return #engine:tools()
  end
  env.help = function()
    out:write(cli.COMMANDS.repl.help, "\n")
  end

  local history = (os.getenv("HOME") or ".") .. "/.rduck_history"
  if interactive then
    native.read_history(history)
    out:write("rduck ", rd.version, " — ", #engine:tools(), " tools; help() for help, Ctrl-D to leave\n")
  end

  local function readline(prompt)
    if interactive then return native.readline(prompt) end
    return io.read("*l")
  end

  local buffer = nil
  local status = 0
  while true do
    local line = readline(buffer and ">> " or "> ")
    if line == nil then break end
    if interactive and line:match("%S") then native.add_history(line) end
    local src = buffer and (buffer .. "\n" .. line) or line
    local chunk, err = loadstring("return " .. src, "=repl")
    if not chunk then chunk, err = loadstring(src, "=repl") end
    if not chunk then
      if err:match("<eof>$") or err:match("<eof>'?$") then
        buffer = src
      else
        buffer = nil
        io.stderr:write(err, "\n")
        status = 1
      end
    else
      buffer = nil
      setfenv(chunk, env)
      local res = { pcall(chunk) }
      if not res[1] then
        io.stderr:write(tostring(res[2]), "\n")
        status = 1
      else
        for i = 2, table.maxn(res) do out:write(show(res[i]), "\n") end
      end
      out:flush()
    end
  end
  if buffer then
    local _, perr = loadstring(buffer, "=repl")
    io.stderr:write("repl: the input ended inside a statement: ", tostring(perr), "\n")
    status = 1
  end
  if interactive then
    native.write_history(history)
    out:write("\n")
  end
  engine:close()
  return interactive and 0 or status
end

return M
