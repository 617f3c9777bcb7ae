import { randomBytes } from "node:crypto";
import { JetStreamApiCodes, JetStreamApiError, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, describe, expect, it } from "vitest";
import { JetStreamPubSub, type JetStreamPubSubOptions } from "../server/broker/jetstream-pubsub.js";
import { MemoryPubSub } from "../server/broker/memory-pubsub.js";
import { MessageAuth } from "../server/broker/message-auth.js";
import type { PubSub, PubSubMessage } from "../server/broker/pubsub.js";
import { freshSchema, NATS_URL } from "./support/databases.js";

const MINUTE = 60_000;
const encoder = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function eventually(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

interface Reader {
  readonly got: PubSubMessage[];
  readonly done: Promise<void>;
  stop(): void;
}

async function join(pubsub: PubSub, subject: string, name: string): Promise<Reader> {
  const abort = new AbortController();
  const subscription = await pubsub.subscribe(subject, name, abort.signal);
  const got: PubSubMessage[] = [];
  const done = (async () => {
    for await (const m of subscription) got.push(m);
  })();
  done.catch(() => {});
  return { got, done, stop: () => abort.abort() };
}

async function leave(reader: Reader): Promise<void> {
  reader.stop();
  await reader.done;
}

async function publish(pubsub: PubSub, subject: string, ...ids: string[]): Promise<void> {
  for (const id of ids) await pubsub.publish({ id, subject, data: encoder.encode(id) });
}

interface Options {
  readonly groupExpiryMs?: number;
  readonly maxGroups?: number;
  /** ORISUN_PUBSUB_MAX_BYTES: the stream's bound on JetStream, each group's in memory. */
  readonly maxBytes?: number;
}

interface Target {
  readonly name: string;
  open(options: Options): Promise<PubSub>;
  /** Whether the broker still holds the group, asked of the broker's own storage. */
  holds(pubsub: PubSub, group: string): Promise<boolean>;
}

const windows = { retentionMs: 10 * MINUTE, dedupeWindowMs: 2 * MINUTE };
const opened: { pubsub: PubSub; nc?: NatsConnection; stream?: string }[] = [];

const targets: readonly Target[] = [
  {
    name: "the in-process broker",
    async open(options) {
      const { maxBytes, ...rest } = options;
      const pubsub = new MemoryPubSub({ ...windows, ...rest, maxBufferedBytes: maxBytes });
      opened.push({ pubsub });
      return pubsub;
    },
    async holds(pubsub, group) {
      return (pubsub as MemoryPubSub).groupNames().includes(group);
    },
  },
  {
    name: "JetStream",
    async open(options) {
      const nc = await connect({ servers: NATS_URL });
      const config: JetStreamPubSubOptions = {
        namespace: freshSchema("psl"),
        auth: new MessageAuth(randomBytes(32)),
        log: { warn: () => {} },
        ...windows,
        ...options,
      };
      const pubsub = new JetStreamPubSub(nc, config);
      opened.push({ pubsub, nc, stream: pubsub.stream });
      return pubsub;
    },
    async holds(pubsub, group) {
      const { nc, stream } = opened.find((o) => o.pubsub === pubsub) ?? {};
      if (!nc || !stream) throw new Error("not opened here");
      const jsm = await jetstreamManager(nc);
      return jsm.consumers.info(stream, group).then(
        () => true,
        (error: unknown) => {
          if (
            error instanceof JetStreamApiError &&
            error.code === JetStreamApiCodes.ConsumerNotFound
          ) {
            return false;
          }
          throw error;
        },
      );
    },
  },
];

afterAll(async () => {
  for (const { pubsub, nc, stream } of opened) {
    await pubsub.close();
    if (nc && stream) {
      const jsm = await jetstreamManager(nc);
      await jsm.streams.delete(stream).catch(() => {});
      await nc.close();
    }
  }
});

describe.each(targets)("pub/sub limits on $name", (target) => {
  it("deletes a group after it has had no member for the expiry, with its waiting messages", async () => {
    const pubsub = await target.open({ groupExpiryMs: 1_500 });
    const idle = await join(pubsub, "exp.idle", "idle_group");
    const busy = await join(pubsub, "exp.busy", "busy_group");
    await leave(idle);
    await publish(pubsub, "exp.idle", "waiting1", "waiting2");
    expect(await target.holds(pubsub, "idle_group")).toBe(true);
    await eventually(async () => !(await target.holds(pubsub, "idle_group")), "expiry", 30_000);
    // The member connected all along keeps its group, well past the expiry.
    await sleep(2_000);
    expect(await target.holds(pubsub, "busy_group")).toBe(true);
    await publish(pubsub, "exp.busy", "b1");
    await eventually(() => busy.got.length === 1, "the busy group's message");
    // The same name now starts a new, empty group: the waiting messages went with the old one.
    const again = await join(pubsub, "exp.idle", "idle_group");
    await publish(pubsub, "exp.idle", "fresh");
    await eventually(() => again.got.length === 1, "the fresh message");
    await sleep(300);
    expect(again.got.map((m) => m.id)).toEqual(["fresh"]);
    await leave(again);
    await leave(busy);
  });

  it("keeps a group whose member comes back before the expiry, with its messages", async () => {
    const pubsub = await target.open({ groupExpiryMs: 3_000 });
    const first = await join(pubsub, "back", "returning");
    await leave(first);
    await publish(pubsub, "back", "kept");
    await sleep(1_000);
    const second = await join(pubsub, "back", "returning");
    // Longer than the expiry counted from the first leave: the return reset it.
    await sleep(3_500);
    expect(await target.holds(pubsub, "returning")).toBe(true);
    await eventually(() => second.got.length === 1, "the kept message");
    expect(second.got[0]?.id).toBe("kept");
    await leave(second);
  });

  it("deletes a group on request: its members end with NOT_FOUND and its messages go", async () => {
    const pubsub = await target.open({});
    const member = await join(pubsub, "del", "doomed");
    const other = await join(pubsub, "del", "survivor");
    await publish(pubsub, "del", "d1");
    await eventually(() => member.got.length === 1 && other.got.length === 1, "first message");
    await pubsub.deleteGroup("doomed");
    await expect(member.done).rejects.toMatchObject({ kind: "not_found" });
    await expect(member.done).rejects.toThrow(/consumer group "doomed" was deleted/);
    expect(await target.holds(pubsub, "doomed")).toBe(false);
    await publish(pubsub, "del", "d2");
    await eventually(() => other.got.length === 2, "the other group's message");
    const fresh = await join(pubsub, "del", "doomed");
    await publish(pubsub, "del", "d3");
    await eventually(() => fresh.got.length === 1, "the new group's message");
    await sleep(300);
    expect(fresh.got.map((m) => m.id)).toEqual(["d3"]);
    await leave(fresh);
    await leave(other);
  });

  it("lists the named groups by name with their pending and unacknowledged counts, never private ones", async () => {
    const pubsub = await target.open({});
    const busy = await join(pubsub, "list.*", "list_busy");
    await leave(await join(pubsub, "list.>", "list_idle"));
    const own = await join(pubsub, "list.a", "");
    await publish(pubsub, "list.a", "l1", "l2", "l3");
    // The busy member holds one message unacknowledged until it asks for the next; it has asked
    // for all three, so only the idle group keeps them.
    await eventually(() => busy.got.length === 3 && own.got.length === 3, "deliveries");
    await eventually(async () => {
      const groups = await pubsub.listGroups();
      const idle = groups.find((g) => g.name === "list_idle");
      return idle?.pending === 3;
    }, "the idle group's three pending messages");
    const groups = (await pubsub.listGroups()).filter((g) => g.name.startsWith("list_"));
    expect(groups).toEqual([
      { name: "list_busy", subject: "list.*", pending: 0, unacknowledged: expect.any(Number) },
      { name: "list_idle", subject: "list.>", pending: 3, unacknowledged: 0 },
    ]);
    expect(groups[0]?.unacknowledged).toBeLessThanOrEqual(1);
    await leave(busy);
    await leave(own);
  });

  it("answers NOT_FOUND for a group it does not hold, private subscriptions included", async () => {
    const pubsub = await target.open({});
    await expect(pubsub.deleteGroup("never_made")).rejects.toMatchObject({
      kind: "not_found",
      field: "consumer_name",
    });
    const own = await join(pubsub, "mine", "");
    await publish(pubsub, "mine", "m1");
    await eventually(() => own.got.length === 1, "the private message");
    await leave(own);
  });

  it("refuses a new group beyond the cap, naming the setting, and keeps serving", async () => {
    const pubsub = await target.open({ maxGroups: 2 });
    const a = await join(pubsub, "cap", "group_a");
    const b = await join(pubsub, "cap", "group_b");
    await leave(b);
    const refused = pubsub.subscribe("cap", "group_c", new AbortController().signal);
    await expect(refused).rejects.toMatchObject({ kind: "limit_reached" });
    await expect(refused).rejects.toThrow(/ORISUN_MAX_GROUPS/);
    expect(await target.holds(pubsub, "group_c")).toBe(false);
    // Existing groups and private subscriptions are not new groups.
    const b2 = await join(pubsub, "cap", "group_b");
    const own = await join(pubsub, "cap", "");
    await publish(pubsub, "cap", "c1");
    await eventually(
      () => a.got.length === 1 && b2.got.length === 1 && own.got.length === 1,
      "every reader",
    );
    await leave(b2);
    await pubsub.deleteGroup("group_b");
    const c = await join(pubsub, "cap", "group_c");
    await leave(c);
    await leave(own);
    await leave(a);
  });

  it("keeps a group's backlog within the bound in bytes, the newest messages in order", async () => {
    const bound = 64 * 1024;
    const pubsub = await target.open({ maxBytes: bound });
    await leave(await join(pubsub, "flood", "slow"));
    const sent = Array.from({ length: 48 }, (_, i) => `m${String(i).padStart(2, "0")}`);
    for (const id of sent) {
      const data = randomBytes(4096);
      data.write(id);
      await pubsub.publish({ id, subject: "flood", data });
    }
    const back = await join(pubsub, "flood", "slow");
    await eventually(() => back.got.at(-1)?.id === "m47", "the newest message");
    await sleep(300);
    const got = back.got.map((m) => m.id);
    // A suffix of what was sent: the oldest went first, nothing in between.
    expect(got).toEqual(sent.slice(sent.length - got.length));
    // 16 messages of 4 KiB fill 64 KiB; JetStream also counts headers and framing.
    expect(got.length).toBeGreaterThanOrEqual(8);
    expect(got.length).toBeLessThanOrEqual(bound / 4096);
    for (const m of back.got) expect(Buffer.from(m.data).toString("latin1", 0, 3)).toBe(m.id);
    await leave(back);
  });
});
