import { resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/**
 * An EventStore client of @grpc/grpc-js loaded from proto/ with @grpc/proto-loader (snake_case
 * fields, 64-bit numbers as strings), as a plain gRPC user would make it. `enums`: as names
 * (String) or numbers (undefined).
 */
export function grpcJsEventStore(port: number, enums?: typeof String): grpc.Client {
  const def = protoLoader.loadSync(resolve("proto/orisun/v1/eventstore.proto"), {
    keepCase: true,
    longs: String,
    enums,
    defaults: true,
    includeDirs: [resolve("proto")],
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    orisun: { v1: { EventStore: grpc.ServiceClientConstructor } };
  };
  return new pkg.orisun.v1.EventStore(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}
