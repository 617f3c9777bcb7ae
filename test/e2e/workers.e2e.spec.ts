import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Direction } from "../../gen/orisun/v1/eventstore_pb.js";
import { ownerOf } from "../../server/process/boundary-owners.js";
import { StoreError } from "../../server/store/errors.js";
import type { Position, Query, StoredEvent, Tag } from "../../server/store/types.js";
import {
  count,
  metric,
  ownClient,
  position,
  type Rpc,
  readLog,
  servingWorkers,
  spawnCluster,
  toStored,
  until,
  wireQuery,
  workerPids,
} from "../support/cluster.js";
import { dropSchema, freshDataDir, freshSchema, NATS_URL, PG_URL } from "../support/databases.js";
import { type Attempt, verifyLog } from "../support/dcb-log.js";
import { prng } from "../support/prng.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

describe("ORISUN_WORKERS=2: two server processes on one port", () => {
  const schema = freshSchema("workers");
  let server: SpawnedServer;
  /** orisun_appends_routed_total of the whole cluster, by route. */
  const routed = async () => {
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const count = (route: string) =>
      Number(
        metrics.match(new RegExp(`orisun_appends_routed_total\\{route="${route}"\\} (\\d+)`))?.[1],
      );
    return {
      forwarded: count("forwarded"),
      served: count("served"),
      fell_back: count("fell_back"),
    };
  };
  beforeAll(async () => {
    // One line per request, with the pid of the worker that served it.
    server = await spawnCluster(schema, { ORISUN_LOG_LEVEL: "debug" });
  });
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  });

  it("randomized DCB conditions from 16 clients spread over both workers all hold; a live subscriber sees exactly the log", async () => {
    const boundary = "contended";
    const subscriber = ownClient(server);
    const received: StoredEvent[] = [];
    const stopSubscriber = new AbortController();
    const subscription = (async () => {
      try {
        for await (const e of subscriber.subscribeToEvents(
          { boundary },
          { signal: stopSubscriber.signal },
        ))
          received.push(toStored(e));
      } catch (error) {
        if (!stopSubscriber.signal.aborted) throw error;
      }
    })();

    const tags = ["t0", "t1", "t2", "t3"];
    const attempts: Attempt[] = [];
    const deadline = Date.now() + 4_000;
    await Promise.all(
      Array.from({ length: 16 }, async (_, worker) => {
        const client = ownClient(server);
        const random = prng(7000 + worker);
        const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
        for (let n = 0; n < 60 && Date.now() < deadline; n++) {
          const tag = (key: string, value: string): Tag => ({ key, value });
          const query: Query =
            random() < 0.7
              ? [{ types: [], tags: [tag("k", pick(tags))] }]
              : [{ types: ["Special"], tags: [tag("k", pick(tags))] }];
          const { events: seen } = await client.getEvents({
            boundary,
            criteria: wireQuery(query),
            count: 1,
            direction: Direction.DESC,
          });
          const after = position(seen[0]?.position);
          const events = Array.from({ length: 1 + Math.floor(random() * 2) }, (_, i) => ({
            id: `w${worker}-${n}-${i}`,
            type: random() < 0.3 ? "Special" : "Plain",
            tags: [tag("k", pick(tags)), tag("client", String(worker))],
            data: `{"w":${worker},"n":${n}}`,
            metadata: "",
          }));
          const attempt: Attempt = { request: { boundary, events, condition: { after, query } } };
          attempts.push(attempt);
          try {
            const answer = await client.saveEvents({
              boundary,
              consistencyCondition: {
                consistencyMarker: { commitPosition: after.commit, preparePosition: after.prepare },
                criteria: wireQuery(query),
              },
              events: events.map((e) => ({
                eventId: e.id,
                eventType: e.type,
                tags: e.tags,
                data: e.data,
              })),
            });
            attempt.result = position(answer.logPosition);
          } catch (error) {
            const e = ConnectError.from(error);
            if (e.code !== Code.Aborted) throw e;
            attempt.error = new StoreError("condition_failed", e.rawMessage);
          }
        }
      }),
    );
    const log = await readLog(ownClient(server), boundary);
    const accepted = attempts.filter((a) => a.result);
    expect(accepted.length).toBeGreaterThan(10);
    expect(attempts.filter((a) => a.error).length).toBeGreaterThan(0);
    verifyLog(log, attempts);

    await until("the subscriber to catch up", () => received.length >= log.length, 30_000);
    stopSubscriber.abort();
    await subscription;
    expect(received.map((e) => e.id)).toEqual(log.map((e) => e.id));

    // Both workers served appends: each debug request line carries the serving process's pid.
    const servedBy = new Set(
      server
        .output()
        .split("\n")
        .filter((line) => line.includes('"url":"/orisun.v1.EventStore/SaveEvents"'))
        .map((line) => (JSON.parse(line) as { pid: number }).pid),
    );
    expect([...servedBy].sort()).toEqual(await workerPids(server.process.pid ?? 0));

    // The boundary's appends that reached the worker not owning it were sent on to the one that
    // does (process/boundary-owners.ts), and every one was answered there.
    const counts = await routed();
    expect(counts.forwarded).toBeGreaterThan(0);
    expect(counts.served).toBe(counts.forwarded);
    expect(counts.fell_back).toBe(0);
  });

  it("the worker that commits a boundary, killed with SIGKILL under load, is replaced; every acknowledged append is in the log", async () => {
    const boundary = "killed";
    const primary = server.process.pid ?? 0;
    const before = await workerPids(primary);
    expect(before).toHaveLength(2);
    // The worker in the slot that owns the boundary: the other one forwards its share to it.
    const listening = server
      .output()
      .split("\n")
      .filter((line) => line.includes("Orisun listening"))
      .map((line) => JSON.parse(line) as { pid: number; slot: number });
    const owner = listening.find((l) => l.slot === ownerOf(boundary, 2))?.pid;
    expect(before).toContain(owner);
    const routedBefore = await routed();
    const acknowledged = new Map<string, Position>();
    let failures = 0;
    const codes: string[] = [];
    let running = true;
    const writers = Array.from({ length: 8 }, async (_, w) => {
      const client = ownClient(server);
      for (let n = 0; running; n++) {
        const id = `k${w}-${n}`;
        try {
          const answer = await client.saveEvents(
            { boundary, events: [{ eventId: id, eventType: "Tick", data: `{"n":${n}}` }] },
            { timeoutMs: 10_000 },
          );
          acknowledged.set(id, position(answer.logPosition));
        } catch (error) {
          // The killed worker's connections fail: the outcome of those calls is unknown, and
          // the next call opens a connection to a live worker.
          const code = ConnectError.from(error).code;
          expect(code).not.toBe(Code.InvalidArgument);
          codes.push(Code[code]);
          failures++;
        }
      }
    });
    await until("appends under way", () => acknowledged.size >= 50);
    const victim = owner ?? 0;
    process.kill(victim, "SIGKILL");
    const atKill = acknowledged.size;
    await until("a replacement worker", async () => {
      const now = await workerPids(primary);
      return now.length === 2 && !now.includes(victim);
    });
    await until("the replacement to listen", () => count(server.output(), "Orisun listening") >= 3);
    await until("appends after the kill", () => acknowledged.size >= atKill + 200).catch(
      async (error: Error) => {
        // What the writers saw, and what the server said and counts, should this time out again
        // (it did, rarely, until each worker listened on its own socket): the pools, calls in
        // flight, routes and publishers, and its last lines (one per request, with the pid that
        // served it), without the warnings about the kill itself.
        const metrics = await fetch(`${server.url}/metrics`)
          .then((r) => r.text())
          .catch(String);
        const counts = metrics
          .split("\n")
          .filter((line) => /^orisun_(pg_pool|rpc_in_flight|appends_routed|publisher)/.test(line));
        const said = server
          .output()
          .split("\n")
          .filter((line) => !line.includes("went away while appending"))
          .slice(-40)
          .map((line) => line.slice(0, 300));
        throw new Error(
          `${error.message}: ${acknowledged.size - atKill} acknowledged since the kill, ${failures} failures (${codes.slice(-20).join()}); the server's metrics:\n${counts.join("\n")}\nits last lines:\n${said.join("\n")}`,
        );
      },
    );
    // While the slot was empty, the other worker committed the boundary's appends itself; once
    // the replacement listened, it forwarded them to it again.
    const routedAfterKill = await routed();
    expect(routedAfterKill.fell_back).toBeGreaterThan(routedBefore.fell_back);
    await until("forwarding to the replacement", async () => {
      const now = await routed();
      return now.forwarded > routedAfterKill.forwarded;
    });
    running = false;
    await Promise.all(writers);

    expect(server.output()).toContain("worker died; starting a new one");
    // The killed worker's calls failed (reset, cancelled). A connection the primary was handing
    // to it at that instant stays open unanswered (node:cluster keeps the handle until the worker
    // acknowledges it): such a call ends at its deadline, hence the deadline on every call.
    expect(failures, codes.join()).toBeGreaterThan(0);
    const log = await readLog(ownClient(server), boundary);
    const byId = new Map(log.map((e) => [e.id, e.position]));
    expect(byId.size).toBe(log.length);
    for (const [id, at] of acknowledged) expect(byId.get(id), id).toEqual(at);
    for (let i = 1; i < log.length; i++) {
      const a = log[i - 1]?.position as Position;
      const b = log[i]?.position as Position;
      expect(b.commit > a.commit || (b.commit === a.commit && b.prepare > a.prepare)).toBe(true);
    }
  });

  it("SIGTERM drains both workers and the primary exits 0", async () => {
    const primary = server.process.pid ?? 0;
    const workers = await workerPids(primary);
    expect(workers).toHaveLength(2);
    expect(await server.stop("SIGTERM")).toBe(0);
    const alive = workers.filter((pid) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    });
    expect(alive).toEqual([]);
    expect(count(server.output(), '"msg":"shutting down"')).toBe(2);
  });
});

describe("a cluster primary killed with SIGKILL", () => {
  const schema = freshSchema("workers_killed");
  const tmp = mkdtempSync(join(tmpdir(), "orisun-tmp-"));
  afterAll(async () => {
    await dropSchema(schema);
    rmSync(tmp, { recursive: true, force: true });
  });
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const socketDirs = () => readdirSync(tmp).filter((name) => name.startsWith("orisun-workers-"));

  it("leaves its workers' socket directory behind, and the next primary removes it", async () => {
    const env = {
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_WORKERS: "2",
      TMPDIR: tmp,
    };
    const first = await spawnServer(env);
    await until("both workers", () => count(first.output(), "Orisun listening") >= 2);
    const primary = first.process.pid ?? 0;
    const workers = await workerPids(primary);
    expect(workers).toHaveLength(2);
    const [left] = socketDirs();
    expect(left?.startsWith(`orisun-workers-${primary}-`)).toBe(true);
    await first.stop("SIGKILL");
    // Cut off from their primary, the workers exit; nobody removed the directory.
    await until("the workers to exit", () => workers.every((pid) => !alive(pid)));
    expect(socketDirs()).toEqual([left]);

    const second = await spawnServer(env);
    try {
      await until("both workers", () => count(second.output(), "Orisun listening") >= 2);
      const mine = socketDirs();
      expect(mine).toHaveLength(1);
      expect(mine[0]?.startsWith(`orisun-workers-${second.process.pid}-`)).toBe(true);
      expect(second.output()).toContain("removed socket directories of primaries that are gone");
    } finally {
      await second.stop();
    }
    expect(socketDirs()).toEqual([]);
  });
});

describe("a worker that dies while the primary hands it connections", () => {
  const schema = freshSchema("workers_handoff");
  let server: SpawnedServer;
  const serving = () => servingWorkers(server);
  beforeAll(async () => {
    server = await spawnCluster(schema);
  });
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  });

  it("leaves no client hanging: a connection handed to it fails, and the client's next call is served", async () => {
    const primary = server.process.pid ?? 0;
    const [victim] = await workerPids(primary);
    const clients = Array.from({ length: 6 }, () => ownClient(server));
    const append = (client: Rpc, id: string) =>
      client.saveEvents(
        { boundary: "handoff", events: [{ eventId: id, eventType: "Tick", data: "{}" }] },
        { timeoutMs: 3_000 },
      );
    // The primary is stopped while the clients connect and the worker dies: once it runs again,
    // it finds the connections waiting and one of its workers gone, and may hand a connection
    // to the dead worker before it hears of the death.
    process.kill(primary, "SIGSTOP");
    let first: Promise<unknown>[];
    try {
      first = clients.map((client, c) => append(client, `first-${c}`).catch(() => {}));
      await new Promise((r) => setTimeout(r, 300));
      process.kill(victim ?? 0, "SIGKILL");
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      process.kill(primary, "SIGCONT");
    }
    await Promise.all(first);
    // Each client keeps its connection while it stays open: one the primary held for a dead worker
    // would time out every call on it, for ever.
    const served = await Promise.all(
      clients.map(async (client, c) => {
        for (let attempt = 0; attempt < 4; attempt++) {
          try {
            await append(client, `again-${c}-${attempt}`);
            return true;
          } catch {}
        }
        return false;
      }),
    );
    expect(served).toEqual(clients.map(() => true));
    // The primary's own metrics come with the workers'.
    await until("the replacement", async () => (await workerPids(primary)).length === 2);
    expect(await metric(server, 'orisun_worker_restarts_total{cause="exited"}')).toBe(1);
    expect(await metric(server, 'orisun_worker_restarts_total{cause="stalled"}')).toBe(0);
  });

  it("the owner of a boundary killed while the primary is stopped: the other worker commits its appends itself at once", async () => {
    // Each worker listens for the other's appends on a socket of its own. Were that socket the
    // primary's (node:cluster shares a worker's listening socket through the primary unless it
    // listens exclusively), a stopped or busy primary would accept the other worker's connection
    // for the dead owner and hold it unanswered, and every forwarded append would wait on it.
    const boundary = "owner_gone";
    const primary = server.process.pid ?? 0;
    // Both workers up (the test before killed one), each with the slot it listens for.
    await until("both workers", async () => (await serving()).length === 2);
    const owner = (await serving()).find((l) => l.slot === ownerOf(boundary, 2));
    expect(owner).toBeDefined();
    const clients = Array.from({ length: 6 }, () => ownClient(server));
    const append = (client: Rpc, id: string, timeoutMs: number) =>
      client.saveEvents(
        { boundary, events: [{ eventId: id, eventType: "Tick", data: "{}" }] },
        { timeoutMs },
      );
    // Connected while the primary runs: handed out in turn, three to each worker.
    await Promise.all(clients.map((client, c) => append(client, `warm-${c}`, 10_000)));
    process.kill(primary, "SIGSTOP");
    let served: boolean[];
    try {
      process.kill(owner?.pid ?? 0, "SIGKILL");
      // The owner's clients lose their connections (and cannot connect again while the primary
      // is stopped); the other worker's are served, at the latest on a second try (an append
      // it had sent on to the owner as it died fails with an unknown outcome).
      served = await Promise.all(
        clients.map(async (client, c) => {
          for (let attempt = 0; attempt < 2; attempt++) {
            try {
              await append(client, `gone-${c}-${attempt}`, 3_000);
              return true;
            } catch {}
          }
          return false;
        }),
      );
    } finally {
      process.kill(primary, "SIGCONT");
    }
    expect(served.filter(Boolean).length).toBeGreaterThanOrEqual(3);
    await until("a replacement worker", async () => (await workerPids(primary)).length === 2);
  });

  it("a worker that is alive but stuck gets no new connections once it has left one unconfirmed for a second", async () => {
    await until("both workers", async () => (await serving()).length === 2);
    // Not the boundary's owner: the other worker commits its appends itself.
    const stuck = (await serving()).find((l) => l.slot !== ownerOf("stuck", 2));
    const reroutedBefore = await metric(server, "orisun_connections_rerouted_total");
    const append = (client: Rpc, id: string, timeoutMs: number) =>
      client.saveEvents(
        { boundary: "stuck", events: [{ eventId: id, eventType: "Tick", data: "{}" }] },
        { timeoutMs },
      );
    const attempt = (client: Rpc, id: string, timeoutMs: number) =>
      append(client, id, timeoutMs).then(
        () => true,
        () => false,
      );
    const logBefore = server.output().length;
    process.kill(stuck?.pid ?? 0, "SIGSTOP");
    let first: boolean[];
    let after: boolean[];
    try {
      // Two connections, one after the other: in turn, one of them goes to the stopped worker,
      // which never confirms it.
      first = [];
      for (let c = 0; c < 2; c++) first.push(await attempt(ownClient(server), `first-${c}`, 1_500));
      // By now the stopped worker's connection has waited over a second: every new one goes to
      // the other worker (in turn, three of these six would go to the stopped one).
      after = await Promise.all(
        Array.from({ length: 6 }, (_, c) => attempt(ownClient(server), `after-${c}`, 3_000)),
      );
    } finally {
      process.kill(stuck?.pid ?? 0, "SIGCONT");
    }
    expect(first.filter(Boolean)).toHaveLength(1);
    expect(after).toEqual(after.map(() => true));
    const skipped = server
      .output()
      .slice(logBefore)
      .split("\n")
      .filter((line) => line.includes("new connections go to the other workers"));
    expect(skipped).toHaveLength(1);
    expect(JSON.parse(skipped[0] ?? "{}")).toMatchObject({ worker: stuck?.pid, unconfirmed: 1 });
    // Running again, it takes up what it was sent, and gets its turn again.
    await until("the worker taking its connections up", () =>
      server.output().slice(logBefore).includes("worker took up the connections sent to it"),
    );
    const again = await Promise.all(
      Array.from({ length: 4 }, (_, c) => attempt(ownClient(server), `again-${c}`, 3_000)),
    );
    expect(again).toEqual(again.map(() => true));
    // Of the six, those whose turn was the stopped worker's (every one after the first skip).
    const rerouted = (await metric(server, "orisun_connections_rerouted_total")) - reroutedBefore;
    expect(rerouted).toBeGreaterThanOrEqual(3);
    expect(rerouted).toBeLessThanOrEqual(6);
    expect(await metric(server, "orisun_workers_serving")).toBe(2);
  });

  it("the owner of a boundary stopped (alive, not answering): the other worker commits its appends itself within seconds, long before the watchdog", async () => {
    const boundary = "owner_silent";
    await until("both workers", async () => (await serving()).length === 2);
    const owner = (await serving()).find((l) => l.slot === ownerOf(boundary, 2));
    const clients = Array.from({ length: 6 }, () => ownClient(server));
    const append = (client: Rpc, id: string) =>
      client.saveEvents(
        { boundary, events: [{ eventId: id, eventType: "Tick", data: "{}" }] },
        { timeoutMs: 3_000 },
      );
    // Connected while both run: three to each worker.
    await Promise.all(clients.map((client, c) => append(client, `warm-${c}`)));
    process.kill(owner?.pid ?? 0, "SIGSTOP");
    let served: boolean[];
    try {
      // The other worker's first append goes to the owner and waits out its deadline; by then
      // the owner has been silent for over 2 s, and the next commits where it arrives. The
      // owner's own clients wait on it.
      served = await Promise.all(
        clients.map(async (client, c) => {
          for (let attempt = 0; attempt < 2; attempt++) {
            try {
              await append(client, `silent-${c}-${attempt}`);
              return true;
            } catch {}
          }
          return false;
        }),
      );
    } finally {
      process.kill(owner?.pid ?? 0, "SIGCONT");
    }
    expect(served.filter(Boolean)).toHaveLength(3);
    expect(server.output()).toContain(
      "the worker that commits these boundaries has answered nothing since it was sent an append",
    );
  });

  it("caps each worker's connections at ORISUN_MAX_CONNECTIONS, as a single process does", async () => {
    const capped = await spawnCluster(schema, { ORISUN_MAX_CONNECTIONS: "2" });
    const sockets: Socket[] = [];
    try {
      // Handed out in turn: three to each worker, of which each keeps two.
      const closed = await Promise.all(
        Array.from({ length: 6 }, async () => {
          const socket = connect({ port: capped.port, host: "127.0.0.1" });
          sockets.push(socket);
          socket.on("error", () => {});
          return new Promise<boolean>((resolve) => {
            socket.once("close", () => resolve(true));
            setTimeout(() => resolve(false), 1_500);
          });
        }),
      );
      expect(closed.filter(Boolean)).toHaveLength(2);
      expect(count(capped.output(), "the server holds ORISUN_MAX_CONNECTIONS connections")).toBe(2);
      // The ones kept are served.
      const kept = sockets.find((s) => !s.destroyed) as Socket;
      const answer = new Promise<string>((resolve) => {
        let text = "";
        kept.on("data", (d: Buffer) => {
          text += d.toString("latin1");
          if (text.includes("\r\n\r\n")) resolve(text);
        });
      });
      kept.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
      expect(await answer).toMatch(/^HTTP\/1\.1 200/);
    } finally {
      for (const socket of sockets) socket.destroy();
      await capped.stop();
    }
  });
});

describe("ORISUN_WORKER_STALL_TIMEOUT: a worker whose event loop stops", () => {
  const schema = freshSchema("workers_stall");
  let server: SpawnedServer;
  const KILLED = "worker's event loop has not run for ORISUN_WORKER_STALL_TIMEOUT; killing it";
  const serving = () => servingWorkers(server);
  beforeAll(async () => {
    server = await spawnCluster(schema, { ORISUN_WORKER_STALL_TIMEOUT: "2s" });
  });
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  });

  it("is killed once the timeout passes and replaced; the boundaries it committed are served again", async () => {
    const boundary = "stalled";
    await until("both workers", async () => (await serving()).length === 2);
    const owner = (await serving()).find((l) => l.slot === ownerOf(boundary, 2));
    const pid = owner?.pid ?? 0;
    const client = ownClient(server);
    const append = (id: string) =>
      client.saveEvents(
        { boundary, events: [{ eventId: id, eventType: "Tick", data: "{}" }] },
        { timeoutMs: 3_000 },
      );
    await append("before");
    // Alive to the operating system, but its event loop no longer runs: as a worker stuck in a
    // synchronous loop. Nothing outside it can tell: the primary hands other clients to the other
    // worker, and its health probes with them.
    process.kill(pid, "SIGSTOP");
    const stopped = Date.now();
    await until("the stopped worker to be killed", () => !existsSync(`/proc/${pid}`), 15_000);
    const after = Date.now() - stopped;
    expect(after).toBeGreaterThanOrEqual(1_900);
    expect(after).toBeLessThan(6_000);
    const killed = server
      .output()
      .split("\n")
      .filter((line) => line.includes(KILLED))
      .map((line) => JSON.parse(line) as { worker: number; stallMs: number });
    expect(killed).toEqual([expect.objectContaining({ worker: pid, stallMs: 2_000 })]);
    await until("a replacement worker", async () => (await serving()).length === 2);
    expect(await metric(server, 'orisun_worker_restarts_total{cause="stalled"}')).toBe(1);
    expect(await metric(server, 'orisun_worker_restarts_total{cause="exited"}')).toBe(0);
    // Its boundary's appends are committed again (the client connects again if its connection
    // was the killed worker's).
    let served = false;
    for (let attempt = 0; attempt < 4 && !served; attempt++) {
      served = await append(`after-${attempt}`).then(
        () => true,
        () => false,
      );
    }
    expect(served).toBe(true);
  });

  it("a primary that was itself stopped for longer than the timeout kills no worker", async () => {
    await until("both workers", async () => (await serving()).length === 2);
    const primary = server.process.pid ?? 0;
    const before = await workerPids(primary);
    const killedBefore = count(server.output(), KILLED);
    process.kill(primary, "SIGSTOP");
    await new Promise((r) => setTimeout(r, 3_000));
    process.kill(primary, "SIGCONT");
    await new Promise((r) => setTimeout(r, 1_500));
    expect(await workerPids(primary)).toEqual(before);
    expect(count(server.output(), KILLED)).toBe(killedBefore);
  });
});
