/**
 * The workloads, spread over the worker processes, and the CPU each side used while they ran.
 */
import { machineBusySeconds, processCpuSeconds, rssMiB } from "./server.js";
import type { JobResult } from "./worker.js";
import type { Running, Workers } from "./workers.js";

/** CPU used during a workload, each as a percentage of one core. */
export interface Cpu {
  readonly generator: number | undefined;
  readonly server: number | undefined;
  readonly machine: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
};
export const percentile = (xs: readonly number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
};

/** Runs `fn` and reports the CPU the load generator, the server (`pid`) and the machine used. */
export async function measure<T>(
  workers: Workers,
  pid: number | undefined,
  fn: () => Promise<T>,
): Promise<{ result: T; cpu: Cpu }> {
  const generator0 = await workers.cpuSeconds();
  const server0 = pid === undefined ? 0 : processCpuSeconds(pid);
  const machine0 = machineBusySeconds();
  const started = performance.now();
  const result = await fn();
  const machine1 = machineBusySeconds();
  const server1 = pid === undefined ? 0 : processCpuSeconds(pid);
  const seconds = (performance.now() - started) / 1_000;
  const generator1 = await workers.cpuSeconds();
  const percent = (cpuSeconds: number) => (100 * cpuSeconds) / seconds;
  return {
    result,
    cpu: {
      generator: percent(generator1 - generator0),
      server: pid === undefined ? undefined : percent(server1 - server0),
      machine: percent(machine1 - machine0),
    },
  };
}

/** Splits `n` items over the workers: the item indices each worker gets. */
function spread(workers: Workers, n: number): number[][] {
  const parts: number[][] = Array.from({ length: workers.count }, () => []);
  for (let i = 0; i < n; i++) parts[i % workers.count]?.push(i);
  return parts;
}

const all = (running: Running[]) => Promise.all(running.map((r) => r.done));
const sum = (results: JobResult[], f: (r: JobResult) => number) =>
  results.reduce((n, r) => n + f(r), 0);

export interface AppendOptions {
  readonly boundary: string;
  readonly clients: number;
  readonly eventsPerAppend: number;
  readonly conditional: boolean;
  readonly seconds: number;
  /** The `authorization` header every call sends. */
  readonly authorization?: string;
  /** Each client appends to a boundary of its own (`<boundary>_<client>`). */
  readonly boundaryPerClient?: boolean;
  /**
   * Appends/s offered by all clients together, each client on a schedule of its own (one call in
   * flight at most: a client behind its schedule sends at once). Unset: as fast as answered.
   */
  readonly rate?: number;
}

/** `clients` append loops, each on its own tag (no conflicts); events/s. */
export async function appends(workers: Workers, url: string, o: AppendOptions): Promise<number> {
  const results = await all(
    spread(workers, o.clients)
      .map((clients, w) => ({ clients, w }))
      .filter(({ clients }) => clients.length > 0)
      .map(({ clients, w }) =>
        workers.run(w, { kind: "append", url, ...o, clients, totalClients: o.clients }),
      ),
  );
  return sum(results, (r) => r.count) / (Math.max(...results.map((r) => r.ms)) / 1_000);
}

/** Loads `total` events in 1,000-event unconditional appends, 2 in flight per worker; events/s. */
export async function load(
  workers: Workers,
  url: string,
  boundary: string,
  total: number,
): Promise<number> {
  const started = performance.now();
  await all(
    spread(workers, workers.count).map((_, w) =>
      workers.run(w, {
        kind: "load",
        url,
        boundary,
        total,
        first: w,
        step: workers.count,
        concurrency: 2,
      }),
    ),
  );
  return total / ((performance.now() - started) / 1_000);
}

/** One reader paging through the boundary; events/s and events read. */
export async function paging(
  workers: Workers,
  url: string,
  boundary: string,
  pageSize: number,
): Promise<{ rate: number; count: number }> {
  const r = await workers.run(0, { kind: "page", url, boundary, pageSize }).done;
  return { rate: r.count / (r.ms / 1_000), count: r.count };
}

/**
 * One reader's pages of `count` events with an `account` tag `value` (undefined: one nobody has,
 * new each call) for `seconds`: latency p50 and p99 in ms, and the events each call returned.
 */
export async function lookups(
  workers: Workers,
  url: string,
  boundary: string,
  value: string | undefined,
  count: number,
  seconds: number,
): Promise<{ p50: number; p99: number; perCall: number }> {
  const r = await workers.run(0, { kind: "lookup", url, boundary, value, count, seconds }).done;
  const ms = r.samples.ms ?? [];
  return { p50: percentile(ms, 50), p99: percentile(ms, 99), perCall: r.count / ms.length };
}

/** One subscription from the start until `total` events arrived; events/s. */
export async function catchUp(
  workers: Workers,
  url: string,
  boundary: string,
  total: number,
  windowBytes?: number,
): Promise<number> {
  const r = await workers.run(0, { kind: "catchup", url, boundary, total, windowBytes }).done;
  return r.count / (r.ms / 1_000);
}

export interface Live {
  readonly p50: number;
  readonly p99: number;
  readonly commitP50: number;
  readonly commitP99: number;
  readonly appendP99: number;
  readonly delivered: number;
  /** Append call to receipt p99 of the warm-up's events (not in p50 and p99). */
  readonly warmupP99: number;
}

/**
 * `subscribers` live subscriptions on every worker while worker 0 appends at `rate` events/s,
 * `warmup` seconds and then `seconds` timed; latency from the append call (or from the commit,
 * date_created) to receipt, in ms. The warm-up is untimed: in fresh processes the first second's
 * events arrived hundreds of ms late although the server had handed them to their streams within
 * a few ms, and a second run on the same processes no longer showed it.
 */
export async function live(
  workers: Workers,
  url: string,
  boundary: string,
  subscribers: number,
  rate: number,
  warmup: number,
  seconds: number,
): Promise<Live> {
  const subs = subscribe(workers, url, boundary, subscribers, true);
  await sleep(1_000);
  const job = { kind: "write", url, boundary, rate, warmup, seconds } as const;
  const written = await workers.run(0, job).done;
  for (const s of subs) workers.stop(s.running, s.size * written.count);
  const received = await all(subs.map((s) => s.running));
  const latencies = received.flatMap((r) => r.samples.latencies ?? []);
  const sinceCommit = received.flatMap((r) => r.samples.sinceCommit ?? []);
  return {
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    commitP50: percentile(sinceCommit, 50),
    commitP99: percentile(sinceCommit, 99),
    appendP99: percentile(written.samples.appendLatencies ?? [], 99),
    delivered: sum(received, (r) => r.count) / (written.count * subscribers),
    warmupP99: percentile(
      received.flatMap((r) => r.samples.warmup ?? []),
      99,
    ),
  };
}

/**
 * The most appends/s the server takes while `subscribers` live subscriptions receive every event:
 * `clients` closed-loop unconditional 1-event append loops, with the subscribers spread over the
 * workers as in live(). Against the live workload's rate it says how close that runs to capacity.
 */
export async function liveCapacity(
  workers: Workers,
  url: string,
  boundary: string,
  subscribers: number,
  clients: number,
  seconds: number,
): Promise<number> {
  const subs = subscribe(workers, url, boundary, subscribers, false);
  await sleep(1_000);
  const rate = await appends(workers, url, {
    boundary,
    clients,
    eventsPerAppend: 1,
    conditional: false,
    seconds,
  });
  for (const s of subs) workers.stop(s.running);
  await all(subs.map((s) => s.running));
  return rate;
}

/** `subscribers` live subscriptions to `boundary`, spread over the workers; each part's size. */
function subscribe(
  workers: Workers,
  url: string,
  boundary: string,
  subscribers: number,
  record: boolean,
): { size: number; running: Running }[] {
  return spread(workers, subscribers).map((part, w) => ({
    size: part.length,
    running: workers.run(w, { kind: "subscribe", url, boundary, subscribers: part.length, record }),
  }));
}

/**
 * Pub/sub through one group of 4 members (on the last worker) while `publishers` publish from
 * worker 0 for `seconds`: messages/s received, and latency from publish call to receipt, in ms.
 */
export async function pubsub(
  workers: Workers,
  url: string,
  group: string,
  publishers: number,
  seconds: number,
): Promise<{ rate: number; p50: number; p99: number }> {
  const members = workers.run(workers.count - 1, { kind: "members", url, members: 4, group });
  await sleep(1_000);
  const started = performance.now();
  const sent = await workers.run(0, { kind: "publish", url, publishers, seconds }).done;
  workers.stop(members, sent.count);
  const received = await members.done;
  const latencies = received.samples.latencies ?? [];
  return {
    rate: received.count / ((performance.now() - started) / 1_000),
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
  };
}

export interface Memory {
  /** Length of the first and of the last window, in seconds. */
  readonly window: number;
  /** Median RSS over the second window (after the warm-up). */
  readonly first: number;
  readonly last: number;
  /** Every sample: seconds since the start and VmRSS in MiB. */
  readonly samples: readonly { at: number; rss: number }[];
  readonly appendRate: number;
}

/**
 * `seconds` of 16 conditional append clients with 10 live subscribers on the same boundary, while
 * the server's VmRSS is sampled every few seconds: the medians of its second and last minute (or
 * third, for runs shorter than three minutes), in MiB.
 */
export async function memory(
  workers: Workers,
  url: string,
  pid: number,
  seconds: number,
): Promise<Memory> {
  const boundary = "memory";
  const interval = Math.min(5, Math.max(1, seconds / 60)) * 1_000;
  const samples: { at: number; rss: number }[] = [];
  const started = performance.now();
  const sample = () =>
    samples.push({ at: (performance.now() - started) / 1_000, rss: rssMiB(pid) });
  sample();
  const timer = setInterval(sample, interval);
  const subs = spread(workers, 10).map((part, w) =>
    workers.run(w, { kind: "subscribe", url, boundary, subscribers: part.length, record: false }),
  );
  const appendRate = await appends(workers, url, {
    boundary,
    clients: 16,
    eventsPerAppend: 1,
    conditional: true,
    seconds,
  });
  clearInterval(timer);
  sample();
  for (const s of subs) workers.stop(s);
  await all(subs);
  const window = Math.min(60, seconds / 3);
  const total = (performance.now() - started) / 1_000;
  const rss = (from: number, to: number) =>
    median(samples.filter((s) => s.at >= from && s.at <= to).map((s) => s.rss));
  // The second window, not the first: the first holds the warm-up (pool, windows, V8's heap).
  return {
    window,
    first: rss(window, 2 * window),
    last: rss(total - window, total),
    samples,
    appendRate,
  };
}
