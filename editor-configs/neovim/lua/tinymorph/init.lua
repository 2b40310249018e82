-- tinymorph for Neovim: enable the server, inlay hints, inline completion (0.12) and keys for steering.
--
--   require('tinymorph').setup({
--     cmd = { vim.fn.expand('~/tinymorph/.venv/bin/tinymorph'), 'serve' },  -- where `make demo` installed it
--     init_options = { model = 'default' },                                 -- any key of the README's table
--     keys = true,                                                          -- false: no key mappings
--   })
local M = {}

M.name = 'tinymorph'

local function notify(msg, level)
  vim.notify('tinymorph: ' .. msg, level or vim.log.levels.INFO)
end

local function client_for(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = M.name })[1]
end

-- Run a tinymorph.* command with one object argument; `on_result(result)` gets the server's answer.
function M.command(name, arg, on_result, bufnr)
  local client = client_for(bufnr)
  if not client then
    notify('the server is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  client:request('workspace/executeCommand', { command = name, arguments = { arg or vim.empty_dict() } },
    function(err, result)
      if err then
        notify(name .. ': ' .. (err.message or tostring(err)), vim.log.levels.ERROR)
      elseif on_result then
        on_result(result)
      end
    end, bufnr or 0)
end

local function describe(steering)
  if #steering == 0 then
    return 'no steering'
  end
  local parts = {}
  for _, e in ipairs(steering) do
    local what = e.mode == 'ablate' and 'off' or (e.mode == 'clamp' and ('= ' .. e.value) or
      string.format('%+g', e.strength))
    table.insert(parts, string.format('%d %s (%s)', e.feature, what, e.label ~= '' and e.label or '?'))
  end
  return table.concat(parts, ', ')
end

function M.steer(feature, strength, mode)
  M.command('tinymorph.steer.add', { feature = feature, strength = strength, mode = mode or 'add' }, function(r)
    notify('steering: ' .. describe(r.steering))
  end)
end

function M.clear()
  M.command('tinymorph.steer.clear', nil, function()
    notify('steering cleared')
  end)
end

function M.list()
  M.command('tinymorph.steer.list', nil, function(r)
    notify('steering: ' .. describe(r.steering))
  end)
end

-- Steer toward the strongest feature at the cursor: the first "Amplify" code action there.
function M.steer_here()
  local applied = false
  vim.lsp.buf.code_action({
    apply = true,
    filter = function(action)
      if applied or not action.title:match('^Amplify feature') then
        return false
      end
      applied = true
      return true
    end,
  })
end

function M.search(query)
  local function run(q)
    if not q or q == '' then
      return
    end
    M.command('tinymorph.features.search', { query = q }, function(r)
      if #r.features == 0 then
        notify('no feature matches ' .. q)
        return
      end
      vim.ui.select(r.features, {
        prompt = 'Steer toward feature',
        format_item = function(f)
          return string.format('%d  %s', f.feature, f.label)
        end,
      }, function(choice)
        if choice then
          M.steer(choice.feature, 4)
        end
      end)
    end)
  end
  if query then
    run(query)
  else
    vim.ui.input({ prompt = 'Search features: ' }, run)
  end
end

function M.status()
  M.command('tinymorph.status', nil, function(r)
    local e = r.engine or {}
    notify(string.format('%s · model %s · SAE %s · %s · queue %d', r.state, e.model or '-', e.sae or '-',
      e.device or '-', r.queueDepth or 0))
  end)
end

local function on_attach(client, bufnr, opts)
  if vim.lsp.inlay_hint then
    vim.lsp.inlay_hint.enable(true, { bufnr = bufnr })
  end
  if vim.lsp.inline_completion and client:supports_method('textDocument/inlineCompletion') then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  end
  if opts.keys == false then
    return
  end
  local function map(lhs, rhs, desc)
    vim.keymap.set('n', lhs, rhs, { buffer = bufnr, desc = 'tinymorph: ' .. desc })
  end
  map('<leader>ta', vim.lsp.buf.code_action, 'code actions (accept, amplify, suppress, rewrite)')
  map('<leader>ts', M.steer_here, 'steer toward the feature under the cursor')
  map('<leader>tc', M.clear, 'clear steering')
  map('<leader>tl', M.list, 'list steering')
  map('<leader>tf', function() M.search() end, 'search features')
  map('<leader>ti', M.status, 'status')
  vim.keymap.set('x', '<leader>tr', vim.lsp.buf.code_action, { buffer = bufnr, desc = 'tinymorph: rewrite selection' })
  if vim.lsp.inline_completion then
    vim.keymap.set('i', '<C-l>', function()
      if not vim.lsp.inline_completion.get() then
        return '<C-l>'
      end
    end, { buffer = bufnr, expr = true, desc = 'tinymorph: accept ghost text' })
  end
end

function M.setup(opts)
  opts = opts or {}
  local base = dofile(vim.api.nvim_get_runtime_file('lsp/tinymorph.lua', false)[1])
  local config = vim.tbl_deep_extend('force', base, {
    cmd = opts.cmd,
    init_options = opts.init_options,
    settings = opts.settings and { tinymorph = opts.settings } or nil,
    filetypes = opts.filetypes,
  })
  local exe = config.cmd[1]
  if vim.fn.executable(exe) ~= 1 then
    -- One clear message instead of a failed spawn on every buffer.
    notify(string.format('cannot start the server: %q is not an executable. Run `make demo` in the tinymorph ' ..
      'checkout and pass cmd = { "<checkout>/.venv/bin/tinymorph", "serve" } to setup().', exe), vim.log.levels.ERROR)
    return false
  end
  vim.lsp.config(M.name, config)
  vim.lsp.enable(M.name)
  local group = vim.api.nvim_create_augroup('tinymorph', { clear = true })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == M.name then
        on_attach(client, ev.buf, opts)
      end
    end,
  })
  return true
end

return M
