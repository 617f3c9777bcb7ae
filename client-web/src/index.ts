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
  compose,
  type Decided,
  type DecideOptions,
  type DecisionEvent,
  type DecisionModel,
  decide,
  type Projection,
  projection,
  type StateOf,
  type Verdict,
} from "./decision.js";
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
export { uuidv7 } from "./uuid.js";
