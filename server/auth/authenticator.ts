import { createHash } from "node:crypto";
import { StoreError } from "../store/errors.js";
import { parseApiKey } from "./api-key-format.js";
import { AuthError, UNAUTHENTICATED_MESSAGE } from "./auth-error.js";
import { BoundedLru } from "./bounded-lru.js";
import { FailureLimiter, WINDOW_MS } from "./failure-limiter.js";
import { decoy, verifySecret } from "./passwords.js";
import type { Principal } from "./principal.js";
import type { KeyRecord, PrincipalsStore, UserRecord } from "./principals-store.js";

/** Longer authorization headers are refused unread: no credential of ours is near this long. */
const MAX_HEADER_CHARS = 4096;
/** Without the LISTEN connection, a change notice may be missed: trust a cache entry this long. */
const UNWATCHED_TTL_MS = 1_000;

export interface ClientInfo {
  /** The peer's IP address, for counting failed attempts. */
  readonly address: string;
  /** The subject CN of a client certificate verified against ORISUN_TLS_CLIENT_CA. */
  readonly certUser?: string;
}

interface Cached {
  readonly principal: Principal;
  /** The stored hash the credential was verified against: unchanged, it still verifies. */
  readonly hash: string;
  readonly generation: number;
  readonly at: number;
}

interface Rejected {
  /** The stored hash it failed against (undefined: no such user or key). */
  readonly hash: string | undefined;
  readonly generation: number;
  readonly at: number;
}

type Credentials =
  | { kind: "password"; name: string; password: string }
  | { kind: "key"; id: string; secret: string };

/** What the store holds for a credential now: the principal and the hash to verify against. */
interface Found {
  readonly principal: Principal;
  readonly hash: string;
}

/**
 * Turns an `authorization` header (or a verified client certificate) into a Principal. Verified
 * credentials are cached by a SHA-256 of the header, never the header itself, so that an
 * authenticated call costs a hash and a map lookup. A change of principals (here or, through
 * LISTEN/NOTIFY, in another process) makes every entry stale: the next call re-reads its user or
 * key (one indexed query, no slow hash) and keeps the entry only if the stored hash it was
 * verified against is still there, so a changed password, a deleted user or a revoked key stops
 * working at once while everyone else pays no new verification.
 */
export class Authenticator {
  private generation = 0;
  private readonly cache: BoundedLru<string, Cached>;
  /**
   * Credentials that failed, by the same hash: a client retrying one wrong password is told so
   * at once, without another verification and without counting as a new attempt.
   */
  private readonly rejected: BoundedLru<string, Rejected>;
  private readonly inflight = new Map<string, Promise<Principal>>();
  private readonly limiter: FailureLimiter;
  private readonly listeners = new Set<() => void>();
  private readonly watching: () => boolean;

  constructor(
    private readonly principals: PrincipalsStore,
    options: {
      cacheEntries: number;
      trackedClients: number;
      /** False while change notices from other processes may be missed. */
      watching: () => boolean;
    },
    private readonly now: () => number = Date.now,
  ) {
    this.cache = new BoundedLru(options.cacheEntries);
    this.rejected = new BoundedLru(options.cacheEntries);
    this.limiter = new FailureLimiter(options.trackedClients, now);
    this.watching = options.watching;
    void decoy();
  }

  /** Principals changed somewhere: every cached credential is re-read before its next use. */
  changed(): void {
    this.generation++;
    for (const listener of this.listeners) listener();
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get currentGeneration(): number {
    return this.generation;
  }

  async authenticate(header: string | undefined, client: ClientInfo): Promise<Principal> {
    if (header === undefined || header === "") {
      if (client.certUser !== undefined) return this.byCertificate(client.certUser);
      throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE);
    }
    if (header.length > MAX_HEADER_CHARS) {
      throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE);
    }
    const cacheKey = createHash("sha256").update(header).digest("base64");
    const hit = this.cache.get(cacheKey);
    if (hit && this.current(hit)) return hit.principal;
    const credentials = parseHeader(header);
    if (!credentials) throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE);
    const claimed = credentials.kind === "password" ? credentials.name : `key ${credentials.id}`;
    const failed = this.rejected.get(cacheKey);
    if (failed && this.current(failed) && this.now() - failed.at < WINDOW_MS) {
      throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE, claimed);
    }
    // Concurrent calls with one credential share one check.
    let pending = this.inflight.get(cacheKey);
    if (!pending) {
      const counted = [`name:${claimed}`, `address:${client.address}`];
      pending = this.check(cacheKey, credentials, counted).finally(() => {
        if (this.inflight.get(cacheKey) === pending) this.inflight.delete(cacheKey);
      });
      this.inflight.set(cacheKey, pending);
    }
    try {
      return await pending;
    } catch (error) {
      if (error instanceof AuthError) throw new AuthError(error.kind, error.message, claimed);
      throw error;
    }
  }

  /** Checks a user's password, counting a wrong one as a failed attempt (ChangePassword). */
  async checkPassword(name: string, password: string, address: string): Promise<boolean> {
    const counted = [`name:${name}`, `address:${address}`];
    const decided = this.limiter.attempt(counted);
    if (!decided) throw tooMany();
    let ok: boolean;
    try {
      const user = await this.principals.getUser(name);
      ok = await verifySecret(password, user?.passwordHash);
    } finally {
      decided();
    }
    if (!ok) this.limiter.fail(counted);
    return ok;
  }

  /**
   * The principal as the store has it now, without checking its secret again: undefined when its
   * user or key is gone. Used to re-check running streams after a change.
   */
  async reload(p: Principal): Promise<Principal | undefined> {
    if (!p.authEnabled) return p;
    if (p.keyId !== undefined) {
      const found = await this.principals.getKey(p.keyId);
      return found && fromKey(found.key, found.user);
    }
    const user = await this.principals.getUser(p.user);
    return user && fromUser(user);
  }

  /** Made in this generation, and (when notices may be missed) recently. */
  private current(entry: { generation: number; at: number }): boolean {
    if (entry.generation !== this.generation) return false;
    return this.watching() || this.now() - entry.at <= UNWATCHED_TTL_MS;
  }

  private async check(
    cacheKey: string,
    credentials: Credentials,
    counted: string[],
  ): Promise<Principal> {
    const generation = this.generation;
    const found = await this.find(credentials);
    const hash = found?.hash;
    const at = this.now();
    const hit = this.cache.get(cacheKey);
    if (hit && found && hit.hash === found.hash) {
      this.cache.set(cacheKey, { principal: found.principal, hash: found.hash, generation, at });
      return found.principal;
    }
    const failed = this.rejected.get(cacheKey);
    if (failed && failed.hash === hash && at - failed.at < WINDOW_MS) {
      this.rejected.set(cacheKey, { ...failed, generation });
      throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE);
    }
    // Only a slow verification is a guess: those are what the limiter counts and refuses.
    const decided = this.limiter.attempt(counted);
    if (!decided) throw tooMany();
    const secret = credentials.kind === "password" ? credentials.password : credentials.secret;
    let ok: boolean;
    try {
      ok = await verifySecret(secret, hash);
    } finally {
      decided();
    }
    if (!ok || !found) {
      this.limiter.fail(counted);
      this.cache.delete(cacheKey);
      this.rejected.set(cacheKey, { hash, generation, at });
      throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE);
    }
    this.rejected.delete(cacheKey);
    this.cache.set(cacheKey, { principal: found.principal, hash: found.hash, generation, at });
    return found.principal;
  }

  private async find(credentials: Credentials): Promise<Found | undefined> {
    if (credentials.kind === "password") {
      const user = await this.principals.getUser(credentials.name);
      return user && { principal: fromUser(user), hash: user.passwordHash };
    }
    const found = await this.principals.getKey(credentials.id);
    return found && { principal: fromKey(found.key, found.user), hash: found.key.secretHash };
  }

  private async byCertificate(name: string): Promise<Principal> {
    const cacheKey = `cert:${name}`;
    const hit = this.cache.get(cacheKey);
    if (hit && this.current(hit)) return hit.principal;
    const generation = this.generation;
    const user = await this.principals.getUser(name);
    if (!user) {
      this.cache.delete(cacheKey);
      throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE, `certificate ${name}`);
    }
    const principal = fromUser(user);
    this.cache.set(cacheKey, { principal, hash: "", generation, at: this.now() });
    return principal;
  }
}

function tooMany(): StoreError {
  return new StoreError(
    "limit_reached",
    "too many failed sign-in attempts for this name or from this address; wait a minute",
  );
}

function fromUser(user: UserRecord): Principal {
  return { user: user.name, userAdmin: user.admin, userGrants: user.grants, authEnabled: true };
}

function fromKey(key: KeyRecord, user: UserRecord): Principal {
  return {
    user: user.name,
    keyId: key.id,
    userAdmin: user.admin,
    userGrants: user.grants,
    keyGrants: key.grants,
    authEnabled: true,
  };
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** `Basic base64(user:password)` or `Bearer <api key>`; undefined for anything else. */
export function parseHeader(header: string): Credentials | undefined {
  const match = /^(\S+) +(\S+)$/.exec(header.trim());
  if (!match) return undefined;
  const scheme = (match[1] as string).toLowerCase();
  const value = match[2] as string;
  if (scheme === "bearer") {
    const key = parseApiKey(value);
    return key && { kind: "key", ...key };
  }
  if (scheme !== "basic" || !BASE64.test(value) || value.length % 4 !== 0) return undefined;
  let decoded: string;
  try {
    decoded = utf8.decode(Buffer.from(value, "base64"));
  } catch {
    return undefined;
  }
  const colon = decoded.indexOf(":");
  if (colon <= 0) return undefined;
  return { kind: "password", name: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}
