import { connect as http2Connect } from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, SaveEventsRequestSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  PG_HOST,
  PG_PORT,
  pgUrlVia,
} from "../support/databases.js";
import { frame } from "../support/raw-rpc.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

type Client = ReturnType<typeof createClient<typeof EventStore>>;

/** No answer after this long counts as hanging (old code hung for as long as the freeze). */
const HANG_MS = 25_000;
/** What the server may take with ORISUN_PG_STATEMENT_TIMEOUT=2s: a generous multiple. */
const BOUND_MS = 15_000;

const event = (id: string) => ({ eventId: id, eventType: "Thing", data: `{"id":"${id}"}` });

async function outcome(call: (signal: AbortSignal) => Promise<unknown>) {
  const started = Date.now();
  try {
    await call(AbortSignal.timeout(HANG_MS));
    return { code: undefined, message: "", ms: Date.now() - started };
  } catch (error) {
    const e = ConnectError.from(error);
    return { code: e.code, message: e.rawMessage, ms: Date.now() - started };
  }
}

/** A Connect JSON call as curl sends it: the deadline only in the header, no client-side timer. */
async function connectJson(url: string, method: string, body: unknown, timeoutMs: number) {
  const started = Date.now();
  const res = await fetch(`${url}/orisun.v1.EventStore/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Connect-Timeout-Ms": String(timeoutMs) },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(HANG_MS),
  });
  const json = (await res.json()) as { code?: string };
  return { status: res.status, code: json.code, ms: Date.now() - started };
}

/** A raw gRPC call with `grpc-timeout` and no client-side timer: only the server can end it. */
function rawGrpcSave(port: number, boundary: string, id: string, timeout: string) {
  const started = Date.now();
  const message = toBinary(
    SaveEventsRequestSchema,
    create(SaveEventsRequestSchema, { boundary, events: [event(id)] }),
  );
  const body = frame(message);
  const session = http2Connect(`http://127.0.0.1:${port}`);
  return new Promise<{ status: string | undefined; ms: number }>((done, fail) => {
    const guard = setTimeout(() => {
      session.destroy();
      fail(new Error(`no gRPC answer in ${HANG_MS} ms`));
    }, HANG_MS);
    session.on("error", fail);
    const req = session.request({
      ":method": "POST",
      ":path": "/orisun.v1.EventStore/SaveEvents",
      "content-type": "application/grpc",
      te: "trailers",
      "grpc-timeout": timeout,
    });
    let status: string | undefined;
    req.on("response", (headers) => {
      status ??= headers["grpc-status"] as string | undefined;
    });
    req.on("trailers", (trailers) => {
      status = trailers["grpc-status"] as string | undefined;
    });
    req.on("data", () => {});
    req.on("end", () => {
      clearTimeout(guard);
      session.close();
      done({ status, ms: Date.now() - started });
    });
    req.on("error", fail);
    req.end(body);
  });
}

describe("a frozen PostgreSQL (the proxy stops forwarding, as under SIGSTOP)", () => {
  const schema = freshSchema("frozen");
  let proxy: TcpProxy;
  let server: SpawnedServer;
  let client: Client;

  beforeAll(async () => {
    proxy = await startTcpProxy(PG_HOST, PG_PORT);
    server = await spawnServer({
      ORISUN_PG_URL: pgUrlVia(proxy.port),
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_PG_STATEMENT_TIMEOUT: "2s",
    });
    client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
  });
  afterAll(async () => {
    proxy?.thaw();
    await server?.stop("SIGKILL");
    await proxy?.close();
    await dropSchema(schema);
  });

  it("callers fail fast, the client's deadline is honoured, and nothing acknowledged is lost", async () => {
    const acked = new Map<string, string>(); // id -> boundary
    const failed = new Map<string, string>();
    const save = async (boundary: string, id: string, signal?: AbortSignal) => {
      await client.saveEvents({ boundary, events: [event(id)] }, { signal });
      acked.set(id, boundary);
    };
    for (let i = 0; i < 5; i++) await save("before", `b${i}`);

    // A writer that keeps going through the freeze, as a real client would.
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing && i < 10_000; i++) {
        const id = `w${i}`;
        const result = await outcome((signal) => save("steady", id, signal));
        if (result.code !== undefined) {
          failed.set(id, "steady");
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    // Fill the pool, so that the calls below find open connections, as on a server in use.
    await Promise.all(Array.from({ length: 10 }, (_, i) => save(`warm${i % 5}`, `warm${i}`)));
    proxy.freeze();
    try {
      // Eight appends (four to one boundary, four to their own) and a read, none with a deadline.
      const appends = Array.from({ length: 8 }, (_, i) => {
        const boundary = i < 4 ? "shared" : `own${i}`;
        const id = `f${i}`;
        return outcome((signal) => save(boundary, id, signal)).then((r) => {
          if (r.code !== undefined) failed.set(id, boundary);
          return r;
        });
      });
      const read = outcome((signal) =>
        client.getEvents({ boundary: "before", count: 10 }, { signal }),
      );
      const results = await Promise.all([...appends, read]);
      console.log(`frozen: ${results.map((r) => `${Code[r.code ?? 0]} ${r.ms} ms`).join(", ")}`);
      for (const r of results) {
        expect([Code.Unavailable, Code.DeadlineExceeded], JSON.stringify(r)).toContain(r.code);
        expect(r.ms, JSON.stringify(r)).toBeLessThan(BOUND_MS);
      }

      // The client's deadline, in every protocol, ends the call at about that time.
      const json = await connectJson(
        server.url,
        "SaveEvents",
        { boundary: "deadline", events: [event("d1")] },
        300,
      );
      expect(json.code, JSON.stringify(json)).toBe("deadline_exceeded");
      expect(json.ms).toBeLessThan(4_000);
      const read300 = await connectJson(server.url, "GetEvents", { boundary: "before" }, 300);
      expect(read300.code, JSON.stringify(read300)).toBe("deadline_exceeded");
      expect(read300.ms).toBeLessThan(4_000);
      const grpcRaw = await rawGrpcSave(server.port, "deadline", "d2", "300m");
      expect(grpcRaw.status, JSON.stringify(grpcRaw)).toBe(String(Code.DeadlineExceeded));
      expect(grpcRaw.ms).toBeLessThan(4_000);
      console.log(`deadline 300 ms: JSON ${json.ms}/${read300.ms} ms, gRPC ${grpcRaw.ms} ms`);
      failed.set("d1", "deadline");
      failed.set("d2", "deadline");
    } finally {
      proxy.thaw();
    }

    // The server works again once the database answers.
    const recovered = Date.now() + 30_000;
    let ok = false;
    while (!ok && Date.now() < recovered) {
      ok = (await outcome((signal) => save("after", `a${Date.now()}`, signal))).code === undefined;
      if (!ok) await new Promise((r) => setTimeout(r, 200));
    }
    expect(ok).toBe(true);
    writing = false;
    await writer;

    // Every acknowledged append is in the log; a failed one retried with its ids is stored once.
    for (const [id, boundary] of failed) await save(boundary, id);
    for (const boundary of new Set(acked.values())) {
      const { events } = await client.getEvents({ boundary, count: 10_000 });
      const ids = events.map((e) => e.eventId);
      expect(new Set(ids).size).toBe(ids.length);
      const expected = [...acked].filter(([, b]) => b === boundary).map(([id]) => id);
      expect(ids.sort()).toEqual(expected.sort());
    }
  }, 120_000);
});
