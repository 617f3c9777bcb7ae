import { describe, expect, it } from "vitest";
import { loadConfig } from "../server/config.js";
import { configError } from "./support/config.js";

const observability = (env: Record<string, string>) => loadConfig(env, []).observability;
const refusal = (env: Record<string, string>) => configError(env).message;

describe("metrics and tracing settings", () => {
  it("default to metrics on, 100 boundary labels and no tracing", () => {
    expect(observability({})).toEqual({
      metrics: true,
      boundaryLabels: 100,
      otlpEndpoint: undefined,
      serviceName: "orisun",
    });
  });

  it("read ORISUN_METRICS, ORISUN_METRICS_BOUNDARY_LABELS and the OpenTelemetry variables", () => {
    expect(
      observability({
        ORISUN_METRICS: "off",
        ORISUN_METRICS_BOUNDARY_LABELS: "0",
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
        OTEL_SERVICE_NAME: "orders-store",
      }),
    ).toEqual({
      metrics: false,
      boundaryLabels: 0,
      otlpEndpoint: "http://collector:4318",
      serviceName: "orders-store",
    });
  });

  it("refuse bad values with the variable and the rule", () => {
    expect(refusal({ ORISUN_METRICS: "yes" })).toBe('ORISUN_METRICS: must be on or off, got "yes"');
    expect(refusal({ ORISUN_METRICS_BOUNDARY_LABELS: "-1" })).toBe(
      'ORISUN_METRICS_BOUNDARY_LABELS: must be an integer from 0 to 10000, got "-1"',
    );
    expect(refusal({ ORISUN_METRICS_BOUNDARY_LABELS: "10001" })).toMatch(
      /^ORISUN_METRICS_BOUNDARY_LABELS: must be an integer from 0 to 10000/,
    );
    expect(refusal({ OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" })).toMatch(
      /^OTEL_EXPORTER_OTLP_ENDPOINT: must use http: or https:/,
    );
    expect(refusal({ OTEL_EXPORTER_OTLP_ENDPOINT: "not a url" })).toMatch(
      /^OTEL_EXPORTER_OTLP_ENDPOINT: must be a URL like http:\/\/host:port/,
    );
    expect(refusal({ OTEL_SERVICE_NAME: "a\u0007b" })).toMatch(/^OTEL_SERVICE_NAME: /);
  });
});
