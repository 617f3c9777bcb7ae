/**
 * What the embedded store's sync costs PGlite alone, in this process: one-row INSERT commits on
 * one folder, first as PGlite ships (fsync off: the commit returns once the WAL is written), then
 * as the store opens it (the WAL fsynced before the commit returns).
 */
import { PGlite } from "@electric-sql/pglite";
import { openDurablePGlite } from "../server/store/pglite-durable.js";
import { median } from "./workloads.js";

export interface CommitCost {
  /** Median milliseconds per commit. */
  readonly shipped: number;
  readonly durable: number;
}

export async function pgliteCommitCost(dir: string, seconds: number): Promise<CommitCost> {
  const shipped = new PGlite(dir);
  const asShipped = await commits(shipped, seconds);
  await shipped.close();
  const durable = await openDurablePGlite(dir, {});
  const asDurable = await commits(durable, seconds);
  await durable.close();
  return { shipped: asShipped, durable: asDurable };
}

async function commits(db: PGlite, seconds: number): Promise<number> {
  await db.exec("CREATE TABLE IF NOT EXISTS commit_cost (n int8, pad text)");
  const times: number[] = [];
  const started = performance.now();
  while (performance.now() - started < seconds * 1_000) {
    const t = performance.now();
    await db.query("INSERT INTO commit_cost VALUES ($1, repeat('x', 200))", [times.length]);
    times.push(performance.now() - t);
  }
  return median(times);
}
