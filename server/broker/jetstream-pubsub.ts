import {
  AckPolicy,
  type ConsumerConfig,
  type ConsumerInfo,
  type ConsumerMessages,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
  PubHeaders,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { type NatsConnection, nanos, RequestError } from "@nats-io/transport-node";
import { quote, StoreError } from "../store/errors.js";
import type { BrokerLog } from "./jetstream.js";
import { type MessageAuth, RejectedMessages } from "./message-auth.js";
import {
  DEFAULT_GROUP_EXPIRY_MS,
  DEFAULT_MAX_GROUPS,
  type GroupInfo,
  groupDeleted,
  groupNotFound,
  type PubSub,
  type PubSubMessage,
  type Subscription,
  subjectMismatch,
  tooManyGroups,
} from "./pubsub.js";

export interface JetStreamPubSubOptions {
  /** Keeps deployments sharing one NATS apart (the app passes its deployment id); sanitised to [A-Za-z0-9_]. */
  readonly namespace: string;
  /** Signs what is published; members drop (and acknowledge) what this deployment did not sign. */
  readonly auth: MessageAuth;
  readonly log: Pick<BrokerLog, "warn">;
  /** How long a message waits in the stream for groups that have not taken it. */
  readonly retentionMs: number;
  /** A repeated id within this window is dropped (JetStream's duplicate window). */
  readonly dedupeWindowMs: number;
  /**
   * The most bytes the stream keeps on NATS's disk (its max_bytes); past them its oldest messages
   * go, as past the retention. Default DEFAULT_PUBSUB_STREAM_MAX_BYTES.
   */
  readonly maxBytes?: number;
  /** How long a member may hold a message before JetStream gives it to another. Default 30 s. */
  readonly ackWaitMs?: number;
  /** For each JetStream request; beyond it the caller gets UNAVAILABLE. Default 5 s. */
  readonly requestTimeoutMs?: number;
  /** How long an abandoned private consumer (its process died) outlives its last pull. Default 60 s. */
  readonly privateInactiveMs?: number;
  /**
   * A group without members for this long is deleted with its messages: its consumer's
   * inactive_threshold (members' pulls keep it active). Default 7 days.
   */
  readonly groupExpiryMs?: number;
  /**
   * Most groups (durable consumers) on the stream; a new one beyond is StoreError
   * "limit_reached". Checked before creating: processes creating groups at the same moment may
   * each pass, so the count can exceed it by the creations racing in other processes. Default 1,000.
   */
  readonly maxGroups?: number;
}

/** The pub/sub stream's bound on NATS's disk unless ORISUN_PUBSUB_MAX_BYTES says otherwise. */
export const DEFAULT_PUBSUB_STREAM_MAX_BYTES = 1024 * 1024 * 1024;

/**
 * Pub/sub on one JetStream stream, `ORISUN_PUBSUB_<namespace>`, holding every message for the
 * retention window, within its bound in bytes. A named group is a durable pull consumer named like the group: every member,
 * on any server process, pulls from it, so JetStream hands each message to exactly one of them.
 * A private subscription is an ephemeral consumer, deleted when the subscription ends.
 */
export class JetStreamPubSub implements PubSub {
  readonly stream: string;
  /** Subjects of the stream are `<prefix>.<the user's subject>`. */
  readonly prefix: string;
  private readonly js: JetStreamClient;
  private readonly ackWaitMs: number;
  private readonly timeout: number;
  private manager: Promise<JetStreamManager> | undefined;
  private readonly members = new Set<JetStreamMember>();
  /** Group creations of this process, one at a time, so that the cap holds within it exactly. */
  private creating: Promise<unknown> = Promise.resolve();
  private readonly rejected: RejectedMessages;
  private closed = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: JetStreamPubSubOptions,
  ) {
    const namespace = options.namespace.replace(/[^A-Za-z0-9_]/g, "_") || "default";
    this.stream = `ORISUN_PUBSUB_${namespace}`;
    this.prefix = `orisun.pubsub.${namespace}`;
    this.ackWaitMs = options.ackWaitMs ?? 30_000;
    this.timeout = options.requestTimeoutMs ?? 5_000;
    this.js = jetstream(nc, { timeout: this.timeout });
    this.rejected = new RejectedMessages(options.log);
  }

  async publish(message: PubSubMessage): Promise<void> {
    this.checkOpen();
    this.checkPayload(message);
    const subject = `${this.prefix}.${message.subject}`;
    const msgID = this.options.auth.messageId(message.id);
    const headers = this.options.auth.headers(subject, msgID, message.data);
    const send = () =>
      this.js.publish(subject, message.data, { msgID, headers, timeout: this.timeout });
    await guard("publish the message", () => this.withStream(send));
  }

  async subscribe(
    subject: string,
    consumerName: string,
    signal: AbortSignal,
  ): Promise<Subscription> {
    this.checkOpen();
    const filter = `${this.prefix}.${subject}`;
    const info = await guard("subscribe", () =>
      this.withStream((jsm) =>
        consumerName === ""
          ? jsm.consumers.add(this.stream, this.privateConfig(filter))
          : this.group(jsm, consumerName, filter),
      ),
    );
    const durable = consumerName !== "";
    const messages = await this.js.consumers
      .getConsumerFromInfo(info)
      // One message at a time: the next pull waits until the member took the last one, so a
      // busy member leaves the group's messages to the idle ones.
      .consume({ max_messages: 1, abort_on_missing_resource: true });
    let unlisten = () => {};
    const member = new JetStreamMember(messages, {
      prefixLength: this.prefix.length + 1,
      group: consumerName,
      acks: durable,
      keepAliveMs: Math.max(1_000, Math.floor(this.ackWaitMs / 3)),
      deleted: () => this.isDeleted(consumerName),
      authentic: (m) => {
        if (this.options.auth.verify(m)) return true;
        this.rejected.reject({ stream: this.stream, seq: m.seq, subject: m.subject });
        return false;
      },
      cleanup: async () => {
        unlisten();
        this.members.delete(member);
        if (!durable) {
          await this.manager
            ?.then((jsm) => jsm.consumers.delete(this.stream, info.name))
            // Unreachable now: its inactive threshold removes it.
            .catch(() => {});
        }
      },
    });
    this.members.add(member);
    if (signal.aborted) await member.end();
    else {
      const onAbort = () => void member.end();
      signal.addEventListener("abort", onAbort, { once: true });
      unlisten = () => signal.removeEventListener("abort", onAbort);
    }
    return { [Symbol.asyncIterator]: () => member };
  }

  async deleteGroup(consumerName: string): Promise<void> {
    this.checkOpen();
    await guard("delete the consumer group", () =>
      this.withStream(async (jsm) => {
        // Private subscriptions' consumers have names too, but no durable name.
        const info = await consumerInfo(jsm, this.stream, consumerName);
        if (!info?.config.durable_name) throw groupNotFound(consumerName);
        await jsm.consumers.delete(this.stream, consumerName).catch((error: unknown) => {
          throw isConsumerMissing(error) ? groupNotFound(consumerName) : error;
        });
      }),
    );
  }

  async listGroups(): Promise<GroupInfo[]> {
    this.checkOpen();
    return guard("list the consumer groups", () =>
      this.withStream(async (jsm) => {
        const groups: GroupInfo[] = [];
        for await (const info of jsm.consumers.list(this.stream)) {
          const name = info.config.durable_name;
          if (!name) continue;
          groups.push({
            name,
            subject: (info.config.filter_subject ?? "").slice(this.prefix.length + 1),
            pending: info.num_pending,
            unacknowledged: info.num_ack_pending,
          });
        }
        return groups.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      }),
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.members].map((m) => m.end()));
  }

  /** The group's durable consumer, created on first use from the messages published from then on. */
  private async group(jsm: JetStreamManager, name: string, filter: string): Promise<ConsumerInfo> {
    const existing = await consumerInfo(jsm, this.stream, name);
    if (existing !== undefined) return this.joinable(jsm, existing, name, filter);
    const creation = this.creating.then(async () => {
      const raced = await consumerInfo(jsm, this.stream, name);
      if (raced !== undefined) return this.joinable(jsm, raced, name, filter);
      const max = this.options.maxGroups ?? DEFAULT_MAX_GROUPS;
      if ((await this.countGroups(jsm)) >= max) throw tooManyGroups(max);
      return jsm.consumers.add(this.stream, {
        durable_name: name,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.New,
        filter_subject: filter,
        ack_wait: nanos(this.ackWaitMs),
        inactive_threshold: this.groupExpiry(),
        // Members are fed one message at a time; room for many members pulling at once.
        max_waiting: 1024,
        max_ack_pending: -1,
      });
    });
    this.creating = creation.catch(() => {});
    return creation;
  }

  /** An existing group, for a member asking with `filter`; groups of older versions get the expiry. */
  private async joinable(
    jsm: JetStreamManager,
    info: ConsumerInfo,
    name: string,
    filter: string,
  ): Promise<ConsumerInfo> {
    const current = info.config.filter_subject ?? "";
    if (current !== filter) throw subjectMismatch(name, current.slice(this.prefix.length + 1));
    const expiry = this.groupExpiry();
    if (info.config.inactive_threshold === expiry) return info;
    return jsm.consumers.update(this.stream, name, { inactive_threshold: expiry });
  }

  private groupExpiry(): number {
    return nanos(this.options.groupExpiryMs ?? DEFAULT_GROUP_EXPIRY_MS);
  }

  private async countGroups(jsm: JetStreamManager): Promise<number> {
    let n = 0;
    for await (const info of jsm.consumers.list(this.stream)) if (info.config.durable_name) n++;
    return n;
  }

  /** Whether a group whose members' pulls failed was deleted while its stream lives on. */
  private async isDeleted(name: string): Promise<boolean> {
    if (name === "" || this.manager === undefined) return false;
    try {
      await (await this.manager).consumers.info(this.stream, name);
      return false;
    } catch (error) {
      // A deleted stream answers "stream not found": that is not the group's deletion.
      return isConsumerMissing(error);
    }
  }

  private privateConfig(filter: string): Partial<ConsumerConfig> {
    return {
      // Nobody else reads it and it ends with its subscriber: no acknowledgements needed.
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.New,
      filter_subject: filter,
      inactive_threshold: nanos(this.options.privateInactiveMs ?? 60_000),
    };
  }

  /**
   * Runs `work` once the stream exists; when the stream went away (an operator deleted it),
   * makes it again and retries once.
   */
  private async withStream<T>(work: (jsm: JetStreamManager) => Promise<T>): Promise<T> {
    const jsm = await this.ready();
    try {
      return await work(jsm);
    } catch (error) {
      if (!isStreamMissing(error)) throw error;
      this.manager = undefined;
      return work(await this.ready());
    }
  }

  /**
   * Creates (or updates to the configured windows and bound) the stream on first use and after a failure,
   * so that the broker starts, and recovers, whether or not NATS is up.
   */
  private ready(): Promise<JetStreamManager> {
    if (this.manager === undefined) {
      const attempt = this.ensureStream();
      this.manager = attempt;
      attempt.catch(() => {
        if (this.manager === attempt) this.manager = undefined;
      });
    }
    return this.manager;
  }

  private async ensureStream(): Promise<JetStreamManager> {
    const jsm = await jetstreamManager(this.nc, { timeout: this.timeout, checkAPI: false });
    const maxAge = nanos(this.options.retentionMs);
    // JetStream refuses a duplicate window longer than the retention.
    const window = nanos(Math.min(this.options.dedupeWindowMs, this.options.retentionMs));
    const maxBytes = this.options.maxBytes ?? DEFAULT_PUBSUB_STREAM_MAX_BYTES;
    const info = await jsm.streams.info(this.stream).catch((error: unknown) => {
      if (error instanceof JetStreamApiError && error.code === JetStreamApiCodes.StreamNotFound) {
        return undefined;
      }
      throw error;
    });
    if (info === undefined) {
      await jsm.streams.add({
        name: this.stream,
        subjects: [`${this.prefix}.>`],
        retention: RetentionPolicy.Limits,
        storage: StorageType.File,
        discard: DiscardPolicy.Old,
        max_age: maxAge,
        max_bytes: maxBytes,
        duplicate_window: window,
      });
    } else if (
      info.config.max_age !== maxAge ||
      info.config.duplicate_window !== window ||
      info.config.max_bytes !== maxBytes
    ) {
      await jsm.streams.update(this.stream, {
        max_age: maxAge,
        max_bytes: maxBytes,
        duplicate_window: window,
      });
    }
    return jsm;
  }

  /** NATS refuses messages above its max_payload (1 MiB by default), headers included. */
  private checkPayload(message: PubSubMessage): void {
    const max = this.nc.info?.max_payload;
    // The message id (with its keyed suffix) and the signature travel as headers.
    const headers = 160 + Buffer.byteLength(message.id, "utf8");
    if (max !== undefined && message.data.length + headers > max) {
      throw new StoreError(
        "too_large",
        `must be at most ${max - headers} bytes with this id (the NATS server's max_payload is ${max})`,
        "data",
      );
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new StoreError("unavailable", "the pub/sub broker is closed");
  }
}

async function consumerInfo(
  jsm: JetStreamManager,
  stream: string,
  name: string,
): Promise<ConsumerInfo | undefined> {
  return jsm.consumers.info(stream, name).catch((error: unknown) => {
    if (isConsumerMissing(error)) return undefined;
    throw error;
  });
}

function isConsumerMissing(error: unknown): boolean {
  return error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound;
}

/** A publish nobody stored (no stream listens), or an API call on a stream that is gone. */
function isStreamMissing(error: unknown): boolean {
  if (error instanceof JetStreamApiError) return error.code === JetStreamApiCodes.StreamNotFound;
  return (
    error instanceof Error && error.cause instanceof RequestError && error.cause.isNoResponders()
  );
}

/** NATS failures become the store's error: unreachable is UNAVAILABLE, a refusal is internal. */
/** JetStream's "insufficient storage resources available". */
const STORAGE_RESOURCES_EXCEEDED = 10047;

async function guard<T>(what: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof StoreError) throw error;
    if (error instanceof JetStreamApiError && error.code === STORAGE_RESOURCES_EXCEEDED) {
      throw new StoreError(
        "limit_reached",
        `NATS JetStream has no storage left to ${what}: the pub/sub stream's ORISUN_PUBSUB_MAX_BYTES is reserved on NATS's disk when the stream is made, and its max_file_store cannot hold it; lower the setting or give JetStream more storage`,
        undefined,
        { cause: error },
      );
    }
    if (error instanceof JetStreamApiError && error.status !== 503) {
      throw new StoreError(
        "internal",
        `JetStream refused to ${what}: ${error.message}`,
        undefined,
        {
          cause: error,
        },
      );
    }
    throw new StoreError(
      "unavailable",
      `NATS JetStream is unreachable, could not ${what}; retry later`,
      undefined,
      { cause: error },
    );
  }
}

interface MemberOptions {
  readonly prefixLength: number;
  readonly group: string;
  /** False for private subscriptions, whose consumer needs no acknowledgements. */
  readonly acks: boolean;
  readonly keepAliveMs: number;
  /** Asked when the pulls fail: whether the group was deleted (not the stream, nor NATS gone). */
  readonly deleted: () => Promise<boolean>;
  /** False for a message this deployment did not sign (it is then skipped, and logged). */
  readonly authentic: (m: JsMsg) => boolean;
  readonly cleanup: () => Promise<void>;
}

const DONE: IteratorResult<PubSubMessage> = { done: true, value: undefined };

/** One member's pull loop; see Subscription for when a message counts as delivered. */
class JetStreamMember implements AsyncIterator<PubSubMessage> {
  private readonly iterator: AsyncIterator<JsMsg>;
  private unacked: JsMsg | undefined;
  private keepAlive: NodeJS.Timeout | undefined;
  private ending: Promise<void> | undefined;

  constructor(
    private readonly messages: ConsumerMessages,
    private readonly options: MemberOptions,
  ) {
    this.iterator = messages[Symbol.asyncIterator]();
  }

  async next(): Promise<IteratorResult<PubSubMessage>> {
    let result: IteratorResult<PubSubMessage> | undefined;
    do result = await this.pull();
    while (result === undefined);
    return result;
  }

  /** The next message, DONE, or undefined for a forged message (acknowledged and skipped). */
  private async pull(): Promise<IteratorResult<PubSubMessage> | undefined> {
    this.settle("ack");
    if (this.ending) {
      await this.ending;
      return DONE;
    }
    let result: IteratorResult<JsMsg>;
    try {
      result = await this.iterator.next();
    } catch (error) {
      await this.end();
      throw await this.gone(error);
    }
    if (result.done) {
      // Not our own end: the connection closed for good.
      if (this.ending === undefined) {
        await this.end();
        throw await this.gone(undefined);
      }
      // Ended by us: return once the consumer is cleaned up, so that the caller sees it gone.
      await this.ending;
      return DONE;
    }
    const m = result.value;
    if (this.ending) {
      if (this.options.acks) m.nak();
      await this.ending;
      return DONE;
    }
    if (!this.options.authentic(m)) {
      // Acknowledged, so that the group is not handed it again and again.
      if (this.options.acks) m.ack();
      return undefined;
    }
    if (this.options.acks) {
      this.unacked = m;
      // A slow client must not have its message handed to another member meanwhile.
      this.keepAlive = setInterval(() => m.working(), this.options.keepAliveMs);
    }
    return {
      done: false,
      value: {
        id: publishedId(m.headers?.get(PubHeaders.MsgIdHdr) ?? ""),
        subject: m.subject.slice(this.options.prefixLength),
        data: m.data,
        redelivered: m.info.redelivered,
      },
    };
  }

  async return(): Promise<IteratorResult<PubSubMessage>> {
    await this.end();
    return DONE;
  }

  /** Stops pulling; a message not yet acknowledged goes back to the group at once. */
  end(): Promise<void> {
    this.ending ??= (async () => {
      this.settle("nak");
      // close() settles only once the iterator has run to its end, which return() makes it do;
      // an iterator never started has nothing to wait for.
      void this.messages.close();
      await this.iterator.return?.();
      await this.options.cleanup();
    })();
    return this.ending;
  }

  private settle(how: "ack" | "nak"): void {
    clearInterval(this.keepAlive);
    const m = this.unacked;
    this.unacked = undefined;
    if (how === "ack") m?.ack();
    else m?.nak();
  }

  private async gone(cause: unknown): Promise<StoreError> {
    if (await this.options.deleted()) return groupDeleted(this.options.group);
    const what =
      this.options.group === ""
        ? "the private subscription's consumer"
        : `consumer group ${quote(this.options.group)}`;
    return new StoreError(
      "unavailable",
      `${what} is gone from JetStream (deleted, or NATS closed the connection); subscribe again`,
      undefined,
      { cause },
    );
  }
}

/** The id the publisher was given: the JetStream id without MessageAuth's keyed suffix. */
function publishedId(msgId: string): string {
  const end = msgId.lastIndexOf(".");
  return end < 0 ? msgId : msgId.slice(0, end);
}
