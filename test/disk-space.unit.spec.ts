import { statfs } from "node:fs/promises";
import { tmpdir } from "node:os";
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { toConnectError } from "../server/api/errors.js";
import { databaseError } from "../server/store/database-errors.js";
import { DiskSpaceGuard } from "../server/store/disk-space.js";
import { StoreError } from "../server/store/errors.js";

/** The guard and the database's own disk_full, against the real file system of the temp folder. */

const TiB = 1024 ** 4;

async function freeBytes(dir: string): Promise<number> {
  const stats = await statfs(dir);
  return stats.bavail * stats.bsize;
}

function refusal(guard: DiskSpaceGuard): StoreError {
  try {
    guard.check();
  } catch (error) {
    if (error instanceof StoreError) return error;
    throw error;
  }
  throw new Error("expected check() to refuse");
}

describe("DiskSpaceGuard", () => {
  it("refuses writes while the disk has less than the minimum free, naming the setting and both amounts", async () => {
    const dir = tmpdir();
    const changes: boolean[] = [];
    const guard = await DiskSpaceGuard.start({
      dir,
      minFreeBytes: (await freeBytes(dir)) + TiB,
      onChange: (low) => changes.push(low),
    });
    try {
      const error = refusal(guard);
      expect(error.kind).toBe("out_of_space");
      expect(error.message).toMatch(
        /^the data folder's disk has [\d.]+ MiB free, under ORISUN_DATA_MIN_FREE_BYTES \([\d.]+ MiB\): writes are refused until space is freed; nothing was written$/,
      );
      expect(changes).toEqual([true]);
      const connect = toConnectError(error, undefined, "r1", "SaveEvents");
      expect(connect.code).toBe(Code.ResourceExhausted);
      expect(connect.rawMessage).toBe(`${error.message} (request r1)`);
    } finally {
      guard.close();
    }
  });

  it("lets writes through with room to spare, and reads the free space again after a sixteenth of the minimum written", async () => {
    const dir = tmpdir();
    const guard = await DiskSpaceGuard.start({
      dir,
      minFreeBytes: 16 * 1024,
      intervalMs: 3_600_000,
    });
    try {
      expect(() => guard.check()).not.toThrow();
      expect(guard.free).toBeGreaterThan(0);
      // Poisons the last reading: only a new read can bring back the real number.
      (guard as unknown as { freeBytes: number }).freeBytes = -1;
      guard.admit(500);
      await new Promise((r) => setTimeout(r, 50));
      expect(guard.free).toBe(-1);
      guard.admit(600); // 1,100 bytes: past 16 KiB / 16
      await guard.refresh();
      expect(guard.free).toBeGreaterThan(0);
    } finally {
      guard.close();
    }
  });

  it("with a minimum of 0 never reads the disk and never refuses", async () => {
    const guard = await DiskSpaceGuard.start({ dir: "/no/such/folder", minFreeBytes: 0 });
    try {
      expect(() => guard.check()).not.toThrow();
      expect(guard.free).toBe(Number.POSITIVE_INFINITY);
    } finally {
      guard.close();
    }
  });
});

describe("PostgreSQL's disk_full (53100)", () => {
  it("is RESOURCE_EXHAUSTED saying the database's disk is full and nothing was written", () => {
    const driverError = Object.assign(
      new Error('could not extend file "base/5/16419": No space left on device'),
      { code: "53100" },
    );
    const error = databaseError(driverError);
    expect(error.kind).toBe("out_of_space");
    expect(error.cause).toBe(driverError);
    const connect = toConnectError(error, undefined, "r2", "SaveEvents");
    expect(connect.code).toBe(Code.ResourceExhausted);
    expect(connect.rawMessage).toBe(
      "the database's disk is full: nothing was written; free space on it, then retry (request r2)",
    );
  });
});
