// Preact glue: the app's state as a hook, and the theme (light, dark or the
// system's), kept in localStorage so it survives a reload.
import { createContext } from "preact";
import { useContext, useEffect, useState } from "preact/hooks";
import type { App, State } from "../state/app";

export const AppContext = createContext<App | undefined>(undefined);

export function useApp(): [App, State] {
  const app = useContext(AppContext);
  if (!app) throw new Error("no App in context");
  const [state, setState] = useState(app.state);
  useEffect(() => app.subscribe(setState), [app]);
  return [app, state];
}

export type Theme = "light" | "dark" | "system";
const THEME_KEY = "ourchat.theme";

export function savedTheme(): Theme {
  const theme = localStorage.getItem(THEME_KEY);
  return theme === "light" || theme === "dark" ? theme : "system";
}

export function applyTheme(theme: Theme): void {
  localStorage.setItem(THEME_KEY, theme);
  const dark = theme === "dark" || (theme === "system" && matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
}

/** Shows a failed action's reason instead of swallowing it. */
export function useAction(): [string | undefined, (work: () => Promise<unknown>) => void] {
  const [error, setError] = useState<string>();
  return [
    error,
    (work) => {
      setError(undefined);
      work().catch((e: unknown) => setError(e instanceof Error ? e.message : String(e)));
    },
  ];
}
