import type { Query } from "./types.js";

/** Most queries remembered; past it the oldest is forgotten (it is probed again when next read). */
export const DENSE_QUERIES = 10_000;
/** Longer keys are not remembered: such a query is probed on every read. */
const MAX_KEY_LENGTH = 1_024;

/**
 * The queries whose probe finds more than SPARSE_MATCHES events of a boundary (query-sql.ts), so
 * that their reads skip the probe and go to the planner directly. A log only grows, so once dense a
 * query stays dense; forgetting one costs one probe. Bounded: DENSE_QUERIES keys of at most
 * MAX_KEY_LENGTH characters, the oldest forgotten first.
 */
export class DenseQueries {
  private readonly keys = new Set<string>();

  constructor(private readonly limit = DENSE_QUERIES) {}

  has(boundary: string, query: Query): boolean {
    return this.keys.has(key(boundary, query));
  }

  add(boundary: string, query: Query): void {
    const k = key(boundary, query);
    if (k.length > MAX_KEY_LENGTH || this.keys.has(k)) return;
    if (this.keys.size >= this.limit) {
      const oldest = this.keys.values().next();
      if (!oldest.done) this.keys.delete(oldest.value);
    }
    this.keys.add(k);
  }

  get size(): number {
    return this.keys.size;
  }
}

const key = (boundary: string, query: Query) => JSON.stringify([boundary, query]);
