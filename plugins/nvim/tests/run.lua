-- Headless tests of endorm.nvim against the REAL daemon on a real model. No test framework.
--   nvim --headless -u NONE -i NONE -c "luafile plugins/nvim/tests/run.lua"
-- Env: ENDORM_BIN (default <repo>/target/release/endorm), ENDORM_MODEL (default
-- ~/.cache/endorm/models/SmolLM2-135M-Instruct.Q4_1.gguf), ENDORM_TEST_FILTER (run only tests
-- whose name contains it). Exit status: number of failures (0 = all passed), 2 on setup errors.
local script = debug.getinfo(1, 'S').source:sub(2)
local root = vim.fn.fnamemodify(script, ':p:h:h') -- plugins/nvim
local repo = vim.fn.fnamemodify(root, ':h:h')
vim.opt.runtimepath:prepend(root)
vim.o.swapfile = false
vim.o.more = false
vim.cmd('runtime plugin/endorm.lua')

local uv = vim.uv or vim.loop
local out = io.stderr

local function log(fmt, ...)
  out:write(string.format(fmt, ...) .. '\n')
end

local function exit(code)
  out:flush()
  io.stdout:flush()
  if code == 0 then
    vim.cmd('qall!')
  else
    vim.cmd('cquit ' .. code)
  end
end

-- ---------------------------------------------------------------- assertions
local T = {}
local tests = {}
local function test(name, fn)
  tests[#tests + 1] = { name = name, fn = fn }
end

local function fail(msg, level)
  error(msg, (level or 1) + 1)
end
function T.ok(v, msg)
  if not v then
    fail('expected truthy: ' .. (msg or ''), 2)
  end
end
function T.eq(a, b, msg)
  if not vim.deep_equal(a, b) then
    fail(('%s\n    expected: %s\n    got:      %s'):format(msg or 'not equal', vim.inspect(b), vim.inspect(a)), 2)
  end
end
function T.match(s, pat, msg)
  if type(s) ~= 'string' or not s:find(pat, 1, true) then
    fail(('%s: %s does not contain %q'):format(msg or 'no match', vim.inspect(s), pat), 2)
  end
end
--- Wait (processing events) until fn() is truthy; fail after ms.
function T.wait(ms, fn, what)
  local ok = vim.wait(ms, fn, 10)
  if not ok then
    fail('timed out after ' .. ms .. ' ms waiting for ' .. (what or 'a condition'), 2)
  end
end

-- Record notifications (the plugin reports errors with vim.notify).
local notes = {}
vim.notify = function(msg, level)
  notes[#notes + 1] = { msg = tostring(msg), level = level }
end
local function last_note()
  return notes[#notes] and notes[#notes].msg or ''
end

-- ---------------------------------------------------------------- the daemon
local bin = vim.env.ENDORM_BIN
if not bin or bin == '' then
  bin = repo .. '/target/release/endorm'
end
local model = vim.env.ENDORM_MODEL
if not model or model == '' then
  model = vim.fn.expand('~/.cache/endorm/models/SmolLM2-135M-Instruct.Q4_1.gguf')
end
if vim.fn.executable(bin) ~= 1 then
  log('FATAL: no endorm binary at %s (set ENDORM_BIN)', bin)
  return exit(2)
end
if vim.fn.filereadable(model) ~= 1 then
  log('FATAL: no model at %s (set ENDORM_MODEL; endorm pull downloads the default)', model)
  return exit(2)
end

local tmp = uv.fs_mkdtemp('/tmp/endorm-nvim-XXXXXX') -- short: socket paths are limited to 107 bytes
local sock = tmp .. '/e.sock'
local cfg = tmp .. '/endorm.toml'
local f = io.open(cfg, 'w')
f:write('') -- an empty config: the user's own one does not leak in
f:close()

local stdin = uv.new_pipe(false)
local stderr = uv.new_pipe(false)
local serve_log = {}
local exited, exit_code = false, nil
local proc, pid = uv.spawn(bin, {
  args = { 'serve', '--socket', sock, '--exit-on-eof', '--model', model, '--config', cfg },
  stdio = { stdin, nil, stderr },
}, function(code)
  exited, exit_code = true, code
end)
if not proc then
  log('FATAL: cannot start %s: %s', bin, tostring(pid))
  return exit(2)
end
stderr:read_start(function(_, data)
  if data then
    serve_log[#serve_log + 1] = data
  end
end)

local function stop_daemon()
  if not exited then
    stdin:close() -- --exit-on-eof: the daemon stops
    if not vim.wait(30000, function()
      return exited
    end, 20) then
      proc:kill('sigterm') -- only the daemon this script started
      vim.wait(5000, function()
        return exited
      end, 20)
    end
  end
  vim.fn.delete(tmp, 'rf') -- this run's own directory: socket, config, the tests' files
end

local endorm = require('endorm')
local client = require('endorm.client')
-- Record every field the plugin sends and reads (checked against docs/openapi.json at the end).
local wire = dofile(root .. '/tests/wire.lua')
wire.install(client)
local http = require('endorm.http')
local sorter = require('endorm.sorter')
local text = require('endorm.text')
local base_opts = { socket = sock, timeout_ms = 60000 }
endorm.setup(base_opts)

local v = vim.version()
log('endorm.nvim tests: nvim %d.%d.%d, daemon %s (pid %d), model %s', v.major, v.minor, v.patch, bin, pid, model)
wire.paused = true -- the harness's own requests are not the plugin's
local healthy = vim.wait(120000, function()
  if exited then
    return true
  end
  local err, h = client.wait(client.health, 2000, { timeout_ms = 2000 })
  return not err and h.status == 'ok'
end, 100)
wire.paused = false
if exited or not healthy then
  log('FATAL: endorm serve %s:\n%s', exited and ('exited ' .. tostring(exit_code)) or 'not healthy in 120 s',
    table.concat(serve_log))
  stop_daemon()
  return exit(2)
end

-- Fresh scratch buffer with `lines`, current, with its undo history cut.
local function scratch(lines)
  vim.cmd('enew!')
  local buf = vim.api.nvim_get_current_buf()
  vim.bo[buf].buftype = 'nofile'
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.cmd('let &undolevels = &undolevels') -- start a new undo step
  return buf
end

local function score_sync(prompt, candidates, extra)
  local req = vim.tbl_extend('force', { format = 'raw', prompt = prompt, candidates = candidates }, extra or {})
  wire.paused = true -- the test's oracle, not the plugin
  local err, data = client.wait(client.score, 60000, req, {})
  wire.paused = false
  T.ok(not err, 'score failed: ' .. (err and err.message or ''))
  return data
end

-- ---------------------------------------------------------------- http parsing
test('http: Content-Length body, partial and complete', function()
  local head = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n'
  T.eq(http.parse_response(head .. '{"a":', false), nil, 'partial body is incomplete')
  local r = http.parse_response(head .. '{"a":1}', false)
  T.eq(r.status, 200)
  T.eq(r.headers['content-type'], 'application/json')
  T.eq(r.body, '{"a":1}')
  local _, err = http.parse_response(head .. '{"a"', true)
  T.match(err, 'closed after 4 of 7')
end)

test('http: chunked body with extensions, split reads and trailers', function()
  local head = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
  local body = '4;ext=1\r\n{"a"\r\nA\r\n:[1,2,3]}\n\r\n0\r\nX-Trailer: y\r\n\r\n'
  for cut = 1, #body - 1 do
    T.eq(http.parse_response(head .. body:sub(1, cut), false), nil, 'incomplete at ' .. cut)
  end
  local r = http.parse_response(head .. body, false)
  T.eq(r.body, '{"a":[1,2,3]}\n')
  local _, err = http.parse_response(head .. 'zz\r\n', false)
  T.match(err, 'bad chunk size')
end)

test('http: body until close, malformed status line', function()
  local r = http.parse_response('HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\n\r\nbusy', true)
  T.eq({ r.status, r.reason, r.headers['retry-after'], r.body }, { 503, 'Service Unavailable', '1', 'busy' })
  local _, err = http.parse_response('SSH-2.0\r\n\r\n', true)
  T.match(err, 'not an HTTP response')
end)

test('http: real GET /health over the socket, framed by the daemon', function()
  local resp
  http.request(sock, 'GET', '/health', nil, { timeout_ms = 10000 }, function(err, r)
    resp = r or err
  end)
  T.wait(10000, function()
    return resp
  end, '/health')
  T.eq(resp.status, 200, 'status')
  T.ok(resp.headers['content-length'] or resp.headers['transfer-encoding'], 'framing header')
  local data = vim.json.decode(resp.body)
  T.eq(data.status, 'ok')
end)

-- ---------------------------------------------------------------- client
test('client: score round trip (raw, return_tokens)', function()
  local d = score_sync('The capital of France is', { ' Paris', ' banana' }, { return_tokens = true })
  T.ok(type(d.model) == 'string' and d.model ~= '', 'model id')
  T.eq(#d.results, 2)
  T.eq(#d.order, 2)
  for _, r in ipairs(d.results) do
    T.ok(type(r.score) == 'number', 'score is a number')
    T.ok(#r.tokens >= 1, 'tokens returned')
  end
  T.eq(d.results[1].tokens[1].text, ' Paris')
  T.ok(d.results[1].score > d.results[2].score, 'Paris outscores banana on ' .. d.model)
end)

test('client: calls return at once (the UI is not blocked)', function()
  local t0 = uv.hrtime()
  local got
  client.score({ format = 'raw', prompt = 'Once upon a time', candidates = { ' there', ' a dog' } }, {}, function(e, d)
    got = e or d
  end)
  local ms = (uv.hrtime() - t0) / 1e6
  T.ok(ms < 50, ('score() returned after %.1f ms'):format(ms))
  T.ok(got == nil, 'the callback waits for the loop')
  T.wait(60000, function()
    return got
  end, 'the answer')
end)

test("client: the daemon's error message is passed through (empty candidates)", function()
  local err = client.wait(client.score, 10000, { format = 'raw', prompt = 'x', candidates = {} }, {})
  T.ok(err, 'an error')
  T.eq(err.status, 400)
  T.eq(err.code, 'invalid_request')
  T.match(err.message, '`candidates` is empty')
end)

test('client: unknown route and model give the daemon message', function()
  local err = client.wait(client.request, 10000, 'GET', '/nope', nil, {})
  T.eq(err.status, 404)
  T.match(err.message, 'no route GET /nope')
  err = client.wait(client.score, 10000, { format = 'raw', prompt = 'x', candidates = { 'y' }, model = 'no-such-model' }, {})
  T.eq(err.status, 404)
  T.match(err.message, 'no-such-model')
end)

test('client: no daemon on the socket is a clear error', function()
  local err = client.wait(client.health, 5000, { socket = tmp .. '/missing.sock' })
  T.eq(err.kind, 'connect')
  T.match(err.message, 'endorm serve')
  T.match(err.message, 'missing.sock')
end)

-- ---------------------------------------------------------------- completion sorting
local PROMPT = 'The capital of France is '

-- nvim-cmp entries: the fields and methods the comparator uses (context, get_word).
local function cmp_entries(buf, words)
  local cur = vim.api.nvim_win_get_cursor(0)
  local line = vim.api.nvim_get_current_line()
  local ctx = {
    bufnr = buf,
    cursor = { row = cur[1], col = cur[2] + 1 },
    cursor_before_line = line:sub(1, cur[2]),
  }
  local es = {}
  for i, w in ipairs(words) do
    es[i] = {
      id = i,
      context = ctx,
      get_word = function()
        return w
      end,
    }
  end
  return es
end

-- Sort the way nvim-cmp does: comparators in turn, the first non-nil answer wins, then the
-- original index. Returns the words in their new order.
local function cmp_sort(entries, comparator)
  local list = vim.list_slice(entries, 1)
  table.sort(list, function(a, b)
    local r = comparator(a, b)
    if r ~= nil then
      return r
    end
    return a.id < b.id
  end)
  return vim.tbl_map(function(e)
    return e.get_word()
  end, list)
end

local function completion_buffer(line)
  local buf = scratch({ line })
  -- In insert mode the cursor sits after the last character; 'onemore' allows that here.
  vim.o.virtualedit = 'onemore'
  vim.api.nvim_win_set_cursor(0, { 1, #line })
  T.eq(vim.api.nvim_win_get_cursor(0)[2], #line, 'cursor at the end of the line')
  return buf
end

test('cmp comparator: real scores decide the order once they arrive', function()
  endorm.setup(vim.tbl_deep_extend('force', base_opts, { completion = { budget_ms = 30000 } }))
  local buf = completion_buffer(PROMPT)
  local direct = score_sync('The capital of France is', { ' banana', ' Paris' })
  local want = direct.order[1] == 1 and { 'Paris', 'banana' } or { 'banana', 'Paris' }
  local cmpc = require('endorm.cmp').comparator
  local es = cmp_entries(buf, { 'banana', 'Paris' })
  T.eq(cmp_sort(es, cmpc), { 'banana', 'Paris' }, 'no scores yet: the original order')
  local req0 = sorter.stats.requests
  T.wait(30000, function()
    return sorter.score_of(PROMPT, 'Paris') and sorter.score_of(PROMPT, 'banana')
  end, 'scores')
  T.eq(sorter.stats.requests, req0 + 1, 'one request for the menu')
  T.eq(cmp_sort(es, cmpc), want, 'sorted by the daemon scores')
  T.ok(math.abs(sorter.score_of(PROMPT, 'Paris') - direct.results[2].score) < 1e-6, 'same score as a direct request')
  T.eq(want, { 'Paris', 'banana' }, 'Paris ranks first on this model')
  T.eq(sorter.stats.requests, req0 + 1, 'cached: no second request')
end)

test('cmp comparator: the keyword being typed is not part of the context', function()
  endorm.setup(vim.tbl_deep_extend('force', base_opts, { completion = { budget_ms = 30000 } }))
  local buf = completion_buffer(PROMPT .. 'Pa')
  local es = cmp_entries(buf, { 'Pancakes', 'Paris' })
  cmp_sort(es, require('endorm.cmp').comparator)
  T.wait(30000, function()
    return sorter.score_of(PROMPT, 'Paris')
  end, 'scores keyed by the text before the word')
  T.eq(cmp_sort(es, require('endorm.cmp').comparator), { 'Paris', 'Pancakes' })
end)

test('cmp comparator: a 0 ms budget keeps the original order and sends nothing', function()
  endorm.setup(vim.tbl_deep_extend('force', base_opts, { completion = { budget_ms = 0 } }))
  local buf = completion_buffer(PROMPT)
  local es = cmp_entries(buf, { 'banana', 'Paris' })
  local req0 = sorter.stats.requests
  T.eq(cmp_sort(es, require('endorm.cmp').comparator), { 'banana', 'Paris' })
  vim.wait(500)
  T.eq(sorter.stats.requests, req0, 'no request')
  T.eq(cmp_sort(es, require('endorm.cmp').comparator), { 'banana', 'Paris' }, 'still the original order')
end)

test('cmp comparator: scores later than the budget are dropped', function()
  endorm.setup(vim.tbl_deep_extend('force', base_opts, { completion = { budget_ms = 1 } }))
  local buf = completion_buffer('A fresh prefix that the daemon has not cached, about ')
  local es = cmp_entries(buf, { 'zebras', 'apples', 'the' })
  local late0 = sorter.stats.late
  T.eq(cmp_sort(es, require('endorm.cmp').comparator), { 'zebras', 'apples', 'the' })
  T.wait(5000, function()
    return sorter.stats.late > late0
  end, 'the budget to run out')
  vim.wait(300)
  T.eq(cmp_sort(es, require('endorm.cmp').comparator), { 'zebras', 'apples', 'the' }, 'original order stands')
end)

test('blink sort: real scores decide the order once they arrive', function()
  endorm.setup(vim.tbl_deep_extend('force', base_opts, { completion = { budget_ms = 30000 } }))
  completion_buffer('The capital of Italy is ')
  local items = { { label = 'banana', id = 1 }, { label = 'Rome', id = 2 } }
  local sort = require('endorm.blink').sort
  local function blink_sort()
    local list = vim.list_slice(items, 1)
    table.sort(list, function(a, b)
      local r = sort(a, b)
      if r == nil then
        return a.id < b.id
      end
      return r
    end)
    return vim.tbl_map(function(i)
      return i.label
    end, list)
  end
  T.eq(blink_sort(), { 'banana', 'Rome' }, 'original order first')
  T.wait(30000, function()
    return sorter.score_of('The capital of Italy is ', 'Rome') and sorter.score_of('The capital of Italy is ', 'banana')
  end, 'scores')
  local direct = score_sync('The capital of Italy is', { ' banana', ' Rome' })
  T.eq(blink_sort(), direct.order[1] == 1 and { 'Rome', 'banana' } or { 'banana', 'Rome' })
end)

test('completion: a daemon that is down warns once and keeps the order', function()
  endorm.setup({ socket = tmp .. '/missing.sock', completion = { budget_ms = 2000 } })
  local buf = completion_buffer(PROMPT)
  local es = cmp_entries(buf, { 'banana', 'Paris' })
  local n0 = #notes
  T.eq(cmp_sort(es, require('endorm.cmp').comparator), { 'banana', 'Paris' })
  T.wait(3000, function()
    return #notes > n0
  end, 'a warning')
  T.match(last_note(), 'cannot connect')
  T.eq(cmp_sort(es, require('endorm.cmp').comparator), { 'banana', 'Paris' })
  endorm.setup(base_opts)
end)

-- ---------------------------------------------------------------- Neovim's own menu
-- The order the daemon gives `words` as continuations of PROMPT (each after its space).
local function daemon_order(words)
  local cands = vim.tbl_map(function(w)
    return ' ' .. w
  end, words)
  local data = score_sync(PROMPT:sub(1, -2), cands, { aggregate = 'endo_mean' })
  return vim.tbl_map(function(i)
    return words[i + 1]
  end, data.order)
end

local MENU = { 'banana', 'Paris', 'mostly' }

test('native.rank: items (strings and dicts) best first by the real scores; budget 0 keeps them', function()
  endorm.setup(vim.tbl_deep_extend('force', base_opts, { completion = { budget_ms = 30000 } }))
  completion_buffer(PROMPT)
  local native = require('endorm.native')
  local want = daemon_order(MENU)
  T.eq(want[1], 'Paris', 'Paris ranks first on this model')
  local col = #PROMPT + 1
  T.eq(native.rank(col, MENU), want)
  local dicts = vim.tbl_map(function(w)
    return { word = w, menu = '[fixture]' }
  end, MENU)
  T.eq(vim.tbl_map(function(d)
    return d.word
  end, native.rank(col, dicts)), want, 'dict items, from the cache')
  endorm.setup(vim.tbl_deep_extend('force', base_opts, { completion = { budget_ms = 0 } }))
  T.eq(native.rank(col, MENU), MENU, 'budget 0: the source order')
  endorm.setup(vim.tbl_deep_extend('force', base_opts, { completion = { budget_ms = 30000, max_items = 1 } }))
  T.eq(native.rank(col, { 'banana', 'Paris' }), { 'banana', 'Paris' }, 'only max_items ranked')
  T.eq(native.wrap(native.wrap('syntaxcomplete#Complete')), native.wrap('syntaxcomplete#Complete'))
  endorm.setup(base_opts)
end)

-- A real Neovim with its terminal UI, in tmux: keys typed with send-keys, the menu read with
-- complete_info() over the child's RPC socket (--listen) and from the screen (capture-pane).
-- The completion source is a fixture (fixed items); the order must be the daemon's.
test('native menu in a real nvim (tmux): omnifunc, completefunc and complete() show items best first', function()
  if vim.fn.executable('tmux') ~= 1 then
    T.ok(vim.env.ENDORM_REQUIRE_ALL ~= '1', 'tmux is not installed (apt-get install tmux)')
    return 'skip', 'tmux is not installed'
  end
  local want = daemon_order(MENU)
  local dir = tmp .. '/tui'
  vim.fn.mkdir(dir, 'p')
  local init = dir .. '/init.lua'
  local file = dir .. '/quiz.txt'
  vim.fn.writefile({ PROMPT }, file)
  vim.fn.writefile({
    ('vim.opt.runtimepath:prepend(%q)'):format(root),
    "vim.cmd('runtime plugin/endorm.lua')",
    ('require("endorm").setup({ socket = %q, completion = { budget_ms = 30000 } })'):format(sock),
    "local native = require('endorm.native')",
    '-- the completion source: fixed items, completing the keyword before the cursor',
    'local function items(findstart)',
    '  if findstart == 1 then',
    "    return vim.fn.match(vim.api.nvim_get_current_line():sub(1, vim.fn.col('.') - 1), [[\\k*$]])",
    '  end',
    ('  return %s'):format(vim.inspect(MENU)),
    'end',
    'vim.o.omnifunc = native.wrap(items)',
    'vim.cmd([[function! EndormFixture(findstart, base)',
    [[  return a:findstart ? match(getline('.')[: col('.') - 2], '\k*$') : ]] .. vim.fn.string(MENU),
    'endfunction]])',
    "vim.o.completefunc = native.wrap('EndormFixture')",
    "vim.keymap.set('i', '<F5>', function() native.complete(vim.fn.col('.'), " .. vim.inspect(MENU) .. ') end)',
  }, init)
  local server = 'endorm-test-' .. uv.os_getpid()
  local addr = dir .. '/nvim.sock'
  local function tmux(...)
    local out = vim.fn.system(vim.list_extend({ 'tmux', '-L', server }, { ... }))
    T.ok(vim.v.shell_error == 0, 'tmux ' .. table.concat({ ... }, ' ') .. ': ' .. out)
    return out
  end
  local chan
  local ok, err = pcall(function()
    tmux('new-session', '-d', '-s', 'menu', '-x', '80', '-y', '16', 'env', 'TERM=xterm-256color', vim.v.progpath,
      '-u', init, '-i', 'NONE', '-n', '--listen', addr, file)
    T.wait(20000, function()
      return uv.fs_stat(addr) ~= nil
    end, 'the child nvim to listen')
    chan = vim.fn.sockconnect('pipe', addr, { rpc = true })
    local function info()
      return vim.rpcrequest(chan, 'nvim_call_function', 'complete_info', { { 'pum_visible', 'items', 'mode' } })
    end
    local function menu(keys, mode)
      tmux('send-keys', '-t', 'menu', unpack(keys))
      local got
      T.wait(30000, function()
        got = info()
        return got.pum_visible == 1 and #got.items > 0
      end, 'the popup menu after ' .. table.concat(keys, ' '))
      T.eq(got.mode, mode, 'completion mode')
      local words = vim.tbl_map(function(i)
        return i.word
      end, got.items)
      T.eq(words, want, mode .. ': complete_info() items in the daemon order')
      -- The default 'completeopt' inserts the first item: the best one.
      T.eq(vim.rpcrequest(chan, 'nvim_get_current_line'), PROMPT .. want[1], mode .. ': inserted word')
      -- The menu as drawn on the terminal: one row per item, in the same order.
      local screen
      T.wait(5000, function()
        screen = tmux('capture-pane', '-p', '-t', 'menu')
        return screen:find(want[#want], 1, true) ~= nil
      end, 'the menu on the screen')
      local rows = {}
      for i, row in ipairs(vim.split(screen, '\n')) do
        for _, w in ipairs(want) do
          -- a popup row: below the text (an empty line shows `~`), the item alone in its cell
          if row:match('^~?%s+' .. vim.pesc(w) .. '%s*$') and not rows[w] then
            rows[w] = i
          end
        end
      end
      for k = 2, #want do
        T.ok(rows[want[k - 1]] and rows[want[k]] and rows[want[k - 1]] < rows[want[k]],
          mode .. ': screen rows in the daemon order:\n' .. screen)
      end
      local shot = repo .. '/target/editors/nvim-menu-' .. mode .. '.txt'
      vim.fn.mkdir(vim.fn.fnamemodify(shot, ':h'), 'p')
      vim.fn.writefile(vim.split(screen, '\n'), shot)
      tmux('send-keys', '-t', 'menu', 'C-e', 'Escape')
      T.wait(5000, function()
        return vim.rpcrequest(chan, 'nvim_get_mode').mode == 'n'
      end, 'normal mode again')
      T.eq(vim.rpcrequest(chan, 'nvim_get_current_line'), PROMPT, 'CTRL-E restored the line')
    end
    menu({ 'A', 'C-x', 'C-o' }, 'omni')
    menu({ 'A', 'C-x', 'C-u' }, 'function')
    menu({ 'A', 'F5' }, 'eval')
  end)
  if chan then
    pcall(vim.fn.chanclose, chan)
  end
  vim.fn.system({ 'tmux', '-L', server, 'kill-server' }) -- the tmux server of this test only
  vim.fn.delete(dir, 'rf')
  if not ok then
    error(err, 0)
  end
end)

-- With a checkout of the real plugin (NVIM_CMP_DIR / BLINK_CMP_DIR), its menu is opened in a
-- child Neovim and must end up sorted by the daemon's scores. Skipped without one.
local function real_menu(which, dir_env)
  return function()
    local dir = vim.env[dir_env]
    if not dir or dir == '' then
      return 'skip', 'set ' .. dir_env .. ' to a checkout to run it'
    end
    local cmd = {
      vim.v.progpath, '--headless', '-u', 'NONE', '-i', 'NONE', '-n',
      '-c', 'luafile ' .. root .. '/tests/real_menu.lua',
    }
    local env = ('ENDORM_TEST_SOCKET=%s ENDORM_TEST_MENU=%s '):format(sock, which)
    local output = vim.fn.system('env ' .. env .. table.concat(vim.tbl_map(vim.fn.shellescape, cmd), ' ') .. ' 2>&1 </dev/null')
    T.ok(vim.v.shell_error == 0, 'child failed:\n' .. output)
    T.match(output, 'after=Paris')
  end
end
test('nvim-cmp (real plugin): the open menu is re-sorted by the scores', real_menu('cmp', 'NVIM_CMP_DIR'))
test('blink.cmp (real plugin): the open menu is re-sorted by the scores', real_menu('blink', 'BLINK_CMP_DIR'))

-- ---------------------------------------------------------------- :EndormRerank
local function run_command(mod, cmd)
  local m = require(mod)
  local n0 = m.runs
  vim.cmd(cmd)
  T.wait(60000, function()
    return m.runs > n0
  end, cmd)
  return m.last
end

test(':EndormRerank rewrites the lines best-first, as the scores say, in one undo step', function()
  endorm.setup(base_opts)
  local head = { 'Q: What is the capital of France?', 'A:' }
  local alts = { ' The capital of France is banana.', ' The capital of France is Paris.', ' Bananas.' }
  local buf = scratch(vim.list_extend(vim.list_slice(head, 1), alts))
  local direct = score_sync(table.concat(head, '\n') .. '\n', alts)
  local last = run_command('endorm.rerank', '3,5EndormRerank')
  T.ok(not last.err, last.err)
  local want = vim.list_slice(head, 1)
  for _, i in ipairs(direct.order) do
    want[#want + 1] = alts[i + 1]
  end
  T.eq(vim.api.nvim_buf_get_lines(buf, 0, -1, false), want, 'best first')
  T.ok(want[3] ~= alts[1], 'the order changed (the test can fail)')
  vim.cmd('silent undo')
  T.eq(vim.api.nvim_buf_get_lines(buf, 0, -1, false), vim.list_extend(vim.list_slice(head, 1), alts), 'one undo restores')
end)

test(':EndormRerank on blank-line-separated blocks keeps the blocks and the blank lines', function()
  endorm.setup(base_opts)
  local lines = {
    'def add(a, b):',
    '',
    '    x = a',
    '    return "banana"',
    '',
    '    return a + b',
    '',
    'print(add(1, 2))',
  }
  local buf = scratch(lines)
  local direct = score_sync('def add(a, b):\n\n', { '    x = a\n    return "banana"', '    return a + b' })
  local last = run_command('endorm.rerank', '2,7EndormRerank')
  T.ok(not last.err, last.err)
  T.eq(last.mode, 'blocks')
  local blocks = { { '    x = a', '    return "banana"' }, { '    return a + b' } }
  local want = { 'def add(a, b):', '' }
  for k, i in ipairs(direct.order) do
    if k > 1 then
      want[#want + 1] = ''
    end
    vim.list_extend(want, blocks[i + 1])
  end
  vim.list_extend(want, { '', 'print(add(1, 2))' })
  T.eq(vim.api.nvim_buf_get_lines(buf, 0, -1, false), want)
end)

test(':EndormRerank! only shows the scores', function()
  endorm.setup(base_opts)
  local lines = { 'Colours of the rainbow:', 'red orange yellow', 'red banana chair' }
  local buf = scratch(lines)
  local last = run_command('endorm.rerank', '2,3EndormRerank!')
  T.ok(not last.err, last.err)
  T.eq(vim.api.nvim_buf_get_lines(buf, 0, -1, false), lines, 'unchanged')
  T.match(last_note(), 'best first')
end)

test(':EndormRerank errors are messages, not tracebacks', function()
  endorm.setup(base_opts)
  scratch({ 'only one line' })
  local ok = pcall(vim.cmd, '1EndormRerank')
  T.ok(ok, 'no Lua error')
  T.match(last_note(), 'at least two alternatives')
  endorm.setup({ socket = tmp .. '/missing.sock' })
  scratch({ 'ctx', 'a', 'b' })
  local last = run_command('endorm.rerank', '2,3EndormRerank')
  T.match(last.err, 'cannot connect')
  T.match(last_note(), 'endorm serve')
  endorm.setup(base_opts)
end)

-- ---------------------------------------------------------------- :EndormLens
local function lens_marks(buf)
  local ns = require('endorm.lens').ns
  local ms = vim.api.nvim_buf_get_extmarks(buf, ns, 0, -1, { details = true })
  table.sort(ms, function(a, b)
    return a[2] < b[2] or (a[2] == b[2] and a[3] < b[3])
  end)
  return ms
end

-- The extmarks tile the region exactly: first starts at its start, each starts where the last
-- ended, the last ends at its end.
local function assert_tiles(buf, region)
  local ms = lens_marks(buf)
  T.ok(#ms > 0, 'extmarks')
  local r, c = region[1], region[2]
  for _, m in ipairs(ms) do
    T.eq({ m[2], m[3] }, { r, c }, 'contiguous marks')
    T.ok(m[4].hl_group:match('^EndormLens%d$'), 'highlight group ' .. tostring(m[4].hl_group))
    T.ok(vim.fn.hlexists(m[4].hl_group) == 1, 'group defined')
    r, c = m[4].end_row, m[4].end_col
  end
  T.eq({ r, c }, { region[3], region[4] }, 'marks reach the end of the selection')
  return ms
end

test(':EndormLens colours every token of a linewise selection', function()
  endorm.setup(base_opts)
  local buf = scratch({
    'A short story.',
    'The cat sat on the mat, and then the cat sat on the banana telescope.',
    'It was a café in 東京, très agréable.',
    'After the selection.',
  })
  local last = run_command('endorm.lens', '2,3EndormLens')
  T.ok(not last.err, last.err)
  local ms = assert_tiles(buf, { 1, 0, 2, #'It was a café in 東京, très agréable.' })
  T.ok(#ms >= 20, 'one mark per token (' .. #ms .. ')')
  local levels = {}
  for _, m in ipairs(ms) do
    levels[m[4].hl_group] = true
  end
  T.ok(levels.EndormLens1 and levels.EndormLens5, 'lowest and highest levels used')
  -- The direct score agrees with the lens.
  local direct = score_sync('A short story.\n', { table.concat(vim.api.nvim_buf_get_lines(buf, 1, 3, false), '\n') })
  T.ok(math.abs(direct.results[1].score - last.score) < 1e-6, 'same score as a direct request')
  vim.api.nvim_win_set_cursor(0, { 2, 4 })
  local at = require('endorm.lens').at_cursor()
  T.ok(at and at.text:find('cat', 1, true), 'token under the cursor: ' .. vim.inspect(at))
end)

test(':EndormLens on a charwise visual selection covers exactly it; clear and toggle', function()
  endorm.setup(base_opts)
  local buf = scratch({ 'Roses are red, violets are blue,', 'sugar is sweet and so are you.' })
  -- Select from "violets" (line 1) to "sweet" (line 2) in charwise visual mode.
  vim.api.nvim_win_set_cursor(0, { 1, 15 })
  vim.cmd('normal! v')
  vim.api.nvim_win_set_cursor(0, { 2, 13 })
  vim.cmd('normal! \27')
  local last = run_command('endorm.lens', "'<,'>EndormLens")
  T.ok(not last.err, last.err)
  T.eq(last.text, 'violets are blue,\nsugar is sweet')
  assert_tiles(buf, { 0, 15, 1, 14 })
  vim.cmd('EndormLens clear')
  T.eq(#lens_marks(buf), 0, 'clear')
  run_command('endorm.lens', '1EndormLens toggle')
  T.ok(#lens_marks(buf) > 0, 'toggle on')
  vim.cmd('EndormLens toggle')
  T.eq(#lens_marks(buf), 0, 'toggle off')
end)

test('lens: token pieces map onto bytes, partial characters join the next piece', function()
  local s = 'café 日本'
  local toks = {
    { text = 'c', reward = 1 },
    { text = 'af', reward = 1 },
    { text = 'é', reward = 1 },
    { text = ' ', reward = 1 },
    { text = '', reward = -5 },
    { text = '日', reward = 1 },
    { text = '本', reward = 2 },
  }
  local r = text.token_ranges(s, toks, 'reward')
  T.eq(#r, 6)
  T.eq({ r[5].s, r[5].e, r[5].value, r[5].tokens }, { 6, 9, -4, 2 })
  T.eq(r[6].e, #s)
  T.eq(require('endorm.lens').levels({ 3, 1, 2, 2 }, 2), { 2, 1, 1, 1 })
end)

test(':EndormLens with the daemon down is a message', function()
  endorm.setup({ socket = tmp .. '/missing.sock' })
  scratch({ 'some text' })
  local last = run_command('endorm.lens', '1EndormLens')
  T.match(last.err, 'cannot connect')
  endorm.setup(base_opts)
end)

-- ---------------------------------------------------------------- :checkhealth
local function checkhealth_text()
  vim.cmd('silent checkhealth endorm')
  local lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  local s = table.concat(lines, '\n')
  vim.cmd('silent! tabclose!')
  return s
end

test(':checkhealth endorm reports the socket, daemon and model', function()
  endorm.setup(base_opts)
  local s = checkhealth_text()
  T.match(s, sock, 'socket')
  T.match(s, 'status ok', 'daemon')
  T.match(s, 'smollm2-135m-instruct', 'model')
  T.match(s, 'SmolLM2-135M-Instruct.Q4_1.gguf', 'model path')
  T.ok(not s:find('ERROR', 1, true), 'no ERROR in:\n' .. s)
end)

test(':checkhealth endorm reports a missing daemon and an unknown model', function()
  endorm.setup({ socket = tmp .. '/missing.sock' })
  local s = checkhealth_text()
  T.match(s, 'ERROR')
  T.match(s, 'no socket at ' .. tmp .. '/missing.sock')
  endorm.setup(vim.tbl_extend('force', base_opts, { model = 'no-such-model' }))
  s = checkhealth_text()
  T.match(s, 'no-such-model')
  T.match(s, 'ERROR')
  endorm.setup(base_opts)
end)

-- ---------------------------------------------------------------- README examples
-- The fenced block after the line `marker` in the README.
local function readme_block(marker)
  local lines = vim.fn.readfile(root .. '/README.md')
  for i, l in ipairs(lines) do
    if l == marker then
      T.eq(lines[i + 1], '```', 'a fenced block after ' .. marker)
      local out = {}
      for j = i + 2, #lines do
        if lines[j] == '```' then
          return out
        end
        out[#out + 1] = lines[j]
      end
    end
  end
  error('README.md has no line ' .. marker)
end

-- Numbers rounded to 2 decimals: a CPU with other kernels gives slightly other values (README).
local function rounded(s)
  return (s:gsub('%-?%d+%.%d+', function(x)
    return ('%.2f'):format(tonumber(x))
  end))
end

test("README: the :EndormRerank example's result and message are what the command gives", function()
  endorm.setup(base_opts)
  local buf = scratch(readme_block('With SmolLM2-135M, on'))
  local n0 = #notes
  run_command('endorm.rerank', '3,5EndormRerank')
  T.eq(vim.api.nvim_buf_get_lines(buf, 0, -1, false), readme_block('`:3,5EndormRerank` leaves'))
  T.ok(#notes > n0, 'a message')
  T.eq(vim.tbl_map(rounded, vim.split(last_note(), '\n')), vim.tbl_map(rounded, readme_block('and says')))
end)

test("README: the :EndormLens example's lowest and highest tokens are what the lens gives", function()
  endorm.setup(base_opts)
  local buf = scratch({ 'The Eiffel Tower is in Paris.', 'It was built in 1889 for the World Fair, and it is made of cheese.' })
  local last = run_command('endorm.lens', '2EndormLens')
  local line = vim.api.nvim_buf_get_lines(buf, 1, 2, false)[1]
  local ranked = {}
  for _, r in ipairs(last.ranges) do
    ranked[#ranked + 1] = { text = line:sub(r.s + 1, r.e), value = r.value }
  end
  table.sort(ranked, function(a, b)
    return a.value < b.value
  end)
  local readme = table.concat(vim.fn.readfile(root .. '/README.md'), '\n'):gsub('\n', ' ')
  local claim = ('With SmolLM2-135M the red (lowest-reward) tokens are `"%s"` (%.1f), `"%s"` (%.1f), the space before `1889`, `"%s"` and `"%s"`; `"%s"`, `"%s"` and `"%s"` are the most expected.'):format(
    ranked[1].text, ranked[1].value, ranked[2].text, ranked[2].value, ranked[4].text, ranked[5].text,
    ranked[#ranked].text, ranked[#ranked - 1].text, ranked[#ranked - 2].text)
  T.eq(ranked[3].text, ' ', 'the third lowest is the space before 1889')
  T.match(readme, claim)
  require('endorm.lens').clear(buf)
end)

-- ---------------------------------------------------------------- :help endorm
test(':help endorm opens doc/endorm.txt; every |link| in it resolves', function()
  -- helptags writes a tags file beside the doc: work on a copy, not the checkout.
  local rt = tmp .. '/helprt'
  vim.fn.mkdir(rt .. '/doc', 'p')
  local lines = vim.fn.readfile(root .. '/doc/endorm.txt')
  vim.fn.writefile(lines, rt .. '/doc/endorm.txt')
  vim.cmd('helptags ' .. vim.fn.fnameescape(rt .. '/doc'))
  vim.opt.runtimepath:prepend(rt)
  local ok, err = pcall(function()
    vim.cmd('help endorm')
    T.eq(vim.bo.buftype, 'help')
    T.eq(vim.fn.expand('%:t'), 'endorm.txt')
    T.match(vim.api.nvim_get_current_line(), '*endorm*')
    local links = {}
    for _, line in ipairs(lines) do
      for link in line:gmatch('|([^|%s]+)|') do
        links[link] = true
      end
    end
    T.ok(vim.tbl_count(links) >= 10, 'links found')
    for link in pairs(links) do
      local found, e = pcall(vim.cmd, 'help ' .. link)
      T.ok(found, ('|%s| does not resolve: %s'):format(link, tostring(e)))
    end
    for _, tag in ipairs({ ':EndormRerank', ':EndormLens', 'endorm-native', 'endorm.native.wrap()' }) do
      vim.cmd('help ' .. tag)
      T.eq(vim.fn.expand('%:t'), 'endorm.txt', tag)
    end
  end)
  vim.cmd('helpclose')
  vim.opt.runtimepath:remove(rt)
  vim.fn.delete(rt, 'rf')
  if not ok then
    error(err, 0)
  end
end)

-- ---------------------------------------------------------------- the wire
-- Runs last: it checks what every test above made the plugin send and read.
test('wire: every field the plugin sent and read is in docs/openapi.json', function()
  local file = vim.env.ENDORM_OPENAPI
  if not file or file == '' then
    file = repo .. '/docs/openapi.json'
  end
  T.ok(vim.fn.filereadable(file) == 1, file .. ' is missing: it is generated from src/api/ '
    .. '(ENDORM_UPDATE_OPENAPI=1 cargo test --release --lib openapi)')
  if vim.env.ENDORM_TEST_FILTER and vim.env.ENDORM_TEST_FILTER ~= '' and next(wire.sent) == nil then
    return 'skip', 'nothing recorded: it checks what the other tests made the plugin send and read'
  end
  for _, p in ipairs({ 'candidates', 'prompt', 'format', 'aggregate', 'return_tokens' }) do
    T.ok((wire.sent['POST /v1/score'] or {})[p], 'recorded as sent: ' .. p)
  end
  for _, p in ipairs({ 'order', 'results[].index', 'results[].score', 'results[].tokens[].text', 'results[].tokens[].reward' }) do
    T.ok((wire.read['POST /v1/score'] or {})[p], 'recorded as read: ' .. p)
  end
  -- client.lua reads the error body itself (before any test sees it): message, type, code.
  wire.read['GET /error'] = { ['error.message'] = true, ['error.type'] = true, ['error.code'] = true }
  local problems, checked = wire.check(file)
  wire.read['GET /error'] = nil
  T.ok(checked >= 20, ('checked %d paths'):format(checked))
  T.eq(problems, {}, 'fields the schema does not have')
end)

-- ---------------------------------------------------------------- run
local filter = vim.env.ENDORM_TEST_FILTER
local failed, passed, skipped = 0, 0, 0
for _, t in ipairs(tests) do
  if not filter or filter == '' or t.name:find(filter, 1, true) then
    local t0 = uv.hrtime()
    local ok, err, why = xpcall(t.fn, debug.traceback)
    local ms = (uv.hrtime() - t0) / 1e6
    if ok and err == 'skip' then
      skipped = skipped + 1
      log('skip  %6.0f ms  %s (%s)', ms, t.name, why)
    elseif ok then
      passed = passed + 1
      log('ok    %6.0f ms  %s', ms, t.name)
    else
      failed = failed + 1
      log('FAIL  %6.0f ms  %s\n  %s', ms, t.name, tostring(err):gsub('\n', '\n  '))
    end
  end
end
stop_daemon()
log('%d passed, %d failed, %d skipped; daemon exit %s', passed, failed, skipped, tostring(exit_code))
exit(math.min(failed, 100))
