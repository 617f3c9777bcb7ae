import { type Client, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type Event, EventStore, type Position } from "../../gen/orisun/v1/eventstore_pb.js";
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

/**
 * Every event of `boundary`, in position order, read in GetEvents pages of `count` up to the head
 * of the first page: a page may hold fewer than `count` events and not be the last (the server
 * also stops it at ORISUN_MAX_READ_BYTES), so the walk ends at the head, not at a short page.
 */
export async function readAllEvents(
  client: Client<typeof EventStore>,
  boundary: string,
  count = 10_000,
): Promise<Event[]> {
  const all: Event[] = [];
  let head: Position | undefined;
  for (;;) {
    const last = all.at(-1)?.position;
    const page = await client.getEvents({
      boundary,
      count,
      fromPosition: last && { ...last, preparePosition: last.preparePosition + 1n },
    });
    head ??= page.head;
    all.push(...page.events);
    const reached = all.at(-1)?.position;
    if (
      page.events.length === 0 ||
      head === undefined ||
      (reached?.commitPosition === head.commitPosition &&
        reached.preparePosition === head.preparePosition)
    ) {
      return all;
    }
  }
}
