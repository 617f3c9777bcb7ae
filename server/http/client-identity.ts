import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest, ServerHttp2Stream } from "node:http2";
import type { ClientInfo } from "../auth/authenticator.js";

interface PeerSocket {
  readonly remoteAddress?: string;
  readonly authorized?: boolean;
  getPeerCertificate?(): { subject?: Record<string, string | string[]> } | null;
}

/**
 * The caller's address and, with mutual TLS, the CN of its verified client certificate. HTTP/2
 * requests reach the TLS socket through their session's socket proxy, which forwards these reads.
 * Certificates that did not verify never get here: the one-port server ends their connection.
 */
export function clientOf(
  req: IncomingMessage | Http2ServerRequest | ServerHttp2Stream,
  mutualTls: boolean,
): ClientInfo {
  const socket = ("session" in req
    ? req.session?.socket // an HTTP/2 stream served without Fastify (grpc-unary-path.ts)
    : (("stream" in req ? req.stream.session?.socket : undefined) ?? req.socket)) as unknown as
    | PeerSocket
    | undefined;
  if (socket === undefined) return { address: "unknown" };
  const address = socket.remoteAddress ?? "unknown";
  if (!mutualTls || socket.authorized !== true || !socket.getPeerCertificate) return { address };
  const cn = socket.getPeerCertificate()?.subject?.CN;
  return typeof cn === "string" && cn !== "" ? { address, certUser: cn } : { address };
}
