export * from "../../gen/orisun/v1/admin_pb.js";
export * from "../../gen/orisun/v1/eventstore_pb.js";
export {
  basicAuth,
  bearer,
  createOrisunClient,
  nextPosition,
  type OrisunClient,
  type OrisunClientOptions,
  type PubSubOptions,
  type ReadOptions,
  type SaveOptions,
  type SubscribeOptions,
} from "./client.js";
export {
  CONDITION_FAILED_REASON,
  Code,
  ConnectError,
  codeName,
  conditionFailure,
  ERROR_DOMAIN,
  type ErrorInfo,
  ErrorInfoSchema,
  isConditionFailed,
  isTransient,
} from "./errors.js";
export {
  type CriterionInput,
  comparePositions,
  type EventInput,
  formatPosition,
  type PositionInput,
  type QueryInput,
  type TagPair,
  type TagsInput,
  toCondition,
  toEventToSave,
  toPosition,
  toQuery,
  toTags,
} from "./query.js";
export type { ResumeOptions, StreamState } from "./resume.js";
