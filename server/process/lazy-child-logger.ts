import type { FastifyBaseLogger } from "fastify";
import type { Bindings, ChildLoggerOptions } from "pino";

type Level = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

/**
 * A request's logger, bound to its request id, that makes pino's child logger only when it first
 * logs. Making one serialises the bindings at once (about 2 µs of CPU), once per call, while a
 * call that succeeds at the default level logs nothing.
 */
class LazyChildLogger {
  private made: FastifyBaseLogger | undefined;

  constructor(
    private readonly parent: FastifyBaseLogger,
    private readonly bindings: Bindings,
  ) {}

  private get logger(): FastifyBaseLogger {
    this.made ??= this.parent.child(this.bindings);
    return this.made;
  }

  get level(): string {
    return this.made?.level ?? this.parent.level;
  }

  set level(level: string) {
    this.logger.level = level;
  }

  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.logger.child(bindings, options);
  }

  private log(level: Level, args: unknown[]): void {
    (this.logger[level] as (...given: unknown[]) => void)(...args);
  }

  fatal(...args: unknown[]): void {
    this.log("fatal", args);
  }
  error(...args: unknown[]): void {
    this.log("error", args);
  }
  warn(...args: unknown[]): void {
    this.log("warn", args);
  }
  info(...args: unknown[]): void {
    this.log("info", args);
  }
  debug(...args: unknown[]): void {
    this.log("debug", args);
  }
  trace(...args: unknown[]): void {
    this.log("trace", args);
  }
  silent(...args: unknown[]): void {
    this.log("silent", args);
  }
}

export function lazyChildLogger(parent: FastifyBaseLogger, bindings: Bindings): FastifyBaseLogger {
  // pino's LogFn is overloaded (an object and a message, or a message and its arguments); each
  // method above hands on whatever it was given, which is what every overload accepts.
  return new LazyChildLogger(parent, bindings) as unknown as FastifyBaseLogger;
}
