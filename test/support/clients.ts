import { type Client, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EventStore } from "../../gen/orisun/v1/eventstore_pb.js";
import type { SpawnedServer } from "./spawn-server.js";

const clients = new WeakMap<SpawnedServer, Client<typeof EventStore>>();

/**
 * One gRPC client (one HTTP/2 connection) per server, as an application keeps it: a transport per
 * call would open a connection per call and soon meet ORISUN_MAX_CONNECTIONS_PER_ADDRESS.
 */
export function eventStoreClient(server: SpawnedServer): Client<typeof EventStore> {
  let client = clients.get(server);
  if (!client) {
    client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    clients.set(server, client);
  }
  return client;
}

/** The ConnectError a call that must fail failed with; throws if it succeeded. */
export async function failure(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("expected the call to fail, it succeeded");
}
