import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  defineCourse,
  subscribe as subscribeToCourse,
} from "../../client-web/examples/course-subscription.js";
import { createInvoice } from "../../client-web/examples/invoice-numbers.js";
import { registerUser } from "../../client-web/examples/unique-username.js";
import {
  Code,
  ConnectError,
  compose,
  createOrisunClient,
  type Event,
  type OrisunClient,
  projection,
} from "../../client-web/src/index.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { NATS_URL } from "../support/live.js";
import { prng } from "../support/prng.js";
import { startResponseCutter } from "../support/response-cutter.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

/**
 * The decision helper and the DCB examples of client-web, against a server on PostgreSQL and
 * NATS, with 16 concurrent clients (each its own client object, as 16 processes would have).
 */

const CLIENTS = 16;

describe("decide() and the DCB examples under 16 concurrent clients", () => {
  const schema = freshSchema("dec");
  let server: SpawnedServer;
  let clients: OrisunClient[];
  const clientIn = (boundary: string, fetch?: typeof globalThis.fetch) =>
    createOrisunClient({ baseUrl: server.url, boundary, ...(fetch ? { fetch } : {}) });
  const all = async (client: OrisunClient) => {
    const events: Event[] = [];
    for await (const page of client.pages({ count: 1000 })) events.push(...page);
    return events;
  };

  beforeAll(async () => {
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_DATA_DIR: freshDataDir(),
    });
  });
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  });

  it("unique username: of 16 racing registrations of each name exactly one wins", async () => {
    clients = Array.from({ length: CLIENTS }, () => clientIn("users"));
    const names = ["ada", "grace", "alan", "edsger"];
    const outcomes = await Promise.all(
      clients.flatMap((client, i) =>
        names.map(async (name) => ({
          name,
          won: await registerUser(client, `user-${i}`, name, { maxAttempts: 50 }),
        })),
      ),
    );
    for (const name of names) {
      expect(outcomes.filter((o) => o.name === name && o.won)).toHaveLength(1);
    }
    const events = await all(clientIn("users"));
    const claimed = events.map((e) => e.tags.find((t) => t.key === "username")?.value);
    expect(claimed.sort()).toEqual([...names].sort());
  });

  it("course subscription: no course over capacity, no student over the limit, every seat taken", async () => {
    const courses = ["c1", "c2", "c3", "c4"];
    const capacity = 3;
    const maxCourses = 2;
    const setup = clientIn("courses");
    for (const course of courses) await defineCourse(setup, course, capacity);
    const random = prng(15);
    clients = Array.from({ length: CLIENTS }, () => clientIn("courses"));
    const wins = await Promise.all(
      clients.map(async (client, i) => {
        // Each student tries every course, in an order of their own, one after the other.
        const order = [...courses].sort(() => random() - 0.5);
        let won = 0;
        for (const course of order) {
          if (await subscribeToCourse(client, `s${i}`, course, maxCourses, { maxAttempts: 50 }))
            won++;
        }
        return won;
      }),
    );
    const subscriptions = (await all(setup)).filter((e) => e.eventType === "StudentSubscribed");
    const tag = (e: Event, key: string) => e.tags.find((t) => t.key === key)?.value ?? "";
    const perCourse = new Map<string, number>();
    const perStudent = new Map<string, number>();
    const pairs = new Set<string>();
    for (const e of subscriptions) {
      const [course, student] = [tag(e, "course"), tag(e, "student")];
      perCourse.set(course, (perCourse.get(course) ?? 0) + 1);
      perStudent.set(student, (perStudent.get(student) ?? 0) + 1);
      pairs.add(`${course}/${student}`);
    }
    for (const n of perCourse.values()) expect(n).toBeLessThanOrEqual(capacity);
    for (const n of perStudent.values()) expect(n).toBeLessThanOrEqual(maxCourses);
    expect(pairs.size).toBe(subscriptions.length);
    // 32 wishes for 12 seats, and a course refuses only when full: every seat goes.
    expect(subscriptions).toHaveLength(courses.length * capacity);
    expect(wins.reduce((a, b) => a + b, 0)).toBe(subscriptions.length);
  });

  it("invoice numbers: 16 clients issuing 5 each get 1..80, no gap and no duplicate", async () => {
    clients = Array.from({ length: CLIENTS }, () => clientIn("invoices"));
    const issued = (
      await Promise.all(
        clients.map(async (client) => {
          const mine: number[] = [];
          for (let k = 0; k < 5; k++) {
            mine.push(await createInvoice(client, "2026", 100 * k, { maxAttempts: 200 }));
          }
          return mine;
        }),
      )
    ).flat();
    const expected = Array.from({ length: CLIENTS * 5 }, (_, i) => i + 1);
    expect([...issued].sort((a, b) => a - b)).toEqual(expected);
    const stored = (await all(clientIn("invoices"))).map(
      (e) => (JSON.parse(e.data) as { number: number }).number,
    );
    expect(stored).toEqual(expected);
  });

  it("retries a refused condition, re-reading each time, and gives up after maxAttempts", async () => {
    const client = clientIn("conflicts");
    const counter = projection<number>({
      initial: 0,
      query: { types: ["Ticked"] },
      fold: (n) => n + 1,
    });
    // The handler itself sneaks in a matching append twice: the first two tries must be refused.
    let calls = 0;
    const decided = await client.decide(compose({ counter }), async ({ counter: n }) => {
      calls++;
      if (calls <= 2) await client.save([{ type: "Ticked", data: { by: "intruder" } }]);
      return [{ type: "Ticked", data: { seen: n } }];
    });
    expect(decided.attempts).toBe(3);
    expect(calls).toBe(3);
    expect(decided.state.counter).toBe(2);
    const events = await all(client);
    expect(events.map((e) => JSON.parse(e.data))).toEqual([
      { by: "intruder" },
      { by: "intruder" },
      { seen: 2 },
    ]);

    let tries = 0;
    const refused = await client
      .decide(
        compose({ counter }),
        async () => {
          tries++;
          await client.save([{ type: "Ticked", data: { by: "intruder" } }]);
          return [{ type: "Ticked", data: { by: "loser" } }];
        },
        { maxAttempts: 4 },
      )
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(refused?.code).toBe(Code.Aborted);
    expect(refused?.message).toMatch(/gave up after 4 attempts/);
    expect(tries).toBe(4);
    expect((await all(client)).some((e) => e.data.includes("loser"))).toBe(false);
  });

  it("is idempotent across a connection lost after the append committed", async () => {
    // The first SaveEvents reaches the server and commits; its answer is then lost, as when the
    // connection resets between the commit and the response.
    let cut = 0;
    const lossy: typeof globalThis.fetch = async (input, init) => {
      const response = await globalThis.fetch(input, init);
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      if (url.endsWith("/SaveEvents") && cut === 0) {
        cut++;
        await response.arrayBuffer();
        throw new TypeError("fetch failed: socket hang up (injected after the server answered)");
      }
      return response;
    };
    const client = clientIn("resets", lossy);
    const already = projection<boolean>({
      initial: false,
      query: { types: ["Paid"], tags: { order: "o-1" } },
      fold: () => true,
    });
    let calls = 0;
    const decided = await client.decide(compose({ already }), ({ already: paid }) => {
      calls++;
      return paid ? undefined : [{ type: "Paid", tags: { order: "o-1" }, data: { cents: 500 } }];
    });
    expect(cut).toBe(1);
    // The retry was the same request: the server answered it with the original position, so the
    // handler ran once and the payment is stored once.
    expect(calls).toBe(1);
    expect(decided.attempts).toBe(2);
    const stored = await all(clientIn("resets"));
    expect(stored).toHaveLength(1);
    expect(stored[0]?.position).toEqual(decided.position);
    expect(stored[0]?.eventId).toBe(decided.events[0]?.id);
  });

  it("is idempotent across a real connection reset after the append committed (gRPC)", async () => {
    const cutter = await startResponseCutter("127.0.0.1", server.port);
    const observer = clientIn("resets_grpc");
    const client = createOrisunClient({
      baseUrl: server.url,
      boundary: "resets_grpc",
      transport: createGrpcTransport({ baseUrl: `http://127.0.0.1:${cutter.port}` }),
    });
    const already = projection<boolean>({
      initial: false,
      query: { types: ["Paid"], tags: { order: "o-2" } },
      fold: () => true,
    });
    let calls = 0;
    let cutting: Promise<void> | undefined;
    try {
      const decided = await client.decide(compose({ already }), ({ already: paid }) => {
        calls++;
        if (paid) return undefined;
        // From now on the server's answers are held back; once the append is stored (seen by
        // another client), the connection is reset: the commit happened, its answer is lost.
        cutter.hold();
        cutting = (async () => {
          while ((await observer.read({ query: { types: ["Paid"] } })).length === 0) {
            await new Promise((r) => setTimeout(r, 10));
          }
          cutter.cut();
        })();
        return [{ type: "Paid", tags: { order: "o-2" }, data: { cents: 700 } }];
      });
      await cutting;
      expect(calls).toBe(1);
      expect(decided.attempts).toBe(2);
      const stored = await observer.read({ query: { types: ["Paid"] } });
      expect(stored.map((e) => e.eventId)).toEqual([decided.events[0]?.id]);
      expect(stored[0]?.position).toEqual(decided.position);
    } finally {
      await cutter.close();
    }
  });

  it("reads every page of a large projection at the first page's head", async () => {
    const writer = clientIn("paging");
    for (let i = 0; i < 5; i++) {
      await writer.save(
        Array.from({ length: 100 }, (_, j) => ({ type: "Item", data: { n: i * 100 + j } })),
      );
    }
    // After the first page, someone appends a matching event: the later pages must not show it.
    let pages = 0;
    const racing: typeof globalThis.fetch = async (input, init) => {
      const response = await globalThis.fetch(input, init);
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      if (url.endsWith("/ReadForDecision") && ++pages === 1) {
        await writer.save([{ type: "Item", data: { n: 1_000_000 } }]);
      }
      return response;
    };
    const total = projection<number, { n: number }>({
      initial: 0,
      query: { types: ["Item"] },
      fold: (sum, e) => sum + e.data.n,
    });
    const decided = await clientIn("paging", racing).decide(compose({ total }), () => undefined, {
      pageSize: 7,
    });
    expect(pages).toBe(Math.ceil(500 / 7));
    expect(decided.state.total).toBe((499 * 500) / 2);
    expect(decided.position).toBeUndefined();
  });
});
