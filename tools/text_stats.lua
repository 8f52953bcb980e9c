-- text_stats: counts characters, bytes, words and lines of a text, and its
-- most frequent words.
return tool {
  metadata = {
    name = "text_stats",
    description = "Count the characters, words and lines of a text and list its most frequent words",
    version = "1.0.0",
    tags = { "text" },
    examples = {
      { params = { text = "the cat and the hat" },
        output = { bytes = 19, characters = 19, words = 5, lines = 1,
                   top = { { word = "the", count = 2 }, { word = "and", count = 1 }, { word = "cat", count = 1 } } } },
      { params = { text = "héllo wörld\nzwei", top = 1 },
        output = { bytes = 18, characters = 16, words = 3, lines = 2,
                   top = { { word = "héllo", count = 1 } } } },
      { params = { text = "" }, output = { bytes = 0, characters = 0, words = 0, lines = 0, top = {} } },
    },
  },
  parameters = {
    type = "object",
    properties = {
      text = { type = "string", maxLength = 1048576 },
      top = { type = "integer", minimum = 0, maximum = 100, default = 3 },
    },
    required = { "text" },
    additionalProperties = false,
  },
  security = { level = "relaxed", max_cpu = 2000 },
  execution = {
    timeout = 5000,
    handler = function(p)
      local text = p.text
      -- UTF-8 characters: every byte that is not a continuation byte.
      local _, continuation = text:gsub("[\128-\191]", "")
      local counts, words = {}, 0
      for w in text:gmatch("[^%s%p]+") do
        w = w:lower()
        words = words + 1
        counts[w] = (counts[w] or 0) + 1
      end
      local lines = 0
      if #text > 0 then
        local _, nl = text:gsub("\n", "")
        lines = nl + (text:sub(-1) == "\n" and 0 or 1)
      end
      local list = {}
      for w, c in pairs(counts) do list[#list + 1] = { word = w, count = c } end
      table.sort(list, function(a, b)
        if a.count ~= b.count then return a.count > b.count end
        return a.word < b.word
      end)
      local top = json.array()
      for i = 1, math.min(p.top, #list) do top[i] = list[i] end
      return { bytes = #text, characters = #text - continuation, words = words,
               lines = lines, top = top }
    end,
  },
  output = {
    schema = {
      type = "object",
      required = { "bytes", "characters", "words", "lines", "top" },
      properties = { top = { type = "array" } },
    },
  },
}
