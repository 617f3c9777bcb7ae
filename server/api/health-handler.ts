import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  type Health,
  type HealthCheckResponse,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../gen/grpc/health/v1/health_pb.js";
import { EventStore } from "../../gen/orisun/v1/eventstore_pb.js";

/** "" is the server as a whole; both answer from the same dependencies. */
export const HEALTH_SERVICE_NAMES: readonly string[] = ["", EventStore.typeName];

/** What the handler reads: the cached state of HealthMonitor, and its changes. */
export interface HealthSource {
  readonly state: { readonly serving: boolean };
  onChange(listener: () => void): () => void;
}

export interface HealthDeps {
  readonly health: HealthSource;
  /** Aborted when the server shuts down: every Watch ends. */
  readonly shutdown: AbortSignal;
}

const known = new Set(HEALTH_SERVICE_NAMES);

/**
 * grpc.health.v1.Health as gRPC's own servers answer it: Check fails NOT_FOUND for an unknown
 * service, Watch sends SERVICE_UNKNOWN and stays open. Nothing here touches a dependency: every
 * answer is the monitor's cached state.
 */
export function healthHandler(deps: HealthDeps): ServiceImpl<typeof Health> {
  const { health, shutdown } = deps;
  const statusOf = (service: string) =>
    !known.has(service)
      ? ServingStatus.SERVICE_UNKNOWN
      : health.state.serving
        ? ServingStatus.SERVING
        : ServingStatus.NOT_SERVING;
  const response = (status: ServingStatus): HealthCheckResponse =>
    create(HealthCheckResponseSchema, { status });

  return {
    check(req) {
      const status = statusOf(req.service);
      if (status === ServingStatus.SERVICE_UNKNOWN) {
        throw new ConnectError(
          `unknown service ${JSON.stringify(req.service.slice(0, 200))}: health is served for "" and "${EventStore.typeName}"`,
          Code.NotFound,
        );
      }
      return response(status);
    },

    list() {
      return create(HealthListResponseSchema, {
        statuses: Object.fromEntries(HEALTH_SERVICE_NAMES.map((n) => [n, response(statusOf(n))])),
      });
    },

    async *watch(req, context) {
      // Only the latest status matters: changes that come faster than the client reads are
      // folded into the one it reads next.
      let wake = () => {};
      const poke = () => wake();
      const unsubscribe = health.onChange(poke);
      context.signal.addEventListener("abort", poke);
      shutdown.addEventListener("abort", poke);
      try {
        let sent: ServingStatus | undefined;
        for (;;) {
          const changed = new Promise<void>((resolve) => {
            wake = resolve;
          });
          const status = statusOf(req.service);
          if (status !== sent) {
            yield response(status);
            sent = status;
            continue;
          }
          if (shutdown.aborted || context.signal.aborted) return;
          await changed;
        }
      } finally {
        unsubscribe();
        context.signal.removeEventListener("abort", poke);
        shutdown.removeEventListener("abort", poke);
      }
    },
  };
}
