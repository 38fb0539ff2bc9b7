-- The completion sorter's core, shared by the nvim-cmp and blink.cmp adapters.
--
-- Comparators are synchronous, scoring is not. So: a comparator asks `compare(prefix, a, b)`;
-- cached scores decide at once; a missing score queues the item text, and one request per
-- prefix goes out on the next main-loop tick. Scores that arrive within `budget_ms` are cached
-- and `on_ready()` is called so the adapter can refresh its menu (which sorts again, now with
-- scores). Later answers are dropped: the original order stands.
local client = require('endorm.client')
local config = require('endorm.config')
local text = require('endorm.text')

local M = {}

M.cache = {} -- prefix -> { [item text] = score }
M.cache_count = 0
M.stats = { requests = 0, scored = 0, late = 0, errors = 0 }
M.last_error = nil
M.gave_up = {} -- prefix -> true once its scores were late or failed: its order stands

local pending = {} -- prefix -> { texts = {..}, seen = {..}, on_ready = fn }
local flush_scheduled = false
local inflight = {} -- prefix -> true

function M.clear()
  M.cache, M.cache_count = {}, 0
  pending, inflight, M.gave_up = {}, {}, {}
end

local warned = {}
local function warn_once(msg)
  if warned[msg] then
    return
  end
  warned[msg] = true
  vim.notify(msg .. ' (completion keeps its own order)', vim.log.levels.WARN, { title = 'endorm' })
end

local function store(prefix, texts, results)
  local o = config.get().completion
  if M.cache_count + #texts > o.cache_size then
    M.cache, M.cache_count = {}, 0
  end
  local bucket = M.cache[prefix]
  if not bucket then
    bucket = {}
    M.cache[prefix] = bucket
  end
  for _, r in ipairs(results) do
    local t = texts[(r.index or 0) + 1]
    if t ~= nil and type(r.score) == 'number' then
      bucket[t] = r.score
      M.cache_count = M.cache_count + 1
    end
  end
end

--- Score `texts` after `prefix` now (used by the flush, and directly by tests).
--- cb(err, scores_by_text) runs on the main loop; `late` errors mean the budget ran out.
function M.request(prefix, texts, on_done)
  local o = config.get().completion
  local budget = o.budget_ms or 0
  if budget <= 0 or #texts == 0 then
    return
  end
  local uv = require('endorm.http').uv
  local ctx, ws = text.split_trailing_space(prefix)
  ctx = text.nonempty_context(ctx)
  local cands = {}
  for i, t in ipairs(texts) do
    cands[i] = ws .. t
  end
  inflight[prefix] = true
  M.stats.requests = M.stats.requests + 1
  uv.update_time()
  local started = uv.now()
  -- The request is cut off at the budget (plus nothing: a late answer is useless).
  client.score({
    format = 'raw',
    prompt = ctx,
    candidates = cands,
    aggregate = o.aggregate,
  }, { timeout_ms = budget }, function(err, data)
    inflight[prefix] = nil
    uv.update_time()
    local elapsed = uv.now() - started
    if err then
      M.gave_up[prefix] = true
      if err.kind == 'timeout' or elapsed > budget then
        M.stats.late = M.stats.late + 1
      else
        M.stats.errors = M.stats.errors + 1
        M.last_error = err.message
        warn_once(err.message)
      end
      if on_done then
        on_done(err)
      end
      return
    end
    if elapsed > budget then
      M.gave_up[prefix] = true
      M.stats.late = M.stats.late + 1
      if on_done then
        on_done({ kind = 'timeout', message = 'scores arrived after the budget' })
      end
      return
    end
    store(prefix, texts, data.results or {})
    M.stats.scored = M.stats.scored + #texts
    if on_done then
      on_done(nil, M.cache[prefix])
    end
  end)
end

local function flush()
  flush_scheduled = false
  local batch = pending
  pending = {}
  for prefix, p in pairs(batch) do
    M.request(prefix, p.texts, function(err)
      if not err and p.on_ready then
        p.on_ready(prefix)
      end
    end)
  end
end

--- Queue `t` for scoring after `prefix` (deduplicated, bounded by completion.max_items).
function M.want(prefix, t, on_ready)
  local o = config.get().completion
  if (o.budget_ms or 0) <= 0 or inflight[prefix] or M.gave_up[prefix] then
    return
  end
  local p = pending[prefix]
  if not p then
    -- Only the newest prefix matters: the user has typed on.
    pending = {}
    p = { texts = {}, seen = {}, on_ready = on_ready }
    pending[prefix] = p
  end
  if p.seen[t] or #p.texts >= o.max_items then
    return
  end
  p.seen[t] = true
  p.texts[#p.texts + 1] = t
  if not flush_scheduled then
    flush_scheduled = true
    vim.schedule(flush)
  end
end

function M.score_of(prefix, t)
  local b = M.cache[prefix]
  return b and b[t]
end

--- Comparator core: true/false when both texts have scores that differ, nil otherwise.
--- A scored item sorts before an unscored one, which keeps the order consistent when only
--- some items have scores.
function M.compare(prefix, a, b, on_ready)
  local sa, sb = M.score_of(prefix, a), M.score_of(prefix, b)
  if sa == nil then
    M.want(prefix, a, on_ready)
  end
  if sb == nil then
    M.want(prefix, b, on_ready)
  end
  if sa ~= nil and sb ~= nil then
    if sa == sb then
      return nil
    end
    return sa > sb
  end
  if sa ~= nil then
    return true
  end
  if sb ~= nil then
    return false
  end
  return nil
end

--- Context for completion at the cursor of `buf`: the text before the word being completed
--- (the keyword before the cursor is not part of it), bounded by completion.context_chars.
--- Memoized per (buffer, changedtick, cursor) because comparators run many times per sort.
local memo = { key = nil, value = nil }
function M.prefix_at(buf, row, col, line_before)
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  local key = table.concat({ buf, tick, row, col, line_before or '' }, ':')
  if memo.key == key then
    return memo.value
  end
  line_before = line_before or (vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ''):sub(1, col)
  local kw_start = vim.fn.match(line_before, [[\k*$]])
  if kw_start < 0 then
    kw_start = #line_before
  end
  local n = config.get().completion.context_chars
  local value = text.before(buf, row, kw_start, n)
  memo.key, memo.value = key, value
  return value
end

return M
