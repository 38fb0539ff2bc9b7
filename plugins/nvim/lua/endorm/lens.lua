-- :EndormLens — colour each token of a selection by its per-token reward, so you see where the
-- model is surprised. The selection is scored as a raw candidate after the text before it.
-- Colours are quantiles within the selection: EndormLens1 (lowest reward, red) .. EndormLensN.
local client = require('endorm.client')
local config = require('endorm.config')
local text = require('endorm.text')

local M = {}

M.ns = vim.api.nvim_create_namespace('endorm_lens')
M.runs = 0
M.last = nil
M.marks = {} -- buf -> { [extmark id] = { value, text, tokens } }

local palette = {
  { 0x7a, 0x1f, 0x1f }, -- most surprising
  { 0x6e, 0x45, 0x16 },
  { 0x5c, 0x57, 0x1a },
  { 0x2f, 0x4f, 0x2a },
  { 0x1f, 0x3d, 0x2e }, -- least surprising
}
local cterm = { 52, 94, 58, 22, 23 }

--- Define the highlight groups (as defaults: a colour scheme or the user may override them).
function M.define_highlights()
  local n = math.max(1, config.get().lens.levels or 5)
  for i = 1, n do
    local t = n == 1 and 0 or (i - 1) / (n - 1) * (#palette - 1)
    local lo = math.floor(t) + 1
    local hi = math.min(#palette, lo + 1)
    local f = t - (lo - 1)
    local rgb = {}
    for c = 1, 3 do
      rgb[c] = math.floor(palette[lo][c] + (palette[hi][c] - palette[lo][c]) * f + 0.5)
    end
    local ct = cterm[math.min(#cterm, math.floor(t + 0.5) + 1)]
    vim.cmd(('highlight default EndormLens%d guibg=#%02x%02x%02x ctermbg=%d'):format(i, rgb[1], rgb[2], rgb[3], ct))
  end
end

--- Quantile level (1..n) of each value; the lowest values get level 1.
function M.levels(values, n)
  local idx = {}
  for i = 1, #values do
    idx[i] = i
  end
  table.sort(idx, function(a, b)
    return values[a] < values[b]
  end)
  local level, rank_of = {}, {}
  local first_rank = 1
  for r, i in ipairs(idx) do
    if r > 1 and values[i] ~= values[idx[r - 1]] then
      first_rank = r
    end
    rank_of[i] = first_rank - 1
  end
  for i = 1, #values do
    level[i] = math.min(n, math.floor(rank_of[i] * n / #values) + 1)
  end
  return level
end

function M.clear(buf)
  buf = (buf == 0 or buf == nil) and vim.api.nvim_get_current_buf() or buf
  vim.api.nvim_buf_clear_namespace(buf, M.ns, 0, -1)
  M.marks[buf] = nil
end

function M.active(buf)
  buf = (buf == 0 or buf == nil) and vim.api.nvim_get_current_buf() or buf
  return #vim.api.nvim_buf_get_extmarks(buf, M.ns, 0, -1, { limit = 1 }) > 0
end

local finish = require('endorm.command').finisher(M)

--- Score and colour lines line1..line2 (1-based) of `buf`; with `use_visual`, a charwise visual
--- selection on those lines is coloured exactly. done(result) when finished.
function M.run(buf, line1, line2, use_visual, done)
  buf = (buf == 0 or buf == nil) and vim.api.nvim_get_current_buf() or buf
  local region, sel = text.region(buf, line1, line2, use_visual)
  if sel:match('^%s*$') then
    return finish({ err = 'endorm: nothing to score in the selection' }, done)
  end
  local o = config.get()
  local ctx = text.nonempty_context(text.before(buf, region[1], region[2], o.context_chars))
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  client.score({ format = 'raw', prompt = ctx, candidates = { sel }, return_tokens = true }, {}, function(err, data)
    if err then
      return finish({ err = err.message }, done)
    end
    if not vim.api.nvim_buf_is_valid(buf) or vim.api.nvim_buf_get_changedtick(buf) ~= tick then
      return finish({ err = 'endorm: the buffer changed while scoring; run :EndormLens again' }, done)
    end
    local res = (data.results or {})[1] or {}
    local field = o.lens.metric == 'logprob' and 'logprob' or 'reward'
    local ranges = text.token_ranges(sel, res.tokens or {}, field)
    local values = {}
    for i, r in ipairs(ranges) do
      values[i] = r.value
    end
    local n = math.max(1, o.lens.levels or 5)
    local lv = M.levels(values, n)
    local to_pos = text.pos_mapper(sel, region[1], region[2])
    M.clear(buf)
    M.define_highlights()
    local marks = {}
    for i, r in ipairs(ranges) do
      local sr, sc = to_pos(r.s)
      local er, ec = to_pos(r.e)
      local id = vim.api.nvim_buf_set_extmark(buf, M.ns, sr, sc, {
        end_row = er,
        end_col = ec,
        hl_group = 'EndormLens' .. lv[i],
        priority = 150,
      })
      marks[id] = { value = r.value, text = sel:sub(r.s + 1, r.e), level = lv[i] }
    end
    M.marks[buf] = marks
    local result = {
      ranges = ranges,
      levels = lv,
      region = region,
      text = sel,
      score = res.score,
      n_tokens = res.n_tokens,
      model = data.model,
    }
    vim.notify(
      ('endorm lens (%s): %d tokens, %s %.2f; red = lowest %s. :EndormLens clear removes it'):format(
        data.model or '?',
        res.n_tokens or #ranges,
        data.aggregate or 'score',
        res.score or 0,
        field
      ),
      vim.log.levels.INFO,
      { title = 'endorm' }
    )
    finish(result, done)
  end)
end

--- The lens value under the cursor (for a mapping or a statusline), or nil.
function M.at_cursor()
  local buf = vim.api.nvim_get_current_buf()
  local cur = vim.api.nvim_win_get_cursor(0)
  local row, col = cur[1] - 1, cur[2]
  local marks = vim.api.nvim_buf_get_extmarks(buf, M.ns, 0, -1, { details = true })
  for _, m in ipairs(marks) do
    local id, sr, sc, d = m[1], m[2], m[3], m[4]
    local er, ec = d.end_row or sr, d.end_col or sc
    local after_start = row > sr or (row == sr and col >= sc)
    local before_end = row < er or (row == er and col < ec)
    if after_start and before_end then
      return (M.marks[buf] or {})[id]
    end
  end
  return nil
end

return M
