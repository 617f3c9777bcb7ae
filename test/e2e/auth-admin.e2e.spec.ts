import { toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ListUsersResponseSchema } from "../../gen/orisun/v1/admin_pb.js";
import { basic, bearer, clientsWith, oneEvent } from "../support/auth.js";
import { freshDataDir } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const ADMIN_PASSWORD = "embedded-Admin-pw";
let server: SpawnedServer;
let admin: ReturnType<typeof clientsWith>;

async function failure(work: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await work;
  } catch (error) {
    const e = ConnectError.from(error);
    return { code: e.code, message: e.rawMessage };
  }
  throw new Error("expected the call to fail");
}

// On the embedded store (PGlite): principals live in its tables as on PostgreSQL, and changes
// reach this process's cache directly.
beforeAll(async () => {
  server = await spawnServer({
    ORISUN_DATA_DIR: freshDataDir(),
    ORISUN_AUTH: "on",
    ORISUN_ADMIN_PASSWORD: ADMIN_PASSWORD,
  });
  admin = clientsWith(createGrpcTransport({ baseUrl: server.url }), basic("admin", ADMIN_PASSWORD));
}, 120_000);

afterAll(async () => {
  await server?.stop();
});

describe("the Admin RPCs for principals answer with API.md's codes", () => {
  it("validates names, passwords and grants, naming the field", async () => {
    const h = { headers: admin.headers };
    expect(
      await failure(admin.admin.createUser({ name: "no spaces", password: "long-enough" }, h)),
    ).toMatchObject({
      code: Code.InvalidArgument,
      message: expect.stringContaining("name: must match"),
    });
    const short = await failure(admin.admin.createUser({ name: "eve", password: "short1" }, h));
    expect(short).toEqual({
      code: Code.InvalidArgument,
      message: "password: must have 8 to 1024 characters, got 6",
    });
    expect(
      await failure(
        admin.admin.createUser(
          { name: "eve", password: "long-enough", grants: [{ boundary: "x", access: "publish" }] },
          h,
        ),
      ),
    ).toMatchObject({
      code: Code.InvalidArgument,
      message: expect.stringContaining("grants[0].access"),
    });
    const users = await admin.admin.listUsers({}, h);
    expect(users.users.map((u) => u.name)).toEqual(["admin"]);
  });

  it("ALREADY_EXISTS, NOT_FOUND, the last admin and a wrong old password", async () => {
    const h = { headers: admin.headers };
    await admin.admin.createUser({ name: "frank", password: "frank-Secret-pw" }, h);
    expect(
      (await failure(admin.admin.createUser({ name: "frank", password: "other-pw-1" }, h))).code,
    ).toBe(Code.AlreadyExists);
    expect((await failure(admin.admin.deleteUser({ name: "nobody" }, h))).code).toBe(Code.NotFound);
    expect(
      (await failure(admin.admin.changePassword({ name: "nobody", newPassword: "whatever-pw" }, h)))
        .code,
    ).toBe(Code.NotFound);
    expect((await failure(admin.admin.revokeApiKey({ id: "0123456789abcdef" }, h))).code).toBe(
      Code.NotFound,
    );
    expect((await failure(admin.admin.revokeApiKey({ id: "not an id" }, h))).code).toBe(
      Code.NotFound,
    );
    const last = await failure(admin.admin.deleteUser({ name: "admin" }, h));
    expect(last.code).toBe(Code.FailedPrecondition);
    expect(last.message).toContain("last admin");
    expect(
      (
        await failure(
          admin.admin.changePassword(
            { name: "frank", oldPassword: "not-franks-pw", newPassword: "frank-New-pw" },
            h,
          ),
        )
      ).code,
    ).toBe(Code.PermissionDenied);
    // An admin may leave old_password empty for another user.
    await admin.admin.changePassword({ name: "frank", newPassword: "frank-New-pw" }, h);
    const frank = clientsWith(
      createGrpcTransport({ baseUrl: server.url }),
      basic("frank", "frank-New-pw"),
    );
    expect((await frank.admin.whoAmI({}, { headers: frank.headers })).user).toBe("frank");
    // A second admin lets the first one go.
    await admin.admin.createUser({ name: "root2", password: "root2-Secret-pw", admin: true }, h);
    const root2 = clientsWith(
      createGrpcTransport({ baseUrl: server.url }),
      basic("root2", "root2-Secret-pw"),
    );
    await root2.admin.deleteUser({ name: "admin" }, { headers: root2.headers });
    expect((await failure(admin.admin.whoAmI({}, h))).code).toBe(Code.Unauthenticated);
    await root2.admin.createUser(
      { name: "admin", password: ADMIN_PASSWORD, admin: true },
      { headers: root2.headers },
    );
  }, 60_000);

  it("makes keys within their user's permissions, shows the secret once, and revokes them with the user", async () => {
    const h = { headers: admin.headers };
    await admin.admin.createUser(
      {
        name: "gina",
        password: "gina-Secret-pw",
        grants: [{ boundary: "orders_*", access: "read" }],
      },
      h,
    );
    const beyond = await failure(
      admin.admin.createApiKey(
        { user: "gina", name: "too much", grants: [{ boundary: "orders_eu", access: "append" }] },
        h,
      ),
    );
    expect(beyond.code).toBe(Code.PermissionDenied);
    expect(beyond.message).toContain("append");
    expect((await failure(admin.admin.createApiKey({ user: "nobody", name: "k" }, h))).code).toBe(
      Code.NotFound,
    );
    const made = await admin.admin.createApiKey(
      { user: "gina", name: "eu reader", grants: [{ boundary: "orders_eu", access: "read" }] },
      h,
    );
    expect(made.secret).toMatch(/^osk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    expect(made.secret).toContain(made.key?.id);
    const key = clientsWith(createGrpcTransport({ baseUrl: server.url }), bearer(made.secret));
    const me = await key.admin.whoAmI({}, { headers: key.headers });
    expect(me).toMatchObject({ user: "gina", apiKeyId: made.key?.id, admin: false });
    expect(me.grants.map((g) => [g.boundary, g.access])).toEqual([["orders_eu", "read"]]);
    await admin.store.saveEvents(oneEvent("orders_eu", "e1"), h);
    expect(
      (await key.store.getEvents({ boundary: "orders_eu" }, { headers: key.headers })).events,
    ).toHaveLength(1);
    expect(
      (await failure(key.store.getEvents({ boundary: "orders_us" }, { headers: key.headers })))
        .code,
    ).toBe(Code.PermissionDenied);
    const listed = await admin.admin.listApiKeys({ user: "gina" }, h);
    expect(listed.keys.map((k) => k.id)).toEqual([made.key?.id]);
    const all = JSON.stringify([
      toJsonString(ListUsersResponseSchema, await admin.admin.listUsers({}, h)),
      listed.keys.map((k) => [k.id, k.name, k.user]),
    ]);
    expect(all).not.toContain(made.secret.slice(22));
    expect(all).not.toContain("scrypt");
    await admin.admin.deleteUser({ name: "gina" }, h);
    expect((await failure(key.admin.whoAmI({}, { headers: key.headers }))).code).toBe(
      Code.Unauthenticated,
    );
    expect((await admin.admin.listApiKeys({}, h)).keys.filter((k) => k.user === "gina")).toEqual(
      [],
    );
    expect(server.output()).not.toContain(made.secret);
  }, 60_000);
});
