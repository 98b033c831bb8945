// The page's end of the bridge protocol v1: one WebSocket, heartbeats, reconnect after 3 s.

export const PROTOCOL_VERSION = 1;
export const MEDIA_KIND = { 1: "video_init", 2: "video_segment", 3: "audio_pcm" };
const RECONNECT_DELAY_MS = 3000;

/** Splits a binary frame: u8 version, u8 kind, u16 header length (BE), JSON header, payload. */
export function unpackMedia(buffer) {
  const view = new DataView(buffer);
  const version = view.getUint8(0);
  if (version !== PROTOCOL_VERSION) throw new Error(`media frame version ${version}`);
  const kind = MEDIA_KIND[view.getUint8(1)];
  const length = view.getUint16(2);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  return { kind, header, payload: buffer.slice(4 + length) };
}

/**
 * Keeps one bridge connection open. Emits "open", "close", "message" (detail: JSON object) and
 * "media" (detail: {kind, header, payload}). `hello()` is called on every (re)connect.
 */
export class Connection extends EventTarget {
  constructor(url, hello) {
    super();
    this.url = url;
    this.hello = hello;
    this.ws = null;
    this.heartbeatMs = 30000;
    this.lastHeard = 0;
    this.timer = null;
    this.reconnectTimer = null;
    this.attempts = 0;
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.attempts = 0;
      this.lastHeard = performance.now();
      this.sendJson({ ...this.hello(), type: "hello", v: PROTOCOL_VERSION });
      this.dispatchEvent(new CustomEvent("open"));
    };
    ws.onmessage = (event) => {
      this.lastHeard = performance.now();
      if (typeof event.data === "string") {
        const message = JSON.parse(event.data);
        if (message.type === "welcome") this.startHeartbeat(message.heartbeat_s * 1000);
        if (message.type === "pong") return;
        this.dispatchEvent(new CustomEvent("message", { detail: message }));
      } else {
        this.dispatchEvent(new CustomEvent("media", { detail: unpackMedia(event.data) }));
      }
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.timer);
      this.attempts += 1;
      this.dispatchEvent(new CustomEvent("close", {
        detail: { code: event.code, reason: event.reason, retryInMs: RECONNECT_DELAY_MS },
      }));
      this.reconnectTimer = setTimeout(() => this.connect(), RECONNECT_DELAY_MS);
    };
  }

  /** Pings every heartbeat; a connection silent for two heartbeats is closed and reopened. */
  startHeartbeat(ms) {
    this.heartbeatMs = ms;
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      if (performance.now() - this.lastHeard > 2 * ms + 5000) {
        this.ws?.close(4000, "heartbeat lost");
        return;
      }
      this.sendJson({ type: "ping", t: Date.now() });
    }, ms);
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  sendJson(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }
}
