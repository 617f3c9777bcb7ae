import type { Position, StoredEvent } from "../store/types.js";

/** What an event is counted for besides its data and metadata: the object, id, type, tags. */
const EVENT_OVERHEAD = 256;

function size(event: StoredEvent): number {
  let bytes = EVENT_OVERHEAD + event.data.length + event.metadata.length + event.id.length;
  for (const t of event.tags) bytes += t.key.length + t.value.length + 32;
  return bytes;
}

interface Queue {
  readonly events: StoredEvent[];
  /** Index of the first event not yet taken (an array shift per event would be quadratic). */
  start: number;
  /** A commit did not fit: memory alone can no longer tell whether anything follows. */
  dropped: boolean;
}

/**
 * The commits this process made on the boundaries it publishes, handed over by the append path
 * as they committed, so that the publisher need not read them back from the store. All boundaries
 * together hold at most `maxBytes` (estimated); a commit that does not fit is dropped and the
 * publisher reads the log instead, as it does for every commit another process made.
 */
export class HandedOver {
  private readonly queues = new Map<string, Queue>();
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  /** Estimated bytes held, all boundaries together (for tests and metrics). */
  get heldBytes(): number {
    return this.bytes;
  }

  add(boundary: string, events: readonly StoredEvent[]): void {
    let queue = this.queues.get(boundary);
    if (!queue) {
      queue = { events: [], start: 0, dropped: false };
      this.queues.set(boundary, queue);
    }
    let bytes = 0;
    for (const event of events) bytes += size(event);
    if (this.bytes + bytes > this.maxBytes) {
      // The log is read from the tail on (see take), which covers what this boundary holds too:
      // letting it go now makes room for the commits after.
      queue.dropped = true;
      this.release(queue, queue.events.length);
      if (this.bytes + bytes > this.maxBytes) return;
    }
    this.bytes += bytes;
    // One push per event: a spread passes each element as an argument, and a commit of some
    // 130,000 events (a raised ORISUN_MAX_EVENTS_PER_SAVE) overflows the stack.
    for (const event of events) queue.events.push(event);
  }

  /**
   * The events that follow `after` exactly (the next prepare position, then consecutive ones),
   * at most `max`, taken out; whatever lies at or before `after` is let go. `[]` when memory holds
   * nothing after `after` and dropped nothing; undefined when the log must be read: the next
   * event is not here (another process committed it, or it did not fit).
   */
  take(boundary: string, after: Position, max: number): StoredEvent[] | undefined {
    const queue = this.queues.get(boundary);
    if (!queue) return [];
    const { events } = queue;
    let i = queue.start;
    while (i < events.length && (events[i] as StoredEvent).position.prepare <= after.prepare) i++;
    this.release(queue, i);
    if (queue.dropped) {
      // The read that follows covers what was dropped; later commits fit again.
      queue.dropped = false;
      return undefined;
    }
    if (i === events.length) return [];
    let expected = after.prepare + 1n;
    let end = i;
    while (end < events.length && end - i < max) {
      if ((events[end] as StoredEvent).position.prepare !== expected) break;
      expected++;
      end++;
    }
    if (end === i) return undefined;
    const taken = events.slice(i, end);
    this.release(queue, end);
    return taken;
  }

  /** Forgets the boundary (its publisher let it go): what it held is read from the log if needed. */
  drop(boundary: string): void {
    const queue = this.queues.get(boundary);
    if (!queue) return;
    this.release(queue, queue.events.length);
    this.queues.delete(boundary);
  }

  /** Lets go of the events before index `to`. */
  private release(queue: Queue, to: number): void {
    for (let i = queue.start; i < to; i++) this.bytes -= size(queue.events[i] as StoredEvent);
    queue.start = to;
    if (queue.start === queue.events.length) {
      queue.events.length = 0;
      queue.start = 0;
    } else if (queue.start > 1_024 && queue.start * 2 > queue.events.length) {
      queue.events.splice(0, queue.start);
      queue.start = 0;
    }
  }
}
