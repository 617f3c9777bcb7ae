import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fromJsonString } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { Admin } from "../../gen/orisun/v1/admin_pb.js";
import { type Event, EventSchema, EventStore } from "../../gen/orisun/v1/eventstore_pb.js";
import { runCli } from "../support/cli.js";
import { readAllEvents } from "../support/clients.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { seedEvents } from "../support/seed.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { tempDir } from "../support/temp.js";

const EVENTS = 100_000;
const SMALL = 1_234;

interface Target {
  readonly name: string;
  /** A fresh, empty store each call. */
  env(): Record<string, string>;
}

const schemas: string[] = [];
const targets: Target[] = [
  {
    name: "PostgreSQL",
    env: () => {
      const schema = freshSchema("backup");
      schemas.push(schema);
      return { ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema };
    },
  },
  { name: "PGlite", env: () => ({ ORISUN_DATA_DIR: freshDataDir() }) },
];

afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
});

function readLines(path: string): Event[] {
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => fromJsonString(EventSchema, line));
}

describe.each(targets)("export, then import into an empty store ($name)", (target) => {
  const servers: SpawnedServer[] = [];
  afterAll(async () => {
    for (const server of servers) await server.stop();
  });

  // Seeding, two exports and an import of 100,000 events: minutes on PGlite on a busy machine.
  it(`carries ${EVENTS} events over with every field equal`, { timeout: 600_000 }, async () => {
    const source = await spawnServer(target.env());
    servers.push(source);
    const client = createClient(EventStore, createGrpcTransport({ baseUrl: source.url }));
    await seedEvents(client, "orders", EVENTS, 5_000);
    await seedEvents(client, "users", SMALL, 7);
    const dir = tempDir("orisun-backup-");
    const file = join(dir, "all.ndjson");

    const exported = await runCli(["export", "--out", file], { env: { ORISUN_URL: source.url } });
    expect(exported.stderr).toMatch(
      new RegExp(`exported ${EVENTS + SMALL} events .* from 2 boundaries`),
    );
    expect(exported.code).toBe(0);
    const lines = readLines(file);
    // The export is the log, field by field (boundaries by name, each in position order).
    expect(lines).toEqual([
      ...(await readAllEvents(client, "orders")),
      ...(await readAllEvents(client, "users")),
    ]);

    const restored = await spawnServer(target.env());
    servers.push(restored);
    const imported = await runCli(["import", file, "--url", restored.url]);
    expect(imported.stderr).toMatch(
      new RegExp(`imported ${EVENTS + SMALL} events .* into 2 boundaries`),
    );
    expect(imported.code).toBe(0);

    const again = join(dir, "again.ndjson");
    expect((await runCli(["export", "--url", restored.url, "--out", again])).code).toBe(0);
    expect(readLines(again)).toEqual(lines);
    expect(readFileSync(again, "utf8")).toBe(readFileSync(file, "utf8"));

    // Heads and counts agree too, so appends after the restore continue where the source would.
    const before = await createClient(
      Admin,
      createGrpcTransport({ baseUrl: source.url }),
    ).listBoundaries({});
    const after = await createClient(
      Admin,
      createGrpcTransport({ baseUrl: restored.url }),
    ).listBoundaries({});
    expect(after.boundaries.map((b) => [b.name, b.head, b.eventCount])).toEqual(
      before.boundaries.map((b) => [b.name, b.head, b.eventCount]),
    );
  });
});
