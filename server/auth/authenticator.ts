import { createHash } from "node:crypto";
import { StoreError } from "../store/errors.js";
import { parseApiKey } from "./api-key-format.js";
import { AuthError, UNAUTHENTICATED_MESSAGE } from "./auth-error.js";
import { BoundedLru } from "./bounded-lru.js";
import { FailureLimiter } from "./failure-limiter.js";
import { verifySecret } from "./passwords.js";
import type { Principal } from "./principal.js";
import type { KeyRecord, PrincipalsStore, UserRecord } from "./principals-store.js";

/** Longer authorization headers are refused unread: no credential of ours is near this long. */
export const MAX_HEADER_CHARS = 4096;
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
  readonly generation: number;
  readonly at: number;
}

type Credentials =
  | { kind: "password"; name: string; password: string }
  | { kind: "key"; id: string; secret: string };

/**
 * Turns an `authorization` header (or a verified client certificate) into a Principal. Verified
 * credentials are cached by a SHA-256 of the header, never the header itself, so that an
 * authenticated call costs a hash and a map lookup. Every change of principals (here or, through
 * LISTEN/NOTIFY, in another process) empties the cache; the generation counter keeps a
 * verification that was under way during a change from caching what it read before it.
 */
export class Authenticator {
  private generation = 0;
  private readonly cache: BoundedLru<string, Cached>;
  private readonly inflight = new Map<string, Promise<Principal>>();
  private readonly limiter: FailureLimiter;
  private readonly listeners = new Set<() => void>();

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
    this.limiter = new FailureLimiter(options.trackedClients, now);
    this.watching = options.watching;
  }

  private readonly watching: () => boolean;

  /** Principals changed somewhere: forget every verified credential, tell who re-checks. */
  changed(): void {
    this.generation++;
    this.cache.clear();
    this.inflight.clear();
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
    const hit = this.fresh(cacheKey);
    if (hit) return hit;
    const credentials = parseHeader(header);
    if (!credentials) throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE);
    const claimed = credentials.kind === "password" ? credentials.name : `key ${credentials.id}`;
    const counted = [`name:${claimed}`, `address:${client.address}`];
    if (this.limiter.blocked(counted)) {
      throw new StoreError(
        "limit_reached",
        "too many failed sign-in attempts for this name or from this address; wait a minute",
      );
    }
    // Concurrent first calls with one credential share one verification.
    let pending = this.inflight.get(cacheKey);
    if (!pending) {
      const generation = this.generation;
      pending = this.verify(credentials).then(
        (principal) => {
          if (generation === this.generation) {
            this.cache.set(cacheKey, { principal, generation, at: this.now() });
          }
          return principal;
        },
        (error: unknown) => {
          if (error instanceof AuthError) this.limiter.fail(counted);
          throw error;
        },
      );
      const settled = pending.finally(() => {
        if (this.inflight.get(cacheKey) === settled) this.inflight.delete(cacheKey);
      });
      this.inflight.set(cacheKey, settled);
      pending = settled;
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
    if (this.limiter.blocked(counted)) {
      throw new StoreError(
        "limit_reached",
        "too many failed sign-in attempts for this name or from this address; wait a minute",
      );
    }
    const user = await this.principals.getUser(name);
    const ok = await verifySecret(password, user?.passwordHash);
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

  private fresh(cacheKey: string): Principal | undefined {
    const entry = this.cache.get(cacheKey);
    if (!entry || entry.generation !== this.generation) return undefined;
    if (!this.watching() && this.now() - entry.at > UNWATCHED_TTL_MS) {
      this.cache.delete(cacheKey);
      return undefined;
    }
    return entry.principal;
  }

  private async byCertificate(name: string): Promise<Principal> {
    const cacheKey = `cert:${name}`;
    const hit = this.fresh(cacheKey);
    if (hit) return hit;
    const generation = this.generation;
    const user = await this.principals.getUser(name);
    if (!user)
      throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE, `certificate ${name}`);
    const principal = fromUser(user);
    if (generation === this.generation) {
      this.cache.set(cacheKey, { principal, generation, at: this.now() });
    }
    return principal;
  }

  private async verify(credentials: Credentials): Promise<Principal> {
    if (credentials.kind === "password") {
      const user = await this.principals.getUser(credentials.name);
      if (!(await verifySecret(credentials.password, user?.passwordHash)) || !user) {
        throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE);
      }
      return fromUser(user);
    }
    const found = await this.principals.getKey(credentials.id);
    if (!(await verifySecret(credentials.secret, found?.key.secretHash)) || !found) {
      throw new AuthError("unauthenticated", UNAUTHENTICATED_MESSAGE);
    }
    return fromKey(found.key, found.user);
  }
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
