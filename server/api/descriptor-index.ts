import { type DescFile, type DescMessage, type DescService, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";

/**
 * Every file the served services are built from, with their imports (google/protobuf/* too), as
 * protoc-gen-es embedded them: the same descriptors the server decodes requests with. Looks up
 * what gRPC reflection asks for: a file by name, the file declaring a symbol, the extensions of
 * a message.
 */
export class DescriptorIndex {
  readonly serviceNames: readonly string[];
  private readonly files = new Map<string, DescFile>();
  private readonly encoded = new Map<string, Uint8Array>();
  private readonly symbols = new Map<string, DescFile>();
  /** Extendee's full name → field number → the file declaring the extension. */
  private readonly extensions = new Map<string, Map<number, DescFile>>();

  constructor(services: readonly DescService[]) {
    this.serviceNames = services.map((s) => s.typeName);
    const visit = (file: DescFile) => {
      // DescFile.name lacks the ".proto" that imports and clients use.
      const name = file.proto.name;
      if (this.files.has(name)) return;
      this.files.set(name, file);
      this.encoded.set(name, toBinary(FileDescriptorProtoSchema, file.proto));
      this.indexFile(file);
      for (const dependency of file.dependencies) visit(dependency);
    };
    for (const service of services) visit(service.file);
  }

  /** The proto file names, e.g. "orisun/v1/eventstore.proto". */
  get fileNames(): readonly string[] {
    return [...this.files.keys()];
  }

  file(name: string): DescFile | undefined {
    return this.files.get(name);
  }

  /** A message, enum, enum value, field, oneof, service, method or extension, by full name. */
  fileContaining(symbol: string): DescFile | undefined {
    return this.symbols.get(symbol);
  }

  fileContainingExtension(extendee: string, number: number): DescFile | undefined {
    return this.extensions.get(extendee)?.get(number);
  }

  /** Undefined for a name that is not a message. */
  extensionNumbers(extendee: string): number[] | undefined {
    if (!this.isMessage(extendee)) return undefined;
    return [...(this.extensions.get(extendee)?.keys() ?? [])].sort((a, b) => a - b);
  }

  /**
   * The file's serialised FileDescriptorProto, then those of its imports, transitively, that
   * `sent` does not hold yet (all of them are added to it): a client asks once per stream.
   */
  withDependencies(file: DescFile, sent: Set<string>): Uint8Array[] {
    const out: Uint8Array[] = [];
    const add = (f: DescFile, always: boolean) => {
      const name = f.proto.name;
      if (sent.has(name) && !always) return;
      sent.add(name);
      const bytes = this.encoded.get(name);
      if (bytes) out.push(bytes);
      for (const dependency of f.dependencies) add(dependency, false);
    };
    add(file, true);
    return out;
  }

  private isMessage(name: string): boolean {
    const file = this.symbols.get(name);
    if (!file) return false;
    const find = (messages: readonly DescMessage[]): boolean =>
      messages.some((m) => m.typeName === name || find(m.nestedMessages));
    return find(file.messages);
  }

  private indexFile(file: DescFile): void {
    const add = (name: string) => this.symbols.set(name, file);
    const scope = (typeName: string) => typeName.slice(0, Math.max(0, typeName.lastIndexOf(".")));
    const enums = (list: DescFile["enums"]) => {
      for (const e of list) {
        add(e.typeName);
        // Enum values are scoped beside their enum, as in C++: pkg.SERVING, not pkg.Status.SERVING.
        const parent = scope(e.typeName);
        for (const v of e.values) add(parent === "" ? v.name : `${parent}.${v.name}`);
      }
    };
    const extensions = (list: DescFile["extensions"]) => {
      for (const x of list) {
        add(x.typeName);
        let byNumber = this.extensions.get(x.extendee.typeName);
        if (!byNumber) {
          byNumber = new Map();
          this.extensions.set(x.extendee.typeName, byNumber);
        }
        byNumber.set(x.number, file);
      }
    };
    const messages = (list: readonly DescMessage[]) => {
      for (const m of list) {
        add(m.typeName);
        for (const f of m.fields) add(`${m.typeName}.${f.name}`);
        for (const o of m.oneofs) add(`${m.typeName}.${o.name}`);
        enums(m.nestedEnums);
        extensions(m.nestedExtensions);
        messages(m.nestedMessages);
      }
    };
    messages(file.messages);
    enums(file.enums);
    extensions(file.extensions);
    for (const s of file.services) {
      add(s.typeName);
      for (const m of s.methods) add(`${s.typeName}.${m.name}`);
    }
  }
}
