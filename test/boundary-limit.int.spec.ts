import { rmSync } from "node:fs";
import { sql } from "kysely";
import { afterEach, describe, expect, it } from "vitest";
import { EventStore, type EventStoreOptions } from "../server/store/event-store.js";
import type { ImportRequest } from "../server/store/import.js";
import type { AppendRequest } from "../server/store/types.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  GROUP_COMMIT,
  PG_URL,
} from "./support/databases.js";

function request(boundary: string, id: string): AppendRequest {
  return {
    boundary,
    events: [{ id, type: "Made", tags: [{ key: "k", value: id }], data: "{}", metadata: "" }],
  };
}

async function boundaryRows(store: EventStore): Promise<string[]> {
  const { rows } = await sql<{ name: string }>`
    SELECT name FROM orisun_boundaries ORDER BY name`.execute(store.database.db);
  return rows.map((r) => r.name);
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Opens stores on one fresh database; each call is another process on it. */
function database(kind: "pglite" | "postgres"): (maxBoundaries: number) => Promise<EventStore> {
  const dataDir = freshDataDir();
  const schema = freshSchema("bl");
  cleanups.push(async () => {
    if (kind === "postgres") await dropSchema(schema);
    rmSync(dataDir, { recursive: true, force: true });
  });
  return async (maxBoundaries) => {
    const options: EventStoreOptions = {
      url: kind === "postgres" ? PG_URL : undefined,
      schema: kind === "postgres" ? schema : "public",
      poolSize: kind === "postgres" ? 4 : 1,
      dataDir,
      onIdleError: () => {},
      groupCommit: GROUP_COMMIT,
      maxBoundaries,
    };
    const store = await EventStore.open(options);
    cleanups.push(() => store.close());
    return store;
  };
}

describe.each(["pglite", "postgres"] as const)("ORISUN_MAX_BOUNDARIES on %s", (kind) => {
  it("refuses a write that would create a boundary beyond the cap, writing nothing", async () => {
    const store = await database(kind)(3);
    for (const b of ["b1", "b2", "b3"]) await store.append(request(b, `${b}-1`));
    const refused = store.append(request("b4", "b4-1"));
    await expect(refused).rejects.toMatchObject({ kind: "limit_reached", field: "boundary" });
    await expect(refused).rejects.toThrow(/ORISUN_MAX_BOUNDARIES \(3\)/);
    expect(await boundaryRows(store)).toEqual(["b1", "b2", "b3"]);
    expect(await store.read({ boundary: "b4", query: [], count: 10, direction: "asc" })).toEqual(
      [],
    );
    // Existing boundaries keep taking writes, and the refusal holds on a retry.
    await store.append(request("b2", "b2-2"));
    await expect(store.append(request("b4", "b4-1"))).rejects.toMatchObject({
      kind: "limit_reached",
    });
    expect((await store.head("b2")).commit).toBe(2n);
  });
});

function imported(boundary: string, id: string): ImportRequest {
  return {
    boundary,
    events: [
      {
        id,
        type: "Made",
        tags: [],
        data: "{}",
        metadata: "",
        position: { commit: 1n, prepare: 1n },
        createdAt: { seconds: 1_700_000_000n, micros: 0 },
      },
    ],
  };
}

async function* stream(...messages: ImportRequest[]): AsyncGenerator<ImportRequest> {
  yield* messages;
}

describe.each(["pglite", "postgres"] as const)(
  "ORISUN_MAX_BOUNDARIES and imports on %s",
  (kind) => {
    it("counts the boundaries an import makes and refuses the import that goes beyond", async () => {
      const open = database(kind);
      const store = await open(3);
      await store.append(request("b1", "b1-1"));
      const refused = store.import(
        stream(imported("b2", "x"), imported("b3", "y"), imported("b4", "z")),
      );
      await expect(refused).rejects.toMatchObject({ kind: "limit_reached", field: "boundary" });
      await expect(refused).rejects.toThrow(/makes 3 new boundaries \(the first "b2"\)/);
      expect(await boundaryRows(store)).toEqual(["b1"]);
      // More new boundaries than the cap at all: refused at the first one too many.
      const many = store.import(
        stream(...["b2", "b3", "b4", "b5", "b6"].map((b) => imported(b, `${b}-x`))),
      );
      await expect(many).rejects.toMatchObject({
        kind: "limit_reached",
        field: "messages[3].boundary",
      });
      expect(await boundaryRows(store)).toEqual(["b1"]);
      const result = await store.import(stream(imported("b2", "x"), imported("b3", "y")));
      expect(result.imported).toBe(2);
      expect(await boundaryRows(store)).toEqual(["b1", "b2", "b3"]);
      // Known to this process now, and counted by the next creation anywhere.
      await store.append(request("b2", "b2-2"));
      await expect(store.append(request("b4", "b4-1"))).rejects.toMatchObject({
        kind: "limit_reached",
      });
    });
  },
);

describe("ORISUN_MAX_BOUNDARIES across processes", () => {
  it("holds exactly under concurrent creations from two processes", async () => {
    const open = database("postgres");
    const [one, two] = [await open(5), await open(5)];
    const names = Array.from({ length: 20 }, (_, i) => `c${i}`);
    const results = await Promise.allSettled(
      names.map((b, i) => (i % 2 === 0 ? one : two).append(request(b, `${b}-1`))),
    );
    const made = results.filter((r) => r.status === "fulfilled").length;
    const refused = results.filter(
      (r) => r.status === "rejected" && (r.reason as { kind?: string }).kind === "limit_reached",
    ).length;
    expect([made, refused]).toEqual([5, 15]);
    expect((await boundaryRows(one)).length).toBe(5);
  });
});
