import { afterAll, describe, expect, it } from "vitest";
import { eventStoreClient, failure } from "../support/clients.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const schemas: string[] = [];
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
});

async function serverWith(env: Record<string, string>): Promise<SpawnedServer> {
  const schema = freshSchema("logs");
  schemas.push(schema);
  return spawnServer({
    ORISUN_PG_URL: PG_URL,
    ORISUN_PG_SCHEMA: schema,
    ORISUN_DATA_DIR: freshDataDir(),
    ...env,
  });
}

/** Two calls that succeed (gRPC), one refused (gRPC), one Connect JSON call, one static file. */
async function someCalls(server: SpawnedServer): Promise<void> {
  const client = eventStoreClient(server);
  await client.saveEvents({ boundary: "logged", events: [{ eventType: "T", data: "{}" }] });
  await client.getEvents({ boundary: "logged" });
  await failure(client.getEvents({ boundary: "Not A Boundary" }));
  const json = await fetch(`${server.url}/orisun.v1.EventStore/GetEvents`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: '{"boundary":"logged"}',
  });
  expect(json.status).toBe(200);
  expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
}

const linesAfterStart = (server: SpawnedServer) =>
  server
    .output()
    .split("\n")
    .filter(Boolean)
    .slice(
      server
        .output()
        .split("\n")
        .filter(Boolean)
        .findIndex((l) => l.includes("console:")) + 1,
    );

describe("request logging", () => {
  it("at the default level (info) a call writes no line", async () => {
    const server = await serverWith({});
    try {
      await someCalls(server);
      await new Promise((r) => setTimeout(r, 200));
      expect(linesAfterStart(server)).toEqual([]);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  it("at debug, one line per call with method, path, HTTP status, gRPC status and duration", async () => {
    const server = await serverWith({ ORISUN_LOG_LEVEL: "debug" });
    try {
      await someCalls(server);
      await new Promise((r) => setTimeout(r, 200));
      const requests = linesAfterStart(server)
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l.msg === "request");
      expect(requests.map((r) => [r.url, r.status, r.grpcStatus])).toEqual([
        ["/orisun.v1.EventStore/SaveEvents", 200, 0],
        ["/orisun.v1.EventStore/GetEvents", 200, 0],
        ["/orisun.v1.EventStore/GetEvents", 200, 3], // INVALID_ARGUMENT
        ["/orisun.v1.EventStore/GetEvents", 200, undefined], // Connect: the HTTP status says it
        ["/healthz", 200, undefined],
      ]);
      for (const r of requests) {
        expect(r).toMatchObject({ level: 20, method: expect.stringMatching(/^(GET|POST)$/) });
        expect(typeof r.ms).toBe("number");
      }
      expect(linesAfterStart(server).filter((l) => l.includes("incoming request"))).toEqual([]);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  it("ORISUN_LOG_FORMAT=pretty writes human-readable lines instead of JSON", async () => {
    const server = await serverWith({ ORISUN_LOG_FORMAT: "pretty" });
    try {
      const listening = server
        .output()
        .split("\n")
        .find((l) => l.includes("Orisun listening"));
      expect(listening).toMatch(
        /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO \(\d+\): Orisun listening on http/,
      );
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });
});
