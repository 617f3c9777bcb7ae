import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { type Admin, ImportEventsResponseSchema } from "../../gen/orisun/v1/admin_pb.js";
import type { EventStore } from "../store/event-store.js";
import { toProtoPosition } from "./convert.js";
import { toImportRequest } from "./import-validate.js";
import type { ValidationContext } from "./validate.js";

/** ImportEvents: a restore's writes, at their given positions (admin-only, as every Admin RPC). */
export function importHandler(deps: {
  readonly store: EventStore;
  readonly validation: ValidationContext;
}): Pick<ServiceImpl<typeof Admin>, "importEvents"> {
  return {
    async importEvents(request, ctx) {
      const imported = toImportRequest(request, deps.validation);
      const head = await deps.store.import(imported, { signal: ctx.signal });
      return create(ImportEventsResponseSchema, {
        head: toProtoPosition(head),
        imported: BigInt(imported.events.length),
      });
    },
  };
}
