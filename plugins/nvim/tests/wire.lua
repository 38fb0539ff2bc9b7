-- What the plugin sends to the daemon and reads from its answers, recorded while the tests run,
-- checked against the daemon's own schema (docs/openapi.json, made from src/api/'s Rust types).
--   local wire = dofile('tests/wire.lua'); wire.install(require('endorm.client'))
--   ... the tests ...; local problems = wire.check(openapi_file)
-- Bodies sent are walked key by key; a response is handed to the plugin as proxies that record
-- each field it reads (arrays stay plain Lua arrays, their items are proxies). Paths look like
-- `results[].tokens[].reward`.
local M = {}

M.sent = {} -- 'POST /v1/score' -> { [path] = true }
M.read = {} -- 'POST /v1/score' -> { [path] = true }
M.paused = false -- the harness's own requests (its oracle) are not the plugin's

local function note(book, route, path)
  book[route] = book[route] or {}
  book[route][path] = true
end

local function join(path, key)
  return path == '' and key or (path .. '.' .. key)
end

local function walk_sent(route, value, path)
  if type(value) ~= 'table' then
    return
  end
  if (vim.islist or vim.tbl_islist)(value) then
    for _, v in ipairs(value) do
      walk_sent(route, v, path .. '[]')
    end
    return
  end
  for k, v in pairs(value) do
    local p = join(path, k)
    note(M.sent, route, p)
    walk_sent(route, v, p)
  end
end

local function watch(route, value, path)
  if type(value) ~= 'table' then
    return value
  end
  if (vim.islist or vim.tbl_islist)(value) then
    local out = {}
    for i, v in ipairs(value) do
      out[i] = watch(route, v, path .. '[]')
    end
    return out
  end
  local children = {}
  return setmetatable({}, {
    __index = function(_, k)
      if type(k) ~= 'string' then
        return nil
      end
      note(M.read, route, join(path, k))
      if children[k] == nil and value[k] ~= nil then
        children[k] = watch(route, value[k], join(path, k))
      end
      return children[k]
    end,
    __newindex = function(_, k, v)
      rawset(value, k, v)
      children[k] = v
    end,
  })
end

--- Wrap client.request so every call of the plugin is recorded.
function M.install(client)
  local request = client.request
  client.request = function(method, path, body, opts, cb)
    local route = method .. ' ' .. path
    if M.paused then
      return request(method, path, body, opts, cb)
    end
    walk_sent(route, body, '')
    return request(method, path, body, opts, function(err, data, resp)
      cb(err, err and data or watch(route, data, ''), resp)
    end)
  end
end

-- ---------------------------------------------------------------- the schema side
local function named_schemas(doc)
  local out = {}
  for _, t in ipairs({ doc.definitions or {}, doc['$defs'] or {}, (doc.components or {}).schemas or {} }) do
    for k, v in pairs(t) do
      out[k] = v
    end
  end
  return out
end

-- Every schema `s` stands for: itself, what its $ref names, and its allOf/oneOf/anyOf members.
local function alternatives(named, s, out, seen)
  out, seen = out or {}, seen or {}
  if type(s) ~= 'table' or seen[s] then
    return out
  end
  seen[s] = true
  if type(s['$ref']) == 'string' then
    local name = s['$ref']:match('([^/]+)$')
    local target = named[name]
    if target then
      alternatives(named, target, out, seen)
    end
    return out
  end
  out[#out + 1] = s
  for _, key in ipairs({ 'allOf', 'oneOf', 'anyOf' }) do
    for _, member in ipairs(s[key] or {}) do
      alternatives(named, member, out, seen)
    end
  end
  return out
end

-- The schemas one step along `seg` ('[]' = the items of an array, else a property).
local function step(named, schemas, seg)
  local next_ = {}
  for _, s in ipairs(schemas) do
    for _, a in ipairs(alternatives(named, s)) do
      local child
      if seg == '[]' then
        child = a.items
      else
        child = type(a.properties) == 'table' and a.properties[seg] or nil
      end
      if child ~= nil then
        next_[#next_ + 1] = child
      end
    end
  end
  return next_
end

local function segments(path)
  local out = {}
  for part in path:gmatch('[^.]+') do
    local name, arrays = part:match('^([^%[]*)(.*)$')
    if name ~= '' then
      out[#out + 1] = name
    end
    for _ in arrays:gmatch('%[%]') do
      out[#out + 1] = '[]'
    end
  end
  return out
end

-- Where the paths do not name a route's bodies, these schema names do (src/api/).
local FALLBACK = {
  ['POST /v1/score'] = { request = 'ScoreRequest', response = 'ScoreResponse' },
  ['GET /health'] = { response = 'HealthResponse' },
  ['GET /v1/models'] = { response = 'ModelList' },
  ['GET /error'] = { response = 'ErrorBody' }, -- not a route: the error body of every route
}

local function body_schema(doc, named, route, which)
  local method, path = route:match('^(%S+) (.+)$')
  local op = ((doc.paths or {})[path] or {})[method:lower()]
  local content
  if op and which == 'request' then
    content = ((op.requestBody or {}).content or {})['application/json']
  elseif op then
    local responses = op.responses or {}
    content = ((responses['200'] or responses[200] or {}).content or {})['application/json']
  end
  if content and content.schema then
    return content.schema
  end
  local name = (FALLBACK[route] or {})[which]
  return name and named[name] and { ['$ref'] = '#/components/schemas/' .. name } or nil
end

--- Problems (strings) of the recorded paths against the schema file; empty when all exist.
function M.check(openapi_file)
  local doc = vim.json.decode(table.concat(vim.fn.readfile(openapi_file), '\n'))
  local named = named_schemas(doc)
  local problems, checked = {}, 0
  for which, book in pairs({ request = M.sent, response = M.read }) do
    for route, paths in pairs(book) do
      local root = body_schema(doc, named, route, which)
      if not root then
        problems[#problems + 1] = ('%s: the schema has no %s body for it'):format(route, which)
      else
        for path in pairs(paths) do
          checked = checked + 1
          local at = { root }
          for _, seg in ipairs(segments(path)) do
            at = step(named, at, seg)
          end
          if #at == 0 then
            problems[#problems + 1] = ('%s %s: %s is not in the schema'):format(route, which, path)
          end
        end
      end
    end
  end
  table.sort(problems)
  return problems, checked
end

return M
