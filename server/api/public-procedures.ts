import { Health } from "../../gen/grpc/health/v1/health_pb.js";

/**
 * The URL paths any client may call without credentials, whatever authentication is configured:
 * health checks come from load balancers, Kubernetes probes and grpc_health_probe, which hold
 * none. Connect, gRPC and gRPC-Web all put an RPC at `/<service>/<method>`. Server reflection is
 * not here: it describes the API to whoever may use it.
 */
export const PUBLIC_PROCEDURES: ReadonlySet<string> = new Set([
  ...Object.values(Health.method).map((m) => `/${Health.typeName}/${m.name}`),
  "/healthz",
  "/readyz",
]);
