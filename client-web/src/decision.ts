import type { Client } from "@connectrpc/connect";
import type { Event, EventStore, Position, Query, Tag } from "../../gen/orisun/v1/eventstore_pb.js";
import { Code, ConnectError, isConditionFailed } from "./errors.js";
import { type EventInput, type QueryInput, toEventToSave, toQuery } from "./query.js";
import { uuidv7 } from "./uuid.js";

/** An event as a projection folds it: `data` parsed from JSON and typed as the projection says. */
export interface DecisionEvent<D = unknown> {
  readonly id: string;
  readonly type: string;
  readonly tags: readonly Tag[];
  /** Parsed JSON, typed as declared: the library does not check its shape. */
  readonly data: D;
  readonly position: Position;
}

/** What one part of a decision depends on: the events it reads and how it folds them into a state. */
export interface Projection<S> {
  readonly initial: S;
  readonly query: QueryInput | Query;
  readonly fold: (state: S, event: DecisionEvent) => S;
}

/**
 * A projection whose events' `data` is declared as `D`: `projection<number, { seats: number }>(…)`.
 * Without `D` the fold sees `unknown` data.
 */
export function projection<S, D = unknown>(spec: {
  readonly initial: S;
  readonly query: QueryInput | Query;
  readonly fold: (state: S, event: DecisionEvent<D>) => S;
}): Projection<S> {
  return {
    initial: spec.initial,
    query: spec.query,
    fold: (state, event) => spec.fold(state, event as DecisionEvent<D>),
  };
}

/** Several projections read together, from one snapshot, for one decision. */
export interface DecisionModel<S extends object> {
  readonly projections: { readonly [K in keyof S]: Projection<S[K]> };
}

/**
 * `compose({ course: courseCapacity(id), student: studentLimit(id) })`: the state is inferred as
 * `{ course: …; student: … }` from each projection's state.
 */
export function compose<S extends object>(
  projections: {
    readonly [K in keyof S]: Projection<S[K]>;
  },
): DecisionModel<S> {
  return { projections };
}

/** The state a model (or a projection) folds to. */
export type StateOf<M> =
  M extends DecisionModel<infer S> ? S : M extends Projection<infer S> ? S : never;

export interface DecideOptions {
  /** The boundary to read and append in; default: the client's. */
  readonly boundary?: string;
  /** Tries before giving up on conflicts and lost connections; default 10. */
  readonly maxAttempts?: number;
  /** Delay before the n-th retry: random in [0, min(maxMs, initialMs × 2^(n-1))]; default 10 ms / 1 s. */
  readonly backoff?: { readonly initialMs?: number; readonly maxMs?: number };
  /** Events read per page (all queries together, at most 10,000); default 1,000. */
  readonly pageSize?: number;
  readonly signal?: AbortSignal;
  /** Per call (each read page and each append), not for the whole decision. */
  readonly timeoutMs?: number;
}

export interface Decided<S> {
  /** The state the handler decided on, in the last attempt. */
  readonly state: S;
  /** The events appended, with the ids they were stored under; empty when the handler returned none. */
  readonly events: readonly EventInput[];
  /** The position of the last event appended; undefined when nothing was appended. */
  readonly position: Position | undefined;
  /** The head the decision read at: nothing matching the model changed between it and the append. */
  readonly head: Position;
  /** 1 when the first try went through. */
  readonly attempts: number;
}

/** The handler's verdict: events to append, or nothing to append (`undefined`, `[]`). */
export type Verdict = readonly EventInput[] | undefined;

const MAX_PAGE = 10_000;

/**
 * A DCB command handler: reads the model's queries at one head (every page at that head), folds
 * them, asks `handler` what to append, and appends on the condition that nothing matching any of
 * the queries was stored after the head. A refused condition means someone else decided first:
 * it reads and decides again, up to `maxAttempts`, with jittered backoff. An append whose outcome
 * is unknown (the connection broke) is sent again unchanged: event ids are fixed before the first
 * try and reused by every try, and the server answers an exact retry of a stored append with its
 * original position, so a decision is never appended twice.
 */
export async function decide<S extends object>(
  rpc: Client<typeof EventStore>,
  boundary: string,
  model: DecisionModel<S>,
  handler: (state: S) => Verdict | Promise<Verdict>,
  options: DecideOptions = {},
): Promise<Decided<S>> {
  const maxAttempts = options.maxAttempts ?? 10;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1) {
    throw new RangeError(`maxAttempts: must be a positive integer, got ${maxAttempts}`);
  }
  const pageSize = options.pageSize ?? 1_000;
  if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_PAGE) {
    throw new RangeError(`pageSize: must be an integer from 1 to ${MAX_PAGE}, got ${pageSize}`);
  }
  const keys = Object.keys(model.projections) as (keyof S & string)[];
  if (keys.length === 0) throw new RangeError("model: must have at least one projection");
  const queries = keys.map((key) => toQuery(model.projections[key].query));
  const condition = combine(queries);
  const call = { signal: options.signal, timeoutMs: options.timeoutMs };
  // Fixed once for the whole decision: the i-th event of every try gets the i-th id.
  const ids: string[] = [];
  const idAt = (i: number) => {
    ids[i] ??= uuidv7();
    return ids[i];
  };

  let lastError: unknown;
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    if (attempt > 1) await sleep(delay(attempt - 1, options.backoff), options.signal);
    const { state, head } = await readModel(rpc, boundary, model, keys, queries, pageSize, call);
    const verdict = (await handler(state)) ?? [];
    if (verdict.length === 0) {
      return { state, events: [], position: undefined, head, attempts: attempt };
    }
    const events = verdict.map((e, i) => ({ ...e, id: e.id ?? idAt(i) }));
    const request = {
      boundary,
      events: events.map(toEventToSave),
      consistencyCondition: { consistencyMarker: head, criteria: condition },
    };
    // The same request, again, while its outcome is unknown; a verdict re-read after a refusal.
    for (; attempt <= maxAttempts; attempt++) {
      try {
        const result = await rpc.saveEvents(request, call);
        return { state, events, position: result.logPosition, head, attempts: attempt };
      } catch (error) {
        lastError = error;
        if (isConditionFailed(error)) break;
        if (!outcomeUnknown(error) || attempt === maxAttempts) throw error;
        await sleep(delay(attempt, options.backoff), options.signal);
      }
    }
  }
  throw new ConnectError(
    `decide: gave up after ${maxAttempts} attempts, each refused because events matching the model were appended after its read (raise maxAttempts, or make the model's queries narrower)`,
    Code.Aborted,
    undefined,
    undefined,
    lastError,
  );
}

/** Reads every page of every query at the head of the first page, and folds each projection. */
async function readModel<S extends object>(
  rpc: Client<typeof EventStore>,
  boundary: string,
  model: DecisionModel<S>,
  keys: readonly (keyof S & string)[],
  queries: readonly Query[],
  pageSize: number,
  call: { signal?: AbortSignal | undefined; timeoutMs?: number | undefined },
): Promise<{ state: S; head: Position }> {
  const state = {} as S;
  for (const key of keys) state[key] = model.projections[key].initial;
  let pending = keys.map((key, i) => ({
    key,
    query: queries[i],
    after: undefined as Position | undefined,
  }));
  let head: Position | undefined;
  while (pending.length > 0) {
    const count = Math.max(1, Math.floor(pageSize / pending.length));
    const response = await rpc.readForDecision(
      {
        boundary,
        at: head,
        queries: pending.map((p) => ({ criteria: p.query, afterPosition: p.after, count })),
      },
      call,
    );
    head ??= response.head;
    if (!head) throw new Error("ReadForDecision answered without a head");
    const next: typeof pending = [];
    for (const [i, p] of pending.entries()) {
      const result = response.results[i];
      if (!result) throw new Error(`ReadForDecision answered no result for query ${i}`);
      const projection = model.projections[p.key];
      for (const event of result.events)
        state[p.key] = projection.fold(state[p.key], decoded(event));
      const last = result.events.at(-1)?.position;
      if (result.hasMore && last) next.push({ ...p, after: last });
    }
    pending = next;
  }
  if (!head) throw new Error("model: must have at least one projection");
  return { state, head };
}

/** The condition of the append: any event matching any of the model's queries. */
function combine(queries: readonly Query[]): Query {
  // A query with no criteria matches every event, and so must the condition.
  if (queries.some((q) => q.criteria.length === 0)) return toQuery([]);
  return toQuery(queries.flatMap((q) => q.criteria));
}

function decoded(event: Event): DecisionEvent {
  let data: unknown;
  try {
    data = JSON.parse(event.data);
  } catch (error) {
    throw new Error(`event ${event.eventId}: data is not JSON (${String(error)})`);
  }
  if (!event.position) throw new Error(`event ${event.eventId} came without a position`);
  return {
    id: event.eventId,
    type: event.eventType,
    tags: event.tags,
    data,
    position: event.position,
  };
}

/**
 * Errors after which the append may or may not have been stored: the connection broke or the
 * server went away mid-call. Bad input, a refused permission or a refused condition are answers.
 */
function outcomeUnknown(error: unknown): boolean {
  const code = ConnectError.from(error).code;
  return (
    code === Code.Unavailable ||
    code === Code.Unknown ||
    code === Code.Internal ||
    code === Code.DeadlineExceeded ||
    // A reset connection, as the Node gRPC client reports it (a refused condition was ruled out).
    code === Code.Aborted
  );
}

/** Full jitter: random in [0, min(maxMs, initialMs × 2^(n-1))], so racing deciders spread out. */
function delay(retry: number, backoff: DecideOptions["backoff"]): number {
  const initialMs = backoff?.initialMs ?? 10;
  const maxMs = backoff?.maxMs ?? 1_000;
  return Math.random() * Math.min(maxMs, initialMs * 2 ** (retry - 1));
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(ConnectError.from(signal.reason ?? new Error("aborted"), Code.Canceled));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(ConnectError.from(signal?.reason ?? new Error("aborted"), Code.Canceled));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
