import { compose, type DecideOptions, type OrisunClient, projection } from "../src/index.js";

/** Whether a username was ever claimed: any event tagged with it. */
export const usernameClaimed = (username: string) =>
  projection<boolean>({
    initial: false,
    query: { types: ["UserRegistered"], tags: { username } },
    fold: () => true,
  });

/**
 * Registers `userId` under `username` unless someone has it already. Two racing registrations of
 * one name read the same head; the second append finds the first's event after it and is refused,
 * re-reads, sees the name taken, and appends nothing. Resolves to whether this one got the name.
 */
export async function registerUser(
  client: OrisunClient,
  userId: string,
  username: string,
  options?: DecideOptions,
): Promise<boolean> {
  const { position } = await client.decide(
    compose({ taken: usernameClaimed(username) }),
    ({ taken }) =>
      taken
        ? undefined
        : [
            {
              type: "UserRegistered",
              tags: { username, user: userId },
              data: { userId, username },
            },
          ],
    options,
  );
  return position !== undefined;
}
