import { create } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Admin, DeleteGroupRequest } from "../../gen/orisun/v1/admin_pb.js";
import { type PubSub, validateGroupName } from "../broker/pubsub.js";
import { type PrincipalDeps, principalHandlers } from "./principal-handlers.js";

export interface AdminDeps extends PrincipalDeps {
  readonly pubsub: PubSub;
}

/** The Admin service. Who may call what is decided by the authorization interceptor (see API.md). */
export function adminHandlers(deps: AdminDeps): Partial<ServiceImpl<typeof Admin>> {
  return {
    ...principalHandlers(deps),
    async deleteGroup(request: DeleteGroupRequest) {
      await deps.pubsub.deleteGroup(validateGroupName(request.consumerName));
      return create(EmptySchema);
    },
  };
}
