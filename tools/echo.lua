-- echo: returns its text, optionally repeated and upper-cased.
return tool {
  metadata = {
    name = "echo",
    description = "Return the text it is given, optionally repeated or upper-cased",
    version = "1.0.0",
    tags = { "text", "example" },
    examples = {
      { params = { text = "hi" }, output = { text = "hi" } },
      { params = { text = "ab", times = 3, upper = true }, output = { text = "ABABAB" } },
      { params = {}, error = "invalid_params", description = "text is required" },
    },
  },
  parameters = {
    type = "object",
    properties = {
      text = { type = "string", maxLength = 65536 },
      times = { type = "integer", minimum = 1, maximum = 100, default = 1 },
      upper = { type = "boolean", default = false },
    },
    required = { "text" },
    additionalProperties = false,
  },
  security = { level = "relaxed" },
  execution = {
    timeout = 1000,
    handler = function(params)
      local text = params.text:rep(params.times or 1)
      if params.upper then text = text:upper() end
      return { text = text }
    end,
  },
  output = { schema = { type = "object", required = { "text" } } },
}
