import { compose, type DecideOptions, type OrisunClient, projection } from "../src/index.js";

/** A course's capacity (from its definition) and how many students it has. */
export const courseSeats = (courseId: string) =>
  projection<{ capacity: number; taken: number }, { capacity?: number }>({
    initial: { capacity: 0, taken: 0 },
    query: { types: ["CourseDefined", "StudentSubscribed"], tags: { course: courseId } },
    fold: (s, e) =>
      e.type === "CourseDefined"
        ? { ...s, capacity: e.data.capacity ?? 0 }
        : { ...s, taken: s.taken + 1 },
  });

/** The courses a student is subscribed to. */
export const studentCourses = (studentId: string) =>
  projection<string[], { courseId: string }>({
    initial: [],
    query: { types: ["StudentSubscribed"], tags: { student: studentId } },
    fold: (courses, e) => [...courses, e.data.courseId],
  });

/** Defines a course with its capacity. */
export async function defineCourse(client: OrisunClient, courseId: string, capacity: number) {
  await client.save([
    { type: "CourseDefined", tags: { course: courseId }, data: { courseId, capacity } },
  ]);
}

/** The event a subscription appends, tagged for both projections that read it. */
const subscribed = (courseId: string, studentId: string) => ({
  type: "StudentSubscribed",
  tags: { course: courseId, student: studentId },
  data: { courseId, studentId },
});

// The command handler (under 20 lines): two projections composed into one decision, read at one
// head, so neither can the course fill up nor the student subscribe elsewhere in between.
export async function subscribe(
  client: OrisunClient,
  studentId: string,
  courseId: string,
  maxCourses: number,
  options?: DecideOptions,
): Promise<boolean> {
  const model = compose({ course: courseSeats(courseId), student: studentCourses(studentId) });
  const { position } = await client.decide(
    model,
    ({ course, student }) => {
      if (course.taken >= course.capacity) return undefined;
      if (student.includes(courseId) || student.length >= maxCourses) return undefined;
      return [subscribed(courseId, studentId)];
    },
    options,
  );
  return position !== undefined;
}
