import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { type ConnectionOptions, connect, credsAuthenticator } from "@nats-io/transport-node";
import { afterAll, describe, expect, it } from "vitest";
import { type Event, EventStore } from "../../gen/orisun/v1/eventstore_pb.js";
import { dropSchema, freshSchema, PG_URL } from "../support/databases.js";
import { writeJwtSetup } from "../support/nats-credentials.js";
import { type OwnNatsServer, startOwnNatsServer } from "../support/nats-server.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const schemas: string[] = [];
const folders: string[] = [];
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
  for (const dir of folders) rmSync(dir, { recursive: true, force: true });
});

/** A server on its own schema, with `env` for its NATS settings. */
function orisun(env: Record<string, string>): Promise<SpawnedServer> {
  const schema = freshSchema("cred");
  schemas.push(schema);
  return spawnServer({ ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema, ...env });
}

async function ownNats(args: string[]): Promise<OwnNatsServer> {
  const nats = await startOwnNatsServer(args);
  folders.push(nats.dir);
  return nats;
}

/**
 * Subscribes, appends three events and expects them live; then checks that the server made its
 * stream on the NATS server given, which `options` let the test read.
 */
async function servesLiveEventsThrough(server: SpawnedServer, options: ConnectionOptions) {
  const api = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
  const abort = new AbortController();
  const got: Event[] = [];
  const done = (async () => {
    for await (const e of api.subscribeToEvents({ boundary: "orders" }, { signal: abort.signal })) {
      got.push(e);
    }
  })().catch(() => {});
  try {
    await new Promise((r) => setTimeout(r, 500));
    for (let i = 0; i < 3; i++) {
      await api.saveEvents({
        boundary: "orders",
        events: [{ eventId: `e${i}`, eventType: "Placed", data: "{}" }],
      });
    }
    const deadline = Date.now() + 15_000;
    while (got.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    expect(got.map((e) => e.eventId)).toEqual(["e0", "e1", "e2"]);
  } finally {
    abort.abort();
    await done;
  }
  const id = /"deployment":"([a-z2-7]{16})"/.exec(server.output())?.[1];
  const nc = await connect({ ...options, timeout: 5_000 });
  try {
    const jsm = await jetstreamManager(nc);
    // The server made its stream on this NATS server, with the credentials given: they work.
    // (Not its messages: a boundary never published starts its stream at the head the
    // publisher's first turn sees, and on a busy machine the three appends land before it; this
    // process's subscriber got them from memory. Publishing is covered by jetstream.int and
    // publish-from-memory.e2e.)
    const info = await jsm.streams.info(`ORISUN_EVENTS_${id}_orders`);
    expect(info.config.name).toBe(`ORISUN_EVENTS_${id}_orders`);
  } finally {
    await nc.close();
  }
}

/** Start-up fails with a message naming NATS and the problem, without any secret. */
async function refused(env: Record<string, string>, secrets: string[]): Promise<string> {
  const failure = await orisun(env).then(
    async (server) => {
      await server.stop();
      return "it started";
    },
    (error: Error) => error.message,
  );
  expect(failure).toMatch(/cannot connect to NATS at nats:\/\/127\.0\.0\.1:\d+ .*Authorization/);
  for (const secret of secrets) expect(failure).not.toContain(secret);
  return failure;
}

describe("NATS credentials", () => {
  it("user and password in the URL (percent-encoded); a wrong password fails start-up", async () => {
    const password = "p@ss:w/rd 42";
    const nats = await ownNats(["--user", "orisun", "--pass", password]);
    try {
      const withUser = (pass: string) =>
        nats.url.replace("//", `//orisun:${encodeURIComponent(pass)}@`);
      const server = await orisun({ ORISUN_NATS_URL: withUser(password) });
      try {
        await servesLiveEventsThrough(server, {
          servers: nats.url,
          user: "orisun",
          pass: password,
        });
        expect(server.output()).not.toContain(password);
        expect(server.output()).not.toContain(encodeURIComponent(password));
      } finally {
        await server.stop();
      }
      const message = await refused({ ORISUN_NATS_URL: withUser("wrong-1") }, ["wrong-1"]);
      expect(message).toContain('as user "orisun"');
    } finally {
      await nats.stop();
    }
  });

  it("a token in the URL; a wrong token fails start-up", async () => {
    const token = "t0ken-s3cret";
    const nats = await ownNats(["--auth", token]);
    try {
      const withToken = (t: string) => nats.url.replace("//", `//${t}@`);
      const server = await orisun({ ORISUN_NATS_URL: withToken(token) });
      try {
        await servesLiveEventsThrough(server, { servers: nats.url, token });
        expect(server.output()).not.toContain(token);
      } finally {
        await server.stop();
      }
      const message = await refused({ ORISUN_NATS_URL: withToken("wrong-2") }, ["wrong-2"]);
      expect(message).toContain("with a token");
    } finally {
      await nats.stop();
    }
  });

  it("a .creds file (operator, account and user JWTs); without it start-up fails", async () => {
    const dir = mkdtempSync(join(tmpdir(), "orisun-creds-"));
    folders.push(dir);
    const { config, creds } = writeJwtSetup(dir);
    const nats = await ownNats(["-c", config]);
    try {
      const server = await orisun({ ORISUN_NATS_URL: nats.url, ORISUN_NATS_CREDS: creds });
      try {
        const file = readFileSync(creds);
        const authenticator = credsAuthenticator(file);
        await servesLiveEventsThrough(server, { servers: nats.url, authenticator });
        const seed = /^SU[A-Z0-9]+$/m.exec(file.toString())?.[0] ?? "no seed";
        expect(server.output()).not.toContain(seed);
      } finally {
        await server.stop();
      }
      const message = await refused({ ORISUN_NATS_URL: nats.url }, []);
      expect(message).toContain("without credentials");
    } finally {
      await nats.stop();
    }
  });

  it("a missing .creds file is a configuration error", async () => {
    const failure = await orisun({
      ORISUN_NATS_URL: "nats://127.0.0.1:4222",
      ORISUN_NATS_CREDS: "/nonexistent/orisun.creds",
    }).then(
      async (server) => {
        await server.stop();
        return "it started";
      },
      (error: Error) => error.message,
    );
    expect(failure).toContain("exited with 2");
    expect(failure).toContain("ORISUN_NATS_CREDS: cannot read /nonexistent/orisun.creds");
  });
});
