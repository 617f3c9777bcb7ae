import type { DescMethod } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextKey,
  type Interceptor,
  type StreamRequest,
  type UnaryRequest,
} from "@connectrpc/connect";
import type { FastifyBaseLogger } from "fastify";
import { AuthError } from "../auth/auth-error.js";
import type { Authenticator, ClientInfo } from "../auth/authenticator.js";
import { describeNeed, type Need } from "../auth/grants.js";
import { ANONYMOUS_ADMIN, allows, describePrincipal, type Principal } from "../auth/principal.js";
import { StoreError } from "../store/errors.js";
import { kRequestLog } from "./errors.js";

/** The authenticated caller, for handlers (WhoAmI, ChangePassword, CreateApiKey). */
export const kPrincipal = createContextKey<Principal | undefined>(undefined);
/** The caller's address and verified client certificate, from Fastify. */
export const kClient = createContextKey<ClientInfo>({ address: "unknown" });
/**
 * The caller as authenticated from the call's headers before its body was read (`admit`), and the
 * generation of principals it was authenticated in.
 */
const kAdmitted = createContextKey<{ principal: Principal; generation: number } | undefined>(
  undefined,
);

/** What a method needs once the caller is known: a permission, or only to be signed in. */
type Rule = (message: Record<string, unknown>, principal: Principal) => Need | "authenticated";

const str = (value: unknown) => (typeof value === "string" ? value : "");
const onBoundary =
  (access: "read" | "append"): Rule =>
  (m) => ({ access, boundary: str(m.boundary) });
const onSubject =
  (access: "publish" | "subscribe"): Rule =>
  (m) => ({ access, subject: str(m.subject) });
const admin: Rule = () => ({ access: "admin" });

/**
 * Every method's permission, checked here and nowhere else. A method missing from this table
 * needs the admin role (closed by default); services in OPEN need no credentials at all.
 */
const RULES: Readonly<Record<string, Rule>> = {
  "orisun.v1.EventStore/SaveEvents": onBoundary("append"),
  "orisun.v1.EventStore/GetEvents": onBoundary("read"),
  "orisun.v1.EventStore/ReadForDecision": onBoundary("read"),
  "orisun.v1.EventStore/SubscribeToEvents": onBoundary("read"),
  "orisun.v1.EventStore/PublishToPubSub": onSubject("publish"),
  "orisun.v1.EventStore/SubscribeToPubSub": onSubject("subscribe"),
  "orisun.v1.Admin/WhoAmI": () => "authenticated",
  // Oneself with a password (the handler checks old_password); anyone else needs admin.
  "orisun.v1.Admin/ChangePassword": (m, p) =>
    p.keyId === undefined && str(m.name) === p.user ? "authenticated" : { access: "admin" },
};

/** Health checks and reflection (the schema is public): load balancers and grpcurl need no credentials. */
const OPEN = new Set([
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
]);

interface LiveStream {
  readonly principal: Principal;
  readonly need: Need | "authenticated";
  readonly method: string;
  readonly log: FastifyBaseLogger | undefined;
  revoke(error: ConnectError): void;
}

/**
 * Authentication and permission checks for every RPC on every transport, before any handler
 * work: one Connect interceptor. Running streams are re-checked after every change of principals
 * and end with PERMISSION_DENIED when their permission, user or key is gone. With authentication
 * off, every caller is an anonymous admin.
 */
export class Authorization {
  private readonly streams = new Set<LiveStream>();
  private rechecking: Promise<void> | undefined;
  private again = false;

  constructor(private readonly auth: Authenticator | undefined) {
    auth?.onChange(() => this.scheduleRecheck());
  }

  /**
   * Authenticates a call from its headers alone, before its body is read, so that a caller
   * without valid credentials makes the server read (and hold) none of its body: the transports
   * read the body only once this has settled, and answer its error instead. The interceptor then
   * uses the principal found here, unless principals changed in between. Permissions need the
   * message, so they are still checked by the interceptor. Open services and authentication off:
   * nothing to do.
   */
  async admit(method: DescMethod, header: string | undefined, values: ContextValues) {
    if (!this.auth || OPEN.has(method.parent.typeName)) return;
    const generation = this.auth.currentGeneration;
    const principal = await this.authenticate(
      header,
      values.get(kClient),
      `${method.parent.typeName}/${method.name}`,
      values.get(kRequestLog),
    );
    values.set(kAdmitted, { principal, generation });
  }

  readonly interceptor: Interceptor = (next) => async (req) => {
    const method = `${req.service.typeName}/${req.method.name}`;
    if (OPEN.has(req.service.typeName)) return next(req);
    if (!this.auth) {
      req.contextValues.set(kPrincipal, ANONYMOUS_ADMIN);
      return next(req);
    }
    const log = req.contextValues.get(kRequestLog);
    const client = req.contextValues.get(kClient);
    const admitted = req.contextValues.get(kAdmitted);
    // Admitted in this generation: still valid; otherwise (a change while the body arrived, or a
    // transport that did not admit) authenticate now.
    const current = admitted?.generation === this.auth.currentGeneration ? admitted : undefined;
    const generation = current?.generation ?? this.auth.currentGeneration;
    const principal =
      current?.principal ??
      (await this.authenticate(req.header.get("authorization") ?? undefined, client, method, log));
    const [message, request] = await firstMessage(req);
    const need = (RULES[method] ?? admin)(message, principal);
    if (need !== "authenticated" && !allows(principal, need)) {
      throw this.deny(principal, need, method, log);
    }
    req.contextValues.set(kPrincipal, principal);
    if (req.method.methodKind === "unary") return next(request);

    let revoked: ConnectError | undefined;
    const stop = new AbortController();
    const stream: LiveStream = {
      principal,
      need,
      method,
      log,
      revoke(error) {
        revoked = error;
        stop.abort(error);
      },
    };
    this.streams.add(stream);
    // A change between the check above and now would have found no stream to re-check.
    if (this.auth.currentGeneration !== generation) this.scheduleRecheck();
    let res: Awaited<ReturnType<typeof next>>;
    try {
      res = await next({ ...request, signal: AbortSignal.any([req.signal, stop.signal]) });
    } catch (error) {
      this.streams.delete(stream);
      throw revoked ?? error;
    }
    if (!res.stream) {
      this.streams.delete(stream);
      return res;
    }
    const messages = res.message;
    const streams = this.streams;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } catch (error) {
          throw revoked ?? error;
        } finally {
          streams.delete(stream);
        }
        // The handler ended because its signal was aborted: tell the client why.
        if (revoked) throw revoked;
      })(),
    };
  };

  /**
   * For plain HTTP routes (GET /metrics): does this `authorization` header belong to an admin?
   * With authentication off, everyone is. Denials are logged like those of RPCs.
   */
  async authorizeAdminRequest(
    header: string | undefined,
    client: ClientInfo,
    log?: FastifyBaseLogger,
    route = "GET /metrics",
  ): Promise<{ status: 200 | 401 | 403 | 429; message: string }> {
    if (!this.auth) return { status: 200, message: "ok" };
    try {
      const principal = await this.authenticate(header, client, route, log);
      if (!allows(principal, { access: "admin" })) {
        return {
          status: 403,
          message: this.deny(principal, { access: "admin" }, route, log).rawMessage,
        };
      }
      return { status: 200, message: "ok" };
    } catch (error) {
      if (error instanceof ConnectError) {
        return {
          status: error.code === Code.ResourceExhausted ? 429 : 401,
          message: error.rawMessage,
        };
      }
      throw error;
    }
  }

  private async authenticate(
    header: string | undefined,
    client: ClientInfo,
    method: string,
    log: FastifyBaseLogger | undefined,
  ): Promise<Principal> {
    if (!this.auth) return ANONYMOUS_ADMIN;
    try {
      return await this.auth.authenticate(header, client);
    } catch (error) {
      if (error instanceof AuthError) {
        log?.warn(
          { principal: error.claimed ?? "anonymous", method, address: client.address },
          "authentication failed",
        );
        throw new ConnectError(error.message, Code.Unauthenticated);
      }
      if (error instanceof StoreError && error.kind === "limit_reached") {
        log?.warn({ principal: "anonymous", method, address: client.address }, error.message);
        throw new ConnectError(error.message, Code.ResourceExhausted);
      }
      throw error;
    }
  }

  private deny(
    principal: Principal,
    need: Need,
    method: string,
    log: FastifyBaseLogger | undefined,
  ): ConnectError {
    log?.warn(
      {
        principal: describePrincipal(principal),
        method,
        permission: need.access,
        ...whereOf(need),
      },
      "permission denied",
    );
    return new ConnectError(
      `permission denied: ${describePrincipal(principal)} lacks ${describeNeed(need)}`,
      Code.PermissionDenied,
    );
  }

  private scheduleRecheck(): void {
    if (this.rechecking) {
      this.again = true;
      return;
    }
    this.rechecking = (async () => {
      do {
        this.again = false;
        await this.recheck();
      } while (this.again);
    })().finally(() => {
      this.rechecking = undefined;
    });
  }

  /** Re-reads each running stream's principal (once per principal) and ends those no longer allowed. */
  private async recheck(): Promise<void> {
    const auth = this.auth;
    if (!auth) return;
    const reloaded = new Map<string, Promise<Principal | undefined>>();
    await Promise.all(
      [...this.streams].map(async (stream) => {
        const id = stream.principal.keyId ?? `user:${stream.principal.user}`;
        let fresh = reloaded.get(id);
        if (!fresh) {
          fresh = auth.reload(stream.principal);
          reloaded.set(id, fresh);
        }
        try {
          const now = await fresh;
          if (!now) {
            stream.log?.warn(
              {
                principal: describePrincipal(stream.principal),
                method: stream.method,
                ...(stream.need === "authenticated" ? {} : whereOf(stream.need)),
              },
              "stream ended: its user or key was removed",
            );
            stream.revoke(
              new ConnectError(
                `permission denied: ${describePrincipal(stream.principal)} no longer exists`,
                Code.PermissionDenied,
              ),
            );
          } else if (stream.need !== "authenticated" && !allows(now, stream.need)) {
            stream.revoke(this.deny(now, stream.need, stream.method, stream.log));
          }
        } catch (error) {
          // The store is unreachable: the stream keeps what it had; the next change re-checks.
          stream.log?.warn(
            { err: error, method: stream.method },
            "could not re-check a stream's permission",
          );
        }
      }),
    );
  }
}

/** The boundary or subject a permission is about, as log fields. */
function whereOf(need: Need): { boundary?: string; subject?: string } {
  if ("boundary" in need) return { boundary: need.boundary };
  if ("subject" in need) return { subject: need.subject };
  return {};
}

/**
 * The request message, also for a server stream (whose single message comes as an iterable),
 * and the request to pass on, with that message still to be read by the handler.
 */
async function firstMessage(
  req: UnaryRequest | StreamRequest,
): Promise<[Record<string, unknown>, UnaryRequest | StreamRequest]> {
  if (!req.stream) return [req.message as unknown as Record<string, unknown>, req];
  const it = req.message[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done) return [{}, { ...req, message: (async function* () {})() }];
  const rest = (async function* () {
    yield first.value;
    for (let next = await it.next(); !next.done; next = await it.next()) yield next.value;
  })();
  return [first.value as unknown as Record<string, unknown>, { ...req, message: rest }];
}
