import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { statfs } from "node:fs/promises";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { Admin } from "../../gen/orisun/v1/admin_pb.js";
import { eventStoreClient, failure, readAllEvents } from "../support/clients.js";
import { metric } from "../support/cluster.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { tempDir } from "../support/temp.js";

/**
 * The embedded default on a disk that fills up. Without a guard, PGlite's PostgreSQL that could not
 * write its WAL spun in XLogFlush on the server's one thread: no call, health probe or SIGTERM was
 * answered again. The disk here is a tmpfs of a set size, so the test needs to be allowed to mount
 * (root, as CI runs); elsewhere that case is skipped and says why.
 */

const MiB = 1024 * 1024;
const TiB = 1024 ** 4;
const REFUSED =
  /^the data folder's disk has [\d.]+ MiB free, under ORISUN_DATA_MIN_FREE_BYTES \(48\.0 MiB\): writes are refused until space is freed; nothing was written \(request [\w-]+\)$/;

function canMount(): boolean {
  const probe = tempDir("mount-probe-");
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], { stdio: "ignore" });
    execFileSync("umount", [probe], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const servers: SpawnedServer[] = [];
const mounts: string[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) await server.stop("SIGKILL");
  for (const dir of mounts.splice(0)) execFileSync("umount", ["-l", dir], { stdio: "ignore" });
});

async function start(env: Record<string, string>): Promise<SpawnedServer> {
  const server = await spawnServer(env);
  servers.push(server);
  return server;
}

/** An event whose data does not compress: TOAST would otherwise shrink it to nothing. */
const event = (id: string) => ({
  eventId: id,
  eventType: "Filled",
  tags: [{ key: "filler", value: id.split("-")[0] ?? "" }],
  data: JSON.stringify({ noise: randomBytes(6_000).toString("base64") }),
});

describe("the embedded default on a nearly full disk", () => {
  it("does not start when its disk has less than ORISUN_DATA_MIN_FREE_BYTES free, and says so", async () => {
    const dir = tempDir("disk-low-");
    const stats = await statfs(dir);
    const minimum = stats.bavail * stats.bsize + TiB;
    await expect(
      spawnServer({ ORISUN_DATA_DIR: dir, ORISUN_DATA_MIN_FREE_BYTES: String(minimum) }),
    ).rejects.toThrow(
      /failed to start: .*the data folder's disk has [\d.]+ MiB free, under ORISUN_DATA_MIN_FREE_BYTES/,
    );
  });

  it.skipIf(!canMount())(
    "refuses appends with RESOURCE_EXHAUSTED before the disk is full; reads, health and shutdown go on, nothing acknowledged is lost, and appends go on once there is room",
    async () => {
      const mount = tempDir("tmpfs-");
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=140m", "tmpfs", mount]);
      mounts.push(mount);
      const dataDir = join(mount, "data");
      mkdirSync(dataDir);
      const env = { ORISUN_DATA_DIR: dataDir, ORISUN_DATA_MIN_FREE_BYTES: String(48 * MiB) };
      const server = await start(env);
      const client = eventStoreClient(server);

      // Four writers fill the disk until each is refused.
      const acked = new Set<string>();
      const refusals: ConnectError[] = [];
      const writer = async (w: number) => {
        for (let i = 0; ; i++) {
          const id = `w${w}-${i}`;
          try {
            // A deadline: a server stuck on a full disk would never answer.
            await client.saveEvents(
              { boundary: "fill", events: [event(id)] },
              { timeoutMs: 15_000 },
            );
            acked.add(id);
          } catch (error) {
            refusals.push(ConnectError.from(error));
            return;
          }
        }
      };
      await Promise.all([0, 1, 2, 3].map(writer));
      expect(refusals.map((e) => e.code)).toEqual(Array(4).fill(Code.ResourceExhausted));
      for (const refused of refusals) expect(refused.rawMessage).toMatch(REFUSED);
      expect(acked.size).toBeGreaterThan(1_000);
      const { bavail, bsize } = await statfs(mount);
      expect(bavail * bsize).toBeGreaterThan(16 * MiB);

      // Still serving: health, reads, and the log holds exactly what was acknowledged.
      const ready = await fetch(`${server.url}/readyz`, { signal: AbortSignal.timeout(5_000) });
      expect(ready.status).toBe(200);
      const ids = async (s: SpawnedServer) =>
        new Set((await readAllEvents(eventStoreClient(s), "fill")).map((e) => e.eventId));
      expect(await ids(server)).toEqual(acked);
      expect(server.output()).toContain("the data folder's disk is nearly full");
      // The metrics say so, for an alert before the refusals.
      expect(await metric(server, "orisun_data_disk_min_free_bytes")).toBe(48 * MiB);
      const freeMetric = await metric(server, "orisun_data_disk_free_bytes");
      expect(freeMetric).toBeGreaterThan(16 * MiB);
      expect(freeMetric).toBeLessThan(48 * MiB);
      // Another append is refused the same way, and so is an import (a restore); neither changes anything.
      const again = await failure(client.saveEvents({ boundary: "fill", events: [event("x-0")] }));
      expect(again.code).toBe(Code.ResourceExhausted);
      const admin = createClient(Admin, createGrpcTransport({ baseUrl: server.url }));
      const restore = await failure(
        admin.importEvents(
          (async function* () {
            yield {
              boundary: "restored",
              events: [
                {
                  ...event("imported-0"),
                  position: { commitPosition: 1n, preparePosition: 1n },
                  dateCreated: { seconds: 1_700_000_000n, nanos: 0 },
                },
              ],
            };
            yield { commit: true };
          })(),
        ),
      );
      expect(restore.code).toBe(Code.ResourceExhausted);
      expect(restore.rawMessage).toMatch(REFUSED);
      expect(await ids(server)).toEqual(acked);
      const boundaries = await admin.listBoundaries({});
      expect(boundaries.boundaries.map((b) => b.name)).toEqual(["fill"]);

      // Room again: appends go on within the guard's next read of the disk.
      execFileSync("mount", ["-o", "remount,size=300m", mount]);
      const deadline = Date.now() + 10_000;
      for (;;) {
        try {
          await client.saveEvents({ boundary: "fill", events: [event("after-0")] });
          break;
        } catch (error) {
          expect(ConnectError.from(error).code).toBe(Code.ResourceExhausted);
          if (Date.now() > deadline) throw error;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      acked.add("after-0");
      expect(server.output()).toContain("the data folder's disk has room again");
      expect(await metric(server, "orisun_data_disk_free_bytes")).toBeGreaterThan(48 * MiB);

      // Shuts down when asked, and starts again on its folder with every acknowledged event.
      expect(await server.stop("SIGTERM")).toBe(0);
      servers.splice(servers.indexOf(server), 1);
      const restarted = await start(env);
      expect(await ids(restarted)).toEqual(acked);
    },
  );
});
