import { create } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type Admin,
  type DeleteGroupRequest,
  GroupInfoSchema,
  ListGroupsResponseSchema,
} from "../../gen/orisun/v1/admin_pb.js";
import { type PubSub, validateGroupName } from "../broker/pubsub.js";
import type { EventStore } from "../store/event-store.js";
import { importHandler } from "./import-handler.js";
import { overviewHandlers, type ServerInfo } from "./overview-handlers.js";
import { type PrincipalDeps, principalHandlers } from "./principal-handlers.js";
import type { ValidationContext } from "./validate.js";

export interface AdminDeps extends PrincipalDeps {
  readonly pubsub: PubSub;
  readonly store: EventStore;
  readonly validation: ValidationContext;
  readonly info: ServerInfo;
}

/** The Admin service. Who may call what is decided by the authorization interceptor (see API.md). */
export function adminHandlers(deps: AdminDeps): ServiceImpl<typeof Admin> {
  return {
    ...principalHandlers(deps),
    ...overviewHandlers(deps),
    ...importHandler(deps),
    async deleteGroup(request: DeleteGroupRequest) {
      await deps.pubsub.deleteGroup(validateGroupName(request.consumerName));
      return create(EmptySchema);
    },
    async listGroups() {
      const groups = await deps.pubsub.listGroups();
      return create(ListGroupsResponseSchema, {
        groups: groups.map((g) =>
          create(GroupInfoSchema, {
            consumerName: g.name,
            subject: g.subject,
            pending: BigInt(g.pending),
            unacknowledged: BigInt(g.unacknowledged),
          }),
        ),
      });
    },
  };
}
