import cluster from "node:cluster";
import { randomUUID } from "node:crypto";
import {
  cors as connectCors,
  createContextValues,
  createMethodImplSpec,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import cors from "@fastify/cors";
import Fastify, { type FastifyBaseLogger } from "fastify";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ReflectionV1 } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1alpha } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Admin } from "../gen/orisun/v1/admin_pb.js";
import { EventStore } from "../gen/orisun/v1/eventstore_pb.js";
import { adminHandlers } from "./api/admin-handlers.js";
import { Authorization, kClient } from "./api/authorization.js";
import { withBatchedStreams } from "./api/batched-stream.js";
import { decisionHandler } from "./api/decision-handler.js";
import type { ApiDeps } from "./api/deps.js";
import { DescriptorIndex } from "./api/descriptor-index.js";
import { errorInterceptor, kRequestId, kRequestLog } from "./api/errors.js";
import { healthHandler } from "./api/health-handler.js";
import { LiveEncodings } from "./api/live-encoding.js";
import { pubsubHandler } from "./api/pubsub-handler.js";
import { reflectionHandlers } from "./api/reflection-handler.js";
import { jsonOptions, MAX_TIMEOUT_MS, requestGate } from "./api/request-decoding.js";
import { serverVersion } from "./api/server-version.js";
import { storeHandlers } from "./api/store-handlers.js";
import { subscribeHandler } from "./api/subscribe-handler.js";
import { connectionOf, kConnection, SubscriptionSlots } from "./api/subscription-slots.js";
import { countLimitsOf } from "./api/wire-counts.js";
import { Authenticator } from "./auth/authenticator.js";
import { bootstrapAdmin } from "./auth/bootstrap.js";
import { PrincipalSignals } from "./auth/principal-signals.js";
import { PrincipalsStore } from "./auth/principals-store.js";
import { LiveFeeds } from "./broker/feed.js";
import { connectNats } from "./broker/jetstream.js";
import { JetStreamPublisher } from "./broker/jetstream-publisher.js";
import { JetStreamPubSub } from "./broker/jetstream-pubsub.js";
import { JetStreamSource } from "./broker/jetstream-source.js";
import { MemoryPubSub } from "./broker/memory-pubsub.js";
import { MessageAuth } from "./broker/message-auth.js";
import type { Config } from "./config.js";
import { HealthMonitor } from "./health/monitor.js";
import { databaseDependency, natsDependency } from "./health/probes.js";
import { BodyBudget } from "./http/body-budget.js";
import { clientOf } from "./http/client-identity.js";
import { connectPlugin } from "./http/connect-plugin.js";
import { registerConsole } from "./http/console.js";
import { grpcUnaryPath, type UnaryRoute } from "./http/grpc-unary-path.js";
import { registerMetricsRoute } from "./http/metrics-route.js";
import { createOnePort, type OnePort } from "./http/one-port.js";
import { startObservability } from "./observability/observability.js";
import { BoundaryOwners } from "./process/boundary-owners.js";
import { takeHandedConnections } from "./process/connection-handoff.js";
import { loggerOptions } from "./process/logger.js";
import { captureGrpcStatus, RequestLogController } from "./process/request-log.js";
import { retryWhileUnreachable } from "./process/startup-retry.js";
import { workerSlotsOf } from "./process/worker-slots.js";
import { answerWatchdog } from "./process/worker-watchdog.js";
import { loadDeployment } from "./store/deployment.js";
import { type EventStoreOptions, EventStore as Store } from "./store/event-store.js";
import { NamedSubscriptions } from "./streaming/subscription.js";

export interface RunningApp {
  /** Base URL, e.g. http://127.0.0.1:50051 */
  readonly url: string;
  readonly port: number;
  readonly store: Store;
  readonly log: FastifyBaseLogger;
  /** How often live events were converted and serialised (for tests and metrics). */
  readonly encodings: LiveEncodings;
  /** Checks credentials of plain HTTP routes (authorizeAdminRequest for GET /metrics). */
  readonly authorization: Authorization;
  /** Request bodies still arriving (for tests). */
  readonly bodies: BodyBudget;
  /** Stops accepting, lets in-flight calls finish (up to `graceMs`), ends streams, closes pools. */
  close(graceMs?: number): Promise<void>;
}

/** Catch-up pages of 1,000; a subscriber more than 10,000 events or 32 MiB behind live catches up again. */
const SUBSCRIPTION_LIMITS = {
  pageSize: 1_000,
  bufferEvents: 10_000,
  bufferBytes: 32 * 1024 * 1024,
};

/** A client's X-Request-Id when it is a plain token of up to 64 characters, else a new UUID. */
function requestIdOf(given: string | string[] | undefined): string {
  return typeof given === "string" && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
}

export interface AppOptions {
  /**
   * SaveEvents and PublishToPubSub over binary gRPC served straight from the HTTP/2 stream
   * (grpc-unary-path.ts); false leaves them to Fastify and Connect, for tests that compare the two.
   */
  readonly grpcUnaryPath?: boolean;
}

/** The store's options from the configuration: what every server process opens its store with. */
export function storeOptionsFor(
  config: Config,
  log: Pick<FastifyBaseLogger, "info" | "warn" | "error">,
  observer?: EventStoreOptions["observer"],
): EventStoreOptions {
  return {
    url: config.pgUrl,
    schema: config.pgSchema,
    poolSize: config.pgPoolSize,
    timeouts: {
      statementMs: config.pgStatementTimeoutMs,
      lockMs: config.pgLockTimeoutMs,
      idleInTransactionMs: config.pgIdleInTransactionTimeoutMs,
      connectMs: config.pgConnectTimeoutMs,
    },
    catchUpConnections: config.catchUpConnections,
    dataDir: config.dataDir,
    minFreeBytes: config.dataMinFreeBytes,
    onDiskSpace: (low, freeBytes) =>
      low
        ? log.error(
            { dir: config.dataDir, freeBytes, minFreeBytes: config.dataMinFreeBytes },
            "the data folder's disk is nearly full: appends and imports are refused until space is freed",
          )
        : log.info(
            { dir: config.dataDir, freeBytes, minFreeBytes: config.dataMinFreeBytes },
            "the data folder's disk has room again: appends and imports go on",
          ),
    onPanic: (err) => {
      // As PostgreSQL's postmaster restarts after a PANIC: at once, before the failed statement's
      // caller is answered (its outcome is unknown), and without touching PGlite again.
      log.error({ err }, "the embedded database raised PANIC and can run nothing more: exiting");
      process.exit(70);
    },
    onIdleError: (err) => log.warn({ err }, "idle database connection failed"),
    onSignalError: (err) => log.warn({ err }, "LISTEN connection failed; reconnecting"),
    onStatisticsError: (err) => log.warn({ err }, "ANALYZE of the events table failed"),
    onAppendFault: (boundary, err) =>
      log.error({ err, boundary }, "the append path failed; waiting appends were refused"),
    groupCommit: {
      maxEvents: config.limits.maxEventsPerSave,
      maxBytes: config.limits.maxRequestBytes * 2,
      maxWaitMs: config.groupCommitWaitMs,
    },
    maxBoundaries: config.maxBoundaries,
    recentCommitsBytes: config.recentCommitsBytes,
    boundaryIdleMs: config.boundaryIdleMs,
    observer,
  };
}

/** Wires store, API and the one listening port together and starts listening. */
export async function startApp(config: Config, options: AppOptions = {}): Promise<RunningApp> {
  let onePort: OnePort | undefined;
  const app = Fastify({
    logger: loggerOptions(config),
    logController: new RequestLogController(),
    genReqId: (req) => requestIdOf(req.headers["x-request-id"]),
    serverFactory: (handler) => {
      onePort = createOnePort(handler, config.tls, config.connections, (fields, message) =>
        app.log.warn(fields, message),
      );
      return onePort.server as unknown as import("node:http").Server;
    },
  });

  const observability = await startObservability(config.observability);
  captureGrpcStatus(app);
  // PostgreSQL and NATS may come up after this process (compose, a reboot): wait for them.
  const retry = { timeoutMs: config.startupTimeoutMs, log: app.log };
  const storeOptions = storeOptionsFor(config, app.log, observability.appends);
  const store = await retryWhileUnreachable("PostgreSQL", () => Store.open(storeOptions), retry);

  // Principals live in the store; with auth on, every call is authenticated against them (see
  // api/authorization.ts) and every process hears of changes within a second.
  let authenticator: Authenticator | undefined;
  const principals = new PrincipalsStore(store.database.db, () => authenticator?.changed());
  const principalSignals = config.auth.enabled
    ? new PrincipalSignals(
        config.pgUrl,
        config.pgSchema,
        () => authenticator?.changed(),
        (err) => app.log.warn({ err }, "LISTEN orisun_principals failed; reconnecting"),
      )
    : undefined;
  if (config.auth.enabled) {
    authenticator = new Authenticator(principals, {
      cacheEntries: config.auth.cacheEntries,
      trackedClients: config.auth.trackedClients,
      watching: () => principalSignals?.connected ?? false,
    });
    try {
      await bootstrapAdmin(principals, config.auth, (message) => app.log.info(message));
    } catch (error) {
      await principalSignals?.close();
      await store.close();
      throw error;
    }
  } else if (config.auth.explicitlyOffOnNetwork) {
    app.log.warn(
      { host: config.host },
      "ORISUN_AUTH=off on a network address: anyone who can reach the port can read, write and administer every boundary",
    );
  }
  const authorization = new Authorization(authenticator);
  const mutualTls = config.tls?.clientCa !== undefined;

  // With NATS: committed events travel through JetStream (one elected publisher per boundary),
  // and pub/sub groups are JetStream consumers. Without: the same interfaces, in process.
  // Names carry the deployment's id (stored in its database), so deployments sharing one NATS
  // stay apart; messages carry a signature keyed by its secret, so nobody else can forge them.
  const deployment = await loadDeployment(store.database.db);
  const namespace = deployment.id;
  const auth = new MessageAuth(deployment.secret);
  app.log.info(
    {
      deployment: deployment.id,
      streams: `ORISUN_EVENTS_${deployment.id}_<boundary>, ORISUN_PUBSUB_${deployment.id}`,
    },
    "deployment identity",
  );
  const pubsubOptions = {
    retentionMs: config.pubsubRetentionMs,
    dedupeWindowMs: config.pubsubDedupeWindowMs,
    groupExpiryMs: config.pubsubGroupExpiryMs,
    maxGroups: config.maxGroups,
  };
  const natsUrl = config.natsUrl;
  const nats = natsUrl
    ? await retryWhileUnreachable(
        "NATS",
        () => connectNats(natsUrl, app.log, config.natsCredsFile),
        retry,
      )
    : undefined;
  // With several workers, each boundary's appends are committed by one of them (see
  // process/boundary-owners.ts), which is then also the one to publish it.
  const slots = cluster.isWorker ? workerSlotsOf(process.env) : undefined;
  const owners = slots
    ? await BoundaryOwners.start({
        slots,
        store,
        log: app.log,
        maxFrameBytes: 2 * config.limits.maxRequestBytes + 1024 * 1024,
      }).catch((err: unknown) => {
        // Correct without it, only slower on a boundary many workers write.
        app.log.warn(
          { err, dir: slots.dir },
          "cannot listen for other workers' appends; this worker commits every append itself",
        );
        return undefined;
      })
    : undefined;
  if (owners) observability.metrics?.attachRouting(owners.counts);
  // One value for the publisher and the source: both bring the streams to it.
  const streamLimits = { maxBytes: config.liveStreamMaxBytes, maxAgeMs: config.liveStreamMaxAgeMs };
  const publisher = nats
    ? new JetStreamPublisher({
        defer: owners ? (boundary) => owners.defersTo(boundary) : undefined,
        store,
        nc: nats,
        namespace,
        auth,
        log: app.log,
        idleMs: config.boundaryIdleMs,
        sweepMs: config.publisherSweepMs,
        lingerMs: config.publishLingerMs,
        handOverBytes: config.publishBufferBytes,
        streamLimits,
        observer: observability.metrics?.publisher,
      })
    : undefined;
  await publisher?.start();
  const feeds = new LiveFeeds({
    store,
    source: nats
      ? new JetStreamSource({
          nc: nats,
          namespace,
          auth,
          log: app.log,
          streamLimits,
        })
      : undefined,
    log: app.log,
  });
  observability.attach(store, (boundary) => feeds.delivered(boundary));
  const pubsub = nats
    ? new JetStreamPubSub(nats, {
        namespace,
        auth,
        log: app.log,
        ...pubsubOptions,
        maxBytes: config.pubsubMaxBytes,
      })
    : new MemoryPubSub({ ...pubsubOptions, maxBufferedBytes: config.pubsubMaxBytes });

  // The first round runs before the port opens: a probe answered at once is never UNKNOWN.
  const health = new HealthMonitor(
    [
      databaseDependency(store.database.db),
      ...(nats ? [natsDependency(nats, config.health.timeoutMs)] : []),
    ],
    config.health,
    app.log,
  );
  await health.start();

  const shutdown = new AbortController();
  const deps: ApiDeps = {
    store,
    validation: { limits: config.limits, boundaries: config.boundaries },
    shutdown: shutdown.signal,
  };
  const encodings = new LiveEncodings();
  const subscribeDeps = {
    ...deps,
    feeds,
    subscription: { ...SUBSCRIPTION_LIMITS, pageBytes: config.limits.maxReadBytes },
    named: new NamedSubscriptions(config.maxNamedSubscriptions),
    encodings,
    observer: observability.metrics?.subscriptions,
  };
  const pubsubDeps = {
    ...deps,
    pubsub,
    maxMessageBytes: config.limits.maxMessageBytes,
    observer: observability.metrics?.pubsub,
  };
  const subscriptionSlots = new SubscriptionSlots({
    perConnection: config.maxSubscriptionsPerConnection,
    total: config.maxSubscriptions,
  });

  if (config.corsOrigins.length > 0) {
    await app.register(cors, {
      origin: config.corsOrigins.includes("*") ? true : [...config.corsOrigins],
      methods: [...connectCors.allowedMethods],
      allowedHeaders: [...connectCors.allowedHeaders, "X-Request-Id", "Authorization"],
      exposedHeaders: [...connectCors.exposedHeaders, "X-Request-Id"],
      // Browsers send client certificates (and cached credentials) only when allowed to; a
      // wildcard origin never is, or any web page could act with a visitor's certificate.
      credentials: !config.corsOrigins.includes("*"),
      maxAge: 7200,
    });
  }
  const eventStore: ServiceImpl<typeof EventStore> = {
    ...storeHandlers(deps),
    ...decisionHandler(deps),
    ...subscribeHandler(subscribeDeps),
    ...pubsubHandler(pubsubDeps),
  };
  const bodyBudget = new BodyBudget(
    config.connections.maxConnectionBodyBytes,
    config.connections.maxBodyBytes,
  );
  // The request gate, and the measure of calls it and the transports refuse before the interceptors.
  const refusals = observability.refusals;
  const gate = refusals
    ? (context: HandlerContext) => {
        requestGate(context);
        refusals(context);
      }
    : requestGate;
  // Counts of entries are checked on a message's bytes before it is decoded (api/wire-counts.ts).
  const countLimits = countLimitsOf(config.limits);
  // With authentication on, a call is authenticated from its headers before its body is read.
  const admit = authenticator ? authorization.admit.bind(authorization) : undefined;
  const interceptors = [
    ...(observability.interceptor ? [observability.interceptor] : []),
    errorInterceptor,
    authorization.interceptor,
    subscriptionSlots.interceptor,
  ];
  await app.register(connectPlugin, {
    routes: (router) => {
      router.service(EventStore, eventStore);
      router.service(
        Admin,
        adminHandlers({
          ...deps,
          pubsub,
          principals,
          auth: authenticator,
          info: {
            version: serverVersion(),
            store: store.embedded ? "pglite" : "postgres",
            broker: nats ? "jetstream" : "memory",
            authEnabled: config.auth.enabled,
          },
        }),
      );
      router.service(Health, healthHandler({ health, shutdown: shutdown.signal }));
      const reflection = reflectionHandlers({
        index: new DescriptorIndex([EventStore, Admin, Health, ReflectionV1, ReflectionV1alpha]),
        maxRequests: config.reflectionMaxRequests,
        idleMs: config.connections.idleTimeoutMs,
        shutdown: shutdown.signal,
      });
      router.service(ReflectionV1, reflection.v1);
      router.service(ReflectionV1alpha, reflection.v1alpha);
      // Subscriptions send runs of events in one pass through Connect (batched-stream.ts).
      const handlers = router.handlers;
      handlers.forEach((handler, i) => {
        if (handler.method === EventStore.method.subscribeToEvents) {
          handlers[i] = withBatchedStreams(handler);
        }
      });
    },
    interceptors,
    jsonOptions,
    requestGate: gate,
    readMaxBytes: config.limits.maxRequestBytes,
    maxTimeoutMs: MAX_TIMEOUT_MS,
    bodies: { budget: bodyBudget, connection: (req) => connectionOf(req.raw) },
    admit,
    bodyTimeoutMs: config.connections.bodyTimeoutMs,
    countLimits,
    contextValues: (req) =>
      createContextValues()
        .set(kRequestLog, req.log)
        .set(kRequestId, String(req.id))
        .set(kConnection, connectionOf(req.raw))
        .set(kClient, clientOf(req.raw, mutualTls)),
  });
  if (options.grpcUnaryPath !== false) {
    onePort?.routeStreams(
      grpcUnaryPath({
        // The calls made most often, one per event or message, with answers of a few bytes.
        routes: [
          createMethodImplSpec(
            EventStore.method.saveEvents,
            eventStore.saveEvents.bind(eventStore),
          ),
          createMethodImplSpec(
            EventStore.method.publishToPubSub,
            eventStore.publishToPubSub.bind(eventStore),
          ),
        ] as UnaryRoute[],
        interceptors,
        requestGate: gate,
        readMaxBytes: config.limits.maxRequestBytes,
        maxTimeoutMs: MAX_TIMEOUT_MS,
        bodies: { budget: bodyBudget, connection: connectionOf },
        admit,
        bodyTimeoutMs: config.connections.bodyTimeoutMs,
        countLimits,
        log: app.log,
        requestId: requestIdOf,
        contextValues: (stream, requestId, log) =>
          createContextValues()
            .set(kRequestLog, log)
            .set(kRequestId, requestId)
            .set(kConnection, connectionOf(stream))
            .set(kClient, clientOf(stream, mutualTls)),
      }),
    );
  }
  await registerConsole(app, { boundaries: config.boundaries });
  if (observability.metrics) {
    await registerMetricsRoute(app, {
      scrape: () => observability.scrape(),
      contentType: observability.metrics.registry.contentType,
      // With auth on, an admin's credentials (API.md, Operations).
      authorize: async (request, reply) => {
        const { status, message } = await authorization.authorizeAdminRequest(
          request.headers.authorization,
          clientOf(request.raw, mutualTls),
          request.log,
        );
        if (status === 200) return true;
        if (status === 401) reply.header("www-authenticate", 'Basic realm="orisun"');
        reply.code(status).type("text/plain").send(`${message}\n`);
        return false;
      },
    });
  }
  app.get("/healthz", async () => ({ status: "ok" }));
  // The same cached state as gRPC health: a probe storm never reaches the database.
  app.get("/readyz", async (_req, reply) => {
    const { serving, failing } = health.state;
    if (serving) return { status: "ready" };
    return reply.code(503).send({ status: "unavailable", failing });
  });

  // A cluster worker never listens: its primary holds the port and hands it connections.
  let handoff: { port: number; draining(): void } | undefined;
  let port: number;
  if (cluster.isWorker) {
    await app.ready();
    const adopt = onePort?.adopt;
    if (!adopt) throw new Error("the server factory did not run");
    handoff = await takeHandedConnections(adopt);
    port = handoff.port;
    // Serving: from now on the primary watches this process's event loop (worker-watchdog.ts).
    answerWatchdog();
  } else {
    await app.listen({ port: config.port, host: config.host });
    const address = app.server.address();
    port = typeof address === "object" && address !== null ? address.port : config.port;
  }
  const host = config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host;
  const url = `${config.tls ? "https" : "http"}://${host}:${port}`;

  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    store,
    log: app.log,
    encodings,
    authorization,
    bodies: bodyBudget,
    close(graceMs = 10_000) {
      closing ??= (async () => {
        // NOT_SERVING first, so that watchers hear it before their streams end.
        health.stop();
        handoff?.draining();
        shutdown.abort(new Error("server is shutting down"));
        onePort?.drain();
        const force = setTimeout(() => onePort?.destroy(), graceMs);
        try {
          // Fastify waits for the connections of a server that listens; a worker's were handed to it.
          await onePort?.adoptedClosed();
          await app.close();
        } finally {
          clearTimeout(force);
          await owners?.close();
          await feeds.close();
          await pubsub.close();
          await publisher?.close();
          await nats?.drain().catch(() => {});
          await principalSignals?.close();
          await store.close();
          await observability.close();
        }
      })();
      return closing;
    },
  };
}
