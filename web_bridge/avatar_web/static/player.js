// The player page: chat, streamed video with captions in step with speech, idle loop, metrics.

import { Connection } from "./connection.js";
import { MseSink } from "./mse.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SESSION_KEY = "avatar.session_id";
const STALL_MS = 300;
const STALL_END_WINDOW_S = 0.5;

// With an access token the bridge set a cookie when this page was opened with ?token=; the
// socket, the idle loop and video links carry it by themselves (same origin).
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

const ui = {
  screen: $("screen"), idle: $("idle"), live: $("live"), conn: $("conn"), unmute: $("unmute"),
  caption: $("caption"), log: $("log"), composer: $("composer"), input: $("input"),
  send: $("send"), stop: $("stop"), serverTimings: $("server-timings"),
};

/** Everything the page knows; exposed as window.avatarPlayer for debugging and tests. */
const state = {
  connected: false,
  session: null,
  sessionsStarted: 0,
  segmentsReceived: 0,
  turn: null, // the turn being received or played: {id, start, end, done, cancelled, ...}
  speaking: false,
  captions: [],
  lastMetrics: null,
  errors: [],
  lastCancelled: null,
  lastT: 0,
  lastAdvance: 0,
  finishedTurns: new Set(),
  fps: 0,
  framesPresented: 0,
};
const sink = new MseSink(ui.live);
window.avatarPlayer = { state, sink };

// ---------------------------------------------------------------- connection
const connection = new Connection(wsUrl, () => ({
  session_id: sessionStorage.getItem(SESSION_KEY) || "",
  avatar: params.get("avatar") || "",
  voice: params.get("voice") || "",
  language: params.get("lang") || "",
}));

window.avatarPlayer.connection = connection;
connection.addEventListener("open", () => {
  state.connected = false; // until this connection's session message arrives
  setConn("open", "connected");
});
connection.addEventListener("close", (event) => {
  state.connected = false;
  setConn("closed", `reconnecting in ${Math.round(event.detail.retryInMs / 1000)} s…`);
  if (state.turn && !state.turn.done) {
    endTurn(state.turn, "cancelled");
    stopSpeaking();
  }
  updateButtons();
});
connection.addEventListener("message", (event) => onMessage(event.detail));
connection.addEventListener("media", (event) => onMedia(event.detail));

function setConn(kind, text) {
  ui.conn.dataset.state = kind;
  ui.conn.textContent = text;
}

function onMessage(m) {
  switch (m.type) {
    case "session": return onSession(m);
    case "turn_started": return onTurnStarted(m);
    case "text": return onText(m);
    case "caption": return onCaption(m);
    case "turn_completed": return onTurnCompleted(m);
    case "turn_cancelled": return onTurnCancelled(m);
    case "error": return onError(m);
    case "video_ready": return addNotice(`Video ready: ${m.url || m.id || ""}`, m.url);
    default: return undefined;
  }
}

function onSession(m) {
  const first = state.session === null;
  const resumed = m.resumed && !first && state.session.session_id === m.session_id;
  state.session = m;
  state.sessionsStarted += 1;
  state.connected = true;
  sessionStorage.setItem(SESSION_KEY, m.session_id);
  if (!resumed) {
    sink.reset();
    state.captions = [];
    state.turn = null;
    ui.caption.textContent = "";
    if (!first) addNotice("New session started.");
  } else {
    addNotice("Reconnected; session resumed.");
  }
  $("fact-renderer").textContent = m.renderer || "–";
  $("fact-voice").textContent = m.voice || "–";
  $("fact-llm").textContent = m.llm || "–";
  if (m.width && m.height) ui.screen.style.setProperty("--aspect", `${m.width} / ${m.height}`);
  document.documentElement.lang = (m.language || "en").split("-")[0];
  const idleUrl = m.idle_url;
  if (ui.idle.dataset.src !== idleUrl) {
    ui.idle.dataset.src = idleUrl;
    ui.idle.poster = m.poster_url;
    ui.idle.src = idleUrl;
    ui.idle.play().catch(() => {});
  }
  setConn("open", `connected · ${m.avatar.display_name || m.avatar.id || "avatar"}`);
  updateButtons();
}

// ---------------------------------------------------------------- turns and chat
function newTurn(id, userText) {
  return {
    id, userText, sentAt: performance.now(), start: null, end: null, done: false,
    cancelled: false, firstText: null, firstSegment: null, playing: null, segments: 0,
    text: "", bubble: null, started: false,
  };
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (!text || !connection.isOpen || !state.session) return;
  const id = `t${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  if (state.turn && !state.turn.done) {
    endTurn(state.turn, "cancelled");
    stopSpeaking();
  }
  state.turn = newTurn(id, text);
  addBubble("user", text);
  connection.sendJson({ type: "message", text, turn_id: id });
  ui.input.value = "";
  unlockAudio();
  updateButtons();
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => {
  const turn = state.turn;
  if (!turn || turn.done) return;
  connection.sendJson({ type: "interrupt", turn_id: turn.id });
  endTurn(turn, "cancelled");
  stopSpeaking();
});
ui.unmute.addEventListener("click", () => {
  ui.live.muted = false;
  ui.unmute.hidden = true;
});

function turnFor(id) {
  if (state.turn && state.turn.id === id) return state.turn;
  if (!id || state.finishedTurns.has(id)) return null;
  // A turn the page did not start (e.g. server-made id): follow it from here on.
  if (!state.turn || state.turn.done) {
    state.turn = newTurn(id, "");
    return state.turn;
  }
  return null;
}

function onTurnStarted(m) {
  const turn = turnFor(m.turn_id);
  if (!turn) return;
  turn.start = m.start;
  turn.started = true;
  updateButtons();
}

function onText(m) {
  const turn = turnFor(m.turn_id);
  if (!turn || turn.cancelled) return;
  if (turn.firstText === null) turn.firstText = performance.now() - turn.sentAt;
  if (turn.start === null) turn.start = m.start;
  if (!turn.bubble) turn.bubble = addBubble("avatar", "");
  turn.text += m.text;
  turn.bubble.textContent = turn.text;
  scrollLog();
  showMetrics(turn);
}

function onCaption(m) {
  const turn = turnFor(m.turn_id);
  if (!turn || turn.cancelled) return;
  state.captions.push({ turn: m.turn_id, text: m.text, sentence: m.sentence, start: m.start, end: m.end });
  if (state.captions.length > 200) state.captions.splice(0, state.captions.length - 200);
}

function onTurnCompleted(m) {
  const turn = state.turn && state.turn.id === m.turn_id ? state.turn : null;
  if (!turn) return;
  turn.completed = m;
  if (m.end > 0) turn.end = m.end;
  if (turn.bubble && m.text) turn.bubble.textContent = m.text;
  else if (!turn.bubble && m.text) turn.bubble = addBubble("avatar", m.text);
  const t = m.timings;
  ui.serverTimings.textContent = `server: text ${fmt(t.first_text_ms)}`
    + ` · speech ${fmt(t.first_audio_ms || t.tts_first_audio_ms)}`
    + ` · video ${fmt(t.first_segment_ms)} · ${m.media_seconds.toFixed(2)} s speech`
    + ` · RTF ${m.realtime_factor.toFixed(2)}`;
  if (turn.segments === 0) endTurn(turn, "done"); // text-only reply: nothing to play
}

function onTurnCancelled(m) {
  state.lastCancelled = m;
  const turn = state.turn && state.turn.id === m.turn_id ? state.turn : null;
  if (!turn) return;
  endTurn(turn, "cancelled");
  stopSpeaking();
}

// Errors that mean the remembered session id itself is refused: forget it and start afresh.
const SESSION_REFUSED_CODES = new Set([3, 5, 9]);

function onError(m) {
  state.errors.push(m);
  if (m.source === "service" && !state.connected && SESSION_REFUSED_CODES.has(m.code)) {
    sessionStorage.removeItem(SESSION_KEY);
  }
  addBubble("error", `${m.source === "bridge" ? "Bridge" : "Service"}: ${m.message} (${m.code_name || m.code})`);
  const turn = state.turn;
  if (turn && !turn.done && (m.turn_id === turn.id || (!turn.started && m.source === "service"))) {
    endTurn(turn, "cancelled");
    stopSpeaking();
  }
}

function endTurn(turn, how) {
  if (turn.done) return;
  turn.done = true;
  state.finishedTurns.add(turn.id);
  turn.cancelled = how === "cancelled";
  if (turn.bubble) turn.bubble.dataset.state = how;
  updateButtons();
}

function updateButtons() {
  const busy = Boolean(state.turn && !state.turn.done);
  ui.stop.disabled = !busy || !connection.isOpen;
  ui.send.disabled = !connection.isOpen || !state.session;
}

// ---------------------------------------------------------------- media
function onMedia({ kind, header, payload }) {
  if (kind === "video_init") {
    if (!MseSink.supported(header.mime_type)) {
      onError({ source: "bridge", message: `this browser cannot play ${header.mime_type}`, code_name: "UNSUPPORTED" });
      return;
    }
    sink.appendInit(header.mime_type, payload).catch((error) => state.errors.push(String(error)));
    return;
  }
  if (kind !== "video_segment") return;
  state.segmentsReceived += 1;
  const turn = turnFor(header.turn_id);
  const appended = sink.appendSegment(payload);
  appended.catch((error) => state.errors.push(String(error)));
  if (!turn || turn.cancelled) return;
  turn.segments += 1;
  if (turn.firstSegment === null) {
    turn.firstSegment = performance.now() - turn.sentAt;
    if (turn.start === null) turn.start = header.start;
    appended.then(() => startSpeaking(turn)).catch(() => {});
  }
  if (header.last_in_turn) {
    appended.then(() => { turn.lastSegmentIn = true; }).catch(() => {});
    if (header.end > 0) turn.end = Math.max(turn.end ?? 0, header.end);
  }
  showMetrics(turn);
}

/** Plays the turn from its first frame, fading from the idle loop. */
function startSpeaking(turn) {
  if (turn !== state.turn || turn.cancelled) return;
  const live = ui.live;
  const halfFrame = 0.5 / (state.session?.fps || 25);
  // The previous turn stopped where it stopped (end, interrupt or a gap): start exactly at
  // this turn's first frame, hidden behind the idle loop until the fade.
  if (turn.start !== null && Math.abs(live.currentTime - turn.start) > halfFrame) {
    live.currentTime = turn.start;
  }
  state.speaking = true;
  state.lastT = live.currentTime; // stall detection counts from this turn's start
  state.lastAdvance = performance.now();
  const played = live.play();
  played?.catch((error) => {
    if (error.name !== "NotAllowedError") return;
    live.muted = true; // autoplay policy: play muted and offer sound
    ui.unmute.hidden = false;
    live.play().catch(() => {});
  });
  ui.screen.dataset.speaking = "true";
}

function stopSpeaking() {
  state.speaking = false;
  ui.screen.dataset.speaking = "false";
  ui.live.pause();
  ui.caption.textContent = "";
}

function unlockAudio() {
  // A user gesture: let the live element play with sound later.
  if (ui.live.muted && ui.unmute.hidden) ui.live.muted = false;
}

/** Captions and the end of speech follow the video's own clock. */
function follow() {
  const t = ui.live.currentTime;
  const turn = state.turn;
  if (state.speaking) {
    const caption = findCaption(t);
    const text = caption ? caption.text : "";
    if (ui.caption.textContent !== text) ui.caption.textContent = text;
    // The turn ends for the viewer when playback reaches the end of its media. The buffered
    // end can sit before the span's end (an audio track that ends early), and playback may
    // stall a little before the buffered end: a stall near the end ends the turn too.
    const now = performance.now();
    if (t !== state.lastT) {
      state.lastT = t;
      state.lastAdvance = now;
    }
    const stalled = now - state.lastAdvance > STALL_MS;
    // Playback stuck before a hole in this turn's media (lost on the way): jump over it.
    const next = sink.nextBufferedStart(t, STALL_END_WINDOW_S);
    if (stalled && next !== null && next < (turn?.end ?? Infinity)) {
      ui.live.currentTime = next;
      return;
    }
    if (turn && (turn.completed || turn.lastSegmentIn) && sink.pending === 0) {
      const end = Math.min(turn.end ?? Infinity, sink.bufferedEnd());
      const fps = state.session?.fps || 25;
      if (t >= end - 2 / fps || (stalled && t >= end - STALL_END_WINDOW_S)) {
        endTurn(turn, turn.cancelled ? "cancelled" : "done");
        stopSpeaking();
      }
    }
  }
}

function tick() {
  follow();
  requestAnimationFrame(tick);
}
ui.live.addEventListener("timeupdate", follow); // rAF sleeps in background tabs

function findCaption(t) {
  let word = null;
  for (const c of state.captions) {
    if (t >= c.start && t < c.end) {
      if (c.sentence) return c;
      word = word || c;
    }
  }
  return word;
}

function meterFrames() {
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  let windowStart = performance.now();
  let frames = 0;
  const onFrame = (now, metadata) => {
    const turn = state.turn;
    state.framesPresented += 1;
    if (turn && state.speaking && turn.playing === null && turn.start !== null
        && metadata.mediaTime >= turn.start - 0.02) {
      turn.playing = performance.now() - turn.sentAt; // first frame of the reply on screen
      showMetrics(turn);
    }
    if (!state.speaking || ui.live.paused) {
      windowStart = now; // measure only while speech plays
      frames = 0;
    } else {
      frames += 1;
      if (now - windowStart >= 1000) {
        state.fps = (frames * 1000) / (now - windowStart);
        $("m-fps").textContent = state.fps.toFixed(1);
        windowStart = now;
        frames = 0;
      }
    }
    ui.live.requestVideoFrameCallback(onFrame);
  };
  ui.live.requestVideoFrameCallback(onFrame);
}

function showMetrics(turn) {
  state.lastMetrics = { text_ms: turn.firstText, video_ms: turn.firstSegment, audio_ms: turn.playing };
  $("m-text").textContent = fmt(turn.firstText);
  $("m-video").textContent = fmt(turn.firstSegment);
  $("m-audio").textContent = fmt(turn.playing);
}

const fmt = (ms) => (ms === null || ms === undefined || ms === 0 ? "–" : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`);

// ---------------------------------------------------------------- chat log
function addBubble(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  if (state.session?.language) li.lang = state.session.language;
  ui.log.append(li);
  scrollLog();
  return li;
}

function addNotice(text, href) {
  const li = addBubble("notice", href ? "" : text);
  if (href) {
    const link = document.createElement("a");
    link.href = href;
    link.textContent = text;
    li.append(link);
  }
}

function scrollLog() {
  ui.log.scrollTop = ui.log.scrollHeight;
}

// ---------------------------------------------------------------- start
updateButtons();
requestAnimationFrame(tick);
meterFrames();
connection.connect();
