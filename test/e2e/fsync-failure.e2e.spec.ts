import { join, resolve } from "node:path";
import { type Code, ConnectError } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { eventStoreClient } from "../support/clients.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { tempDir } from "../support/temp.js";

/**
 * The embedded default when the disk stops taking its WAL: test/support/fail-fsync.mjs, preloaded
 * into the server, fails every fsync with EIO from SIGUSR2 on. PostgreSQL answers the commit with
 * PANIC; PGlite then ran nothing again, and its next statement held the server's thread for good.
 */

const servers: SpawnedServer[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) await server.stop("SIGKILL");
});

async function start(env: Record<string, string>): Promise<SpawnedServer> {
  const server = await spawnServer(env);
  servers.push(server);
  return server;
}

/** The exit code, or "running" if the process has not exited within `ms`. */
function exitWithin(server: SpawnedServer, ms: number): Promise<number | null | "running"> {
  const child = server.process;
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((done) => {
    const timer = setTimeout(() => done("running"), ms);
    child.once("exit", (code) => {
      clearTimeout(timer);
      done(code);
    });
  });
}

async function logIds(server: SpawnedServer): Promise<Set<string>> {
  const { events } = await eventStoreClient(server).getEvents(
    { boundary: "orders", count: 10_000 },
    { timeoutMs: 10_000 },
  );
  return new Set(events.map((e) => e.eventId));
}

describe("the embedded default when fsync fails", () => {
  it("exits at once instead of hanging, and the next start holds every acknowledged append", async () => {
    const dataDir = join(tempDir("fsync-eio-"), "data");
    const server = await start({
      ORISUN_DATA_DIR: dataDir,
      NODE_OPTIONS: `--import=${resolve("test/support/fail-fsync.mjs")}`,
    });
    const client = eventStoreClient(server);
    const sent = new Set<string>();
    const acked = new Set<string>();
    const failures: Code[] = [];
    let writing = true;
    const writer = async (w: number) => {
      for (let i = 0; writing; i++) {
        const id = `w${w}-${i}`;
        sent.add(id);
        try {
          await client.saveEvents(
            { boundary: "orders", events: [{ eventId: id, eventType: "Placed", data: "{}" }] },
            { timeoutMs: 5_000 },
          );
          acked.add(id);
        } catch (error) {
          failures.push(ConnectError.from(error).code);
          return;
        }
      }
    };
    const writers = [0, 1, 2, 3].map(writer);
    while (acked.size < 200) await new Promise((r) => setTimeout(r, 20));

    server.process.kill("SIGUSR2");
    expect(await exitWithin(server, 15_000)).toBe(70);
    writing = false;
    await Promise.all(writers);
    expect(failures).toHaveLength(4);
    expect(server.output()).toContain("could not fsync file");
    expect(server.output()).toContain(
      "the embedded database raised PANIC and can run nothing more: exiting",
    );

    // The next start recovers from the WAL: every acknowledged append is there, and nothing that
    // was not sent.
    const again = await start({ ORISUN_DATA_DIR: dataDir });
    const log = await logIds(again);
    expect([...acked].filter((id) => !log.has(id))).toEqual([]);
    expect([...log].filter((id) => !sent.has(id))).toEqual([]);
    await eventStoreClient(again).saveEvents({
      boundary: "orders",
      events: [{ eventId: "after-restart", eventType: "Placed", data: "{}" }],
    });
    expect((await logIds(again)).has("after-restart")).toBe(true);
  });
});
