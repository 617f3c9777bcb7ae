import { create } from "@bufbuild/protobuf";
import {
  type CallOptions,
  type Client,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { Admin } from "../../gen/orisun/v1/admin_pb.js";
import {
  Direction,
  type Event,
  EventStore,
  type Message,
  type Position,
  PositionSchema,
  type Query,
} from "../../gen/orisun/v1/eventstore_pb.js";
import {
  type Decided,
  type DecideOptions,
  type DecisionModel,
  decide,
  type Verdict,
} from "./decision.js";
import { Code, ConnectError, isTransient } from "./errors.js";
import {
  comparePositions,
  type EventInput,
  type PositionInput,
  type QueryInput,
  toCondition,
  toEventToSave,
  toPosition,
  toQuery,
} from "./query.js";
import { type ResumeOptions, resumable } from "./resume.js";

export interface OrisunClientOptions {
  /** The server's URL, e.g. `http://127.0.0.1:50051` or `https://orisun.example.com`. */
  readonly baseUrl: string;
  /** `connect` (default) or `grpc-web`. Both stream over HTTP/1.1 and HTTP/2. */
  readonly protocol?: "connect" | "grpc-web";
  /** Protobuf binary on the wire (default) or JSON (readable in the browser's network tab). */
  readonly format?: "binary" | "json";
  /** The boundary used when a call names none. */
  readonly boundary?: string;
  /** Headers sent with every call. */
  readonly headers?: Readonly<Record<string, string>>;
  /**
   * The `authorization` header of every call: a fixed value (see `basicAuth` and `bearer`), or a
   * function asked before each call, so that a sign-in or a rotated key applies to the next call
   * without a new client. A function returning undefined sends none.
   */
  readonly credentials?: string | (() => string | undefined | Promise<string | undefined>);
  /** A fetch to use instead of the global one. */
  readonly fetch?: typeof globalThis.fetch;
  /** A ready transport; overrides protocol, format, headers, credentials and fetch. */
  readonly transport?: Transport;
}

interface CallInput {
  readonly boundary?: string;
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
}

export interface SaveOptions extends CallInput {
  /** DCB condition: fail (code `aborted`) if an event matching `query` exists after `after`. */
  readonly condition?: { readonly query: QueryInput | Query; readonly after?: PositionInput };
}

export interface ReadOptions extends CallInput {
  readonly query?: QueryInput | Query;
  /** Inclusive; absent: the first event (forward) or the last (backward). */
  readonly from?: PositionInput;
  readonly direction?: "forward" | "backward";
  /** 1–10,000; default 100. */
  readonly count?: number;
}

export interface SubscribeOptions extends ResumeOptions {
  readonly boundary?: string;
  readonly query?: QueryInput | Query;
  /** Exclusive; absent: from the first event. Resumes move it to the last event received. */
  readonly after?: PositionInput;
  /** At most one live subscription with this name per boundary. */
  readonly subscriberName?: string;
}

export interface PubSubOptions extends ResumeOptions {
  /** Members sharing a group name split the messages; none: a private subscription. */
  readonly group?: string;
}

export interface OrisunClient {
  /** The generated client, for anything the helpers do not cover. */
  readonly rpc: Client<typeof EventStore>;
  /** The Admin service: boundaries, server info, users, API keys, groups, who am I. */
  readonly admin: Client<typeof Admin>;
  /** Appends events atomically; resolves to the position of the last one. */
  save(events: readonly EventInput[], options?: SaveOptions): Promise<Position>;
  /** One page of events. */
  read(options?: ReadOptions): Promise<Event[]>;
  /** One page of events and the head the read used: the marker for an append that depends on it. */
  readAt(options?: ReadOptions): Promise<{ events: Event[]; head: Position }>;
  /**
   * A DCB command handler: reads the model at one head, folds it, appends what `handler` returns
   * on the condition that nothing the model reads changed since; retries refusals (decision.ts).
   */
  decide<S extends object>(
    model: DecisionModel<S>,
    handler: (state: S) => Verdict | Promise<Verdict>,
    options?: DecideOptions,
  ): Promise<Decided<S>>;
  /**
   * Pages through every matching event in the given direction, `count` at a time (fewer when a
   * page reaches the server's ORISUN_MAX_READ_BYTES).
   */
  pages(options?: ReadOptions): AsyncGenerator<Event[]>;
  /** History from `after`, then live events; reopens after a dropped connection. */
  subscribe(options?: SubscribeOptions): AsyncGenerator<Event>;
  publish(
    subject: string,
    data: Uint8Array | string,
    options?: { id?: string } & CallInput,
  ): Promise<void>;
  /** Messages on `subject` (wildcards allowed); reopens after a dropped connection. */
  subscribePubSub(subject: string, options?: PubSubOptions): AsyncGenerator<Message>;
}

/** A typed Orisun client for browsers and Node (any runtime with fetch and streams). */
export function createOrisunClient(options: OrisunClientOptions): OrisunClient {
  const transport = options.transport ?? makeTransport(options);
  const rpc = createClient(EventStore, transport);
  const admin = createClient(Admin, transport);
  const boundaryOf = (given: string | undefined) => given ?? options.boundary ?? "";
  const call = (input: CallInput | undefined): CallOptions => ({
    signal: input?.signal,
    timeoutMs: input?.timeoutMs,
  });

  const readAt = async (input: ReadOptions = {}) => {
    const response = await rpc.getEvents(
      {
        boundary: boundaryOf(input.boundary),
        criteria: toQuery(input.query),
        fromPosition: input.from === undefined ? undefined : toPosition(input.from),
        count: input.count ?? 0,
        direction: input.direction === "backward" ? Direction.DESC : Direction.ASC,
      },
      call(input),
    );
    if (!response.head) throw new Error("GetEvents answered without a head");
    return { events: response.events, head: response.head };
  };
  const read = async (input: ReadOptions = {}) => (await readAt(input)).events;

  return {
    rpc,
    admin,
    async save(events, input = {}) {
      const result = await rpc.saveEvents(
        {
          boundary: boundaryOf(input.boundary),
          events: events.map(toEventToSave),
          consistencyCondition: input.condition
            ? toCondition(input.condition.query, input.condition.after)
            : undefined,
        },
        call(input),
      );
      if (!result.logPosition) throw new Error("SaveEvents answered without a log_position");
      return result.logPosition;
    },
    read,
    readAt,
    decide: (model, handler, input = {}) =>
      decide(rpc, boundaryOf(input.boundary), model, handler, input),
    async *pages(input = {}) {
      const count = input.count ?? 100;
      let from = input.from === undefined ? undefined : toPosition(input.from);
      const forward = (input.direction ?? "forward") === "forward";
      for (;;) {
        const { events: page, head } = await readAt({ ...input, from, count });
        const last = page.at(-1)?.position;
        if (last === undefined) return;
        yield page;
        // A page may hold fewer than `count` events and yet not be the last: the server also
        // stops a page at its byte bound (ORISUN_MAX_READ_BYTES). Only an empty page, or one
        // that reached the head going forward, ends the walk.
        if (forward && comparePositions(last, head) >= 0) return;
        from = nextPosition(last, input.direction ?? "forward");
        if (from === undefined) return;
      }
    },
    subscribe(input = {}) {
      let after = input.after === undefined ? undefined : toPosition(input.after);
      const boundary = boundaryOf(input.boundary);
      const criteria = toQuery(input.query);
      const events = resumable<Event>(
        {
          open: (signal) =>
            rpc.subscribeToEvents(
              {
                boundary,
                criteria,
                afterPosition: after,
                subscriberName: input.subscriberName ?? "",
              },
              { signal },
            ),
          probe: (signal) =>
            rpc.getEvents({ boundary, count: 1, direction: Direction.DESC }, { signal }),
          // A name still held by our own dropped connection frees up soon after; first time, it is taken.
          retryable: (error, wasLive) => (error.code === Code.AlreadyExists ? wasLive : undefined),
        },
        input,
      );
      return (async function* () {
        for await (const event of events) {
          if (event.position) after = event.position;
          yield event;
        }
      })();
    },
    async publish(subject, data, input = {}) {
      await rpc.publishToPubSub(
        {
          subject,
          id: input.id ?? "",
          data: typeof data === "string" ? new TextEncoder().encode(data) : data,
        },
        call(input),
      );
    },
    subscribePubSub(subject, input = {}) {
      const messages = resumable(
        {
          open: (signal) =>
            rpc.subscribeToPubSub({ subject, consumerName: input.group ?? "" }, { signal }),
          // Any answer proves the server is there, even one refusing a missing boundary.
          probe: (signal) =>
            rpc.getEvents({ boundary: boundaryOf(undefined), count: 1 }, { signal }).catch((e) => {
              if (isTransient(ConnectError.from(e))) throw e;
            }),
        },
        input,
      );
      return (async function* () {
        for await (const response of messages) if (response.message) yield response.message;
      })();
    },
  };
}

function makeTransport(options: OrisunClientOptions): Transport {
  const { headers, credentials } = options;
  const interceptors: Interceptor[] = [];
  if (headers) interceptors.push(withHeaders(headers));
  if (credentials !== undefined) interceptors.push(withCredentials(credentials));
  const settings = {
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    useBinaryFormat: options.format !== "json",
    fetch: options.fetch,
    interceptors,
  };
  return options.protocol === "grpc-web"
    ? createGrpcWebTransport(settings)
    : createConnectTransport(settings);
}

function withHeaders(headers: Readonly<Record<string, string>>): Interceptor {
  return (next) => async (req) => {
    for (const [key, value] of Object.entries(headers)) req.header.set(key, value);
    return next(req);
  };
}

function withCredentials(
  credentials: NonNullable<OrisunClientOptions["credentials"]>,
): Interceptor {
  return (next) => async (req) => {
    const value = typeof credentials === "string" ? credentials : await credentials();
    if (value !== undefined && value !== "") req.header.set("authorization", value);
    return next(req);
  };
}

/** The `authorization` value for a user's name and password (HTTP Basic, UTF-8). */
export function basicAuth(user: string, password: string): string {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `Basic ${btoa(binary)}`;
}

/** The `authorization` value for an API key. */
export function bearer(apiKey: string): string {
  return `Bearer ${apiKey}`;
}

/**
 * The position just past `p` in the given direction. `from_position` is inclusive, and the
 * prepare position grows by one per event, so the next event forward is at or after
 * (commit, prepare + 1), and the next backward at or before (commit, prepare - 1).
 */
export function nextPosition(p: Position, direction: "forward" | "backward"): Position | undefined {
  if (direction === "forward")
    return create(PositionSchema, {
      commitPosition: p.commitPosition,
      preparePosition: p.preparePosition + 1n,
    });
  if (p.preparePosition === 0n) return undefined;
  return create(PositionSchema, {
    commitPosition: p.commitPosition,
    preparePosition: p.preparePosition - 1n,
  });
}
