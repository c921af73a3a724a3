// Sign in or create an account.
import { useState } from "preact/hooks";
import { useApp, useAction } from "./hooks";

export function Login() {
  const [app, state] = useApp();
  const [mode, setMode] = useState<"login" | "register">("login");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [nickname, setNickname] = useState("");
  const [error, act] = useAction();
  const [busy, setBusy] = useState(false);

  const submit = (event: Event) => {
    event.preventDefault();
    setBusy(true);
    act(async () => {
      try {
        if (mode === "register") await app.register(username, password, nickname || username);
        await app.login(username, password);
      } finally {
        setBusy(false);
      }
    });
  };

  return (
    <main class="login">
      <form onSubmit={submit} aria-labelledby="login-title">
        <h1 id="login-title">OurChat</h1>
        <p>{mode === "login" ? "Sign in to chat" : "Create your account"}</p>
        <label>
          Username
          <input name="username" autoComplete="username" required minLength={3} value={username}
            onInput={(e) => setUsername(e.currentTarget.value)} />
        </label>
        <label>
          Password
          <input name="password" type="password" required minLength={8}
            autoComplete={mode === "login" ? "current-password" : "new-password"} value={password}
            onInput={(e) => setPassword(e.currentTarget.value)} />
        </label>
        {mode === "register" && (
          <label>
            Nickname
            <input name="nickname" value={nickname} onInput={(e) => setNickname(e.currentTarget.value)} />
          </label>
        )}
        {(error || state.notice) && <p role="alert" class="error">{error ?? state.notice}</p>}
        <button type="submit" disabled={busy}>{mode === "login" ? "Sign in" : "Create account"}</button>
        <button type="button" class="link" onClick={() => setMode(mode === "login" ? "register" : "login")}>
          {mode === "login" ? "New here? Create an account" : "Have an account? Sign in"}
        </button>
      </form>
    </main>
  );
}
