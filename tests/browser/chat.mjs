// Two users in headless Chromium walk the demo web client served by the gateway:
// register, search and add a friend, accept (push), chat both ways in real time, send an image,
// record a voice message (Chromium's fake microphone plays --voice, a WAV) and see its transcript
// on both sides, reload and see history, catch up on a message missed while the socket was down
// (after_seq), log out. The signed-out page shows the sign-in form only. Screenshots go to --shots.
//
//   node chat.mjs --url http://127.0.0.1:8080 --shots ../../target/browser-shots --voice goforward.wav
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import zlib from 'node:zlib';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const url = args.url || 'http://127.0.0.1:8080';
const shots = args.shots || 'browser-shots';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 15000;
mkdirSync(shots, { recursive: true });

// A 120x80 gradient PNG, made here so the test needs no fixture file.
function gradientPng(width, height) {
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3);
    for (let x = 0; x < width; x++) row.set([43 + x, 122 + y, 200 - x], 1 + x * 3);
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk('IHDR', header),
    chunk('IDAT', zlib.deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
const PNG = gradientPng(120, 80);

function step(name) {
  console.log(`- ${name}`);
}

async function visible(page, selector, text) {
  const loc = text === undefined ? page.locator(selector) : page.locator(selector, { hasText: text });
  await loc.first().waitFor({ state: 'visible', timeout: TIMEOUT });
  return loc.first();
}

async function signUp(page, nickname) {
  await page.goto(url);
  await page.fill('#nickname', nickname);
  await page.fill('#password', 'password1');
  await page.click('#register');
  await visible(page, '#app');
  await visible(page, '#conn', 'online');
  const me = await page.textContent('#me');
  if (me !== nickname) throw new Error(`header shows ${me}, want ${nickname}`);
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
  await visible(page, '#messages li.mine', text);
}

const voiceArgs = args.voice
  ? ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${args.voice}%noloop`]
  : [];
const browser = await chromium.launch({ executablePath, args: ['--no-sandbox', ...voiceArgs] });
try {
  const suffix = Date.now().toString(36).slice(-5);
  const [alice, bob] = [`alice_${suffix}`, `bob_${suffix}`];
  const a = await (await browser.newContext({ viewport: { width: 1100, height: 700 } })).newPage();
  const bContext = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  let b = await bContext.newPage();
  for (const p of [a, b]) p.on('pageerror', (e) => { throw e; });

  step('signed out, the page shows only the sign-in form');
  await a.goto(url);
  await visible(a, '#auth-form');
  for (const hidden of ['#app', '#search', '#sessions', '#logout']) {
    if (await a.locator(hidden).isVisible()) throw new Error(`${hidden} is visible while signed out`);
  }

  step('both register and are online');
  await signUp(a, alice);
  await signUp(b, bob);

  step('alice finds bob and asks to be friends');
  await a.fill('#search', bob);
  await a.click('#search-form button');
  await (await visible(a, '#search-results li', bob)).locator('button').click();
  await visible(a, '#status', `request sent to ${bob}`);

  step('bob sees the request arrive (push) and accepts');
  const request = await visible(b, '#requests li', alice);
  await b.screenshot({ path: join(shots, 'friend-request.png') });
  await request.locator('button', { hasText: 'Accept' }).click();

  step('both see the new chat session (push)');
  await visible(b, '#sessions li', alice);
  await visible(a, '#sessions li', bob);

  step('alice writes; bob sees an unread badge, opens the chat and reads it');
  await a.click(`#sessions li:has-text("${bob}")`);
  await send(a, 'hello bob');
  await visible(b, '#sessions li .badge', '1');
  await b.click(`#sessions li:has-text("${alice}")`);
  await visible(b, '#messages li', 'hello bob');

  step('bob answers; alice sees it in real time');
  await send(b, 'hi alice 你好');
  await visible(a, '#messages li:not(.mine)', 'hi alice 你好');

  step('alice sends an image; bob sees it');
  await a.setInputFiles('#image', { name: 'gradient.png', mimeType: 'image/png', buffer: PNG });
  await visible(b, '#messages li img[src^="data:image/png;base64,"]');

  if (args.voice) {
    step('alice records a voice message; both see its transcript (语音转文字)');
    await a.click('#record');
    await visible(a, '#record', 'Stop');
    await a.waitForTimeout(5500);
    await a.click('#record');
    await visible(a, '#messages li.mine .transcript', 'go forward');
    const voice = await visible(b, '#messages li:not(.mine)', 'Transcribe');
    await voice.locator('audio').waitFor({ state: 'attached', timeout: TIMEOUT });
    await voice.locator('button', { hasText: 'Transcribe' }).click();
    await visible(b, '#messages li:not(.mine) .transcript', 'go forward');
    await b.screenshot({ path: join(shots, 'voice-bob.png') });
  }

  step('bob reloads: still signed in, history is back');
  await b.reload();
  await visible(b, '#conn', 'online');
  await b.click(`#sessions li:has-text("${alice}")`);
  await visible(b, '#messages li', 'hello bob');
  await visible(b, '#messages li.mine', 'hi alice 你好');
  await visible(b, '#messages li img');

  step("bob's socket drops; alice writes; bob reconnects and catches up (after_seq)");
  await b.evaluate(() => {
    state.ws.onclose = null;
    state.ws.close();
    connected(false);
  });
  await visible(b, '#conn', 'offline');
  await send(a, 'did you get this?');
  await b.evaluate(() => connect());
  await visible(b, '#conn', 'online');
  await visible(b, '#messages li', 'did you get this?');
  await a.screenshot({ path: join(shots, 'chat-alice.png') });
  await b.screenshot({ path: join(shots, 'chat-bob.png') });

  step('bob logs out: back to the sign-in form, and only that');
  await b.click('#logout');
  await visible(b, '#auth');
  if (await b.locator('#app').isVisible()) throw new Error('the chat panels stay visible after logout');
  console.log(`ok: screenshots in ${shots}`);
} finally {
  await browser.close();
}
