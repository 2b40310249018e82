import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  checkPresetName, contributedKeys, describePreset, presetState, describeSteering, describeWatches, documentSelector,
  exampleItems, initializationOptions, launchOptions, parseFeature, parseThreshold, presetChoices, serverDownMessage, strengthProblem,
  Settings,
} from '../settings';

const packageJson = JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8'));

function settings(values: Record<string, unknown>): Settings {
  return { get: <T>(key: string) => values[key] as T | undefined };
}

test('launch: tinymorph serve by default', () => {
  assert.deepEqual(launchOptions(settings({})), { command: 'tinymorph', args: ['serve'] });
  assert.deepEqual(launchOptions(settings({ 'server.command': [], 'server.pythonPath': '' })),
    { command: 'tinymorph', args: ['serve'] });
});

test('launch: an explicit command wins over the Python path', () => {
  assert.deepEqual(launchOptions(settings({ 'server.command': ['/opt/tm/bin/tinymorph', 'serve', '-v'],
    'server.pythonPath': '/usr/bin/python3' })), { command: '/opt/tm/bin/tinymorph', args: ['serve', '-v'] });
  assert.deepEqual(launchOptions(settings({ 'server.command': ' /opt/tm/bin/tinymorph-serve ' })),
    { command: '/opt/tm/bin/tinymorph-serve', args: [] });
});

test('launch: the Python path runs python -m lsp_server', () => {
  assert.deepEqual(launchOptions(settings({ 'server.pythonPath': '/home/me/tinymorph/.venv/bin/python' })),
    { command: '/home/me/tinymorph/.venv/bin/python', args: ['-m', 'lsp_server'] });
});

test('launch: a malformed command is one clear error', () => {
  const result = launchOptions(settings({ 'server.command': ['tinymorph', 3] }));
  assert.ok('error' in result && result.error.includes('list of non-empty strings'));
});

test('initializationOptions: every server setting the extension contributes, camelCase, none of server.*', () => {
  const keys = contributedKeys(packageJson);
  assert.ok(keys.includes('server.command') && keys.includes('hintGranularity') && keys.includes('debounceMs'));
  const values: Record<string, unknown> = {};
  for (const key of keys) {
    values[key] = packageJson.contributes.configuration.properties[`tinymorph.${key}`].default;
  }
  values.model = '/models/mine';
  values.hintCount = 5;
  const options = initializationOptions(settings(values), keys);
  assert.equal(options.model, '/models/mine');
  assert.equal(options.hintCount, 5);
  assert.deepEqual(options.filetypes, ['markdown', 'plaintext']);
  assert.ok(!('server.command' in options) && !('server.pythonPath' in options));
  assert.deepEqual(Object.keys(options).sort(), keys.filter((k) => !k.startsWith('server.')).sort());
});

test('initializationOptions: unset values are left to the server defaults', () => {
  assert.deepEqual(initializationOptions(settings({ model: 'default' }), ['model', 'sae', 'server.command']),
    { model: 'default' });
});

test('documentSelector: the filetypes setting, for files and untitled buffers', () => {
  assert.deepEqual(documentSelector(settings({})).map((s) => s.language), ['markdown', 'markdown', 'plaintext',
    'plaintext']);
  assert.deepEqual(documentSelector(settings({ filetypes: ['latex'] })),
    [{ scheme: 'file', language: 'latex' }, { scheme: 'untitled', language: 'latex' }]);
  assert.equal(documentSelector(settings({ filetypes: 'markdown' })).length, 4);  // malformed: the default
});

test('describeSteering and parseFeature', () => {
  assert.equal(describeSteering([]), 'no steering');
  assert.equal(describeSteering([{ feature: 12, strength: 4, mode: 'add', label: 'rain' },
    { feature: 3, mode: 'ablate', label: '' }, { feature: 7, value: 2.5, mode: 'clamp', label: 'x' }]),
  '12 +4 (rain), 3 off, 7 = 2.5 (x)');
  assert.equal(parseFeature('42'), 42);
  assert.equal(typeof parseFeature('-1'), 'string');
  assert.equal(typeof parseFeature('1.5'), 'string');
  assert.equal(typeof parseFeature(''), 'string');
  assert.equal(typeof parseFeature(undefined), 'string');
});

test('the server-down message names the command and the fix', () => {
  const message = serverDownMessage({ command: 'tinymorph', args: ['serve'] }, 'could not start: spawn ENOENT');
  assert.match(message, /\(tinymorph serve\) could not start: spawn ENOENT/);
  assert.match(message, /tinymorph\.server\.command/);
});

test('presets: described, their choices name the server commands, names checked as the server does', () => {
  const on = { name: 'storm scenes', strength: 1, enabled: true, excerpt: 'Thunder rolled' };
  assert.equal(describePreset(on), 'on · storm scenes (+1)');
  assert.equal(describePreset({ ...on, enabled: false, error: 'file missing' }),
    'off · storm scenes (+1) · cannot be used: file missing');
  // Beside the name in the picker: no second name; the excerpt, cut at 40 characters.
  assert.equal(presetState(on), 'on (+1) · “Thunder rolled”');
  assert.equal(presetState({ ...on, strength: -2, excerpt: `A ${'very '.repeat(20)}long\nexcerpt` }),
    'on (-2) · “A very very very very very very very ve…”');
  assert.equal(presetState({ ...on, enabled: false, excerpt: ' ', error: 'file missing' }),
    'off (+1) · cannot be used: file missing');
  assert.deepEqual(presetChoices(on).map((c) => [c.label, c.command]), [
    ['Switch off', 'tinymorph.preset.toggle'], ['Rename…', 'tinymorph.preset.rename'],
    ['Remove', 'tinymorph.preset.remove']]);
  assert.deepEqual(presetChoices({ ...on, enabled: false })[0].argument, { name: 'storm scenes', enabled: true });
  assert.equal(checkPresetName('weather'), undefined);
  assert.equal(checkPresetName('  '), 'a name must not be empty');
  assert.equal(checkPresetName('x'.repeat(61)), 'a name has at most 60 characters');
});

test('watches: described, thresholds checked as the server does', () => {
  assert.equal(describeWatches([]), 'nothing watched');
  assert.equal(describeWatches([{ feature: 12, threshold: 2.5, severity: 'warning', message: '', label: 'rain' },
    { feature: 3, threshold: 1, severity: 'hint', message: 'x', label: '' }]), '12 (rain) above 2.5, 3 above 1');
  assert.equal(parseThreshold(''), undefined);
  assert.equal(parseThreshold(' 0.75 '), 0.75);
  for (const bad of ['0', '-1', 'high', 'Infinity', 'NaN', '1e9']) {
    assert.deepEqual(parseThreshold(bad), { error: 'a threshold is a positive number, at most 10000' });
  }
});

test('features by example become quick pick items with their first example', () => {
  const actions = [{ title: 'Watch “rain”', command: 'tinymorph.watch.add', arguments: [{ feature: 4 }] }];
  const items = exampleItems([
    { feature: 4, label: 'rain, storms', examples: ['the« rain» fell', 'x'], watched: false, actions },
    { feature: 9, label: 'sea', examples: [], watched: true, actions: [] }]);
  assert.deepEqual(items.map((i) => [i.label, i.detail]), [['rain, storms', 'the rain fell'], ['sea (watched)', '']]);
  assert.equal(items[0].feature.actions[0].command, 'tinymorph.watch.add');
});

test('strengthProblem: a number between -10 and 10, else the reason in words', () => {
  assert.equal(strengthProblem('1.5'), undefined);
  assert.equal(strengthProblem('-10'), undefined);
  assert.equal(strengthProblem('abc'), 'abc is not a number');
  assert.equal(strengthProblem(''), 'an empty strength is not a number');
  assert.equal(strengthProblem('1e9'), '1e9 is too large: a strength is between -10 and 10');
  assert.equal(strengthProblem('Infinity'), 'Infinity is not a number');
});
