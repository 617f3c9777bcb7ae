// The credentials of this tab: sessionStorage is per tab and gone when the tab closes, so a
// sign-in is never shared with other tabs nor kept on disk past the session.
const KEY = "orisun.credentials";

export const session = {
  get(): string | undefined {
    try {
      return sessionStorage.getItem(KEY) ?? undefined;
    } catch {
      return undefined;
    }
  },
  set(value: string): void {
    try {
      sessionStorage.setItem(KEY, value);
    } catch {
      // Storage disabled: the sign-in lasts until the page reloads.
    }
  },
  clear(): void {
    try {
      sessionStorage.removeItem(KEY);
    } catch {
      // Nothing was kept.
    }
  },
};
