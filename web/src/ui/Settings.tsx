// Me: profile (nickname, avatar), theme, devices with kick, password, logout.
import { useEffect, useState } from "preact/hooks";
import type { DeviceInfo } from "../gen/session_pb";
import { applyTheme, savedTheme, useApp, useAction, type Theme } from "./hooks";

export function Settings() {
  const [app, state] = useApp();
  const me = state.session?.userId ?? 0n;
  const profile = state.profiles[String(me)];
  const [nickname, setNickname] = useState(profile?.nickname ?? "");
  const [avatar, setAvatar] = useState(profile?.avatarUrl ?? "");
  const [theme, setTheme] = useState<Theme>(savedTheme());
  const [devices, setDevices] = useState<DeviceInfo[]>([]);
  const [oldPassword, setOld] = useState("");
  const [newPassword, setNew] = useState("");
  const [done, setDone] = useState<string>();
  const [error, act] = useAction();

  useEffect(() => act(async () => {
    await app.loadProfiles([me]);
    setDevices(await app.devices());
  }), [me]);
  useEffect(() => {
    if (profile) {
      setNickname(profile.nickname);
      setAvatar(profile.avatarUrl);
    }
  }, [profile?.nickname, profile?.avatarUrl]);

  return (
    <section class="pane" aria-labelledby="settings-title">
      <h2 id="settings-title">Me</h2>
      {error && <p role="alert" class="error">{error}</p>}
      {done && <p role="status">{done}</p>}
      <form onSubmit={(e) => {
        e.preventDefault();
        act(async () => {
          await app.updateProfile(nickname, avatar);
          setDone("Profile saved");
        });
      }}>
        <h3>Profile of @{state.session?.username}</h3>
        <label>Nickname<input value={nickname} onInput={(e) => setNickname(e.currentTarget.value)} /></label>
        <label>Avatar URL<input type="url" value={avatar} onInput={(e) => setAvatar(e.currentTarget.value)} /></label>
        <button type="submit">Save profile</button>
      </form>
      <fieldset>
        <legend>Theme</legend>
        {(["light", "dark", "system"] as Theme[]).map((t) => (
          <label key={t} class="check">
            <input type="radio" name="theme" value={t} checked={theme === t} onChange={() => {
              setTheme(t);
              applyTheme(t);
            }} />
            {t[0].toUpperCase() + t.slice(1)}
          </label>
        ))}
      </fieldset>
      <h3>Devices</h3>
      <ul class="people" aria-label="Devices">
        {devices.map((d) => (
          <li key={d.deviceId}>
            <span>{d.deviceId} <small>{d.deviceType} · {d.online ? "online" : "offline"}</small>
              {d.deviceId === state.session?.deviceId && <small> (this one)</small>}</span>
            {d.deviceId !== state.session?.deviceId && (
              <button class="secondary" onClick={() => act(async () => {
                await app.kick(d.deviceId);
                setDevices(await app.devices());
              })}>Sign out {d.deviceId}</button>
            )}
          </li>
        ))}
      </ul>
      <form onSubmit={(e) => {
        e.preventDefault();
        act(async () => {
          const out = await app.changePassword(oldPassword, newPassword);
          setOld("");
          setNew("");
          setDone(`Password changed; ${out} other device(s) signed out`);
        });
      }}>
        <h3>Password</h3>
        <label>Current password<input type="password" autoComplete="current-password" required value={oldPassword} onInput={(e) => setOld(e.currentTarget.value)} /></label>
        <label>New password<input type="password" autoComplete="new-password" required minLength={8} value={newPassword} onInput={(e) => setNew(e.currentTarget.value)} /></label>
        <button type="submit">Change password</button>
      </form>
      <button class="danger" onClick={() => act(() => app.logout())}>Log out</button>
    </section>
  );
}
