import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest, ServerHttp2Stream } from "node:http2";
import { createContextKey, type Interceptor } from "@connectrpc/connect";
import { StoreError } from "../store/errors.js";

/** The HTTP connection a request came on, from Fastify: a socket, or an HTTP/2 session. */
export const kConnection = createContextKey<object | undefined>(undefined);

/** HTTP/2 requests share their session; each HTTP/2 stream has a socket proxy of its own. */
export function connectionOf(
  req: IncomingMessage | Http2ServerRequest | ServerHttp2Stream,
): object {
  // An HTTP/2 stream served without Fastify (grpc-unary-path.ts).
  if ("session" in req) return req.session ?? req;
  return ("stream" in req ? req.stream.session : undefined) ?? req.socket;
}

export interface SubscriptionCaps {
  /** ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION */
  readonly perConnection: number;
  /** ORISUN_MAX_SUBSCRIPTIONS: for this server process. */
  readonly total: number;
}

/**
 * Counts the open subscriptions (every call whose answer is a stream: SubscribeToEvents,
 * SubscribeToPubSub, health Watch and gRPC reflection) of each connection and of the process,
 * and refuses one beyond either cap with StoreError "limit_reached" before the handler runs. A
 * slot is freed when its stream ends, however it ends.
 */
export class SubscriptionSlots {
  private open = 0;
  private readonly byConnection = new WeakMap<object, number>();

  constructor(private readonly caps: SubscriptionCaps) {}

  readonly interceptor: Interceptor = (next) => async (req) => {
    const kind = req.method.methodKind;
    if (kind === "unary" || kind === "client_streaming") return next(req);
    const release = this.take(req.contextValues.get(kConnection));
    // Connect aborts the signal when the call ends, also for a stream that was never read.
    req.signal.addEventListener("abort", release, { once: true });
    let res: Awaited<ReturnType<typeof next>>;
    try {
      res = await next(req);
    } catch (error) {
      release();
      throw error;
    }
    if (!res.stream) return res;
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } finally {
          release();
        }
      })(),
    };
  };

  /** Takes a slot; the function returned gives it back (once, however often it is called). */
  private take(connection: object | undefined): () => void {
    const mine = connection === undefined ? 0 : (this.byConnection.get(connection) ?? 0);
    if (mine >= this.caps.perConnection) {
      throw new StoreError(
        "limit_reached",
        `this connection has ${mine} subscriptions open, the most ORISUN_MAX_SUBSCRIPTIONS_PER_CONNECTION (${this.caps.perConnection}) allows; end one or open another connection`,
      );
    }
    if (this.open >= this.caps.total) {
      throw new StoreError(
        "limit_reached",
        `the server has ${this.open} subscriptions open, the most ORISUN_MAX_SUBSCRIPTIONS (${this.caps.total}) allows; retry later or on another server`,
      );
    }
    this.open++;
    if (connection !== undefined) this.byConnection.set(connection, mine + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.open--;
      if (connection !== undefined) {
        this.byConnection.set(connection, (this.byConnection.get(connection) ?? 1) - 1);
      }
    };
  }
}
