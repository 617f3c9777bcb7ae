import { type Kysely, sql, type Transaction } from "kysely";
import { databaseError } from "./database-errors.js";
import { StoreError } from "./errors.js";
import { matches } from "./matcher.js";
import { violatedConditions } from "./query-sql.js";
import { type Database, encodeTag } from "./schema.js";
import {
  type AppendRequest,
  comparePositions,
  type EventToAppend,
  type Position,
} from "./types.js";

export interface GroupCommitLimits {
  /** Most events one transaction takes (a single larger request still goes alone). */
  readonly maxEvents: number;
  /** Most data+metadata bytes one transaction takes (likewise). */
  readonly maxBytes: number;
}

interface Pending {
  readonly request: AppendRequest;
  readonly bytes: number;
  readonly resolve: (position: Position) => void;
  readonly reject: (error: unknown) => void;
}

interface PositionedEvent extends EventToAppend {
  readonly position: Position;
}

interface Accepted {
  readonly ids: ReadonlySet<string>;
  readonly events: readonly PositionedEvent[];
  readonly last: Position;
}

type Outcome = { readonly ok: Position } | { readonly error: StoreError };

/** Notified after a transaction committed, with the boundary's new last position. */
export type CommitListener = (boundary: string, head: Position) => void;

/**
 * The write path. Appends to one boundary are serialised by a row lock on its orisun_boundaries
 * row, held until commit, so positions follow commit order across every process on the database.
 * To win the throughput back, requests that arrive while a boundary's transaction runs wait in
 * its queue and go together into the next one (group commit): each is checked in arrival order
 * against the database and against the requests accepted before it, and a failed check rejects
 * only its own request. An idle boundary commits a lone request at once: there is no timer.
 */
export class Appender {
  private readonly queues = new Map<string, Pending[]>();

  constructor(
    private readonly db: Kysely<Database>,
    private readonly limits: GroupCommitLimits,
    private readonly onCommit: CommitListener,
  ) {}

  append(request: AppendRequest): Promise<Position> {
    return new Promise<Position>((resolve, reject) => {
      const bytes = request.events.reduce((n, e) => n + e.data.length + e.metadata.length, 0);
      const queue = this.queues.get(request.boundary);
      const pending = { request, bytes, resolve, reject };
      if (queue) {
        queue.push(pending);
        return;
      }
      this.queues.set(request.boundary, [pending]);
      void this.drain(request.boundary);
    });
  }

  /** Runs one transaction after another while the boundary has waiting requests. */
  private async drain(boundary: string): Promise<void> {
    for (;;) {
      const queue = this.queues.get(boundary) ?? [];
      if (queue.length === 0) {
        this.queues.delete(boundary);
        return;
      }
      const batch = this.takeBatch(queue);
      const failure = await this.run(boundary, batch);
      if (failure === undefined) continue;
      if (batch.length > 1 && failure.kind === "internal") {
        // One request the database refused (beyond what validation catches) must not sink the
        // others: run each alone, so that only the culprit fails.
        for (const pending of batch) {
          const alone = await this.run(boundary, [pending]);
          if (alone) pending.reject(alone);
        }
      } else {
        for (const pending of batch) pending.reject(failure);
      }
    }
  }

  /** One transaction for the batch; settles every request unless it returns the failure. */
  private async run(boundary: string, batch: readonly Pending[]): Promise<StoreError | undefined> {
    let result: Awaited<ReturnType<Appender["commitBatch"]>>;
    try {
      result = await this.db.transaction().execute((trx) => this.commitBatch(trx, boundary, batch));
    } catch (error) {
      return databaseError(error);
    }
    batch.forEach((pending, i) => {
      const outcome = result.outcomes[i];
      if (outcome && "ok" in outcome) pending.resolve(outcome.ok);
      else pending.reject(outcome?.error ?? new StoreError("internal", "no outcome"));
    });
    if (result.head) this.onCommit(boundary, result.head);
    return undefined;
  }

  private takeBatch(queue: Pending[]): Pending[] {
    let events = 0;
    let bytes = 0;
    let n = 0;
    for (const pending of queue) {
      events += pending.request.events.length;
      bytes += pending.bytes;
      if (n > 0 && (events > this.limits.maxEvents || bytes > this.limits.maxBytes)) break;
      n++;
    }
    return queue.splice(0, n);
  }

  private async commitBatch(
    trx: Transaction<Database>,
    boundary: string,
    batch: readonly Pending[],
  ): Promise<{ outcomes: Outcome[]; head: Position | undefined }> {
    // Creates the boundary on its first write and, either way, locks its row until commit.
    const lock = await sql<{ last_commit: string; last_prepare: string }>`
      INSERT INTO orisun_boundaries (name) VALUES (${boundary})
      ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
      RETURNING last_commit, last_prepare`.execute(trx);
    const row = lock.rows[0];
    if (!row) throw new StoreError("internal", "boundary row was not returned");
    let commit = BigInt(row.last_commit);
    let prepare = BigInt(row.last_prepare);

    const stored = await storedCommits(trx, boundary, batch);
    const violated = await violatedConditions(
      trx,
      boundary,
      batch.map((p) => p.request.condition),
    );
    const accepted: Accepted[] = [];
    const outcomes: Outcome[] = [];
    for (const [index, { request }] of batch.entries()) {
      const ids = request.events.map((e) => e.id);
      const retry = sameRequest(ids, stored, accepted);
      if (retry !== undefined) {
        outcomes.push(retry);
        continue;
      }
      const condition = request.condition;
      if (condition) {
        const seenInBatch = accepted.some((a) =>
          a.events.some(
            (e) => comparePositions(e.position, condition.after) > 0 && matches(e, condition.query),
          ),
        );
        if (seenInBatch || violated.has(index)) {
          outcomes.push({
            error: new StoreError(
              "condition_failed",
              `an event matching the condition exists after position {${condition.after.commit}, ${condition.after.prepare}}`,
              "consistency_condition",
            ),
          });
          continue;
        }
      }
      commit += 1n;
      const events = request.events.map((e) => {
        prepare += 1n;
        return { ...e, position: { commit, prepare } };
      });
      const last = { commit, prepare };
      accepted.push({ ids: new Set(ids), events, last });
      outcomes.push({ ok: last });
    }

    if (accepted.length === 0) return { outcomes, head: undefined };
    const rows = accepted.flatMap((a) =>
      a.events.map((e) => ({
        c: e.position.commit.toString(),
        p: e.position.prepare.toString(),
        id: e.id,
        type: e.type,
        tags: [...new Set(e.tags.map(encodeTag))],
        data: e.data,
        meta: e.metadata,
      })),
    );
    await sql`
      INSERT INTO orisun_events
        (boundary, commit_position, prepare_position, event_id, event_type, tags, data, metadata)
      SELECT ${boundary}, x.c, x.p, x.id, x.type, x.tags, x.data::json, NULLIF(x.meta, '')::json
      FROM json_to_recordset(${JSON.stringify(rows)}::json)
        AS x(c int8, p int8, id text, type text, tags text[], data text, meta text)`.execute(trx);
    await trx
      .updateTable("orisun_boundaries")
      .set({ last_commit: commit.toString(), last_prepare: prepare.toString() })
      .where("name", "=", boundary)
      .execute();
    // Delivered at commit: wakes the live publishers of every process. The payload carries the
    // schema (the search_path of every pooled connection), so deployments sharing the database
    // do not wake each other.
    await sql`SELECT pg_notify('orisun_commits', current_schema() || '/' || ${boundary})`.execute(
      trx,
    );
    return { outcomes, head: { commit, prepare } };
  }
}

interface StoredCommits {
  /** event_id -> commit_position of the events already in the log. */
  readonly commitOf: ReadonlyMap<string, bigint>;
  /** commit_position -> number of events and last position, for the commits above. */
  readonly commits: ReadonlyMap<bigint, { size: number; last: Position }>;
}

async function storedCommits(
  trx: Transaction<Database>,
  boundary: string,
  batch: readonly Pending[],
): Promise<StoredCommits> {
  const ids = batch.flatMap((p) => p.request.events.map((e) => e.id));
  const found = await trx
    .selectFrom("orisun_events")
    .select(["event_id", "commit_position"])
    .where("boundary", "=", boundary)
    .where(sql<boolean>`event_id = ANY(${ids}::text[])`)
    .execute();
  const commitOf = new Map(found.map((r) => [r.event_id, BigInt(r.commit_position)]));
  const commits = new Map<bigint, { size: number; last: Position }>();
  if (found.length > 0) {
    const sizes = await trx
      .selectFrom("orisun_events")
      .select([
        "commit_position",
        sql<string>`count(*)::text`.as("size"),
        sql<string>`max(prepare_position)::text`.as("last"),
      ])
      .where("boundary", "=", boundary)
      .where(
        sql<boolean>`commit_position = ANY(${[...new Set(commitOf.values())].map(String)}::int8[])`,
      )
      .groupBy("commit_position")
      .execute();
    for (const s of sizes) {
      const c = BigInt(s.commit_position);
      commits.set(c, { size: Number(s.size), last: { commit: c, prepare: BigInt(s.last) } });
    }
  }
  return { commitOf, commits };
}

/**
 * An exact retry (every id stored by one earlier request, in the log or earlier in this batch)
 * answers that request's position; ids partly stored, or stored by other requests, are a conflict;
 * all-new ids give undefined.
 */
function sameRequest(
  ids: readonly string[],
  stored: StoredCommits,
  accepted: readonly Accepted[],
): Outcome | undefined {
  const inLog = ids.filter((id) => stored.commitOf.has(id));
  const inBatch = ids.filter((id) => accepted.some((a) => a.ids.has(id)));
  if (inLog.length === 0 && inBatch.length === 0) return undefined;
  if (inLog.length === ids.length) {
    const commits = new Set(inLog.map((id) => stored.commitOf.get(id)));
    const [only] = commits;
    const commit = only === undefined ? undefined : stored.commits.get(only);
    if (commits.size === 1 && commit && commit.size === ids.length) return { ok: commit.last };
  }
  if (inBatch.length === ids.length) {
    const earlier = accepted.find((a) => a.ids.has(ids[0] ?? ""));
    if (earlier && earlier.ids.size === ids.length && ids.every((id) => earlier.ids.has(id))) {
      return { ok: earlier.last };
    }
  }
  const taken = [...new Set([...inLog, ...inBatch])];
  return {
    error: new StoreError(
      "already_exists",
      `${taken.length} of ${ids.length} event ids are already stored by another request (first: "${taken[0]}")`,
      "events.event_id",
    ),
  };
}
