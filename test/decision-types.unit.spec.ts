import { describe, expect, expectTypeOf, it } from "vitest";
import { courseSeats, studentCourses } from "../client-web/examples/course-subscription.js";
import {
  compose,
  createOrisunClient,
  type DecisionEvent,
  type DecisionModel,
  projection,
  type StateOf,
  uuidv7,
} from "../client-web/src/index.js";

/**
 * The decision model's types: a composed model's state is inferred from its projections. These
 * are checked by tsc (npm run lint) as well as run: a wrong inference fails the type check.
 */
describe("decision model types", () => {
  it("infers a composed model's state from its projections", () => {
    const model = compose({ course: courseSeats("c1"), student: studentCourses("s1") });
    expectTypeOf(model).toEqualTypeOf<
      DecisionModel<{ course: { capacity: number; taken: number }; student: string[] }>
    >();
    expectTypeOf<StateOf<typeof model>>().toEqualTypeOf<{
      course: { capacity: number; taken: number };
      student: string[];
    }>();
    expectTypeOf<StateOf<ReturnType<typeof studentCourses>>>().toEqualTypeOf<string[]>();
    expect(Object.keys(model.projections)).toEqual(["course", "student"]);
  });

  it("types a fold's event data as declared and the handler's state as inferred", () => {
    const counter = projection<number, { by: number }>({
      initial: 0,
      query: { types: ["Incremented"] },
      fold: (n, e) => {
        expectTypeOf(e).toEqualTypeOf<DecisionEvent<{ by: number }>>();
        return n + e.data.by;
      },
    });
    const flag = projection({ initial: false, query: { types: ["Flagged"] }, fold: () => true });
    const client = createOrisunClient({ baseUrl: "http://127.0.0.1:1" });
    const handler = (state: { counter: number; flag: boolean }) =>
      state.flag ? undefined : [{ type: "Incremented", data: { by: state.counter } }];
    // Only compiled: the call's types are what is under test (no server listens on port 1).
    const typed = () => client.decide(compose({ counter, flag }), handler);
    expectTypeOf(typed).returns.resolves.toHaveProperty("state").toEqualTypeOf<{
      counter: number;
      flag: boolean;
    }>();
    const misfit = (s: { missing: number }) => (s.missing > 0 ? [] : undefined);
    // @ts-expect-error: the state has no `missing` part, so this handler does not fit the model.
    const wrong = () => client.decide(compose({ counter }), misfit);
    expect(typeof wrong).toBe("function");
    expect(
      counter.fold(1, {
        id: "x",
        type: "Incremented",
        tags: [],
        data: { by: 2 },
        position: undefined as never,
      }),
    ).toBe(3);
  });

  it("makes UUIDv7 ids that are unique and ordered by time", () => {
    const ids = Array.from({ length: 1000 }, (_, i) => uuidv7(1_700_000_000_000 + i));
    expect(new Set(ids).size).toBe(1000);
    for (const id of ids)
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect([...ids].sort()).toEqual(ids);
  });
});
