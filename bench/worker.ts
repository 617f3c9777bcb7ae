/**
 * A load-generator process, forked by workers.ts: it runs the jobs the bench sends it, each over
 * this process's own gRPC channel, and answers with counts, latency samples and its CPU time.
 * Several of these share the load so that one Node event loop is never the limit. The client is
 * @grpc/grpc-js with the .proto loaded at run time (on this project's 2-core machine it spent
 * about 0.4 ms of CPU per unary call against 0.9 ms for connect-node's gRPC transport), except
 * SaveEvents, which goes through lean-grpc.ts's leaner client unless BENCH_CLIENT=grpc-js: CPU the
 * generator uses is CPU the server and PostgreSQL do not get.
 */
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import {
  type EventToSave,
  leanSaveEvents,
  type Position,
  type SaveEventsCall,
} from "./lean-grpc.js";
import { paceOf } from "./pace.js";

export type Job =
  /** `clients` loops appending `eventsPerAppend` events at a time, each on its own tag, for `seconds`. */
  | {
      kind: "append";
      url: string;
      boundary: string;
      clients: number[];
      eventsPerAppend: number;
      conditional: boolean;
      seconds: number;
      /** Sent as the `authorization` metadata of every call (a server with authentication on). */
      authorization?: string;
      /** Each loop appends to a boundary of its own, `<boundary>_<loop>`, instead of all to one. */
      boundaryPerClient?: boolean;
      /** Appends/s of all loops together (AppendOptions.rate); unset: each as fast as answered. */
      rate?: number;
      /** How many loops there are over all workers, for each loop's share of `rate`. */
      totalClients?: number;
    }
  /** `concurrency` loops appending 1,000-event batches first, first + step, … of a `total`-event load. */
  | {
      kind: "load";
      url: string;
      boundary: string;
      total: number;
      first: number;
      step: number;
      concurrency: number;
    }
  /** One reader paging through the boundary with GetEvents and from_position. */
  | { kind: "page"; url: string; boundary: string; pageSize: number }
  /**
   * One reader asking for pages of `count` events with an `account` tag, one call after the
   * other for `seconds`; `value` undefined: a value nobody has, new each call (a decision about
   * a new entity). Samples `ms`, each call's latency.
   */
  | {
      kind: "lookup";
      url: string;
      boundary: string;
      value: string | undefined;
      count: number;
      seconds: number;
    }
  /** One subscription from the start, until `total` events arrived. */
  | { kind: "catchup"; url: string; boundary: string; total: number; windowBytes?: number }
  /** Live subscribers; latency from the `t` (epoch ms) the writer put in each event's data. */
  | { kind: "subscribe"; url: string; boundary: string; subscribers: number; record: boolean }
  /**
   * Appends one event at a time at `rate` events/s for `warmup` and then `seconds` seconds, not
   * waiting for answers; the warm-up's events say so in their data (`"w":1`) and are not timed.
   */
  | { kind: "write"; url: string; boundary: string; rate: number; warmup: number; seconds: number }
  /** Members of one pub/sub group; latency from the `t` in each message's data. */
  | { kind: "members"; url: string; members: number; group: string }
  /** Publishers, each with one publish in flight, for `seconds`. */
  | { kind: "publish"; url: string; publishers: number; seconds: number }
  /** Nothing: the answer carries the process's CPU time. */
  | { kind: "cpu" };

export interface JobResult {
  /** Events appended or received, messages published or received. */
  count: number;
  /** From the job's start to its last event. */
  ms: number;
  samples: Record<string, number[]>;
}

/** `stop` ends a subscribe or members job once it has received `expect` (or 10 s later). */
export type Request = { id: number; job: Job } | { id: number; stop: true; expect?: number };
export type Reply =
  | { id: number; result: JobResult; cpuMicros: number }
  | { id: number; error: string; cpuMicros: number };

/** The messages as @grpc/proto-loader presents them: field names as in the .proto, int64 as strings. */
interface Event extends EventToSave {
  position: Position | null;
  date_created: { seconds: string; nanos: number } | null;
}
interface Stream<T> extends AsyncIterable<T> {
  cancel(): void;
}

/** The calls the jobs make, as promises and async iterables. */
interface Api {
  saveEvents: SaveEventsCall;
  getEvents(request: {
    boundary: string;
    count: number;
    from_position?: Position;
    criteria?: { criteria: { tags: { key: string; value: string }[] }[] };
  }): Promise<{ events: Event[] }>;
  subscribeToEvents(request: { boundary: string }): Stream<Event>;
  publishToPubSub(request: { id: string; subject: string; data: Buffer }): Promise<unknown>;
  subscribeToPubSub(request: {
    subject: string;
    consumer_name: string;
  }): Stream<{ message: { data: Buffer } | null }>;
}

const PROTO = fileURLToPath(new URL("../../proto/orisun/v1/eventstore.proto", import.meta.url));
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  includeDirs: [fileURLToPath(new URL("../../proto", import.meta.url))],
});
const { EventStore } = (
  grpc.loadPackageDefinition(definition) as unknown as {
    orisun: { v1: { EventStore: grpc.ServiceClientConstructor } };
  }
).orisun.v1;

type Unary = (
  request: unknown,
  metadata: grpc.Metadata,
  callback: (error: grpc.ServiceError | null, response: unknown) => void,
) => void;

/**
 * `windowBytes`: the HTTP/2 flow-control window the channel grants the server. grpc-js keeps
 * HTTP/2's 64 KiB unless told, so a stream stalls after every 64 KiB until the client has read
 * it and said so; gRPC in Go and Java grow the window to the connection's bandwidth-delay
 * product by themselves.
 */
function connect(url: string, authorization: string | undefined, windowBytes?: number): Api {
  const client = new EventStore(
    new URL(url).host,
    grpc.credentials.createInsecure(),
    windowBytes === undefined ? {} : { "grpc-node.flow_control_window": windowBytes },
  ) as unknown as Record<string, (request: unknown) => unknown>;
  const metadata = new grpc.Metadata();
  if (authorization !== undefined) metadata.set("authorization", authorization);
  const unary =
    <T>(method: string) =>
    (request: unknown) =>
      new Promise<T>((resolve, reject) =>
        (client[method] as unknown as Unary).call(client, request, metadata, (error, response) =>
          error ? reject(error) : resolve(response as T),
        ),
      );
  const stream =
    <T>(method: string) =>
    (request: unknown) =>
      (client[method] as (request: unknown) => Stream<T>).call(client, request);
  return {
    saveEvents:
      process.env.BENCH_CLIENT === "grpc-js"
        ? unary("SaveEvents")
        : leanSaveEvents(url, authorization),
    getEvents: unary("GetEvents"),
    subscribeToEvents: stream("SubscribeToEvents"),
    publishToPubSub: unary("PublishToPubSub"),
    subscribeToPubSub: stream("SubscribeToPubSub"),
  };
}

/**
 * Wall-clock ms, read now: latencies compare readings of different processes (and PostgreSQL's
 * commit time). performance.timeOrigin is read once at each process's start, so a clock step
 * or slew after that (NTP on a VM) put the processes' clocks apart: one run measured commit to
 * receipt as -866 ms.
 */
const now = () => Date.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One channel (one HTTP/2 connection) per server, credentials and process. */
const channels = new Map<string, Api>();
function api(url: string, authorization?: string, windowBytes?: number): Api {
  const key = `${url} ${authorization ?? ""} ${windowBytes ?? ""}`;
  let client = channels.get(key);
  if (!client) {
    client = connect(url, authorization, windowBytes);
    channels.set(key, client);
  }
  return client;
}

function event(id: string, tag: string, data: string): EventToSave {
  return { event_id: id, event_type: "Deposited", tags: [{ key: "account", value: tag }], data };
}

async function append(job: Extract<Job, { kind: "append" }>): Promise<JobResult> {
  const client = api(job.url, job.authorization);
  let count = 0;
  const started = performance.now();
  const end = Date.now() + job.seconds * 1_000;
  await Promise.all(
    job.clients.map(async (c) => {
      const tag = `${job.boundary}-${c}`;
      const boundary = job.boundaryPerClient ? `${job.boundary}_${c}` : job.boundary;
      const criteria = { criteria: [{ tags: [{ key: "account", value: tag }] }] };
      let marker: Position = { commit_position: "0", prepare_position: "0" };
      const pace = paceOf(job.rate, job.totalClients ?? job.clients.length, c);
      const first = performance.now() + pace.offsetMs;
      for (let i = 0; Date.now() < end; i++) {
        const due = first + i * pace.intervalMs - performance.now();
        if (due > 0) await new Promise((resolve) => setTimeout(resolve, due));
        if (Date.now() >= end) break;
        const events = Array.from({ length: job.eventsPerAppend }, (_, k) =>
          event(`${tag}-${i}-${k}`, tag, '{"amount":1}'),
        );
        const result = await client.saveEvents({
          boundary,
          events,
          consistency_condition: job.conditional
            ? { consistency_marker: marker, criteria }
            : undefined,
        });
        marker = result.log_position ?? marker;
        count += job.eventsPerAppend;
      }
    }),
  );
  return { count, ms: performance.now() - started, samples: {} };
}

async function load(job: Extract<Job, { kind: "load" }>): Promise<JobResult> {
  const client = api(job.url);
  const started = performance.now();
  const batches = Math.ceil(job.total / 1_000);
  let next = job.first;
  let count = 0;
  await Promise.all(
    Array.from({ length: job.concurrency }, async () => {
      for (let b = next; b < batches; b = next) {
        next += job.step;
        const events = Array.from({ length: Math.min(1_000, job.total - b * 1_000) }, (_, i) =>
          event(`l${b}-${i}`, `acct-${i % 100}`, '{"amount":1}'),
        );
        await client.saveEvents({ boundary: job.boundary, events });
        count += events.length;
      }
    }),
  );
  return { count, ms: performance.now() - started, samples: {} };
}

async function lookup(job: Extract<Job, { kind: "lookup" }>): Promise<JobResult> {
  const client = api(job.url);
  const started = performance.now();
  const end = started + job.seconds * 1_000;
  const ms: number[] = [];
  let count = 0;
  for (let i = 0; performance.now() < end; i++) {
    const value = job.value ?? `nobody-${process.pid}-${i}`;
    const t = performance.now();
    const { events } = await client.getEvents({
      boundary: job.boundary,
      count: job.count,
      criteria: { criteria: [{ tags: [{ key: "account", value }] }] },
    });
    ms.push(performance.now() - t);
    count += events.length;
  }
  return { count, ms: performance.now() - started, samples: { ms } };
}

async function page(job: Extract<Job, { kind: "page" }>): Promise<JobResult> {
  const client = api(job.url);
  const started = performance.now();
  let count = 0;
  let from: Position | undefined;
  for (;;) {
    const { events } = await client.getEvents({
      boundary: job.boundary,
      count: job.pageSize,
      from_position: from,
    });
    count += events.length;
    const last = events.at(-1)?.position;
    if (!last || events.length < job.pageSize) break;
    // from_position is inclusive; prepare_position grows by one per event, so this is the next.
    from = {
      commit_position: last.commit_position,
      prepare_position: String(BigInt(last.prepare_position) + 1n),
    };
  }
  return { count, ms: performance.now() - started, samples: {} };
}

async function catchUp(job: Extract<Job, { kind: "catchup" }>): Promise<JobResult> {
  const started = performance.now();
  let count = 0;
  if (job.total > 0) {
    const stream = api(job.url, undefined, job.windowBytes).subscribeToEvents({
      boundary: job.boundary,
    });
    try {
      for await (const _ of stream) {
        if (++count === job.total) break;
      }
    } finally {
      stream.cancel();
    }
  }
  return { count, ms: performance.now() - started, samples: {} };
}

/** What `stop` asks of a running subscribe or members job. */
interface Stoppable {
  stop(expect: number | undefined): void;
}
const stoppable = new Map<number, Stoppable>();

/**
 * Runs `members` streams until stopped: at once, or once `expect` items arrived in all (10 s at
 * most). `open` opens one stream; `onItem` records one item.
 */
async function receiveUntilStopped<T>(
  id: number,
  members: number,
  open: () => Stream<T>,
  onItem: (item: T) => void,
): Promise<JobResult> {
  const started = performance.now();
  let count = 0;
  let lastAt = started;
  let target = Number.POSITIVE_INFINITY;
  let stopped = false;
  const streams = Array.from({ length: members }, open);
  const stop = () => {
    stopped = true;
    for (const stream of streams) stream.cancel();
  };
  const loops = streams.map(async (stream) => {
    try {
      for await (const item of stream) {
        onItem(item);
        count++;
        lastAt = performance.now();
        if (count >= target) stop();
      }
    } catch (error) {
      if (!stopped) throw error;
    }
  });
  stoppable.set(id, {
    stop(expect) {
      target = expect ?? 0;
      if (count >= target) stop();
      else setTimeout(stop, 10_000);
    },
  });
  try {
    await Promise.all(loops);
  } finally {
    stoppable.delete(id);
  }
  return { count, ms: lastAt - started, samples: {} };
}

async function subscribe(id: number, job: Extract<Job, { kind: "subscribe" }>) {
  const latencies: number[] = [];
  const sinceCommit: number[] = [];
  const warmup: number[] = [];
  const client = api(job.url);
  const result = await receiveUntilStopped(
    id,
    job.subscribers,
    () => client.subscribeToEvents({ boundary: job.boundary }),
    (e) => {
      if (!job.record) return;
      const at = now();
      const data = JSON.parse(e.data) as { t: number; w?: 1 };
      if (data.w) {
        warmup.push(at - data.t);
        return;
      }
      latencies.push(at - data.t);
      const created = e.date_created;
      if (created) sinceCommit.push(at - Number(created.seconds) * 1_000 - created.nanos / 1e6);
    },
  );
  result.samples = { latencies, sinceCommit, warmup };
  return result;
}

async function write(job: Extract<Job, { kind: "write" }>): Promise<JobResult> {
  const client = api(job.url);
  const appendLatencies: number[] = [];
  const warmup = Math.round(job.rate * job.warmup);
  const total = warmup + Math.round(job.rate * job.seconds);
  const perTick = Math.max(1, Math.round(job.rate / 100));
  const writes: Promise<unknown>[] = [];
  const start = performance.now();
  for (let i = 0; i < total; ) {
    const wait = start + (i / job.rate) * 1_000 - performance.now();
    if (wait > 0) await sleep(wait);
    for (let k = 0; k < perTick && i < total; k++, i++) {
      const at = now();
      const timed = i >= warmup;
      const data = timed ? `{"t":${at}}` : `{"t":${at},"w":1}`;
      writes.push(
        client
          .saveEvents({ boundary: job.boundary, events: [event(`live-${i}`, "x", data)] })
          .then(() => timed && appendLatencies.push(now() - at)),
      );
    }
  }
  await Promise.all(writes);
  return { count: total, ms: performance.now() - start, samples: { appendLatencies } };
}

async function members(id: number, job: Extract<Job, { kind: "members" }>) {
  const latencies: number[] = [];
  const client = api(job.url);
  const result = await receiveUntilStopped(
    id,
    job.members,
    () => client.subscribeToPubSub({ subject: "bench.>", consumer_name: job.group }),
    ({ message }) => {
      if (message) latencies.push(now() - (JSON.parse(message.data.toString()) as { t: number }).t);
    },
  );
  result.samples = { latencies };
  return result;
}

async function publish(job: Extract<Job, { kind: "publish" }>): Promise<JobResult> {
  const client = api(job.url);
  // Ids unique across runs: the server drops a repeated id within its dedupe window.
  const prefix = Date.now().toString(36);
  let count = 0;
  const started = performance.now();
  const end = Date.now() + job.seconds * 1_000;
  await Promise.all(
    Array.from({ length: job.publishers }, async (_, c) => {
      for (let i = 0; Date.now() < end; i++) {
        const data = Buffer.from(`{"order":42,"total":"19.99","t":${now()}}`);
        await client.publishToPubSub({ id: `${prefix}-${c}-${i}`, subject: "bench.orders", data });
        count++;
      }
    }),
  );
  return { count, ms: performance.now() - started, samples: {} };
}

function run(id: number, job: Job): Promise<JobResult> {
  switch (job.kind) {
    case "append":
      return append(job);
    case "load":
      return load(job);
    case "page":
      return page(job);
    case "lookup":
      return lookup(job);
    case "catchup":
      return catchUp(job);
    case "subscribe":
      return subscribe(id, job);
    case "write":
      return write(job);
    case "members":
      return members(id, job);
    case "publish":
      return publish(job);
    case "cpu":
      return Promise.resolve({ count: 0, ms: 0, samples: {} });
  }
}

const cpuMicros = () => {
  const { user, system } = process.cpuUsage();
  return user + system;
};
const reply = (message: Reply) => process.send?.(message);

process.on("message", (request: Request) => {
  if ("stop" in request) {
    stoppable.get(request.id)?.stop(request.expect);
    return;
  }
  run(request.id, request.job).then(
    (result) => reply({ id: request.id, result, cpuMicros: cpuMicros() }),
    (error: unknown) => reply({ id: request.id, error: String(error), cpuMicros: cpuMicros() }),
  );
});
// Ends with the parent's IPC channel.
process.on("disconnect", () => process.exit(0));
