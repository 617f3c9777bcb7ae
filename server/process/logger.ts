import type { FastifyServerOptions } from "fastify";
import PinoPretty from "pino-pretty";

export interface LogSettings {
  readonly logLevel: string;
  readonly logFormat: "json" | "pretty";
}

/**
 * Fastify's pino options. `pretty` formats in process, synchronously, on a pino-pretty stream:
 * pino's `transport` would start a worker thread per process. With workers, each line carries
 * its process id (pino's `pid`), so interleaved lines stay attributable.
 */
export function loggerOptions(settings: LogSettings): NonNullable<FastifyServerOptions["logger"]> {
  if (settings.logFormat === "json") return { level: settings.logLevel };
  return {
    level: settings.logLevel,
    stream: PinoPretty({ colorize: process.stdout.isTTY, translateTime: "SYS:HH:MM:ss.l" }),
  };
}
