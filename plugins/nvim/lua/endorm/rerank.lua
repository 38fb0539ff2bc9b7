-- :EndormRerank — order the alternatives in a linewise selection best-first.
-- Alternatives are blank-line-separated blocks when the selection contains a blank line, else
-- one per line (rerank.split = 'auto'|'lines'|'blocks'). The context is the buffer text above
-- the selection. The rewrite is one buffer change (a single `u` undoes it); blank lines before
-- the first and after the last alternative stay where they are. With a bang (:EndormRerank!)
-- nothing is rewritten: the scores are shown instead.
local client = require('endorm.client')
local config = require('endorm.config')
local text = require('endorm.text')

local M = {}

M.runs = 0 -- finished runs (tests wait on this)
M.last = nil -- { err?, alternatives?, order?, scores? } of the last finished run

local function blank(l)
  return l:match('^%s*$') ~= nil
end

--- Split lines into alternatives: a list of lists of lines.
function M.split(lines, mode)
  mode = mode or 'auto'
  local has_blank = false
  for _, l in ipairs(lines) do
    if blank(l) then
      has_blank = true
      break
    end
  end
  local alts = {}
  if mode == 'lines' or (mode == 'auto' and not has_blank) then
    for _, l in ipairs(lines) do
      if not blank(l) then
        alts[#alts + 1] = { l }
      end
    end
    return alts, 'lines'
  end
  local cur = nil
  for _, l in ipairs(lines) do
    if blank(l) then
      cur = nil
    else
      if not cur then
        cur = {}
        alts[#alts + 1] = cur
      end
      cur[#cur + 1] = l
    end
  end
  return alts, 'blocks'
end

local finish = require('endorm.command').finisher(M)

--- Rerank lines line1..line2 (1-based, inclusive) of `buf`.
--- opts: { show_only?: boolean }; done(result) is called when finished.
function M.run(buf, line1, line2, opts, done)
  opts = opts or {}
  buf = (buf == 0 or buf == nil) and vim.api.nvim_get_current_buf() or buf
  local lines = vim.api.nvim_buf_get_lines(buf, line1 - 1, line2, false)
  local first, last = nil, nil
  for i, l in ipairs(lines) do
    if not blank(l) then
      first = first or i
      last = i
    end
  end
  if not first then
    return finish({ err = 'endorm: the selection has no text to rerank' }, done)
  end
  local body = vim.list_slice(lines, first, last)
  local alts, mode = M.split(body, config.get().rerank.split)
  if #alts < 2 then
    return finish({
      err = 'endorm: select at least two alternatives (one per line, or blocks separated by a blank line)',
    }, done)
  end
  local candidates = {}
  for i, a in ipairs(alts) do
    candidates[i] = table.concat(a, '\n')
  end
  local start_row = line1 - 1 + first - 1 -- 0-based first line of the first alternative
  local ctx = text.nonempty_context(text.before(buf, start_row, 0, config.get().context_chars))
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  client.score({ format = 'raw', prompt = ctx, candidates = candidates }, {}, function(err, data)
    if err then
      return finish({ err = err.message }, done)
    end
    local order, scores = {}, {}
    for i, idx in ipairs(data.order or {}) do
      order[i] = idx + 1
    end
    for _, r in ipairs(data.results or {}) do
      scores[r.index + 1] = r.score
    end
    if #order ~= #alts then
      return finish({ err = 'endorm: the daemon answered with an unexpected order' }, done)
    end
    local result = { alternatives = candidates, order = order, scores = scores, model = data.model, mode = mode }
    local summary = {}
    for rank, idx in ipairs(order) do
      local label = candidates[idx]:gsub('\n.*', ' …')
      if #label > 60 then
        label = label:sub(1, 57) .. '...'
      end
      summary[#summary + 1] = ('%d. %9.3f  %s'):format(rank, scores[idx], label)
    end
    local head = ('endorm (%s, %s): '):format(data.model or '?', data.aggregate or config.get().aggregate)
    if opts.show_only then
      vim.notify(head .. 'scores, best first\n' .. table.concat(summary, '\n'), vim.log.levels.INFO, { title = 'endorm' })
      return finish(result, done)
    end
    if not vim.api.nvim_buf_is_valid(buf) or vim.api.nvim_buf_get_changedtick(buf) ~= tick then
      result.err = 'endorm: the buffer changed while scoring; nothing rewritten (run :EndormRerank again)'
      return finish(result, done)
    end
    local out = {}
    for rank, idx in ipairs(order) do
      if rank > 1 and mode == 'blocks' then
        out[#out + 1] = ''
      end
      vim.list_extend(out, alts[idx])
    end
    vim.api.nvim_buf_set_lines(buf, start_row, line1 - 1 + last, false, out)
    vim.notify(head .. 'reranked best first (u undoes)\n' .. table.concat(summary, '\n'), vim.log.levels.INFO, {
      title = 'endorm',
    })
    finish(result, done)
  end)
end

return M
