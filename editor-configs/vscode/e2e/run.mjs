// Runs the packaged tinymorph extension inside VS Code for the web (code-server), drives it with headless Chromium
// over the DevTools protocol (playwright-core) and saves a screenshot plus what the page showed after each step.
// See README.md for the prerequisites. Usage: VSIX=/path/tinymorph.vsix node run.mjs
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../../..');
const env = (name, fallback) => process.env[name] || fallback;
const CODE_SERVER = env('CODE_SERVER', 'code-server');
const VSIX = env('VSIX', '');
const PYTHON = env('PYTHON', path.join(repo, '.venv/bin/python'));
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const WORK = path.resolve(env('WORK', '/tmp/tinymorph-e2e'));
const OUT = path.resolve(env('OUT', path.join(here, 'screenshots')));
const PORT = Number(env('PORT', '8765'));
const URL = `http://127.0.0.1:${PORT}`;
if (!VSIX || !fs.existsSync(VSIX)) { throw new Error('set VSIX to the packaged extension (npm run package)'); }

// A fresh profile and a workspace with one Markdown file of five short paragraphs.
fs.rmSync(WORK, { recursive: true, force: true });
const dirs = { data: path.join(WORK, 'data'), exts: path.join(WORK, 'extensions'), ws: path.join(WORK, 'workspace') };
for (const d of [path.join(dirs.data, 'User'), dirs.exts, dirs.ws, OUT]) { fs.mkdirSync(d, { recursive: true }); }
const STORY = [
  'The dough had risen overnight under a damp cloth. She floured the bench, folded it twice, and slid the loaf into '
  + 'the hot oven until the crust turned brown and the kitchen smelled of bread.',
  'The storm hit the ship after midnight. Waves broke over the bow, the captain shouted orders into the wind, and the '
  + 'sailors held the ropes while the sea tore at the sails.',
  "White opened with the king's pawn. By the twentieth move the bishops had traded, the rook was trapped on the back "
  + 'rank, and the old champion offered a draw across the chessboard.',
  "At three in the morning the hospital ward was quiet. The nurse checked the monitors, changed a patient's drip, and "
  + 'the young doctor slept for ten minutes in a chair by the door.',
  'In April the garden woke up. Tulips opened along the fence, the roses put out new leaves, and she knelt in the soil '
  + 'to plant tomatoes and beans in straight rows.',
];
fs.writeFileSync(path.join(dirs.ws, 'story.md'), STORY.join('\n\n') + '\n');
fs.writeFileSync(path.join(dirs.data, 'User', 'settings.json'), JSON.stringify({
  'tinymorph.server.pythonPath': PYTHON,
  'workbench.startupEditor': 'none',
  'workbench.tips.enabled': false,
  'workbench.welcomePage.walkthroughs.openOnInstall': false,
  'extensions.ignoreRecommendations': true,
  'telemetry.telemetryLevel': 'off',
  'security.workspace.trust.enabled': false,
  'editor.minimap.enabled': false,
  'editor.wordWrap': 'on',
  'editor.inlineSuggest.enabled': true,
  'chat.commandCenter.enabled': false,
  'update.mode': 'none',
  'extensions.autoCheckUpdates': false,
  'extensions.autoUpdate': false,
}, null, 2));

// code-server keeps logs under XDG_DATA_HOME; keep those in WORK too
const childEnv = { ...process.env, XDG_DATA_HOME: path.join(WORK, 'xdg-data'), XDG_CONFIG_HOME: path.join(WORK, 'xdg-config') };
const common = ['--config', '/dev/null', '--user-data-dir', dirs.data, '--extensions-dir', dirs.exts];
const install = spawnSync(CODE_SERVER, [...common, '--install-extension', VSIX], { encoding: 'utf8', env: childEnv });
if (install.status !== 0) { throw new Error(`--install-extension failed: ${install.stdout}${install.stderr}`); }
const server = spawn(CODE_SERVER, [...common, '--bind-addr', `127.0.0.1:${PORT}`, '--auth', 'none',
  '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust', '--disable-getting-started-override'],
{ env: childEnv, detached: true, stdio: ['ignore', fs.openSync(path.join(WORK, 'code-server.log'), 'w'), 'inherit'] });
for (let i = 0; ; i++) {
  try { if ((await fetch(URL)).ok) { break; } } catch { /* not listening yet */ }
  if (i > 60) { throw new Error(`code-server did not answer on ${URL}`); }
  await new Promise((r) => setTimeout(r, 500));
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const observed = [];
let shot = 0;

/** Runs one step, then saves NN-name.png and what it returned. A failed step is recorded and the run goes on. */
async function step(name, fn, { essential = false } = {}) {
  const started = Date.now();
  let result;
  try { result = { ok: true, ...(await fn()) }; } catch (err) { result = { ok: false, error: String(err).slice(0, 500) }; }
  const file = `${String(++shot).padStart(2, '0')}-${name}.png`;
  await page.screenshot({ path: path.join(OUT, file) });
  observed.push({ step: name, screenshot: file, seconds: (Date.now() - started) / 1000, ...result });
  console.log(result.ok ? 'ok  ' : 'FAIL', name, result.ok ? '' : result.error);
  if (essential && !result.ok) { throw new Error(`${name} failed: the other steps need it`); }
}

const texts = (selector) => page.$$eval(selector, (els) => els.map((e) => e.innerText.trim()).filter(Boolean));
const lines = () => page.$$eval('.monaco-editor .view-lines .view-line', (els) => els
  .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top)).map((e) => e.innerText.replace(/\s/g, ' ')));
const toasts = () => texts('.notifications-toasts .notification-toast');
const waitFor = (fn, arg, timeout = 60000) => page.waitForFunction(fn, arg, { timeout, polling: 250 });
const waitText = (selector, pattern, timeout) => waitFor(([s, p]) => [...document.querySelectorAll(s)]
  .some((e) => new RegExp(p).test(e.innerText)), [selector, pattern], timeout);
const waitToast = (pattern, timeout = 30000) => waitText('.notifications-toasts .notification-toast', pattern, timeout);
const quickInput = '.quick-input-widget';
const quickPick = () => page.$$eval(`${quickInput} .monaco-list-row`,
  (rows) => rows.map((r) => r.getAttribute('aria-label') || r.innerText.trim()));

async function clearToasts() {
  await palette('Notifications: Clear All Notifications');
  await page.waitForTimeout(300);
}

async function palette(title) {
  await page.keyboard.press('F1');
  await page.waitForSelector(`${quickInput} input`, { state: 'visible' });
  await page.keyboard.type(title);
  await waitText(`${quickInput} .monaco-list-row`, title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 10000);
  await page.keyboard.press('Enter');
  // the palette is gone (or replaced by the command's own input) once its input no longer holds the command
  await waitFor(() => {
    const widget = document.querySelector('.quick-input-widget');
    return !widget || widget.style.display === 'none' || !widget.querySelector('input').value.startsWith('>');
  }, null, 10000);
}

/** Types into the input box or quick pick that a command opened, once its prompt or placeholder shows. */
async function answer(promptPattern, text) {
  await waitFor((p) => {
    const widget = document.querySelector('.quick-input-widget');
    const input = widget?.querySelector('input');
    if (!widget || widget.style.display === 'none' || !input || input.value.startsWith('>')) { return false; }
    const shown = [widget.querySelector('.quick-input-message')?.innerText, input.placeholder,
      widget.querySelector('.quick-input-title')?.innerText].join(' ');
    return new RegExp(p).test(shown);
  }, promptPattern, 30000);
  if (text) { await page.keyboard.type(text); }
  await page.keyboard.press('Enter');
}

/** Puts the cursor at line:column (1-based) through Go to Line. */
async function goTo(line, column) {
  await page.keyboard.press('Control+g');
  await page.waitForSelector(`${quickInput} input`, { state: 'visible' });
  await page.keyboard.type(`${line}:${column}`);
  await page.keyboard.press('Enter');
  await page.waitForTimeout(300);
}

/** The screen box of the first occurrence of a word in the editor. */
const wordBox = (word) => page.evaluate((w) => {
  for (const line of document.querySelectorAll('.monaco-editor .view-lines .view-line')) {
    const walker = document.createTreeWalker(line, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const at = node.textContent.search(new RegExp(`\\b${w}\\b`));
      if (at >= 0) {
        const range = document.createRange();
        range.setStart(node, at);
        range.setEnd(node, at + w.length);
        const r = range.getBoundingClientRect();
        return { x: r.x + r.width / 2, y: r.y + r.height / 2 };
      }
    }
  }
  return null;
}, word);

try {
  await step('open', async () => {
    await page.goto(`${URL}/?folder=${encodeURIComponent(dirs.ws)}`);
    await page.waitForSelector('.monaco-workbench', { timeout: 120000 });
    await page.waitForSelector('.explorer-item', { timeout: 60000 });
    await page.click('.explorer-item >> text=story.md');
    await page.waitForSelector('.monaco-editor .view-lines', { timeout: 30000 });
    return {};
  }, { essential: true });

  await step('inlay-hints', async () => {
    await waitFor(() => [...document.querySelectorAll('.monaco-editor .view-line')]
      .filter((l) => /⟨[^⟩]+⟩/.test(l.innerText)).length >= 5, null, 180000);
    return { hints: (await lines()).flatMap((l) => l.match(/⟨[^⟩]+⟩/g) ?? []) };
  }, { essential: true });

  await step('hover', async () => {
    const box = await wordBox('captain');
    await page.mouse.move(box.x, box.y);
    await waitText('.monaco-hover', 'tinymorph', 30000);
    return { hover: await texts('.monaco-hover:not(.hidden) .hover-contents') };
  });

  await step('code-actions', async () => {
    await page.mouse.move(5, 400);
    const box = await wordBox('storm');
    await page.mouse.click(box.x, box.y);
    await page.keyboard.press('Control+.');
    await waitText('.action-widget .monaco-list-row', 'Amplify', 30000);
    return { actions: await texts('.action-widget .monaco-list-row') };
  });

  await step('amplify', async () => {
    const focused = () => texts('.action-widget .monaco-list-row.focused').then((t) => t[0] ?? '');
    let title = await focused();
    for (let i = 0; i < 20 && !title.startsWith('Amplify'); i++) {
      await page.keyboard.press('ArrowDown');
      title = await focused();
    }
    await page.keyboard.press('Enter');
    await waitToast('Amplifying');
    return { chose: title, notifications: await toasts() };
  });

  await step('ghost-text', async () => {
    await clearToasts();
    await goTo(9, 10000); // the end of the garden paragraph
    await page.keyboard.type(' The', { delay: 120 });
    await page.waitForSelector('.monaco-editor .ghost-text, .monaco-editor .ghost-text-decoration', { timeout: 60000 });
    await page.waitForTimeout(500);
    return { ghost: await texts('.monaco-editor .ghost-text, .monaco-editor .ghost-text-decoration') };
  });

  await step('ghost-text-accepted', async () => {
    const paragraphEnd = async () => (await lines()).join('').match(/straight rows\..*/)?.[0];
    const before = await paragraphEnd();
    await page.keyboard.press('Tab');
    await page.waitForTimeout(800);
    return { before, after: await paragraphEnd() };
  });

  await step('more-like-this', async () => {
    await goTo(3, 1);
    await page.keyboard.press('Shift+End'); // one wrapped row; then the rest of the paragraph
    await page.keyboard.press('Shift+End');
    await palette('tinymorph: Write more like the selection');
    await answer('Name of the preset', 'stormy');
    await waitToast('lean toward', 60000);
    return { notifications: await toasts() };
  });

  await step('presets', async () => {
    await clearToasts();
    await palette('tinymorph: Style presets');
    await waitText(`${quickInput} .monaco-list-row`, 'stormy', 30000);
    return { picks: await quickPick() };
  });

  await step('preset-actions', async () => {
    await page.keyboard.press('Enter');
    await page.waitForTimeout(500);
    return { picks: await quickPick() };
  });

  let feature;
  await step('search-features', async () => {
    await page.keyboard.press('Escape'); // leave the preset as it is
    await palette('tinymorph: Search features');
    await answer('Search features', 'sea');
    await waitText(`${quickInput} .monaco-list-row`, '\\d', 30000);
    const picks = await quickPick();
    feature = picks[0].match(/\d+/)[0];
    return { picks: picks.slice(0, 8) };
  });

  await step('watch', async () => {
    await page.keyboard.press('Escape'); // look only, no steering
    await palette('tinymorph: Watch a feature');
    await answer('Feature to watch|whole number', feature);
    await answer('Threshold', '');
    await waitToast('watching', 30000);
    return { feature, notifications: await toasts() };
  });

  await step('watches', async () => {
    await clearToasts();
    await palette('tinymorph: Watched features');
    await waitText(`${quickInput} .monaco-list-row`, feature, 30000);
    await page.waitForTimeout(2000); // the watch flags the document: diagnostics in the Problems count
    return { picks: await quickPick(), statusBar: await texts('#status\\.problems') };
  });

  await step('list-steering', async () => {
    await page.keyboard.press('Escape'); // keep watching
    await palette('tinymorph: List steering');
    await waitToast('tinymorph steering', 30000);
    return { notifications: await toasts() };
  });

  await step('status', async () => {
    await clearToasts();
    await palette('tinymorph: Status');
    await waitToast('tinymorph: ', 30000);
    return { notifications: await toasts() };
  });

  await step('feature-map', async () => {
    await clearToasts();
    await palette('tinymorph: Feature map of this document');
    await waitText('.tab', 'Feature map', 60000);
    await page.waitForTimeout(4000); // the webview renders the page
    const frames = page.frames().filter((f) => f !== page.mainFrame() && !f.url().includes('ExtensionHost'));
    const bodies = await Promise.all(frames.map((f) => f.evaluate(() => document.body?.innerText ?? '').catch(() => '')));
    return { tabs: await texts('.tab'), webview: bodies.filter((b) => b.trim()).map((b) => b.slice(0, 600)) };
  });
} finally {
  fs.writeFileSync(path.join(OUT, 'observed.json'), JSON.stringify(observed, null, 2) + '\n');
  await browser.close();
  process.kill(-server.pid); // code-server's process group: its extension host and the language server with it
}
const failed = observed.filter((o) => !o.ok).length;
console.log(`${observed.length - failed}/${observed.length} steps ok; screenshots and observed.json in ${OUT}`);
process.exitCode = failed ? 1 : 0;
