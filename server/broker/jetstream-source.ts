import {
  type ConsumerMessages,
  DeliverPolicy,
  type JetStreamManager,
  jetstreamManager,
} from "@nats-io/jetstream";
import { type NatsConnection, nuid } from "@nats-io/transport-node";
import { StoreError } from "../store/errors.js";
import type { StoredEvent } from "../store/types.js";
import {
  type BrokerLog,
  decodeEvents,
  ensureStream,
  type LiveStreamLimits,
  streamNames,
} from "./jetstream.js";
import type { Following, LiveSource } from "./live-source.js";
import { type MessageAuth, RejectedMessages } from "./message-auth.js";

export interface JetStreamSourceOptions {
  readonly nc: NatsConnection;
  /** Must match the publisher's (the app passes its deployment id). */
  readonly namespace: string;
  /** Checks that each message was signed by this deployment; others are dropped. */
  readonly auth: MessageAuth;
  readonly log: Pick<BrokerLog, "warn">;
  /**
   * How long each pull request waits on the server; the consumer's heartbeat is half of it, and
   * two missed heartbeats make the client check (and recreate) a consumer lost on the server.
   */
  readonly pullExpiresMs?: number;
  /** The boundary streams' bounds; the publisher's must match. */
  readonly streamLimits?: LiveStreamLimits;
}

/** The boundary's JetStream stream, read through one ordered consumer per follow. */
export class JetStreamSource implements LiveSource {
  private manager: Promise<JetStreamManager> | undefined;
  private readonly followings = new Set<Following>();
  private closed = false;
  private readonly rejected: RejectedMessages;

  constructor(private readonly options: JetStreamSourceOptions) {
    this.rejected = new RejectedMessages(options.log);
  }

  async follow(
    boundary: string,
    onEvent: (event: StoredEvent) => void,
    onBroken: (error: Error) => void,
  ): Promise<Following> {
    if (this.closed) throw closedError();
    const jsm = await this.jsm();
    const { stream } = streamNames(this.options.namespace, boundary);
    const info = await ensureStream(
      jsm,
      this.options.namespace,
      boundary,
      this.options.streamLimits,
    );
    const prefix = `orisun_${nuid.next()}`;
    // Not deliver policy "new": nats.js recreates a lost ordered consumer from the last stream
    // sequence it delivered, which for "new" before any delivery is 0, so it would replay the
    // whole stream. A start sequence gives that cursor a real value; the few messages stored
    // between the info above and the consumer's creation arrive as repeats, which are allowed.
    const consumer = await jsm.jetstream().consumers.get(stream, {
      name_prefix: prefix,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: info.state.last_seq + 1,
    });
    // The consumer exists on the server now: whatever is stored from here on will be delivered.
    let stopped = false;
    let messages: ConsumerMessages | undefined;
    const following: Following = {
      stop: async () => {
        if (stopped) return;
        stopped = true;
        this.followings.delete(following);
        await messages?.close();
        try {
          // By prefix, not by the consumer's name: a recreation may be under way with the next name.
          for await (const c of jsm.consumers.list(stream)) {
            if (c.name.startsWith(`${prefix}_`)) await jsm.consumers.delete(stream, c.name);
          }
        } catch {
          // NATS is unreachable or the stream gone: the server drops the idle consumer itself.
        }
      },
    };
    const broken = (error: Error) => {
      if (stopped) return;
      void following.stop();
      onBroken(error);
    };
    messages = await consumer.consume({
      expires: this.options.pullExpiresMs ?? 10_000,
      callback: (msg) => {
        if (stopped) return;
        // Not delivered: the feed reads the real events at these positions from the store, when
        // the next genuine message shows the gap or a commit signal goes unmatched.
        if (!this.options.auth.verify(msg)) {
          this.rejected.reject({ stream, seq: msg.seq, subject: msg.subject });
          return;
        }
        let events: StoredEvent[];
        try {
          events = decodeEvents(msg.data);
        } catch (error) {
          broken(new Error(`undecodable message ${msg.seq} in ${stream}`, { cause: error }));
          return;
        }
        for (const event of events) onEvent(event);
      },
    });
    const consumed = messages;
    void (async () => {
      for await (const status of consumed.status()) {
        // nats.js would retry forever and then resume at the old stream sequence, which means
        // nothing in a recreated stream; following anew starts at the new stream's end.
        if (status.type === "stream_not_found") broken(new Error(`stream ${stream} not found`));
      }
    })().catch(() => {});
    void consumed.closed().then((result) => {
      broken(result instanceof Error ? result : new Error(`consumer on ${stream} ended`));
    });
    this.followings.add(following);
    if (this.closed) {
      await following.stop();
      throw closedError();
    }
    return following;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.followings].map((f) => f.stop().catch(() => {})));
  }

  private jsm(): Promise<JetStreamManager> {
    this.manager ??= jetstreamManager(this.options.nc).catch((error: unknown) => {
      this.manager = undefined;
      throw error;
    });
    return this.manager;
  }
}

function closedError(): StoreError {
  return new StoreError("unavailable", "the live source is closed");
}
