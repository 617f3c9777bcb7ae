import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import {
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  file_google_protobuf_descriptor,
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
} from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { EventStore } from "../gen/orisun/v1/eventstore_pb.js";
import { DescriptorIndex } from "../server/api/descriptor-index.js";

/**
 * A proto2 file with what Orisun's own protos lack: an extension (of its own message), nested
 * types and an import of descriptor.proto.
 */
const EXT_FILE = create(FileDescriptorProtoSchema, {
  name: "t/ext.proto",
  package: "t",
  syntax: "proto2",
  dependency: ["google/protobuf/descriptor.proto"],
  messageType: [
    {
      name: "Thing",
      field: [{ name: "name", number: 1, type: Type.STRING, label: Label.OPTIONAL }],
      extensionRange: [{ start: 100, end: 200 }],
      nestedType: [{ name: "Inner" }],
      enumType: [{ name: "Color", value: [{ name: "RED", number: 0 }] }],
    },
  ],
  extension: [
    { name: "note", number: 150, type: Type.STRING, label: Label.OPTIONAL, extendee: ".t.Thing" },
  ],
  service: [
    { name: "Svc", method: [{ name: "Do", inputType: ".t.Thing", outputType: ".t.Thing" }] },
  ],
});

function extService() {
  const registry = createFileRegistry(
    create(FileDescriptorSetSchema, { file: [file_google_protobuf_descriptor.proto, EXT_FILE] }),
  );
  const service = registry.getService("t.Svc");
  if (!service) throw new Error("t.Svc not built");
  return service;
}

describe("DescriptorIndex", () => {
  it("indexes the served services' files and their imports", () => {
    const index = new DescriptorIndex([EventStore, Health]);
    expect(index.serviceNames).toEqual(["orisun.v1.EventStore", "grpc.health.v1.Health"]);
    expect([...index.fileNames].sort()).toEqual([
      "google/protobuf/empty.proto",
      "google/protobuf/timestamp.proto",
      "grpc/health/v1/health.proto",
      "orisun/v1/eventstore.proto",
    ]);
    expect(index.file("orisun/v1/eventstore")).toBeUndefined();
  });

  it("finds every kind of symbol by its full name", () => {
    const index = new DescriptorIndex([extService()]);
    const fileOf = (symbol: string) => index.fileContaining(symbol)?.proto.name;
    for (const symbol of [
      "t.Thing",
      "t.Thing.name",
      "t.Thing.Inner",
      "t.Thing.Color",
      "t.Thing.RED",
      "t.note",
      "t.Svc",
      "t.Svc.Do",
    ]) {
      expect(fileOf(symbol), symbol).toBe("t/ext.proto");
    }
    expect(fileOf("google.protobuf.FieldOptions")).toBe("google/protobuf/descriptor.proto");
    for (const missing of ["t", "t.Thing.Color.RED", "t.Svc.Nope", "", "t.Thing."]) {
      expect(fileOf(missing), missing).toBeUndefined();
    }
  });

  it("finds extensions by extendee and number, and lists a message's extension numbers", () => {
    const index = new DescriptorIndex([extService()]);
    expect(index.fileContainingExtension("t.Thing", 150)?.proto.name).toBe("t/ext.proto");
    expect(index.fileContainingExtension("t.Thing", 151)).toBeUndefined();
    expect(index.extensionNumbers("t.Thing")).toEqual([150]);
    expect(index.extensionNumbers("google.protobuf.FileOptions")).toEqual([]);
    expect(index.extensionNumbers("t.Svc")).toBeUndefined();
    expect(index.extensionNumbers("t.Thing.RED")).toBeUndefined();
  });

  it("sends a file with the imports a stream has not had yet, as FileDescriptorProtos", () => {
    const index = new DescriptorIndex([EventStore]);
    const file = index.file("orisun/v1/eventstore.proto");
    if (!file) throw new Error("no eventstore.proto");
    const sent = new Set<string>();
    const first = index
      .withDependencies(file, sent)
      .map((b) => fromBinary(FileDescriptorProtoSchema, b));
    expect(first.map((f) => f.name)).toEqual([
      "orisun/v1/eventstore.proto",
      "google/protobuf/empty.proto",
      "google/protobuf/timestamp.proto",
    ]);
    expect(first[0]?.service.map((s) => s.name)).toEqual(["EventStore"]);
    // Asked again on the same stream: the file itself, not its imports.
    const again = index.withDependencies(file, sent);
    expect(again.map((b) => fromBinary(FileDescriptorProtoSchema, b).name)).toEqual([
      "orisun/v1/eventstore.proto",
    ]);
  });
});
