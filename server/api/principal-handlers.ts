import { create } from "@bufbuild/protobuf";
import { EmptySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  type Admin,
  type ApiKey,
  ApiKeySchema,
  CreateApiKeyResponseSchema,
  GrantSchema,
  ListApiKeysResponseSchema,
  ListUsersResponseSchema,
  type Grant as ProtoGrant,
  type User,
  UserSchema,
  WhoAmIResponseSchema,
} from "../../gen/orisun/v1/admin_pb.js";
import { KEY_ID, newApiKey } from "../auth/api-key-format.js";
import type { Authenticator } from "../auth/authenticator.js";
import { describeNeed, type Grant, uncovered, validateGrants } from "../auth/grants.js";
import { hashSecret, verifySecret } from "../auth/passwords.js";
import { effectivePermissions, type Principal } from "../auth/principal.js";
import type { KeyRecord, PrincipalsStore, UserRecord } from "../auth/principals-store.js";
import { MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, USER_NAME } from "../config.js";
import { StoreError } from "../store/errors.js";
import { kClient, kPrincipal } from "./authorization.js";

export interface PrincipalDeps {
  readonly principals: PrincipalsStore;
  /** Undefined with authentication off. */
  readonly auth: Authenticator | undefined;
}

type PrincipalMethods =
  | "whoAmI"
  | "createUser"
  | "deleteUser"
  | "listUsers"
  | "changePassword"
  | "createApiKey"
  | "revokeApiKey"
  | "listApiKeys";

/**
 * The Admin RPCs for users and API keys. Who may call them is decided by the authorization
 * interceptor; these validate, enforce the rules of the store (last admin, a key within its
 * user's permissions) and never return a secret except a new key's, once.
 */
export function principalHandlers(
  deps: PrincipalDeps,
): Pick<ServiceImpl<typeof Admin>, PrincipalMethods> {
  return {
    async whoAmI(_request, ctx) {
      const principal = principalOf(ctx);
      const { admin, grants } = effectivePermissions(principal);
      return create(WhoAmIResponseSchema, {
        user: principal.user,
        apiKeyId: principal.keyId ?? "",
        admin,
        grants: grants.map(toProtoGrant),
        authEnabled: principal.authEnabled,
      });
    },

    async createUser(request) {
      const name = userName(request.name, "name");
      const password = validPassword(request.password, "password");
      const grants = validateGrants(request.grants);
      const user = await deps.principals.createUser({
        name,
        passwordHash: await hashSecret(password),
        admin: request.admin,
        grants,
      });
      return toProtoUser(user);
    },

    async deleteUser(request) {
      await deps.principals.deleteUser(userName(request.name, "name"));
      return create(EmptySchema);
    },

    async listUsers() {
      const users = await deps.principals.listUsers();
      return create(ListUsersResponseSchema, { users: users.map(toProtoUser) });
    },

    async changePassword(request, ctx) {
      const principal = principalOf(ctx);
      const name = userName(request.name, "name");
      const password = validPassword(request.newPassword, "new_password");
      // The interceptor let a non-admin through only for their own name, signed in as that user.
      const self =
        principal.authEnabled && principal.keyId === undefined && principal.user === name;
      // An admin may leave old_password empty for another user; given, it must match.
      if (self || request.oldPassword !== "") {
        const address = ctx.values.get(kClient).address;
        const matches = deps.auth
          ? await deps.auth.checkPassword(name, request.oldPassword, address)
          : await verifySecret(
              request.oldPassword,
              (await deps.principals.getUser(name))?.passwordHash,
            );
        if (!matches) {
          if (!(await deps.principals.getUser(name))) {
            throw new StoreError("not_found", `no user ${JSON.stringify(name)}`, "name");
          }
          throw new ConnectError(
            "old_password: does not match the user's password",
            Code.PermissionDenied,
          );
        }
      }
      await deps.principals.setPassword(name, await hashSecret(password));
      return create(EmptySchema);
    },

    async createApiKey(request, ctx) {
      const principal = principalOf(ctx);
      const owner = request.user === "" ? principal.user : userName(request.user, "user");
      if (owner === "") {
        throw new StoreError(
          "invalid",
          "must name a user (authentication is off: there is no caller)",
          "user",
        );
      }
      const name = keyName(request.name);
      const grants = validateGrants(request.grants);
      const user = await deps.principals.getUser(owner);
      if (!user) throw new StoreError("not_found", `no user ${JSON.stringify(owner)}`, "user");
      if (!user.admin) {
        const beyond = uncovered(user.grants, grants);
        if (beyond) {
          throw new ConnectError(
            `permission denied: grants: ${describeNeed(beyond)} is beyond what user ${JSON.stringify(owner)} may do`,
            Code.PermissionDenied,
          );
        }
      }
      const { id, secret, token } = newApiKey();
      const key = await deps.principals.createKey({
        id,
        user: owner,
        name,
        secretHash: await hashSecret(secret),
        grants,
      });
      return create(CreateApiKeyResponseSchema, { key: toProtoKey(key), secret: token });
    },

    async revokeApiKey(request) {
      if (!KEY_ID.test(request.id)) {
        throw new StoreError(
          "not_found",
          `no API key ${JSON.stringify(request.id.slice(0, 40))}`,
          "id",
        );
      }
      await deps.principals.revokeKey(request.id);
      return create(EmptySchema);
    },

    async listApiKeys(request) {
      const user = request.user === "" ? undefined : userName(request.user, "user");
      const keys = await deps.principals.listKeys(user);
      return create(ListApiKeysResponseSchema, { keys: keys.map(toProtoKey) });
    },
  };
}

function principalOf(ctx: HandlerContext): Principal {
  const principal = ctx.values.get(kPrincipal);
  // The interceptor sets it on every call it lets through.
  if (!principal) throw new ConnectError("no principal for this call", Code.Internal);
  return principal;
}

function userName(name: string, field: string): string {
  if (!USER_NAME.test(name)) {
    throw new StoreError(
      "invalid",
      `must match ${USER_NAME.source} (1 to 64 of A-Z a-z 0-9 _ . @ -), got ${JSON.stringify(name.slice(0, 80))}`,
      field,
    );
  }
  return name;
}

const KEY_NAME = /^[a-zA-Z0-9_.@ -]{1,64}$/;
function keyName(name: string): string {
  if (!KEY_NAME.test(name)) {
    throw new StoreError(
      "invalid",
      `must match ${KEY_NAME.source} (1 to 64 of A-Z a-z 0-9 _ . @ - and space), got ${JSON.stringify(name.slice(0, 80))}`,
      "name",
    );
  }
  return name;
}

/** Never echoes the password: only its length. */
function validPassword(password: string, field: string): string {
  const length = [...password].length;
  if (length < MIN_PASSWORD_CHARS || length > MAX_PASSWORD_CHARS) {
    throw new StoreError(
      "invalid",
      `must have ${MIN_PASSWORD_CHARS} to ${MAX_PASSWORD_CHARS} characters, got ${length}`,
      field,
    );
  }
  return password;
}

function toProtoGrant(g: Grant): ProtoGrant {
  return "boundary" in g
    ? create(GrantSchema, { boundary: g.boundary, access: g.access })
    : create(GrantSchema, { subject: g.subject, access: g.access });
}

function toProtoUser(user: UserRecord): User {
  return create(UserSchema, {
    name: user.name,
    admin: user.admin,
    grants: user.grants.map(toProtoGrant),
    createdAt: timestampFromDate(user.createdAt),
  });
}

function toProtoKey(key: KeyRecord): ApiKey {
  return create(ApiKeySchema, {
    id: key.id,
    user: key.user,
    name: key.name,
    grants: key.grants.map(toProtoGrant),
    createdAt: timestampFromDate(key.createdAt),
  });
}
