import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { LiveFeeds } from "../../server/broker/feed.js";
import { streamNames } from "../../server/broker/jetstream.js";
import { JetStreamPublisher } from "../../server/broker/jetstream-publisher.js";
import { JetStreamSource } from "../../server/broker/jetstream-source.js";
import { MessageAuth } from "../../server/broker/message-auth.js";
import { loadDeployment } from "../../server/store/deployment.js";
import type { EventStore } from "../../server/store/event-store.js";
import type { StoredEvent } from "../../server/store/types.js";
import {
  type NamedSubscriptions,
  type SubscribeRequest,
  type SubscriptionLimits,
  subscribe,
} from "../../server/streaming/subscription.js";
import { dropSchema, freshSchema, NATS_URL, openPostgresStore, storeTargets } from "./databases.js";

export { NATS_URL };

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

export interface LiveSetup {
  readonly store: EventStore;
  readonly feeds: LiveFeeds;
  /** Consumers this setup holds on the broker; undefined where there is no broker. */
  consumers(boundary: string): Promise<number | undefined>;
  close(): Promise<void>;
}

export interface LiveTarget {
  readonly name: string;
  open(): Promise<LiveSetup>;
}

/** PostgreSQL with committed events carried by JetStream, as a production process runs. */
const jetstreamTarget: LiveTarget = {
  name: "PostgreSQL + NATS JetStream",
  async open() {
    const schema = freshSchema("js");
    const store = await openPostgresStore(schema);
    const nc = await connect({ servers: NATS_URL });
    const jsm = await jetstreamManager(nc);
    // As the app does: names and key from the identity stored in the schema.
    const deployment = await loadDeployment(store.database.db);
    const namespace = deployment.id;
    const auth = new MessageAuth(deployment.secret);
    const publisher = new JetStreamPublisher({ store, nc, namespace, auth, log: quiet });
    await publisher.start();
    const feeds = new LiveFeeds({
      store,
      source: new JetStreamSource({ nc, namespace, auth, log: quiet }),
      log: quiet,
    });
    const boundaries = new Set<string>();
    return {
      store,
      feeds,
      async consumers(boundary) {
        boundaries.add(boundary);
        const { stream } = streamNames(namespace, boundary);
        try {
          return (await jsm.consumers.list(stream).next()).length;
        } catch {
          return 0; // no stream yet: nothing published, nothing consumed
        }
      },
      async close() {
        await feeds.close();
        await publisher.close();
        await nc.close();
        await store.close();
        await dropSchema(schema);
      },
    };
  },
};

/** The same subscription suites run against each live configuration. */
export const liveTargets: readonly LiveTarget[] = [
  ...storeTargets.map((target) => ({
    name: target.name === "pglite" ? "embedded (PGlite, in-process feed)" : "PostgreSQL + LISTEN",
    async open() {
      const { store, cleanup } = await target.open();
      const feeds = new LiveFeeds({ store, source: undefined, log: quiet });
      return {
        store,
        feeds,
        consumers: async () => undefined,
        close: async () => {
          await feeds.close();
          await cleanup();
        },
      };
    },
  })),
  jetstreamTarget,
];

export const DEFAULT_LIMITS: SubscriptionLimits = {
  pageSize: 100,
  bufferEvents: 10_000,
  bufferBytes: 32 * 1024 * 1024,
};

/** A running subscription that collects what it receives. */
export interface Collector {
  readonly events: StoredEvent[];
  /** Settles when the subscription ends; rejects with its error. */
  readonly done: Promise<void>;
  cancel(): void;
  /** Resolves once `predicate` holds for the events so far (checked on each event). */
  until(predicate: (events: readonly StoredEvent[]) => boolean, timeoutMs?: number): Promise<void>;
}

export function collect(
  setup: Pick<LiveSetup, "store" | "feeds">,
  request: Partial<SubscribeRequest> & { boundary: string },
  options: {
    limits?: SubscriptionLimits;
    named?: NamedSubscriptions;
    onEvent?: () => Promise<void>;
  } = {},
): Collector {
  const abort = new AbortController();
  const events: StoredEvent[] = [];
  const waiters = new Set<() => void>();
  const done = (async () => {
    const stream = subscribe(
      {
        store: setup.store,
        feeds: setup.feeds,
        limits: options.limits ?? DEFAULT_LIMITS,
        named: options.named,
      },
      {
        query: [],
        after: { commit: 0n, prepare: 0n },
        subscriberName: "",
        ...request,
      },
      abort.signal,
    );
    for await (const run of stream) {
      for (const event of run) {
        events.push(event);
        for (const wake of waiters) wake();
        await options.onEvent?.();
      }
    }
  })();
  done.catch(() => {});
  return {
    events,
    done,
    cancel: () => abort.abort(),
    until(predicate, timeoutMs = 15_000) {
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (!predicate(events)) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out with ${events.length} events`));
        }, timeoutMs);
        waiters.add(check);
        done.then(
          () => check(),
          (error) => {
            waiters.delete(check);
            clearTimeout(timer);
            reject(error);
          },
        );
        check();
      });
    },
  };
}
