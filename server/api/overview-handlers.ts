import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type Admin,
  BoundaryInfoSchema,
  ListBoundariesResponseSchema,
  ServerInfoSchema,
} from "../../gen/orisun/v1/admin_pb.js";
import type { EventStore } from "../store/event-store.js";
import { toProtoPosition } from "./convert.js";

export interface ServerInfo {
  readonly version: string;
  readonly store: "postgres" | "pglite";
  readonly broker: "jetstream" | "memory";
  readonly authEnabled: boolean;
}

/** ListBoundaries and GetServerInfo: what an operator or the console shows first. */
export function overviewHandlers(deps: {
  readonly store: EventStore;
  readonly info: ServerInfo;
}): Pick<ServiceImpl<typeof Admin>, "listBoundaries" | "getServerInfo"> {
  const info = create(ServerInfoSchema, deps.info);
  return {
    async listBoundaries() {
      const boundaries = await deps.store.listBoundaries();
      return create(ListBoundariesResponseSchema, {
        boundaries: boundaries.map((b) =>
          create(BoundaryInfoSchema, {
            name: b.name,
            head: toProtoPosition(b.head),
            eventCount: b.eventCount,
            createdAt: timestampFromDate(b.createdAt),
          }),
        ),
      });
    },
    async getServerInfo() {
      return info;
    },
  };
}
