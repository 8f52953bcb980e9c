-- json_query: looks a value up in a JSON document by JSON Pointer (RFC 6901).
return tool {
  metadata = {
    name = "json_query",
    description = "Look up a value in a JSON document by JSON Pointer (RFC 6901)",
    version = "1.0.0",
    tags = { "json" },
    examples = {
      { params = { document = { users = { { name = "ada" }, { name = "bob" } } }, pointer = "/users/1/name" },
        output = { found = true, value = "bob" } },
      { params = { document = { ["a/b"] = { ["m~n"] = 42 } }, pointer = "/a~1b/m~0n" },
        output = { found = true, value = 42 } },
      { params = { document = { list = {} }, pointer = "/list" },
        output = { found = true, value = json.array() }, description = "an empty array stays an array" },
      { params = { document = { a = 1 }, pointer = "/b" }, output = { found = false } },
      { params = { document = {}, pointer = "no-slash" }, error = "invalid_params" },
    },
  },
  parameters = {
    type = "object",
    properties = {
      document = {},
      pointer = { type = "string" },
    },
    required = { "document", "pointer" },
    additionalProperties = false,
  },
  constraints = {
    function(p)
      return p.pointer == "" or p.pointer:sub(1, 1) == "/",
        "/pointer: a JSON Pointer is empty or starts with \"/\""
    end,
    function(p)
      -- "~" must be followed by 0 or 1
      return not p.pointer:gsub("~[01]", ""):find("~", 1, true),
        "/pointer: \"~\" must be followed by 0 or 1"
    end,
  },
  security = { level = "relaxed" },
  execution = {
    timeout = 2000,
    handler = function(p)
      local node = p.document
      if p.pointer == "" then return { found = true, value = node } end
      for token in (p.pointer:sub(2) .. "/"):gmatch("([^/]*)/") do
        token = token:gsub("~1", "/"):gsub("~0", "~")
        if type(node) ~= "table" then return { found = false } end
        if json.is_array(node) then
          local i = token:match("^0$") or token:match("^[1-9]%d*$")
          if not i then return { found = false } end
          node = node[tonumber(i) + 1]
        else
          node = node[token]
        end
        if node == nil then return { found = false } end
      end
      return { found = true, value = node }
    end,
  },
  output = { schema = { type = "object", required = { "found" } } },
}
