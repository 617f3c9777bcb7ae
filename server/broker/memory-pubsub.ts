import { StoreError } from "../store/errors.js";
import {
  DEFAULT_GROUP_EXPIRY_MS,
  DEFAULT_MAX_GROUPS,
  type GroupInfo,
  groupDeleted,
  groupNotFound,
  type PubSub,
  type PubSubMessage,
  type Subscription,
  subjectMatches,
  subjectMismatch,
  tooManyGroups,
} from "./pubsub.js";

/** A group's backlog in memory unless ORISUN_PUBSUB_MAX_BYTES says otherwise. */
export const DEFAULT_MEMORY_GROUP_MAX_BYTES = 64 * 1024 * 1024;

export interface MemoryPubSubOptions {
  /** Messages waiting for a member longer than this are dropped. */
  readonly retentionMs: number;
  /** A repeated id within this window is dropped. */
  readonly dedupeWindowMs: number;
  /** Per group: beyond this many waiting messages the oldest are dropped. Default 100,000. */
  readonly maxBufferedMessages?: number;
  /**
   * Per group: beyond this many waiting bytes the oldest are dropped (ORISUN_PUBSUB_MAX_BYTES).
   * The ids remembered for the dedupe window are bounded by it too: beyond it the oldest are
   * forgotten before their window ends. Default DEFAULT_MEMORY_GROUP_MAX_BYTES.
   */
  readonly maxBufferedBytes?: number;
  /** A named group without members for this long is deleted with its messages. Default 7 days. */
  readonly groupExpiryMs?: number;
  /** Most named groups at once; a new one beyond is StoreError "limit_reached". Default 1,000. */
  readonly maxGroups?: number;
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
 * buffers while it has no member, until it has had none for the expiry (or the process ends).
 */
export class MemoryPubSub implements PubSub {
  private readonly groups = new Map<string, Group>();
  private readonly privates = new Set<Group>();
  /** id -> when its dedupe window ends; insertion order is expiry order. */
  private readonly seen = new Map<string, number>();
  /** What `seen` holds, estimated; kept within the bytes cap by forgetting the oldest ids early. */
  private seenBytes = 0;
  private readonly caps: Caps;
  private closed = false;

  constructor(private readonly options: MemoryPubSubOptions) {
    this.caps = {
      retentionMs: options.retentionMs,
      messages: options.maxBufferedMessages ?? 100_000,
      bytes: options.maxBufferedBytes ?? DEFAULT_MEMORY_GROUP_MAX_BYTES,
    };
  }

  async publish(message: PubSubMessage): Promise<void> {
    this.checkOpen();
    const now = Date.now();
    for (const [id, until] of this.seen) {
      if (until > now && this.seenBytes <= this.caps.bytes) break;
      this.forget(id);
    }
    if (this.seen.has(message.id)) return;
    this.seen.set(message.id, now + this.options.dedupeWindowMs);
    this.seenBytes += idCost(message.id);
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
      group = this.namedGroup(consumerName, subject);
    }
    const member = new Member(group, () => {
      if (!group.durable) this.privates.delete(group);
      else if (group.members.size === 0 && this.groups.get(consumerName) === group) {
        this.expireLater(consumerName, group);
      }
    });
    group.members.add(member);
    clearTimeout(group.expiry);
    if (signal.aborted) member.end();
    else {
      const onAbort = () => member.end();
      signal.addEventListener("abort", onAbort, { once: true });
      member.onEnd.push(() => signal.removeEventListener("abort", onAbort));
    }
    return { [Symbol.asyncIterator]: () => member };
  }

  async deleteGroup(consumerName: string): Promise<void> {
    this.checkOpen();
    const group = this.groups.get(consumerName);
    if (group === undefined) throw groupNotFound(consumerName);
    this.groups.delete(consumerName);
    clearTimeout(group.expiry);
    const error = groupDeleted(consumerName);
    for (const member of [...group.members]) member.end(error);
  }

  async listGroups(): Promise<GroupInfo[]> {
    this.checkOpen();
    return [...this.groups]
      .map(([name, group]) => ({
        name,
        subject: group.subject,
        pending: group.pending(),
        unacknowledged: group.unacknowledged(),
      }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** The names of the named groups, in order of creation. */
  groupNames(): string[] {
    return [...this.groups.keys()];
  }

  async close(): Promise<void> {
    this.closed = true;
    const groups = [...this.groups.values(), ...this.privates];
    this.groups.clear();
    this.privates.clear();
    for (const group of groups) {
      clearTimeout(group.expiry);
      for (const member of [...group.members]) member.end();
    }
    this.seen.clear();
  }

  private namedGroup(name: string, subject: string): Group {
    const existing = this.groups.get(name);
    if (existing) {
      if (existing.subject !== subject) throw subjectMismatch(name, existing.subject);
      return existing;
    }
    const max = this.options.maxGroups ?? DEFAULT_MAX_GROUPS;
    if (this.groups.size >= max) throw tooManyGroups(max);
    const group = new Group(subject, true, this.caps);
    this.groups.set(name, group);
    return group;
  }

  /** Deletes the group once it has had no member for the expiry; a member joining stops that. */
  private expireLater(name: string, group: Group): void {
    const expiryMs = this.options.groupExpiryMs ?? DEFAULT_GROUP_EXPIRY_MS;
    const deadline = Date.now() + expiryMs;
    const check = () => {
      const left = deadline - Date.now();
      // Timers fire at most ~24.8 days ahead: a longer expiry takes several.
      if (left > 0) group.expiry = setTimeout(check, Math.min(left, MAX_TIMER_MS)).unref();
      else if (group.members.size === 0 && this.groups.get(name) === group) {
        this.groups.delete(name);
      }
    };
    clearTimeout(group.expiry);
    group.expiry = setTimeout(check, Math.min(expiryMs, MAX_TIMER_MS)).unref();
  }

  private forget(id: string): void {
    this.seen.delete(id);
    this.seenBytes -= idCost(id);
  }

  private checkOpen(): void {
    if (this.closed) throw new StoreError("unavailable", "the pub/sub broker is closed");
  }
}

/** The longest delay setTimeout takes (2^31 - 1 ms); longer ones fire at once. */
const MAX_TIMER_MS = 2_147_483_647;

/** A group's waiting messages and members; invariant: `queue` is empty or no member waits. */
class Group {
  readonly members = new Set<Member>();
  /** Runs while a named group has no member; it deletes the group at the expiry. */
  expiry: NodeJS.Timeout | undefined;
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

  /** Messages stored and not yet taken (some may have outlived the retention, dropped on take). */
  pending(): number {
    return this.queue.length - this.head;
  }

  unacknowledged(): number {
    let n = 0;
    for (const member of this.members) if (member.holdsMessage()) n++;
    return n;
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

/** Memory an id takes in the dedupe map: its UTF-16 characters and the entry's overhead. */
function idCost(id: string): number {
  return 2 * id.length + 64;
}

const DONE: IteratorResult<PubSubMessage> = { done: true, value: undefined };

/** One subscriber; holds at most one unacknowledged message, so slow members get less. */
class Member implements AsyncIterator<PubSubMessage> {
  readonly onEnd: (() => void)[] = [];
  private unacked: Entry | undefined;
  private wake:
    | {
        resolve: (result: IteratorResult<PubSubMessage>) => void;
        reject: (error: StoreError) => void;
      }
    | undefined;
  private ended = false;
  /** Why the subscription ended, when not by its own choice. */
  private failure: StoreError | undefined;

  constructor(
    private readonly group: Group,
    onEnd: () => void,
  ) {
    this.onEnd.push(onEnd);
  }

  async next(): Promise<IteratorResult<PubSubMessage>> {
    this.unacked = undefined;
    if (this.ended) {
      if (this.failure) throw this.failure;
      return DONE;
    }
    const entry = this.group.take();
    if (entry) {
      this.unacked = entry;
      return { done: false, value: entry.message };
    }
    return new Promise((resolve, reject) => {
      this.wake = { resolve, reject };
      this.group.wait(this);
    });
  }

  async return(): Promise<IteratorResult<PubSubMessage>> {
    this.end();
    return DONE;
  }

  holdsMessage(): boolean {
    return this.unacked !== undefined;
  }

  deliver(entry: Entry): void {
    const wake = this.wake;
    this.wake = undefined;
    this.unacked = entry;
    wake?.resolve({ done: false, value: entry.message });
  }

  /** Ends the subscription; with `failure`, its iteration throws that instead of finishing. */
  end(failure?: StoreError): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = failure;
    this.group.leave(this);
    const unacked = this.unacked;
    this.unacked = undefined;
    if (unacked && this.group.durable) {
      this.group.giveBack({ ...unacked, message: { ...unacked.message, redelivered: true } });
    }
    if (failure) this.wake?.reject(failure);
    else this.wake?.resolve(DONE);
    this.wake = undefined;
    for (const f of this.onEnd) f();
  }
}
