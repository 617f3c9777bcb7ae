import { connect } from "node:http2";
import { Code } from "@connectrpc/connect";

/**
 * Hand-made requests on each transport, for bodies no generated client would send: a status
 * parsed straight from the wire (gRPC trailers, the gRPC-Web trailer frame, the Connect JSON error).
 */
export interface RawStatus {
  readonly code: Code;
  readonly message: string;
  /** The HTTP status (200 for gRPC and gRPC-Web, which carry the code in trailers). */
  readonly http: number;
}

export type RawTransport = "grpc" | "grpc-web" | "connect-proto" | "connect-get" | "connect-json";

const PATH = "/orisun.v1.EventStore/";
const TIMEOUT_MS = 15_000;

/**
 * One message frame of gRPC, gRPC-Web and Connect streaming: flags (0: uncompressed),
 * big-endian length, payload.
 */
export function frame(payload: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

/** "invalid_argument" -> Code.InvalidArgument */
function codeFromConnect(name: string | undefined): Code {
  const camel = (name ?? "unknown").replace(/(^|_)([a-z])/g, (_m, _s, c: string) =>
    c.toUpperCase(),
  );
  return Code[camel as keyof typeof Code] ?? Code.Unknown;
}

function grpcStatus(
  fields: Record<string, string | string[] | undefined>,
  http: number,
): RawStatus {
  const status = fields["grpc-status"];
  if (status === undefined) throw new Error(`no grpc-status in ${JSON.stringify(fields)}`);
  return {
    code: Number(status) as Code,
    message: decodeURIComponent(String(fields["grpc-message"] ?? "")),
    http,
  };
}

/** A gRPC call over HTTP/2 with prior knowledge, body sent as is (frame it with `frame`). */
export function grpcRaw(url: string, method: string, body: Uint8Array): Promise<RawStatus> {
  const session = connect(url);
  return new Promise<RawStatus>((done, fail) => {
    const timer = setTimeout(
      () => fail(new Error(`${method}: no status in ${TIMEOUT_MS} ms`)),
      TIMEOUT_MS,
    );
    session.on("error", fail);
    const req = session.request({
      ":method": "POST",
      ":path": PATH + method,
      "content-type": "application/grpc+proto",
      te: "trailers",
    });
    let headers: Record<string, string | string[] | undefined> = {};
    let trailers: Record<string, string | string[] | undefined> | undefined;
    req.on("response", (h) => {
      headers = h;
    });
    req.on("trailers", (t) => {
      trailers = t;
    });
    req.on("data", () => {});
    req.on("error", fail);
    req.on("end", () => {
      clearTimeout(timer);
      try {
        const http = Number(headers[":status"]);
        done(grpcStatus(trailers ?? headers, http));
      } catch (error) {
        fail(error);
      }
    });
    req.end(body);
  }).finally(() => session.close());
}

/** Reads the trailer frame (flag 0x80) of a gRPC-Web response body, or the trailers-only headers. */
async function grpcWebStatus(res: Response): Promise<RawStatus> {
  const body = new Uint8Array(await res.arrayBuffer());
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  for (let at = 0; at + 5 <= body.length; ) {
    const length = view.getUint32(at + 1);
    if ((body[at] ?? 0) & 0x80) {
      const text = new TextDecoder().decode(body.subarray(at + 5, at + 5 + length));
      const fields: Record<string, string> = {};
      for (const line of text.split("\r\n")) {
        const colon = line.indexOf(":");
        if (colon > 0)
          fields[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      return grpcStatus(fields, res.status);
    }
    at += 5 + length;
  }
  const headers: Record<string, string> = {};
  res.headers.forEach((value, key) => {
    headers[key] = value;
  });
  return grpcStatus(headers, res.status);
}

async function connectStatus(res: Response): Promise<RawStatus> {
  const text = await res.text();
  if (res.status === 200) return { code: Code.Unknown, message: `succeeded: ${text}`, http: 200 };
  const json = JSON.parse(text) as { code?: string; message?: string };
  return { code: codeFromConnect(json.code), message: json.message ?? "", http: res.status };
}

/**
 * Sends `body` (the serialized request, not framed) for `method` on `transport`. For
 * "connect-json" the body is the JSON text's bytes; for "connect-get" the body travels
 * base64url-encoded in the query.
 */
export async function rawCall(
  url: string,
  transport: RawTransport,
  method: string,
  body: Uint8Array,
): Promise<RawStatus> {
  const signal = AbortSignal.timeout(TIMEOUT_MS);
  switch (transport) {
    case "grpc":
      return grpcRaw(url, method, frame(body));
    case "grpc-web":
      return grpcWebStatus(
        await fetch(url + PATH + method, {
          method: "POST",
          headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
          body: Buffer.from(frame(body)),
          signal,
        }),
      );
    case "connect-proto":
    case "connect-json":
      return connectStatus(
        await fetch(url + PATH + method, {
          method: "POST",
          headers: {
            "content-type": transport === "connect-json" ? "application/json" : "application/proto",
            "connect-protocol-version": "1",
          },
          body: Buffer.from(body),
          signal,
        }),
      );
    case "connect-get": {
      const message = Buffer.from(body).toString("base64url");
      const query = `connect=v1&encoding=proto&base64=1&message=${message}`;
      return connectStatus(await fetch(`${url}${PATH}${method}?${query}`, { signal }));
    }
  }
}
