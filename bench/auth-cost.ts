/**
 * What authentication costs an append: the same workload against a server with ORISUN_AUTH=off
 * and one with it on, where every call carries a user's password (verified once, then served
 * from the credential cache) and is checked against the user's grants.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Admin } from "../gen/orisun/v1/admin_pb.js";

export const BENCH_ADMIN_PASSWORD = "bench-admin-password";
const WRITER_PASSWORD = "bench-writer-password";

const basic = (user: string, password: string) =>
  `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

/** Environment of the server with authentication on (it binds 127.0.0.1, so `on` is explicit). */
export const AUTH_ON_ENV = { ORISUN_AUTH: "on", ORISUN_ADMIN_PASSWORD: BENCH_ADMIN_PASSWORD };

/**
 * Creates the user the load generator signs in as: not an admin, allowed to append to and read
 * every boundary, so that each call goes through the grant check. Returns its header.
 */
export async function benchWriter(url: string): Promise<string> {
  const admin = createClient(Admin, createGrpcTransport({ baseUrl: url }));
  await admin.createUser(
    {
      name: "bench_writer",
      password: WRITER_PASSWORD,
      grants: [
        { boundary: "*", access: "append" },
        { boundary: "*", access: "read" },
      ],
    },
    { headers: { authorization: basic("admin", BENCH_ADMIN_PASSWORD) } },
  );
  return basic("bench_writer", WRITER_PASSWORD);
}
