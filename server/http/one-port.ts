import type { IncomingMessage, ServerResponse } from "node:http";
import * as http from "node:http";
import type { Http2ServerRequest, Http2ServerResponse, Http2Session } from "node:http2";
import * as http2 from "node:http2";
import type { Socket } from "node:net";
import * as net from "node:net";
import type { TLSSocket } from "node:tls";
import type { ConnectionLimits, TlsConfig } from "../config.js";
import { ConnectionGuard, rateLimited, type Warn } from "./connection-guard.js";
import type { StreamRoute } from "./grpc-unary-path.js";
import { capPipelining } from "./pipelining.js";

/** Fastify's request handler; it also serves HTTP/2 compat requests, which lack a few HTTP/1 fields. */
type Handler = (req: IncomingMessage, res: ServerResponse) => void;
type Http2Handler = (req: Http2ServerRequest, res: Http2ServerResponse) => void;

/** The HTTP/2 connection preface a client sends first when it speaks h2c with prior knowledge. */
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

const KEEPALIVE_MS = 30_000;

export interface OnePort {
  /** What Fastify listens on and closes. */
  readonly server: net.Server;
  /** Ends idle keep-alive connections and asks HTTP/2 peers to go away once their streams finish. */
  drain(): void;
  /** Destroys every remaining connection. */
  destroy(): void;
  /**
   * Serves a connection accepted elsewhere (a cluster worker's, from its primary:
   * process/connection-handoff.ts), under the same cap as those `server` accepts.
   */
  adopt(socket: Socket): void;
  /** Resolves once no adopted connection is left open. */
  adoptedClosed(): Promise<void>;
  /** Offers every HTTP/2 stream to `route` before Fastify (grpc-unary-path.ts). */
  routeStreams(route: StreamRoute): void;
}

/**
 * Puts a stream route in front of Node's HTTP/2 compatibility layer: each stream is offered to
 * the route first, and only those it declines become the request and response Fastify serves.
 * Node adds that layer as the server's one "stream" listener when it is given a request handler.
 */
function routeFirst(
  server: http2.Http2Server | http2.Http2SecureServer,
  route: () => StreamRoute | undefined,
): void {
  const [compat, ...others] = server.listeners("stream");
  if (compat === undefined || others.length > 0) {
    throw new Error("Node's HTTP/2 server no longer has one compatibility stream listener");
  }
  server.removeListener("stream", compat as (...args: unknown[]) => void);
  server.on(
    "stream",
    (
      stream: http2.ServerHttp2Stream,
      headers: http2.IncomingHttpHeaders,
      flags: number,
      rawHeaders: string[],
    ) => {
      if (route()?.(stream, headers)) return;
      compat.call(server, stream, headers, flags, rawHeaders);
    },
  );
}

/**
 * One listening port for every protocol. A plain TCP server accepts every connection and admits
 * it (see ConnectionGuard) before handing it on. Without TLS, Node's h2c server cannot take
 * HTTP/1.1, so each connection is routed by its first bytes: the HTTP/2 preface goes to an HTTP/2
 * server (gRPC, Connect and gRPC-Web over h2c), anything else to an HTTP/1.1 server (curl,
 * browsers). With TLS, ALPN picks h2 or http/1.1 and Node's secure HTTP/2 server handles both.
 *
 * Every connection is bounded in time: the handshake deadline until the protocol is known, then
 * HTTP/1.1's headers timeout per request, and `idleTimeoutMs` while no request or HTTP/2 stream
 * is in flight. A stream in flight (a subscription, however quiet) keeps its connection open.
 */
export function createOnePort(
  fastify: Handler,
  tls: TlsConfig | undefined,
  limits: ConnectionLimits,
  warn: Warn,
): OnePort {
  const handler = capPipelining(fastify, limits.maxStreamsPerConnection);
  const guard = new ConnectionGuard(limits, warn);
  let streamRoute: StreamRoute | undefined;
  const routeStreams = (route: StreamRoute) => {
    streamRoute = route;
  };
  const sessions = new Set<Http2Session>();
  const sockets = new Set<Socket>();
  const h2Options: http2.ServerOptions = {
    // Bounds what one session can make the server hold: nghttp2 buffers (MB), header pairs and
    // bytes, and streams at once; a stream over the cap is refused (REFUSED_STREAM or a stream
    // error), the session goes on.
    maxSessionMemory: 10,
    maxHeaderListPairs: 128,
    settings: {
      maxConcurrentStreams: limits.maxStreamsPerConnection,
      maxHeaderListSize: 64 * 1024,
    },
  };
  // Node checks HTTP/1.1 headers timeouts on this interval (30 s by default): a short timeout
  // needs a tighter check to mean anything.
  const checkEveryMs = Math.max(50, Math.min(1_000, Math.floor(limits.headersTimeoutMs / 4)));
  const track = (server: http2.Http2Server | http2.Http2SecureServer) => {
    server.on("session", (session: Http2Session) => {
      sessions.add(session);
      // A quiet subscription sends nothing for as long as nothing commits; pings keep NATs and
      // proxies from dropping the connection, and reveal a dead peer.
      const ping = setInterval(() => {
        if (!session.closed && !session.destroyed) session.ping(() => {});
      }, KEEPALIVE_MS);
      ping.unref();
      // Idle means no stream open, not no bytes: a subscription stream keeps its session.
      let open = 0;
      let idle: NodeJS.Timeout | undefined;
      const arm = () => {
        idle = setTimeout(() => session.close(), limits.idleTimeoutMs);
        idle.unref();
      };
      arm();
      session.on("stream", (stream: http2.ServerHttp2Stream) => {
        open++;
        clearTimeout(idle);
        stream.once("close", () => {
          open--;
          if (open === 0 && !session.closed) arm();
        });
      });
      session.on("close", () => {
        clearInterval(ping);
        clearTimeout(idle);
        sessions.delete(session);
      });
    });
  };

  // The inner servers never listen themselves; connections reach them by "connection" events.
  // Node only starts checking HTTP/1.1 headers timeouts when a server emits "listening".
  const startHttp1Checks = (server: net.Server) => server.emit("listening");

  // No Nagle, as Node's own HTTP servers default to: a small response (a unary answer, one
  // streamed event) should leave at once rather than wait behind an unacknowledged segment.
  const front = net.createServer({ noDelay: true });
  front.maxConnections = limits.maxConnections;
  const warnFull = rateLimited(warn);
  front.on("drop", (data?: { remoteAddress?: string }) =>
    warnFull(
      { address: data?.remoteAddress, limit: limits.maxConnections },
      "connection refused: the server holds ORISUN_MAX_CONNECTIONS connections",
    ),
  );
  const accept = (onAdmitted: (socket: Socket) => void) =>
    front.on("connection", (socket: Socket) => {
      if (!guard.admit(socket)) return;
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      onAdmitted(socket);
    });
  // Connections handed over rather than accepted: `front` never listens then, so Node neither
  // applies maxConnections nor counts them for closing; done here.
  const adopted = new Set<Socket>();
  const whenNoneAdopted: (() => void)[] = [];
  const adopt = (socket: Socket) => {
    if (sockets.size >= limits.maxConnections) {
      socket.destroy();
      front.emit("drop", { remoteAddress: socket.remoteAddress });
      return;
    }
    adopted.add(socket);
    socket.once("close", () => {
      adopted.delete(socket);
      if (adopted.size === 0) for (const resolve of whenNoneAdopted.splice(0)) resolve();
    });
    front.emit("connection", socket);
  };
  const adoptedClosed = () =>
    adopted.size === 0
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          whenNoneAdopted.push(resolve);
        });

  if (tls) {
    const { clientCa, ...identity } = tls;
    // Mutual TLS: a client certificate is asked for but not required (clients may sign in with
    // a password or key instead); one that does not verify against the CA ends the connection
    // right after the handshake, before any request is read.
    const mutual =
      clientCa === undefined ? {} : { requestCert: true, rejectUnauthorized: false, ca: clientCa };
    const secure = http2.createSecureServer(
      { ...identity, ...mutual, ...h2Options, allowHTTP1: true },
      handler as unknown as Http2Handler,
    );
    // HTTP/1.1 over TLS is served by Node's HTTP/1 code inside the secure server, which reads
    // these fields from it; Node's typings leave them out.
    Object.assign(secure, {
      headersTimeout: limits.headersTimeoutMs,
      keepAliveTimeout: limits.idleTimeoutMs,
      connectionsCheckingInterval: checkEveryMs,
    });
    startHttp1Checks(secure);
    track(secure);
    routeFirst(secure, () => streamRoute);
    const warnCertificate = rateLimited(warn);
    secure.on("secureConnection", (socket: TLSSocket) => {
      if (clientCa !== undefined && !socket.authorized && socket.getPeerCertificate()?.subject) {
        warnCertificate(
          { address: socket.remoteAddress, reason: String(socket.authorizationError) },
          "client certificate refused",
        );
        socket.destroy();
        return;
      }
      guard.handshakeDone(socket);
    });
    accept((socket) => secure.emit("connection", socket));
    front.on("close", () => secure.close());
    return {
      server: front,
      drain: () => {
        for (const session of sessions) session.close();
      },
      destroy: () => {
        for (const socket of sockets) socket.destroy();
      },
      routeStreams,
      adopt,
      adoptedClosed,
    };
  }

  // HTTP/1.1 connections and their requests in flight. While draining, a connection is closed as
  // soon as it has none: browsers keep connections open, and one whose stream was just ended
  // would otherwise hold the port open until the grace period runs out. (Node's own
  // closeIdleConnections only knows connections of a server that listens itself.)
  const h1Busy = new Map<Socket, number>();
  let draining = false;
  // Node's request timeout runs until a request's body has arrived, not while its answer streams
  // (a quiet subscription outlives it): ORISUN_BODY_TIMEOUT, which also bounds the rest of a body
  // Node reads and drops after a call was refused before its end. Idle means no request in
  // flight, so the keep-alive timeout never cuts one.
  const h1 = http.createServer(
    {
      requestTimeout: limits.bodyTimeoutMs,
      headersTimeout: limits.headersTimeoutMs,
      keepAliveTimeout: limits.idleTimeoutMs,
      connectionsCheckingInterval: checkEveryMs,
    },
    (req, res) => {
      const socket = req.socket;
      h1Busy.set(socket, (h1Busy.get(socket) ?? 0) + 1);
      if (draining) res.shouldKeepAlive = false;
      res.once("close", () => {
        const left = (h1Busy.get(socket) ?? 1) - 1;
        h1Busy.set(socket, left);
        if (draining && left === 0) socket.end();
      });
      handler(req, res);
    },
  );
  startHttp1Checks(h1);
  const h2 = http2.createServer(h2Options, handler as unknown as Http2Handler);
  track(h2);
  routeFirst(h2, () => streamRoute);
  front.on("close", () => {
    h1.close();
    h2.close();
  });

  accept((socket: Socket) => {
    let head = Buffer.alloc(0);
    const sniff = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const n = Math.min(head.length, PREFACE.length);
      const h2c = head.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (h2c && head.length < PREFACE.length) return; // could still be the preface: wait
      socket.off("data", sniff);
      guard.handshakeDone(socket);
      socket.pause();
      socket.unshift(head);
      if (h2c) {
        // The HTTP/2 session takes over the socket and reads the unshifted bytes itself.
        h2.emit("connection", socket);
      } else {
        h1Busy.set(socket, 0);
        socket.once("close", () => h1Busy.delete(socket));
        h1.emit("connection", socket);
        // The HTTP/1 parser listens for data events: a paused socket would never deliver them.
        socket.resume();
      }
    };
    socket.on("data", sniff);
  });

  return {
    server: front,
    drain: () => {
      draining = true;
      for (const [socket, busy] of h1Busy) if (busy === 0) socket.end();
      for (const session of sessions) session.close();
    },
    destroy: () => {
      for (const socket of sockets) socket.destroy();
    },
    routeStreams,
    adopt,
    adoptedClosed,
  };
}
