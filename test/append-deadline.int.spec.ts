import { rmSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { EventStore } from "../server/store/event-store.js";
import type { AppendRequest } from "../server/store/types.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  GROUP_COMMIT,
  PG_URL,
} from "./support/databases.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function request(id: string): AppendRequest {
  return {
    boundary: "deadline",
    events: [{ id, type: "Made", tags: [], data: "{}", metadata: "" }],
  };
}

describe.each(["pglite", "postgres"] as const)("an append's deadline on %s", (kind) => {
  it("passing while the pool has no connection for it: not sent, nothing is written", async () => {
    const schema = freshSchema("deadline");
    const dataDir = freshDataDir();
    cleanups.push(async () => {
      if (kind === "postgres") await dropSchema(schema);
      rmSync(dataDir, { recursive: true, force: true });
    });
    const store = await EventStore.open({
      url: kind === "postgres" ? PG_URL : undefined,
      schema: kind === "postgres" ? schema : "public",
      poolSize: 1,
      dataDir,
      onIdleError: () => {},
      groupCommit: GROUP_COMMIT,
    });
    cleanups.push(() => store.close());
    await store.append(request("first"));
    // Another transaction holds the pool's one connection.
    let release = () => {};
    const holding = store.database.db
      .transaction()
      .execute(() => new Promise<void>((done) => (release = done)));
    await sleep(100);
    const late = store.append(request("late"), { signal: AbortSignal.timeout(300) });
    await expect(late).rejects.toMatchObject({ kind: "deadline_exceeded" });
    await expect(late).rejects.toThrow(/before the append started; nothing was written/);
    release();
    await holding;
    // The batch that held the request ran once the connection came back: it wrote nothing.
    await store.append(request("after"));
    const events = await store.read({
      boundary: "deadline",
      query: [],
      count: 10,
      direction: "asc",
    });
    expect(events.map((e) => e.id)).toEqual(["first", "after"]);
  });
});
