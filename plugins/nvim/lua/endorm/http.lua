-- Minimal HTTP/1.1 client over a Unix domain socket (libuv pipe).
-- One request per connection (`Connection: close`); the response body is delimited by
-- Content-Length, chunked transfer coding, or the server closing the connection.
local M = {}

M.uv = vim.uv or vim.loop

--- Decode a chunked body. Returns body, or nil when it is incomplete, or nil + error.
function M.dechunk(data)
  local out, pos = {}, 1
  while true do
    local eol = data:find('\r\n', pos, true)
    if not eol then
      return nil
    end
    local size_hex = data:sub(pos, eol - 1):match('^%s*(%x+)')
    if not size_hex then
      return nil, 'bad chunk size line: ' .. data:sub(pos, eol - 1)
    end
    local size = tonumber(size_hex, 16)
    pos = eol + 2
    if size == 0 then
      -- Trailers (ignored) end with an empty line.
      local stop = data:find('\r\n', pos, true)
      while stop and stop ~= pos do
        pos = stop + 2
        stop = data:find('\r\n', pos, true)
      end
      if not stop then
        return nil
      end
      return table.concat(out)
    end
    if #data < pos + size + 1 then
      return nil
    end
    out[#out + 1] = data:sub(pos, pos + size - 1)
    if data:sub(pos + size, pos + size + 1) ~= '\r\n' then
      return nil, 'chunk not followed by CRLF'
    end
    pos = pos + size + 2
  end
end

--- Parse a (possibly partial) HTTP response.
--- Returns `resp` ({status, reason, headers (lower-case names), body}) when complete,
--- nil when more bytes are needed, or nil + error message when it is malformed.
--- `eof`: the connection has closed, so a body without a length ends here.
function M.parse_response(data, eof)
  local head_end = data:find('\r\n\r\n', 1, true)
  if not head_end then
    if eof then
      return nil, 'connection closed before the response headers ended'
    end
    return nil
  end
  local head = data:sub(1, head_end - 1)
  local status_line, rest = head:match('^([^\r\n]*)\r?\n?(.*)$')
  local code, reason = status_line:match('^HTTP/%d%.%d (%d%d%d) ?(.*)$')
  if not code then
    return nil, 'not an HTTP response: ' .. status_line:sub(1, 80)
  end
  local headers = {}
  for line in (rest .. '\r\n'):gmatch('(.-)\r\n') do
    local name, value = line:match('^([^:]+):%s*(.-)%s*$')
    if name then
      headers[name:lower()] = value
    end
  end
  local raw = data:sub(head_end + 4)
  local body
  local te = headers['transfer-encoding']
  if te and te:lower():find('chunked', 1, true) then
    local b, err = M.dechunk(raw)
    if err then
      return nil, err
    end
    if not b then
      if eof then
        return nil, 'connection closed inside a chunked body'
      end
      return nil
    end
    body = b
  elseif headers['content-length'] then
    local n = tonumber(headers['content-length'])
    if not n then
      return nil, 'bad Content-Length: ' .. headers['content-length']
    end
    if #raw < n then
      if eof then
        return nil, ('connection closed after %d of %d body bytes'):format(#raw, n)
      end
      return nil
    end
    body = raw:sub(1, n)
  else
    if not eof then
      return nil
    end
    body = raw
  end
  return { status = tonumber(code), reason = reason, headers = headers, body = body }
end

--- Build the request bytes.
function M.build_request(method, path, body, headers)
  local lines = {
    ('%s %s HTTP/1.1'):format(method, path),
    'Host: localhost',
    'User-Agent: endorm.nvim',
    'Accept: application/json',
    'Connection: close',
  }
  for k, v in pairs(headers or {}) do
    lines[#lines + 1] = k .. ': ' .. v
  end
  if body then
    lines[#lines + 1] = 'Content-Type: application/json'
    lines[#lines + 1] = 'Content-Length: ' .. #body
  end
  return table.concat(lines, '\r\n') .. '\r\n\r\n' .. (body or '')
end

--- Send one request over the Unix socket `socket`.
--- opts: { timeout_ms?: integer }
--- cb(err, resp) is called exactly once, on the main loop (vim.schedule), never inside a uv
--- callback. err is { message, kind = 'connect'|'timeout'|'io'|'protocol'|'cancelled' }.
--- Returns a handle with :cancel().
function M.request(socket, method, path, body, opts, cb)
  opts = opts or {}
  local uv = M.uv
  local done = false
  local pipe, timer
  local chunks = {}

  local function finish(err, resp)
    if done then
      return
    end
    done = true
    if timer and not timer:is_closing() then
      timer:stop()
      timer:close()
    end
    if pipe and not pipe:is_closing() then
      pipe:read_stop()
      pipe:close()
    end
    vim.schedule(function()
      cb(err, resp)
    end)
  end

  local handle = {
    cancel = function()
      finish({ kind = 'cancelled', message = 'request cancelled' })
    end,
  }

  pipe = uv.new_pipe(false)
  if not pipe then
    finish({ kind = 'io', message = 'could not create a pipe' })
    return handle
  end
  local timeout = opts.timeout_ms or 10000
  if timeout > 0 then
    timer = uv.new_timer()
    timer:start(timeout, 0, function()
      finish({ kind = 'timeout', message = ('endorm did not answer %s %s within %d ms'):format(method, path, timeout) })
    end)
  end

  local payload = M.build_request(method, path, body)
  local ok, perr = pcall(pipe.connect, pipe, socket, function(cerr)
    if done then
      return
    end
    if cerr then
      finish({
        kind = 'connect',
        message = ('cannot connect to endorm at %s (%s): start the daemon with `endorm serve`'):format(socket, cerr),
      })
      return
    end
    pipe:write(payload, function(werr)
      if werr then
        finish({ kind = 'io', message = 'write to endorm failed: ' .. werr })
      end
    end)
    pipe:read_start(function(rerr, data)
      if done then
        return
      end
      if rerr then
        finish({ kind = 'io', message = 'read from endorm failed: ' .. rerr })
        return
      end
      if data then
        chunks[#chunks + 1] = data
      end
      local all = table.concat(chunks)
      chunks = { all }
      local resp, perr2 = M.parse_response(all, data == nil)
      if resp then
        finish(nil, resp)
      elseif perr2 then
        finish({ kind = 'protocol', message = 'bad HTTP response from endorm: ' .. perr2 })
      elseif data == nil then
        finish({ kind = 'protocol', message = 'endorm closed the connection early' })
      end
    end)
  end)
  if not ok then
    finish({ kind = 'connect', message = ('cannot connect to endorm at %s: %s'):format(socket, perr) })
  end
  return handle
end

return M
