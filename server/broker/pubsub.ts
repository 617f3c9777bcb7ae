import { quote, StoreError } from "../store/errors.js";

/** A pub/sub message, as published and as delivered. */
export interface PubSubMessage {
  readonly id: string;
  readonly subject: string;
  readonly data: Uint8Array;
}

/**
 * The messages of one member of a group. Asking for the next message acknowledges the one before
 * it; ending the iteration (`return()`, or the subscribe signal) with a message not yet
 * acknowledged hands that message to another member of the group. So in an RPC handler
 *
 *     for await (const m of subscription) yield toProto(m);
 *
 * a message counts as delivered only once the handler's `yield` has resumed, that is once Connect
 * has written it to the client: a client that drops mid-flight loses nothing (at least once).
 * A subscription is iterated once.
 */
export type Subscription = AsyncIterable<PubSubMessage>;

/** A durable group and what waits for it. */
export interface GroupInfo {
  readonly name: string;
  /** The subject pattern its members subscribe with. */
  readonly subject: string;
  /** Stored for the group, not yet delivered. */
  readonly pending: number;
  /** Delivered to a member, not yet acknowledged. */
  readonly unacknowledged: number;
}

/** Load-balanced pub/sub: the in-process broker, or JetStream shared by many server processes. */
export interface PubSub {
  /**
   * Stores the message for every group whose subject matches it. Republishing an id within the
   * dedupe window succeeds and delivers nothing new. Inputs are validated by the caller.
   */
  publish(message: PubSubMessage): Promise<void>;
  /**
   * Joins the group `consumerName` (created with `subject` on first use; another subject for an
   * existing group is StoreError "invalid"), or with an empty name opens a private subscription.
   * Resolves once the subscription is in place: every message published from then on reaches it.
   * The subscription ends when `signal` aborts or the broker closes.
   */
  subscribe(subject: string, consumerName: string, signal: AbortSignal): Promise<Subscription>;
  /**
   * Deletes the named group with the messages waiting for it; its members' subscriptions end
   * with StoreError "not_found" (groupDeleted). An unknown name is StoreError "not_found".
   */
  deleteGroup(consumerName: string): Promise<void>;
  /** The named (durable) groups by name, at most ORISUN_MAX_GROUPS of them. */
  listGroups(): Promise<GroupInfo[]>;
  /** Ends every subscription; later calls fail with StoreError "unavailable". */
  close(): Promise<void>;
}

/** Room for deep hierarchies while staying far below NATS's 4 KiB protocol line with our prefix. */
export const MAX_SUBJECT_BYTES = 256;
export const MAX_MESSAGE_ID_BYTES = 256;
/** NATS durable names allow no `.`, `*`, `>` nor whitespace; a plain set keeps names portable. */
const CONSUMER_NAME = /^[A-Za-z0-9_-]{1,128}$/;
/** Whitespace and control characters, which end a subject in the NATS protocol. */
const SUBJECT_BREAKERS = /[\s\p{Cc}]/u;

const invalid = (field: string, rule: string) => new StoreError("invalid", rule, field);
const bytes = (s: string) => Buffer.byteLength(s, "utf8");

function subjectTokens(subject: string, field: string): string[] {
  if (subject === "") throw invalid(field, "must not be empty");
  if (bytes(subject) > MAX_SUBJECT_BYTES) {
    throw new StoreError("too_large", `must be at most ${MAX_SUBJECT_BYTES} bytes of UTF-8`, field);
  }
  const bad = SUBJECT_BREAKERS.exec(subject);
  if (bad) {
    const code = (bad[0].codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, "0");
    throw invalid(
      field,
      `must not contain whitespace or control characters (U+${code} at index ${bad.index})`,
    );
  }
  const tokens = subject.split(".");
  if (tokens.includes("")) {
    throw invalid(
      field,
      `must not have empty tokens (no leading, trailing or doubled "."), got ${quote(subject)}`,
    );
  }
  return tokens;
}

/** A subject to publish to: NATS syntax without wildcards, e.g. `orders.created`. */
export function validatePublishSubject(subject: string, field = "subject"): string {
  for (const token of subjectTokens(subject, field)) {
    if (token.includes("*") || token.includes(">")) {
      throw invalid(
        field,
        `must not contain the wildcards "*" or ">" when publishing, got ${quote(subject)}`,
      );
    }
  }
  return subject;
}

/** A subject to subscribe to: NATS syntax; `*` stands for one token, a final `>` for one or more. */
export function validateSubscribeSubject(subject: string, field = "subject"): string {
  const tokens = subjectTokens(subject, field);
  tokens.forEach((token, i) => {
    if (token !== "*" && token !== ">" && (token.includes("*") || token.includes(">"))) {
      throw invalid(
        field,
        `a wildcard must be a whole token ("a.*.c", not "a.b*.c"), got token ${quote(token)}`,
      );
    }
    if (token === ">" && i !== tokens.length - 1) {
      throw invalid(field, `">" may only be the last token, got ${quote(subject)}`);
    }
  });
  return subject;
}

/** Empty: a private subscription; otherwise the name of a durable, load-balanced group. */
export function validateConsumerName(name: string, field = "consumer_name"): string {
  if (name !== "" && !CONSUMER_NAME.test(name)) {
    throw invalid(
      field,
      `must be empty (a private subscription) or match ${CONSUMER_NAME.source} (1 to 128 of A-Z a-z 0-9 _ -), got ${quote(name)}`,
    );
  }
  return name;
}

/**
 * A message id travels as a NATS header value: line breaks would end the header and surrounding
 * blanks would be trimmed, so the id delivered would differ from the one published.
 */
export function validateMessageId(id: string, field = "id"): string {
  if (bytes(id) > MAX_MESSAGE_ID_BYTES) {
    throw new StoreError(
      "too_large",
      `must be at most ${MAX_MESSAGE_ID_BYTES} bytes of UTF-8`,
      field,
    );
  }
  if (/\p{Cc}/u.test(id)) throw invalid(field, "must not contain control characters");
  if (id !== id.trim()) throw invalid(field, "must not start or end with whitespace");
  return id;
}

/** A group's name for DeleteGroup: a private subscription has none, so it must not be empty. */
export function validateGroupName(name: string, field = "consumer_name"): string {
  if (name === "") throw invalid(field, "must name a consumer group");
  return validateConsumerName(name, field);
}

/** Durable groups kept per deployment unless configured otherwise (ORISUN_MAX_GROUPS). */
export const DEFAULT_MAX_GROUPS = 1_000;
/** How long a group without members is kept unless configured (ORISUN_PUBSUB_GROUP_EXPIRY). */
export const DEFAULT_GROUP_EXPIRY_MS = 7 * 86_400_000;

export function groupNotFound(name: string): StoreError {
  return new StoreError(
    "not_found",
    `no consumer group ${quote(name)} (never made, deleted, or expired after its last member left)`,
    "consumer_name",
  );
}

/** How a member's subscription ends when its group is deleted. */
export function groupDeleted(name: string): StoreError {
  return new StoreError(
    "not_found",
    `consumer group ${quote(name)} was deleted; subscribing again makes a new, empty group`,
    "consumer_name",
  );
}

export function tooManyGroups(max: number): StoreError {
  return new StoreError(
    "limit_reached",
    `the deployment has reached ORISUN_MAX_GROUPS (${max}) consumer groups; join an existing group, use a private subscription (empty consumer_name), or delete a group`,
    "consumer_name",
  );
}

/** The answer to a member asking for an existing group with another subject. */
export function subjectMismatch(group: string, subject: string): StoreError {
  return new StoreError(
    "invalid",
    `consumer group ${quote(group)} exists with subject ${quote(subject)}; its members must use that subject (or pick another consumer_name)`,
    "subject",
  );
}

/** NATS matching: `*` matches exactly one token, a final `>` one or more. Both subjects are valid. */
export function subjectMatches(pattern: string, subject: string): boolean {
  const want = pattern.split(".");
  const have = subject.split(".");
  for (let i = 0; i < want.length; i++) {
    const token = want[i];
    if (token === ">") return have.length > i;
    if (i >= have.length) return false;
    if (token !== "*" && token !== have[i]) return false;
  }
  return want.length === have.length;
}
