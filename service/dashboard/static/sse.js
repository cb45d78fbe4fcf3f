// Server-Sent Events over fetch().
//
// A browser's EventSource cannot send an Authorization header, so the dashboard reads
// `GET /v1/jobs/{id}/events` with fetch() and parses the stream itself, following the
// WHATWG event-stream rules: lines end in CRLF, LF or CR (also split across chunks), `data:`
// lines join with "\n", `id:` sets the last event id when the event is dispatched, `retry:`
// sets the reconnection delay, `:` lines are comments. On a dropped connection it reconnects
// with `Last-Event-ID`, so the server resumes after the last event this page saw.

import { ApiError, authHeaders, errorOf, refusedMessage, session } from "./api.js";
import { sleep } from "./dom.js";

export class SSEParser {
  /** `onEvent({id, event, data})` for each dispatched event; `onRetry(ms)` for `retry:`. */
  constructor(onEvent, onRetry = () => {}) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.buffer = "";
    this.data = [];
    this.event = "";
    this.idBuffer = null;
    this.lastEventId = null;
  }

  /** Feed decoded text (any chunking). */
  push(text) {
    this.buffer += text;
    let start = 0;
    const buf = this.buffer;
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i];
      if (c !== "\n" && c !== "\r") continue;
      if (c === "\r" && i + 1 === buf.length) break; // a CR at the end: wait for a possible LF
      const line = buf.slice(start, i);
      if (c === "\r" && buf[i + 1] === "\n") i += 1;
      start = i + 1;
      this.line(line);
    }
    this.buffer = buf.slice(start);
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.idBuffer = value;
    } else if (field === "retry") {
      if (/^\d+$/.test(value)) this.onRetry(Number(value));
    }
  }

  dispatch() {
    this.lastEventId = this.idBuffer;
    if (this.data.length === 0) {
      this.event = "";
      return;
    }
    const ev = { id: this.lastEventId, event: this.event || "message", data: this.data.join("\n") };
    this.data = [];
    this.event = "";
    this.onEvent(ev);
  }
}

/**
 * Follow a job's events until its `end` event (or `signal` aborts).
 *
 * `onEvent(name, payload, id)` gets each event's parsed JSON; `onStatus(status, detail)` gets
 * "connecting", "live", "reconnecting" (with the delay), "ended" or "error" (with the
 * ApiError; a 404 or 422 is not retried, a 401 signs the tab out). Returns when the stream
 * ends for good.
 */
export async function followEvents(jobId, { onEvent, onStatus = () => {}, signal }) {
  let lastId = null;
  let retryMs = 2000;
  let failures = 0;
  while (!signal.aborted) {
    onStatus(lastId === null ? "connecting" : "reconnecting-now");
    let ended = false;
    try {
      const headers = { Accept: "text/event-stream", ...authHeaders() };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const resp = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
        headers,
        signal,
        cache: "no-store",
        credentials: "omit",
      });
      if (!resp.ok) throw await errorOf(resp);
      onStatus("live");
      failures = 0;
      const parser = new SSEParser(
        (ev) => {
          if (ev.id !== null && ev.id !== "") lastId = ev.id;
          let payload = null;
          try {
            payload = JSON.parse(ev.data);
          } catch {
            return; // not JSON: not an event of this API
          }
          if (ev.event === "end") ended = true;
          onEvent(ev.event, payload, ev.id);
        },
        (ms) => {
          retryMs = ms;
        },
      );
      const reader = resp.body.getReader();
      const decoder = new TextDecoder("utf-8");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
        if (ended) {
          await reader.cancel().catch(() => {});
          break;
        }
      }
      parser.push(decoder.decode());
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError) {
        if (err.status === 401 && session.signedIn) {
          session.signOut(refusedMessage(err));
          return;
        }
        if (err.status < 500 && err.status !== 429 && err.status !== 408) {
          onStatus("error", err);
          return;
        }
      }
      failures += 1;
    }
    if (ended) {
      onStatus("ended");
      return;
    }
    if (signal.aborted) return;
    // The stream stopped without its `end` (network, server restart): resume after lastId.
    const delay = Math.min(30000, retryMs * 2 ** Math.max(0, failures - 1));
    onStatus("reconnecting", delay);
    await sleep(delay, signal);
  }
}
