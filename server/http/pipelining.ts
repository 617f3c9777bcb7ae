import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * Holds an HTTP/1.1 connection's requests in flight to `max` (ORISUN_MAX_STREAMS_PER_CONNECTION,
 * as HTTP/2 sessions hold their streams). Node parses pipelined requests as they arrive and hands
 * each to the handler at once: 50 requests sent in one write ran 50 handlers at once, so one
 * connection could make the server read and hold any number of answers. A request beyond the cap
 * is answered at once (after the answers before it, as HTTP/1.1 orders them) with 429 and a
 * Connect `resource_exhausted` error, without running; HTTP/2 requests pass through.
 */
export function capPipelining(handler: Handler, max: number): Handler {
  const inFlight = new WeakMap<Socket, number>();
  return (req, res) => {
    if (req.httpVersionMajor !== 1) return handler(req, res);
    const socket = req.socket;
    const busy = inFlight.get(socket) ?? 0;
    if (busy >= max) {
      const body = JSON.stringify({
        code: "resource_exhausted",
        message: `more than ${max} requests in flight on one HTTP/1.1 connection (ORISUN_MAX_STREAMS_PER_CONNECTION); wait for answers before sending more`,
      });
      res.writeHead(429, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
      });
      res.end(body);
      return;
    }
    inFlight.set(socket, busy + 1);
    res.once("close", () => inFlight.set(socket, (inFlight.get(socket) ?? 1) - 1));
    handler(req, res);
  };
}
