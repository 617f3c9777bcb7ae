/**
 * Whether an error only says that the client went away while the server answered: its socket
 * closed or was reset, or it cancelled its HTTP/2 stream. Node raises these on a write to a
 * connection that is gone (ECANCELED for writes libuv had queued when the socket closed, EPIPE,
 * ECONNRESET) or on a stream destroyed under the write. A subscriber that disconnects mid-stream
 * is an everyday event, not a failure of the server: such errors are logged at debug.
 */
export function isClientGone(error: unknown): boolean {
  const seen = new Set<unknown>();
  for (let e = error; e instanceof Error && !seen.has(e); e = e.cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && GONE.has(code)) return true;
  }
  return false;
}

const GONE = new Set([
  "ECANCELED",
  "EPIPE",
  "ECONNRESET",
  "ERR_STREAM_DESTROYED",
  "ERR_STREAM_PREMATURE_CLOSE",
  "ERR_STREAM_WRITE_AFTER_END",
  "ERR_HTTP2_INVALID_STREAM",
  "ERR_HTTP2_STREAM_CANCEL",
]);
