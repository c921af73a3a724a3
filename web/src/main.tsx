// Starts the app: theme first (no flash), then the cached state of a
// remembered session, then the socket.
import { render } from "preact";
import { App } from "./state/app";
import { applyTheme, AppContext, savedTheme } from "./ui/hooks";
import { Root } from "./ui/Root";
import "./style.css";

const started = performance.now();
applyTheme(savedTheme());
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => applyTheme(savedTheme()));
const app = new App();
render(
  <AppContext.Provider value={app}>
    <Root />
  </AppContext.Provider>,
  document.getElementById("app")!,
);
void app.resume(started);
// The end-to-end run reads this to measure the first render from the cache.
(window as unknown as { ourchat: App }).ourchat = app;
