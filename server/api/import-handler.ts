import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type Admin,
  type ImportEventsRequest,
  ImportEventsResponseSchema,
} from "../../gen/orisun/v1/admin_pb.js";
import { StoreError } from "../store/errors.js";
import type { EventStore } from "../store/event-store.js";
import type { ImportRequest } from "../store/import.js";
import { toProtoPosition } from "./convert.js";
import { toImportRequest } from "./import-validate.js";
import type { ValidationContext } from "./validate.js";

/**
 * ImportEvents: a restore's writes at their given positions (admin-only, as every Admin RPC), a
 * client stream written in one transaction, committed only when the stream ends after a message
 * with commit set. Each message is checked as it arrives, while the last one is being written; a
 * fault names its field under `messages[i]`.
 */
export function importHandler(deps: {
  readonly store: EventStore;
  readonly validation: ValidationContext;
}): Pick<ServiceImpl<typeof Admin>, "importEvents"> {
  return {
    async importEvents(requests, ctx) {
      const result = await deps.store.import(checked(requests, deps.validation), {
        signal: ctx.signal,
      });
      return create(ImportEventsResponseSchema, {
        head: result.last && toProtoPosition(result.last),
        imported: BigInt(result.imported),
      });
    },
  };
}

/**
 * The messages, each checked as it arrives, ending with an error unless the last one has commit
 * set: Node ends the request stream of a client that reset it (cancelled, or went away) as it
 * ends a finished one, so only the flag tells a complete import from an abandoned one.
 */
async function* checked(
  requests: AsyncIterable<ImportEventsRequest>,
  validation: ValidationContext,
): AsyncGenerator<ImportRequest> {
  let index = 0;
  let committed = false;
  for await (const request of requests) {
    const at = `messages[${index}]`;
    if (committed) {
      throw new StoreError("invalid", "must not follow the message with commit set", at);
    }
    committed = request.commit;
    if (request.events.length > 0 || !committed) {
      let checkedRequest: ImportRequest;
      try {
        checkedRequest = toImportRequest(request, validation);
      } catch (error) {
        throw error instanceof StoreError ? error.within(at) : error;
      }
      yield checkedRequest;
    }
    index++;
  }
  if (!committed) {
    throw new StoreError(
      "invalid",
      "the stream ended without a message with commit set, as it does when the client goes away; nothing was written (set commit on the last message)",
      "commit",
    );
  }
}
