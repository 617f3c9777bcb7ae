import { StoreError } from "../store/errors.js";
import {
  type PubSub,
  type PubSubMessage,
  type Subscription,
  subjectMatches,
  subjectMismatch,
} from "./pubsub.js";

export interface MemoryPubSubOptions {
  /** Messages waiting for a member longer than this are dropped. */
  readonly retentionMs: number;
  /** A repeated id within this window is dropped. */
  readonly dedupeWindowMs: number;
  /** Per group: beyond this many waiting messages the oldest are dropped. Default 100,000. */
  readonly maxBufferedMessages?: number;
  /** Per group: beyond this many waiting bytes the oldest are dropped. Default 64 MiB. */
  readonly maxBufferedBytes?: number;
}

interface Entry {
  readonly message: PubSubMessage;
  readonly at: number;
}

interface Caps {
  readonly retentionMs: number;
  readonly messages: number;
  readonly bytes: number;
}

/**
 * The embedded broker: the semantics of the JetStream one within a single process. A named group
 * lives (and buffers while it has no member) for the life of the process.
 */
export class MemoryPubSub implements PubSub {
  private readonly groups = new Map<string, Group>();
  private readonly privates = new Set<Group>();
  /** id -> when its dedupe window ends; insertion order is expiry order. */
  private readonly seen = new Map<string, number>();
  private readonly caps: Caps;
  private closed = false;

  constructor(private readonly options: MemoryPubSubOptions) {
    this.caps = {
      retentionMs: options.retentionMs,
      messages: options.maxBufferedMessages ?? 100_000,
      bytes: options.maxBufferedBytes ?? 64 * 1024 * 1024,
    };
  }

  async publish(message: PubSubMessage): Promise<void> {
    this.checkOpen();
    const now = Date.now();
    for (const [id, until] of this.seen) {
      if (until > now) break;
      this.seen.delete(id);
    }
    if (this.seen.has(message.id)) return;
    this.seen.set(message.id, now + this.options.dedupeWindowMs);
    const entry: Entry = { message, at: now };
    for (const group of [...this.groups.values(), ...this.privates]) {
      if (subjectMatches(group.subject, message.subject)) group.offer(entry);
    }
  }

  async subscribe(
    subject: string,
    consumerName: string,
    signal: AbortSignal,
  ): Promise<Subscription> {
    this.checkOpen();
    let group: Group;
    if (consumerName === "") {
      group = new Group(subject, false, this.caps);
      this.privates.add(group);
    } else {
      const existing = this.groups.get(consumerName);
      if (existing && existing.subject !== subject)
        throw subjectMismatch(consumerName, existing.subject);
      group = existing ?? new Group(subject, true, this.caps);
      this.groups.set(consumerName, group);
    }
    const member = new Member(group, () => {
      if (!group.durable) this.privates.delete(group);
    });
    group.members.add(member);
    if (signal.aborted) member.end();
    else {
      const onAbort = () => member.end();
      signal.addEventListener("abort", onAbort, { once: true });
      member.onEnd.push(() => signal.removeEventListener("abort", onAbort));
    }
    return { [Symbol.asyncIterator]: () => member };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const group of [...this.groups.values(), ...this.privates]) {
      for (const member of [...group.members]) member.end();
    }
    this.groups.clear();
    this.privates.clear();
    this.seen.clear();
  }

  private checkOpen(): void {
    if (this.closed) throw new StoreError("unavailable", "the pub/sub broker is closed");
  }
}

/** A group's waiting messages and members; invariant: `queue` is empty or no member waits. */
class Group {
  readonly members = new Set<Member>();
  private readonly waiting: Member[] = [];
  /** Taken slots before `head` are cleared so that their messages can be collected. */
  private queue: (Entry | undefined)[] = [];
  /** Index of the queue's head: shifting a long array on every take would be quadratic. */
  private head = 0;
  private bytes = 0;

  constructor(
    readonly subject: string,
    readonly durable: boolean,
    private readonly caps: Caps,
  ) {}

  offer(entry: Entry): void {
    const member = this.waiting.shift();
    if (member) {
      member.deliver(entry);
      return;
    }
    this.queue.push(entry);
    this.bytes += entry.message.data.length;
    while (
      this.queue.length - this.head > this.caps.messages ||
      (this.bytes > this.caps.bytes && this.queue.length - this.head > 1)
    ) {
      this.drop();
    }
  }

  /** A message a member took but did not acknowledge goes first to the next member. */
  giveBack(entry: Entry): void {
    const member = this.waiting.shift();
    if (member) {
      member.deliver(entry);
      return;
    }
    if (this.head > 0) this.queue[--this.head] = entry;
    else this.queue.unshift(entry);
    this.bytes += entry.message.data.length;
  }

  take(): Entry | undefined {
    const expired = Date.now() - this.caps.retentionMs;
    while (this.head < this.queue.length) {
      const entry = this.drop();
      if (entry && entry.at > expired) return entry;
    }
    return undefined;
  }

  wait(member: Member): void {
    this.waiting.push(member);
  }

  leave(member: Member): void {
    this.members.delete(member);
    const i = this.waiting.indexOf(member);
    if (i !== -1) this.waiting.splice(i, 1);
  }

  private drop(): Entry | undefined {
    const entry = this.queue[this.head];
    if (entry === undefined) return undefined;
    this.queue[this.head] = undefined;
    this.head++;
    this.bytes -= entry.message.data.length;
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    return entry;
  }
}

const DONE: IteratorResult<PubSubMessage> = { done: true, value: undefined };

/** One subscriber; holds at most one unacknowledged message, so slow members get less. */
class Member implements AsyncIterator<PubSubMessage> {
  readonly onEnd: (() => void)[] = [];
  private unacked: Entry | undefined;
  private wake: ((result: IteratorResult<PubSubMessage>) => void) | undefined;
  private ended = false;

  constructor(
    private readonly group: Group,
    onEnd: () => void,
  ) {
    this.onEnd.push(onEnd);
  }

  async next(): Promise<IteratorResult<PubSubMessage>> {
    this.unacked = undefined;
    if (this.ended) return DONE;
    const entry = this.group.take();
    if (entry) {
      this.unacked = entry;
      return { done: false, value: entry.message };
    }
    return new Promise((resolve) => {
      this.wake = resolve;
      this.group.wait(this);
    });
  }

  async return(): Promise<IteratorResult<PubSubMessage>> {
    this.end();
    return DONE;
  }

  deliver(entry: Entry): void {
    const wake = this.wake;
    this.wake = undefined;
    this.unacked = entry;
    wake?.({ done: false, value: entry.message });
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.group.leave(this);
    const unacked = this.unacked;
    this.unacked = undefined;
    if (unacked && this.group.durable) this.group.giveBack(unacked);
    this.wake?.(DONE);
    this.wake = undefined;
    for (const f of this.onEnd) f();
  }
}
