import type { Interceptor, Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { Connection } from "./options.js";

/**
 * One HTTP/2 connection (h2c for http://) for every call of a command, Connect protocol with
 * binary protobuf. Measured against gRPC over HTTP/2 and Connect over HTTP/1.1: see the README.
 */
export function transport(connection: Connection): Transport {
  const auth: Interceptor = (next) => (request) => {
    if (connection.authorization !== undefined) {
      request.header.set("authorization", connection.authorization);
    }
    return next(request);
  };
  return createConnectTransport({
    baseUrl: connection.url,
    httpVersion: "2",
    useBinaryFormat: true,
    interceptors: [auth],
    // The server's own limit applies; the client only must not refuse a full page of events.
    readMaxBytes: 256 * 1024 * 1024,
  });
}
