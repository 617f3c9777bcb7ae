import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Admin, type GrantSchema } from "../../gen/orisun/v1/admin_pb.js";
import { EventStore, SaveEventsRequestSchema } from "../../gen/orisun/v1/eventstore_pb.js";

export function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`, "utf8").toString("base64")}`;
}

export function bearer(key: string): string {
  return `Bearer ${key}`;
}

export type GrantInit = MessageInitShape<typeof GrantSchema>;

/** Clients of both services on one transport that send `authorization` with every call. */
export function clientsWith(
  transport: Transport,
  authorization: string | undefined,
): {
  store: Client<typeof EventStore>;
  admin: Client<typeof Admin>;
  headers: Record<string, string>;
} {
  const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
  return {
    store: createClient(EventStore, transport),
    admin: createClient(Admin, transport),
    headers,
  };
}

export function grpcTransport(url: string): Transport {
  return createGrpcTransport({ baseUrl: url });
}

export function oneEvent(boundary: string, id: string) {
  return create(SaveEventsRequestSchema, {
    boundary,
    events: [
      { eventId: id, eventType: "Thing", tags: [{ key: "k", value: "v" }], data: `{"id":"${id}"}` },
    ],
  });
}
