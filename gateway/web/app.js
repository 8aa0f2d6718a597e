// IM demo client: HTTP API for calls (POST /service/..., JSON), one WebSocket for pushes.
// Plain browser JavaScript, no build step. User data is only ever set as textContent.
'use strict';

const $ = (id) => document.getElementById(id);
const store = window.localStorage;

const state = {
  token: store.getItem('token'),
  userId: store.getItem('user_id'),
  nickname: store.getItem('nickname'),
  deviceId: store.getItem('device_id') || newId('web'),
  sessions: new Map(), // chat_session_id -> ChatSessionInfo
  current: null, // open chat_session_id
  lastSeq: new Map(), // chat_session_id -> highest seq shown
  files: new Map(), // file_id -> data URL
  recording: null, // { ctx, stream, node, chunks, rate, timer } while recording a voice message
  ws: null,
  backoff: 500,
};
store.setItem('device_id', state.deviceId);

function newId(prefix) {
  const rnd = window.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`.replace('.', '');
  return `${prefix}-${rnd}`;
}

function say(text) {
  $('status').textContent = text;
}

async function api(path, body) {
  const headers = { 'content-type': 'application/json' };
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  const rsp = await fetch(`/service/${path}`, { method: 'POST', headers, body: JSON.stringify(body || {}) });
  const json = await rsp.json().catch(() => ({}));
  if (!rsp.ok) {
    if (rsp.status === 401 && state.token && !path.startsWith('user/username_')) signedOut('your session ended; log in again');
    throw new Error(json.message || `HTTP ${rsp.status}`);
  }
  return json;
}

function item(text, ...buttons) {
  const li = document.createElement('li');
  const span = document.createElement('span');
  span.textContent = text;
  li.append(span, ...buttons);
  return li;
}

function button(label, onClick, secondary) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  if (secondary) b.className = 'secondary';
  b.addEventListener('click', () => onClick().catch((e) => say(e.message)));
  return b;
}

// ---- sign in / out ----

async function login(nickname, password) {
  const rsp = await api('user/username_login', { nickname, password, device_id: state.deviceId, platform: 'web' });
  Object.assign(state, { token: rsp.token, userId: rsp.user_id, nickname });
  store.setItem('token', rsp.token);
  store.setItem('user_id', rsp.user_id);
  store.setItem('nickname', nickname);
  await start();
}

function signedOut(reason) {
  for (const k of ['token', 'user_id', 'nickname']) store.removeItem(k);
  Object.assign(state, { token: null, userId: null, current: null });
  state.sessions.clear();
  state.lastSeq.clear();
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close();
    state.ws = null;
  }
  connected(false);
  $('app').hidden = true;
  $('logout').hidden = true;
  $('auth').hidden = false;
  $('me').textContent = '';
  say(reason || '');
}

async function start() {
  $('auth').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  $('me').textContent = state.nickname;
  say('');
  await Promise.all([loadRequests(), loadSessions()]);
  connect();
}

// ---- push ----

function connected(on) {
  $('conn').textContent = on ? 'online' : 'offline';
  $('conn').className = on ? 'conn on' : 'conn off';
}

async function connect() {
  if (!state.token) return;
  const { push_url } = await (await fetch('/config.json')).json();
  const q = new URLSearchParams({ token: state.token, encoding: 'json', device_id: state.deviceId, platform: 'web' });
  const ws = new WebSocket(`${push_url}?${q}`);
  state.ws = ws;
  ws.onopen = () => {
    state.backoff = 500;
    connected(true);
    catchUp().catch((e) => say(e.message));
  };
  ws.onmessage = (ev) => {
    const frame = JSON.parse(ev.data);
    if (frame.push) onPush(frame.push);
  };
  ws.onclose = (ev) => {
    connected(false);
    if (state.ws !== ws) return;
    if (ev.code === 4001 || ev.code === 4002) return signedOut(ev.code === 4002 ? 'signed in elsewhere' : 'your session ended; log in again');
    // A draining gateway says when to come back (jittered per session): no reconnect storm.
    const hint = /reconnect_after_ms=(\d+)/.exec(ev.reason || '');
    if (hint) return setTimeout(connect, Number(hint[1]));
    setTimeout(connect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 10000);
  };
}

function onPush(p) {
  switch (p.kind) {
    case 'friend_add_apply_notify':
      say(`friend request from ${p.payload.applicant.nickname}`);
      return loadRequests();
    case 'friend_add_process_notify':
      say(`${p.payload.respondent.nickname} ${p.payload.agree ? 'accepted' : 'declined'} your request`);
      return loadSessions();
    case 'friend_remove_notify':
      return loadSessions();
    case 'chat_session_create_notify':
      upsertSession(p.payload.chat_session_info);
      return renderSessions();
    case 'chat_message_notify':
      return onMessage(p.payload.message_info);
    default:
      return undefined;
  }
}

// Messages missed while the socket was down: the session list (unread counts) and, for the open
// chat, everything after the last seq shown.
async function catchUp() {
  await loadSessions();
  const id = state.current;
  if (!id) return;
  const rsp = await api('message_storage/get_history', { chat_session_id: id, after_seq: String(state.lastSeq.get(id) || 0) });
  rsp.msg_list.forEach(onMessage);
}

// ---- friends ----

async function loadRequests() {
  const rsp = await api('friend/get_pending_friend_events');
  $('requests').replaceChildren(
    ...rsp.event.map((ev) =>
      item(
        ev.sender.nickname,
        button('Accept', () => answer(ev, true)),
        button('Decline', () => answer(ev, false), true),
      ),
    ),
  );
}

async function answer(ev, agree) {
  await api('friend/add_friend_process', { notify_event_id: ev.event_id, agree, apply_user_id: ev.sender.user_id });
  await Promise.all([loadRequests(), loadSessions()]);
}

async function search(key) {
  const rsp = await api('friend/search_friend', { search_key: key });
  $('search-results').replaceChildren(
    ...rsp.user_info.map((u) =>
      item(
        u.nickname,
        button('Add', async () => {
          await api('friend/add_friend_apply', { respondent_id: u.user_id });
          say(`request sent to ${u.nickname}`);
        }),
      ),
    ),
  );
}

async function newGroup() {
  const friends = (await api('friend/get_friend_list')).friend_list;
  if (friends.length < 2) throw new Error('a group needs at least two friends');
  const rsp = await api('friend/create_chat_session', {
    chat_session_name: `${state.nickname}'s group`,
    member_id_list: friends.map((f) => f.user_id),
  });
  upsertSession(rsp.chat_session_info);
  renderSessions();
}

// ---- chat sessions ----

function upsertSession(info) {
  state.sessions.set(info.chat_session_id, info);
}

async function loadSessions() {
  const rsp = await api('friend/get_chat_session_list');
  state.sessions.clear();
  rsp.chat_session_list.forEach(upsertSession);
  renderSessions();
}

function renderSessions() {
  const items = [...state.sessions.values()].map((s) => {
    const li = item(s.chat_session_name);
    li.dataset.session = s.chat_session_id;
    const unread = Number(s.unread);
    if (unread > 0 && s.chat_session_id !== state.current) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = String(unread);
      li.append(badge);
    }
    if (s.chat_session_id === state.current) li.className = 'active';
    li.addEventListener('click', () => openSession(s.chat_session_id).catch((e) => say(e.message)));
    return li;
  });
  $('sessions').replaceChildren(...items);
}

async function openSession(id) {
  state.current = id;
  const s = state.sessions.get(id);
  $('chat-title').textContent = s ? s.chat_session_name : 'Chat';
  $('messages').replaceChildren();
  $('send-form').hidden = false;
  state.lastSeq.set(id, 0);
  const rsp = await api('message_storage/get_recent', { chat_session_id: id, msg_count: 50 });
  rsp.msg_list.forEach(onMessage);
  if (s) s.unread = '0';
  renderSessions();
}

function onMessage(m) {
  const id = m.chat_session_id;
  const seq = Number(m.seq);
  if (id !== state.current) {
    const s = state.sessions.get(id);
    if (s) {
      s.unread = String(Number(s.unread) + 1);
      s.last_seq = m.seq;
      renderSessions();
    } else {
      loadSessions().catch((e) => say(e.message));
    }
    return;
  }
  if (seq <= (state.lastSeq.get(id) || 0)) return; // already shown
  state.lastSeq.set(id, seq);
  const li = document.createElement('li');
  li.className = m.sender.user_id === state.userId ? 'mine' : '';
  li.dataset.seq = String(seq);
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = m.sender.nickname;
  li.append(who);
  const body = m.message;
  if (body.message_type === 'MESSAGE_TYPE_IMAGE') {
    const img = document.createElement('img');
    img.alt = body.file_name;
    li.append(img);
    loadImage(body).then((url) => { img.src = url; }).catch((e) => say(e.message));
  } else if (body.message_type === 'MESSAGE_TYPE_TEXT') {
    li.append(document.createTextNode(body.text));
  } else if (body.message_type === 'MESSAGE_TYPE_VOICE') {
    li.dataset.fileId = body.file_id;
    const audio = document.createElement('audio');
    audio.controls = true;
    audio.preload = 'none';
    const transcript = document.createElement('span');
    transcript.className = 'transcript';
    li.append(audio, button('Transcribe 转文字', () => transcribe(body, transcript), true), transcript);
    loadFile(body, 'audio/wav').then((url) => { audio.src = url; }).catch((e) => say(e.message));
  } else {
    li.append(document.createTextNode(`[file] ${body.file_name}`));
  }
  $('messages').append(li);
  li.scrollIntoView({ block: 'end' });
}

async function loadImage(body) {
  const ext = (body.file_name.split('.').pop() || 'png').toLowerCase();
  const mime = { jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', webp: 'image/webp', svg: 'image/svg+xml' }[ext] || 'image/png';
  return loadFile(body, mime);
}

async function loadFile(body, mime) {
  if (!state.files.has(body.file_id)) {
    const rsp = await api('file/get_single_file', { file_id: body.file_id });
    state.files.set(body.file_id, `data:${mime};base64,${rsp.file_data.file_content}`);
  }
  return state.files.get(body.file_id);
}

// ---- voice messages (语音) ----
// Recorded with Web Audio (browsers' MediaRecorder makes WebM/Opus, which the speech service
// does not take), downsampled in the page to 16 kHz mono 16-bit WAV, stored with the file
// service, sent as a voice message, and transcribed by the speech service.

const VOICE_RATE = 16000;
const MAX_VOICE_SECONDS = 60;

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const rec = { ctx, stream, node, chunks: [], rate: ctx.sampleRate };
  node.onaudioprocess = (ev) => rec.chunks.push(new Float32Array(ev.inputBuffer.getChannelData(0)));
  source.connect(node);
  node.connect(ctx.destination);
  rec.timer = setTimeout(() => toggleRecording().catch((e) => say(e.message)), MAX_VOICE_SECONDS * 1000);
  state.recording = rec;
  $('record').textContent = 'Stop';
  say('recording…');
}

async function stopRecording() {
  const rec = state.recording;
  state.recording = null;
  clearTimeout(rec.timer);
  rec.node.disconnect();
  rec.stream.getTracks().forEach((t) => t.stop());
  await rec.ctx.close();
  $('record').textContent = 'Voice';
  const length = rec.chunks.reduce((n, c) => n + c.length, 0);
  const all = new Float32Array(length);
  let at = 0;
  for (const c of rec.chunks) {
    all.set(c, at);
    at += c.length;
  }
  return wav16k(all, rec.rate);
}

// Linear interpolation to 16 kHz, then a 16-bit PCM mono WAV.
function wav16k(samples, rate) {
  const n = Math.floor((samples.length * VOICE_RATE) / rate);
  const pcm = new Int16Array(n);
  const step = rate / VOICE_RATE;
  for (let i = 0; i < n; i++) {
    const pos = i * step;
    const j = Math.floor(pos);
    const a = samples[j] || 0;
    const b = samples[Math.min(j + 1, samples.length - 1)] || 0;
    const v = Math.max(-1, Math.min(1, a + (b - a) * (pos - j)));
    pcm[i] = Math.round(v * 32767);
  }
  const out = new DataView(new ArrayBuffer(44 + pcm.length * 2));
  const text = (at, t) => [...t].forEach((c, i) => out.setUint8(at + i, c.charCodeAt(0)));
  text(0, 'RIFF');
  out.setUint32(4, 36 + pcm.length * 2, true);
  text(8, 'WAVEfmt ');
  out.setUint32(16, 16, true);
  out.setUint16(20, 1, true); // PCM
  out.setUint16(22, 1, true); // mono
  out.setUint32(24, VOICE_RATE, true);
  out.setUint32(28, VOICE_RATE * 2, true);
  out.setUint16(32, 2, true);
  out.setUint16(34, 16, true);
  text(36, 'data');
  out.setUint32(40, pcm.length * 2, true);
  pcm.forEach((v, i) => out.setInt16(44 + i * 2, v, true));
  return new Blob([out.buffer], { type: 'audio/wav' });
}

async function toggleRecording() {
  if (!state.recording) return startRecording();
  const wav = await stopRecording();
  if (wav.size <= 44 + VOICE_RATE / 5) return say('too short to send');
  const audio = await readBase64(wav);
  const name = `voice-${Date.now()}.wav`;
  const rsp = await api('file/put_single_file', { file_data: { file_name: name, file_content: audio } });
  const info = rsp.file_info;
  state.files.set(info.file_id, `data:audio/wav;base64,${audio}`);
  await send({ message_type: 'MESSAGE_TYPE_VOICE', file_id: info.file_id, file_name: info.file_name, file_size: info.file_size });
  say('');
  // The sender sees the transcript at once.
  const shown = document.querySelector(`#messages li[data-file-id="${CSS.escape(info.file_id)}"] .transcript`);
  if (shown) await transcribe(info, shown);
}

async function transcribe(body, target) {
  target.textContent = '…';
  const url = await loadFile(body, 'audio/wav');
  const rsp = await api('speech/recognize', { audio: url.split(',', 2)[1], format: 'wav' });
  target.textContent = rsp.text ? `“${rsp.text}”` : '(nothing heard)';
}

async function send(message) {
  const id = state.current;
  const rsp = await api('message_transmit/new_message', { chat_session_id: id, client_msg_id: newId('m'), message });
  // This device is excluded from the push of its own message: show it from the answer.
  onMessage({
    message_id: rsp.message_id,
    chat_session_id: id,
    seq: rsp.seq,
    timestamp: rsp.timestamp,
    sender: { user_id: state.userId, nickname: state.nickname },
    message: { text: '', file_id: '', file_name: '', file_size: '0', ...message },
  });
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).split(',', 2)[1]);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

async function sendImage(file) {
  const rsp = await api('file/put_single_file', { file_data: { file_name: file.name, file_content: await readBase64(file) } });
  const info = rsp.file_info;
  await send({ message_type: 'MESSAGE_TYPE_IMAGE', file_id: info.file_id, file_name: info.file_name, file_size: info.file_size });
}

// ---- wiring ----

function on(id, event, handler) {
  $(id).addEventListener(event, (ev) => {
    if (event === 'submit') ev.preventDefault();
    Promise.resolve(handler(ev)).catch((e) => say(e.message));
  });
}

on('auth-form', 'submit', () => login($('nickname').value, $('password').value));
on('register', 'click', async () => {
  const nickname = $('nickname').value;
  const password = $('password').value;
  await api('user/username_register', { nickname, password });
  await login(nickname, password);
});
on('logout', 'click', async () => {
  await api('user/logout').catch(() => {});
  signedOut('signed out');
});
on('search-form', 'submit', () => search($('search').value));
on('new-group', 'click', newGroup);
on('send-form', 'submit', async () => {
  const text = $('text').value.trim();
  if (!text) return;
  await send({ message_type: 'MESSAGE_TYPE_TEXT', text });
  $('text').value = '';
});
on('record', 'click', toggleRecording);
on('image', 'change', async (ev) => {
  const file = ev.target.files[0];
  if (file) await sendImage(file);
  ev.target.value = '';
});

if (state.token) start().catch((e) => say(e.message));
