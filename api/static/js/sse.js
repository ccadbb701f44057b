// Server-Sent Events over fetch(): unlike EventSource it sends the Authorization header (an API
// key in a URL would leak into logs) and lets us set Last-Event-ID on every reconnect.
//
// openStream(path, {onEvent, onState, lastEventId}) -> {close()}
//   onEvent({event, data, id}) for each event, data JSON-parsed when it parses;
//   the stream ends on `done` or `error` events, on close(), or on a 4xx answer;
//   anything else (network drop, server restart) reconnects after the server's `retry:`.

import { ApiError, request } from "./api.js";

export function openStream(path, { onEvent, onState = () => {}, lastEventId = null } = {}) {
  const ctrl = new AbortController();
  let closed = false;
  let retryMs = 2000;
  let lastId = lastEventId;

  function dispatch(block) {
    let event = "message", data = [], id = null;
    for (const line of block) {
      if (!line || line.startsWith(":")) continue;  // comments are keep-alives
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
      else if (field === "retry" && /^\d+$/.test(value)) retryMs = Number(value);
    }
    if (id !== null) lastId = id;
    if (!data.length) return false;
    let payload = data.join("\n");
    try { payload = JSON.parse(payload); } catch { /* plain text data */ }
    onEvent({ event, data: payload, id });
    return event === "done" || event === "error";
  }

  async function once() {
    const headers = { Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    const res = await request(path, { headers, signal: ctrl.signal });
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch { /* not JSON */ }
      throw new ApiError(res.status, body);
    }
    onState("open");
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", block = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (dispatch(block)) { ctrl.abort(); return true; }
          block = [];
        } else block.push(line);
      }
    }
  }

  (async () => {
    while (!closed) {
      try {
        if (await once()) break;
      } catch (err) {
        if (closed || err.name === "AbortError") break;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) {
          onEvent({ event: "error", data: { error: err.body?.error, detail: err.message } });
          break;
        }
      }
      if (closed) break;
      onState("reconnecting");
      await new Promise((r) => setTimeout(r, retryMs));
    }
    onState("closed");
  })();

  return {
    close() { closed = true; ctrl.abort(); },
    get lastEventId() { return lastId; },
  };
}
