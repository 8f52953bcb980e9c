-- `cmake --install` gives a working rduck: the installed binary finds its
-- Lua modules and bundled tools under <prefix>/share/rubberduck, from any
-- working directory, without the source tree.
local build = os.getenv("RD_BUILD_DIR")

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return out:gsub("exit=%d+%s*$", ""), code
end

describe("installed rduck", function()
  local prefix
  setup(function()
    prefix = os.tmpname()
    os.remove(prefix)
  end)
  teardown(function()
    if prefix then os.execute("rm -rf '" .. prefix .. "'") end
  end)

  it("runs the demo and a tool from another directory", function()
    assert.is_not_nil(build, "RD_BUILD_DIR is set by ctest")
    local out, code = sh(string.format("cmake --install '%s' --prefix '%s'", build, prefix))
    assert.equal(0, code, out)
    -- a clean environment: no LUA_PATH pointing at the source tree
    local env = "env -u LUA_PATH -u LUA_CPATH -u RUBBERDUCK_LUA_DIR"
    out, code = sh(string.format("cd / && %s '%s/bin/rduck' demo", env, prefix))
    assert.equal(0, code, out)
    assert.truthy(out:match("demo: %d+ passed, 0 failed"), out)
    out, code = sh(string.format("cd / && %s '%s/bin/rduck' run '%s/share/rubberduck/tools/echo.lua' text=installed",
      env, prefix, prefix))
    assert.equal(0, code, out)
    assert.truthy(out:find('"installed"', 1, true), out)
    -- the header and both libraries are there for embedders
    for _, f in ipairs({ "include/rubberduck.h" }) do
      local fh = io.open(prefix .. "/" .. f)
      assert.is_not_nil(fh, f)
      fh:close()
    end
    out = sh(string.format("ls '%s'/lib*/librubberduck.a '%s'/lib*/librubberduck.so", prefix, prefix))
    assert.truthy(out:find("librubberduck.a", 1, true), out)
    assert.truthy(out:find("librubberduck.so", 1, true), out)
  end)
end)
